"""The benchmark's models, published into a model store under the bench folder (and logged to a
local MLflow registry for ``spark_udf``): the example CNN at 64 px, trained on generated shapes,
and ResNet-18 at 160 px with random weights from a fixed seed. Both are reused between runs."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spark_jobs.model_store import Manifest, ModelStore, ModelStoreError, ModelVersion

log = logging.getLogger(__name__)

MLFLOW_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class BenchModel:
    key: str
    title: str
    version: ModelVersion
    mlflow_uri: str
    info: dict[str, Any] = field(default_factory=dict)


def _published(store: ModelStore, name: str, recipe: dict[str, Any]) -> ModelVersion | None:
    """The champion of ``name`` if it was made by the same recipe."""
    try:
        version = store.read(name)
    except ModelStoreError:
        return None
    return version if version.manifest.extra.get("bench_recipe") == recipe else None


def _small_cnn(store: ModelStore) -> ModelVersion:
    from include.example_models import train_small_cnn

    # One recipe for both modes, so quick runs reuse the model a full run trained (and vice versa).
    recipe = {"train_count": 2000, "epochs": 4, "seed": 0}
    found = _published(store, "bench_small_cnn", recipe)
    if found:
        return found
    with tempfile.TemporaryDirectory() as tmp:
        result = train_small_cnn(
            Path(tmp),
            name="bench_small_cnn",
            seed=0,
            train_count=recipe["train_count"],
            epochs=recipe["epochs"],
            progress=False,
        )
        manifest = Manifest.from_dict(
            {**result.manifest.to_dict(), "extra": {**result.manifest.extra, "bench_recipe": recipe}}
        )
        store.publish(manifest, result.weights_file)
    return store.read("bench_small_cnn")


def random_state(architecture: str, classes: int, seed: int) -> dict[str, Any]:
    """A project architecture's state dict with random weights from ``seed`` (no downloads)."""
    import torch

    from spark_jobs.models.torch_nets import build_network

    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in build_network(architecture, classes).state_dict().items()}


def _resnet18(store: ModelStore) -> ModelVersion:
    from safetensors.torch import save_file

    classes = 10
    recipe: dict[str, Any] = {"seed": 0, "classes": classes, "weights": "random"}
    found = _published(store, "bench_resnet18", recipe)
    if found:
        return found
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_file(random_state("resnet18", classes, recipe["seed"]), str(weights))
        manifest = Manifest(
            name="bench_resnet18",
            framework="pytorch",
            architecture="resnet18",
            input_size=160,
            labels=[f"class_{i}" for i in range(classes)],
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            extra={"bench_recipe": recipe},
        )
        store.publish(manifest, weights)
    return store.read("bench_resnet18")


def keras_predictor_available() -> bool:
    """Whether spark_jobs.models can build Keras predictors (the inference issue's work)."""
    import importlib.util

    return importlib.util.find_spec("spark_jobs.models.keras_predictor") is not None


def _mobilenet_v2(store: ModelStore) -> ModelVersion:
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    classes = 10
    recipe: dict[str, Any] = {"seed": 0, "classes": classes, "weights": None, "alpha": 1.0}
    found = _published(store, "bench_mobilenet_v2", recipe)
    if found:
        return found
    keras.utils.set_random_seed(0)
    network = keras.applications.MobileNetV2(
        input_shape=(160, 160, 3), weights=None, classes=classes, classifier_activation="softmax"
    )
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.keras"
        network.save(weights)
        manifest = Manifest(
            name="bench_mobilenet_v2",
            framework="keras",
            architecture="keras",
            input_size=160,
            labels=[f"class_{i}" for i in range(classes)],
            mean=[0.5, 0.5, 0.5],  # MobileNetV2 expects inputs in [-1, 1]
            std=[0.5, 0.5, 0.5],
            weights="model.keras",
            output="probabilities",
            extra={"bench_recipe": recipe},
        )
        store.publish(manifest, weights)
    return store.read("bench_mobilenet_v2")


#: What the logged pyfunc imports to load and run a model, by framework (ProbabilitiesModel):
#: each entry the distributions that can provide it, the first installed one pinned.
MLFLOW_REQUIREMENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "pytorch": (("torch",), ("safetensors",), ("numpy",), ("pandas",)),
    "keras": (("keras",), ("tensorflow-cpu", "tensorflow"), ("numpy",), ("pandas",)),
}


