"""The "Validation report" link through a real task run: dag.test() runs a validate task (the
Spark job replaced by a stand-in that writes a failing report), Airflow stores the link when the
task ends, and the API server's view of the task (the serialised DAG) returns the report URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.airflow


PROBE_DAG = """
from datetime import datetime

from airflow.sdk import DAG

from rescore_airflow.operators import ValidatePredictionsOperator

with DAG("validation_link_probe", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"]):
    ValidatePredictionsOperator(
        task_id="validate", model_name="m", model_version="2", run_label="probe-run", py_files="unused.zip", retries=0
    )
"""


def test_a_failed_validate_task_links_to_its_report(
    rescore_home: Path, airflow_db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk.exceptions import AirflowException

    written: list[Path] = []

    def fake_job(self: Any, context: Any) -> None:
        folder = rescore_home / "reports" / "m" / "2"
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / self.application_args[self.application_args.index("--run-id") + 1].replace(":", "_")
        html, report = stem.with_suffix(".html"), stem.with_suffix(".json")
        html.write_text("<html></html>")
        report.write_text(
            json.dumps(
                {
                    "model_name": "m",
                    "model_version": "2",
                    "passed": False,
                    "failed_gates": ["coverage", "label_change"],
                    "verdict": "FAILED 2 of 9 gates",
                    "files": {"json": str(report), "html": str(html)},
                }
            )
        )
        written.append(html)
        raise AirflowException("Cannot execute: spark-submit ... Error code is: 1.")

    monkeypatch.setattr(SparkSubmitOperator, "execute", fake_job)
    # The DAG comes from a file, as in a deployment, and is written to the metadata DB (dag.test()
    # only syncs the configured dags folder).
    folder = tmp_path / "probe_dags"
    folder.mkdir()
    (folder / "validation_link_probe.py").write_text(PROBE_DAG)
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="dags-folder")
    assert bag.import_errors == {}
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.dags["validation_link_probe"]

    # When the DAG runs
    run = dag.test()

    # Then the task failed, and the link the UI shows is the report's URL
    assert run.state == "failed"
    assert len(written) == 1
    from airflow.models.taskinstance import TaskInstance
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == "validation_link_probe", TaskInstance.run_id == run.run_id
            )
        )
        assert ti is not None
        assert ti.state == "failed"
        served = DagSerialization.from_dict(DagSerialization.to_dict(dag)).get_task("validate")
        assert served.extra_links == ["Validation report"]
        assert served.get_extra_links(ti, "Validation report") == written[0].resolve().as_uri()
