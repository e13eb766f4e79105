"""
### Image scoring

Every hour: **ingest** the files that landed since the last run into the `images` table
(exactly once, unreadable files to `rejects` with the reason), **score** every image that has no
prediction yet from the model version readers currently use (the promoted version, else the
registry's champion), then **validate** that version's predictions. The very first validated
version is **promoted** so readers have predictions; later switches belong to `model_rescore`.

Trigger with params to score with another model or version, or a different batch size, or to
loosen or tighten a validation threshold for this run (`max_missing`, `max_invalid`,
`max_label_change_share`, `max_psi`; empty keeps `include/validation/gates.toml`).
The validate task's **Validation report** link opens the HTML report.
Every task is idempotent: a retry, a cleared task or a backfill never duplicates rows.

**Backfills** (from the UI's "Backfill" or `airflow backfill create`): each run works on the
images ingested in its own data interval (an hour), so a backfill with `force` re-scores every
image of the range once, hour by hour, and one without `force` scores only what is missing.
To re-score a range in one run instead, trigger the DAG with `from_date`, `to_date` and `force`.

Tables live under `$RESCORE_HOME/warehouse`, reports under `$RESCORE_HOME/reports`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from rescore_airflow.model_registry import resolve_scoring_version
from rescore_airflow.operators import (
    BACKFILL_BEFORE,
    BACKFILL_FROM,
    IngestImagesOperator,
    PromotePredictionsOperator,
    ScoreImagesOperator,
    ValidatePredictionsOperator,
    date_range_params,
    validation_params,
    validation_thresholds_from_params,
)
from rescore_airflow.settings import default_model_name
from spark_jobs.ingest import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS


@dag(
    dag_id="image_scoring",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["rescore", "scoring"],
    doc_md=__doc__,
    default_args={"owner": "rescore", "retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "model_name": Param(default_model_name(), type="string", description="Model to score with."),
        "model_version": Param(
            None, type=["null", "string"], description="Version to score with; empty: the promoted one, else champion."
        ),
        "batch_size": Param(64, type="integer", minimum=1, maximum=4096, description="Images per model batch."),
        **date_range_params("score and validate"),
        "force": Param(False, type="boolean", description="Re-score images in range that already have a prediction."),
        "max_pixels": Param(
            DEFAULT_MAX_PIXELS,
            type="integer",
            minimum=1,
            description="Images with more pixels are rejected as decompression bombs (Pillow's default limit).",
        ),
        "max_file_bytes": Param(
            DEFAULT_MAX_FILE_BYTES,
            type="integer",
            minimum=1,
            description="Larger files are stored by path only; scoring reads them from there.",
        ),
        **validation_params(),
    },
)
def image_scoring() -> None:
    @task
    def resolve_model_version(params: dict[str, Any] | None = None) -> str:
        """Pin the model version once, so score and validate agree even if the champion moves."""
        assert params is not None
        return resolve_scoring_version(params["model_name"], params["model_version"])

    version = resolve_model_version()
    ingest = IngestImagesOperator(
        task_id="ingest", max_pixels="{{ params.max_pixels }}", max_file_bytes="{{ params.max_file_bytes }}"
    )
    score = ScoreImagesOperator(
        task_id="score",
        model_name="{{ params.model_name }}",
        model_version="{{ ti.xcom_pull(task_ids='resolve_model_version') }}",
        batch_size="{{ params.batch_size }}",
        from_date="{{ params.from_date }}",
        to_date="{{ params.to_date }}",
        ingested_from=BACKFILL_FROM,
        ingested_before=BACKFILL_BEFORE,
        force="{{ params.force }}",
    )
    validate = ValidatePredictionsOperator(
        task_id="validate",
        model_name="{{ params.model_name }}",
        model_version="{{ ti.xcom_pull(task_ids='resolve_model_version') }}",
        thresholds=validation_thresholds_from_params(),
        from_date="{{ params.from_date }}",
        to_date="{{ params.to_date }}",
        ingested_from=BACKFILL_FROM,
        ingested_before=BACKFILL_BEFORE,
    )
    bootstrap = PromotePredictionsOperator(
        task_id="promote_if_first",
        model_name="{{ params.model_name }}",
        model_version="{{ ti.xcom_pull(task_ids='resolve_model_version') }}",
        only_if_unpromoted=True,
    )
    [ingest, version] >> score >> validate >> bootstrap


image_scoring()