def pinned_requirements(framework: str) -> list[str]:
    """The installed versions of what a logged model of ``framework`` needs, stated rather than
    left to MLflow, which infers them by loading each model in a new Python process (the three
    models took 15.8 s to log into a new registry, 2.6 s with their requirements stated, 2 runs
    each), and, with ``env_manager="local"`` as the benchmark calls it, never installs them."""
    from importlib import metadata

    if framework not in MLFLOW_REQUIREMENTS:
        raise ValueError(f"no MLflow requirements known for framework {framework!r}: add it to MLFLOW_REQUIREMENTS")
    pinned = []
    for choices in MLFLOW_REQUIREMENTS[framework]:
        for name in choices:
            try:
                pinned.append(f"{name}=={metadata.version(name)}")
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            raise ValueError(f"a {framework} model needs {' or '.join(choices)}, and none is installed: `make install`")
    return pinned


def log_to_mlflow(version: ModelVersion, registry: Path) -> str:
    """Register ``version`` in a local sqlite MLflow registry (once per store version); its URI."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    registry.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{registry / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    known_file = registry / "logged.json"
    known = json.loads(known_file.read_text()) if known_file.exists() else {}
    key = f"{version.manifest.name}/{version.manifest.version}"
    if key in known:
        return str(known[key])
    # Artifacts under the registry folder too (the default would be ./mlruns in the working directory).
    if mlflow.get_experiment_by_name("rescore-bench") is None:
        mlflow.create_experiment("rescore-bench", artifact_location=(registry / "artifacts").as_uri())
    mlflow.set_experiment("rescore-bench")
    with tempfile.TemporaryDirectory() as tmp:
        manifest_file = Path(tmp) / "manifest.json"
        manifest_file.write_text(version.manifest.to_json())
        weights_file = Path(tmp) / version.manifest.weights
        weights_file.write_bytes(version.weights)
        signature = ModelSignature(inputs=Schema([ColSpec(Array(DataType.float), "image")]))
        with mlflow.start_run(run_name=key):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MLFLOW_MODEL_CODE),
                artifacts={"weights": str(weights_file), "manifest": str(manifest_file)},
                signature=signature,
                registered_model_name=version.manifest.name,
                pip_requirements=pinned_requirements(version.manifest.framework),
            )
    model_uri = f"models:/{version.manifest.name}/{info.registered_model_version}"
    known[key] = model_uri
    known_file.write_text(json.dumps(known, indent=2))
    return model_uri


def _info(version: ModelVersion) -> dict[str, Any]:
    if version.manifest.framework == "keras":
        parameters = None
        architecture = "keras MobileNetV2"
    else:
        from spark_jobs.models.torch_nets import build_network

        network = build_network(version.manifest.architecture, len(version.manifest.labels))
        parameters = sum(p.numel() for p in network.parameters())
        architecture = version.manifest.architecture
    return {
        "framework": version.manifest.framework,
        "architecture": architecture,
        "input_size": version.manifest.input_size,
        "classes": len(version.manifest.labels),
        "parameters": parameters,
        "weights_mib": round(len(version.weights) / 2**20, 2),
        "store_version": version.manifest.version,
        "recipe": version.manifest.extra.get("bench_recipe"),
    }


def prepare_models(workdir: Path, keys: list[str] | None = None) -> list[BenchModel]:
    """The benchmark's models (all, or those named in ``keys``), published and registered."""
    store = ModelStore(workdir / "models")
    registry = workdir / "mlflow"
    models = []
    if not keys or "small_cnn_64" in keys:
        small = _small_cnn(store)
        title = "example CNN, 64 px (trained on generated shapes)"
        models.append(BenchModel("small_cnn_64", title, small, log_to_mlflow(small, registry), _info(small)))
    if not keys or "resnet18_160" in keys:
        resnet = _resnet18(store)
        title = "ResNet-18, 160 px (random weights, seed 0)"
        models.append(BenchModel("resnet18_160", title, resnet, log_to_mlflow(resnet, registry), _info(resnet)))
    if (not keys or "mobilenet_v2_160" in keys) and keras_predictor_available():
        mobilenet = _mobilenet_v2(store)
        title = "Keras MobileNetV2, 160 px (weights=None, seed 0)"
        models.append(
            BenchModel("mobilenet_v2_160", title, mobilenet, log_to_mlflow(mobilenet, registry), _info(mobilenet))
        )
    return models


def keras_status() -> str | None:
    """Why the Keras MobileNetV2 row is not measured, or None when it is (computed, not typed)."""
    if keras_predictor_available():
        return None
    from spark_jobs.models import build_predictor

    manifest = Manifest(
        name="probe",
        framework="keras",
        architecture="mobilenet_v2",
        input_size=160,
        labels=["a", "b"],
        weights="model.keras",
    )
    try:
        build_predictor(ModelVersion(manifest, b""))
    except NotImplementedError:
        return (
            "not measured: spark_jobs.models has no Keras predictor yet "
            "(the inference issue's Keras predictor had not landed on main)"
        )
    except Exception:  # the predictor exists and rejected the empty probe weights
        return "not measured: a Keras predictor exists but this harness does not drive it yet"
    return "not measured: this harness does not drive Keras models yet"
