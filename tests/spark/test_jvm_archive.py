"""A spark-submit driver started with the archive's option maps Spark's classes from the archive
instead of loading them from the jars (the JVM's own class-loading log says where each came from)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from include import jvm_archive

pytestmark = pytest.mark.spark

JOB = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
assert spark.range(10).count() == 10
spark.stop()
"""
SHORT = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _source_of(class_name: str, options: str, tmp_path: Path, tag: str) -> str:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    loaded = tmp_path / f"classes-{tag}.log"
    env = {**os.environ, "SPARK_SUBMIT_OPTS": f"{options} -Xlog:class+load=info:file={loaded}"}
    subprocess.run(
        [str(Path(sys.executable).parent / "spark-submit"), str(script)],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=300,
    )
    found = re.search(rf"\] {re.escape(class_name)} source: (.+)$", loaded.read_text(), re.MULTILINE)
    assert found, f"{class_name} was never loaded by the driver"
    return found.group(1)


def test_the_driver_maps_spark_classes_from_the_archive(tmp_path: Path) -> None:
    folder = jvm_archive.archive_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free < jvm_archive.MIN_FREE_BYTES:
        pytest.skip(f"less than {jvm_archive.MIN_FREE_BYTES // 2**30} GiB free in {folder}: no archive is made there")
    archive = jvm_archive.ensure()
    assert archive is not None, "the archive could not be made here: see the log"
    with_archive = jvm_archive.with_archive(SHORT, archive)
    assert "SharedArchiveFile" in with_archive

    assert _source_of("org.apache.spark.SparkContext", with_archive, tmp_path, "archive") == (
        "shared objects file (top)"
    )
    # without it the same class comes from Spark's jar
    assert _source_of("org.apache.spark.SparkContext", SHORT, tmp_path, "jars").endswith(".jar")


def test_a_stale_archive_does_not_stop_the_job(tmp_path: Path) -> None:
    """An archive of another JVM or Spark build (here: not an archive at all) is ignored by the JVM."""
    stale = tmp_path / "stale.jsa"
    stale.write_bytes(b"\0" * 4096)
    source = _source_of("org.apache.spark.SparkContext", f"{SHORT} -XX:SharedArchiveFile={stale}", tmp_path, "stale")
    assert source.endswith(".jar")
