"""Operators that run Rescore's Spark jobs: thin ``SparkSubmitOperator`` subclasses.

Each turns typed keyword arguments into one spark-submit call: the job's entry module as the
application, ``spark_jobs`` zipped into ``--py-files``, a conf profile from ``include/spark`` as
``--properties-file``, and the job's own arguments. The Spark master comes from the
``spark_default`` connection (``RESCORE_SPARK_CONN_ID``), so moving from ``local[*]`` to a
cluster is a connection change, not a code change.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseOperator, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from rescore_airflow import settings
from rescore_airflow.links import REPORT_URL_XCOM_KEY, ValidationReportLink, report_url
from rescore_airflow.packaging import build_spark_jobs_zip
from spark_jobs.contract import RescorePaths
from spark_jobs.gates import GATES_CONFIG_ENV, THRESHOLD_NAMES, gates_config_path

if TYPE_CHECKING:
    from airflow.sdk import Context


class RescoreSparkSubmitOperator(SparkSubmitOperator):
    """Submit one of Rescore's Spark jobs.

    :param rescore_home: root of tables, models and reports (templated); default ``$RESCORE_HOME``.
    :param spark_profile: name of a properties file in ``include/spark`` (``cpu``, ``gpu``);
        default ``$RESCORE_SPARK_PROFILE`` or ``cpu``.
    :param run_label: recorded on every row the job writes (templated); default the Airflow run id.
    :param kwargs: anything ``SparkSubmitOperator`` takes (``conf``, ``executor_memory``, ...).
    """

    #: Entry module under ``spark_jobs/``.
    job: ClassVar[str] = ""
    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "rescore_home", "run_label")
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        rescore_home: str | None = None,
        spark_profile: str | None = None,
        run_label: str = "{{ run_id }}",
        **kwargs: Any,
    ) -> None:
        if not self.job:
            raise TypeError(f"{type(self).__name__} must set the class attribute 'job'")
        home = rescore_home or settings.rescore_home()
        # py_files left to us: the zip of spark_jobs under the (rendered) home, built by execute
        self._builds_py_files = "py_files" not in kwargs
        env_vars = {
            "PYSPARK_PYTHON": settings.spark_python(),
            "PYSPARK_DRIVER_PYTHON": settings.spark_python(),
            # spark-submit ships with pyspark next to the interpreter; find it even if PATH lacks the venv.
            "PATH": os.pathsep.join([os.path.dirname(settings.spark_python()), os.environ.get("PATH", "")]),
            **(kwargs.pop("env_vars", None) or {}),
        }
        kwargs.setdefault("conn_id", settings.spark_conn_id())
        kwargs.setdefault("py_files", _jobs_zip(home))
        kwargs.setdefault("properties_file", str(settings.spark_profile_path(spark_profile)))
        kwargs.setdefault("name", f"rescore-{self.job}")
        super().__init__(application=str(settings.SPARK_JOBS_DIR / f"{self.job}.py"), env_vars=env_vars, **kwargs)
        self.rescore_home = home
        self.run_label = run_label

    def job_arguments(self) -> list[str]:
        """Arguments after the application path; subclasses add their own to these."""
        return ["--home", self.rescore_home, "--run-id", self.run_label]

    def spark_submit_command(self) -> list[str]:
        """The exact command ``execute`` runs (no process is started)."""
        self.application_args = self.job_arguments()
        return self._get_hook()._build_spark_submit_command(self.application)

    def execute(self, context: Context) -> None:
        if self._builds_py_files:
            # rescore_home may be a template: the zip goes where the rendered home says
            self.py_files = _jobs_zip(self.rescore_home)
            build_spark_jobs_zip(self.py_files)
        self.application_args = self.job_arguments()
        super().execute(context)


def _jobs_zip(home: str) -> str:
    return f"{RescorePaths(home).artifacts}/spark_jobs.zip"


class IngestImagesOperator(RescoreSparkSubmitOperator):
    """Load the files that arrived in the landing folder into the ``images`` table, once each.

    With ``source`` other than ``images`` it loads Parquet, CSV, JSON or TFRecord files into
    ``warehouse/records/<table_name>`` instead (see ``docs/ingest.md``).

    :param landing: folder or Hadoop URI to read (templated); default ``<home>/landing``.
    :param source: ``images`` (default), ``parquet``, ``csv``, ``json`` or ``tfrecord``.
    :param table_name: record sources: table name under ``warehouse/records`` (default: the source).
    :param path_column: record sources: the column holding image paths, checked to exist.
    :param checkpoint: stream checkpoint folder; default ``<home>/checkpoints/ingest``.
    :param max_pixels: images with more pixels are rejected as decompression bombs.
    :param max_file_bytes: larger files are stored by path only.
    :param path_glob: only take files whose name matches (templated), e.g. ``*.jpg``.
    :param recursive: descend into sub-folders of the landing folder (default True).
    :param modified_after: ignore files modified at or before this ISO 8601 time (templated).
    :param max_files_per_batch: files per micro-batch (each batch is one partition of the tables).
    :param merge_batches: merge each run of this many small consecutive batch partitions of the
        tables once the run has committed them (0: never; default: the job's, 16).
    """

    job = "ingest"
    template_fields: Sequence[str] = (
        *RescoreSparkSubmitOperator.template_fields,
        "landing",
        "path_glob",
        "modified_after",
        "max_pixels",
        "max_file_bytes",
    )

    def __init__(
        self,
        *,
        landing: str | None = None,
        source: str = "images",
        table_name: str | None = None,
        path_column: str | None = None,
        checkpoint: str | None = None,
        max_pixels: int | str | None = None,
        max_file_bytes: int | str | None = None,
        path_glob: str | None = None,
        recursive: bool = True,
        modified_after: str | None = None,
        max_files_per_batch: int | None = None,
        merge_batches: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.landing = landing
        self.source = source
        self.table_name = table_name
        self.path_column = path_column
        self.checkpoint = checkpoint
        self.max_pixels = max_pixels
        self.max_file_bytes = max_file_bytes
        self.path_glob = path_glob
        self.recursive = recursive
        self.modified_after = modified_after
        self.max_files_per_batch = max_files_per_batch
        self.merge_batches = merge_batches

    def job_arguments(self) -> list[str]:
        args = super().job_arguments()
        if self.landing:
            args += ["--landing", self.landing]
        if self.source != "images":
            args += ["--source", self.source]
        if self.table_name:
            args += ["--name", self.table_name]
        if self.path_column:
            args += ["--path-column", self.path_column]
        if self.checkpoint:
            args += ["--checkpoint", self.checkpoint]
        if _given(self.max_pixels):
            args += ["--max-pixels", str(self.max_pixels)]
        if _given(self.max_file_bytes):
            args += ["--max-file-bytes", str(self.max_file_bytes)]
        if self.path_glob:
            args += ["--path-glob", self.path_glob]
        if not self.recursive:
            args += ["--no-recursive"]
        if self.modified_after:
            args += ["--modified-after", self.modified_after]
        if self.max_files_per_batch is not None:
            args += ["--max-files-per-batch", str(self.max_files_per_batch)]
        if self.merge_batches is not None:
            args += ["--merge-batches", str(self.merge_batches)]
        return args


class _ModelJobOperator(RescoreSparkSubmitOperator):
    """A job that works on one version of one model."""

    template_fields: Sequence[str] = (*RescoreSparkSubmitOperator.template_fields, "model_name", "model_version")

    def __init__(self, *, model_name: str, model_version: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.model_version = model_version

    def job_arguments(self) -> list[str]:
        args = [*super().job_arguments(), "--model-name", self.model_name]
        if self.model_version not in (None, "", "None"):
            args += ["--model-version", str(self.model_version)]
        return args


class ScoreImagesOperator(_ModelJobOperator):
    """Score images with a model version: those without a prediction from it, or, with ``force``,
    every image in the date range again (replacing that version's predictions for them).

    Optional arguments left at None (or rendered empty) are not passed, so the job's defaults apply.

    :param model_name: model to score with (templated).
    :param model_version: version (templated); empty means the promoted version, else the champion.
    :param batch_size: images per model call (templated).
    :param arrow_batch_size: rows per Arrow batch sent to the Python workers (templated);
        default: the batch size.
    :param top_k: labels kept in the ``top_k`` column (templated); job default 3.
    :param decode: ``auto``, ``inline`` or ``prefetch`` (templated); job default ``auto``.
    :param decode_workers: threads or processes decoding in prefetch mode (templated); job default:
        the task's cores.
    :param decode_pool: ``auto``, ``thread`` or ``process`` (templated); job default ``auto``
        (processes on GPU with 4 or more workers, else threads).
    :param device: ``auto``, ``cpu``, ``cuda`` or ``cuda:<n>`` (templated); job default ``auto``.
    :param from_date: only images ingested on or after this ``YYYY-MM-DD`` day (templated).
    :param to_date: only images ingested on or before this ``YYYY-MM-DD`` day (templated).
    :param force: re-score images that already have a prediction from this version (templated;
        a bool, or a string such as ``"{{ params.force }}"`` rendering to true/false).
    :param compact_above_files: rewrite the version's predictions into large files once its
        partition holds more data files than this (templated); job default 64, 0 never.
    :param ingested_from: only images ingested at or after this ISO timestamp (templated).
    :param ingested_before: only images ingested before this ISO timestamp (templated); with
        ``ingested_from``, a backfill run's data interval (see :data:`BACKFILL_FROM`).
    :param cut_off_scope: take only images ingested before this task starts (unless
        ``ingested_before`` renders to a value), and push that instant as XCom ``ingested_before``
        so validation checks the same set (images landing during a long re-score are then scored
        by the next scheduled run, not counted missing).
    """

    job = "score"
    template_fields: Sequence[str] = (
        *_ModelJobOperator.template_fields,
        "batch_size",
        "arrow_batch_size",
        "top_k",
        "decode",
        "decode_workers",
        "decode_pool",
        "device",
        "from_date",
        "to_date",
        "ingested_from",
        "ingested_before",
        "force",
        "compact_above_files",
    )

    def __init__(
        self,
        *,
        batch_size: int | str = 64,
        arrow_batch_size: int | str | None = None,
        top_k: int | str | None = None,
        decode: str | None = None,
        decode_workers: int | str | None = None,
        decode_pool: str | None = None,
        device: str | None = None,
        from_date: str | None = None,
        to_date: str | None = None,
        ingested_from: str | None = None,
        ingested_before: str | None = None,
        force: bool | str = False,
        compact_above_files: int | str | None = None,
        cut_off_scope: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cut_off_scope = cut_off_scope
        self.ingested_from = ingested_from
        self.ingested_before = ingested_before
        self.batch_size = batch_size
        self.arrow_batch_size = arrow_batch_size
        self.top_k = top_k
        self.decode = decode
        self.decode_workers = decode_workers
        self.decode_pool = decode_pool
        self.device = device
        self.from_date = from_date
        self.to_date = to_date
        self.force = force
        self.compact_above_files = compact_above_files

    def job_arguments(self) -> list[str]:
        args = [*super().job_arguments(), "--batch-size", str(self.batch_size)]
        for flag, value in (
            ("--arrow-batch-size", self.arrow_batch_size),
            ("--top-k", self.top_k),
            ("--decode", self.decode),
            ("--decode-workers", self.decode_workers),
            ("--decode-pool", self.decode_pool),
            ("--device", self.device),
            ("--from-date", self.from_date),
            ("--to-date", self.to_date),
            ("--ingested-from", self.ingested_from),
            ("--ingested-before", self.ingested_before),
            ("--compact-above-files", self.compact_above_files),
        ):
            if _given(value):
                args += [flag, str(value).strip()]
        if str(self.force).strip().lower() in ("true", "1", "yes"):
            args.append("--force")
        return args

    def execute(self, context: Context) -> None:
        check_scope_arguments(self.from_date, self.to_date, self.ingested_from, self.ingested_before)
        if self.cut_off_scope and not _given(self.ingested_before):
            from datetime import UTC, datetime

            self.ingested_before = datetime.now(UTC).isoformat()
        if self.cut_off_scope:
            context["ti"].xcom_push(key="ingested_before", value=str(self.ingested_before).strip())
        super().execute(context)


def _given(value: Any) -> bool:
    """Whether a (rendered) argument carries a value; a null Param renders as ``"None"``."""
    return value is not None and str(value).strip() not in ("", "None")


#: ``ingested_from`` / ``ingested_before`` templates that scope a backfill run to its data
#: interval (the images ingested in it) and leave every other run unscoped: a backfill of an
#: hourly DAG is one run per hour, and each must work on its own hour, not all repeat the whole
#: range (with ``force``, every run would re-score every image of it).
BACKFILL_FROM = (
    "{{ data_interval_start.isoformat() if dag_run.run_type == 'backfill' and data_interval_start else '' }}"
)
BACKFILL_BEFORE = "{{ data_interval_end.isoformat() if dag_run.run_type == 'backfill' and data_interval_end else '' }}"


def check_scope_arguments(from_date: Any, to_date: Any, ingested_from: Any = None, ingested_before: Any = None) -> None:
    """Refuse rendered scope arguments that cannot work, before spark-submit starts a JVM: not a
    date or timestamp, or a range whose ends are swapped. An ``AirflowFailException``: a retry
    would get the same arguments."""
    from datetime import date, datetime

    from spark_jobs.scope import check_scope
    from spark_jobs.session import JobError

    def parsed(name: str, value: Any, kind: type[date] | type[datetime]) -> Any:
        if not _given(value):
            return None
        text = str(value).strip()
        try:
            return kind.fromisoformat(text)
        except ValueError:
            example = "2026-11-28" if kind is date else "2026-11-28T09:00:00+00:00"
            raise AirflowFailException(f"{name} {text!r} is not an ISO {kind.__name__}: use e.g. {example}") from None

    try:
        check_scope(
            parsed("from_date", from_date, date),
            parsed("to_date", to_date, date),
            parsed("ingested_from", ingested_from, datetime),
            parsed("ingested_before", ingested_before, datetime),
        )
    except JobError as exc:
        raise AirflowFailException(f"{exc} (fix the run's params and trigger it again)") from None


#: DAG Params of the validation thresholds that a triggered run may override; ``None`` (the
#: default) keeps the value of the gates file.
VALIDATION_PARAMS: dict[str, tuple[str, str]] = {
    "max_missing": ("integer", "Images in scope allowed to lack a prediction."),
    "max_invalid": ("integer", "Rows allowed to break each sanity invariant (NaN, range, sum, label)."),
    "max_label_change_share": ("number", "Largest share of images whose label may change vs the promoted version."),
    "max_psi": ("number", "Largest population stability index of the scores vs the promoted version."),
}


def validation_params() -> dict[str, Param]:
    """The validation-threshold Params a DAG exposes; empty means the gates file decides."""
    return {
        name: Param(
            None,
            type=["null", kind],
            minimum=0,
            description=f"{text} Empty: the value in include/validation/gates.toml (or $RESCORE_GATES_CONFIG).",
        )
        for name, (kind, text) in VALIDATION_PARAMS.items()
    }


def date_range_params(what: str) -> dict[str, Param]:
    """``from_date`` / ``to_date`` Params (``YYYY-MM-DD``, inclusive, on the ingestion day); empty: no bound.

    :param what: what the range limits, e.g. ``"score and validate"``, for the descriptions.
    """
    return {
        name: Param(
            None,
            type=["null", "string"],
            format="date",
            description=f"Only {what} images ingested on or {side} this day (YYYY-MM-DD).",
        )
        for name, side in (("from_date", "after"), ("to_date", "before"))
    }


def validation_thresholds_from_params() -> dict[str, str]:
    """``thresholds=`` for :class:`ValidatePredictionsOperator`: each Param, rendered at run time."""
    return {name: f"{{{{ params.{name} }}}}" for name in VALIDATION_PARAMS}


class ValidatePredictionsOperator(_ModelJobOperator):
    """Validate a model version's predictions; the task fails when any gate fails.

    The job writes ``$RESCORE_HOME/reports/<model>/<version>/<run>.{json,html}``. The task logs
    the HTML report's path and a one-line verdict, pushes the report's URL to XCom for the
    "Validation report" extra link, and when gates fail raises an error naming every one of them
    (without retries: the same predictions would fail the same gates).

    :param model_name: model whose predictions are checked (templated).
    :param model_version: version (templated); empty means the promoted version, else the champion.
    :param thresholds: per-run threshold overrides, e.g. ``{"max_psi": 0.3}`` (templated; names
        as in ``include/validation/gates.toml``; empty or ``None`` values keep the file's value).
    :param from_date: first ingestion date in scope, ``YYYY-MM-DD``, inclusive (templated).
    :param to_date: last ingestion date in scope, ``YYYY-MM-DD``, inclusive (templated).
    :param ingested_before: only images ingested before this ISO timestamp (templated): the
        re-scoring task's cutoff, ``{{ ti.xcom_pull(task_ids='rescore', key='ingested_before') }}``,
        or with ``ingested_from`` a backfill run's data interval.
    :param ingested_from: only images ingested at or after this ISO timestamp (templated).
    """

    job = "validate"
    template_fields: Sequence[str] = (
        *_ModelJobOperator.template_fields,
        "thresholds",
        "from_date",
        "to_date",
        "ingested_before",
        "ingested_from",
    )
    operator_extra_links = (ValidationReportLink(),)

    def __init__(
        self,
        *,
        thresholds: dict[str, Any] | None = None,
        from_date: str | None = None,
        to_date: str | None = None,
        ingested_before: str | None = None,
        ingested_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(thresholds or {}) - set(THRESHOLD_NAMES))
        if unknown:
            raise ValueError(f"unknown validation thresholds {unknown}: use names from {list(THRESHOLD_NAMES)}")
        self.thresholds = dict(thresholds or {})
        self.from_date = from_date
        self.to_date = to_date
        self.ingested_before = ingested_before
        self.ingested_from = ingested_from

    def job_arguments(self) -> list[str]:
        args = super().job_arguments()
        if _given(self.from_date):
            args += ["--from-date", str(self.from_date)]
        if _given(self.to_date):
            args += ["--to-date", str(self.to_date)]
        if _given(self.ingested_from):
            args += ["--ingested-from", str(self.ingested_from).strip()]
        if _given(self.ingested_before):
            args += ["--ingested-before", str(self.ingested_before).strip()]
        for name in THRESHOLD_NAMES:
            if _given(self.thresholds.get(name)):
                args += ["--" + name.replace("_", "-"), str(self.thresholds[name])]
        return args

    def _report_written_since(self, started: float) -> Path | None:
        """The JSON report this run's job wrote (the version may have been resolved by the job)."""
        from spark_jobs.validate import report_stem

        version = str(self.model_version) if _given(self.model_version) else "*"
        stem = report_stem(RescorePaths(self.rescore_home).reports, self.model_name, version, self.run_label)
        fresh = [p for p in stem.parent.parent.glob(f"{version}/{stem.name}.json") if p.stat().st_mtime >= started]
        return max(fresh, key=lambda p: p.stat().st_mtime) if fresh else None

    def execute(self, context: Context) -> None:
        check_scope_arguments(self.from_date, self.to_date, self.ingested_from, self.ingested_before)
        started = time.time()
        # The job finds the thresholds file even when spark_jobs runs from the --py-files zip.
        self.env_vars = {GATES_CONFIG_ENV: str(gates_config_path()), **(self.env_vars or {})}
        job_error: AirflowException | None = None
        try:
            super().execute(context)
        except AirflowException as exc:
            job_error = exc
        report_file = self._report_written_since(started)
        if report_file is None:
            if job_error is not None:
                raise job_error
            raise AirflowException(
                f"validate exited 0 but wrote no report for run {self.run_label!r} under "
                f"{RescorePaths(self.rescore_home).reports}/{self.model_name}: see the job's log above"
            )
        report = json.loads(report_file.read_text())
        html = report.get("files", {}).get("html", str(report_file.with_suffix(".html")))
        url = report_url(html, RescorePaths(self.rescore_home).reports)
        context["ti"].xcom_push(key=REPORT_URL_XCOM_KEY, value=url)
        self.log.info("validation report: %s", html)
        self.log.info("%s", report["verdict"])
        if not report["passed"]:
            failed = report["failed_gates"]
            # The same predictions fail the same gates again: no retry.
            raise AirflowFailException(
                f"validation of {report['model_name']} v{report['model_version']} failed "
                f"{len(failed)} gate(s): {', '.join(failed)}; report: {url}"
            ) from job_error
        if job_error is not None:
            raise job_error


class PromotePredictionsOperator(BaseOperator):
    """Switch readers to a validated model version in one atomic step, then prune old versions.

    Runs in the Airflow worker (a pointer rename needs no Spark). Refuses a version without
    predictions or whose newest validation report failed, so the old version stays current.

    :param model_name: model to promote (templated).
    :param model_version: version to promote (templated).
    :param keep_versions: how many versions' predictions to keep, the promoted one included (templated).
    :param rescore_home: root of tables and reports (templated); default ``$RESCORE_HOME``.
    :param only_if_unpromoted: promote only when no version of the model is promoted yet.
    """

    template_fields: Sequence[str] = ("model_name", "model_version", "keep_versions", "rescore_home")
    ui_color = "#e3ecfa"

    def __init__(
        self,
        *,
        model_name: str,
        model_version: str,
        keep_versions: int | str = 3,
        rescore_home: str | None = None,
        only_if_unpromoted: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.model_version = model_version
        self.keep_versions = keep_versions
        self.only_if_unpromoted = only_if_unpromoted
        self.rescore_home = rescore_home or settings.rescore_home()

    def execute(self, context: Context) -> str:
        from spark_jobs.promote import PromotionError, promote

        try:
            result = promote(
                RescorePaths(self.rescore_home),
                self.model_name,
                str(self.model_version),
                keep_versions=int(self.keep_versions),
                only_if_unpromoted=self.only_if_unpromoted,
            )
        except PromotionError as exc:
            raise AirflowException(str(exc)) from exc
        self.log.info(
            "readers of %s now use v%s (previously %s); deleted old versions: %s",
            result.model_name,
            result.version,
            result.previous or "none",
            result.deleted_versions or "none",
        )
        return result.version
