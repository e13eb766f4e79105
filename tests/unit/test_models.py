"""The model interface: PyTorch and Keras predictors, embeddings, and refusing anything pickled."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spark_jobs.model_store import Manifest, ModelLoadError, ModelStore, ModelVersion, UnsafeModelError
from spark_jobs.models import build_predictor

pytestmark = pytest.mark.unit

LABELS = ["a", "b", "c"]


class _CreatesFile:
    """Unpickling this object creates ``path`` (what a malicious model file would do)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _torch_manifest(**overrides: object) -> Manifest:
    fields: dict[str, object] = {
        "name": "m",
        "framework": "pytorch",
        "architecture": "small_cnn",
        "input_size": 32,
        "labels": LABELS,
        "version": "1",
    }
    fields.update(overrides)
    return Manifest.from_dict(fields)


def _keras_manifest(**overrides: object) -> Manifest:
    return _torch_manifest(framework="keras", architecture="keras", weights="model.keras", **overrides)


def _torch_weights(seed: int = 0) -> bytes:
    import torch
    from safetensors.torch import save

    from spark_jobs.models.torch_nets import build_network

    torch.manual_seed(seed)
    net = build_network("small_cnn", len(LABELS))
    return save({k: v.contiguous() for k, v in net.state_dict().items()})


def _plain_network(weights: bytes, architecture: str = "small_cnn") -> Any:
    """The architecture with ``weights`` loaded, in eval mode, untouched by the predictor: the reference."""
    from safetensors.torch import load

    from spark_jobs.models.torch_nets import build_network

    net = build_network(architecture, len(LABELS))
    net.load_state_dict(load(weights))
    return net.eval()


def _keras_file(tmp_path: Path, *, output: str = "probabilities") -> Path:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax" if output == "probabilities" else None)(x)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def _batch(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 32, 32)).astype(np.float32)


@pytest.fixture
def pickle_payload(tmp_path: Path) -> tuple[bytes, Path]:
    """A real pickle that creates a marker file when unpickled, checked to do so once."""
    proof = tmp_path / "proof-unpickling-runs-code"
    payload = pickle.dumps(_CreatesFile(proof))
    pickle.loads(payload)  # the payload is real: unpickling it runs code
    assert proof.exists()
    marker = tmp_path / "created-by-unpickling"
    return pickle.dumps(_CreatesFile(marker)), marker


def test_pickled_weights_are_refused_before_anything_unpickles_them(
    pickle_payload: tuple[bytes, Path], tmp_path: Path
) -> None:
    payload, marker = pickle_payload
    version = ModelVersion(_torch_manifest(), payload)
    with pytest.raises(UnsafeModelError, match=r"pickle.*safetensors"):
        build_predictor(version)
    assert not marker.exists()


def test_torch_save_archive_is_refused_at_publish_and_at_load(
    pickle_payload: tuple[bytes, Path], tmp_path: Path
) -> None:
    import torch

    _, marker = pickle_payload
    weights = tmp_path / "model.safetensors"  # a torch.save file under a safe-looking name
    torch.save({"w": _CreatesFile(marker)}, weights)
    with pytest.raises(UnsafeModelError, match=r"data\.pkl"):
        ModelStore(tmp_path / "models").publish(_torch_manifest(), weights)
    assert not (tmp_path / "models" / "m" / "1").exists()
    with pytest.raises(UnsafeModelError, match="never unpickles"):
        build_predictor(ModelVersion(_torch_manifest(), weights.read_bytes()))
    with pytest.raises(UnsafeModelError):
        build_predictor(ModelVersion(_keras_manifest(), weights.read_bytes()))
    assert not marker.exists()


def test_plain_pickle_is_refused_at_publish(pickle_payload: tuple[bytes, Path], tmp_path: Path) -> None:
    payload, marker = pickle_payload
    weights = tmp_path / "model.keras"
    weights.write_bytes(payload)
    with pytest.raises(UnsafeModelError, match="pickle"):
        ModelStore(tmp_path / "models").publish(_keras_manifest(), weights)
    assert not marker.exists()


def test_keras_lambda_layer_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    marker = tmp_path / "created-by-lambda"
    inputs = keras.Input((8, 8, 3))
    # The path sits in the lambda's code as a constant (Keras serialises code, not closures).
    creates_marker = eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]")
    x = keras.layers.Lambda(creates_marker)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    marker.unlink()  # building the model above ran the lambda once
    keras.saving.load_model(path, safe_mode=False)  # the file is real: loading it unsafely runs the code
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeModelError, match="Lambda"):
        build_predictor(ModelVersion(_keras_manifest(input_size=8), path.read_bytes()))
    assert not marker.exists()


