"""GPU benchmark: Rescore's scoring job against a pure-PyTorch loop on the same GPU.

ResNet-50 at 224 px in float16 (random weights, seed 0), the same generated photo-like JPEGs,
the same batch size and the same number of decoding cores for every method:

- ``pytorch_loop``: the reference, what a PyTorch user writes without Spark: a ``DataLoader``
  whose worker processes decode (``spark_jobs.images.decode_for_model``), pinned memory, the
  network channels-last under float16 autocast.
- ``rescore_partition``: Rescore's UDF body (``score_partition``) in one process, its decoding
  pool feeding the GPU: what the UDF itself costs, without Spark.
- ``rescore_spark``: Rescore's scoring job (``score_images`` over ``binaryFile``), Spark in
  local mode with one task at a time (one executor per GPU), ``--device cuda``.

Each method runs once as a warm-up, then ``--rounds`` times interleaved; the best and median
images/s are reported with each method's ratio to the PyTorch loop (the issue's target for
Rescore's job: at least 0.80). Results: ``<out>/results.json`` and ``<out>/README.md``, with the
device named. Runs on the CPU too (``--device cpu``), slowly, to check the harness.

Without a GPU, ``--simulate-gpu MS`` rehearses the same pipelines on the CPU: every method's
network is replaced by :class:`include.bench.simulated.SimulatedAccelerator`, which waits ``MS``
milliseconds per image without using a core, and Rescore runs its GPU path (8-bit pixels,
decoding ahead of the model); the results go to ``docs/benchmarks/gpu/simulated/`` and measure
how well each method feeds a device faster than its decoding, not a GPU.

    python -m include.bench.gpu [--device cuda] [--images 4096] [--batch-size 256] [--workers 8]
    python -m include.bench.gpu --simulate-gpu 0.5 --workers 1 --images 4096 --batch-size 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

from include.bench.data import generate_images
from include.bench.methods import decode, read_files, split_bytes
from include.bench.models import IMAGENET_MEAN, IMAGENET_STD, random_state
from include.bench.simulated import SimulatedAccelerator, SimulatedBuilder
from spark_jobs.model_store import Manifest, ModelVersion

log = logging.getLogger("rescore.bench.gpu")
ROOT = Path(__file__).resolve().parents[2]
#: Rescore's job against the pure-PyTorch loop on the same GPU (issue: at least 0.80).
TARGET_RATIO = 0.80


def resnet50_version(labels: int = 1000, seed: int = 0) -> ModelVersion:
    """ResNet-50 at 224 px with random weights from ``seed``, as a publishable version."""
    from safetensors.torch import save

    manifest = Manifest(
        name="bench_resnet50",
        framework="pytorch",
        architecture="resnet50",
        input_size=224,
        labels=[f"class_{i}" for i in range(labels)],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        version="1",
    )
    return ModelVersion(manifest, save(random_state("resnet50", labels, seed)))


class _Files:
    """A map-style dataset of image files, decoded as Rescore decodes them."""

    def __init__(self, files: list[Path], manifest: Manifest) -> None:
        self.files = files
        self.manifest = manifest.to_dict()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        return decode(self.manifest, self.files[index].read_bytes())


def pytorch_loop(
    version: ModelVersion,
    files: list[Path],
    device: str,
    batch_size: int,
    workers: int,
    *,
    simulate_ms: float | None = None,
) -> np.ndarray:
    """The reference: DataLoader workers decode into pinned memory, the GPU scores float16
    channels-last batches; the same network object and weights as Rescore's predictor. The
    loader and its worker processes are made once and reused by every round, as Spark reuses its
    Python workers and their cached model: neither side pays its start-up in a timed round.
    ``simulate_ms``: the same loader feeds a :class:`SimulatedAccelerator` instead."""
    import torch

    if simulate_ms is not None:
        accelerator = _predictor(version, device, simulate_ms)
        loader = _loader(version, files, False, batch_size, workers)
        return np.concatenate([accelerator.predict(batch.numpy()) for batch in loader])
    network = _predictor(version, device).network
    target = torch.device(device)
    cuda = target.type == "cuda"
    loader = _loader(version, files, cuda, batch_size, workers)
    parts = []
    with torch.inference_mode():
        for batch in loader:
            inputs = batch.to(target, non_blocking=True)
            if cuda:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=target.type, dtype=torch.float16, enabled=cuda):
                logits = network(inputs)
            parts.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(parts)


_LOADERS: dict[tuple[int, bool, int, int], Any] = {}


def _loader(version: ModelVersion, files: list[Path], cuda: bool, batch_size: int, workers: int) -> Any:
    from torch.utils.data import DataLoader

    key = (id(files), cuda, batch_size, workers)
    if key not in _LOADERS:
        _LOADERS[key] = DataLoader(
            cast(Any, _Files(files, version.manifest)),
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=cuda,
            prefetch_factor=4 if workers else None,
            persistent_workers=workers > 0,
            # Forked from a clean server process: a plain fork would copy the driver's Py4J socket to
            # Spark, and each exiting worker would close it under the driver.
            multiprocessing_context=multiprocessing.get_context("forkserver") if workers else None,
        )
    return _LOADERS[key]


_PREDICTORS: dict[str, Any] = {}


def _predictor(version: ModelVersion, device: str, simulate_ms: float | None = None) -> Any:
    """One predictor per device for the in-process methods (built before timing, as Spark reuses);
    a :class:`SimulatedAccelerator` when ``simulate_ms`` is given."""
    key = device if simulate_ms is None else f"{device}-simulated-{simulate_ms}"
    if key not in _PREDICTORS:
        if simulate_ms is not None:
            _PREDICTORS[key] = SimulatedAccelerator(version.manifest, simulate_ms)
        else:
            from spark_jobs.models import build_predictor

            _PREDICTORS[key] = build_predictor(version, device=device, mixed_precision=True)
    return _PREDICTORS[key]


def rescore_partition(
    version: ModelVersion,
    files: list[Path],
    device: str,
    batch_size: int,
    workers: int,
    *,
    pool: str = "auto",
    simulate_ms: float | None = None,
) -> np.ndarray:
    """Rescore's UDF body on one process: Arrow-sized batches of bytes in, probabilities out."""
    import pandas as pd

    from spark_jobs.score import HeldBatches, ScoringOptions, score_partition

    def batches() -> Iterator[tuple[pd.Series, pd.Series]]:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            yield pd.Series([f.read_bytes() for f in chunk]), pd.Series([str(f) for f in chunk])

    options = ScoringOptions(
        batch_size=batch_size, decode="prefetch", decode_workers=workers, decode_pool=pool, mixed_precision=True
    )
    frames = score_partition(
        batches(), _predictor(version, device, simulate_ms), options, device=device, cpus=workers, held=HeldBatches()
    )
    # every image decodes: each row holds the same number of probabilities
    return np.concatenate(
        [frame.column("probabilities").flatten().to_numpy().reshape(frame.num_rows, -1) for frame in frames]
    ).astype(np.float32, copy=False)


