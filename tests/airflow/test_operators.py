"""Each operator builds exactly the spark-submit command it should (no process is started)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
HOME = "/data/rescore"
CPU_CONF = str(ROOT / "include" / "spark" / "cpu.conf")
ZIP = "/data/rescore/artifacts/spark_jobs.zip"


@pytest.fixture(autouse=True)
def _local_master(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[2]"}')
    monkeypatch.delenv("RESCORE_SPARK_PROFILE", raising=False)


def test_ingest_operator_builds_the_spark_submit_command() -> None:
    from rescore_airflow.operators import IngestImagesOperator

    # Given an ingest task with a landing folder and a size limit
    op = IngestImagesOperator(
        task_id="ingest", rescore_home=HOME, run_label="run-1", landing="s3a://lake/in", max_file_bytes=1000
    )
    # When the command is built
    cmd = op.spark_submit_command()
    # Then it is exactly one spark-submit of the ingest entry point with the job's flags
    assert cmd == [
        "spark-submit",
        "--master", "local[2]",
        "--properties-file", CPU_CONF,
        "--py-files", ZIP,
        "--name", "rescore-ingest",
        str(ROOT / "spark_jobs" / "ingest.py"),
        "--home", HOME,
        "--run-id", "run-1",
        "--landing", "s3a://lake/in",
        "--max-file-bytes", "1000",
    ]  # fmt: skip


def test_ingest_operator_passes_every_stream_and_source_option() -> None:
    from rescore_airflow.operators import IngestImagesOperator

    # Given an ingest task for TFRecord files with every option set
    op = IngestImagesOperator(
        task_id="ingest",
        rescore_home=HOME,
        run_label="run-1",
        landing="hdfs:///lake/features",
        source="tfrecord",
        table_name="features",
        path_column="image_path",
        checkpoint="/data/ckpt/features",
        max_pixels=5000,
        max_file_bytes=10,
        path_glob="*.tfrecord",
        recursive=False,
        modified_after="2026-01-01",
        max_files_per_batch=500,
        merge_batches=0,
    )
    # When the command is built
    cmd = op.spark_submit_command()
    # Then each option is one flag of the ingest job, in a fixed order
    assert cmd[cmd.index(str(ROOT / "spark_jobs" / "ingest.py")) + 1 :] == [
        "--home", HOME,
        "--run-id", "run-1",
        "--landing", "hdfs:///lake/features",
        "--source", "tfrecord",
        "--name", "features",
        "--path-column", "image_path",
        "--checkpoint", "/data/ckpt/features",
        "--max-pixels", "5000",
        "--max-file-bytes", "10",
        "--path-glob", "*.tfrecord",
        "--no-recursive",
        "--modified-after", "2026-01-01",
        "--max-files-per-batch", "500",
        "--merge-batches", "0",
    ]  # fmt: skip
    assert {"landing", "path_glob", "modified_after"} <= set(op.template_fields)


def test_score_operator_builds_the_spark_submit_command() -> None:
    from rescore_airflow.operators import ScoreImagesOperator

    op = ScoreImagesOperator(
        task_id="score", rescore_home=HOME, run_label="run-1", model_name="shapes", model_version="3", batch_size=128
    )
    assert op.spark_submit_command() == [
        "spark-submit",
        "--master", "local[2]",
        "--properties-file", CPU_CONF,
        "--py-files", ZIP,
        "--name", "rescore-score",
        str(ROOT / "spark_jobs" / "score.py"),
        "--home", HOME,
        "--run-id", "run-1",
        "--model-name", "shapes",
        "--model-version", "3",
        "--batch-size", "128",
    ]  # fmt: skip


def test_score_operator_passes_the_scoring_flags() -> None:
    from rescore_airflow.operators import ScoreImagesOperator

    op = ScoreImagesOperator(
        task_id="score",
        rescore_home=HOME,
        run_label="run-1",
        model_name="shapes",
        model_version="3",
        batch_size=32,
        arrow_batch_size=256,
        top_k=5,
        decode="prefetch",
        decode_workers=4,
        decode_pool="process",
        device="cuda:0",
        from_date="2026-01-01",
        to_date="2026-01-31",
        force=True,
        compact_above_files=16,
    )
    assert op.spark_submit_command() == [
        "spark-submit",
        "--master", "local[2]",
        "--properties-file", CPU_CONF,
        "--py-files", ZIP,
        "--name", "rescore-score",
        str(ROOT / "spark_jobs" / "score.py"),
        "--home", HOME,
        "--run-id", "run-1",
        "--model-name", "shapes",
        "--model-version", "3",
        "--batch-size", "32",
        "--arrow-batch-size", "256",
        "--top-k", "5",
        "--decode", "prefetch",
        "--decode-workers", "4",
        "--decode-pool", "process",
        "--device", "cuda:0",
        "--from-date", "2026-01-01",
        "--to-date", "2026-01-31",
        "--compact-above-files", "16",
        "--force",
    ]  # fmt: skip


def test_score_operator_templates_the_scope_and_omits_what_renders_empty() -> None:
    from rescore_airflow.operators import ScoreImagesOperator

    def rendered(params: dict[str, object]) -> list[str]:
        op = ScoreImagesOperator(
            task_id="score",
            rescore_home=HOME,
            model_name="m",
            top_k="{{ params.top_k }}",
            from_date="{{ params.from_date }}",
            to_date="{{ params.to_date }}",
            force="{{ params.force }}",
        )
        flags = {"arrow_batch_size", "top_k", "decode", "decode_workers", "decode_pool", "from_date", "to_date"}
        flags.add("compact_above_files")
        assert {*flags, "force"} <= set(op.template_fields)
        op.render_template_fields({"params": params, "run_id": "r"})
        return op.job_arguments()

    args = rendered({"top_k": 2, "from_date": "2026-02-01", "to_date": None, "force": True})
    assert args[-7:] == ["--batch-size", "64", "--top-k", "2", "--from-date", "2026-02-01", "--force"]
    args = rendered({"top_k": "", "from_date": "", "to_date": "", "force": False})
    assert args[-2:] == ["--batch-size", "64"]


def test_empty_model_version_is_left_to_the_job() -> None:
    from rescore_airflow.operators import ValidatePredictionsOperator

    # Given a version param that rendered to nothing (the DAG's "use the promoted version")
    op = ValidatePredictionsOperator(
        task_id="validate", rescore_home=HOME, run_label="r", model_name="m", model_version=""
    )
    # Then no --model-version flag is passed
    assert op.spark_submit_command()[-6:] == ["--home", HOME, "--run-id", "r", "--model-name", "m"]


def test_spark_master_comes_from_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from rescore_airflow.operators import ScoreImagesOperator

    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "spark://10.0.0.5", "port": 7077}')
    op = ScoreImagesOperator(task_id="score", rescore_home=HOME, model_name="m")
    cmd = op.spark_submit_command()
    assert cmd[1:3] == ["--master", "spark://10.0.0.5:7077"]


def test_gpu_profile_selects_the_gpu_properties_file() -> None:
    from rescore_airflow.operators import ScoreImagesOperator

    op = ScoreImagesOperator(task_id="score", rescore_home=HOME, model_name="m", spark_profile="gpu")
    cmd = op.spark_submit_command()
    assert cmd[cmd.index("--properties-file") + 1] == str(ROOT / "include" / "spark" / "gpu.conf")


def test_unknown_profile_is_a_clear_error() -> None:
    from rescore_airflow.operators import ScoreImagesOperator

    with pytest.raises(ValueError, match=r"Spark profile 'tpu' does not exist.*use one of \['cpu', 'gpu'\]"):
        ScoreImagesOperator(task_id="score", rescore_home=HOME, model_name="m", spark_profile="tpu")


def test_jobs_run_on_the_airflow_interpreter_by_default() -> None:
    from rescore_airflow.operators import ScoreImagesOperator

    op = ScoreImagesOperator(task_id="score", rescore_home=HOME, model_name="m")
    assert op.env_vars is not None
    assert op.env_vars["PYSPARK_PYTHON"] == sys.executable
    assert op.env_vars["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_templated_fields_are_rendered_into_the_arguments() -> None:
    from rescore_airflow.operators import ScoreImagesOperator

    op = ScoreImagesOperator(task_id="score", rescore_home=HOME, model_name="{{ params.m }}", batch_size="{{ 8 * 4 }}")
    assert {"model_name", "model_version", "batch_size", "rescore_home", "run_label"} <= set(op.template_fields)
    op.render_template_fields({"params": {"m": "cats"}, "run_id": "scheduled__x"})
    args = op.job_arguments()
    assert args == ["--home", HOME, "--run-id", "scheduled__x", "--model-name", "cats", "--batch-size", "32"]


def test_rescore_pushes_its_cutoff_and_validate_passes_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from rescore_airflow.operators import ScoreImagesOperator, ValidatePredictionsOperator

    submitted: list[list[str]] = []
    monkeypatch.setattr(SparkSubmitOperator, "execute", lambda self, context: submitted.append(self.application_args))
    monkeypatch.setattr("rescore_airflow.operators.build_spark_jobs_zip", lambda *a, **k: None)

    class FakeTI:
        def __init__(self) -> None:
            self.pushed: dict[str, object] = {}

        def xcom_push(self, key: str, value: object) -> None:
            self.pushed[key] = value

    ti = FakeTI()
    rescore = ScoreImagesOperator(task_id="rescore", model_name="shapes", model_version="2", cut_off_scope=True)
    rescore.execute({"ti": ti})  # type: ignore[arg-type]

    cutoff = ti.pushed["ingested_before"]
    assert isinstance(cutoff, str)
    args = submitted[0]
    assert args[args.index("--ingested-before") + 1] == cutoff
    validate = ValidatePredictionsOperator(
        task_id="validate", model_name="shapes", model_version="2", ingested_before=cutoff
    )
    command = validate.job_arguments()
    assert command[command.index("--ingested-before") + 1] == cutoff
    # and a plain scoring task takes every image
    plain = ScoreImagesOperator(task_id="score", model_name="shapes", model_version="1")
    assert "--ingested-before" not in plain.job_arguments()


def test_a_templated_home_gets_its_spark_jobs_zip_built_where_it_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from rescore_airflow.operators import ScoreImagesOperator

    submitted: list[str] = []
    monkeypatch.setattr(SparkSubmitOperator, "execute", lambda self, context: submitted.append(self.py_files))
    # Given a task whose home is a template
    op = ScoreImagesOperator(task_id="score", rescore_home="{{ params.home }}", model_name="m", model_version="1")
    op.render_template_fields({"params": {"home": str(tmp_path)}, "run_id": "r"})
    # When it runs
    op.execute({})  # type: ignore[arg-type]
    # Then spark-submit gets the zip under the rendered home, and the zip is there
    expected = tmp_path / "artifacts" / "spark_jobs.zip"
    assert submitted == [str(expected)]
    assert expected.is_file() and expected.stat().st_size > 0


def test_a_swapped_or_malformed_scope_fails_before_spark_submit_without_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk.exceptions import AirflowFailException

    from rescore_airflow.operators import ScoreImagesOperator, ValidatePredictionsOperator

    submitted: list[object] = []
    monkeypatch.setattr(SparkSubmitOperator, "execute", lambda self, context: submitted.append(self))
    monkeypatch.setattr("rescore_airflow.operators.build_spark_jobs_zip", lambda *a, **k: None)
    cases = [
        ({"from_date": "2026-11-07", "to_date": "2026-11-01"}, "swap them"),
        ({"from_date": "2026/11/01"}, "is not an ISO date"),
        (
            {"ingested_from": "2026-11-03T13:00:00+00:00", "ingested_before": "2026-11-03T12:00:00+00:00"},
            "is not before --ingested-before",
        ),
    ]
    for scope, message in cases:
        for operator in (ScoreImagesOperator, ValidatePredictionsOperator):
            op = operator(task_id="t", rescore_home=HOME, model_name="m", model_version="1", **scope)
            with pytest.raises(AirflowFailException, match=message):
                op.execute({})  # type: ignore[arg-type]
    assert submitted == []
    # while a range in order goes through
    ok = ScoreImagesOperator(
        task_id="t",
        rescore_home=HOME,
        model_name="m",
        model_version="1",
        ingested_from="2026-11-03T12:00:00+00:00",
        ingested_before="2026-11-03T13:00:00+00:00",
    )
    ok.execute({})  # type: ignore[arg-type]
    args = ok.job_arguments()
    assert len(submitted) == 1
    assert args[args.index("--ingested-from") + 1] == "2026-11-03T12:00:00+00:00"
    assert args[args.index("--ingested-before") + 1] == "2026-11-03T13:00:00+00:00"