def test_non_safetensors_bytes_are_refused_when_loading() -> None:
    with pytest.raises(UnsafeModelError, match="safe format"):
        build_predictor(ModelVersion(_torch_manifest(), b"not a model at all"))


def test_torch_predictor_matches_a_direct_forward_pass_and_returns_the_embedding() -> None:
    import torch

    weights = _torch_weights()
    predictor = build_predictor(ModelVersion(_torch_manifest(embedding="pool"), weights), num_threads=1)
    batch = _batch()
    out = predictor.forward(batch)

    net = _plain_network(weights)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()
        pooled = net.pool(net.features(torch.from_numpy(batch))).reshape(5, -1).numpy()
    np.testing.assert_allclose(out.probabilities, expected, atol=1e-5)
    assert out.embedding is not None
    np.testing.assert_allclose(out.embedding, pooled, atol=1e-5)
    assert out.embedding.shape == (5, 64)


def test_torch_predictor_runs_channels_last_on_the_cpu_and_feeds_it_so() -> None:
    """oneDNN's CPU convolutions and pooling are several times faster on channels-last tensors
    (the example CNN: 0.97 -> 0.42 ms per image on one thread)."""
    import torch

    predictor = build_predictor(ModelVersion(_torch_manifest(), _torch_weights()), num_threads=1)
    conv = next(m for m in predictor.network.modules() if isinstance(m, torch.nn.Conv2d))  # type: ignore[attr-defined]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen: list[bool] = []
    conv.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    predictor.forward(_batch())  # a plain N x 3 x H x W array
    assert seen == [True]


def _weights_with_trained_norms(architecture: str, classes: int, seed: int = 0) -> bytes:
    """Random weights whose batch norms carry statistics and affine terms far from the identity
    (a freshly built network's norms are nearly no-ops, which would hide a wrong fold)."""
    import torch
    from safetensors.torch import save

    from spark_jobs.models.torch_nets import build_network

    torch.manual_seed(seed)
    net = build_network(architecture, classes)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1.0, 1.0)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return save({k: v.contiguous() for k, v in net.state_dict().items()})


@pytest.mark.parametrize(("architecture", "size", "norms"), [("small_cnn", 32, 4), ("resnet18", 64, 20)])
def test_batch_norms_are_folded_into_their_convolutions_without_changing_the_output(
    architecture: str, size: int, norms: int
) -> None:
    import torch

    weights = _weights_with_trained_norms(architecture, len(LABELS))
    manifest = _torch_manifest(architecture=architecture, input_size=size)
    predictor = build_predictor(ModelVersion(manifest, weights), num_threads=1)
    network = predictor.network  # type: ignore[attr-defined]
    assert predictor.folded == norms  # type: ignore[attr-defined]
    assert not [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    batch = np.random.default_rng(1).normal(size=(4, 3, size, size)).astype(np.float32)
    plain = _plain_network(weights, architecture)
    with torch.no_grad():
        expected = torch.softmax(plain(torch.from_numpy(batch)), dim=1).numpy()
    assert expected.max() - expected.min() > 0.05  # the norms matter to the output being compared
    np.testing.assert_allclose(predictor.forward(batch).probabilities, expected, atol=1e-5)


def test_an_embedding_layer_keeps_its_own_output_when_norms_are_folded() -> None:
    """The manifest's embedding may name a convolution: its output is what the user asked for,
    so that one convolution keeps its norm apart; the others are folded."""
    import torch

    weights = _weights_with_trained_norms("small_cnn", len(LABELS))
    predictor = build_predictor(ModelVersion(_torch_manifest(embedding="features.3.0"), weights), num_threads=1)
    assert predictor.folded == 3  # type: ignore[attr-defined]
    batch = _batch()
    out = predictor.forward(batch)

    net = _plain_network(weights)
    with torch.no_grad():
        conv_out = net.features[3][0](net.features[:3](torch.from_numpy(batch)))
    assert out.embedding is not None
    np.testing.assert_allclose(out.embedding, conv_out.reshape(5, -1).numpy(), atol=1e-4)


def test_an_untraceable_network_is_scored_unfolded() -> None:
    import torch

    from spark_jobs.models.torch_predictor import conv_bn_pairs

    class DataDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.norm = torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # control flow on values: torch.fx cannot trace it
                return self.norm(self.conv(x))
            return self.conv(x)

    assert conv_bn_pairs(DataDependent()) == []


def test_torch_predictor_normalises_8_bit_pixels_on_its_device_as_the_decoder_would() -> None:
    """What the scoring UDF sends a GPU predictor: 8-bit HWC pixels, normalised by the predictor
    with the manifest's mean and std (run here on the CPU device)."""
    import torch

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    weights = _torch_weights()
    predictor = build_predictor(ModelVersion(_torch_manifest(mean=mean, std=std), weights), num_threads=1)
    pixels = np.random.default_rng(3).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    out = predictor.forward(pixels)

    scaled = pixels.astype(np.float32) / np.float32(255)
    chw = ((scaled - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2).copy()
    net = _plain_network(weights)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(chw)), dim=1).numpy()
    np.testing.assert_allclose(out.probabilities, expected, atol=1e-6)
    assert getattr(predictor, "takes_uint8", False) is True
    with pytest.raises(ValueError, match=r"8-bit batches must be N x H x W x 3, got \(4, 3, 32, 32\)"):
        predictor.forward(pixels.transpose(0, 3, 1, 2).copy())


