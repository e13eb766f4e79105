"""The many-ingest-batches benchmark (include/bench/batches.py): its ratios, and a small run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_each_read_is_compared_with_sparks_defaults_on_the_unmerged_table() -> None:
    from include.bench.batches import summarise

    # Given the seconds of three reads per application (the first in a new JVM)
    reads = {
        "spark/batches": [10.0, 4.0, 6.0],
        "rescore/batches": [5.0, 2.0, 3.0],
        "spark/merged": [8.0, 1.0, 1.5],
        "rescore/merged": [4.0, 1.0, 1.0],
    }
    results = {"reads": {key: {"seconds": s, "ids": 9} for key, s in reads.items()}}

    summary = summarise(results)

    # Then the first read and the median of the later ones are each divided by Spark's defaults'
    assert summary["spark/batches"] == {"first": 10.0, "later": 5.0, "first_ratio": 1.0, "later_ratio": 1.0}
    assert summary["rescore/batches"] == {"first": 5.0, "later": 2.5, "first_ratio": 0.5, "later_ratio": 0.5}
    assert summary["spark/merged"] == {"first": 8.0, "later": 1.25, "first_ratio": 0.8, "later_ratio": 0.25}
    assert summary["rescore/merged"] == {"first": 4.0, "later": 1.0, "first_ratio": 0.4, "later_ratio": 0.2}


@pytest.mark.spark
def test_a_small_run_merges_the_table_and_every_read_counts_every_image(tmp_path: Path) -> None:
    # Given 40 batches of 3 images (past the 32 partitions from which Spark lists with a job)
    out = tmp_path / "ingest_batches.md"
    command = [sys.executable, "-m", "include.bench.batches", "--batches", "40", "--images-per-batch", "3"]
    command += ["--image-kib", "1", "--reads", "2", "--out", str(out)]

    # When the benchmark runs
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)

    # Then ingest's merge took the 40 partitions into one, and each of the four ways read 120 ids
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    results = record["results"]
    assert (results["partitions_before"], results["partitions_after"]) == (40, 1)
    assert sorted(results["reads"]) == ["rescore/batches", "rescore/merged", "spark/batches", "spark/merged"]
    assert {read["ids"] for read in results["reads"].values()} == {120}
    assert all(len(read["seconds"]) == 2 for read in results["reads"].values())
    page = out.read_text()
    assert "took the table from 40 to 1 partitions" in page
    assert page.count("| as ingested |") == 2 and page.count("| merged |") == 2
