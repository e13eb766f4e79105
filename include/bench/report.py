"""Turning measurements into results: agreement with the ceiling, the summary table, targets,
``results.json``, the README and the plot. Pure functions of plain data, so they are unit-tested
without Spark; ``make bench`` regenerates every figure, none is typed by hand."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from include.bench.measure import CPU_KINDS, JVM_GROUPS, MEMORY_KINDS

MIN_ARGMAX_AGREEMENT = 0.99
PROBABILITY_TOLERANCE = 1e-3

#: (name, numerator method, denominator method, threshold): Rescore's targets from the issue.
RATIO_TARGETS = (
    ("Rescore / ceiling", "rescore", "ceiling", 0.90),
    ("Rescore / predict_batch_udf (array column)", "rescore", "predict_batch_udf", 1.4),
    ("Rescore / mlflow spark_udf", "rescore", "mlflow_spark_udf", 1.4),
    ("Rescore / predict_batch_udf fed bytes", "rescore", "predict_batch_udf_bytes", 1.0),
    ("Rescore / blog pattern", "rescore", "blog_pandas_udf", 1.0),
    ("Rescore / row-at-a-time UDF", "rescore", "row_udf", 1.0),
)
MEMORY_GROWTH_LIMIT = 1.10
#: the memory runs' allocator settings (spark_jobs.allocator): Rescore's default keeps freed
#: memory in the worker; ``returned`` runs with RESCORE_KEEP_FREED_MEMORY=0
KEPT, RETURNED = "kept", "returned"
#: Rescore's sustained rate against the physical limit (cores / decode + inference CPU per image).
PHYSICAL_LIMIT_MIN_RATIO = 0.90
SCALING_MIN_RATIO = 0.90


@dataclass(frozen=True)
class Agreement:
    """How a method's predictions compare with the ceiling's, image by image."""

    reference_images: int
    compared: int
    missing: int
    argmax_agreement: float
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return (
            self.missing == 0
            and self.argmax_agreement >= MIN_ARGMAX_AGREEMENT
            and self.max_abs_diff <= PROBABILITY_TOLERANCE
        )


def check_agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> Agreement:
    """Compare ``image_id -> probabilities`` maps; an image missing from ``candidate`` counts as a
    disagreement, as does a probability vector of another length."""
    if not reference:
        raise ValueError("the reference (ceiling) predictions are empty: nothing to compare against")
    same_argmax = 0
    compared = 0
    max_diff = 0.0
    for image_id, ref in reference.items():
        cand = candidate.get(image_id)
        if cand is None:
            continue
        compared += 1
        if cand.shape != ref.shape:
            max_diff = float("inf")
            continue
        same_argmax += int(int(np.argmax(cand)) == int(np.argmax(ref)))
        max_diff = max(max_diff, float(np.max(np.abs(cand.astype(np.float64) - ref.astype(np.float64)))))
    return Agreement(
        reference_images=len(reference),
        compared=compared,
        missing=len(reference) - compared,
        argmax_agreement=same_argmax / len(reference),
        max_abs_diff=max_diff,
    )


def summarise_runs(runs: list[dict[str, Any]], images: int) -> dict[str, Any]:
    """Min/median seconds and images/s, and median CPU ms per image, of one method's timed runs."""
    seconds = [r["seconds"] for r in runs]
    cpu = [r["cpu_seconds"] for r in runs]
    return {
        "images": images,
        "runs": len(runs),
        "seconds_min": min(seconds),
        "seconds_median": statistics.median(seconds),
        "images_per_s_best": images / min(seconds),
        "images_per_s_median": images / statistics.median(seconds),
        "cpu_ms_per_image": 1000 * statistics.median(cpu) / images,
        "cpu_ms_per_image_by_process": _median_by_process(runs, images),
        "jvm_cpu_ms_per_image_by_thread": _median_by_process(runs, images, "jvm_cpu_seconds_by_thread"),
        "python_stages_ms_per_image": _median_stages(runs),
    }


