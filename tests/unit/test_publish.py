"""The publishing tool: model folders, bare .keras files, MLflow registration, training examples."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from include.publish import main
from spark_jobs.model_store import Manifest, ModelStore

pytestmark = pytest.mark.unit


def _torch_folder(folder: Path, name: str = "shapes", seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file

    from spark_jobs.models.torch_nets import SmallCNN

    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in SmallCNN(3).state_dict().items()}, str(folder / "model.safetensors"))
    manifest = Manifest(name=name, framework="pytorch", architecture="small_cnn", input_size=32, labels=["a", "b", "c"])
    (folder / "manifest.json").write_text(manifest.to_json())
    return folder


def _keras_file(path: Path) -> Path:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    inputs = keras.Input((40, 40, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(path)
    return path


def test_publishing_a_folder_numbers_versions_and_moves_the_champion(tmp_path: Path) -> None:
    folder = _torch_folder(tmp_path / "model")
    models = tmp_path / "models"
    assert main(["publish", str(folder), "--models", str(models)]) == 0
    assert main(["publish", str(folder), "--models", str(models), "--no-champion"]) == 0
    assert main(["publish", str(folder), "--models", str(models), "--name", "other"]) == 0
    store = ModelStore(models)
    assert store.versions("shapes") == ["1", "2"]
    assert store.champion("shapes") == "1"
    assert store.versions("other") == ["1"]
    assert store.read("shapes", "2").weights == (folder / "model.safetensors").read_bytes()


def test_a_bare_keras_file_needs_a_name_and_labels_and_its_input_size_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _keras_file(tmp_path / "net.keras")
    models = tmp_path / "models"
    assert main(["publish", str(path), "--models", str(models)]) == 2
    assert "needs --name and --labels" in capsys.readouterr().err
    args = ["publish", str(path), "--models", str(models), "--name", "k", "--labels", "yes,no", "--embedding", "pool"]
    assert main(args) == 0
    manifest = ModelStore(models).manifest("k", "1")
    assert (manifest.framework, manifest.input_size, manifest.labels) == ("keras", 40, ["yes", "no"])
    assert (manifest.weights, manifest.output, manifest.embedding) == ("model.keras", "probabilities", "pool")


class _CreatesFile:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_pickled_models_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "created-by-unpickling"
    folder = _torch_folder(tmp_path / "model")
    (folder / "model.safetensors").write_bytes(pickle.dumps(_CreatesFile(marker)))
    models = tmp_path / "models"
    assert main(["publish", str(folder), "--models", str(models)]) == 2
    assert "pickle" in capsys.readouterr().err
    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps(_CreatesFile(marker)))
    assert main(["publish", str(pt), "--models", str(models), "--name", "x", "--labels", "a,b"]) == 2
    assert "never accepted" in capsys.readouterr().err
    assert not marker.exists()
    assert ModelStore(models).versions("shapes") == []


def test_mlflow_registration_shares_the_version_and_moves_the_champion_alias(tmp_path: Path) -> None:
    from rescore_airflow.registry import MlflowRegistry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = (tmp_path / "artifacts").as_uri()
    models = tmp_path / "models"
    first = _torch_folder(tmp_path / "m1", seed=1)
    second = _torch_folder(tmp_path / "m2", seed=2)
    common = ["--models", str(models), "--mlflow-uri", uri, "--mlflow-artifacts", artifacts]
    assert main(["publish", str(first), *common]) == 0
    assert main(["publish", str(second), *common]) == 0

    registry = MlflowRegistry(uri)
    store = ModelStore(models)
    assert registry.versions("shapes") == ["1", "2"] == store.versions("shapes")
    assert registry.champion("shapes") == "2" == store.champion("shapes")
    # what the sensor side would fetch from MLflow is what was published
    fetched = registry.fetch("shapes", "1", ModelStore(tmp_path / "fetched"))
    assert (fetched / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    assert json.loads((fetched / "manifest.json").read_text())["version"] == "1"

    assert main(["publish", str(first), *common, "--no-champion"]) == 0
    assert registry.champion("shapes") == "2"
    assert store.versions("shapes") == ["1", "2", "3"]


def test_mlflow_is_left_untouched_when_the_store_already_holds_its_next_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rescore_airflow.registry import MlflowRegistry

    # Given a model store with v1 and v2 published without MLflow, and an empty MLflow registry
    models = tmp_path / "models"
    old = _torch_folder(tmp_path / "old", seed=1)
    assert main(["publish", str(old), "--models", str(models)]) == 0
    assert main(["publish", str(old), "--models", str(models)]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    new = _torch_folder(tmp_path / "new", seed=2)

    # When a new model is published with --mlflow-uri (MLflow would call it version 1)
    common = ["--models", str(models), "--mlflow-uri", uri, "--mlflow-artifacts", (tmp_path / "artifacts").as_uri()]
    assert main(["publish", str(new), *common]) == 2

    # Then it is refused before MLflow is touched: no version, no champion alias for a sensor to see
    err = capsys.readouterr().err
    registry = MlflowRegistry(uri)
    assert registry.champion("shapes") is None
    assert registry.versions("shapes") == []
    assert "Nothing was registered in MLflow" in err
    store = ModelStore(models)
    assert (store.versions("shapes"), store.champion("shapes")) == (["1", "2"], "2")


def test_a_version_the_store_refuses_is_withdrawn_from_mlflow_and_the_alias_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from include import publish
    from rescore_airflow.registry import MlflowRegistry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    models = tmp_path / "models"
    common = ["--models", str(models), "--mlflow-uri", uri, "--mlflow-artifacts", (tmp_path / "artifacts").as_uri()]
    first = _torch_folder(tmp_path / "m1", seed=1)
    assert main(["publish", str(first), *common]) == 0
    # Given another publisher takes store version 2 after the up-front check passed
    monkeypatch.setattr(publish, "check_store_in_step", lambda *_: None)
    ModelStore(models).publish(
        Manifest.from_dict(json.loads((first / "manifest.json").read_text())),
        first / "model.safetensors",
        champion=False,
    )

    # When the next version is published: MLflow registers it as 2, the store refuses 2
    second = _torch_folder(tmp_path / "m2", seed=2)
    assert main(["publish", str(second), *common]) == 2

    # Then MLflow's champion is still v1 and its refused v2 is gone again
    registry = MlflowRegistry(uri)
    assert registry.champion("shapes") == "1"
    assert registry.versions("shapes") == ["1"]
    assert "deleted shapes version 2 from MLflow again" in caplog.text
    assert ModelStore(models).champion("shapes") == "1"


def test_train_publishes_a_pytorch_example_with_a_progress_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    args = ["train", "--framework", "pytorch", "--epochs", "1", "--train-count", "128", "--models", str(models)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err  # not a terminal: one progress line per epoch
    assert "published shapes v1 (champion)" in captured.out
    assert ModelStore(models).manifest("shapes", "1").architecture == "small_cnn"


def test_train_publishes_a_keras_mobilenet_that_scores_with_an_embedding(tmp_path: Path) -> None:
    from spark_jobs.models import build_predictor

    models = tmp_path / "models"
    args = ["train", "--framework", "keras", "--epochs", "1", "--train-count", "64", "--quiet", "--models", str(models)]
    assert main(args) == 0
    version = ModelStore(models).read("shapes-keras")
    assert version.manifest.framework == "keras"
    assert version.manifest.embedding == "embedding"
    out = build_predictor(version).forward(np.zeros((2, 3, 64, 64), dtype=np.float32))
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert out.embedding is not None
    assert out.embedding.shape[0] == 2