def rescore_spark(
    spark: Any,
    version: ModelVersion,
    folder: Path,
    out: Path,
    *,
    device: str,
    batch_size: int,
    workers: int,
    pool: str = "auto",
    simulate_ms: float | None = None,
    device_lock: Path | None = None,
    tasks: int = 1,
    max_bytes: int | None = None,
    files_read_by_udf: bool = False,
) -> Path:
    """Rescore's scoring job on ``binaryFile`` to Parquet: one task at a time on the GPU,
    ``workers`` decoding threads. ``device`` is the job's ``--device``: ``auto`` takes the GPU
    Spark assigned to the task; ``simulate_ms``: the tasks score with a :class:`SimulatedAccelerator`,
    one device shared through ``device_lock`` by the tasks that run at once.
    The files are read as ``tasks`` partitions of about equal image counts (``max_bytes``: their
    :func:`include.bench.methods.split_bytes`, worked out before timing). ``files_read_by_udf``: Spark
    only lists the files and the UDF reads them (:func:`spark_jobs.score.read_by_udf`), as the CPU
    benchmark's Rescore method does. Returns the output folder."""
    from spark_jobs.score import ScoringOptions, read_by_udf, score_images

    images = read_files(spark, folder, partitions=tasks, max_bytes=max_bytes)
    if files_read_by_udf:
        images = read_by_udf(images)
    payload = spark.sparkContext.broadcast({"manifest": version.manifest.to_dict(), "weights": version.weights})
    options = ScoringOptions(
        batch_size=batch_size,
        decode="prefetch",
        decode_workers=workers,
        decode_pool=pool,
        mixed_precision=True,
        device=device,
        builder=None
        if simulate_ms is None
        else SimulatedBuilder(simulate_ms, None if device_lock is None else str(device_lock)),
    )
    predictions = score_images(images, payload, run_id="gpu-bench", options=options)
    predictions.select("image_id", "probabilities").write.mode("overwrite").parquet(str(out))
    return out


