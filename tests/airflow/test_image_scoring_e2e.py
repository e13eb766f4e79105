"""image_scoring end to end: dag.test() on local Spark, on a fresh RESCORE_HOME."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from include.sample_data import generate
from spark_jobs.contract import RescorePaths
from spark_jobs.model_store import Manifest, ModelStore

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]


def _predictions(paths: RescorePaths) -> list[dict]:  # type: ignore[type-arg]
    import pyarrow as pa
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(
        pa.schema([("model_name", pa.string()), ("model_version", pa.string())]), flavor="hive"
    )
    table = ds.dataset(paths.predictions, format="parquet", partitioning=partitioning).to_table(
        columns=["image_id", "label", "model_name", "model_version", "run_id"]
    )
    return table.to_pylist()


def _run_dag(dag_id: str):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag(dag_id)
    assert dag is not None
    return dag.test()


def test_image_scoring_scores_every_image_once_with_the_published_model(
    rescore_home: Path, airflow_db: Path, trained_model_dir: Path
) -> None:
    paths = RescorePaths(str(rescore_home))
    # Given 80 generated images in the landing folder and the trained CNN published as version 1
    samples = generate(paths, count=80, seed=7)
    manifest = Manifest.from_dict(json.loads((trained_model_dir / "manifest.json").read_text()))
    version = ModelStore(paths.models).publish(manifest, trained_model_dir / "model.safetensors")
    assert version == "1"

    # When the scoring DAG runs
    run = _run_dag("image_scoring")

    # Then it succeeded and every image has exactly one prediction, from shapes v1
    assert run.state == "success"
    rows = _predictions(paths)
    per_image = Counter(r["image_id"] for r in rows)
    truth = {s.image_id: s.label for s in samples}
    assert set(per_image) == set(truth)
    assert set(per_image.values()) == {1}
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("shapes", "1")}
    assert {r["run_id"] for r in rows} == {run.run_id}
    # and the model really learned the shapes (accuracy against the generator's labels)
    correct = sum(r["label"] == truth[r["image_id"]] for r in rows)
    assert correct / len(truth) >= 0.9, f"accuracy {correct / len(truth):.2f}"
    # and a validation report exists for that run
    reports = list((rescore_home / "reports" / "shapes" / "1").glob("*.json"))
    assert len(reports) == 1
    assert json.loads(reports[0].read_text())["passed"] is True

    # When it runs again with nothing new landed
    second = _run_dag("image_scoring")

    # Then nothing is scored twice
    assert second.state == "success"
    again = _predictions(paths)
    assert len(again) == len(rows)
    assert {r["run_id"] for r in again} == {run.run_id}
