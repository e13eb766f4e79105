"""The benchmark's judge and reporter: agreement with the ceiling, summaries, targets, the
README/JSON/plot writer, and the process-tree measurements. No Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from include.bench.measure import (
    Stopwatch,
    WorkerMemorySampler,
    cpu_between,
    jvm_thread_group,
    tree_cpu_by_process,
    tree_cpu_seconds,
)
from include.bench.report import check_agreement, memory_targets, summarise_runs, write_report

pytestmark = pytest.mark.unit


def _probs(count: int, classes: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = (
        rng.random((count, classes)).astype(np.float32) + np.eye(classes, dtype=np.float32)[np.arange(count) % classes]
    )
    raw /= raw.sum(axis=1, keepdims=True)
    return {f"img_{i}.jpg": raw[i] for i in range(count)}


def test_identical_predictions_agree() -> None:
    reference = _probs(100)
    result = check_agreement(reference, {k: v.copy() for k, v in reference.items()})
    assert (result.compared, result.missing, result.argmax_agreement, result.max_abs_diff) == (100, 0, 1.0, 0.0)
    assert result.ok


def test_two_percent_other_argmax_is_wrong() -> None:
    reference = _probs(100)
    candidate = {k: v.copy() for k, v in reference.items()}
    for key in ("img_3.jpg", "img_50.jpg"):
        candidate[key] = candidate[key][::-1].copy()  # a different top class
        assert np.argmax(candidate[key]) != np.argmax(reference[key])
    result = check_agreement(reference, candidate)
    assert result.argmax_agreement == pytest.approx(0.98)
    assert not result.ok


def test_probabilities_beyond_tolerance_are_wrong_within_are_fine() -> None:
    reference = _probs(10)
    near = {k: v + np.float32(5e-4) for k, v in reference.items()}
    far = {k: v.copy() for k, v in reference.items()}
    far["img_7.jpg"] = far["img_7.jpg"] + np.float32(2e-3)
    assert check_agreement(reference, near).ok
    off = check_agreement(reference, far)
    assert off.argmax_agreement == 1.0
    assert off.max_abs_diff == pytest.approx(2e-3, rel=1e-3)
    assert not off.ok


def test_a_missing_image_is_wrong() -> None:
    reference = _probs(200)
    candidate = dict(reference)
    del candidate["img_0.jpg"]
    result = check_agreement(reference, candidate)
    assert (result.missing, result.compared) == (1, 199)
    assert result.argmax_agreement == pytest.approx(0.995)
    assert not result.ok


def test_empty_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="reference"):
        check_agreement({}, _probs(3))


def test_summarise_runs_min_median_and_cpu_per_image() -> None:
    runs = [
        {"seconds": 2.0, "cpu_seconds": 1.0},
        {"seconds": 4.0, "cpu_seconds": 3.0},
        {"seconds": 3.0, "cpu_seconds": 2.0},
    ]
    summary = summarise_runs(runs, images=60)
    assert summary["seconds_min"] == 2.0
    assert summary["seconds_median"] == 3.0
    assert summary["images_per_s_best"] == pytest.approx(30.0)
    assert summary["images_per_s_median"] == pytest.approx(20.0)
    assert summary["cpu_ms_per_image"] == pytest.approx(2000 / 60)


def _row(method: str, ips: float, status: str = "ok", ratio: float | None = None) -> dict[str, Any]:
    agreement = (
        None if method == "ceiling" else {"argmax_agreement": 1.0 if status == "ok" else 0.5, "max_abs_diff": 1e-6}
    )
    return {
        "model": "m64",
        "method": method,
        "images": 100,
        "runs": 2,
        "seconds_min": 100 / ips,
        "seconds_median": 100 / ips,
        "images_per_s_best": ips,
        "images_per_s_median": ips,
        "cpu_ms_per_image": 12.5,
        "ceiling_ratio": ratio,
        "agreement": agreement,
        "status": status,
    }


def _results() -> dict[str, Any]:
    return {
        "schema": 1,
        "mode": "quick",
        "note": "machine shared with other jobs",
        "started_at": "2026-11-28T08:00:00+00:00",
        "duration_s": 123.0,
        "machine": {
            "cpu_model": "Test CPU",
            "logical_cpus": 2,
            "memory_gib": 8,
            "python": "3.11",
            "pyspark": "4.2.0",
            "torch": "2.13.0",
            "mlflow": "3.17.2",
            "pillow": "13.0.0",
            "loadavg_start": 1.0,
            "loadavg_end": 2.0,
        },
        "settings": {"cores": 2, "batch_size": 32, "rounds": 2, "warmup_images": 64, "seed": 1, "rss_interval_s": 0.05},
        "data": {"count": 100, "mean_pixels": 150000.0, "mean_bytes": 20000.0, "bits_per_pixel": 1.1},
        "models": [
            {"key": "m64", "title": "model", "status": "measured"},
            {"key": "keras", "status": "not measured: no predictor"},
        ],
        "methods": {"ceiling": "plain", "rescore": "ours", "predict_batch_udf": "spark", "row_udf": "rows"},
        "ceiling_configs": ["dataloader_w0", "process_per_core"],
        "ceiling": {
            "m64": {"best_config": "process_per_core", "configs": {"dataloader_w0": 80.0, "process_per_core": 100.0}}
        },
        "summary": [
            _row("ceiling", 100.0, ratio=1.0),
            _row("rescore", 50.0, ratio=0.5),
            _row("predict_batch_udf", 25.0, ratio=0.25),
            _row("row_udf", 500.0, status="wrong", ratio=5.0),
        ],
        "runs": [],
        "scaling": [],
        "memory": [
            {"model": "m64", "partition_images": 10, "peak_worker_mb": 400.0, "peak_total_mb": 800.0, "samples": 5},
            {"model": "m64", "partition_images": 100, "peak_worker_mb": 420.0, "peak_total_mb": 820.0, "samples": 9},
        ],
    }


def test_report_flags_the_wrong_method_and_computes_targets(tmp_path: Path) -> None:
    write_report(_results(), tmp_path)
    readme = (tmp_path / "README.md").read_text()
    row_udf_line = next(line for line in readme.splitlines() if "| row_udf |" in line)
    assert "**wrong**" in row_udf_line
    assert "50.0%" in row_udf_line
    assert "| not measured: no predictor |" in readme
    results = json.loads((tmp_path / "results.json").read_text())
    targets = {(t["model"], t["target"]): t for t in results["targets"]}
    to_ceiling = targets[("m64", "Rescore / ceiling")]
    assert to_ceiling["value"] == pytest.approx(0.5)
    assert to_ceiling["met"] is False
    assert to_ceiling["gap"] == pytest.approx(-0.4)
    to_pbu = targets[("m64", "Rescore / predict_batch_udf (array column)")]
    assert (to_pbu["value"], to_pbu["met"]) == (pytest.approx(2.0), True)
    to_row = targets[("m64", "Rescore / row-at-a-time UDF")]
    assert to_row["met"] is False  # 50 vs 500 images/s, even though row_udf is wrong
    assert "disagrees" in to_row["note"]
    assert targets[("m64", "Rescore / mlflow spark_udf")]["met"] is None  # not measured here
    assert "**missed** by 0.40" in readme
    assert "machine shared with other jobs" in readme
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CPU by process" not in readme  # these rows recorded no split


def test_report_shows_the_cpu_of_each_kind_of_process_per_method(tmp_path: Path) -> None:
    results = _results()
    results["summary"][1]["cpu_ms_per_image_by_process"] = {
        "python_workers": 9.5,
        "jvm": 2.75,
        "driver": 0.25,
        "other": 0.0,
    }
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "### CPU by process (ms per image, median run)" in readme
    assert "| m64 | rescore | 9.50 | 2.75 | 0.25 | 0.00 | 12.50 |" in readme
    assert "| m64 | predict_batch_udf | 9.50" not in readme  # no split recorded for it


def test_report_splits_the_jvms_cpu_by_thread_from_the_runs(tmp_path: Path) -> None:
    runs = [
        {
            "seconds": seconds,
            "cpu_seconds": 2.0,
            "cpu_seconds_by_process": {"python_workers": 1.0, "jvm": 0.8, "driver": 0.1, "other": 0.1},
            "jvm_cpu_seconds_by_thread": {"compiler": compiler, "gc": 0.05, "tasks": 0.3, "other": 0.05},
        }
        for seconds, compiler in ((1.0, 0.2), (1.2, 0.4), (1.1, 0.3))
    ]
    summary = summarise_runs(runs, 100)
    assert summary["jvm_cpu_ms_per_image_by_thread"] == pytest.approx(
        {"compiler": 3.0, "gc": 0.5, "tasks": 3.0, "other": 0.5}
    )
    results = _results()
    results["summary"][0].update(summary)  # the ceiling: its idle JVM is not a method's
    results["summary"][1].update(summary)
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "### The JVM's CPU by thread (ms per image, median run)" in readme
    assert "| m64 | rescore | 3.00 | 0.50 | 3.00 | 0.50 | 8.00 |" in readme
    assert not [
        line for line in readme.splitlines() if line.startswith("| m64 | ceiling") and "| 3.00 | 0.50 |" in line
    ]
    assert "of the JVM's the JIT compiler 3.00 ms" in readme
    del runs[1]["jvm_cpu_seconds_by_thread"]  # results of a harness that did not record it
    assert summarise_runs(runs, 100)["jvm_cpu_ms_per_image_by_thread"] is None


def test_report_shows_where_rescores_python_workers_spent_the_time(tmp_path: Path) -> None:
    # three timed runs of Rescore, each with its stage report (ms per image); medians by hand:
    # wait 3.0, input 0.5, decode 2.5, model 12.0, output 0.1, setup 0.0, other 0.2, task 15.3, cpu 14.8
    per_image = [
        {
            "wait": 3.0,
            "input": 0.4,
            "decode": 2.5,
            "model": 11.0,
            "output": 0.1,
            "setup": 0.0,
            "other": 0.2,
            "task": 14.3,
            "cpu": 14.0,
        },
        {
            "wait": 3.5,
            "input": 0.5,
            "decode": 2.6,
            "model": 12.0,
            "output": 0.1,
            "setup": 0.0,
            "other": 0.3,
            "task": 15.3,
            "cpu": 14.8,
        },
        {
            "wait": 2.0,
            "input": 0.6,
            "decode": 2.4,
            "model": 13.0,
            "output": 0.2,
            "setup": 0.0,
            "other": 0.1,
            "task": 16.0,
            "cpu": 15.5,
        },
    ]
    runs = [
        {"seconds": 1.0 + i / 10, "cpu_seconds": 2.0, "python_stages": {"ms_per_image": ms}}
        for i, ms in enumerate(per_image)
    ]
    summary = summarise_runs(runs, 100)
    assert summary["python_stages_ms_per_image"] == pytest.approx(
        {
            "wait": 3.0,
            "input": 0.5,
            "decode": 2.5,
            "model": 12.0,
            "output": 0.1,
            "setup": 0.0,
            "other": 0.2,
            "task": 15.3,
            "cpu": 14.8,
        }
    )
    results = _results()
    results["summary"][1].update(summary)
    results["physical_limit"] = {"m64": {"cpu_ms_per_image": 13.25, "images_per_s": 150.9, "images": 100}}
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "### Rescore's Python workers by stage (ms per image, median run)" in readme
    assert "| m64 | 3.00 | 0.50 | 2.50 | 12.00 | 0.10 | 0.00 | 0.20 | 15.30 | 14.80 | 13.25 |" in readme
    # wall 15.30 for CPU 14.80; reading 0.50 + returning 0.10 + setup 0.00 + other 0.20 = 0.80
    assert "task's wall time is 15.30 ms per image for 14.80 ms of CPU: decoding 2.50 and the model 12.00" in readme
    assert "setup and the rest 0.80" in readme
    del runs[2]["python_stages"]  # a run of another method, or of an older harness
    assert summarise_runs(runs, 100)["python_stages_ms_per_image"] is None


def test_jvm_threads_are_grouped_by_their_kernel_names() -> None:
    names = {
        "C2 CompilerThre": "compiler",
        "C1 CompilerThre": "compiler",
        "GC Thread#0": "gc",
        "G1 Conc#0": "gc",
        "G1 Refine#0": "gc",
        "Executor task l": "tasks",
        "Thread-3": "other",
        "VM Thread": "other",
        "": "other",
    }
    assert {name: jvm_thread_group(name) for name in names} == names


def test_report_names_each_models_warm_up_and_reads_older_results(tmp_path: Path) -> None:
    results = _results()
    results["settings"]["warmup_images"] = {"m64": 1334, "keras": 128}
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "after one warm-up round on 1,334 images (m64), 128 (keras)" in readme
    results["settings"]["warmup_images"] = 64  # results.json written before the warm-up was sized per model
    write_report(results, tmp_path)
    assert "after one warm-up round on 64 images" in (tmp_path / "README.md").read_text()


def test_memory_targets_allow_ten_percent_growth_per_tenfold_step() -> None:
    rows = [
        {"model": "m", "partition_images": 10, "peak_worker_mb": 400.0},
        {"model": "m", "partition_images": 100, "peak_worker_mb": 430.0},
        {"model": "m", "partition_images": 1000, "peak_worker_mb": 460.0},
    ]
    targets = memory_targets(rows)
    assert [t["target"] for t in targets] == [
        "peak worker RSS at 100 / at 10 images per partition",
        "peak worker RSS at 1000 / at 100 images per partition",
    ]
    assert [t["value"] for t in targets] == pytest.approx([1.075, 460 / 430])
    assert [t["met"] for t in targets] == [True, True]  # 1.15 over both steps, within 10% at each
    rows[2]["peak_worker_mb"] = 480.0
    assert [t["met"] for t in memory_targets(rows)] == [True, False]


def _memory_row(images: int, peak_mb: float, **overrides: float) -> dict[str, object]:
    """One row of results["memory"]: Rescore's own allocator setting, one worker at ``peak_mb``."""
    row: dict[str, object] = {
        "model": "m",
        "allocator": "kept",
        "partition_images": images,
        "peak_worker_mb": peak_mb,
        "peak_total_mb": peak_mb,
        "python_cpu_ms_per_image": 1.0,
        "samples": 3,
    }
    return {**row, **overrides}


