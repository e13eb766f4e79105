"""SparkSession construction and the small helpers every job entry point shares."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.model_store import ModelStoreError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


#: The module Spark runs as each executor's Python daemon (PySpark's own: ``pyspark.daemon``).
DAEMON_MODULE = "spark.python.daemon.module"
#: Rescore's daemon: imports the scoring libraries once, before forking workers.
WORKER_DAEMON = "spark_jobs.worker_daemon"

#: Lets adaptive execution coalesce the shuffle partitions of a cached plan (Spark's default: false).
CACHED_PLAN_COALESCING = "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning"
#: How many tasks Spark lists a table's folders with, once it has more than 32 of them.
LISTING_TASKS = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
#: What each file adds to a read split's size besides its bytes (Spark's default: 4 MB).
OPEN_COST = "spark.sql.files.openCostInBytes"
#: Rescore's open cost: its files are photos of tens of KiB and one Parquet file per ingest batch.
SMALL_FILE_OPEN_COST = 64 * 1024


def get_spark(app_name: str, conf: dict[str, str] | None = None) -> SparkSession:
    """Return the job's SparkSession.

    Under spark-submit the master and profile come from the command line; run directly
    (``python -m spark_jobs.score``) it falls back to ``local[*]``.
    """
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit the master is a JVM system property: a SparkConf created before the JVM
    # gateway exists is Python-only and would not see it (then every job silently ran local).
    SparkContext._ensure_initialized()
    spark_conf = SparkConf()
    if not spark_conf.contains("spark.master"):
        builder = builder.master("local[*]")
    if spark_conf.get("spark.master", "local").startswith("local"):
        # Local workers must run this interpreter (the project's venv), not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Partition values such as model_version stay strings ("2", not 2) in every reader.
    builder = builder.config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
    # Validation and ingest cache joined or de-duplicated rows; a cached plan keeps
    # spark.sql.shuffle.partitions (200) unless adaptive execution may coalesce it, and then every
    # job over the cache runs 200 tasks (validating 300 images on 2 cores: 14.0 s, 11.5 s with it).
    # A value given to spark-submit (--conf or the profile) wins; ingest sets it for its own stream.
    if not spark_conf.contains(CACHED_PLAN_COALESCING):
        builder = builder.config(CACHED_PLAN_COALESCING, "true")
    if spark_conf.get("spark.master", "local").startswith("local"):
        for key, value in local_daemon_conf(spark_conf).items():
            builder = builder.config(key, value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in small_file_conf(spark).items():
        if not spark_conf.contains(key) and key not in (conf or {}):
            spark.conf.set(key, value)
    # INFO from every Spark component drowns the job's own progress lines in the Airflow task log.
    spark.sparkContext.setLogLevel(os.environ.get("RESCORE_SPARK_LOG_LEVEL", "WARN"))
    return spark


def listing_tasks(spark: SparkSession) -> int:
    """Tasks for listing a table's folders: the default parallelism (at least 2)."""
    return max(2, spark.sparkContext.defaultParallelism)


def small_file_conf(spark: SparkSession) -> dict[str, str]:
    """Session settings for tables of many folders and small files, as ingest writes them.

    Every ingest micro-batch writes its own ``ingest_batch=<id>`` folder of ``images`` (and of
    ``image_paths`` and ``rejects``). Past 32 folders Spark lists a table with a job of one task
    per folder (up to 10,000), and it counts every file as its bytes plus 4 MB when it packs the
    read's splits. Reading the ``image_id``s of 300,000 images of 20 KiB in 2,000 batch folders
    took half as long with these settings (docs/ingest.md, "Many ingest batches").
    :func:`get_spark` sets them unless spark-submit or the job's own settings give a value.
    """
    return {LISTING_TASKS: str(listing_tasks(spark)), OPEN_COST: str(SMALL_FILE_OPEN_COST)}


