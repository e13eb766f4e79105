"""
### Model-update re-scoring

Runs continuously, one run at a time. Each run **waits** (deferred, in the triggerer) until a
model version becomes champion that is not the promoted one (while nothing is promoted it
waits too: `image_scoring` scores and promotes the first version), then **re-scores** every image
with it into its own partition, **validates** the new predictions against the promoted version,
and **promotes** them: readers switch in one atomic step. A failing gate fails the run and keeps
the old version current; that champion is not re-tried until a new version is published or
the run is triggered with `retry_failed`. A continuous DAG runs one run at a time: the triggered
run stays queued until the run now waiting for a champion ends, so mark that one failed.

Images that land while a re-score runs are outside its scope (re-scoring and validation share a
cutoff, the start of the `rescore` task); the hourly `image_scoring` scores them with the
promoted version once it is switched.

`from_date` / `to_date` limit re-scoring and validation to images ingested in that range (for a
quick look at a new version on recent data); the promoted version then serves only those images,
so leave both empty for a full re-score before a real switch-over.

Making an older, already scored version champion (a rollback) promotes it without recomputing:
re-scoring only scores images that have no prediction from that version.

Validation gates and their thresholds: `include/validation/gates.toml` (or the file named by
`$RESCORE_GATES_CONFIG`); trigger with `max_label_change_share`, `max_psi`, ... to override one for
this run (then also `retry_failed` if that champion already failed). The validate task's
**Validation report** link opens the HTML report (old vs new label shares, score histograms,
confusion table).

The registry is the `rescore_registry` connection (default: the model store folder).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from rescore_airflow.model_registry import fetch_champion_version
from rescore_airflow.operators import (
    PromotePredictionsOperator,
    ScoreImagesOperator,
    ValidatePredictionsOperator,
    date_range_params,
    validation_params,
    validation_thresholds_from_params,
)
from rescore_airflow.sensors import ModelVersionSensor
from rescore_airflow.settings import default_model_name

NEW_VERSION = "{{ ti.xcom_pull(task_ids='wait_for_new_champion') }}"


@dag(
    dag_id="model_rescore",
    schedule="@continuous",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["rescore", "models"],
    doc_md=__doc__,
    default_args={"owner": "rescore", "retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "model_name": Param(default_model_name(), type="string", description="Registered model to watch."),
        "batch_size": Param(64, type="integer", minimum=1, maximum=4096, description="Images per model batch."),
        "keep_versions": Param(3, type="integer", minimum=1, description="Versions of predictions to keep."),
        "retry_failed": Param(False, type="boolean", description="Re-score a champion that failed validation."),
        **date_range_params("re-score and validate"),
        **validation_params(),
    },
)
def model_rescore() -> None:
    wait = ModelVersionSensor(
        task_id="wait_for_new_champion",
        model_name="{{ params.model_name }}",
        retry_failed="{{ params.retry_failed }}",
        poke_interval=30,
    )

    @task
    def fetch_model_version(version: str, params: dict[str, Any] | None = None) -> str:
        """Copy the new version from the registry into the model store folder the Spark driver reads."""
        assert params is not None
        return fetch_champion_version(params["model_name"], version)

    fetched = fetch_model_version(version=NEW_VERSION)
    wait >> fetched
    rescore = ScoreImagesOperator(
        task_id="rescore",
        model_name="{{ params.model_name }}",
        model_version=NEW_VERSION,
        batch_size="{{ params.batch_size }}",
        from_date="{{ params.from_date }}",
        to_date="{{ params.to_date }}",
        cut_off_scope=True,
    )
    validate = ValidatePredictionsOperator(
        task_id="validate",
        model_name="{{ params.model_name }}",
        model_version=NEW_VERSION,
        thresholds=validation_thresholds_from_params(),
        from_date="{{ params.from_date }}",
        to_date="{{ params.to_date }}",
        ingested_before="{{ ti.xcom_pull(task_ids='rescore', key='ingested_before') }}",
    )
    promote = PromotePredictionsOperator(
        task_id="promote",
        model_name="{{ params.model_name }}",
        model_version=NEW_VERSION,
        keep_versions="{{ params.keep_versions }}",
    )
    fetched >> rescore >> validate >> promote


model_rescore()