def read_spark_output(out: Path, files: list[Path]) -> np.ndarray:
    """The job's probabilities in the order of ``files``."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(out), format="parquet").to_table().to_pylist()
    by_id = {row["image_id"]: row["probabilities"] for row in table}
    return np.asarray([by_id[f.name] for f in files], dtype=np.float32)


def start_spark(batch_size: int, workers: int, master: str = "local[1]", gpus: int = 0, tasks: int = 1) -> Any:
    """A session on ``master``: local mode runs one task at a time; on a standalone cluster one
    executor takes the worker's ``workers`` cores and ``gpus`` GPUs, and runs ``tasks`` tasks at
    a time, each with ``workers / tasks`` cores and a ``1 / tasks`` share of the executor's GPUs
    (Spark assigns the address: ``TaskContext.resources()["gpu"]``)."""
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(master)
        .appName("rescore-gpu-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "8g")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
        .config("spark.python.worker.reuse", "true")
        .config("spark.python.worker.faulthandler.enabled", "true")
    )
    if not master.startswith("local"):
        cores = max(workers, 1)
        builder = (
            builder.config("spark.executor.cores", str(cores))
            .config("spark.task.cpus", str(cores // tasks))  # each task decodes on its cores
            .config("spark.executor.memory", "8g")
            .config("spark.cores.max", str(cores))
            .config("spark.executorEnv.PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        )
        if gpus:
            builder = builder.config("spark.executor.resource.gpu.amount", str(gpus)).config(
                "spark.task.resource.gpu.amount", str(gpus if tasks == 1 else gpus / tasks)
            )
    spark = builder.getOrCreate()
    if spark.sparkContext.master != master:
        raise RuntimeError(
            f"this process already runs a Spark session on {spark.sparkContext.master}, so the benchmark "
            f"cannot start one on {master}: run the harness in its own process (python -m include.bench.gpu)"
        )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def task_devices(spark: Any) -> list[str]:
    """The device each of a few tasks was given, as Rescore's UDF reads it (``task_device``)."""
    from spark_jobs.score import task_device

    slots = max(1, spark.sparkContext.defaultParallelism)
    return sorted(set(spark.sparkContext.parallelize(range(slots), slots).map(lambda _: task_device()[0]).collect()))


