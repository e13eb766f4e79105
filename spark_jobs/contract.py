"""Where Rescore keeps things: the data contract of ``RESCORE_HOME``.

Standard library only: the Airflow side (plugins, DAGs) imports this module at parse time.
Every path is a plain string so that it can equally be a local folder or a Hadoop URI
(``s3a://bucket/rescore``, ``hdfs:///rescore``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Environment variable that moves every table, model and report of the embedded setup.
HOME_ENV = "RESCORE_HOME"
#: Default ``RESCORE_HOME``: ``var/`` in the checkout (git-ignored).
DEFAULT_HOME = Path(__file__).resolve().parent.parent / "var"


def default_home() -> str:
    """Return ``$RESCORE_HOME``, or ``var/`` in the checkout when it is unset."""
    return os.environ.get(HOME_ENV) or str(DEFAULT_HOME)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


@dataclass(frozen=True)
class RescorePaths:
    """Every location of the data contract, derived from one root.

    :param home: the root, a local folder or a Hadoop URI.
    """

    home: str

    def __post_init__(self) -> None:
        if not self.home:
            raise ValueError(f"RESCORE_HOME is empty: set {HOME_ENV} to a folder or a Hadoop URI.")

    @classmethod
    def from_env(cls) -> RescorePaths:
        return cls(default_home())

    @property
    def landing(self) -> str:
        """Incoming files; ingest never modifies or deletes them."""
        return _join(self.home, "landing")

    @property
    def warehouse(self) -> str:
        return _join(self.home, "warehouse")

    @property
    def images(self) -> str:
        """One row per distinct image, ``image_id`` unique (``spark_jobs.ingest.IMAGES_SCHEMA``)."""
        return _join(self.warehouse, "images")

    @property
    def image_paths(self) -> str:
        """One row per accepted file, duplicates included (``spark_jobs.ingest.IMAGE_PATHS_SCHEMA``)."""
        return _join(self.warehouse, "image_paths")

    @property
    def records(self) -> str:
        """Record tables ingested with ``--source parquet|csv|json|tfrecord``: ``records/<name>/``."""
        return _join(self.warehouse, "records")

    @property
    def rejects(self) -> str:
        """One row per file that could not be read (``spark_jobs.ingest.REJECTS_SCHEMA``)."""
        return _join(self.warehouse, "rejects")

    @property
    def predictions(self) -> str:
        """Partitioned by model_name, model_version (``spark_jobs.score.PREDICTIONS_SCHEMA``)."""
        return _join(self.warehouse, "predictions")

    @property
    def current(self) -> str:
        """Atomic pointer: which version of each model readers should use."""
        return _join(self.warehouse, "current.json")

    @property
    def models(self) -> str:
        """The model store folder: ``<name>/<version>/`` holds manifest + weights."""
        return _join(self.home, "models")

    @property
    def reports(self) -> str:
        return _join(self.home, "reports")

    @property
    def checkpoints(self) -> str:
        """Streaming checkpoints (ingest's record of which files it has taken)."""
        return _join(self.home, "checkpoints")

    @property
    def artifacts(self) -> str:
        """Build outputs the jobs ship with (the ``--py-files`` zip)."""
        return _join(self.home, "artifacts")

    @property
    def samples(self) -> str:
        """What the sample-data generator knows: the true label of every file it wrote."""
        return _join(self.home, "samples")

    @property
    def airflow_home(self) -> str:
        return _join(self.home, "airflow")
