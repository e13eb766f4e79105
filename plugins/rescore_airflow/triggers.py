"""``ModelVersionTrigger``: polls the model registry from the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from rescore_airflow.registry import RegistryConfig, pending_champion, registry_from_config
from spark_jobs.contract import RescorePaths

log = logging.getLogger(__name__)


class ModelVersionTrigger(BaseTrigger):
    """Fire when a model's champion differs from the version whose predictions are promoted.

    Nothing promoted yet is no reason to fire: ``image_scoring`` scores and promotes the first
    version.

    A registry that cannot be reached is logged and asked again at the next poll; it never
    fails the task.

    :param model_name: the registered model to watch.
    :param registry: a :class:`RegistryConfig` as a dict.
    :param rescore_home: where the promotion pointer lives.
    :param poll_interval: seconds between two looks at the registry.
    :param retry_failed: also fire for a champion whose last validation failed.
    """

    def __init__(
        self,
        model_name: str,
        registry: dict[str, str],
        rescore_home: str,
        poll_interval: float = 30.0,
        retry_failed: bool = False,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.registry = registry
        self.rescore_home = rescore_home
        self.poll_interval = poll_interval
        self.retry_failed = retry_failed

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "rescore_airflow.triggers.ModelVersionTrigger",
            {
                "model_name": self.model_name,
                "registry": self.registry,
                "rescore_home": self.rescore_home,
                "poll_interval": self.poll_interval,
                "retry_failed": self.retry_failed,
            },
        )

    def _check(self) -> str | None:
        paths = RescorePaths(self.rescore_home)
        registry = registry_from_config(RegistryConfig(**self.registry), paths)
        return pending_champion(registry, paths, self.model_name, retry_failed=self.retry_failed)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                version = await asyncio.to_thread(self._check)
            except Exception as exc:
                self.log.warning("model registry unreachable (%s); asking again in %.0f s", exc, self.poll_interval)
                version = None
            if version is not None:
                self.log.info("new champion %s v%s is not promoted yet", self.model_name, version)
                yield TriggerEvent({"model_name": self.model_name, "version": version})
                return
            await asyncio.sleep(self.poll_interval)