class Cluster:
    """A standalone master and one worker on 127.0.0.1 (``include/cluster.sh``) offering ``cores``
    and ``gpus``; stopped on exit, whatever happened."""

    def __init__(self, home: Path, cores: int, gpus: int, discovery: Path | None = None) -> None:
        self.env = {
            **os.environ,
            "RESCORE_HOME": str(home),
            "RESCORE_SPARK_PYTHON": sys.executable,
            "RESCORE_SPARK_WORKERS": "1",
            "RESCORE_SPARK_WORKER_CORES": str(cores),
            "RESCORE_SPARK_WORKER_MEMORY": "9g",
            "RESCORE_SPARK_WORKER_GPUS": str(gpus),
            "RESCORE_SPARK_MASTER_PORT": str(_free_port()),
            "RESCORE_SPARK_MASTER_UI_PORT": str(_free_port()),
        }
        if discovery is not None:
            self.env["RESCORE_SPARK_GPU_DISCOVERY"] = str(discovery.resolve())
        self.master = f"spark://127.0.0.1:{self.env['RESCORE_SPARK_MASTER_PORT']}"
        self.home = home

    def _script(self, action: str) -> subprocess.CompletedProcess[str]:
        script = ROOT / "include" / "cluster.sh"
        return subprocess.run(
            [str(script), action], check=False, env=self.env, capture_output=True, text=True, timeout=180
        )

    def __enter__(self) -> Cluster:
        done = self._script("up")
        if done.returncode != 0:
            self._script("down")
            logs = self.home / "cluster" / "logs"
            raise RuntimeError(f"the standalone cluster did not start: {done.stderr.strip()} (logs: {logs})")
        return self

    def __exit__(self, *exc: object) -> None:
        self._script("down")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agreement(reference: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Share of images with the reference's argmax, and the largest probability difference."""
    if reference.shape != probabilities.shape:
        raise ValueError(f"predictions of shape {probabilities.shape} cannot be compared with {reference.shape}")
    same = reference.argmax(axis=1) == probabilities.argmax(axis=1)
    return {
        "argmax_agreement": float(same.mean()),
        "max_probability_diff": float(np.abs(reference - probabilities).max()),
    }


def device_name(device: str, simulate_ms: float | None = None) -> str:
    if simulate_ms is not None:
        cpu = platform.processor() or platform.machine()
        return f"simulated accelerator ({simulate_ms:g} ms per image, no GPU; decoding on {cpu})"
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    return platform.processor() or platform.machine()


def summarise(name: str, seconds: list[float], images: int, reference: float | None) -> dict[str, Any]:
    rates = [images / s for s in seconds]
    median = statistics.median(rates)
    return {
        "method": name,
        "images": images,
        "seconds": seconds,
        "images_per_s_best": max(rates),
        "images_per_s_median": median,
        "ratio_to_pytorch_loop": None if reference is None else median / reference,
    }


def render(results: dict[str, Any]) -> str:
    simulated = results.get("simulated_ms_per_image")
    model = "ResNet-50, 224 px, float16 autocast, channels-last"
    if simulated is not None:
        model = (
            f"none: a simulated accelerator (`include/bench/simulated.py`) waits {simulated:g} ms per image "
            "without using a core, fed 224 px images as a ResNet-50 would be"
        )
    lines = [
        "# GPU benchmark" + (" rehearsed on the CPU (simulated accelerator)" if simulated is not None else ""),
        "",
        "Generated by `python -m include.bench.gpu` into `results.json` beside this page; do not edit by hand.",
        "",
    ]
    if simulated is not None:
        lines += [
            "No GPU ran this: every method's network was replaced by a simulated accelerator, and Rescore ran "
            "its GPU path (8-bit pixels decoded ahead of the model). The figures measure how well each method "
            "keeps a device faster than its decoding busy on this machine's cores, not a GPU's speed; they are "
            "not the issue's measurement of the target.",
            "",
        ]
    lines += [
        f"- **Device:** {results['device_name']} (`{results['device']}`), {results['cpus']} CPU cores, "
        f"{results['workers']} decoding worker{'' if results['workers'] == 1 else 's'} per method "
        f"(Rescore's pool: `{results.get('decode_pool', 'auto')}`)",
        f"- **Model:** {model}; batch size {results['batch_size']}",
        f"- **Images:** {results['images']} generated photo-like JPEGs; "
        f"{results['rounds']} timed rounds after a warm-up",
        f"- **Run:** {results['created_at']}",
        f"- **Spark:** {_spark_line(results.get('spark'))}",
        "",
        "| method | images/s (median) | images/s (best) | × PyTorch loop | argmax agreement | max prob. diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["methods"]:
        ratio = row["ratio_to_pytorch_loop"]
        lines.append(
            f"| {row['method']} | {row['images_per_s_median']:,.1f} | {row['images_per_s_best']:,.1f} "
            f"| {'–' if ratio is None else f'{ratio:.2f}'} | {row['argmax_agreement']:.1%} "
            f"| {row['max_probability_diff']:.1e} |"
        )
    target = results["target"]
    verdict = "met" if target["met"] else f"**missed** by {target['threshold'] - target['value']:.2f}"
    lines += [
        "",
        ("Rehearsal against the target" if simulated is not None else "Target")
        + f": Rescore's job at least {target['threshold']} of the PyTorch loop: "
        f"{target['value']:.2f}, {verdict}. Agreement with the loop: "
        f"{'yes' if results['agree'] else '**no**'} (every method's argmax on at least 99% of images, "
        f"probabilities within 2e-2 under float16).",
        "",
    ]
    return "\n".join(lines)


def _spark_line(spark: dict[str, Any] | None) -> str:
    if not spark:
        return "not run (`--skip-spark`)"
    split = ""
    if "images_per_task" in spark:
        tasks = spark["tasks_per_run"]
        split = f"; {tasks} task{'' if tasks == 1 else 's'} per run (up to {spark['images_per_task']:,} images each)"
    if spark.get("files_read_by_udf"):
        split += "; the UDF reads the files (`--read-by-udf`), Spark lists them"
    tasks = spark.get("tasks_at_a_time", 1)
    if spark["mode"] == "local":
        at_once = "one task at a time" if tasks == 1 else f"{tasks} tasks at a time sharing the device"
        return f"local mode, {at_once}, `--device {spark['job_device']}`{split}"
    share = "per task" if tasks == 1 else f"shared by {tasks} tasks at a time"
    gpus = f", {spark['executor_gpus']} GPU per executor, {share}" if spark["executor_gpus"] else ""
    return (
        f"standalone master + one worker on 127.0.0.1, one executor of {spark['executor_cores']} cores{gpus}; "
        f"`--device {spark['job_device']}`; the device Spark assigned to tasks: {', '.join(spark['task_devices'])}"
        f"{split}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m include.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:<n> or cpu (default: cuda when available)")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding workers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--images-per-task",
        type=int,
        default=4096,
        help="images in each of the Spark job's tasks (partitions of equal counts); each task fills and "
        "drains the decoding pipeline once, so a GPU waits at every task's start and end",
    )
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--workdir", type=Path, default=None, help="default: $RESCORE_HOME/bench-gpu")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: docs/benchmarks/gpu, or docs/benchmarks/gpu/simulated with --simulate-gpu",
    )
    parser.add_argument(
        "--simulate-gpu",
        type=float,
        default=None,
        metavar="MS",
        help="rehearse without a GPU: every method scores with a simulated accelerator that waits MS ms per "
        "image without using a core (include/bench/simulated.py); Rescore runs its GPU path",
    )
    parser.add_argument("--skip-spark", action="store_true", help="only the in-process methods")
    parser.add_argument(
        "--decode-pool",
        choices=("auto", "thread", "process"),
        default="auto",
        help="Rescore's decoding workers (ScoringOptions.decode_pool; auto: processes on GPU from 4 workers)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run the Spark job on a standalone master + one worker on 127.0.0.1 (include/cluster.sh): one "
        "executor with --workers cores and, on cuda, one GPU that Spark assigns to each task; "
        "default: local mode",
    )
    parser.add_argument(
        "--cluster-gpus", type=int, default=None, help="GPUs the worker offers (default: 1 on cuda, else 0)"
    )
    parser.add_argument(
        "--tasks-per-gpu",
        type=int,
        default=1,
        help="with --cluster or --simulate-gpu: tasks running at a time on the executor, each with --workers / N "
        "cores and a 1/N share of the GPU (spark.task.resource.gpu.amount; a simulated device is shared through "
        "a lock file), so one task's start overlaps another's work",
    )
    parser.add_argument(
        "--read-by-udf",
        action="store_true",
        help="the Spark job's UDF reads the files itself and Spark only lists them (spark_jobs.score.read_by_udf, "
        "as the CPU benchmark's Rescore method): the bytes skip the JVM; default: through Spark's binaryFile",
    )
    parser.add_argument(
        "--gpu-discovery", type=Path, default=None, help="the worker's GPU discovery script (default: nvidia-smi's)"
    )
    args = parser.parse_args(argv)
    if min(args.images, args.batch_size, args.rounds, args.images_per_task) < 1 or args.workers < 0:
        parser.error("--images, --batch-size, --rounds and --images-per-task must be at least 1, --workers at least 0")
    if args.tasks_per_gpu < 1 or max(args.workers, 1) % args.tasks_per_gpu:
        parser.error(f"--tasks-per-gpu must be at least 1 and divide --workers ({args.workers})")
    if args.simulate_gpu is not None:
        if args.simulate_gpu < 0:
            parser.error("--simulate-gpu takes the simulated milliseconds per image, 0 or more")
        if args.device not in (None, "cuda", "cuda:0"):
            parser.error("--simulate-gpu stands in for cuda:0: leave --device out")
    if args.out is None:
        args.out = ROOT / "docs" / "benchmarks" / "gpu" / ("simulated" if args.simulate_gpu is not None else "")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    import torch

    multiprocessing.set_forkserver_preload(["numpy", "torch", "PIL.Image", "spark_jobs.images"])
    simulate = args.simulate_gpu
    # a simulated accelerator takes the GPU's place: Rescore's tasks run their GPU path, no CUDA call is made
    device = "cuda" if simulate is not None else args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = "cuda:0" if device == "cuda" else device
    workdir = args.workdir or Path(os.environ.get("RESCORE_HOME", ROOT / "var")) / "bench-gpu"
    folder = workdir / f"images-{args.seed}-{args.images}"
    files = generate_images(folder, args.images, args.seed, processes=os.cpu_count())
    version = resnet50_version()
    workers = args.workers
    runs: dict[str, Callable[[], Any]] = {
        "pytorch_loop": lambda: pytorch_loop(version, files, device, args.batch_size, workers, simulate_ms=simulate),
        "rescore_partition": lambda: rescore_partition(
            version, files, device, args.batch_size, max(workers, 1), pool=args.decode_pool, simulate_ms=simulate
        ),
    }
    spark_info: dict[str, Any] = {}
    with ExitStack() as stack:
        if not args.skip_spark:
            cores = max(workers, 1)
            master, gpus, job_device = "local[1]", 0, "cuda" if device.startswith("cuda") else "cpu"
            if args.cluster:
                default_gpus = int(device.startswith("cuda") and simulate is None)
                gpus = args.cluster_gpus if args.cluster_gpus is not None else default_gpus
                cluster = stack.enter_context(Cluster(workdir / "cluster", cores, gpus, args.gpu_discovery))
                master = cluster.master
                # on a GPU the job takes the address Spark assigned; a CPU rehearsal keeps the CPU
                job_device = "auto" if device.startswith("cuda") and gpus else job_device
            tasks = 1
            if args.cluster or simulate is not None:
                tasks = args.tasks_per_gpu
            if not args.cluster and tasks > 1:
                # local mode has no GPU scheduling; the simulated device is shared through its lock
                master = f"local[{tasks}]"
            spark = start_spark(args.batch_size, workers, master, gpus, tasks)
            stack.callback(spark.stop)
            spark_out = workdir / "out" / "rescore_spark"
            planned_tasks = -(-len(files) // args.images_per_task)
            max_bytes = split_bytes(folder, planned_tasks)
            runs["rescore_spark"] = lambda: rescore_spark(
                spark,
                version,
                folder,
                spark_out,
                device=job_device,
                batch_size=args.batch_size,
                workers=cores // tasks,
                pool=args.decode_pool,
                simulate_ms=simulate,
                device_lock=workdir / "simulated-device.lock",
                tasks=planned_tasks,
                max_bytes=max_bytes,
                files_read_by_udf=args.read_by_udf,
            )
            spark_info = {
                "mode": "standalone" if args.cluster else "local",
                "master": master,
                "executor_cores": cores,
                "executor_gpus": gpus,
                "tasks_at_a_time": tasks,
                "images_per_task": args.images_per_task,
                "files_read_by_udf": args.read_by_udf,
                # as Spark plans the read (what the job's tasks get), not as asked
                "tasks_per_run": read_files(spark, folder, planned_tasks, max_bytes=max_bytes).rdd.getNumPartitions(),
                "job_device": job_device,
                "task_devices": task_devices(spark),
            }
        results = _timed(runs, files, args.rounds)
    run = {
        "device": device,
        "workers": workers,
        "images": len(files),
        "torch": torch.__version__,
        "simulated_ms_per_image": simulate,
    }
    return _report(args, results, run, spark_info)


def _timed(runs: dict[str, Callable[[], Any]], files: list[Path], rounds: int) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for name, run in runs.items():
        log.info("warm-up %s", name)
        outputs[name] = run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_no in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
            log.info("round %d %-18s %6.1f images/s", round_no, name, len(files) / seconds[name][-1])
    if "rescore_spark" in outputs:
        outputs["rescore_spark"] = read_spark_output(outputs["rescore_spark"], files)
    return {"seconds": seconds, "outputs": outputs}


def _report(args: argparse.Namespace, timed: dict[str, Any], run: dict[str, Any], spark_info: dict[str, Any]) -> int:
    seconds, outputs = timed["seconds"], timed["outputs"]
    device, images = run["device"], run["images"]
    reference = statistics.median(images / s for s in seconds["pytorch_loop"])
    methods = [summarise(name, seconds[name], images, reference) for name in seconds]
    loop = outputs["pytorch_loop"]
    for method in methods:
        method.update(agreement(loop, outputs[method["method"]]))
    diffs = [m["max_probability_diff"] for m in methods if m["method"] != "pytorch_loop"]
    job = "rescore_spark" if "rescore_spark" in seconds else "rescore_partition"
    value = next(m["ratio_to_pytorch_loop"] for m in methods if m["method"] == job)
    results = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name(device, run["simulated_ms_per_image"]),
        "simulated_ms_per_image": run["simulated_ms_per_image"],
        "cpus": os.cpu_count(),
        "workers": run["workers"],
        "decode_pool": args.decode_pool,
        "images": images,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "versions": {"python": platform.python_version(), "torch": run["torch"]},
        "spark": spark_info or None,
        "methods": methods,
        "max_probability_diff": max(diffs),
        # float16 autocast in every method; batches composed differently (Spark's partitions) round
        # differently, so the argmax decides, with a loose bound on the probabilities
        "agree": all(m["argmax_agreement"] >= 0.99 for m in methods) and max(diffs) <= 2e-2,
        "target": {"method": job, "threshold": TARGET_RATIO, "value": value, "met": value >= TARGET_RATIO},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "README.md").write_text(render(results))
    log.info("wrote %s", args.out / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
