"""A standalone Spark cluster on loopback (master + two 1-core workers), started and stopped by
the project's own script: the DAG runs on it by changing the connection only, and a worker
killed in the middle of a scoring job loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.sample_data import generate
from spark_jobs.contract import RescorePaths
from spark_jobs.model_store import Manifest, ModelStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("cluster-home")
    ui_port = _free_port()
    env = {
        **os.environ,
        "RESCORE_HOME": str(home),
        "RESCORE_SPARK_PYTHON": sys.executable,
        "RESCORE_SPARK_MASTER_PORT": str(_free_port()),
        "RESCORE_SPARK_MASTER_UI_PORT": str(ui_port),
    }
    # worker UIs take the next two ports; make sure nothing listens there
    script = str(ROOT / "include" / "cluster.sh")
    subprocess.run([script, "up"], env=env, check=True, capture_output=True, timeout=120)
    try:
        yield {**env, "master": f"spark://127.0.0.1:{env['RESCORE_SPARK_MASTER_PORT']}"}
    finally:
        subprocess.run([script, "down"], env=env, check=False, capture_output=True, timeout=60)


def _completed_apps(cluster: dict[str, str]) -> set[str]:
    import urllib.request

    url = f"http://127.0.0.1:{cluster['RESCORE_SPARK_MASTER_UI_PORT']}/json/"
    with urllib.request.urlopen(url, timeout=10) as response:
        state = json.load(response)
    return {app["name"] for app in state["completedapps"]}


def _predictions(paths: RescorePaths) -> list[dict]:  # type: ignore[type-arg]
    import pyarrow as pa
    import pyarrow.dataset as ds

    part = ds.partitioning(pa.schema([("model_name", pa.string()), ("model_version", pa.string())]), flavor="hive")
    return (
        ds.dataset(paths.predictions, format="parquet", partitioning=part)
        .to_table(columns=["image_id", "model_version"])
        .to_pylist()
    )


def _publish(paths: RescorePaths, trained_model_dir: Path) -> None:
    manifest = Manifest.from_dict(json.loads((trained_model_dir / "manifest.json").read_text()))
    ModelStore(paths.models).publish(manifest, trained_model_dir / "model.safetensors")


def test_image_scoring_runs_on_the_cluster_by_changing_the_connection(
    cluster: dict[str, str],
    rescore_home: Path,
    airflow_db: Path,
    trained_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault: the holdout of bad inputs (every door-check case) landed beside good images, on the cluster.
    Does: lands 30 sample images plus the ingest corpus (empty, not an image, truncated, unsupported,
    decompression bomb, and every odd-but-valid kind) and runs the image_scoring DAG with
    spark_default pointing at the standalone master.
    Asserts: executors ran on the workers; every good file is scored exactly once without error,
    every bad one is in rejects with its reason, and files landed = accepted + rejected.
    """
    import hashlib

    import pyarrow.dataset as ds
    from airflow.dag_processing.dagbag import DagBag

    from tests.corpus import MAX_PIXELS, corpus

    paths = RescorePaths(str(rescore_home))
    samples = generate(paths, count=30, seed=21)
    holdout = Path(paths.landing) / "holdout"
    expect = corpus(holdout)
    _publish(paths, trained_model_dir)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": cluster["master"]}))
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("image_scoring")
    assert dag is not None
    run = dag.test(run_conf={"max_pixels": MAX_PIXELS})
    assert run.state == "success"

    good = {hashlib.sha256((holdout / n).read_bytes()).hexdigest() for n, e in expect.items() if e[0] == "images"}
    predictions = _predictions(paths)
    assert Counter(r["image_id"] for r in predictions) == Counter({s.image_id for s in samples} | good)
    errors = ds.dataset(paths.predictions, format="parquet").to_table(columns=["error"]).column(0).to_pylist()
    assert [e for e in errors if e is not None] == []
    rejects = {
        Path(r["path"].removeprefix("file:")).relative_to(holdout).as_posix(): r["reason"]
        for r in ds.dataset(paths.rejects, format="parquet").to_table(columns=["path", "reason"]).to_pylist()
    }
    assert set(rejects) == {n for n, e in expect.items() if e[0] == "rejects"}
    for name, reason in rejects.items():
        assert reason.startswith(expect[name][1]), (name, reason)
    accepted_files = ds.dataset(paths.image_paths, format="parquet").count_rows()
    landed = sum(1 for p in Path(paths.landing).rglob("*") if p.is_file())
    assert landed == accepted_files + len(rejects)
    # the jobs really ran on the cluster: the master lists them as completed applications
    assert {"rescore-ingest", "rescore-score", "rescore-validate"} <= _completed_apps(cluster)


def _spark_submit(op, env: dict[str, str]) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    from rescore_airflow.packaging import build_spark_jobs_zip

    build_spark_jobs_zip(op.py_files)
    cmd = op.spark_submit_command()
    return subprocess.Popen(
        cmd, env={**env, **op.env_vars}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_a_worker_killed_mid_scoring_loses_and_duplicates_nothing(
    cluster: dict[str, str], rescore_home: Path, trained_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault: a Spark worker killed (SIGKILL by pid) in the middle of a scoring job.
    Does: ingests 400 images, submits the scoring job to the standalone master (two 1-core workers,
    batch size 8), kills worker 2 three seconds after the job starts scoring.
    Asserts: the job exits 0 on the surviving worker and the predictions table has exactly one row
    per image.
    """
    from rescore_airflow.operators import IngestImagesOperator, ScoreImagesOperator

    paths = RescorePaths(str(rescore_home))
    samples = generate(paths, count=400, seed=22)
    _publish(paths, trained_model_dir)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": cluster["master"]}))
    env = {**os.environ}
    ingest = IngestImagesOperator(task_id="ingest", rescore_home=str(rescore_home), run_label="fault-ingest")
    proc = _spark_submit(ingest, env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]

    # Given a scoring job spread over both workers in small tasks
    score = ScoreImagesOperator(
        task_id="score",
        rescore_home=str(rescore_home),
        run_label="fault-score",
        model_name="shapes",
        batch_size=8,
        conf={"spark.sql.shuffle.partitions": "8", "spark.sql.adaptive.coalescePartitions.enabled": "false"},
    )
    proc = _spark_submit(score, env)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "scoring 400 images" in line:
            break
    # When one worker is killed (by pid) while the job runs
    time.sleep(3)
    assert proc.poll() is None, "the job ended before the worker could be killed"
    pidfile = next((Path(cluster["RESCORE_HOME"]) / "cluster" / "pids").glob("*Worker-2.pid"))
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    rest, _ = proc.communicate(timeout=600)
    lines.append(rest)

    # Then the job finishes on the survivor with exactly one prediction per image
    assert proc.returncode == 0, "".join(lines)[-3000:]
    assert "rescore-score" in _completed_apps(cluster)
    per_image = Counter(r["image_id"] for r in _predictions(paths))
    assert per_image == Counter({s.image_id for s in samples})
