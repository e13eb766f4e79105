"""Jobs' executors run Rescore's Python daemon (spark_jobs.worker_daemon): a Python worker starts
with PyTorch already imported, and frozen out of the garbage collector's walks, even where the
driver found spark_jobs only in the --py-files zip; spark-submit's own daemon setting wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rescore_airflow.packaging import build_spark_jobs_zip

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import sys
sys.path.insert(0, {zip!r})  # as spark-submit's --py-files gives the driver, and nothing else
from spark_jobs.session import get_spark
spark = get_spark("rescore-daemon-test")

def probe(_):
    import gc, sys
    yield "torch" in sys.modules, gc.get_freeze_count() > 0

print("preloaded=%s frozen=%s" % spark.sparkContext.parallelize([0], 1).mapPartitions(probe).collect()[0])
spark.stop()
"""


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ("", "preloaded=True frozen=True"),
        ("--conf spark.python.daemon.module=pyspark.daemon", "preloaded=False frozen=False"),
    ],
    ids=["rescore-daemon", "spark-submit-conf-wins"],
)
def test_a_python_worker_starts_with_torch_imported_by_the_daemon(tmp_path: Path, conf: str, expected: str) -> None:
    pytest.importorskip("torch", reason="the daemon preloads PyTorch only where it is installed")
    # Given a job whose driver imports spark_jobs from the --py-files zip, with the project on no
    # PYTHONPATH the local executor's daemon would see
    archive = build_spark_jobs_zip(tmp_path / "spark_jobs.zip")
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p and not Path(p).resolve().is_relative_to(ROOT)),
        "PYSPARK_SUBMIT_ARGS": f"--master local[1] {conf} --driver-java-options -Dspark.ui.enabled=false pyspark-shell",
    }

    # When a task runs in a fresh Python worker
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(zip=str(archive))],
        check=False,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Then the worker found PyTorch imported (and frozen) by the daemon, unless spark-submit chose PySpark's
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout.splitlines()
