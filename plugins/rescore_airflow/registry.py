"""Model registries behind one small interface: the model store folder, or MLflow's registry.

A registry answers three questions: which version is the champion, which versions exist, and
"give me version N" (materialised into the model store folder, which is what the Spark driver
reads and broadcasts). Standard library at import time; MLflow loads only when it is used.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from spark_jobs.contract import RescorePaths
from spark_jobs.current import current_version
from spark_jobs.model_store import MANIFEST_FILE, Manifest, ModelStore

log = logging.getLogger(__name__)

BACKENDS = ("folder", "mlflow")


@dataclass(frozen=True)
class RegistryConfig:
    """Where the registry is: ``folder`` (a model store path) or ``mlflow`` (a tracking URI).

    Plain data, so a deferred sensor can hand it to its trigger.
    """

    backend: str = "folder"
    location: str = ""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"model registry backend {self.backend!r} is unknown: set the connection's extra "
                f'"backend" to one of {BACKENDS}'
            )

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class ModelRegistry(Protocol):
    def champion(self, name: str) -> str | None:
        """The champion version of ``name``, or None when it has none."""
        ...

    def versions(self, name: str) -> list[str]:
        """Every registered version of ``name``, oldest first."""
        ...

    def fetch(self, name: str, version: str, store: ModelStore) -> Path:
        """Make ``version`` available in ``store`` (no-op when it is there) and return its folder."""
        ...


class FolderRegistry:
    """The embedded model store folder is its own registry."""

    def __init__(self, root: str) -> None:
        self.store = ModelStore(root)

    def champion(self, name: str) -> str | None:
        return self.store.champion(name)

    def versions(self, name: str) -> list[str]:
        return self.store.versions(name)

    def fetch(self, name: str, version: str, store: ModelStore) -> Path:
        if store.root.resolve() != self.store.root.resolve():
            source = self.store.root / name / version
            target = store.root / name / version
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
                shutil.copytree(source, staging, dirs_exist_ok=True)
                staging.rename(target)
        self.store.manifest(name, version)  # raises a clear error when it is not published
        return store.root / name / version


class MlflowRegistry:
    """MLflow Model Registry: versions of a registered model, champion = the ``champion`` alias.

    A version's artifacts must hold ``manifest.json`` and the weights it names at their root
    (``python -m include.publish`` logs them that way).
    """

    CHAMPION_ALIAS = "champion"

    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def champion(self, name: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, self.CHAMPION_ALIAS).version)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
                return None
            raise

    def versions(self, name: str) -> list[str]:
        found = self.client.search_model_versions(f"name='{name}'")
        return sorted((str(v.version) for v in found), key=int)

    def fetch(self, name: str, version: str, store: ModelStore) -> Path:
        import mlflow

        target = store.root / name / version
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
        try:
            mlflow.set_tracking_uri(self.tracking_uri)
            source = self.client.get_model_version_download_uri(name, version)
            downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging)))
            manifest_path = next(downloaded.rglob(MANIFEST_FILE), None)
            if manifest_path is None:
                raise FileNotFoundError(
                    f"MLflow model {name} version {version} has no {MANIFEST_FILE}: publish it with include.publish"
                )
            data: dict[str, Any] = json.loads(manifest_path.read_text())
            manifest = Manifest.from_dict({**data, "version": version})
            folder = manifest_path.parent
            (folder / MANIFEST_FILE).write_text(manifest.to_json())
            folder.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def registry_from_config(config: RegistryConfig, paths: RescorePaths) -> ModelRegistry:
    if config.backend == "mlflow":
        if not config.location:
            raise ValueError('the MLflow registry needs a tracking URI: set the connection extra "tracking_uri"')
        return MlflowRegistry(config.location)
    return FolderRegistry(config.location or paths.models)


def latest_report_failed(paths: RescorePaths, name: str, version: str) -> bool:
    """Whether the newest validation report of ``version`` failed its gates."""
    folder = Path(paths.reports) / name / version
    reports = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not reports:
        return False
    try:
        return json.loads(reports[-1].read_text()).get("passed") is False
    except (OSError, ValueError):
        return False


def pending_champion(
    registry: ModelRegistry, paths: RescorePaths, name: str, *, retry_failed: bool = False
) -> str | None:
    """The champion version when it differs from the promoted one, else None.

    The promoted version lives in the promotion pointer, not in the sensor, so a restarted
    scheduler or triggerer neither misses a new champion nor fires twice for the same one.
    While no version of ``name`` is promoted this is None too (``retry_failed`` or not): the
    ``image_scoring`` DAG scores and promotes the first version, and re-scoring it here as well
    would append a second prediction per image. A champion whose last validation failed is not
    re-scored again and again; publish a new version, or pass ``retry_failed``.
    """
    champion = registry.champion(name)
    if champion is None:
        return None
    promoted = current_version(paths, name)
    if promoted is None:
        log.info(
            "nothing promoted yet for %s: the image_scoring DAG scores and promotes the first version (champion v%s)",
            name,
            champion,
        )
        return None
    if champion == promoted:
        return None
    if not retry_failed and latest_report_failed(paths, name, champion):
        log.warning("champion %s v%s failed validation before; waiting for a new champion", name, champion)
        return None
    return champion
