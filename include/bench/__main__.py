"""Run the benchmark: ``python -m include.bench [--quick]`` (``make bench [QUICK=1]``).

Generates the images, prepares the models, times every method interleaved on the same files,
cores and batch size, checks every method's predictions against the ceiling's, measures
Rescore's scaling and worker memory, and writes docs/benchmarks/{results.json,README.md,plot}.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from include.bench import methods as M
from include.bench.data import describe, generate_images, link_count, link_set
from include.bench.measure import CPU_KINDS, Stopwatch, WorkerMemorySampler
from include.bench.models import BenchModel, keras_status, prepare_models
from include.bench.report import KEPT, RETURNED, check_agreement, summarise_runs, write_report

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("rescore.bench")

ROOT = Path(__file__).resolve().parents[2]
#: At most this many Spark partitions per core for every Spark method. The two tasks a 2-core run
#: ends on seldom end together, and one core idles for the difference: smaller tasks make it
#: shorter (measured when partitions were still packed by bytes, 173 to 459 images at 2 per core:
#: ResNet-18, 1200 images, 58.7 images/s at 2 per core, 63.5 at 8). Small partitions pay a task's
#: fixed cost for little work instead (the small CNN got slower at 8 per core), so each keeps
#: :data:`TASK_SECONDS`.
PARTITIONS_PER_CORE = 8
#: The least single-core work (decode + inference) a partition should carry, in seconds.
TASK_SECONDS = 1.0


def warmup_count(plan_least: int, images: int, cpu_s_per_image: float, seconds: float) -> int:
    """Images in a model's warm-up run: ``plan_least`` at least, enough for ``seconds`` of
    single-core work (:attr:`Plan.warmup_seconds`), never more than a timed run's ``images``."""
    return min(images, max(plan_least, math.ceil(seconds / cpu_s_per_image)))


