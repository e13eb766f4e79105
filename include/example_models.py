"""Train the example models on freshly generated shapes (no download, seconds on a CPU).

Two models: the PyTorch ``small_cnn`` and a Keras MobileNetV2 (``weights=None``, width 0.35,
64 px input). Both learn from the same rendered images.

The training images are rendered in memory with a seed of their own, encoded as JPEG/PNG and
decoded through the very preprocessing the scoring job uses, so train and serve agree.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from include.sample_data import LABELS, SIZES, encode, render_shape
from spark_jobs.images import decode_for_model
from spark_jobs.model_store import Manifest, ModelStore

log = logging.getLogger(__name__)

INPUT_SIZE = 64
MEAN = [0.5, 0.5, 0.5]
STD = [0.25, 0.25, 0.25]


@dataclass(frozen=True)
class TrainResult:
    manifest: Manifest
    weights_file: Path
    holdout_accuracy: float
    seconds: float


def make_dataset(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render, encode and preprocess ``count`` labelled images."""
    rng = np.random.default_rng(seed)
    xs = np.empty((count, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    ys = np.empty(count, dtype=np.int64)
    for i in range(count):
        label = int(rng.integers(0, len(LABELS)))
        size = SIZES[int(rng.integers(0, len(SIZES)))]
        data = encode(render_shape(LABELS[label], size, rng), "JPEG" if rng.random() < 0.7 else "PNG", rng)
        xs[i] = decode_for_model(data, INPUT_SIZE, tuple(MEAN), tuple(STD))  # type: ignore[arg-type]
        ys[i] = label
    return xs, ys


class ProgressBar:
    """A training progress bar: tqdm when it is installed, else a plain bar on stderr.

    Not a terminal (logs, CI): one line per epoch, no carriage returns.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True) -> None:
        self.total, self.desc, self.enabled, self.done = total, desc, enabled, 0
        self._tqdm = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm  # optional: not a project dependency

                self._tqdm = tqdm(total=total, desc=desc, unit="step", leave=True)
            except ImportError:
                pass

    def update(self, steps: int = 1, loss: float | None = None) -> None:
        if not self.enabled:
            return
        self.done += steps
        text = "" if loss is None else f"loss {loss:.3f}"
        if self._tqdm is not None:
            self._tqdm.update(steps)
            if text:
                self._tqdm.set_postfix_str(text)
            return
        if not sys.stderr.isatty():
            return
        filled = int(30 * self.done / max(self.total, 1))
        sys.stderr.write(f"\r  {self.desc} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {text}")
        sys.stderr.flush()

    def epoch_done(self, epoch: int, epochs: int, loss: float) -> None:
        if self.enabled and self._tqdm is None and not sys.stderr.isatty():
            sys.stderr.write(f"  {self.desc}: epoch {epoch}/{epochs} loss {loss:.3f}\n")

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled and sys.stderr.isatty():
            sys.stderr.write("\n")


def train_small_cnn(
    out_dir: Path,
    *,
    name: str = "shapes",
    seed: int = 0,
    train_count: int = 3000,
    epochs: int = 8,
    progress: bool = True,
) -> TrainResult:
    """Train ``small_cnn`` and save ``model.safetensors`` + the manifest into ``out_dir``."""
    import torch
    from safetensors.torch import save_file

    from spark_jobs.models.torch_nets import build_network

    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x_train, y_train = make_dataset(train_count, seed=1000 + seed)
    x_hold, y_hold = make_dataset(400, seed=5000 + seed)
    network = build_network("small_cnn", len(LABELS))
    optimiser = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-4)
    batch = 64
    steps = (len(x_train) + batch - 1) // batch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=4e-3, total_steps=epochs * steps)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    bar = ProgressBar(epochs * steps, f"training {name} (small_cnn)", enabled=progress)
    for epoch in range(1, epochs + 1):
        network.train()
        order = torch.randperm(len(xt))
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(network(xt[idx]), yt[idx])
            loss.backward()
            optimiser.step()
            scheduler.step()
            bar.update(1, loss.item())
        bar.epoch_done(epoch, epochs, loss.item())
    bar.close()
    network.eval()
    with torch.inference_mode():
        predicted = network(torch.from_numpy(x_hold)).argmax(1).numpy()
    accuracy = float((predicted == y_hold).mean())
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_file = out_dir / "model.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights_file))
    manifest = Manifest(
        name=name,
        framework="pytorch",
        architecture="small_cnn",
        input_size=INPUT_SIZE,
        labels=list(LABELS),
        mean=MEAN,
        std=STD,
        weights="model.safetensors",
        output="logits",
        extra={"trained_on": f"generated shapes, seed {seed}", "holdout_accuracy": round(accuracy, 4)},
    )
    (out_dir / "manifest.json").write_text(manifest.to_json())
    seconds = time.perf_counter() - started
    log.info("trained %s (seed %d) in %.1f s, hold-out accuracy %.3f", name, seed, seconds, accuracy)
    return TrainResult(manifest, weights_file, accuracy, seconds)


KERAS_INPUT_SIZE = 64
KERAS_ALPHA = 0.35


def train_keras_mobilenet(
    out_dir: Path,
    *,
    name: str = "shapes-keras",
    seed: int = 0,
    train_count: int = 1200,
    epochs: int = 3,
    progress: bool = True,
) -> TrainResult:
    """Train a Keras MobileNetV2 (``weights=None``, width 0.35, 64 px) briefly and save ``model.keras``.

    The pooled features are a layer named ``embedding``, declared in the manifest, so scoring
    also writes an embedding column. Under a minute on 2 cores with the defaults.
    """
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    x_train, y_train = make_dataset(train_count, seed=2000 + seed)
    x_hold, y_hold = make_dataset(300, seed=6000 + seed)
    x_train, x_hold = x_train.transpose(0, 2, 3, 1), x_hold.transpose(0, 2, 3, 1)  # Keras is channels-last
    base = keras.applications.MobileNetV2(
        input_shape=(KERAS_INPUT_SIZE, KERAS_INPUT_SIZE, 3), alpha=KERAS_ALPHA, include_top=False, weights=None
    )
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Keras' 0.999 suits long ImageNet runs; a minute of training needs the running stats to keep up.
            layer.momentum = 0.9
    features = keras.layers.GlobalAveragePooling2D(name="embedding")(base.output)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name="predictions")(features)
    model = keras.Model(base.input, outputs, name=f"{name}_mobilenetv2")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    batch = 64
    steps = (len(x_train) + batch - 1) // batch
    bar = ProgressBar(epochs * steps, f"training {name} (MobileNetV2)", enabled=progress)

    class _Progress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            bar.update(1, (logs or {}).get("loss"))

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            bar.epoch_done(epoch + 1, epochs, float((logs or {}).get("loss", float("nan"))))

    model.fit(x_train, y_train, batch_size=batch, epochs=epochs, verbose=0, callbacks=[_Progress()])
    bar.close()
    predicted = np.asarray(model.predict(x_hold, batch_size=128, verbose=0)).argmax(axis=1)
    accuracy = float((predicted == y_hold).mean())
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_file = out_dir / "model.keras"
    model.save(weights_file)
    manifest = Manifest(
        name=name,
        framework="keras",
        architecture="mobilenet_v2",
        input_size=KERAS_INPUT_SIZE,
        labels=list(LABELS),
        mean=MEAN,
        std=STD,
        weights="model.keras",
        output="probabilities",
        embedding="embedding",
        extra={
            "trained_on": f"generated shapes, seed {seed}",
            "holdout_accuracy": round(accuracy, 4),
            "alpha": KERAS_ALPHA,
        },
    )
    (out_dir / "manifest.json").write_text(manifest.to_json())
    seconds = time.perf_counter() - started
    log.info("trained %s (seed %d) in %.1f s, hold-out accuracy %.3f", name, seed, seconds, accuracy)
    return TrainResult(manifest, weights_file, accuracy, seconds)


def train_and_publish(
    store: ModelStore,
    *,
    name: str = "shapes",
    seed: int = 0,
    champion: bool = True,
    epochs: int = 8,
    progress: bool = True,
) -> str:
    """Train the example CNN and publish it as the next version of ``name``; returns the version."""
    with tempfile.TemporaryDirectory() as tmp:
        result = train_small_cnn(Path(tmp), name=name, seed=seed, epochs=epochs, progress=progress)
        return store.publish(result.manifest, result.weights_file, champion=champion)
