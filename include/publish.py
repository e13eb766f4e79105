"""Train the example models and publish model versions into the model store (and MLflow).

    python -m include.publish train [--framework pytorch|keras|all] [--name shapes] [--seed 0]
    python -m include.publish publish PATH [--name NAME] [--labels a,b,c] [--input-size 64] ...

``train`` trains an example model on freshly generated shapes (a progress bar on stderr) and
publishes it. ``publish`` takes a model folder (``manifest.json`` + the weights it names) or a
``.keras`` file (the manifest comes from the flags) and publishes it as the next version.
Either way the new version becomes the champion unless ``--no-champion``. With
``--mlflow-uri`` the same files are also registered as a version of an MLflow registered model,
the model store gets the same version number, and only then the ``champion`` alias moves to it;
a store that already holds that number is refused before anything is written to MLflow.
Model files that would need unpickling are refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.contract import RescorePaths, default_home
from spark_jobs.model_store import MANIFEST_FILE, Manifest, ModelStore, ModelStoreError, check_weights

if TYPE_CHECKING:
    from rescore_airflow.registry import MlflowRegistry

log = logging.getLogger("rescore.publish")

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "rescore"


class PublishError(Exception):
    """A publishing problem the user can fix; the message says how."""


def _mlflow_registry(uri: str) -> MlflowRegistry:
    try:
        from rescore_airflow.registry import MlflowRegistry
    except ImportError:  # run without the Makefile's PYTHONPATH: the plugins folder is next to include/
        sys.path.insert(0, str(ROOT / "plugins"))
        from rescore_airflow.registry import MlflowRegistry
    return MlflowRegistry(uri)


def register_in_mlflow(
    registry: MlflowRegistry, manifest: Manifest, weights_file: Path, *, artifact_root: str | None = None
) -> str:
    """Register manifest + weights as a new version of an MLflow registered model; returns its number.

    The artifacts are laid out the way :class:`rescore_airflow.registry.MlflowRegistry` fetches
    them (``manifest.json`` and the weights at the root of the version's artifacts). The
    ``champion`` alias is left alone: :func:`publish_version` moves it once the model store
    holds the same version too.
    """
    client = registry.client
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=artifact_root)
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=f"publish {manifest.name}")
    with tempfile.TemporaryDirectory(prefix="rescore-publish-") as tmp:
        folder = Path(tmp)
        (folder / MANIFEST_FILE).write_text(manifest.to_json())
        (folder / manifest.weights).write_bytes(weights_file.read_bytes())
        client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{manifest.name}'"):
        client.create_registered_model(manifest.name)
    return str(client.create_model_version(manifest.name, f"{run.info.artifact_uri}/model", run.info.run_id).version)


def move_champion_alias(registry: MlflowRegistry, name: str, version: str) -> None:
    """Point MLflow's ``champion`` alias of ``name`` at ``version`` and check that it moved."""
    registry.client.set_registered_model_alias(name, registry.CHAMPION_ALIAS, version)
    if registry.champion(name) != version:
        raise PublishError(f"MLflow did not move the champion alias of {name} to version {version}")


def check_store_in_step(store: ModelStore, registry: MlflowRegistry, name: str) -> None:
    """Refuse, before anything is written to MLflow, when the store holds the numbers MLflow hands out next.

    MLflow numbers a registered model's versions 1, 2, ... and never reuses one, so a store
    version at or above MLflow's next number would clash with this version or a later one;
    with MLflow as the registry, fetching that number would return the store's older folder.
    """
    in_mlflow = registry.versions(name)
    next_number = int(in_mlflow[-1]) + 1 if in_mlflow else 1
    clashing = [v for v in store.versions(name) if int(v) >= next_number]
    if clashing:
        raise PublishError(
            f"the model store {store.root} already has {name} version(s) {', '.join(clashing)}, but MLflow "
            f"would register this one as version {next_number} (MLflow has {', '.join(in_mlflow) or 'none'}): "
            "the store and the registry are out of step. Nothing was registered in MLflow. Publish without "
            "--mlflow-uri to keep using the store folder as the registry, or use a model store that only "
            "holds versions MLflow registered"
        )


def publish_version(
    store: ModelStore,
    manifest: Manifest,
    weights_file: Path,
    *,
    champion: bool = True,
    mlflow_uri: str | None = None,
    artifact_root: str | None = None,
) -> str:
    """Publish into the store (and MLflow, when given, so both share the version number).

    With MLflow the steps are: check the weights and that the store can take MLflow's next
    number, register the version in MLflow (no alias yet), publish it to the store under that
    number, and only then move the champion (MLflow's alias, then the store's). A failure
    before the last step leaves both champions where they were, and a version MLflow
    registered but the store refused is deleted from MLflow again.
    """
    if not mlflow_uri:
        return store.publish(manifest, weights_file, champion=champion)
    if not Path(weights_file).is_file():
        raise ModelStoreError(f"weights file {weights_file} does not exist")
    check_weights(manifest.framework, Path(weights_file).read_bytes(), str(weights_file), strict=False)
    registry = _mlflow_registry(mlflow_uri)
    check_store_in_step(store, registry, manifest.name)
    fixed = register_in_mlflow(registry, manifest, weights_file, artifact_root=artifact_root)
    log.info("registered %s version %s in MLflow (%s)", manifest.name, fixed, mlflow_uri)
    try:
        version = store.publish(manifest, weights_file, champion=False, version=fixed)
    except BaseException:
        try:
            registry.client.delete_model_version(manifest.name, fixed)
            log.warning("deleted %s version %s from MLflow again: the model store refused it", manifest.name, fixed)
        except Exception as exc:
            log.error(
                "the model store refused %s version %s and deleting it from MLflow failed too (%s): "
                "delete it there by hand; the champion alias did not move",
                manifest.name,
                fixed,
                exc,
            )
        raise
    if champion:
        try:
            move_champion_alias(registry, manifest.name, version)
        except Exception as exc:
            raise PublishError(
                f"published {manifest.name} v{version} to the model store and MLflow, but moving MLflow's "
                f"champion alias failed ({exc}); neither champion moved: point the alias "
                f"{registry.CHAMPION_ALIAS!r} at version {version} in MLflow to make it the champion"
            ) from exc
        store.set_champion(manifest.name, version)
    return version


def _keras_input_size(path: Path) -> int | None:
    """The square input side a ``.keras`` archive's config declares, read without loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            config: dict[str, Any] = json.loads(archive.read("config.json"))
    except (KeyError, zipfile.BadZipFile, ValueError):
        return None
    for layer in config.get("config", {}).get("layers", []):
        shape = layer.get("config", {}).get("batch_shape")
        if layer.get("class_name") == "InputLayer" and shape and len(shape) == 4 and shape[1] == shape[2]:
            return int(shape[1])
    return None


def manifest_for(path: Path, args: argparse.Namespace) -> tuple[Manifest, Path]:
    """The manifest and weights file for a model folder or a ``.keras`` file, flags overriding."""
    overrides: dict[str, Any] = {}
    if args.name:
        overrides["name"] = args.name
    if args.labels:
        overrides["labels"] = [label.strip() for label in args.labels.split(",") if label.strip()]
    for key in ("input_size", "output", "embedding", "architecture"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    for key in ("mean", "std"):
        if getattr(args, key):
            overrides[key] = [float(v) for v in getattr(args, key).split(",")]
    if path.is_dir():
        manifest_file = path / MANIFEST_FILE
        if not manifest_file.exists():
            raise PublishError(
                f"{path} has no {MANIFEST_FILE}: publish a folder written by `include.publish train --out`, "
                "or a .keras file with --name and --labels"
            )
        data = json.loads(manifest_file.read_text())
        data = {**data, **overrides, "version": None, "created_at": None}
        manifest = Manifest.from_dict(data)
        weights = path / manifest.weights
        if not weights.exists():
            raise PublishError(f"{path} has no weights file {manifest.weights!r}, which its manifest names")
        return manifest, weights
    if path.suffix == ".keras":
        missing = [flag for flag, key in (("--name", "name"), ("--labels", "labels")) if key not in overrides]
        if missing:
            raise PublishError(f"publishing the bare file {path} needs {' and '.join(missing)}")
        size = overrides.pop("input_size", None) or _keras_input_size(path)
        if size is None:
            raise PublishError(f"cannot read the input size of {path}: pass --input-size")
        fields: dict[str, Any] = {
            "framework": "keras",
            "architecture": "keras",
            "input_size": size,
            "weights": "model.keras",
            "output": "probabilities",
            **overrides,
        }
        return Manifest.from_dict(fields), path
    raise PublishError(
        f"{path} is neither a model folder nor a .keras file: PyTorch models are published as a folder "
        "with manifest.json + model.safetensors; pickled files (.pt, .pth, .pkl, .h5) are never accepted"
    )


def _train(args: argparse.Namespace, store: ModelStore) -> list[str]:
    from include.example_models import train_keras_mobilenet, train_small_cnn

    frameworks = ["pytorch", "keras"] if args.framework == "all" else [args.framework]
    published = []
    for framework in frameworks:
        name = args.name or ("shapes" if framework == "pytorch" else "shapes-keras")
        with tempfile.TemporaryDirectory(prefix="rescore-train-") as tmp:
            out = Path(args.out) / name if args.out else Path(tmp)
            options: dict[str, Any] = {"name": name, "seed": args.seed, "progress": not args.quiet}
            if args.epochs:
                options["epochs"] = args.epochs
            if args.train_count:
                options["train_count"] = args.train_count
            trainer = train_small_cnn if framework == "pytorch" else train_keras_mobilenet
            result = trainer(out, **options)
            accuracy = result.holdout_accuracy
            print(f"trained {name} ({framework}) in {result.seconds:.0f} s, hold-out accuracy {accuracy:.3f}")
            if args.no_publish:
                print(f"saved {name} to {out} (not published)")
                continue
            version = publish_version(
                store,
                result.manifest,
                result.weights_file,
                champion=not args.no_champion,
                mlflow_uri=args.mlflow_uri,
                artifact_root=args.mlflow_artifacts,
            )
            published.append(version)
            print(_published_line(store, name, version, args))
    return published


def _published_line(store: ModelStore, name: str, version: str, args: argparse.Namespace) -> str:
    where = f"{store.root}/{name}/{version}"
    champion = "" if args.no_champion else " (champion)"
    mlflow = f"; registered in MLflow {args.mlflow_uri} as version {version}" if args.mlflow_uri else ""
    return f"published {name} v{version}{champion} to {where}{mlflow}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m include.publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models", default=None, help="model store folder (default: $RESCORE_HOME/models)")
    common.add_argument("--no-champion", action="store_true", help="publish without making it the champion")
    common.add_argument("--mlflow-uri", default=None, help="also register in this MLflow tracking/registry URI")
    common.add_argument(
        "--mlflow-artifacts", default=None, help="artifact location of a new MLflow experiment (default: MLflow's)"
    )
    common.add_argument("--name", default=None, help="model name (default: the manifest's, or the example's)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", parents=[common], help="train an example model and publish it")
    train.add_argument("--framework", choices=["pytorch", "keras", "all"], default="pytorch")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--epochs", type=int, default=None, help="default: 8 (pytorch), 3 (keras)")
    train.add_argument("--train-count", type=int, default=None, help="training images (default: the example's)")
    train.add_argument("--out", default=None, help="also keep the trained model folder(s) here")
    train.add_argument("--no-publish", action="store_true", help="only train (use with --out)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    publish = sub.add_parser("publish", parents=[common], help="publish a model folder or a .keras file")
    publish.add_argument("path", help="a folder with manifest.json + weights, or a .keras file")
    publish.add_argument("--labels", default=None, help="comma-separated class names, in output order")
    publish.add_argument("--input-size", type=int, default=None, help="square input side in pixels")
    publish.add_argument("--mean", default=None, help="per-channel mean on 0..1 pixels, e.g. 0.5,0.5,0.5")
    publish.add_argument("--std", default=None, help="per-channel standard deviation, e.g. 0.25,0.25,0.25")
    publish.add_argument("--output", choices=["logits", "probabilities"], default=None)
    publish.add_argument("--embedding", default=None, help="layer whose output becomes the embedding column")
    publish.add_argument("--architecture", default=None, help="PyTorch architecture name (see torch_nets)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    store = ModelStore(args.models or RescorePaths(default_home()).models)
    try:
        if args.command == "train":
            if args.no_publish and not args.out:
                raise PublishError("--no-publish without --out would throw the trained model away: add --out DIR")
            _train(args, store)
            return 0
        manifest, weights = manifest_for(Path(args.path), args)
        version = publish_version(
            store,
            manifest,
            weights,
            champion=not args.no_champion,
            mlflow_uri=args.mlflow_uri,
            artifact_root=args.mlflow_artifacts,
        )
        print(_published_line(store, manifest.name, version, args))
        return 0
    except (PublishError, ModelStoreError) as exc:
        print(f"publish failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
