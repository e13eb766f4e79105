"""The re-scoring story end to end with dag.test(): new champion -> re-score -> validate -> promote,
then a rollback that recomputes nothing."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from include.sample_data import generate
from rescore_airflow.registry import FolderRegistry, pending_champion
from spark_jobs.contract import RescorePaths
from spark_jobs.current import current_version
from spark_jobs.model_store import Manifest, ModelStore
from spark_jobs.read import NothingPromotedError, current_predictions_table

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]


def _run(dag_id: str):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag(dag_id)
    assert dag is not None
    return dag.test()


def _version_rows(paths: RescorePaths, version: str) -> list[dict]:  # type: ignore[type-arg]
    import pyarrow.dataset as ds

    part = Path(paths.predictions) / "model_name=shapes" / f"model_version={version}"
    return ds.dataset(str(part), format="parquet").to_table(columns=["image_id", "run_id"]).to_pylist()


class PollingReader(threading.Thread):
    """A reader that keeps reading the current predictions through the documented read path."""

    def __init__(self, home: str) -> None:
        super().__init__(daemon=True)
        self.home = home
        self.stop = threading.Event()
        self.seen: list[tuple[frozenset[str], frozenset[str]]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                table = current_predictions_table(self.home, "shapes")
            except (NothingPromotedError, FileNotFoundError):
                continue
            self.seen.append(
                (frozenset(table.column("model_version").to_pylist()), frozenset(table.column("image_id").to_pylist()))
            )
            self.stop.wait(0.2)


def test_new_champion_is_rescored_validated_and_promoted_then_rolled_back(
    rescore_home: Path, airflow_db: Path, trained_model_dir: Path
) -> None:
    paths = RescorePaths(str(rescore_home))
    store = ModelStore(paths.models)
    manifest = Manifest.from_dict(json.loads((trained_model_dir / "manifest.json").read_text()))
    weights = trained_model_dir / "model.safetensors"
    samples = generate(paths, count=40, seed=11)
    all_ids = {s.image_id for s in samples}

    # Given v1 published and scored by the hourly DAG, which promotes the first version
    store.publish(manifest, weights)
    assert _run("image_scoring").state == "success"
    assert current_version(paths, "shapes") == "1"
    v1_rows = _version_rows(paths, "1")

    # When v2 becomes champion and the re-scoring DAG runs, while a reader keeps reading
    assert store.publish(manifest, weights) == "2"
    reader = PollingReader(paths.home)
    reader.start()
    run = _run("model_rescore")
    reader.stop.set()
    reader.join(timeout=10)

    # Then v2 is current and every image has exactly one v2 prediction
    assert run.state == "success"
    assert current_version(paths, "shapes") == "2"
    v2_rows = _version_rows(paths, "2")
    assert Counter(r["image_id"] for r in v2_rows) == Counter(all_ids)
    # and the reader only ever saw one complete version at a time
    assert reader.seen, "the reader never read anything"
    for versions, ids in reader.seen:
        assert len(versions) == 1
        assert ids == all_ids
    assert {next(iter(v)) for v, _ in reader.seen} <= {"1", "2"}
    # and the sensor does not fire again for v2
    assert pending_champion(FolderRegistry(paths.models), paths, "shapes") is None

    # When the data scientist rolls back to v1
    store.set_champion("shapes", "1")
    rollback = _run("model_rescore")

    # Then v1 is promoted again without recomputing a single prediction
    assert rollback.state == "success"
    assert current_version(paths, "shapes") == "1"
    assert sorted(map(str, _version_rows(paths, "1"))) == sorted(map(str, v1_rows))


def _permuted_weights(trained_model_dir: Path, out: Path, labels: int) -> Path:
    """The same network with its output rows rolled by one: every label becomes the next one."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(trained_model_dir / "model.safetensors"))
    last = [k for k in tensors if k.startswith("classifier") and tensors[k].shape[0] == labels][-2:]
    assert len(last) == 2, f"no output layer of {labels} rows among {list(tensors)}"
    for key in last:
        tensors[key] = tensors[key].roll(1, dims=0).contiguous()
    save_file(tensors, str(out))
    return out


def test_a_champion_that_fails_validation_is_not_promoted_and_the_run_fails(
    rescore_home: Path, airflow_db: Path, trained_model_dir: Path, tmp_path: Path
) -> None:
    paths = RescorePaths(str(rescore_home))
    store = ModelStore(paths.models)
    manifest = Manifest.from_dict(json.loads((trained_model_dir / "manifest.json").read_text()))
    generate(paths, count=40, seed=12)
    store.publish(manifest, trained_model_dir / "model.safetensors")
    assert _run("image_scoring").state == "success"
    assert current_version(paths, "shapes") == "1"

    # Given a v2 that disagrees with v1 on (almost) every image
    broken = _permuted_weights(trained_model_dir, tmp_path / "broken.safetensors", len(manifest.labels))
    assert store.publish(manifest, broken) == "2"

    # When the re-scoring DAG runs
    run = _run("model_rescore")

    # Then the run failed at validation, readers still get v1, and the report says why
    assert run.state == "failed"
    assert current_version(paths, "shapes") == "1"
    table = current_predictions_table(paths.home, "shapes")
    assert set(table.column("model_version").to_pylist()) == {"1"}
    reports = sorted((Path(paths.reports) / "shapes" / "2").glob("*.json"))
    assert reports, "validation wrote no report"
    report = json.loads(reports[-1].read_text())
    assert report["passed"] is False
    assert any("label_change" in gate for gate in report["failed_gates"]), report["failed_gates"]
    # and the sensor does not fire again for the failed champion
    assert pending_champion(FolderRegistry(paths.models), paths, "shapes") is None