def code_root() -> str:
    """The folder or zip that this process imported ``spark_jobs`` from."""
    import spark_jobs

    return str(Path(spark_jobs.__file__).resolve().parents[1])


def local_daemon_conf(spark_conf: Any) -> dict[str, str]:
    """Settings that make a local master's executor run :data:`WORKER_DAEMON` as its Python daemon.

    The daemon module is set unless the job was given one. A local executor's daemon sees the
    JVM's environment, and under spark-submit ``--py-files`` reach only the driver's Python: so
    where the daemon is Rescore's, the executors' ``PYTHONPATH`` gets the folder or zip this
    driver imported ``spark_jobs`` from (before any value given). A cluster's executors find it
    in their own environment (the project's images put ``/opt/rescore`` on ``PYTHONPATH``).

    ``spark_conf``: the settings given so far, a ``SparkConf`` or a dict."""
    out = {}
    daemon = spark_conf.get(DAEMON_MODULE, None)
    if daemon is None:
        out[DAEMON_MODULE] = daemon = WORKER_DAEMON
    if daemon == WORKER_DAEMON:
        given = spark_conf.get("spark.executorEnv.PYTHONPATH", "")
        root = code_root()
        if root not in given.split(os.pathsep):
            out["spark.executorEnv.PYTHONPATH"] = os.pathsep.join(p for p in (root, given) if p)
    return out


def hadoop_fs(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """Hadoop's FileSystem for a local path or Hadoop URI, and the path as a Hadoop ``Path``."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hadoop_path


def list_files(spark: SparkSession, folder: str) -> list[tuple[str, int]]:
    """(name, bytes) of the files directly in ``folder``, by name; none when it does not exist."""
    fs, path = hadoop_fs(spark, folder)
    if not fs.exists(path):
        return []
    return sorted((str(s.getPath().getName()), int(s.getLen())) for s in fs.listStatus(path) if s.isFile())


def path_exists(spark: SparkSession, path: str) -> bool:
    """Whether a local path or Hadoop URI exists, asked through Hadoop's FileSystem."""
    fs, hadoop_path = hadoop_fs(spark, path)
    return bool(fs.exists(hadoop_path))


def read_table(spark: SparkSession, path: str) -> DataFrame | None:
    """A Parquet table, or None when no data file has been written there yet."""
    from pyspark.errors import AnalysisException

    if not path_exists(spark, path):
        return None
    try:
        return spark.read.parquet(path)
    except AnalysisException as exc:
        # a folder holding only hidden leftovers (_staging-*, _temporary of a killed job)
        if "UNABLE_TO_INFER_SCHEMA" in str(exc):
            return None
        raise


def setup_logging() -> None:
    """Job logs go to stderr, which spark-submit relays into the Airflow task log."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


class JobError(Exception):
    """A problem a user can fix (bad path, unknown model version); printed without a traceback."""


def run_main(job: str, body: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run a job body, turning user-fixable errors into one clear log line and exit code 2."""
    setup_logging()
    log = logging.getLogger(f"rescore.{job}")
    try:
        return body(argv)
    except (JobError, ModelStoreError) as exc:
        log.error("%s failed: %s", job, exc)
        return 2
    except Exception as exc:
        if WORKER_DAEMON not in str(exc) or "No module named" not in str(exc):
            raise
        log.error(
            "%s failed: the executors' Python cannot import %s (spark.python.daemon.module): put the "
            "folder holding spark_jobs on their PYTHONPATH (spark.executorEnv.PYTHONPATH, or the image's "
            "environment), or remove spark.python.daemon.module from the Spark profile to run PySpark's own "
            "daemon. Spark said: %s",
            job,
            WORKER_DAEMON,
            _daemon_error(str(exc)),
        )
        return 2


def _daemon_error(message: str) -> str:
    """The line of a Py4J error's message where Python says it cannot find the daemon module."""
    return next((line.strip() for line in message.splitlines() if WORKER_DAEMON in line), message[:500])
