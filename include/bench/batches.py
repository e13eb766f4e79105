"""Reading a table of many ingest batches: Spark's defaults against Rescore's session, before and
after ingest merges the batches, in the same run.

    python -m include.bench.batches --out docs/benchmarks/ingest_batches.md

Ingest writes one ``ingest_batch=<id>`` partition per micro-batch, and both ingest (its duplicate
check) and scoring (the selection of unscored images) read the ``image_id`` column of all of
them. The benchmark writes such a table (``--batches`` partitions of ``--images-per-batch`` rows
with ``--image-kib`` of incompressible bytes each, as the images table holds photos), then, each
way in a new Spark application (``local[2]``; the first read pays the JVM's warm-up), reads the
distinct ids ``--reads`` times:

- ``spark``: Spark's defaults (a listing job of one task per partition past 32 partitions, 4 MB
  counted per file when the read is cut into splits);
- ``rescore``: the session every Rescore job builds (``spark_jobs.session.get_spark``: one
  listing task per core, 64 KiB per file);

first on the table as written, then after ``spark_jobs.compaction.merge_batches`` has merged its
partitions in runs of 16 (what ingest does after every run; timed in an application of its own).
Ratios are against Spark's defaults on the unmerged table, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WAYS = ("spark", "rescore")
#: Spark's own values of the settings Rescore's session changes (spark_jobs.session.small_file_conf)
SPARK_DEFAULTS = {
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "10000",
    "spark.sql.files.openCostInBytes": str(4 * 1024 * 1024),
}
SESSION = {"spark.master": "local[2]", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}


def write_table(table: Path, batches: int, images_per_batch: int, image_kib: int, seed: int) -> int:
    """``batches`` partitions of one Parquet file each, as ingest writes them; returns the bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    blobs = [rng.bytes(image_kib * 1024) for _ in range(images_per_batch)]
    for batch in range(batches):
        folder = table / f"ingest_batch={batch}"
        folder.mkdir(parents=True, exist_ok=True)
        ids = [f"{batch:07d}-{i:05d}-" + "0" * 51 for i in range(images_per_batch)]  # 64 characters, as sha256
        columns = {"image_id": ids, "path": [f"/landing/{i}.jpg" for i in ids], "content": blobs}
        pq.write_table(pa.table(columns), folder / "part-00000.parquet", compression="zstd")
    return sum(f.stat().st_size for f in table.rglob("*.parquet"))


def read_ids(table: str, way: str, reads: int) -> dict[str, Any]:
    """In this process's new application: the seconds of each of ``reads`` reads of the distinct ids."""
    from spark_jobs.session import get_spark

    spark = get_spark("rescore-bench-batches", {**SESSION, **(SPARK_DEFAULTS if way == "spark" else {})})
    spark.sparkContext.setLogLevel("ERROR")
    try:
        seconds, ids = [], 0
        for _ in range(reads):
            started = time.perf_counter()
            ids = spark.read.parquet(table).select("image_id").distinct().count()
            seconds.append(round(time.perf_counter() - started, 3))
        return {"seconds": seconds, "ids": ids}
    finally:
        spark.stop()


def merge(table: str, up_to_batch: int) -> dict[str, Any]:
    """In this process's new application: ``merge_batches`` as ingest runs it, timed."""
    from spark_jobs.compaction import merge_batches
    from spark_jobs.ingest import images_writer_options
    from spark_jobs.session import get_spark

    spark = get_spark("rescore-bench-batches", SESSION)
    spark.sparkContext.setLogLevel("ERROR")
    try:
        started = time.perf_counter()
        merges = merge_batches(spark, table, up_to_batch=up_to_batch, options=images_writer_options())
        return {"seconds": round(time.perf_counter() - started, 3), "merges": len(merges)}
    finally:
        spark.stop()


