"""Python worker start: PySpark's daemon against Rescore's preloading daemon, in the same run.

    python -m include.bench.worker_start --out docs/benchmarks/worker_start.md

Every round runs Rescore's scoring job (the example CNN at 64 px, two batches per core) on
Python workers started for it: Spark keeps a pool of workers, and a daemon, per distinct
environment of a UDF, so a new value of a variable in ``sc.environment`` gives the job a new
daemon and new workers, as a new application's executor would. The two ways alternate:

- ``pyspark``: the daemon imports nothing first (``RESCORE_PRELOAD`` empty: the daemon module
  goes straight to PySpark's own ``daemon.manager()``); each worker imports PyTorch itself;
- ``rescore``: ``spark_jobs.worker_daemon`` as every Rescore job runs it: PyTorch, NumPy and
  Pillow imported once in the daemon, which then forks the workers.

Measured per round: the job's wall time, the CPU of the new daemon and its workers over the job,
and each new process's private memory (USS: pages no other process shares) after it.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil
    from pyspark.sql import SparkSession

log = logging.getLogger("rescore.bench.worker_start")

MODES = ("pyspark", "rescore")
#: the packages whose versions the page names (from :func:`include.bench.__main__.machine_info`)
VERSIONS = ("pyspark", "torch", "numpy", "pillow")
MIB = 2**20


def start_spark(cores: int, batch_size: int) -> SparkSession:
    """The benchmark's session, its executors running Rescore's daemon (each round picks what it
    preloads)."""
    from include.bench.__main__ import start_spark as bench_spark
    from spark_jobs.session import DAEMON_MODULE, WORKER_DAEMON, local_daemon_conf

    daemon = {DAEMON_MODULE: WORKER_DAEMON}
    return bench_spark(cores, batch_size, {**daemon, **local_daemon_conf(daemon)})


def _python_processes() -> dict[int, psutil.Process]:
    from include.bench.measure import is_python_worker, tree

    return {proc.pid: proc for proc in tree() if is_python_worker(proc)}


def _uss_mib(proc: psutil.Process) -> float:
    return float(proc.memory_full_info().uss) / MIB


def _pss_mib(proc: psutil.Process) -> float:
    return float(proc.memory_full_info().pss) / MIB


def run_round(
    spark: SparkSession, ctx: Any, model_key: str, folder: Path, out: Path, *, mode: str, tag: str
) -> dict[str, Any]:
    """One scoring job on new Python workers started the ``mode`` way; its figures."""
    from include.bench.measure import cpu_between, tree_cpu_by_process
    from include.bench.methods import WORKER_ENV, read_files, run_rescore
    from spark_jobs.worker_daemon import PRELOAD_ENV

    environment = spark.sparkContext.environment
    environment[WORKER_ENV] = f"worker-start-{tag}"  # a new pool: a new daemon and new workers
    if mode == "pyspark":
        environment[PRELOAD_ENV] = ""
    else:
        environment.pop(PRELOAD_ENV, None)
    before = _python_processes()
    cpu_before = tree_cpu_by_process()
    started = time.perf_counter()
    run_rescore(ctx, model_key, read_files(spark, folder, partitions=ctx.cores), out)
    seconds = time.perf_counter() - started
    cpu = cpu_between(cpu_before, tree_cpu_by_process())["python_workers"]
    new = {pid: proc for pid, proc in _python_processes().items() if pid not in before}
    daemons = [proc for proc in new.values() if proc.ppid() not in new]
    workers = [proc for proc in new.values() if proc.ppid() in new]
    if len(daemons) != 1 or not workers:
        raise RuntimeError(
            f"expected one new daemon and its workers, found {len(daemons)} daemons, {len(workers)} workers"
        )
    return {
        "mode": mode,
        "seconds": round(seconds, 3),
        "python_cpu_s": round(cpu, 3),
        "workers": len(workers),
        "worker_uss_mib": [round(_uss_mib(proc), 1) for proc in workers],
        "group_pss_mib": round(sum(_pss_mib(proc) for proc in [*daemons, *workers]), 1),
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode the medians over its rounds; ``rescore / pyspark`` ratios of each."""
    summary: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in rounds if r["mode"] == mode]
        if not mine:
            continue
        worker = statistics.median(uss for r in mine for uss in r["worker_uss_mib"])
        workers = max(r["workers"] for r in mine)
        summary[mode] = {
            "rounds": len(mine),
            "seconds": statistics.median(r["seconds"] for r in mine),
            "python_cpu_s": statistics.median(r["python_cpu_s"] for r in mine),
            "worker_uss_mib": worker,
            "group_pss_mib": statistics.median(r["group_pss_mib"] for r in mine),
            "workers": workers,
        }
    if all(mode in summary for mode in MODES):
        mine, base = summary["rescore"], summary["pyspark"]
        summary["ratio"] = {
            key: round(mine[key] / base[key], 3)
            for key in ("seconds", "python_cpu_s", "worker_uss_mib", "group_pss_mib")
            if base[key]
        }
    return summary