def spark_partitions(images: int, cores: int, batch_size: int, cpu_s_per_image: float) -> int:
    """Partitions for a run of ``images``: as many as fit up to :data:`PARTITIONS_PER_CORE` per
    core while each keeps two model batches and :data:`TASK_SECONDS` of work, rounded up to a
    multiple of ``cores``; never below ``cores``.

    A count that is not a multiple of the cores leaves the last wave of tasks short of a core:
    3 partitions of 6,000 small-CNN images on 2 cores ran the third alone (Rescore 1,611-1,902
    images/s, against 2,107-2,182 with 4 partitions and 2,086-2,131 with 6, interleaved).
    """
    least = max(2 * batch_size, math.ceil(TASK_SECONDS / cpu_s_per_image))
    fitting = max(cores, min(PARTITIONS_PER_CORE * cores, images // least))
    return -(-fitting // cores) * cores


def sized_count(most: int, cpu_s_per_image: float, run_seconds: float, cores: int, multiple: int) -> int:
    """Images in a model's timed runs: as many as ``cores`` score in ``run_seconds`` at the
    physical limit (``cpu_s_per_image`` of one core each), rounded to a multiple of ``multiple``
    (a model batch per core), at least one multiple and at most ``most``.

    Fixed counts made the run's length and what its figures weigh follow the host's speed: on a
    2-core host 1.8 times slower than the one they were chosen on, ResNet-18's Spark runs took 23 s
    instead of 12 and the whole run 55 minutes instead of 38; on a host twice as fast, the small
    CNN's 6,000 images took 2.6 s at the limit, and Spark's second per job weighed a third."""
    fitting = run_seconds * cores / cpu_s_per_image
    return min(most, max(multiple, round(fitting / multiple) * multiple))


def sized_sustained(planned: tuple[int, int], cpu_s_per_image: float, seconds: float, cores: int) -> tuple[int, int]:
    """The sustained runs' two counts: the base set (``planned[0]``) and as many whole copies of it
    more as ``cores`` score in ``seconds`` at the physical limit, at least one and at most up to
    ``planned[1]`` images. The marginal rate rests on the difference: with 900 more images (5-9 s)
    the Python workers' marginal CPU per image moved by up to 20% between runs."""
    low, most = planned
    fitting = seconds * cores / cpu_s_per_image
    copies = min(max(1, math.ceil(fitting / low)), max(1, most // low - 1))
    return low, low * (1 + copies)


def next_extra_round(
    rounds_done: dict[str, int], round_seconds: dict[str, float], most_rounds: int, seconds_left: float
) -> str | None:
    """The model to time one more round of, or None: among those with fewer than ``most_rounds``,
    the one with the fewest rounds (the first such in order) whose estimated round still fits the
    ``seconds_left``; a model whose round does not fit is passed over for a cheaper one.
    ``round_seconds`` is each model's estimate (its slowest round so far)."""
    candidates = [key for key, done in rounds_done.items() if done < most_rounds]
    for key in sorted(candidates, key=lambda k: rounds_done[k]):  # stable: order kept among equals
        if round_seconds[key] <= seconds_left:
            return key
    return None


@dataclass(frozen=True)
class Plan:
    """How big a run is; ``quick`` fits in five minutes on 2 cores, ``full`` in 45."""

    mode: str
    #: per model key, the images in its timed runs; the most it gets where ``run_seconds`` is set
    images: dict[str, int]
    #: timed rounds of every method: always ``least_rounds``, then more, up to ``most_rounds``,
    #: while the run still fits its ``budget_s`` (see :func:`next_extra_round`)
    least_rounds: int
    most_rounds: int
    budget_s: float
    warmup_images: int  # at least; see warmup_count
    scaling_base: int
    scaling_multipliers: tuple[int, ...]
    memory_partitions: tuple[int, ...]
    #: per model, two image counts for Rescore's sustained rate: (n2 - n1) / (t2 - t1), free of
    #: the fixed cost of a job (models not listed are not measured sustained); n2 is the most
    #: where ``sustained_seconds`` is set.
    sustained: dict[str, tuple[int, int]]
    #: the least single-core work every method's warm-up run carries, in seconds. The JVM
    #: compiles its hot paths (reading files, Arrow, Parquet, each plan's generated code) only
    #: after many rows: after a warm-up on 128 images, the first timed small-CNN run of Rescore
    #: spent 0.81 JVM CPU ms per image against 0.33-0.38 in later rounds (MobileNetV2: 4.5
    #: against 1.5). Quick mode's figures are indicative anyway: it keeps its short warm-up.
    warmup_seconds: float = 0.0
    #: all Spark methods share one pool of Python workers (``--shared-python-workers``). Quick
    #: mode does: with a pool per method, Spark stops a pool's workers after a minute idle, so
    #: each of its timed runs had to be preceded by a wake-up run that builds the model again
    #: (:meth:`Bench.wake_workers`): for the Keras model 8-9 s each, 10 minutes for a quick run.
    shared_python_workers: bool = False
    #: the seconds of work at the physical limit each timed run is sized to (:func:`sized_count`,
    #: from a probe of the limit on at least ``probe_images`` and ``probe_seconds`` of work):
    #: ``images`` are then the most a model gets. None keeps ``images`` as they are (quick mode).
    run_seconds: float | None = None
    #: the same for the difference between the sustained runs (:func:`sized_sustained`); the
    #: second count in ``sustained`` is then the most
    sustained_seconds: float | None = None
    probe_images: int = 128
    probe_seconds: float = 1.0
    #: images generated; a timed run of more reads them again under other names (link_count).
    #: None: as many as the largest count needs.
    unique_images: int | None = None
    #: the memory runs with freed memory handed back (``RESCORE_KEEP_FREED_MEMORY=0``) stop below
    #: the largest partition: they show what Rescore's allocator setting costs in memory (nothing
    #: measurable: 363-425 MiB against 371-432 at every size), and the largest size alone took
    #: 100 s of a core on a slow host. Rescore's own setting runs every size.
    returned_sizes_below_largest: bool = False
    #: passes over the two sustained runs (each run's best time counts): two in the full run; quick
    #: mode's one keeps ``make bench QUICK=1`` within its five minutes (a pass: 5-12 s per model)
    sustained_passes: int = 2


PLANS = {
    "quick": Plan(
        "quick",
        {"small_cnn_64": 256, "resnet18_160": 64, "mobilenet_v2_160": 32},
        2,
        2,
        300,
        32,
        64,
        (1, 4, 16),
        (16, 160),
        {"small_cnn_64": (256, 1024), "resnet18_160": (64, 192)},
        shared_python_workers=True,
        returned_sizes_below_largest=True,
        sustained_passes=1,
    ),
    "full": Plan(
        "full",
        # the most images per timed run; each model gets what makes run_seconds of work at the limit
        # (below). Spark spends about a second per job whatever its size (planning, task start, the
        # writers): runs that long keep it to a tenth or so.
        {"small_cnn_64": 24000, "resnet18_160": 1800, "mobilenet_v2_160": 1800},
        # 2 to 3 rounds within 45 minutes: the whole run took 21 to 49 minutes on 2-core hosts of
        # the same kind with 3 or 4 rounds (a round 4.5 to 8.5 minutes: small CNN 1.9, ResNet-18
        # 2.9, MobileNetV2 3.7 on the slowest), so a fixed count either wastes a fast host or runs
        # over on a slow one. The same run repeated varies by 5-10% on a shared 2-core machine;
        # the min is reported beside the median.
        2,
        3,
        45 * 60,
        128,
        200,
        (1, 10, 100),
        # the last tenfold step shows where a worker's memory levels off (a minute of one core)
        (50, 500, 5000, 50000),
        # the base sets and the most images of the larger run (sustained_seconds below)
        {"small_cnn_64": (1500, 48000), "resnet18_160": (300, 2400), "mobilenet_v2_160": (300, 2400)},
        warmup_seconds=2.0,
        # 8 s at the limit: on a host at 1.06 / 26.4 / 16.9 CPU ms per image (small CNN / ResNet-18 /
        # MobileNetV2) 15,104 / 576 / 960 images, on one at 1.9 / 47.6 / 23.6 8,448 / 320 / 704
        run_seconds=8.0,
        # the marginal rate's 20 s: ResNet-18's 2,100 more images on the first host above
        sustained_seconds=20.0,
        unique_images=6000,
        returned_sizes_below_largest=True,
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m include.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (< 5 min) to check the harness")
    parser.add_argument("--cores", type=int, default=2, help="cores every method gets (default 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model batch for every method")
    parser.add_argument("--seed", type=int, default=20261128, help="seed of the generated images")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="images, models, registry and outputs (default: $RESCORE_HOME/bench, kept between runs)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="where results go")
    parser.add_argument("--note", default="", help="a line recorded with the results (e.g. 'machine shared')")
    parser.add_argument("--models", default="", help="comma-separated model keys to measure (default: all)")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="only re-render README.md and the plot from this results.json (no measurement)",
    )
    parser.add_argument("--skip-scaling", action="store_true", help="skip the scaling and memory runs")
    parser.add_argument(
        "--shared-python-workers",
        action="store_true",
        help="let all Spark methods share one pool of Python workers (default: each method its own, "
        "as in separate applications; --quick always shares)",
    )
    args = parser.parse_args(argv)
    if args.cores < 1 or args.batch_size < 1:
        parser.error("--cores and --batch-size must be at least 1")
    return args


def start_spark(cores: int, batch_size: int, conf: dict[str, str] | None = None) -> SparkSession:
    """The benchmark's local session (``conf``: settings added to it)."""
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("rescore-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "3g")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .config("spark.python.worker.reuse", "true")
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def machine_info(cores: int) -> dict[str, Any]:
    import importlib.metadata as md

    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {
        name: md.version(dist)
        for name, dist in (
            ("pyspark", "pyspark"),
            ("torch", "torch"),
            ("mlflow", "mlflow"),
            ("pillow", "pillow"),
            ("numpy", "numpy"),
            ("pyarrow", "pyarrow"),
            ("pandas", "pandas"),
            ("keras", "keras"),
        )
    }
    return {
        "cpu_model": cpu_model,
        "logical_cpus": psutil.cpu_count(),
        "cores_used": cores,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": shutil.which("java") or "not on PATH",
        **versions,
        "loadavg_start": round(os.getloadavg()[0], 2),
    }


#: Seconds kept in the budget beyond the estimated scaling and memory runs (the report, and
#: ``make bench``'s ingest benchmark after this harness: about 45 s on 2 cores).
RESERVE_FIXED_S = 90.0


@dataclass
class ModelRun:
    """One model's timed rounds in progress (:meth:`Bench.start_model`)."""

    model: BenchModel
    count: int  # images in every timed run
    folder: Path  # the timed runs' images
    configs: list[str]  # the ceiling's configurations
    methods: list[str]  # everything timed: the ceiling's configurations, the Spark methods, the floor
    predictor: Any
    timed: dict[str, list[dict[str, Any]]] = field(init=False)  # each method's timed runs
    round_seconds: list[float] = field(default_factory=list)  # each whole round, wake-ups included

    def __post_init__(self) -> None:
        self.timed = {method: [] for method in self.methods}

    @property
    def rounds(self) -> int:
        return len(self.round_seconds)


class Bench:
    """One benchmark run: the Spark session, the models, and everything measured so far."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.workdir: Path = args.workdir or Path(os.environ.get("RESCORE_HOME", ROOT / "var")) / "bench"
        self.runs: list[dict[str, Any]] = []
        self.summary: list[dict[str, Any]] = []
        self.ceiling: dict[str, Any] = {}
        self.physical: dict[str, dict[str, Any]] = {}
        #: CPU seconds per image the Spark runs' partitions are planned on: the physical limit as
        #: :meth:`start_model` measured it, fixed for the model's runs (later rounds of the limit
        #: must not change how a method's later rounds are partitioned)
        self.planning_cpu_s: dict[str, float] = {}
        self.sustained: list[dict[str, Any]] = []
        #: per model: the sustained runs' two image counts (:func:`sized_sustained`)
        self.sustained_counts: dict[str, tuple[int, int]] = {}
        #: per model: how its timed runs' image count was chosen (:func:`sized_count`)
        self.sizing: dict[str, dict[str, Any]] = {}
        #: (model or "", phase) -> seconds spent, for the README's account of the run's length
        self.phases: dict[tuple[str, str], float] = {}
        self.warmups: dict[str, int] = {}
        self.shared_python_workers: bool = args.shared_python_workers or plan.shared_python_workers
        started = time.perf_counter()
        self.spark = start_spark(args.cores, args.batch_size)
        self.spark_start_s = time.perf_counter() - started
        self.ctx = M.BenchContext(self.spark, args.cores, args.batch_size)
        self.phases["", "Spark session"] = self.spark_start_s

    @contextmanager
    def phase(self, name: str, model: str = "") -> Iterator[None]:
        """Add the time spent in the block to ``name``'s (of ``model``, if given)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[model, name] = self.phases.get((model, name), 0.0) + time.perf_counter() - started

    def phases_list(self) -> list[dict[str, Any]]:
        return [{"model": model, "phase": name, "seconds": round(s, 1)} for (model, name), s in self.phases.items()]

    # -- one method, one run ---------------------------------------------------------------------

    def run_method(
        self, model: BenchModel, method: str, folder: Path, out: Path, predictor: Any, *, partitions: int | None = None
    ) -> Stopwatch:
        shutil.rmtree(out, ignore_errors=True)
        files = sorted(folder.glob("*.jpg"))
        payload = self.ctx.payloads[model.key].value
        parts = max_bytes = 0
        if method in M.SPARK_RUNNERS:  # planned untimed: a user sets the split size once
            cpu_s = self.planning_cpu_s[model.key]
            parts = partitions or spark_partitions(len(files), self.args.cores, self.args.batch_size, cpu_s)
            max_bytes = M.split_bytes(folder, parts)
        with Stopwatch() as watch:
            if method.startswith("dataloader_w"):
                workers = int(method.removeprefix("dataloader_w"))
                M.ceiling_dataloader(payload, predictor, files, out, workers=workers, batch_size=self.args.batch_size)
            elif method == "process_per_core":
                pool = self.ctx.pools[model.key]
                M.ceiling_process_per_core(pool, files, out, cores=self.args.cores, batch_size=self.args.batch_size)
            else:
                if not self.shared_python_workers:
                    M.own_python_workers(self.spark, method)
                images = M.read_files(self.spark, folder, partitions=parts, max_bytes=max_bytes)
                M.SPARK_RUNNERS[method](self.ctx, model.key, images, out)
        return watch

    def wake_set(self, model: BenchModel) -> Path:
        """The folder of the few images :meth:`wake_workers` runs a method on."""
        return self.workdir / "sets" / f"{model.key}-wake"

    def wake_workers(self, model: BenchModel, method: str, wake: Path, predictor: Any) -> None:
        """Untimed: run a Spark method on a few images, one task per core, just before its timed run.

        Each method has Python workers of its own (:func:`M.own_python_workers`), and Spark stops
        a pool's idle workers after a minute without tasks (hard-coded in PythonWorkerFactory):
        with a round of the other methods in between, the timed run would otherwise start new
        workers and build its model again (seconds for TensorFlow), which a long job does once.
        """
        if method in M.SPARK_METHODS and not self.shared_python_workers:
            out = self.workdir / "out" / model.key / "wake" / method
            with self.phase("of which waking workers", model.key):
                self.run_method(model, method, wake, out, predictor, partitions=self.args.cores)
            shutil.rmtree(out, ignore_errors=True)

    # -- one model: warm-up, interleaved rounds, agreement ----------------------------------------

    def start_model(self, model: BenchModel, files: list[Path]) -> ModelRun:
        """Broadcast the model, start the ceiling's process pool, size the timed runs and measure
        the physical limit on their files, and warm every method up; the timed rounds follow
        (:meth:`time_round`)."""
        from spark_jobs.models import build_predictor

        key, cores, batch_size = model.key, self.args.cores, self.args.batch_size
        payload = {"manifest": model.version.manifest.to_dict(), "weights": model.version.weights}
        self.ctx.payloads[key] = self.spark.sparkContext.broadcast(payload)
        self.ctx.mlflow_uris[key] = model.mlflow_uri
        self.ctx.pools[key] = M.start_process_pool(payload, cores)
        predictor = build_predictor(model.version, num_threads=cores)
        with self.phase("physical limit", key):
            count = self.size_runs(model, files)
            # on the timed set's distinct files: a copy costs what its original does
            timed_files = files[:count]
            self.physical[key] = M.physical_limit(self.ctx.pools[key], timed_files, cores=cores, batch_size=batch_size)
        log.info(
            "  physical limit: %.2f CPU ms per image -> %.1f images/s on %d cores",
            self.physical[key]["cpu_ms_per_image"],
            self.physical[key]["images_per_s"],
            cores,
        )
        sets = self.workdir / "sets"
        folder = link_count(files, sets / key, count)
        configs = list(M.iter_ceiling_configs(cores))
        run = ModelRun(model, count, folder, configs, [*configs, *M.SPARK_METHODS, M.SPARK_FLOOR], predictor)
        cpu_s = self.planning_cpu_s[key] = self.physical[key]["cpu_ms_per_image"] / 1000
        self.warmups[key] = warmup_count(self.plan.warmup_images, count, cpu_s, self.plan.warmup_seconds)
        warm = link_count(files, sets / f"{key}-warmup", self.warmups[key])
        log.info("%s: warm-up on %d images", key, self.warmups[key])
        with self.phase("warm-up", key):
            for method in run.methods:
                watch = self.run_method(model, method, warm, self.outputs(model) / "warmup" / method, predictor)
                log.info("  warm-up %-24s %6.1f s", method, watch.seconds)
        link_set(files[: 2 * cores], self.wake_set(model))
        return run

    def size_runs(self, model: BenchModel, files: list[Path]) -> int:
        """The images in ``model``'s timed runs (:func:`sized_count`, from a probe of the physical
        limit; the plan's count where it sizes nothing), and its sustained runs' counts
        (:func:`sized_sustained`)."""
        key, plan, cores = model.key, self.plan, self.args.cores
        count, sustained = plan.images[key], plan.sustained.get(key)
        sizing: dict[str, Any] = {"most": count}
        if plan.run_seconds is not None:
            probe_ms, probed = self.probe_limit(model, files)
            count = sized_count(count, probe_ms / 1000, plan.run_seconds, cores, cores * self.args.batch_size)
            sizing.update(probe_images=probed, probe_cpu_ms=round(probe_ms, 3), run_seconds=plan.run_seconds)
            if sustained is not None and plan.sustained_seconds is not None:
                sustained = sized_sustained(sustained, probe_ms / 1000, plan.sustained_seconds, cores)
                sizing["sustained_seconds"] = plan.sustained_seconds
            log.info("%s: %d images per timed run (probe: %.2f CPU ms per image)", key, count, probe_ms)
        self.sizing[key] = {**sizing, "images": count, "unique_images": min(count, len(files))}
        if sustained is not None:
            self.sustained_counts[key] = sustained
        return count

    def probe_limit(self, model: BenchModel, files: list[Path]) -> tuple[float, int]:
        """One round of the physical limit (CPU ms per image) on the plan's probe images, again on
        more while they carried less than its probe seconds of work; and the images it ended on.

        An untimed round on two batches goes first: the Keras model's first batches in a new
        process cost so much (tracing its graph) that a probe of 128 images without it came out
        at 16.7 CPU ms per image against the limit's 8.6."""
        pool, count = self.ctx.pools[model.key], min(self.plan.probe_images, len(files))
        warm = files[: 2 * self.args.batch_size]
        M.physical_limit(pool, warm, cores=self.args.cores, batch_size=self.args.batch_size, repeats=1)
        while True:
            limit = M.physical_limit(
                pool, files[:count], cores=self.args.cores, batch_size=self.args.batch_size, repeats=1
            )
            needed = math.ceil(1000 * self.plan.probe_seconds / limit["cpu_ms_per_image"])
            if count >= min(needed, len(files)):
                return limit["cpu_ms_per_image"], count
            count = min(needed, len(files))

    def outputs(self, model: BenchModel) -> Path:
        return self.workdir / "out" / model.key

    def time_round(self, run: ModelRun) -> None:
        """One timed run of every method, in an order shifted by three each round."""
        model, round_no = run.model, run.rounds
        self.phases.setdefault((model.key, "timed rounds"), 0.0)  # before the wake-ups it contains
        started = time.perf_counter()
        shift = round_no * 3 % len(run.methods)
        for method in run.methods[shift:] + run.methods[:shift]:
            self.wake_workers(model, method, self.wake_set(model), run.predictor)
            self.ctx.stages.pop(model.key, None)
            watch = self.run_method(model, method, run.folder, self.outputs(model) / method, run.predictor)
            stages = self.ctx.stages.pop(model.key, None)
            record = {
                "model": model.key,
                "method": method,
                "round": round_no,
                "images": run.count,
                "seconds": watch.seconds,
                "cpu_seconds": watch.cpu_seconds,
                "cpu_seconds_by_process": watch.cpu_by_kind,
                "jvm_cpu_seconds_by_thread": watch.jvm_by_thread,
            }
            if stages is not None:  # Rescore's Python workers, by stage (spark_jobs.stages)
                record["python_stages"] = stages
            run.timed[method].append(record)
            self.runs.append(record)
            log.info(
                "  round %d %-24s %6.1f s %7.1f images/s", round_no, method, watch.seconds, run.count / watch.seconds
            )
        run.round_seconds.append(time.perf_counter() - started)
        self.phases[model.key, "timed rounds"] += run.round_seconds[-1]

    def finish_model(self, run: ModelRun) -> None:
        """Stop the model's process pool; check every method's predictions against the ceiling's
        and add its rows to the summary."""
        model, count, configs = run.model, run.count, run.configs
        self.ctx.pools.pop(model.key).shutdown()
        outputs = self.outputs(model)
        reference = M.read_predictions(outputs / "dataloader_w0")
        rows: dict[str, dict[str, Any]] = {}
        for method in run.methods:
            row = {"model": model.key, "method": method, **summarise_runs(run.timed[method], count)}
            if method == M.SPARK_FLOOR:
                row.update(agreement=None, status="no model (Spark's floor)")
            else:
                agreement = check_agreement(reference, M.read_predictions(outputs / method))
                row["agreement"] = {**asdict(agreement), "ok": agreement.ok}
                row["status"] = "ok" if agreement.ok else "wrong"
            rows[method] = row
        best = max(configs, key=lambda c: rows[c]["images_per_s_median"] if rows[c]["status"] == "ok" else -1)
        self.ceiling[model.key] = {
            "best_config": best,
            "configs": {c: rows[c]["images_per_s_median"] for c in configs},
            "config_rows": [rows[c] for c in configs],
        }
        ceiling_row = {**rows[best], "method": M.CEILING, "ceiling_config": best, "agreement": None}
        ceiling_ips = ceiling_row["images_per_s_median"]
        for row in [ceiling_row, *(rows[m] for m in (*M.SPARK_METHODS, M.SPARK_FLOOR))]:
            row["ceiling_ratio"] = row["images_per_s_median"] / ceiling_ips
            self.summary.append(row)

    def reserve_seconds(self, first: ModelRun) -> float:
        """What the scaling and memory runs will take, estimated from Rescore's fastest timed run
        of the first model (the one they use) and from how long a Spark session took to start."""
        if self.args.skip_scaling:
            return 0.0
        best = min(r["seconds"] for r in first.timed[M.RESCORE])
        per_image = best / first.count  # on all the cores
        scaling = self.plan.scaling_base * (1 + sum(self.plan.scaling_multipliers)) * per_image
        # every memory run is one partition (one core) and starts a fresh Spark session
        sizes = self.plan.memory_partitions
        returned = sizes[:-1] if self.plan.returned_sizes_below_largest else sizes
        memory = (sum(sizes) + sum(returned)) * per_image * self.args.cores
        memory += (len(sizes) + len(returned)) * self.spark_start_s
        return 1.2 * (scaling + memory) + RESERVE_FIXED_S

    def extra_rounds(self, runs: list[ModelRun], started: float) -> None:
        """More timed rounds, up to the plan's most, while the run still fits its budget with the
        scaling and memory runs after them (:func:`next_extra_round`)."""
        reserve = self.reserve_seconds(runs[0])
        by_key = {run.model.key: run for run in runs}
        while True:
            left = self.plan.budget_s - (time.perf_counter() - started) - reserve
            key = next_extra_round(
                {k: r.rounds for k, r in by_key.items()},
                {k: max(r.round_seconds) for k, r in by_key.items()},
                self.plan.most_rounds,
                left,
            )
            if key is None:
                break
            log.info(
                "%s: round %d (%.0f s of the budget left before it, beyond the scaling and memory runs)",
                key,
                by_key[key].rounds,
                left,
            )
            self.time_round(by_key[key])
        for run in runs:
            if run.rounds < self.plan.most_rounds:
                log.info("%s: %d timed rounds (the next would not fit the budget)", run.model.key, run.rounds)

    def measure_sustained(self, model: BenchModel, base: list[Path], limit_files: list[Path]) -> dict[str, Any]:
        """Rescore at two image counts (copies of ``base``), interleaved, in the plan's passes: the marginal
        rate between the best times is what a long job sustains once Spark's fixed cost is paid.

        Before each pass a round of the physical limit is measured again on ``limit_files`` (the
        files :meth:`start_model` measured it on) and joins that model's rounds: the sustained
        rate and the limit it is compared with are then taken on the host as it is at the same
        minutes (a 2-core host's speed moved by 10-20% within a run, and a limit measured only
        before the timed rounds once came out 9% above the Python workers' own CPU per image)."""
        counts = self.sustained_counts[model.key]
        folders = {}
        for n in counts:
            copies = -(-n // len(base))
            folders[n] = (link_set(base, self.workdir / "sets" / f"sustained-{model.key}-{n}", copies=copies), copies)
        # Spark's floor (Rescore's job listing the files, without reading, decoding or a model) at the
        # same counts: its marginal CPU per image is what Spark itself spends on each of Rescore's images.
        wake = self.wake_set(model)  # linked by start_model
        best: dict[tuple[str, int], Stopwatch] = {}  # the fastest run of each method and size
        for _ in range(self.plan.sustained_passes):
            pool, cores = self.ctx.pools[model.key], self.args.cores
            again = M.physical_limit(pool, limit_files, cores=cores, batch_size=self.args.batch_size, repeats=1)
            self.physical[model.key] = M.limit_again(self.physical[model.key], again, cores=cores)
            log.info("  physical limit again: %.2f CPU ms per image", again["cpu_ms_per_image"])
            for n, (folder, copies) in folders.items():
                for method in (M.RESCORE, M.SPARK_FLOOR):
                    out = self.workdir / "out" / "sustained" / model.key
                    self.wake_workers(model, method, wake, None)
                    watch = self.run_method(model, method, folder, out, None)
                    if (method, n) not in best or watch.seconds < best[method, n].seconds:
                        best[method, n] = watch
                    log.info("  sustained %s: %d images in %.1f s", method, len(base) * copies, watch.seconds)
                    shutil.rmtree(out, ignore_errors=True)
        (n1, (_, c1)), (n2, (_, c2)) = folders.items()
        images = (len(base) * c1, len(base) * c2)
        added = images[1] - images[0]

        def marginal(method: str) -> tuple[float, float]:
            low, high = best[method, n1], best[method, n2]
            return added / max(high.seconds - low.seconds, 1e-9), 1000 * (high.cpu_seconds - low.cpu_seconds) / added

        def marginal_by_kind(method: str) -> dict[str, float]:
            low, high = best[method, n1].cpu_by_kind, best[method, n2].cpu_by_kind
            return {kind: 1000 * (high[kind] - low[kind]) / added for kind in CPU_KINDS}

        rate, cpu_ms = marginal(M.RESCORE)
        floor_rate, floor_cpu_ms = marginal(M.SPARK_FLOOR)
        return {
            "model": model.key,
            "images": list(images),
            "passes": self.plan.sustained_passes,  # each size's best of this many runs
            "seconds": [best[M.RESCORE, n1].seconds, best[M.RESCORE, n2].seconds],
            "cpu_seconds": [best[M.RESCORE, n1].cpu_seconds, best[M.RESCORE, n2].cpu_seconds],
            "images_per_s": rate,
            "cpu_ms_per_image": cpu_ms,
            # where Rescore's marginal CPU goes: is the Python side at the limit's cost?
            "cpu_ms_per_image_by_process": marginal_by_kind(M.RESCORE),
            "floor_seconds": [best[M.SPARK_FLOOR, n1].seconds, best[M.SPARK_FLOOR, n2].seconds],
            "floor_images_per_s": floor_rate,
            "floor_cpu_ms_per_image": floor_cpu_ms,
        }

    # -- Rescore at growing counts, and worker memory at growing partitions -----------------------

    def measure_scaling(self, model: BenchModel, files: list[Path]) -> list[dict[str, Any]]:
        base = files[: self.plan.scaling_base]
        results = []
        # Untimed: the workers may have been replaced since the model's own warm-up.
        warm = link_set(base, self.workdir / "sets" / "scaling-warmup")
        self.run_method(model, M.RESCORE, warm, self.workdir / "out" / "scaling" / "warmup", None)
        for multiplier in self.plan.scaling_multipliers:
            folder = link_set(base, self.workdir / "sets" / f"scaling-{multiplier}x", copies=multiplier)
            out = self.workdir / "out" / "scaling" / f"{multiplier}x"
            watch = self.run_method(model, M.RESCORE, folder, out, None)
            count = len(base) * multiplier
            results.append(
                {
                    "model": model.key,
                    "multiplier": multiplier,
                    "images": count,
                    "seconds": watch.seconds,
                    "images_per_s": count / watch.seconds,
                    "cpu_ms_per_image": 1000 * watch.cpu_seconds / count,
                }
            )
            log.info("scaling %4dx: %d images in %.1f s", multiplier, count, watch.seconds)
            shutil.rmtree(out, ignore_errors=True)
        return results

    def measure_memory(self, model: BenchModel, files: list[Path], interval: float) -> list[dict[str, Any]]:
        """Peak Python-worker RSS with one partition of each of the plan's sizes, Rescore's
        allocator setting first, then with freed memory handed back (``RESCORE_KEEP_FREED_MEMORY=0``)."""
        from spark_jobs.allocator import ENV_SWITCH

        base = files[: self.plan.memory_partitions[0]]
        folders = {}  # images in the partition -> its folder, linked once: both settings read the same files
        for size in self.plan.memory_partitions:
            copies = size // len(base)
            folders[len(base) * copies] = link_set(base, self.workdir / "sets" / f"memory-{size}", copies=copies)
        results = []
        largest = max(folders)
        for allocator in (KEPT, RETURNED):
            for count, folder in folders.items():
                if allocator == RETURNED and count == largest and self.plan.returned_sizes_below_largest:
                    continue
                # Fresh Python workers for every size, so one size's peak cannot carry over to the next.
                self.spark.stop()
                self.spark = start_spark(self.args.cores, self.args.batch_size)
                self.ctx.spark = self.spark
                if allocator == RETURNED:  # the workers inherit it (their environment comes from the UDF)
                    self.spark.sparkContext.environment[ENV_SWITCH] = "0"
                payload = {"manifest": model.version.manifest.to_dict(), "weights": model.version.weights}
                self.ctx.payloads[model.key] = self.spark.sparkContext.broadcast(payload)
                out = self.workdir / "out" / "memory" / str(count)
                shutil.rmtree(out, ignore_errors=True)
                with WorkerMemorySampler(interval) as sampler, Stopwatch() as watch:
                    # one task: binaryFile would split the files over the cores (bytes per core)
                    images = M.read_files(self.spark, folder, partitions=1).coalesce(1)
                    M.run_rescore(self.ctx, model.key, images, out)
                results.append(
                    {
                        "model": model.key,
                        "allocator": allocator,
                        "partition_images": count,
                        "peak_worker_mb": sampler.peak_worker_bytes / 2**20,
                        # where that worker's memory was at its peak: the C library's heap, anonymous
                        # mappings (large blocks, other arenas and pools), the rest (libraries, stacks)
                        "peak_worker_split_mb": {
                            kind: size / 2**20 for kind, size in (sampler.peak_worker_split or {}).items()
                        },
                        "peak_total_mb": sampler.peak_total_bytes / 2**20,
                        "python_cpu_ms_per_image": 1000 * watch.cpu_by_kind["python_workers"] / count,
                        "samples": sampler.samples,
                    }
                )
                log.info(
                    "memory (%s): %d images in one partition, peak worker RSS %.0f MiB",
                    allocator,
                    count,
                    sampler.peak_worker_bytes / 2**20,
                )
                shutil.rmtree(out, ignore_errors=True)
        return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.render is not None:
        import json

        write_report(json.loads(args.render.read_text()), args.out)
        log.info("re-rendered %s from %s", args.out, args.render)
        return 0
    plan = PLANS["quick" if args.quick else "full"]
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info(args.cores)
    bench = Bench(args, plan)
    with bench.phase("images"):
        wanted = plan.unique_images or max(*plan.images.values(), plan.scaling_base)
        # a process per core (each image seeded by its index) halves the 4 minutes one took on 2 cores
        files = generate_images(bench.workdir / "images", wanted, args.seed, processes=args.cores)
    with bench.phase("models"):
        models = prepare_models(bench.workdir, [k for k in args.models.split(",") if k])
    runs = []
    for model in models:
        log.info("measuring %s (at most %d images)", model.key, plan.images[model.key])
        run = bench.start_model(model, files)
        for _ in range(plan.least_rounds):
            bench.time_round(run)
        if model.key in plan.sustained:
            with bench.phase("sustained", model.key):
                base = files[: bench.sustained_counts[model.key][0]]
                bench.sustained.append(bench.measure_sustained(model, base, files[: run.count]))
        runs.append(run)
    if runs:
        bench.extra_rounds(runs, started)
    model_rows = []
    for run in runs:
        bench.finish_model(run)
        model_rows.append({"key": run.model.key, "title": run.model.title, "status": "measured", **run.model.info})
    keras_missing = keras_status()
    if keras_missing:
        model_rows.append(
            {"key": "mobilenet_v2_160", "title": "Keras MobileNetV2 (weights=None)", "status": keras_missing}
        )
    rss_interval = 0.05
    scaling: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    if not args.skip_scaling:
        with bench.phase("scaling"):
            scaling = bench.measure_scaling(models[0], files)
        with bench.phase("memory"):
            memory = bench.measure_memory(models[0], files, rss_interval)
    bench.spark.stop()
    machine["loadavg_end"] = round(os.getloadavg()[0], 2)
    results: dict[str, Any] = {
        "schema": 1,
        "mode": plan.mode,
        "note": args.note,
        "started_at": started_at,
        "duration_s": time.perf_counter() - started,
        "machine": machine,
        "settings": {
            "cores": args.cores,
            "batch_size": args.batch_size,
            "rounds": {run.model.key: run.rounds for run in runs},
            "rounds_planned": [plan.least_rounds, plan.most_rounds],
            "budget_s": plan.budget_s,
            "warmup_images": bench.warmups,
            "images_sized": bench.sizing,
            "seed": args.seed,
            "spark_partitions": f"up to {PARTITIONS_PER_CORE} per core, each with 2 model batches and "
            f"{TASK_SECONDS:g} s of single-core work at least, a multiple of the cores, of about equal image "
            "counts (an opening cost of 4 MiB per file, Spark's default)",
            "rss_interval_s": rss_interval,
            "python_workers": "shared" if bench.shared_python_workers else "per method",
        },
        "data": describe(files),
        "models": model_rows,
        "methods": M.DESCRIPTIONS,
        "ceiling_configs": list(M.iter_ceiling_configs(args.cores)),
        "ceiling": bench.ceiling,
        "physical_limit": bench.physical,
        "sustained": bench.sustained,
        "summary": bench.summary,
        "runs": bench.runs,
        "scaling": scaling,
        "memory": memory,
        "phases": bench.phases_list(),
    }
    write_report(results, args.out)
    log.info("results in %s (%.0f s)", args.out, results["duration_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
