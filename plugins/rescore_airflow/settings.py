"""Typed settings of the Airflow side, read from the environment at call time.

| variable | default | meaning |
| --- | --- | --- |
| ``RESCORE_HOME`` | ``var/`` in the checkout | root of tables, models, reports |
| ``RESCORE_SPARK_CONN_ID`` | ``spark_default`` | Airflow connection naming the Spark master |
| ``RESCORE_SPARK_PROFILE`` | ``cpu`` | ``include/spark/<profile>.conf`` passed as ``--properties-file`` |
| ``RESCORE_SPARK_PYTHON`` | the interpreter running Airflow | Python of the Spark driver and executors |
| ``RESCORE_MODEL_NAME`` | ``shapes`` | default model the DAGs score with |
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from spark_jobs.contract import RescorePaths, default_home

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SPARK_JOBS_DIR = PROJECT_ROOT / "spark_jobs"
SPARK_PROFILES_DIR = PROJECT_ROOT / "include" / "spark"


def rescore_home() -> str:
    return default_home()


def paths() -> RescorePaths:
    return RescorePaths(rescore_home())


def spark_conn_id() -> str:
    return os.environ.get("RESCORE_SPARK_CONN_ID", "spark_default")


def spark_profile_path(profile: str | None = None) -> Path:
    """The properties file of a Spark profile; a clear error when it does not exist."""
    name = profile or os.environ.get("RESCORE_SPARK_PROFILE", "cpu")
    path = SPARK_PROFILES_DIR / f"{name}.conf"
    if not path.is_file():
        known = sorted(p.stem for p in SPARK_PROFILES_DIR.glob("*.conf"))
        raise ValueError(f"Spark profile {name!r} does not exist ({path}): use one of {known}")
    return path


def spark_python() -> str:
    return os.environ.get("RESCORE_SPARK_PYTHON", sys.executable)


def default_model_name() -> str:
    return os.environ.get("RESCORE_MODEL_NAME", "shapes")