def render(results: dict[str, Any]) -> str:
    """The markdown page for :func:`measure`'s results."""
    summary, machine = results["summary"], results["machine"]
    lines = [
        "# Python worker start",
        "",
        f"Generated by `python -m include.bench.worker_start` on {results['started_at']}; do not edit by hand.",
        "",
        f"- machine: {machine['cpu_model']}, {machine['cores_used']} cores; Python {machine['python']}"
        + "".join(f", {name} {machine[name]}" for name in VERSIONS if name in machine),
        f"- each round: Rescore's scoring job on {results['images']} images (example CNN, 64 px, batches of "
        f"{results['batch_size']}), one task per core, on a new daemon and new Python workers; "
        f"the two ways alternate, {summary.get('pyspark', {}).get('rounds', 0)} rounds each",
        f"- {results['note']}",
        "",
        "| daemon | job s | Python CPU s | a worker's own MiB (USS) | daemon and workers MiB (PSS) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    titles = {
        "pyspark": "PySpark's (each worker imports PyTorch)",
        "rescore": "Rescore's (PyTorch imported before the fork)",
    }
    for mode in MODES:
        if mode in summary:
            s = summary[mode]
            lines.append(
                f"| {titles[mode]} | {s['seconds']:.2f} | {s['python_cpu_s']:.2f} | {s['worker_uss_mib']:.0f} | "
                f"{s['group_pss_mib']:.0f} ({s['workers']} workers) |"
            )
    ratio = summary.get("ratio")
    if ratio:
        per_worker = summary["pyspark"]["worker_uss_mib"] - summary["rescore"]["worker_uss_mib"]
        lines += [
            "",
            f"Rescore's daemon / PySpark's (medians): job time **{ratio['seconds']:.2f}x**, CPU of the Python "
            f"processes **{ratio['python_cpu_s']:.2f}x**, a worker's private memory "
            f"**{ratio['worker_uss_mib']:.2f}x** ({per_worker:.0f} MiB less per worker), the daemon and its "
            f"workers together **{ratio['group_pss_mib']:.2f}x**: the daemon's copy of PyTorch is shared by "
            "every worker it forks, so an executor saves a worker's import for each worker after the first.",
        ]
    lines += [
        "",
        "Memory is read after the job, when the workers have loaded and run the model: a worker's own",
        "memory is its USS (pages no other process maps); the group's is the sum of their PSS (each",
        "shared page divided among the processes that map it), what they take of the machine's memory.",
        "The CPU includes the daemon's own start: Rescore's daemon imports PyTorch once, where",
        "PySpark's lets every worker import it. The job's wall time hardly moves on a machine with a",
        "core per worker (the imports run side by side either way); what is saved is CPU and memory,",
        "one import's worth per worker.",
        "",
    ]
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from include.bench.__main__ import machine_info
    from include.bench.data import generate_images, link_set
    from include.bench.methods import BenchContext
    from include.bench.models import prepare_models

    workdir = Path(args.workdir).resolve()
    images = args.cores * args.batch_size * 2
    model = prepare_models(workdir, ["small_cnn_64"])[0]
    files = generate_images(workdir / "images-worker-start", images, seed=20261207)
    folder = link_set(files, workdir / "sets" / "worker-start")
    spark = start_spark(args.cores, args.batch_size)
    try:
        ctx = BenchContext(spark, args.cores, args.batch_size)
        payload = {"manifest": model.version.manifest.to_dict(), "weights": model.version.weights}
        ctx.payloads[model.key] = spark.sparkContext.broadcast(payload)
        out = workdir / "out" / "worker-start"
        run_round(spark, ctx, model.key, folder, out, mode="rescore", tag="warm-up")  # the JVM's first job, untimed
        rounds = []
        for i in range(args.rounds):
            for mode in MODES if i % 2 == 0 else tuple(reversed(MODES)):
                result = run_round(spark, ctx, model.key, folder, out, mode=mode, tag=f"{mode}-{i}")
                log.info("%s", result)
                rounds.append(result)
    finally:
        spark.stop()
    return {
        "started_at": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": machine_info(args.cores),
        "note": args.note,
        "images": images,
        "batch_size": args.batch_size,
        "rounds": rounds,
        "summary": summarise(rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="worker_start", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default="docs/benchmarks/worker_start.md", help="markdown file (JSON beside it)")
    parser.add_argument("--workdir", default="var/bench", help="models and images (shared with make bench)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="local[N] (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each way, alternating (default 3)")
    parser.add_argument("--note", default="dedicated machine", help="one line about the conditions of the run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from include.bench.report import write_page

    write_page(measure(args), Path(args.out), render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