def test_memory_targets_judge_rescores_allocator_setting_only(tmp_path: Path) -> None:
    kept = [
        _memory_row(n, mb, peak_total_mb=2 * mb, python_cpu_ms_per_image=cpu)
        for n, mb, cpu in ((10, 400.0, 9.0), (100, 420.0, 1.2))
    ]
    returned = [
        {**row, "allocator": "returned", "peak_worker_mb": mb} for row, mb in zip(kept, (300.0, 600.0), strict=True)
    ]
    targets = memory_targets(kept + returned)
    assert [(t["value"], t["met"]) for t in targets] == [(pytest.approx(1.05), True)]
    results = _results()
    results["memory"] = kept + returned
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "| m | kept | 100 | 420 | 1.05 | – | – | – | 840 | 1.20 | 3 |" in readme  # older results: no split
    assert "| m | returned | 100 | 600 | 2.00 | – | – | – | 840 | 1.20 | 3 |" in readme
    assert "RESCORE_KEEP_FREED_MEMORY=0" in readme

    kept[1]["peak_worker_split_mb"] = {"heap": 190.4, "anonymous": 101.0, "other": 128.6}
    write_report(results, tmp_path)
    assert "| m | kept | 100 | 420 | 1.05 | 190 | 101 | 129 | 840 | 1.20 | 3 |" in (tmp_path / "README.md").read_text()