def test_torch_predictor_without_embedding_returns_none_and_unknown_layer_is_named() -> None:
    weights = _torch_weights()
    assert build_predictor(ModelVersion(_torch_manifest(), weights)).forward(_batch()).embedding is None
    with pytest.raises(ModelLoadError, match=r"'nope'.*features"):
        build_predictor(ModelVersion(_torch_manifest(embedding="nope"), weights))


def test_torch_weights_of_another_shape_are_a_clear_error() -> None:
    weights = _torch_weights()
    with pytest.raises(ModelLoadError, match="do not fit"):
        build_predictor(ModelVersion(_torch_manifest(labels=["a", "b"]), weights))


@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_keras_predictor_matches_the_model_called_directly(tmp_path: Path, output: str) -> None:
    import keras

    path = _keras_file(tmp_path, output=output)
    manifest = _keras_manifest(output=output, embedding="features")
    predictor = build_predictor(ModelVersion(manifest, path.read_bytes()), num_threads=1)
    batch = _batch()
    out = predictor.forward(batch)

    model = keras.saving.load_model(path)
    nhwc = batch.transpose(0, 2, 3, 1)
    raw = np.asarray(model(nhwc))
    expected = raw if output == "probabilities" else np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
    features = keras.Model(model.inputs, model.get_layer("features").output)
    assert out.embedding is not None
    np.testing.assert_allclose(out.embedding, np.asarray(features(nhwc)), atol=1e-5)


def test_keras_predictor_traces_its_graph_once_for_every_batch_size(tmp_path: Path) -> None:
    # Given a Keras predictor that scored a full batch
    path = _keras_file(tmp_path)
    predictor = build_predictor(ModelVersion(_keras_manifest(), path.read_bytes()), num_threads=1)
    batch = _batch(6)
    full = predictor.forward(batch).probabilities
    # When a partition's last, shorter batches come
    last = predictor.forward(batch[:4]).probabilities
    single = predictor.forward(batch[5:]).probabilities
    # Then the graph traced for the first batch serves them (a trace per shape costs a second of
    # CPU per worker on MobileNetV2), with the same results row for row
    assert predictor.traces == 1
    np.testing.assert_allclose(last, full[:4], atol=1e-6)
    np.testing.assert_allclose(single, full[5:], atol=1e-6)


def test_keras_label_count_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = _keras_file(tmp_path)
    with pytest.raises(ModelLoadError, match="3 outputs but the manifest lists 2 labels"):
        build_predictor(ModelVersion(_keras_manifest(labels=["a", "b"]), path.read_bytes()))


def test_manifests_without_the_new_fields_still_load() -> None:
    old = {
        "name": "shapes",
        "framework": "pytorch",
        "architecture": "small_cnn",
        "input_size": 64,
        "labels": ["a", "b"],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "weights": "model.safetensors",
        "output": "logits",
        "version": "1",
        "created_at": None,
        "extra": {},
    }
    manifest = Manifest.from_dict(old)
    assert manifest.embedding is None
    assert Manifest.from_dict(manifest.to_dict()) == manifest


def test_training_the_example_cnn_reports_its_progress_without_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a tiny training run with its progress shown (what `make demo` and the publishing tool print)
    import warnings

    from include.example_models import train_small_cnn

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning (e.g. a tensor that needs grad turned into a float) fails
        result = train_small_cnn(tmp_path, seed=0, train_count=64, epochs=1, progress=True)
    # Then it saved a loadable model and printed the epoch's loss
    assert (tmp_path / "model.safetensors").is_file()
    assert result.manifest.architecture == "small_cnn"
    captured = capsys.readouterr()
    assert "epoch 1/1 loss" in captured.out + captured.err
