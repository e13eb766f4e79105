"""Faults around the scoring job's write: the spark-submit killed after some tasks committed their
files but before the job committed, then the task retried. Exactly one row per image must result,
and nothing of the killed attempt may be visible to readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from include.sample_data import generate
from spark_jobs.contract import RescorePaths
from spark_jobs.model_store import Manifest, ModelStore

pytestmark = pytest.mark.integration


def _submit(op) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    from rescore_airflow.packaging import build_spark_jobs_zip

    build_spark_jobs_zip(op.py_files)
    return subprocess.Popen(
        op.spark_submit_command(),
        env={**os.environ, **op.env_vars},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _visible_rows(paths: RescorePaths, version: str) -> Counter[str]:
    """What a reader of the version's partition sees (files starting with '_' or '.' are hidden)."""
    import pyarrow.dataset as ds

    part = Path(paths.predictions) / "model_name=shapes" / f"model_version={version}"
    if not part.exists():
        return Counter()
    return Counter(ds.dataset(str(part), format="parquet").to_table(columns=["image_id"]).column(0).to_pylist())


def test_scoring_killed_after_some_tasks_committed_then_retried_scores_each_image_once(
    rescore_home: Path, trained_model_dir: Path
) -> None:
    """Fault: the spark-submit of a scoring task killed mid-write, then the task retried.
    Does: scores 240 images in many small tasks, SIGKILLs the whole spark-submit process group as
    soon as the first task has committed its files, then runs the same task again.
    Asserts: readers see no row of the killed attempt; after the retry every image has exactly one
    prediction (nothing lost, nothing duplicated).
    """
    from rescore_airflow.operators import IngestImagesOperator, ScoreImagesOperator

    paths = RescorePaths(str(rescore_home))
    samples = generate(paths, count=240, seed=41)
    manifest = Manifest.from_dict(json.loads((trained_model_dir / "manifest.json").read_text()))
    ModelStore(paths.models).publish(manifest, trained_model_dir / "model.safetensors")
    ingest = _submit(IngestImagesOperator(task_id="ingest", rescore_home=paths.home, run_label="ingest"))
    out, _ = ingest.communicate(timeout=600)
    assert ingest.returncode == 0, out[-3000:]

    def score_op(label: str):  # type: ignore[no-untyped-def]
        return ScoreImagesOperator(
            task_id="score",
            rescore_home=paths.home,
            run_label=label,
            model_name="shapes",
            batch_size=4,
            # many small tasks, so that some commit while others still run
            conf={"spark.sql.files.maxPartitionBytes": "65536", "spark.sql.adaptive.enabled": "false"},
        )

    # Given a scoring attempt killed (SIGKILL, whole process group) once its first tasks committed
    attempt = _submit(score_op("attempt-1"))
    warehouse = Path(paths.warehouse)
    deadline = time.monotonic() + 600
    committed: list[Path] = []
    while time.monotonic() < deadline and attempt.poll() is None:
        # a committed task's files sit in a task_* folder until the job commits (FileOutputCommitter)
        committed = [p for p in warehouse.rglob("*.parquet") if any(x.startswith("task_") for x in p.parts)]
        if committed:
            break
        time.sleep(0.05)
    assert attempt.poll() is None, "the attempt finished before any task committed: nothing was killed"
    assert committed, "no task of the attempt committed within 10 minutes"
    os.killpg(attempt.pid, signal.SIGKILL)
    attempt.wait(timeout=60)
    # Then readers see no row of the killed attempt
    assert _visible_rows(paths, "1") == Counter()

    # When the task is retried
    retry = _submit(score_op("attempt-2"))
    out, _ = retry.communicate(timeout=900)
    assert retry.returncode == 0, out[-3000:]

    # Then every image has exactly one prediction
    assert _visible_rows(paths, "1") == Counter({s.image_id for s in samples})