def _median_stages(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Median ms per image of each stage of Rescore's Python workers (``python_stages`` of each
    run, :class:`spark_jobs.stages.StageReport`), where every run recorded them."""
    stages = [run.get("python_stages") for run in runs]
    if not stages or any(s is None for s in stages):
        return None
    per_image = [s["ms_per_image"] for s in stages if s is not None]
    return {name: statistics.median(split[name] for split in per_image) for name in per_image[0]}


def _median_by_process(
    runs: list[dict[str, Any]], images: int, key: str = "cpu_seconds_by_process"
) -> dict[str, float] | None:
    """Median CPU ms per image of each kind of process (Python workers, JVM, driver, other), or
    of each group of the JVM's threads (``key="jvm_cpu_seconds_by_thread"``), where every run
    recorded the split (results of older harnesses did not)."""
    splits: list[dict[str, float]] = []
    for run in runs:
        split = run.get(key)
        if split is None:
            return None
        splits.append(split)
    if not splits:
        return None
    return {kind: 1000 * statistics.median(split[kind] for split in splits) / images for kind in splits[0]}


def ratio_targets(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ratio target per model, from median images/s; ``met`` is None where a side is missing."""
    by_key = {(row["model"], row["method"]): row for row in summary}
    models = sorted({row["model"] for row in summary}, key=[row["model"] for row in summary].index)
    targets = []
    for model in models:
        for name, num, den, threshold in RATIO_TARGETS:
            a, b = by_key.get((model, num)), by_key.get((model, den))
            target: dict[str, Any] = {"model": model, "target": name, "threshold": threshold}
            if a is None or b is None or a.get("status") != "ok":
                target.update(value=None, met=None, gap=None, note="not measured or Rescore wrong")
            else:
                value = a["images_per_s_median"] / b["images_per_s_median"]
                target.update(value=value, met=value >= threshold, gap=value - threshold)
                if b.get("status") != "ok":
                    target["note"] = f"{den} disagrees with the ceiling (reported wrong)"
            targets.append(target)
    return targets


