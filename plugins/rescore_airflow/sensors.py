"""``ModelVersionSensor``: wait until a new model version becomes champion."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.bases.sensor import PokeReturnValue

from rescore_airflow import settings
from rescore_airflow.hooks import ModelRegistryHook
from rescore_airflow.registry import RegistryConfig, pending_champion, registry_from_config
from rescore_airflow.triggers import ModelVersionTrigger
from spark_jobs.contract import RescorePaths

if TYPE_CHECKING:
    from airflow.sdk import Context


class ModelVersionSensor(BaseSensorOperator):
    """Succeed when the champion of ``model_name`` differs from the promoted version; return it.

    While nothing of ``model_name`` is promoted it keeps waiting: the ``image_scoring`` DAG
    scores and promotes the first version.

    The comparison is against the promotion pointer (``warehouse/current.json``), so the sensor
    keeps no state of its own: restarting the scheduler or triggerer neither loses a new version
    nor fires twice for one that was already promoted. A registry that is down is logged and
    asked again, never a task failure.

    :param model_name: registered model to watch (templated).
    :param registry_conn_id: connection naming the registry (see ``ModelRegistryHook``).
    :param rescore_home: where the promotion pointer lives (templated); default ``$RESCORE_HOME``.
    :param deferrable: wait in the triggerer (default) instead of holding a worker slot.
    :param retry_failed: also fire for a champion whose last validation failed (templated).
    :param poke_interval: seconds between two looks at the registry.
    """

    template_fields: Sequence[str] = ("model_name", "rescore_home", "retry_failed")
    ui_color = "#fdf2d0"

    def __init__(
        self,
        *,
        model_name: str,
        registry_conn_id: str = ModelRegistryHook.default_conn_name,
        rescore_home: str | None = None,
        deferrable: bool = True,
        retry_failed: bool | str = False,
        poke_interval: float = 30,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", timedelta(days=7).total_seconds())
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.model_name = model_name
        self.registry_conn_id = registry_conn_id
        self.rescore_home = rescore_home or settings.rescore_home()
        self.deferrable = deferrable
        self.retry_failed = retry_failed

    @property
    def _retry_failed(self) -> bool:
        return str(self.retry_failed).lower() in ("true", "1", "yes")

    def _registry_config(self) -> RegistryConfig:
        return ModelRegistryHook(registry_conn_id=self.registry_conn_id).get_config()

    def _pending(self) -> str | None:
        paths = RescorePaths(self.rescore_home)
        try:
            registry = registry_from_config(self._registry_config(), paths)
            return pending_champion(registry, paths, self.model_name, retry_failed=self._retry_failed)
        except Exception as exc:
            self.log.warning("model registry unreachable (%s); will ask again", exc)
            return None

    def poke(self, context: Context) -> PokeReturnValue | bool:
        version = self._pending()
        if version is None:
            self.log.info("no new champion of %s to re-score; waiting", self.model_name)
            return False
        self.log.info("new champion %s v%s is not promoted yet", self.model_name, version)
        return PokeReturnValue(is_done=True, xcom_value=version)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        version = self._pending()
        if version is not None:
            self.log.info("new champion %s v%s is not promoted yet", self.model_name, version)
            return version
        self.defer(
            trigger=ModelVersionTrigger(
                model_name=self.model_name,
                registry=self._registry_config().to_dict(),
                rescore_home=self.rescore_home,
                poll_interval=float(self.poke_interval),
                retry_failed=self._retry_failed,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)) if self.timeout else None,
        )
        return None

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        version = str(event["version"])
        self.log.info("new champion %s v%s: re-scoring", self.model_name, version)
        return version