def test_split_smaps_adds_resident_memory_by_kind_of_mapping() -> None:
    from include.bench.measure import split_smaps

    smaps = """\
55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1234                       /usr/bin/python3.11
Size:                132 kB
Rss:                 128 kB
Pss:                 128 kB
55d0c2b00000-55d0cc700000 rw-p 00000000 00:00 0                          [heap]
Size:             159744 kB
Rss:              155648 kB
7f0a00000000-7f0a06400000 rw-p 00000000 00:00 0
Size:             102400 kB
Rss:               77824 kB
Referenced:        77824 kB
7f0a10000000-7f0a10021000 rw-p 00000000 00:00 0
Rss:                  16 kB
7ffd3c5e0000-7ffd3c601000 rw-p 00000000 00:00 0                          [stack]
Rss:                  40 kB
VmFlags: rd wr mr mw me gd ac
"""
    assert split_smaps(smaps) == {
        "heap": 155648 * 1024,
        "anonymous": (77824 + 16) * 1024,
        "other": (128 + 40) * 1024,  # the executable's mapping and the stack
    }
    assert split_smaps("") == {"heap": 0, "anonymous": 0, "other": 0}


def test_a_target_within_half_a_hundredth_of_its_threshold_gets_a_third_decimal(tmp_path: Path) -> None:
    # Given a memory step of 1.103 (just over the 1.10 limit) and one of 1.05
    rows = [_memory_row(n, mb) for n, mb in ((10, 400.0), (100, 441.2), (1000, 463.26))]
    results = _results()
    results["mode"] = "full"
    results["memory"] = rows
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    # Then the close one reads 1.103 and "missed by 0.003", not "1.10, missed by 0.00"; the other keeps two
    assert "| 1.103 | ≤ 1.1 | **missed** by 0.003 |" in readme
    assert "| 1.05 | ≤ 1.1 | met (margin 0.05) |" in readme


