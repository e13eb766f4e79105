"""The MLflow Model Registry backend (SQLite tracking store, local artifacts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rescore_airflow.registry import MlflowRegistry, pending_champion
from spark_jobs.contract import RescorePaths
from spark_jobs.current import set_current
from spark_jobs.model_store import Manifest, ModelStore

pytestmark = pytest.mark.airflow


def _register(uri: str, tmp: Path, weights: bytes, champion: bool = True) -> str:
    """Log manifest + weights as a run's artifacts and register them, the way a publisher would."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("rescore")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("rescore", artifact_location=(tmp / "artifacts").as_uri())
    )
    run = client.create_run(experiment_id)
    src = tmp / f"src-{run.info.run_id}"
    src.mkdir()
    manifest = Manifest(name="m", framework="pytorch", architecture="small_cnn", input_size=8, labels=["a", "b"])
    (src / "manifest.json").write_text(manifest.to_json())
    (src / "model.safetensors").write_bytes(weights)
    client.log_artifacts(run.info.run_id, str(src), "model")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models("name='m'"):
        client.create_registered_model("m")
    version = client.create_model_version("m", f"{run.info.artifact_uri}/model", run.info.run_id)
    if champion:
        client.set_registered_model_alias("m", "champion", version.version)
    return str(version.version)


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_champion_versions_and_fetch_from_mlflow(mlflow_uri: str, tmp_path: Path) -> None:
    registry = MlflowRegistry(mlflow_uri)
    assert registry.champion("m") is None
    assert _register(mlflow_uri, tmp_path, b"weights-1") == "1"
    assert _register(mlflow_uri, tmp_path, b"weights-2", champion=False) == "2"
    assert registry.champion("m") == "1"
    assert registry.versions("m") == ["1", "2"]

    store = ModelStore(tmp_path / "store")
    folder = registry.fetch("m", "2", store)
    assert folder == tmp_path / "store" / "m" / "2"
    fetched = store.read("m", "2")
    assert fetched.weights == b"weights-2"
    assert fetched.manifest.version == "2"
    # fetching again is a no-op, and nothing temporary is left behind
    registry.fetch("m", "2", store)
    assert sorted(p.name for p in (tmp_path / "store" / "m").iterdir()) == ["2"]


def test_sensor_logic_works_against_mlflow(mlflow_uri: str, tmp_path: Path) -> None:
    paths = RescorePaths(str(tmp_path / "home"))
    registry = MlflowRegistry(mlflow_uri)
    _register(mlflow_uri, tmp_path, b"w1")
    assert pending_champion(registry, paths, "m") is None  # nothing promoted: image_scoring's job
    set_current(paths, "m", "1")
    assert pending_champion(registry, paths, "m") is None
    _register(mlflow_uri, tmp_path, b"w2")
    assert pending_champion(registry, paths, "m") == "2"


def test_hook_picks_the_backend_from_the_connection(mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from rescore_airflow.hooks import ModelRegistryHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_RESCORE_REGISTRY",
        json.dumps({"conn_type": "generic", "extra": {"backend": "mlflow", "tracking_uri": mlflow_uri}}),
    )
    config = ModelRegistryHook().get_config()
    assert (config.backend, config.location) == ("mlflow", mlflow_uri)
    monkeypatch.delenv("AIRFLOW_CONN_RESCORE_REGISTRY")
    assert ModelRegistryHook().get_config().backend == "folder"
