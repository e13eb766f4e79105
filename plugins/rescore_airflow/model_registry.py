"""Which model version a DAG run works with, resolved once per run on the Airflow side."""

from __future__ import annotations

from rescore_airflow import settings
from spark_jobs.current import resolve_version
from spark_jobs.model_store import ModelStore


def resolve_scoring_version(model_name: str, requested: str | None = None) -> str:
    """The version a scoring run uses: ``requested`` if given, else the promoted one, else the champion."""
    paths = settings.paths()
    return resolve_version(paths, ModelStore(paths.models), model_name, requested)


def fetch_champion_version(model_name: str, version: str, registry_conn_id: str = "rescore_registry") -> str:
    """Make ``version`` available in the model store folder the Spark driver reads; returns it."""
    from rescore_airflow.hooks import ModelRegistryHook

    ModelRegistryHook(registry_conn_id=registry_conn_id).fetch_version(model_name, version)
    return version