def test_a_quick_runs_verdicts_are_marked_indicative_and_a_full_runs_are_not(tmp_path: Path) -> None:
    # Given the same results from a quick run and from a full run
    readmes = {}
    for mode in ("quick", "full"):
        results = _results()
        results["mode"] = mode
        write_report(results, tmp_path / mode)
        readmes[mode] = (tmp_path / mode / "README.md").read_text()
    # Then the quick run's Rescore / ceiling verdict says it is indicative, with the reason above the table
    line = next(row for row in readmes["quick"].splitlines() if "| Rescore / ceiling |" in row)
    assert line.endswith("| indicative (quick run): **missed** by 0.40 |")
    assert "The targets are judged on a full run (`make bench`)." in readmes["quick"]
    # and the full run's is the verdict alone
    line = next(row for row in readmes["full"].splitlines() if "| Rescore / ceiling |" in row)
    assert line.endswith("| **missed** by 0.40 |")
    assert "judged on a full run" not in readmes["full"]


def test_tree_cpu_counts_children_that_already_exited() -> None:
    before = tree_cpu_seconds()
    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert tree_cpu_seconds() - before >= 0.35


def test_stopwatch_splits_cpu_by_process_kind() -> None:
    """A child named like a Spark Python worker counts as one, any other child as 'other', the
    benchmark's own work as 'driver'; children that exit count in their parent's kind."""
    burn = "import sys, time\nend = time.process_time() + float(sys.argv[1])\nwhile time.process_time() < end: pass"
    with Stopwatch() as watch:
        worker = subprocess.Popen([sys.executable, "-c", burn + "\ntime.sleep(3)", "0.6", "pyspark.daemon"])
        other = subprocess.Popen([sys.executable, "-c", burn + "\ntime.sleep(3)", "0.4"])
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        time.sleep(1.5)  # both children have burned their share and still run
        alive = tree_cpu_by_process()
        worker.kill()
        other.kill()
        worker.wait()
        other.wait()
    while_alive = cpu_between(watch.cpu_start, alive)
    assert while_alive["python_workers"] >= 0.55
    assert while_alive["other"] >= 0.35
    assert while_alive["driver"] >= 0.25
    split = watch.cpu_by_kind
    # once reaped, the children's CPU moves to the driver (their parent): nothing is lost
    assert split["driver"] >= 1.2
    assert watch.cpu_seconds == pytest.approx(sum(split.values()))


