"""Every DAG file imports cleanly, fast, without heavy modules, with tags and retries."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY = ("torch", "tensorflow", "keras", "pyspark", "pandas", "mlflow")


def test_there_are_dag_files() -> None:
    assert [p.name for p in DAG_FILES if p.name == "image_scoring.py"] == ["image_scoring.py"]


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_every_dag_file_imports_without_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    files_with_dags = {Path(d.fileloc).name for d in dagbag.dags.values()}
    assert files_with_dags == {p.name for p in DAG_FILES if not p.name.startswith("_")}


def test_every_dag_has_tags_retries_and_docs(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_module_at_parse_time(dag_file: Path) -> None:
    # Given a fresh interpreter that has imported Airflow (as the dag-processor has)
    probe = f"""
import importlib.util, json, sys
import airflow.sdk
spec = importlib.util.spec_from_file_location("dag_under_test", {str(dag_file)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    # When the DAG file is executed
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=os.environ.copy(), timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Then it pulled in no heavy module (parse time is what the dag-processor pays every 30 s)
    assert result["heavy"] == [], f"{dag_file.name} imports {result['heavy']} at parse time"


@pytest.mark.parametrize(
    ("dag_id", "tasks"), [("model_rescore", ("rescore", "validate")), ("image_scoring", ("score", "validate"))]
)
def test_date_range_params_reach_scoring_and_validation(dag_id: str, tasks: tuple[str, str], dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags[dag_id]
    context = {"params": {"from_date": "2026-11-01", "to_date": "2026-11-07", "model_name": "shapes", "force": False}}
    for task_id in tasks:
        task = copy.copy(dag.get_task(task_id))  # the dagbag is shared by the module
        args = []
        for name in ("from_date", "to_date"):
            args.append(task.render_template(getattr(task, name), context))
        assert args == ["2026-11-01", "2026-11-07"], task_id
        task.from_date, task.to_date = args
        task.model_name, task.model_version = "shapes", "2"
        command = task.job_arguments()
        assert command[command.index("--from-date") + 1] == "2026-11-01"
        assert command[command.index("--to-date") + 1] == "2026-11-07"


def test_model_rescore_without_a_date_range_scores_everything(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["model_rescore"]
    context = {"params": {"from_date": None, "to_date": None}}
    for task_id in ("rescore", "validate"):
        task = copy.copy(dag.get_task(task_id))  # the dagbag is shared by the module
        task.from_date = task.render_template(task.from_date, context)
        task.to_date = task.render_template(task.to_date, context)
        task.model_name, task.model_version = "shapes", "2"
        command = task.job_arguments()
        assert "--from-date" not in command and "--to-date" not in command, command


def test_image_scoring_force_param_rescores_the_range() -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["image_scoring"]
    task = copy.copy(dag.get_task("score"))
    for value, expected in ((True, True), (False, False)):
        task.force = task.render_template(dag.get_task("score").force, {"params": {"force": value}})
        task.model_name, task.model_version = "shapes", "1"
        assert ("--force" in task.job_arguments()) is expected


def _rendered_scope(task: Any, context: dict[str, Any]) -> list[str]:
    task = copy.copy(task)  # the dagbag is shared by the module
    for name in ("from_date", "to_date", "ingested_from", "ingested_before"):
        setattr(task, name, task.render_template(getattr(task, name), context))
    task.model_name, task.model_version = "shapes", "1"
    command = task.job_arguments()
    return [
        part
        for flag in ("--ingested-from", "--ingested-before")
        if flag in command
        for part in (flag, command[command.index(flag) + 1])
    ]


def test_each_backfill_run_of_image_scoring_works_on_its_own_data_interval(dagbag) -> None:  # type: ignore[no-untyped-def]
    import pendulum
    from airflow.utils.types import DagRunType

    dag = dagbag.dags["image_scoring"]
    start = pendulum.datetime(2026, 11, 3, 12, tz="UTC")
    params = {"from_date": None, "to_date": None, "force": True, "model_name": "shapes"}

    def context(run_type: str) -> dict[str, Any]:
        return {
            "params": params,
            "dag_run": SimpleNamespace(run_type=DagRunType(run_type)),
            "data_interval_start": start,
            "data_interval_end": start.add(hours=1),
        }

    for task_id in ("score", "validate"):
        # A backfill run (one per hour of the range) scores and validates the images ingested in its hour
        assert _rendered_scope(dag.get_task(task_id), context("backfill")) == [
            "--ingested-from", "2026-11-03T12:00:00+00:00",
            "--ingested-before", "2026-11-03T13:00:00+00:00",
        ], task_id  # fmt: skip
        # while scheduled and manual runs take every image that is missing a prediction
        assert _rendered_scope(dag.get_task(task_id), context("scheduled")) == [], task_id
        assert _rendered_scope(dag.get_task(task_id), context("manual")) == [], task_id
