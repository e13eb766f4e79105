"""``ModelRegistryHook``: the model registry a deployment uses, chosen by an Airflow connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from rescore_airflow import settings
from rescore_airflow.registry import ModelRegistry, RegistryConfig, registry_from_config
from spark_jobs.model_store import ModelStore


class ModelRegistryHook(BaseHook):
    """Talk to the model registry named by a connection.

    The connection's extra picks the backend: ``{"backend": "folder", "path": "/models"}`` or
    ``{"backend": "mlflow", "tracking_uri": "postgresql://..."}``. Without the connection the
    embedded model store folder (``$RESCORE_HOME/models``) is used.

    :param registry_conn_id: connection id (default ``rescore_registry``).
    """

    conn_name_attr = "registry_conn_id"
    default_conn_name = "rescore_registry"
    conn_type = "generic"
    hook_name = "Rescore model registry"

    def __init__(self, registry_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registry_conn_id = registry_conn_id
        self._registry: ModelRegistry | None = None

    def get_config(self) -> RegistryConfig:
        try:
            conn = self.get_connection(self.registry_conn_id)
        except Exception:
            return RegistryConfig("folder", settings.paths().models)
        extra = conn.extra_dejson
        backend = str(extra.get("backend", "folder"))
        location = str(extra.get("tracking_uri") or extra.get("path") or conn.host or "")
        return RegistryConfig(backend, location)

    def get_conn(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = registry_from_config(self.get_config(), settings.paths())
        return self._registry

    def champion(self, name: str) -> str | None:
        return self.get_conn().champion(name)

    def list_versions(self, name: str) -> list[str]:
        return self.get_conn().versions(name)

    def fetch_version(self, name: str, version: str) -> Path:
        """Materialise ``version`` in the model store folder the Spark jobs read."""
        return self.get_conn().fetch(name, version, ModelStore(settings.paths().models))
