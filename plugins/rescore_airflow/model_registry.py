"""Which model version a DAG run works with, resolved once per run on the Airflow side."""

from __future__ import annotations

from rescore_airflow import settings
from rescore_airflow.hooks import ModelRegistryHook
from spark_jobs.current import current_version
from spark_jobs.model_store import ModelStoreError


def resolve_scoring_version(
    model_name: str, requested: str | None = None, registry_conn_id: str = ModelRegistryHook.default_conn_name
) -> str:
    """The version a scoring run uses: ``requested`` if given, else the promoted one, else the
    registry's champion. The version is materialised in the model store folder the Spark jobs read."""
    hook = ModelRegistryHook(registry_conn_id=registry_conn_id)
    version = requested if requested not in (None, "", "None") else None
    version = version or current_version(settings.paths(), model_name) or hook.champion(model_name)
    if version is None:
        raise ModelStoreError(
            f"model {model_name!r} has no promoted version and no champion in the registry "
            f"({hook.get_config().backend}): publish a version first"
        )
    hook.fetch_version(model_name, str(version))
    return str(version)


def fetch_champion_version(
    model_name: str, version: str, registry_conn_id: str = ModelRegistryHook.default_conn_name
) -> str:
    """Make ``version`` available in the model store folder the Spark driver reads; returns it."""
    ModelRegistryHook(registry_conn_id=registry_conn_id).fetch_version(model_name, version)
    return version