def scaling_target(scaling: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Linear time: images/s at the largest count within 10% of the 10x (or second) count's."""
    if len(scaling) < 2:
        return None
    ref = scaling[1] if len(scaling) > 2 else scaling[0]
    value = scaling[-1]["images_per_s"] / ref["images_per_s"]
    return {
        "model": scaling[-1]["model"],
        "target": f"scaling: images/s at {scaling[-1]['multiplier']}x / at {ref['multiplier']}x",
        "threshold": SCALING_MIN_RATIO,
        "value": value,
        "met": value >= SCALING_MIN_RATIO,
        "gap": value - SCALING_MIN_RATIO,
    }


def memory_targets(memory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak worker memory within 10% at each step where the partition grows (tenfold in the
    plan), for the allocator setting Rescore runs with (rows without ``allocator`` predate the
    setting: they count as Rescore's)."""
    rows = [m for m in memory if m.get("allocator", KEPT) == KEPT]
    targets = []
    for small, large in pairwise(rows):
        value = large["peak_worker_mb"] / small["peak_worker_mb"]
        targets.append(
            {
                "model": large["model"],
                "target": f"peak worker RSS at {large['partition_images']} / at {small['partition_images']} "
                "images per partition",
                "threshold": MEMORY_GROWTH_LIMIT,
                "value": value,
                "met": value <= MEMORY_GROWTH_LIMIT,
                "gap": MEMORY_GROWTH_LIMIT - value,
            }
        )
    return targets


def memory_section(memory: list[dict[str, Any]], interval_s: float) -> list[str]:
    """The README's memory table: peak worker RSS by partition size and allocator setting."""
    lines = [
        "",
        "## Python worker memory (Rescore, one partition, fresh workers)",
        "",
        f"Peak resident memory of Spark's Python workers, sampled every {interval_s * 1000:.0f} ms from the "
        "process tree; each size runs as one partition (one task, one worker) in a new Spark session. "
        f"`{KEPT}` is how Rescore runs: its workers keep freed memory for the next batch instead of handing it "
        "back to the kernel (`spark_jobs/allocator.py`: no page faults to fault the model's activations in "
        f"again on every batch); `{RETURNED}` is the same job with `RESCORE_KEEP_FREED_MEMORY=0`. The step "
        "column is each size's peak over the previous size's (target: at most "
        f"{MEMORY_GROWTH_LIMIT:.2f} per tenfold step). Python-worker CPU per image includes the worker's "
        "start and the model's build, which dominate the smallest sizes. `heap`, `anonymous` and `other` "
        "split the worker's peak by kind of mapping (read from `/proc/<pid>/smaps` as the peak rose): the C "
        "library's main heap (what `malloc` serves from the main thread's arena), anonymous mappings (large "
        "blocks, other arenas, Arrow's and PyTorch's pools) and the rest (libraries' code and data, stacks). "
        "A step that grows the heap alone, with the anonymous mappings flat, is the allocator's high-water "
        "mark (how its first batches happened to fragment it), not data the worker holds."
        + _returned_sizes_text(memory),
        "",
        "| model | allocator | images in the partition | peak RSS of one worker (MiB) | step | "
        "heap | anonymous | other | peak RSS of all workers (MiB) | Python-worker CPU ms / image | samples |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    previous: dict[str, float] = {}
    for m in memory:
        allocator = m.get("allocator", KEPT)
        before = previous.get(allocator)
        step = f"{m['peak_worker_mb'] / before:.2f}" if before else "–"
        previous[allocator] = m["peak_worker_mb"]
        cpu = m.get("python_cpu_ms_per_image")
        split = m.get("peak_worker_split_mb") or {}
        kinds = " | ".join(_fmt(split.get(kind), 0) for kind in MEMORY_KINDS)
        lines.append(
            f"| {m['model']} | {allocator} | {m['partition_images']} | {m['peak_worker_mb']:.0f} | {step} "
            f"| {kinds} | {m['peak_total_mb']:.0f} | {'–' if cpu is None else f'{cpu:.2f}'} | {m['samples']} |"
        )
    return lines


def _returned_sizes_text(memory: list[dict[str, Any]]) -> str:
    """A sentence where the ``returned`` runs stopped below the largest size (nothing otherwise)."""
    sizes = {a: {m["partition_images"] for m in memory if m.get("allocator", KEPT) == a} for a in (KEPT, RETURNED)}
    if not sizes[RETURNED] or not sizes[KEPT] or max(sizes[RETURNED]) >= max(sizes[KEPT]):
        return ""
    return (
        f" The `{RETURNED}` runs stop at {max(sizes[RETURNED]):,} images: they show what Rescore's setting costs "
        f"in memory, and the largest size ({max(sizes[KEPT]):,}) alone takes a minute or more of a core."
    )


def cpu_notes(summary: list[dict[str, Any]]) -> list[str]:
    """Per model: Rescore's CPU per image beside the ceiling's, and the other methods' extra CPU."""
    notes = []
    for model in dict.fromkeys(row["model"] for row in summary):
        rows = {row["method"]: row for row in summary if row["model"] == model}
        ceiling, rescore = rows.get("ceiling"), rows.get("rescore")
        if ceiling is None or rescore is None:
            continue
        extra = rescore["cpu_ms_per_image"] - ceiling["cpu_ms_per_image"]
        others = ", ".join(
            f"{name} {row['cpu_ms_per_image']:.1f}"
            for name, row in rows.items()
            if name not in ("ceiling", "rescore", "spark_io_floor")
        )
        split = rescore.get("cpu_ms_per_image_by_process")
        if split:
            where = (
                f"{extra:+.1f} ms; Rescore's Python workers {split['python_workers']:.2f} ms, "
                f"the JVM {split['jvm']:.2f} ms, the driver {split['driver']:.2f} ms"
            )
            threads = rescore.get("jvm_cpu_ms_per_image_by_thread")
            if threads:
                where += f", of the JVM's the JIT compiler {threads['compiler']:.2f} ms"
        else:
            where = f"{extra:+.1f} ms: JVM file reading, Arrow transfer to the Python workers, Parquet writing"
        notes.append(
            f"{model}: Rescore {rescore['cpu_ms_per_image']:.1f} ms vs the ceiling's "
            f"{ceiling['cpu_ms_per_image']:.1f} ms ({where}); others: {others}"
        )
        stages = rescore.get("python_stages_ms_per_image")
        if stages:
            own = stages["input"] + stages["output"] + stages["other"] + stages["setup"]
            notes.append(
                f"{model}: in Rescore's Python workers a task's wall time is {stages['task']:.2f} ms per image for "
                f"{stages['cpu']:.2f} ms of CPU: decoding {stages['decode']:.2f} and the model {stages['model']:.2f} "
                f"(the ceiling's whole process: {ceiling['cpu_ms_per_image']:.2f}), reading Spark's batches, "
                f"returning results, setup and the rest {own:.2f}"
            )
        floor = rows.get("spark_io_floor")
        if floor is not None:
            notes.append(
                f"{model}: Rescore's Spark job without reading, decoding or a model takes "
                f"{floor['seconds_median']:.1f} s "
                f"and {floor['cpu_ms_per_image']:.1f} CPU ms per image; Rescore takes {rescore['seconds_median']:.1f} s"
            )
    return notes


def spark_bound(limit_cpu_ms: float | None, spark_cpu_ms: float | None) -> float | None:
    """The share of the physical limit a Spark job can reach at best: every core busy, the Python
    side at the limit's cost, plus Spark's own CPU per image on the same cores."""
    if limit_cpu_ms is None or spark_cpu_ms is None or limit_cpu_ms <= 0:
        return None
    return limit_cpu_ms / (limit_cpu_ms + max(spark_cpu_ms, 0.0))


def _limit_rounds_text(limits: dict[str, dict[str, Any]]) -> str:
    """How the physical limits were measured: best of three rounds before the model's timed
    rounds, and (since the limit is measured beside the sustained runs too) one more before each
    pass of those."""
    beside = {limit.get("rounds_beside_sustained", 0) for limit in limits.values()} - {0}
    if not beside:
        return "best of three rounds"
    words = {1: "one", 2: "two", 3: "three"}
    count = " or ".join(words.get(n, str(n)) for n in sorted(beside))
    return (
        f"best of all its rounds: three before the model's timed rounds and {count} more, one before each "
        "pass of the sustained runs, so that the limit is measured in the same minutes as the rate compared "
        "with it; a 2-core host's speed moves by 10-20% within a run"
    )


def _sustained_runs_text(rows: list[dict[str, Any]]) -> str:
    """How many runs of each size the sustained rate took the best of (two before ``passes`` was
    recorded; quick mode runs one)."""
    words = {1: "one run each", 2: "best of two each", 3: "best of three each"}
    passes = sorted({int(row.get("passes", 2)) for row in rows})
    return " or ".join(words.get(n, f"best of {n} each") for n in passes)


def _limit_rounds(limit: dict[str, Any]) -> str:
    """A limit's rounds in the order measured, those beside the sustained runs after a ``·``."""
    rounds = limit.get("rounds_cpu_ms")
    if not rounds:
        return "–"
    beside = int(limit.get("rounds_beside_sustained", 0))
    first = ", ".join(f"{r:.2f}" for r in rounds[: len(rounds) - beside])
    later = ", ".join(f"{r:.2f}" for r in rounds[len(rounds) - beside :])
    return f"{first} · {later}" if later else first


def physical_targets(sustained: list[dict[str, Any]], limits: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per model: Rescore's sustained images/s over the physical limit, at least 0.90."""
    targets = []
    for row in sustained:
        limit = limits.get(row["model"])
        if limit is None:
            continue
        value = row["images_per_s"] / limit["images_per_s"]
        target = {
            "model": row["model"],
            "target": "Rescore sustained / physical limit",
            "threshold": PHYSICAL_LIMIT_MIN_RATIO,
            "value": value,
            "met": value >= PHYSICAL_LIMIT_MIN_RATIO,
            "gap": value - PHYSICAL_LIMIT_MIN_RATIO,
        }
        bound = spark_bound(limit["cpu_ms_per_image"], row.get("floor_cpu_ms_per_image"))
        if bound is not None:
            target["note"] = (
                f"Spark's own {max(row['floor_cpu_ms_per_image'], 0.0):.2f} CPU ms per image leave at most {bound:.2f}"
            )
        targets.append(target)
    return targets


def all_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = ratio_targets(results["summary"])
    targets += physical_targets(results.get("sustained", []), results.get("physical_limit", {}))
    scaling = scaling_target(results.get("scaling", []))
    if scaling is not None:
        targets.append(scaling)
    return targets + memory_targets(results.get("memory", []))


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_page(results: dict[str, Any], out: Path, render: Callable[[dict[str, Any]], str]) -> None:
    """A side benchmark's results: ``out`` (markdown, from ``render``) with the JSON beside it;
    the page is printed too."""
    write_json(results, out.with_suffix(".json"))
    page = render(results)
    out.write_text(page)
    print(page)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Agreement):
        return {**asdict(value), "ok": value.ok}
    raise TypeError(f"cannot write {type(value).__name__} into results.json")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _cpu_by_process_table(summary: list[dict[str, Any]]) -> list[str]:
    """CPU ms per image of each kind of process, per method (median run): whether a Spark method's
    Python side costs what the same work costs in a plain process, and what the JVM adds."""
    rows = [row for row in summary if row.get("cpu_ms_per_image_by_process")]
    if not rows:
        return []
    lines = [
        "",
        "### CPU by process (ms per image, median run)",
        "",
        "Spark's Python workers run the decoding and the model (Rescore's read the files too); the JVM "
        "lists the files, reads them (except Rescore's), moves the data through Arrow and writes Parquet; "
        "`other` is the ceiling's worker processes; the driver is this "
        "benchmark's own process (the ceiling's DataLoader runs its model there). Compare a Spark method's "
        "Python workers with the ceiling's total: the same decode and model calls.",
        "",
        "| model | method | Python workers | JVM | driver | other | total |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        split = row["cpu_ms_per_image_by_process"]
        cells = [_fmt(split.get(kind), 2) for kind in CPU_KINDS]
        total = _fmt(row["cpu_ms_per_image"], 2)
        lines.append(f"| {row['model']} | {_method_label(row)} | " + " | ".join(cells) + f" | {total} |")
    return lines


def _jvm_by_thread_table(summary: list[dict[str, Any]]) -> list[str]:
    """The JVM's CPU ms per image by thread group, per Spark method (median run)."""
    rows = [
        row
        for row in summary
        if row["method"] != "ceiling"
        and row.get("jvm_cpu_ms_per_image_by_thread")
        and row.get("cpu_ms_per_image_by_process")
    ]
    if not rows:
        return []
    lines = [
        "",
        "### The JVM's CPU by thread (ms per image, median run)",
        "",
        "What the JVM column above is made of, read per thread from `/proc` (threads alive at the end of a "
        "run): `compiler` is the JIT compiling Spark's hot paths and each query's generated code, which a "
        "fresh application pays on the cores that score; `gc` the garbage collector; `tasks` Spark's task "
        "threads (reading files, Arrow to and from the Python workers, writing Parquet); `other` every other "
        "thread.",
        "",
        "| model | method | " + " | ".join(JVM_GROUPS) + " | JVM |",
        "| --- | --- | " + " | ".join("---:" for _ in JVM_GROUPS) + " | ---: |",
    ]
    for row in rows:
        split = row["jvm_cpu_ms_per_image_by_thread"]
        cells = [_fmt(split.get(group), 2) for group in JVM_GROUPS]
        jvm = _fmt(row["cpu_ms_per_image_by_process"]["jvm"], 2)
        lines.append(f"| {row['model']} | {_method_label(row)} | " + " | ".join(cells) + f" | {jvm} |")
    return lines


#: The columns of the stage table: (key in StageReport.ms_per_image, heading).
STAGE_COLUMNS = (
    ("wait", "waiting for decoded images"),
    ("input", "of which reading Spark's batches"),
    ("decode", "of which decoding"),
    ("model", "model"),
    ("output", "returning results"),
    ("setup", "model setup"),
    ("other", "other"),
    ("task", "task"),
    ("cpu", "CPU"),
)


def _python_stages_table(summary: list[dict[str, Any]], physical: dict[str, dict[str, float]]) -> list[str]:
    """Where Rescore's Python workers spent a task's time, per model (median run), beside the
    physical limit's decode + inference CPU per image."""
    rows = [row for row in summary if row.get("python_stages_ms_per_image")]
    if not rows:
        return []
    lines = [
        "",
        "### Rescore's Python workers by stage (ms per image, median run)",
        "",
        "Each scoring task times its own thread (`spark_jobs/stages.py`; the score job logs the same line): "
        "waiting for the next decoded batch (decoding inline, that is reading Spark's Arrow batches and "
        "decoding), the model (forward pass and output columns), returning results to Spark, getting the "
        "model (`model setup`: from the worker's cache in timed runs) and `other`, the rest of the task's "
        "wall time. `CPU` is the Python workers' CPU over their tasks; `limit` is the decode + inference CPU "
        "per image of the physical limit (single-threaded processes, files in memory). Wall times on a "
        "machine whose cores are all busy include time waiting for a core.",
        "",
        "| model | " + " | ".join(title for _, title in STAGE_COLUMNS) + " | limit |",
        "| --- | " + " | ".join("---:" for _ in STAGE_COLUMNS) + " | ---: |",
    ]
    for row in rows:
        stages = row["python_stages_ms_per_image"]
        cells = [_fmt(stages.get(key), 2) for key, _ in STAGE_COLUMNS]
        limit = physical.get(row["model"], {}).get("cpu_ms_per_image")
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {_fmt(limit, 2)} |")
    return lines


def _method_label(row: dict[str, Any]) -> str:
    """The method's name, with the ceiling's winning configuration beside it."""
    return row["method"] + (f" ({row['ceiling_config']})" if row.get("ceiling_config") else "")


def _summary_row(row: dict[str, Any]) -> str:
    agreement = row.get("agreement")
    method = _method_label(row)
    agree = f"{100 * agreement['argmax_agreement']:.1f}%" if agreement else "–"
    if row["method"] == "ceiling":
        agree = "reference"
    diff = f"{agreement['max_abs_diff']:.1e}" if agreement else "–"
    status = "**wrong**" if row["status"] == "wrong" else row["status"]
    return (
        f"| {row['model']} | {method} | {row['images']} | {_fmt(row['images_per_s_median'])} "
        f"| {_fmt(row['images_per_s_best'])} | {_fmt(row.get('ceiling_ratio'), 2)} | {_fmt(row['cpu_ms_per_image'])} "
        f"| {agree} | {diff} | {status} |"
    )


def _warmup_text(warmup: int | dict[str, int]) -> str:
    """``128 images``, or per model: ``1,334 images (small_cnn_64), 128 (resnet18_160)``."""
    if isinstance(warmup, int):
        return f"{warmup:,} images"
    parts = [f"{n:,}{' images' if i == 0 else ''} ({key})" for i, (key, n) in enumerate(warmup.items())]
    return ", ".join(parts) if parts else "no images"


def _rounds_text(settings: dict[str, Any]) -> str:
    """``3 timed rounds per method``, or per model with the budget that decided them."""
    rounds = settings["rounds"]
    if isinstance(rounds, int):
        return f"{rounds} timed rounds per method"
    counts = ", ".join(f"{n} ({key})" for key, n in rounds.items())
    least, most = settings["rounds_planned"]
    return (
        f"timed rounds per method: {counts}; {least} always, up to {most} while the run fits its "
        f"{settings['budget_s'] / 60:.0f}-minute budget"
    )


def _sizing_lines(settings: dict[str, Any]) -> list[str]:
    """How many images each model's timed runs got and why (older results do not say: nothing)."""
    sizing = settings.get("images_sized") or {}
    sized = {key: s for key, s in sizing.items() if "run_seconds" in s}
    if not sized:
        return []
    first = next(iter(sized.values()))
    parts = []
    for key, s in sized.items():
        text = f"{s['images']:,} ({key}: {s['probe_cpu_ms']:.2f} CPU ms per image in a probe on {s['probe_images']:,}"
        if s["images"] == s["most"]:
            text += ", the most the plan allows"
        if s["unique_images"] < s["images"]:
            text += f"; {s['unique_images']:,} distinct files read {s['images'] / s['unique_images']:.1f} times"
        parts.append(text + ")")
    sustained = first.get("sustained_seconds")
    return [
        f"- **Images per timed run:** as many as make {first['run_seconds']:g} s of work at the physical "
        "limit, from a round of the limit on the first images, as many as make a second of work (so the "
        f"run's length and what Spark's fixed cost per job weighs do not follow the host's speed): {'; '.join(parts)}"
        + (
            f". The sustained runs differ by {sustained:g} s of work at the limit, sized the same way"
            if sustained
            else ""
        )
    ]


#: the phase that runs inside others (the timed rounds and the sustained runs): not added to the total
NESTED_PHASE = "of which waking workers"


def time_section(phases: list[dict[str, Any]], duration_s: float) -> list[str]:
    """The README's account of the run's length: seconds per phase, in the order they ran."""
    if not phases:
        return []
    lines = [
        "",
        "## Where the run's time went",
        "",
        "Seconds per phase of this run (the harness's own clock), in the order they first ran. "
        f"`{NESTED_PHASE}` is the untimed runs that wake a Spark method's Python workers before each of its "
        "timed runs, inside the timed rounds and the sustained runs (counted there too). "
        "`make bench` then runs the ingest benchmark ([ingest.md](ingest.md)), not counted here.",
        "",
        "| model | phase | seconds | share of the run |",
        "| --- | --- | ---: | ---: |",
    ]
    counted = 0.0
    for p in phases:
        nested = p["phase"] == NESTED_PHASE
        counted += 0.0 if nested else p["seconds"]
        share = f"({p['seconds'] / duration_s:.0%})" if nested else f"{p['seconds'] / duration_s:.0%}"
        lines.append(f"| {p['model'] or '–'} | {p['phase']} | {p['seconds']:.0f} | {share} |")
    rest = duration_s - counted
    lines.append(
        f"| – | the rest (checking predictions, stopping sessions, the report) | {rest:.0f} | {rest / duration_s:.0%} |"
    )
    lines.append(f"| | **the whole run** | **{duration_s:.0f}** | |")
    return lines


def _python_workers_lines(settings: dict[str, Any]) -> list[str]:
    """How the Spark methods' Python workers were pooled (older results do not say: nothing)."""
    pooling = settings.get("python_workers")
    if pooling == "per method":
        return [
            "- **Python workers:** each Spark method its own (as in separate applications): what one "
            "method imports or caches in a worker does not change another's figures; before each timed run "
            "an untimed run on a few images wakes the method's workers (Spark stops a pool's idle workers "
            "after a minute)"
        ]
    if pooling == "shared":
        return [
            "- **Python workers:** shared by all Spark methods (`--shared-python-workers`): each method's "
            "figures include the garbage collection of what the others left in the workers"
        ]
    return []


def render_readme(results: dict[str, Any], plot_name: str) -> str:
    """The benchmarks README: setting, table, plot, targets, scaling, memory; all from ``results``."""
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m include.bench`) from "
        "[`results.json`](results.json); do not edit by hand.",
        "",
        f"- **Mode:** {results['mode']}"
        + (" (quick: fewer images and rounds; figures are indicative)" if results["mode"] == "quick" else ""),
        f"- **Machine:** {machine['cpu_model']}, {settings['cores']} cores used of {machine['logical_cpus']}, "
        f"{machine['memory_gib']} GiB; Python {machine['python']}, PySpark {machine['pyspark']}, "
        f"PyTorch {machine['torch']}, MLflow {machine['mlflow']}, Pillow {machine['pillow']}",
        f"- **Load:** 1-minute load average {machine['loadavg_start']} at the start, "
        f"{machine['loadavg_end']} at the end" + (f"; {results['note']}" if results.get("note") else ""),
        f"- **Run:** {results['started_at']}, {results['duration_s']:.0f} s; batch size {settings['batch_size']}, "
        f"{_rounds_text(settings)}, interleaved, after one warm-up round on "
        f"{_warmup_text(settings['warmup_images'])}",
        *_python_workers_lines(settings),
        *_sizing_lines(settings),
        f"- **Images:** {results['data']['count']} generated photo-like JPEGs, "
        f"{results['data']['mean_pixels'] / 1000:.0f} kpixels and {results['data']['mean_bytes'] / 1024:.1f} KiB "
        f"on average ({results['data']['bits_per_pixel']} bits per pixel), seed {settings['seed']}",
        "",
        "Every method reads the same files and writes its predictions to Parquet (end to end: files to stored "
        "predictions). A method whose predictions disagree with the ceiling's (argmax on fewer than "
        f"{MIN_ARGMAX_AGREEMENT:.0%} of images, or a probability off by more than {PROBABILITY_TOLERANCE:g}) "
        "is reported **wrong**, not fast. CPU ms per image is the CPU time of the whole process tree "
        "(driver, JVM, Python workers) over the run, divided by the images.",
        "",
        "## Throughput",
        "",
        "| model | method | images | images/s (median) | images/s (best) | × ceiling | CPU ms / image | "
        "argmax agreement | max prob. diff | status |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [_summary_row(row) for row in results["summary"]]
    for model in results["models"]:
        if model["status"] != "measured":
            lines.append(f"| {model['key']} | all methods | – | – | – | – | – | – | – | {model['status']} |")
    lines += ["", f"![images/s by method and model]({plot_name})", "", "### Methods", ""]
    for name, text in results["methods"].items():
        lines.append(f"- `{name}`: {text}")
    lines += ["", "### The ceiling's configurations (median images/s)", ""]
    lines.append("| model | " + " | ".join(results["ceiling_configs"]) + " | best |")
    lines.append("| --- |" + " ---: |" * (len(results["ceiling_configs"]) + 1))
    for model, info in results["ceiling"].items():
        cells = [_fmt(info["configs"].get(c)) for c in results["ceiling_configs"]]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {info['best_config']} |")
    lines += _cpu_by_process_table(results["summary"])
    lines += _jvm_by_thread_table(results["summary"])
    lines += _python_stages_table(results["summary"], results.get("physical_limit", {}))
    quick = results["mode"] == "quick"
    lines += ["", "## Targets", ""]
    if quick:
        lines += [
            "A quick run's timed runs hold a few hundred images, so Spark's fixed cost per job (planning, "
            "starting the tasks, the writers: about a second) weighs on every Spark method, and its memory runs score "
            "a few model batches per partition: these results only check the harness. The targets are judged on "
            "a full run (`make bench`).",
            "",
        ]
    lines += [
        "| model | target | value | threshold | result |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for t in results["targets"]:
        # a value within 0.005 of its threshold gets a third decimal: "1.10, missed by 0.00" says nothing
        digits = 3 if t["met"] is not None and abs(t["gap"]) < 0.005 else 2
        if t["met"] is None:
            verdict = t.get("note", "not measured")
        elif t["met"]:
            verdict = f"met (margin {abs(t['gap']):.{digits}f})"
        else:
            verdict = f"**missed** by {abs(t['gap']):.{digits}f}"
        if t.get("note") and t["met"] is not None:
            verdict += f"; {t['note']}"
        if quick and t["met"] is not None:
            verdict = f"indicative (quick run): {verdict}"
        cmp = "≤" if t["target"].startswith("peak worker RSS") else "≥"
        value = _fmt(t["value"], digits)
        lines.append(f"| {t['model']} | {t['target']} | {value} | {cmp} {t['threshold']} | {verdict} |")
    missed = [t for t in results["targets"] if t["met"] is False]
    if missed:
        lines += ["", "Where the time goes (CPU of the whole process tree, per image, median run):", ""]
        lines += [f"- {note}" for note in cpu_notes(results["summary"])]
    if results.get("sustained"):
        limits = results.get("physical_limit", {})
        lines += [
            "",
            "## Sustained rate against the physical limit",
            "",
            "The physical limit is the cores divided by the CPU time of decode + preprocessing + inference "
            "per image, measured in single-threaded processes, one per core and all at once, with the files in "
            f"memory ({_limit_rounds_text(limits)}). Rescore's sustained rate is the marginal rate between "
            f"two runs of different size ({_sustained_runs_text(results['sustained'])}): "
            "(images₂ − images₁) / (seconds₂ − seconds₁), what a long job gets once Spark's fixed cost per "
            "job is paid. Spark's own CPU per image is the marginal CPU of `spark_io_floor` (Rescore's job "
            "listing the files and writing a row per file, without reading, decoding or a model) between the same "
            "two sizes: Spark spends it on every image (the other methods more: their JVM reads the files too), on "
            "the same cores, so even a job whose "
            "Python side cost exactly the limit and whose cores never idled would reach only "
            "limit CPU / (limit CPU + Spark's CPU) of the limit (the last column). Rescore's marginal CPU is "
            "split by process: its Python workers (reading the files, decoding, the model, Arrow in and out; "
            "compare with the limit's CPU, taken on files in memory) and the JVM (listing the files, Arrow, "
            "writing Parquet).",
            "",
            "| model | decode + inference CPU ms / image | the limit's rounds (CPU ms / image) "
            "| physical limit (images/s) | Rescore runs "
            "| sustained images/s | sustained CPU ms / image | of which Python workers | of which the JVM "
            "| × physical limit | Spark's own CPU ms / image | reachable × limit |",
            "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in results["sustained"]:
            limit = limits.get(row["model"], {})
            runs = ", ".join(f"{n} in {t:.1f} s" for n, t in zip(row["images"], row["seconds"], strict=True))
            ratio = row["images_per_s"] / limit["images_per_s"] if limit else None
            # A marginal CPU below zero is measurement noise on a tiny share: shown as 0.
            floor_ms = None if row.get("floor_cpu_ms_per_image") is None else max(row["floor_cpu_ms_per_image"], 0.0)
            reachable = spark_bound(limit.get("cpu_ms_per_image"), floor_ms)
            split = row.get("cpu_ms_per_image_by_process") or {}
            lines.append(
                f"| {row['model']} | {_fmt(limit.get('cpu_ms_per_image'), 2)} | {_limit_rounds(limit)} "
                f"| {_fmt(limit.get('images_per_s'))} "
                f"| {runs} | {_fmt(row['images_per_s'])} | {_fmt(row['cpu_ms_per_image'], 2)} "
                f"| {_fmt(split.get('python_workers'), 2)} | {_fmt(split.get('jvm'), 2)} | {_fmt(ratio, 2)} "
                f"| {_fmt(floor_ms, 2)} | {_fmt(reachable, 2)} |"
            )
    if results.get("scaling"):
        lines += [
            "",
            "## Scaling (Rescore)",
            "",
            "| model | × base | images | seconds | images/s | CPU ms / image |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for s in results["scaling"]:
            lines.append(
                f"| {s['model']} | {s['multiplier']} | {s['images']} | {s['seconds']:.1f} | {s['images_per_s']:.1f} "
                f"| {s['cpu_ms_per_image']:.1f} |"
            )
    if results.get("memory"):
        lines += memory_section(results["memory"], results["settings"]["rss_interval_s"])
    lines += time_section(results.get("phases", []), results["duration_s"])
    lines += [
        "",
        "## Reading these numbers",
        "",
        "- Spark's fixed cost per job (planning, task launch, Parquet commit; see `spark_io_floor`) weighs "
        "heavily when a run lasts a few seconds, as in quick mode; the scaling table shows Rescore at larger "
        "counts, and the full run uses more images.",
        "- ResNet-18 and MobileNetV2 carry random weights (no downloads): their probabilities are close to "
        "uniform, so for them the agreement check rests on the probability tolerance more than on the argmax.",
        "- On a machine shared with other work, compare methods within one run (they are interleaved), "
        "not across runs.",
        "- GPU: `make bench-gpu` on a machine with a CUDA GPU measures ResNet-50 in float16 against a "
        "pure-PyTorch loop; its results are in [gpu/README.md](gpu/README.md), with the device named.",
    ]
    lines += [
        "",
        "Reproduce: `make bench` (full run, budget 45 min on 2 cores) or `make bench QUICK=1` "
        "(budget 5 min); this run's time is under **Run** above.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: median images/s per method, one colour per model, ratio to the ceiling on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["summary"]
    models = [m["key"] for m in results["models"] if m["status"] == "measured"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * max(1, len(models)), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        values, labels, colours, notes = [], [], [], []
        for method in methods:
            row = next((r for r in rows if r["model"] == model and r["method"] == method), None)
            if row is None or row["method"] == "spark_io_floor":
                continue
            values.append(row["images_per_s_median"])
            labels.append(method)
            colours.append("#999999" if method == "ceiling" else "#1f77b4" if method == "rescore" else "#ff7f0e")
            if row["status"] != "ok":
                notes.append("wrong")
            else:
                notes.append("" if row.get("ceiling_ratio") is None else f"{row['ceiling_ratio']:.2f}×")
        bars = ax.bar(range(len(values)), values, color=colours)
        for bar, note in zip(bars, notes, strict=True):
            ax.annotate(
                note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
            )
        ax.set_xticks(range(len(values)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(model)
        ax.set_ylabel("images/s (median); label: × ceiling")
    fig.suptitle(f"Images/s end to end on {results['settings']['cores']} cores ({results['mode']} mode)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    """results.json, README.md and the plot into ``out_dir``."""
    plot_name = "throughput.png"
    results["targets"] = all_targets(results)
    write_json(results, out_dir / "results.json")
    plot(results, out_dir / plot_name)
    (out_dir / "README.md").write_text(render_readme(results, plot_name))
