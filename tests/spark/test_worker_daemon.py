"""Jobs' executors run Rescore's Python daemon (spark_jobs.worker_daemon): once a scoring UDF for a
PyTorch model is made, a new Python worker starts with PyTorch already imported, and frozen out
of the garbage collector's walks, even where the driver found spark_jobs only in the --py-files
zip; spark-submit's own daemon setting, or its own list of modules, wins."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rescore_airflow.packaging import build_spark_jobs_zip
from tests.spark._submitted import run_submitted

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import sys
sys.path.insert(0, {zip!r})  # as spark-submit's --py-files gives the driver, and nothing else
from spark_jobs.score import make_score_udf
from spark_jobs.session import get_spark
spark = get_spark("rescore-daemon-test")
make_score_udf(spark.sparkContext.broadcast({{"manifest": {{"framework": "pytorch"}}}}))  # asks for PyTorch

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
        ("--conf spark.executorEnv.RESCORE_PRELOAD=numpy", "preloaded=False frozen=True"),
    ],
    ids=["rescore-daemon", "spark-submit-daemon-wins", "spark-submit-preload-list-wins"],
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
    }

    # When a task runs in a fresh Python worker
    done = run_submitted(_PROBE.format(zip=str(archive)), f"--master local[1] {conf}", env=env, cwd=tmp_path)

    # Then the worker found PyTorch imported (and frozen) by the daemon, unless spark-submit chose otherwise
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout.splitlines()


def test_each_scoring_udf_asks_for_its_own_framework_but_never_overrides_a_list_the_application_chose(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spark_jobs.score import make_score_udf

    environment = spark.sparkContext.environment
    monkeypatch.delitem(environment, "RESCORE_PRELOAD", raising=False)  # restored afterwards

    def udf_for(framework: str) -> str | None:
        make_score_udf(spark.sparkContext.broadcast({"manifest": {"framework": framework}}))
        return environment.get("RESCORE_PRELOAD")

    assert udf_for("pytorch") == "numpy,PIL.Image,torch"
    assert udf_for("keras") == "numpy,PIL.Image"  # TensorFlow starts threads when imported
    assert udf_for("pytorch") == "numpy,PIL.Image,torch"
    environment["RESCORE_PRELOAD"] = "numpy"  # the application's own choice
    assert udf_for("pytorch") == "numpy"
