"""ValidatePredictionsOperator: its spark-submit flags, the error naming every failed gate, the
report URL it pushes, the "Validation report" extra link, and the DAGs' validation Params."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
HOME = "/data/rescore"


@pytest.fixture(autouse=True)
def _local_master(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[2]"}')
    monkeypatch.delenv("RESCORE_REPORTS_BASE_URL", raising=False)


def test_thresholds_and_dates_become_job_flags() -> None:
    from rescore_airflow.operators import ValidatePredictionsOperator

    # Given a validate task with a date range and two threshold overrides, one of them empty
    op = ValidatePredictionsOperator(
        task_id="validate",
        rescore_home=HOME,
        run_label="r",
        model_name="shapes",
        model_version="2",
        from_date="2026-03-01",
        to_date="2026-03-31",
        thresholds={"max_psi": 0.3, "max_label_change_share": "0.05", "max_missing": "None"},
    )
    # Then the job gets the scope and the two given thresholds, in the job's own flag names
    cmd = op.spark_submit_command()
    tail = cmd[cmd.index("--home") :]
    assert tail == [
        "--home", HOME, "--run-id", "r", "--model-name", "shapes", "--model-version", "2",
        "--from-date", "2026-03-01", "--to-date", "2026-03-31",
        "--max-label-change-share", "0.05", "--max-psi", "0.3",
    ]  # fmt: skip


def test_an_unknown_threshold_is_refused_when_the_dag_is_parsed() -> None:
    from rescore_airflow.operators import ValidatePredictionsOperator

    with pytest.raises(ValueError, match=r"unknown validation thresholds \['max_pis'\].*max_psi"):
        ValidatePredictionsOperator(task_id="v", model_name="m", thresholds={"max_pis": 0.3})


def test_templated_thresholds_render_from_params() -> None:
    from rescore_airflow.operators import ValidatePredictionsOperator, validation_thresholds_from_params

    op = ValidatePredictionsOperator(
        task_id="v", rescore_home=HOME, run_label="r", model_name="m", thresholds=validation_thresholds_from_params()
    )
    params = {"max_missing": None, "max_invalid": 3, "max_label_change_share": 0.5, "max_psi": None}
    op.render_template_fields({"params": params})  # type: ignore[arg-type]
    cmd = op.spark_submit_command()
    assert cmd[cmd.index("--model-name") :] == [
        "--model-name",
        "m",
        "--max-invalid",
        "3",
        "--max-label-change-share",
        "0.5",
    ]


def test_both_dags_expose_the_thresholds_as_params_and_pass_them_to_validate() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    for dag_id in ("image_scoring", "model_rescore"):
        dag = bag.dags[dag_id]
        for name in ("max_missing", "max_invalid", "max_label_change_share", "max_psi"):
            assert name in dag.params, f"{dag_id} lacks Param {name}"
            assert dag.params[name] is None, "an empty Param keeps the gates file's value"
        validate = dag.get_task("validate")
        assert validate.thresholds == {
            "max_missing": "{{ params.max_missing }}",
            "max_invalid": "{{ params.max_invalid }}",
            "max_label_change_share": "{{ params.max_label_change_share }}",
            "max_psi": "{{ params.max_psi }}",
        }
        assert [link.name for link in validate.operator_extra_links] == ["Validation report"]


# ---- execute: the job is replaced by a stand-in that writes a report like the real one ----------


class FakeTI:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _fake_job(monkeypatch: pytest.MonkeyPatch, home: Path, failed: list[str], exit_code: int) -> None:
    """SparkSubmitOperator.execute replaced: write reports/m/2/r.{json,html}, fail like spark-submit does."""
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk.exceptions import AirflowException

    def execute(self: Any, context: Any) -> None:
        folder = home / "reports" / "m" / "2"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "r.html").write_text("<html></html>")
        report = {
            "model_name": "m",
            "model_version": "2",
            "passed": not failed,
            "failed_gates": failed,
            "verdict": f"FAILED {len(failed)} of 9 gates" if failed else "PASSED all 9 gates",
            "files": {"json": str(folder / "r.json"), "html": str(folder / "r.html")},
        }
        (folder / "r.json").write_text(json.dumps(report))
        if exit_code:
            raise AirflowException(f"Cannot execute: spark-submit ... Error code is: {exit_code}.")

    monkeypatch.setattr(SparkSubmitOperator, "execute", execute)


def _operator(home: Path) -> Any:
    from rescore_airflow.operators import ValidatePredictionsOperator

    return ValidatePredictionsOperator(
        task_id="validate", rescore_home=str(home), run_label="r", model_name="m", model_version="2", py_files="x.zip"
    )


def test_failed_gates_fail_the_task_naming_every_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    # Given a job that fails three gates
    _fake_job(monkeypatch, tmp_path, ["coverage", "known_labels", "label_change"], exit_code=1)
    ti = FakeTI()
    # When the task runs, it fails without retry and its error names every failed gate
    with pytest.raises(AirflowFailException) as failure:
        _operator(tmp_path).execute({"ti": ti})
    message = str(failure.value)
    assert "validation of m v2 failed 3 gate(s): coverage, known_labels, label_change" in message
    # and the report's link is still pushed for the UI (the failing report is the one to read)
    html = tmp_path / "reports" / "m" / "2" / "r.html"
    assert ti.pushed == {"validation_report_url": html.resolve().as_uri()}
    assert html.resolve().as_uri() in message


def test_a_passing_report_links_under_the_reports_base_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_job(monkeypatch, tmp_path, [], exit_code=0)
    monkeypatch.setenv("RESCORE_REPORTS_BASE_URL", "http://127.0.0.1:8081/reports/")
    ti = FakeTI()
    _operator(tmp_path).execute({"ti": ti})
    assert ti.pushed == {"validation_report_url": "http://127.0.0.1:8081/reports/m/2/r.html"}


def test_the_job_gets_the_gates_file_in_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_job(monkeypatch, tmp_path, [], exit_code=0)
    monkeypatch.delenv("RESCORE_GATES_CONFIG", raising=False)
    op = _operator(tmp_path)
    op.execute({"ti": FakeTI()})
    assert op.env_vars["RESCORE_GATES_CONFIG"] == str(ROOT / "include" / "validation" / "gates.toml")


def test_a_job_that_wrote_no_report_fails_with_its_own_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    # Given a report left by an earlier try, and a job that now crashes before writing one
    stale = tmp_path / "reports" / "m" / "2" / "r.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"passed": False, "failed_gates": ["coverage"]}))
    old = time.time() - 3600
    os.utime(stale, (old, old))

    def crash(self: Any, context: Any) -> None:
        raise AirflowException("Cannot execute: spark-submit ... Error code is: 2.")

    monkeypatch.setattr(SparkSubmitOperator, "execute", crash)
    # Then the task fails with the job's error (retried), not with the stale report's verdict
    with pytest.raises(AirflowException, match="Error code is: 2") as failure:
        _operator(tmp_path).execute({"ti": FakeTI()})
    assert not isinstance(failure.value, AirflowFailException)


# ---- the extra link ---------------------------------------------------------------------------


def test_report_url_is_a_file_url_without_a_base_url(tmp_path: Path) -> None:
    from rescore_airflow.links import report_url

    page = tmp_path / "reports" / "m" / "2" / "run 1.html"
    assert report_url(page, tmp_path / "reports") == f"file://{tmp_path.resolve()}/reports/m/2/run%201.html"


def test_report_url_is_under_the_base_url_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rescore_airflow.links import report_url

    monkeypatch.setenv("RESCORE_REPORTS_BASE_URL", "https://reports.example.org/rescore")
    page = tmp_path / "reports" / "shapes" / "2" / "manual__2026-03-01T00_00_00.html"
    assert (
        report_url(page, tmp_path / "reports")
        == "https://reports.example.org/rescore/shapes/2/manual__2026-03-01T00_00_00.html"
    )
    with pytest.raises(ValueError, match="not under the reports folder"):
        report_url(tmp_path / "elsewhere.html", tmp_path / "reports")


def test_the_link_is_the_url_the_task_pushed(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time.xcom import XCom

    from rescore_airflow.links import ValidationReportLink

    asked: list[tuple[Any, str]] = []

    def get_value(*, ti_key: Any, key: str) -> Any:
        asked.append((ti_key, key))
        return "file:///r/m/2/r.html" if key == "validation_report_url" else None

    monkeypatch.setattr(XCom, "get_value", staticmethod(get_value))
    link = ValidationReportLink()
    assert link.name == "Validation report"
    assert link.get_link(object(), ti_key="ti-key") == "file:///r/m/2/r.html"  # type: ignore[arg-type]
    assert asked == [("ti-key", "validation_report_url")]
    # nothing pushed (the job never got to write a report): no link
    monkeypatch.setattr(XCom, "get_value", staticmethod(lambda *, ti_key, key: None))
    assert link.get_link(object(), ti_key="ti-key") == ""  # type: ignore[arg-type]