def test_stopwatch_is_not_thrown_off_by_a_process_that_vanishes_with_its_cpu() -> None:
    """PySpark's daemon ignores SIGCHLD, so a worker Spark stops during a run (another method's
    idle workers, after a minute) leaves no trace of its CPU: that CPU was spent before the run
    and must not be subtracted from it."""
    import signal

    parent_code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    end = time.process_time() + 0.8\n"
        "    while time.process_time() < end: pass\n"
        "    print('burned', flush=True)\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code, "pyspark.daemon"], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "burned"  # the worker spent its CPU before the block
        with Stopwatch() as watch:
            os.kill(worker, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while psutil.pid_exists(worker) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert not psutil.pid_exists(worker)
        assert watch.cpu_by_kind["python_workers"] > -0.05  # the worker's 0.8 s are not taken off
        assert watch.cpu_seconds > -0.05
    finally:
        parent.kill()
        parent.wait()


def test_summarise_runs_gives_the_median_cpu_of_each_kind_of_process() -> None:
    runs = [
        {"seconds": 2.0, "cpu_seconds": 1.0, "cpu_seconds_by_process": {"python_workers": 0.6, "jvm": 0.4}},
        {"seconds": 4.0, "cpu_seconds": 3.0, "cpu_seconds_by_process": {"python_workers": 2.0, "jvm": 1.0}},
        {"seconds": 3.0, "cpu_seconds": 2.0, "cpu_seconds_by_process": {"python_workers": 1.2, "jvm": 0.8}},
    ]
    split = summarise_runs(runs, images=100)["cpu_ms_per_image_by_process"]
    assert split == {"python_workers": pytest.approx(12.0), "jvm": pytest.approx(8.0)}
    del runs[1]["cpu_seconds_by_process"]  # results of an older harness
    assert summarise_runs(runs, images=100)["cpu_ms_per_image_by_process"] is None


def test_memory_sampler_sees_python_workers_in_the_process_tree() -> None:
    hold = "import sys, time; data = bytearray(64 * 2**20); time.sleep(3)"
    worker = subprocess.Popen([sys.executable, "-c", hold, "pyspark.daemon"])
    try:
        time.sleep(1.0)  # let it allocate
        with WorkerMemorySampler(interval=0.02) as sampler:
            time.sleep(0.2)
    finally:
        worker.kill()
        worker.wait()
    assert sampler.samples >= 2
    assert sampler.peak_worker_bytes >= 64 * 2**20
    # the 64 MiB bytearray is one large malloc block: an anonymous mapping, not the main heap
    split = sampler.peak_worker_split
    assert split is not None
    assert split["anonymous"] >= 64 * 2**20
    assert sum(split.values()) == pytest.approx(sampler.peak_worker_bytes, rel=0.05)


def _sustained_row(**extra: object) -> dict[str, object]:
    """One row of results["sustained"] for model m64: 100 then 400 images, 80 images/s marginal."""
    return {
        "model": "m64",
        "images": [100, 400],
        "seconds": [3.0, 6.75],
        "cpu_seconds": [6.0, 13.5],
        "images_per_s": 80.0,
        "cpu_ms_per_image": 25.0,
        **extra,
    }


def test_physical_target_compares_the_sustained_rate_with_cores_over_cpu_per_image(tmp_path: Path) -> None:
    results = _results()
    # 2 cores at 20 ms of decode + inference per image: at most 100 images/s.
    results["physical_limit"] = {"m64": {"cpu_ms_per_image": 20.0, "images_per_s": 100.0, "images": 100}}
    results["sustained"] = [
        _sustained_row(
            cpu_ms_per_image_by_process={"python_workers": 19.0, "jvm": 5.5, "driver": 0.5, "other": 0.0},
            # Spark alone spends 5 ms per image: 20 / (20 + 5) = 0.8 of the limit at best.
            floor_seconds=[0.5, 0.8],
            floor_images_per_s=1000.0,
            floor_cpu_ms_per_image=5.0,
        )
    ]
    write_report(results, tmp_path)
    targets = {(t["model"], t["target"]): t for t in json.loads((tmp_path / "results.json").read_text())["targets"]}
    physical = targets[("m64", "Rescore sustained / physical limit")]
    assert physical["value"] == pytest.approx(0.8)
    assert physical["met"] is False
    assert physical["gap"] == pytest.approx(-0.1)
    readme = (tmp_path / "README.md").read_text()
    line = next(row for row in readme.splitlines() if row.startswith("| m64 | 20.00 |"))
    assert "100 in 3.0 s, 400 in 6.8 s" in line
    assert line.endswith("| 25.00 | 19.00 | 5.50 | 0.80 | 5.00 | 0.80 |")
    assert physical["note"] == "Spark's own 5.00 CPU ms per image leave at most 0.80"

    assert "| m64 | 20.00 | – | 100.0 |" in line  # older results: no rounds recorded
    assert "(best of three rounds)" in readme

    results["sustained"][0]["images_per_s"] = 95.0
    write_report(results, tmp_path)
    targets = {(t["model"], t["target"]): t for t in json.loads((tmp_path / "results.json").read_text())["targets"]}
    assert targets[("m64", "Rescore sustained / physical limit")]["met"] is True


def test_report_shows_the_limits_rounds_before_and_beside_the_sustained_runs(tmp_path: Path) -> None:
    results = _results()
    results["physical_limit"] = {
        "m64": {
            "cpu_ms_per_image": 20.0,
            "images_per_s": 100.0,
            "images": 100,
            "rounds_cpu_ms": [21.0, 22.5, 20.5, 20.0, 23.0],
            "rounds_beside_sustained": 2,
        }
    }
    results["sustained"] = [_sustained_row()]
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "| m64 | 20.00 | 21.00, 22.50, 20.50 · 20.00, 23.00 | 100.0 |" in readme
    assert "three before the model's timed rounds and two more, one before each pass of the sustained runs" in readme
    assert "(best of three rounds)" not in readme


def test_report_says_how_many_runs_of_each_size_the_sustained_rate_took_the_best_of(tmp_path: Path) -> None:
    results = _results()
    results["physical_limit"] = {"m64": {"cpu_ms_per_image": 20.0, "images_per_s": 100.0, "images": 100}}
    results["sustained"] = [_sustained_row()]  # recorded before the passes were: two each
    write_report(results, tmp_path)
    assert "two runs of different size (best of two each)" in (tmp_path / "README.md").read_text()

    results["sustained"] = [_sustained_row(passes=1)]  # quick mode: one pass
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "two runs of different size (one run each)" in readme
    assert "best of two each" not in readme


class _BurningPredictor:
    """Burns a known CPU time per batch, so the measured CPU per image has a floor."""

    def __init__(self, seconds_per_batch: float) -> None:
        self.seconds = seconds_per_batch
        self.batches = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        end = time.process_time() + self.seconds
        while time.process_time() < end:
            pass
        self.batches += 1
        return np.zeros((len(batch), 2), dtype=np.float32)


def test_physical_limit_is_cores_over_measured_cpu_per_image(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from include.bench import methods

    files = []
    for i in range(8):
        path = tmp_path / f"img_{i}.jpg"
        Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(path)
        files.append(path)
    manifest = {"input_size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    predictor = _BurningPredictor(0.08)  # 4 images per batch: at least 20 ms per image
    methods._POOL_PREDICTOR[:] = [{"manifest": manifest}, predictor]
    try:
        with ThreadPoolExecutor(1) as pool:
            limit = methods.physical_limit(pool, files, cores=2, batch_size=4, repeats=2)
    finally:
        methods._POOL_PREDICTOR.clear()
    assert predictor.batches == 8  # 2 repeats x 2 cores x 2 batches
    assert limit["cpu_ms_per_image"] >= 20.0
    assert limit["images_per_s"] == pytest.approx(2 * 1000 / limit["cpu_ms_per_image"])
    assert limit["images"] == 8
    assert len(limit["rounds_cpu_ms"]) == 2
    assert limit["cpu_ms_per_image"] == pytest.approx(min(limit["rounds_cpu_ms"]), abs=1e-4)


def test_the_limit_is_the_best_of_its_rounds_and_keeps_them_all() -> None:
    from include.bench.methods import limit_again, limit_of

    limit = limit_of([26.4, 27.0, 25.0], cores=2, images=900)
    assert limit["cpu_ms_per_image"] == 25.0
    assert limit["images_per_s"] == pytest.approx(80.0)  # 2 cores x 1000 / 25 ms
    assert limit["rounds_cpu_ms"] == [26.4, 27.0, 25.0]
    assert limit["images"] == 900
    with pytest.raises(ValueError, match="at least one measured round"):
        limit_of([], cores=2, images=900)

    # rounds measured later, beside the sustained runs, join the earlier ones in order
    later = limit_again(limit, limit_of([24.0], cores=2, images=900), cores=2)
    assert later["rounds_cpu_ms"] == [26.4, 27.0, 25.0, 24.0]
    assert later["cpu_ms_per_image"] == 24.0
    assert later["images_per_s"] == pytest.approx(2000 / 24.0)
    assert later["rounds_beside_sustained"] == 1
    slower = limit_again(later, limit_of([30.0], cores=2, images=900), cores=2)
    assert slower["cpu_ms_per_image"] == 24.0  # a slower round does not move the best
    assert slower["rounds_beside_sustained"] == 2
    assert slower["images"] == 900


def test_report_says_how_the_python_workers_were_pooled(tmp_path: Path) -> None:
    results = _results()
    write_report(results, tmp_path)
    assert "Python workers:" not in (tmp_path / "README.md").read_text()  # older results do not say
    results["settings"]["python_workers"] = "per method"
    write_report(results, tmp_path)
    assert "- **Python workers:** each Spark method its own" in (tmp_path / "README.md").read_text()
    results["settings"]["python_workers"] = "shared"
    write_report(results, tmp_path)
    assert "- **Python workers:** shared by all Spark methods" in (tmp_path / "README.md").read_text()


def test_report_says_how_many_rounds_each_model_got_within_the_budget(tmp_path: Path) -> None:
    results = _results()
    results["settings"].update(rounds={"m64": 3, "keras": 2}, rounds_planned=[2, 3], budget_s=2700)
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "timed rounds per method: 3 (m64), 2 (keras); 2 always, up to 3 while the run fits its 45-minute budget" in (
        readme
    )
    results["settings"]["rounds"] = 4  # results.json written when every model got the same count
    write_report(results, tmp_path)
    assert "4 timed rounds per method, interleaved" in (tmp_path / "README.md").read_text()


def test_report_says_how_many_images_each_model_got_and_why(tmp_path: Path) -> None:
    results = _results()
    write_report(results, tmp_path)
    assert "Images per timed run" not in (tmp_path / "README.md").read_text()  # older results do not say
    probe = {"run_seconds": 8.0, "sustained_seconds": 20.0}
    results["settings"]["images_sized"] = {
        "m64": {
            "most": 24000,
            "images": 15104,
            "unique_images": 6000,
            "probe_cpu_ms": 1.061,
            "probe_images": 1195,
            **probe,
        },
        "keras": {
            "most": 1800,
            "images": 1800,
            "unique_images": 1800,
            "probe_cpu_ms": 4.5,
            "probe_images": 223,
            **probe,
        },
    }
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert (
        "- **Images per timed run:** as many as make 8 s of work at the physical limit, from a round of the "
        "limit on the first images, as many as make a second of work (so the run's length and what Spark's fixed "
        "cost per job weighs do not follow the host's speed): 15,104 (m64: 1.06 CPU ms per image in a probe on "
        "1,195; 6,000 distinct files read 2.5 times); 1,800 (keras: 4.50 CPU ms per image in a probe on 223, the "
        "most the plan allows). The sustained runs differ by 20 s of work at the limit, sized the same way"
    ) in readme
    results["settings"]["images_sized"] = {"m64": {"most": 256, "images": 256, "unique_images": 256}}  # quick
    write_report(results, tmp_path)
    assert "Images per timed run" not in (tmp_path / "README.md").read_text()


def test_report_accounts_for_the_runs_time_by_phase(tmp_path: Path) -> None:
    results = _results()
    write_report(results, tmp_path)
    assert "Where the run's time went" not in (tmp_path / "README.md").read_text()  # older results
    results["duration_s"] = 1000.0
    results["phases"] = [
        {"model": "", "phase": "images", "seconds": 100.0},
        {"model": "m64", "phase": "timed rounds", "seconds": 600.0},
        {"model": "m64", "phase": "of which waking workers", "seconds": 50.0},
        {"model": "", "phase": "memory", "seconds": 200.0},
    ]
    write_report(results, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "| – | images | 100 | 10% |" in readme
    assert "| m64 | timed rounds | 600 | 60% |" in readme
    assert "| m64 | of which waking workers | 50 | (5%) |" in readme
    # the nested phase is not counted twice: 1000 - 100 - 600 - 200
    assert "| – | the rest (checking predictions, stopping sessions, the report) | 100 | 10% |" in readme
    assert "| | **the whole run** | **1000** | |" in readme


def test_report_says_where_the_returned_memory_runs_stopped(tmp_path: Path) -> None:
    results = _results()
    kept = [_memory_row(n, 400.0) for n in (50, 500, 5000)]
    results["memory"] = kept + [{**row, "allocator": "returned"} for row in kept]
    write_report(results, tmp_path)
    assert "runs stop at" not in (tmp_path / "README.md").read_text()
    results["memory"] = kept + [{**row, "allocator": "returned"} for row in kept[:2]]
    write_report(results, tmp_path)
    assert "The `returned` runs stop at 500 images" in (tmp_path / "README.md").read_text()
    assert "the largest size (5,000)" in (tmp_path / "README.md").read_text()
