"""A class-data archive for the Spark driver's JVM, so that short jobs start faster.

    python -m include.jvm_archive            # create it if missing, print the java option
    python -m include.jvm_archive --force    # create it again

Every ``spark-submit`` starts a JVM that loads and verifies some ten thousand classes of Spark,
Scala and Hadoop from their jars before the job's first line runs. Java's class-data sharing
keeps them, already parsed and verified, in one file that the JVM maps into memory instead: an
archive written at the exit of a run that loaded them (``-XX:ArchiveClassesAtExit``) and named
at start (``-XX:SharedArchiveFile``). A small PySpark job through ``spark-submit`` took 0.52 of
the time and 0.57 of the CPU with it, on 2 cores with the options ``make test`` uses, and 0.64 /
0.65 with the JVM's defaults (``python -m include.bench.jvm_start``, docs/benchmarks/jvm_start.md):
3.6 to 4.8 CPU seconds less for every job.

The archive belongs to one JVM build and one Spark class path: its name hashes both
(:func:`archive_key`), so an upgrade of either picks a new file. The JVM checks them again when
it maps the file and, with the default ``-Xshare:auto``, silently starts the usual way when they
do not match, or when the file is missing: the option can never stop a job, only fail to speed
it up. Executors on a cluster are other JVMs, started by the cluster's workers: this is for the
driver, which Airflow's tasks start for every job.

``make demo`` and ``make test`` create the archive once per checkout (about 20 s, some 180 MiB)
under ``var/jvm/`` and add the option to ``SPARK_SUBMIT_OPTS``; ``RESCORE_JVM_ARCHIVE=0`` turns
that off, and ``RESCORE_JVM_ARCHIVE_DIR`` puts the archives elsewhere. Elsewhere (an Airflow
worker, an image), run this module once where the tasks run and add the option it prints to
``SPARK_SUBMIT_OPTS`` or to ``spark.driver.extraJavaOptions`` (docs/full-stack.md).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("rescore.jvm_archive")

ROOT = Path(__file__).resolve().parent.parent
#: where the archives live unless :data:`DIR_ENV` says otherwise
DEFAULT_DIR = ROOT / "var" / "jvm"
#: ``0`` leaves ``SPARK_SUBMIT_OPTS`` alone (no archive is made or used)
SWITCH_ENV = "RESCORE_JVM_ARCHIVE"
DIR_ENV = "RESCORE_JVM_ARCHIVE_DIR"
#: the options that name an archive, or turn sharing off: an environment that has one is left alone
SHARING_OPTIONS = ("-XX:SharedArchiveFile", "-Xshare:", "-XX:ArchiveClassesAtExit")
#: seconds the workload may take before it is abandoned (it takes about 20 s on 2 cores)
CREATE_TIMEOUT_S = 600
#: free space the archive's disk must keep beyond it (about 180 MiB) for one to be made
MIN_FREE_BYTES = 2 * 2**30


def enabled(environ: dict[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get(SWITCH_ENV, "1").strip() != "0"


def archive_dir(environ: dict[str, str] | None = None) -> Path:
    value = (os.environ if environ is None else environ).get(DIR_ENV, "").strip()
    return Path(value) if value else DEFAULT_DIR


def java_executable(environ: dict[str, str] | None = None) -> Path | None:
    """The ``java`` that ``spark-submit`` runs (``JAVA_HOME`` first, as spark-class does)."""
    env = os.environ if environ is None else environ
    home = env.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java", path=env.get("PATH"))
    return Path(found).resolve() if found and Path(found).exists() else None


def spark_jars() -> Path:
    """The folder of jars on the driver's class path (``SPARK_HOME`` or the pip package's)."""
    home = os.environ.get("SPARK_HOME")
    if home:
        return Path(home) / "jars"
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def archive_key(java: Path, jars: Path) -> str:
    """A digest of what the archive is only valid for: the JVM build and the jars' names and sizes."""
    digest = hashlib.sha256()
    digest.update(str(java).encode())
    release = java.parent.parent / "release"  # the JDK's own version file
    for source in (release, java.parent.parent / "lib" / "server" / "libjvm.so"):
        with contextlib.suppress(OSError):
            stat = source.stat()
            digest.update(f"{source}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    if release.exists():
        digest.update(release.read_bytes())
    for jar in sorted(jars.glob("*.jar")):
        digest.update(f"{jar.name}:{jar.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def archive_path(folder: Path | None = None) -> Path | None:
    """Where this JVM's and this Spark's archive lives (whether or not it exists yet); None
    without a ``java`` to run."""
    java = java_executable()
    if java is None:
        return None
    return (folder or archive_dir()) / f"spark-driver-{archive_key(java, spark_jars())}.jsa"


def with_archive(options: str, archive: Path | None) -> str:
    """``options`` (a ``SPARK_SUBMIT_OPTS`` value) with the archive named, unless they already
    name one or turn sharing off, or there is no archive."""
    if archive is None or not archive.is_file() or any(o in options for o in SHARING_OPTIONS):
        return options
    return " ".join(filter(None, [options.strip(), f"-XX:SharedArchiveFile={archive}"]))


def ensure(folder: Path | None = None, *, force: bool = False) -> Path | None:
    """The archive for this JVM and Spark, created first if it is missing (one process at a time:
    others wait for it); None when it cannot be made (no ``java``, or the workload failed: the
    reason is logged, and jobs start the usual way)."""
    target = archive_path(folder)
    if target is None:
        log.warning("no java found (JAVA_HOME or PATH): no class-data archive for Spark's driver")
        return None
    if target.is_file() and not force:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with (target.parent / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.is_file() and not force:
                return target  # another process made it while this one waited
            return _create(target)
    except OSError as exc:  # a read-only or full folder: jobs start the usual way
        log.warning("no class-data archive in %s (%s): set %s to a writable folder", target.parent, exc, DIR_ENV)
        return None


def _create(target: Path) -> Path | None:
    free = shutil.disk_usage(target.parent).free
    if free < MIN_FREE_BYTES:
        log.warning(
            "only %.1f GiB free in %s: no class-data archive made (it needs about 0.2 GiB, and %.0f GiB are kept "
            "free); Spark's driver starts the usual way. Free some space, or set %s elsewhere",
            free / 2**30,
            target.parent,
            MIN_FREE_BYTES / 2**30,
            DIR_ENV,
        )
        return None
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    env = dict(os.environ)
    options = shlex.join(o for o in shlex.split(env.get("SPARK_SUBMIT_OPTS", "")) if not o.startswith(SHARING_OPTIONS))
    env["SPARK_SUBMIT_OPTS"] = f"{options} -XX:ArchiveClassesAtExit={partial}".strip()
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env["PYSPARK_PYTHON"] = env.get("PYSPARK_PYTHON", sys.executable)
    submit = Path(sys.executable).parent / "spark-submit"
    command = [str(submit) if submit.exists() else "spark-submit", "--master", "local[2]", __file__, "--workload"]
    log.info("creating the Spark driver's class-data archive %s (once per JVM and Spark build)", target)
    with tempfile.TemporaryDirectory(prefix="rescore-jvm-archive-") as scratch:
        try:
            result = subprocess.run(
                [*command, scratch],
                env=env,
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=CREATE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("the class-data archive was not made (%s): Spark's driver starts the usual way", exc)
            partial.unlink(missing_ok=True)
            return None
    if result.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        log.warning(
            "the class-data archive was not made (spark-submit exited %s): Spark's driver starts the usual way\n%s",
            result.returncode,
            tail,
        )
        partial.unlink(missing_ok=True)
        return None
    os.replace(partial, target)
    log.info("class-data archive: %s (%.0f MiB)", target, target.stat().st_size / 2**20)
    return target


def submit_options(base: str, environ: dict[str, str] | None = None) -> str:
    """``base`` with this checkout's archive named (made first if missing), unless
    :data:`SWITCH_ENV` is ``0``: what ``make demo`` and the test suite put in ``SPARK_SUBMIT_OPTS``."""
    if not enabled(environ) or any(o in base for o in SHARING_OPTIONS):
        return base
    return with_archive(base, ensure())


def workload(scratch: Path) -> None:
    """What the archive is made from: one small job of each kind Rescore runs on the driver
    (a ``binaryFile`` stream with ``availableNow`` and a checkpoint, pandas and Arrow UDFs in Python workers,
    Parquet and JSON tables, a shuffle, a join), so the classes its jobs load are in it."""
    import pandas as pd
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    landing = scratch / "landing"
    landing.mkdir()
    for i in range(8):
        (landing / f"file-{i}.bin").write_bytes(bytes(range(i, i + 64)))
    spark = (
        SparkSession.builder.appName("rescore-jvm-archive")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    try:
        schema = spark.read.format("binaryFile").load(str(landing)).schema
        stream = (
            spark.readStream.format("binaryFile")
            .schema(schema)
            .option("pathGlobFilter", "*.bin")
            .load(str(landing))
            .withColumn("size_kib", F.col("length") / 1024)
        )

        def write_batch(batch, batch_id):  # type: ignore[no-untyped-def]
            batch.write.mode("overwrite").parquet(str(scratch / "table" / f"batch={batch_id}"))

        query = (
            stream.writeStream.trigger(availableNow=True)
            .option("checkpointLocation", str(scratch / "checkpoint"))
            .foreachBatch(write_batch)
            .start()
        )
        query.awaitTermination()
        files = spark.read.parquet(str(scratch / "table"))

        def first_bytes(batches):  # type: ignore[no-untyped-def]
            for frame in batches:
                yield pd.DataFrame({"path": frame["path"], "first": [int(c[0]) for c in frame["content"]]})

        scored = files.mapInPandas(first_bytes, "path string, first long")
        joined = scored.join(files.select("path", "length"), "path").groupBy("first").agg(F.count("*").alias("n"))
        joined.write.mode("overwrite").json(str(scratch / "counts"))

        def halve(batches):  # type: ignore[no-untyped-def]
            import pyarrow.compute as pc

            for batch in batches:
                yield batch.set_column(batch.schema.get_field_index("n"), "n", pc.divide(batch.column("n"), 2))

        spark.read.json(str(scratch / "counts")).select("n").mapInArrow(halve, "n long").collect()
        spark.read.format("binaryFile").load(str(landing)).select("path", "length").limit(3).collect()
    finally:
        spark.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jvm_archive", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--force", action="store_true", help="create the archive again")
    parser.add_argument(
        "--link",
        metavar="PATH",
        type=Path,
        help="also point a symbolic link at PATH to it, a name that does not change with the JVM or Spark "
        "(an image's SPARK_SUBMIT_OPTS can then name it)",
    )
    parser.add_argument("--workload", metavar="DIR", help=argparse.SUPPRESS)  # what spark-submit runs
    args = parser.parse_args(argv)
    if args.workload:
        workload(Path(args.workload))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    archive = ensure(force=args.force)
    if archive is None:
        return 1
    if args.link:
        link(archive, args.link)
    print(f"-XX:SharedArchiveFile={args.link or archive}")
    return 0


def link(archive: Path, at: Path) -> None:
    """A symbolic link at ``at`` to ``archive``, replacing whatever link was there."""
    at.parent.mkdir(parents=True, exist_ok=True)
    fresh = at.with_name(f".{at.name}.{os.getpid()}")
    fresh.unlink(missing_ok=True)
    fresh.symlink_to(archive.resolve())
    os.replace(fresh, at)


if __name__ == "__main__":
    raise SystemExit(main())
