"""The model store folder: atomic publishing, champion pointer, refusing unsafe weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.model_store import Manifest, ModelStore, ModelStoreError

pytestmark = pytest.mark.unit


def _manifest(**overrides: object) -> Manifest:
    fields: dict[str, object] = {
        "name": "shapes",
        "framework": "pytorch",
        "architecture": "small_cnn",
        "input_size": 64,
        "labels": ["a", "b"],
    }
    fields.update(overrides)
    return Manifest.from_dict(fields)


def test_publish_numbers_versions_and_moves_the_champion(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights-1")
    store = ModelStore(tmp_path / "models")
    assert store.publish(_manifest(), weights) == "1"
    weights.write_bytes(b"weights-2")
    assert store.publish(_manifest(), weights, champion=False) == "2"
    assert store.versions("shapes") == ["1", "2"]
    assert store.champion("shapes") == "1"
    store.set_champion("shapes", "2")
    assert store.read("shapes").weights == b"weights-2"
    assert store.read("shapes").manifest.version == "2"
    # nothing half-written or temporary is left beside the versions
    assert sorted(p.name for p in (tmp_path / "models" / "shapes").iterdir()) == ["1", "2", "champion.json"]


def test_unknown_version_and_missing_model_give_actionable_errors(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match=r"has no champion.*publish a version first"):
        store.read("nope")
    with pytest.raises(ModelStoreError, match="cannot make shapes version 9 champion: it is not published"):
        store.set_champion("shapes", "9")


@pytest.mark.parametrize("weights", ["model.pt", "model.pth", "model.pkl", "model.bin"])
def test_pickle_based_weight_files_are_refused(weights: str) -> None:
    with pytest.raises(ModelStoreError, match="would need unpickling or is unknown"):
        _manifest(weights=weights)


def test_manifest_validates_itself() -> None:
    with pytest.raises(ModelStoreError, match="framework 'onnx'"):
        _manifest(framework="onnx")
    with pytest.raises(ModelStoreError, match="two or more distinct"):
        _manifest(labels=["a", "a"])
    with pytest.raises(ModelStoreError, match="unknown keys"):
        Manifest.from_dict({**_manifest().to_dict(), "colour": "red"})


@pytest.mark.parametrize("weights", ["../../escape.safetensors", "sub/model.safetensors", "/etc/model.safetensors"])
def test_manifest_paths_cannot_leave_the_version_folder(weights: str) -> None:
    with pytest.raises(ModelStoreError, match="plain file name inside the version folder"):
        _manifest(weights=weights)


def test_names_versions_and_symlinks_cannot_leave_the_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"not yours")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"w")
    assert store.publish(_manifest(), weights) == "1"

    with pytest.raises(ModelStoreError, match="not a plain folder name"):
        store.manifest("../store/shapes", "1")
    with pytest.raises(ModelStoreError, match="not a version number"):
        store.manifest("shapes", "../1")
    # a weights file replaced by a symlink to a file outside the store is not read
    linked = store.root / "shapes" / "1" / "model.safetensors"
    linked.unlink()
    linked.symlink_to(outside)
    with pytest.raises(ModelStoreError, match="points outside the model store"):
        store.read("shapes", "1")
