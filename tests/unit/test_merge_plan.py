"""Which ingest batches a merge takes (spark_jobs.compaction.plan_merges): runs of small,
consecutive, committed batch folders, each run within the target size."""

from __future__ import annotations

import pytest

from spark_jobs.compaction import plan_merges

pytestmark = pytest.mark.unit


def _folders(sizes: dict[int, int]) -> dict[int, list[tuple[str, int]]]:
    return {batch: [(f"part-{batch}.parquet", size)] for batch, size in sizes.items()}


def test_small_committed_batches_are_merged_in_runs_that_fit_the_target() -> None:
    # Given ten committed batches of 30 bytes and a target of 100
    folders = _folders(dict.fromkeys(range(10), 30))

    # When merges are planned with runs of at least 2
    runs = plan_merges(folders, up_to_batch=9, min_batches=2, target_bytes=100)

    # Then each run holds as many consecutive batches as fit (3 x 30 <= 100); batch 9, alone, waits
    assert runs == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_uncommitted_batches_and_large_folders_end_a_run_and_are_never_taken() -> None:
    # Given batches 0-3 small, 4 as large as the target, 5-7 small, and 8-9 not committed yet
    sizes = {0: 10, 1: 10, 2: 10, 3: 10, 4: 100, 5: 10, 6: 10, 7: 10, 8: 10, 9: 10}

    runs = plan_merges(_folders(sizes), up_to_batch=7, min_batches=3, target_bytes=100)

    # Then the large batch and the uncommitted ones stay where they are
    assert runs == [[0, 1, 2, 3], [5, 6, 7]]


def test_a_run_shorter_than_the_minimum_waits_for_more_batches() -> None:
    # Given gaps in the ids (batches whose folders another merge took) and short runs
    folders = _folders({3: 10, 7: 10, 8: 60, 9: 50})

    # Then only runs of min_batches folders are merged; 8 + 9 would pass the target
    assert plan_merges(folders, up_to_batch=9, min_batches=2, target_bytes=100) == [[3, 7, 8]]
    assert plan_merges(folders, up_to_batch=9, min_batches=4, target_bytes=100) == []
