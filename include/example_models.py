"""Train the example PyTorch CNN on freshly generated shapes (no download, seconds on a CPU).

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


def _progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
    if not sys.stderr.isatty():
        if step == steps:  # logs and CI: one line per epoch, no carriage returns
            sys.stderr.write(f"  epoch {epoch}/{epochs} loss {loss:.3f}\n")
        return
    done = int(30 * step / steps)
    sys.stderr.write(f"\r  epoch {epoch}/{epochs} [{'#' * done}{'.' * (30 - done)}] loss {loss:.3f}")
    if step == steps:
        sys.stderr.write("\n")
    sys.stderr.flush()


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
            if progress and (step % 5 == 0 or step == steps - 1):
                _progress(epoch, epochs, step + 1, steps, float(loss))
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