def _in_new_application(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    done = subprocess.run(
        [sys.executable, "-m", "include.bench.batches", "--job", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the benchmark's job {args} failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def partitions(table: Path) -> int:
    return sum(1 for p in table.iterdir() if p.name.startswith("ingest_batch="))


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    table = workdir / "images"
    total = write_table(table, args.batches, args.images_per_batch, args.image_kib, args.seed)
    results: dict[str, Any] = {"bytes": total, "reads": {}}
    results["partitions_before"] = partitions(table)
    for way in WAYS:
        results["reads"][f"{way}/batches"] = _in_new_application("read", str(table), way, str(args.reads))
    results["merge"] = _in_new_application("merge", str(table), str(args.batches - 1))
    results["partitions_after"] = partitions(table)
    for way in WAYS:
        results["reads"][f"{way}/merged"] = _in_new_application("read", str(table), way, str(args.reads))
    return results


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per way and table: the first read (a new JVM) and the median of the later ones; each as a
    ratio to Spark's defaults on the unmerged table."""
    summary: dict[str, Any] = {}
    for key, read in results["reads"].items():
        seconds = read["seconds"]
        summary[key] = {"first": seconds[0], "later": statistics.median(seconds[1:]) if len(seconds) > 1 else None}
    base = summary["spark/batches"]
    for row in summary.values():
        row["first_ratio"] = round(row["first"] / base["first"], 2)
        if row["later"] is not None and base["later"]:
            row["later_ratio"] = round(row["later"] / base["later"], 2)
    return summary


def render(args: argparse.Namespace, results: dict[str, Any], summary: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Reading a table of many ingest batches",
        "",
        "Generated by `python -m include.bench.batches` (`make bench-batches`); do not edit by hand.",
        "",
        f"- **Machine:** {machine['cpu_model']}, 2 cores used (`local[2]`) of {machine['logical_cpus']}; "
        f"Python {machine['python']}, PySpark {machine['pyspark']}",
        f"- **Run:** {results['run_at']}, {results['wall_s']:.0f} s",
        f"- **Table:** {args.batches:,} `ingest_batch` partitions of {args.images_per_batch} images of "
        f"{args.image_kib} KiB each ({args.batches * args.images_per_batch:,} images, "
        f"{results['bytes'] / 1e9:.2f} GB), one file per partition, as ingest writes one partition per micro-batch",
        f"- **Merged:** `merge_batches` (runs of at least 16, as ingest does after each run) took the table from "
        f"{results['partitions_before']:,} to {results['partitions_after']:,} partitions in "
        f"{results['merge']['seconds']:.1f} s (a new application, every byte rewritten once)",
        "",
        f"Each row is a new Spark application reading the distinct `image_id`s {args.reads} times: the "
        "first read pays the JVM's warm-up, `later` is the median of the others. `spark`: Spark's defaults "
        "(a listing job of one task per partition past 32, 4 MB counted per file); `rescore`: every Rescore "
        "job's session (one listing task per core, 64 KiB per file). × is the time over Spark's defaults "
        "on the unmerged table (lower is faster).",
        "",
        "| table | session | reads (s) | first read (s) | × | later reads, median (s) | × |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, row in summary.items():
        way, state = key.split("/")
        table = "as ingested" if state == "batches" else "merged"
        reads = ", ".join(f"{s:.1f}" for s in results["reads"][key]["seconds"])
        later = "–" if row["later"] is None else f"{row['later']:.2f}"
        later_ratio = f"{row['later_ratio']:.2f}" if "later_ratio" in row else "–"
        lines.append(
            f"| {table} | {way} | {reads} | {row['first']:.2f} | {row['first_ratio']:.2f} | {later} | {later_ratio} |"
        )
    lines += ["", "Every read counted the same ids: " + ", ".join(str(r["ids"]) for r in results["reads"].values())]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m include.bench.batches", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2000, help="ingest_batch partitions (default %(default)s)")
    parser.add_argument("--images-per-batch", type=int, default=150)
    parser.add_argument("--image-kib", type=int, default=20, help="bytes of each image's content, in KiB")
    parser.add_argument("--reads", type=int, default=3, help="reads per application (the first pays the warm-up)")
    parser.add_argument("--seed", type=int, default=20261208)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/ingest_batches.md"))
    parser.add_argument("--job", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job is None and min(args.batches, args.images_per_batch, args.image_kib, args.reads) < 1:
        parser.error("--batches, --images-per-batch, --image-kib and --reads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from include.bench.__main__ import machine_info

    args = parse_args(argv)
    if args.job:
        kind, *rest = args.job
        result = read_ids(rest[0], rest[1], int(rest[2])) if kind == "read" else merge(rest[0], int(rest[1]))
        print(json.dumps(result))
        return 0
    started = time.perf_counter()
    run_at = datetime.now(UTC).isoformat(timespec="seconds")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rescore-bench-batches-"))
    try:
        results = measure(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results.update(run_at=run_at, wall_s=time.perf_counter() - started, machine=machine_info(2))
    summary = summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args, results, summary))
    given = {k: str(v) for k, v in vars(args).items() if k != "job"}
    record = {"args": given, "results": results, "summary": summary}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
