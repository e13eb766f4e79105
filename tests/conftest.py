"""Shared test setup.

Environment first: Airflow reads its configuration when first imported, Spark needs a loopback
address, and nothing may write into the real home folder. Each tier is a marker (see pyproject).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="rescore-tests-"))

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Every Spark job in the suite is short, so the JVM's optimising compiler (C2) and G1's
# concurrent threads cost more CPU than they win: measured on the image_scoring + model_rescore
# DAGs, the client compiler alone with the serial collector cut the Spark jobs' CPU by about 40%.
# On two cores shared by two xdist workers, CPU is the suite's wall time.
# The driver JVM of every spark-submit also maps a class-data archive of Spark's classes (made
# once per checkout, see pytest_configure and include/jvm_archive.py): a third less per job.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = '{"conn_type": "spark", "host": "local[2]"}'
os.environ["RESCORE_HOME"] = str(_SESSION_DIR / "home")
# Subprocesses (spark-submit, airflow CLI) import the project the same way pytest does.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def pytest_configure(config: pytest.Config) -> None:
    """Name the driver's class-data archive in SPARK_SUBMIT_OPTS, making it first if this checkout
    has none (about 20 s, once). The controller does it before pytest-xdist starts its workers,
    which inherit the variable; ``RESCORE_JVM_ARCHIVE=0`` or an archive option already in
    SPARK_SUBMIT_OPTS leaves the variable as it is."""
    if hasattr(config, "workerinput"):
        return
    from include.jvm_archive import submit_options

    os.environ["SPARK_SUBMIT_OPTS"] = submit_options(os.environ["SPARK_SUBMIT_OPTS"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One local SparkSession for the whole run (2 cores, no UI, small shuffles)."""
    from pyspark.sql import SparkSession

    from spark_jobs.session import DAEMON_MODULE, WORKER_DAEMON

    session = (
        SparkSession.builder.master("local[2]")
        .appName("rescore-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        # as every job's session (spark_jobs.session.get_spark); PYTHONPATH above finds it
        .config(DAEMON_MODULE, WORKER_DAEMON)
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def rescore_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty RESCORE_HOME for one test, exported to everything the test starts."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("RESCORE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database in the session's AIRFLOW_HOME."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example CNN trained once per test run (about 35 s on 2 cores), as a publishable folder.

    Under pytest-xdist the workers share it: the first to need it trains it in the run's common
    temporary folder while holding a lock, the others wait for it and read it (the same seed
    would give them the same weights anyway)."""
    import fcntl

    from include.example_models import train_small_cnn

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    out = shared / "trained-shapes"
    with (shared / "trained-shapes.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").is_file():
            partial = shared / f"trained-shapes.{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            train_small_cnn(partial, seed=0, progress=False)
            partial.rename(out)
    return out
