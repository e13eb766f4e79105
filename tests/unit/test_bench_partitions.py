"""How the benchmark splits a run into Spark partitions (no Spark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.bench.__main__ import (
    PLANS,
    next_extra_round,
    sized_count,
    sized_sustained,
    spark_partitions,
    warmup_count,
)
from include.bench.methods import packed_partitions, partition_bytes_for, split_bytes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("images", "cpu_s_per_image", "expected"),
    [
        (64, 0.030, 2),  # never fewer partitions than cores
        (300, 0.030, 4),  # 64 images each (two batches of 32), about 2 s of work
        (1200, 0.030, 16),  # capped at 8 per core
        (1024, 0.0025, 2),  # a cheap model: 1 s of work takes 400 images, so 2 partitions
        (12000, 0.0025, 16),
        (6000, 0.0006, 4),  # 1,667 images make a second: 3 would fit, rounded up to a multiple of the cores
        (2400, 0.0055, 14),  # 13 fit
    ],
)
def test_partitions_carry_two_batches_and_a_second_of_work_and_at_most_eight_per_core(
    images: int, cpu_s_per_image: float, expected: int
) -> None:
    assert spark_partitions(images, cores=2, batch_size=32, cpu_s_per_image=cpu_s_per_image) == expected


@pytest.mark.parametrize(
    ("least", "images", "cpu_s_per_image", "seconds", "expected"),
    [
        (128, 6000, 0.0015, 2.0, 1334),  # a cheap model: 2 s of single-core work takes 1,334 images
        (128, 900, 0.025, 2.0, 128),  # an expensive one: the plan's least is already 3 s of work
        (128, 100, 0.0015, 2.0, 100),  # never more than a timed run
        (32, 256, 0.0015, 0.0, 32),  # quick mode: the plan's least only
    ],
)
def test_warm_up_carries_the_plans_seconds_of_work_within_a_timed_run(
    least: int, images: int, cpu_s_per_image: float, seconds: float, expected: int
) -> None:
    assert warmup_count(least, images, cpu_s_per_image, seconds) == expected


def test_only_the_full_run_sizes_its_warm_up_by_work() -> None:
    assert PLANS["full"].warmup_seconds >= 1.0
    assert PLANS["quick"].warmup_seconds == 0.0


@pytest.mark.parametrize(
    ("most", "cpu_s_per_image", "expected"),
    [
        (1800, 0.0264, 576),  # 8 s x 2 cores / 26.4 ms = 606 images, to the nearest 64
        (1800, 0.0476, 320),  # 1.8 times slower: 336
        (24000, 0.00106, 15104),  # a cheap model gets many more than a batch per partition
        (24000, 0.0004, 24000),  # never more than the most
        (1800, 2.0, 64),  # a model far too slow for 8 s still gets a batch per core
    ],
)
def test_timed_runs_carry_the_plans_seconds_of_work_at_the_limit(
    most: int, cpu_s_per_image: float, expected: int
) -> None:
    assert sized_count(most, cpu_s_per_image, run_seconds=8.0, cores=2, multiple=64) == expected


@pytest.mark.parametrize(
    ("cpu_s_per_image", "expected"),
    [
        (0.0264, (300, 2100)),  # 20 s x 2 cores / 26.4 ms = 1,515 more images: 6 copies of the 300
        (0.0476, (300, 1200)),  # 840 more: 3 copies
        (0.0169, (300, 2400)),  # 2,367 more: 8 copies, but 2,400 at most
        (2.0, (300, 600)),  # at least one copy more than the base
    ],
)
def test_sustained_runs_differ_by_whole_copies_of_the_base_carrying_the_plans_seconds(
    cpu_s_per_image: float, expected: tuple[int, int]
) -> None:
    assert sized_sustained((300, 2400), cpu_s_per_image, seconds=20.0, cores=2) == expected


def test_only_the_full_run_sizes_its_runs_by_work() -> None:
    assert PLANS["full"].run_seconds is not None and PLANS["full"].sustained_seconds is not None
    assert PLANS["quick"].run_seconds is None
    for plan in PLANS.values():  # every sustained pair copies its base set a whole number of times
        for low, high in plan.sustained.values():
            assert high % low == 0


def test_extra_rounds_go_to_the_model_with_fewest_in_order_and_pass_over_one_that_does_not_fit() -> None:
    seconds = {"cnn": 100.0, "resnet": 200.0, "mobilenet": 300.0}
    assert next_extra_round({"cnn": 2, "resnet": 2, "mobilenet": 2}, seconds, 3, 1000.0) == "cnn"
    assert next_extra_round({"cnn": 3, "resnet": 2, "mobilenet": 2}, seconds, 3, 1000.0) == "resnet"
    # resnet's round (200 s) does not fit in 150 s, but a cheaper model with the most rounds left does
    assert next_extra_round({"cnn": 2, "resnet": 2, "mobilenet": 2}, seconds, 4, 150.0) == "cnn"
    assert next_extra_round({"cnn": 3, "resnet": 2, "mobilenet": 2}, seconds, 3, 150.0) is None
    assert next_extra_round({"cnn": 3, "resnet": 3, "mobilenet": 3}, seconds, 3, 10_000.0) is None


def test_extra_rounds_stop_at_the_budget_whatever_the_host_speed() -> None:
    """The loop Bench.extra_rounds runs, with a clock that advances by each round's time."""

    def schedule(left: float, seconds: dict[str, float]) -> dict[str, int]:
        done = dict.fromkeys(seconds, 2)
        while (key := next_extra_round(done, seconds, 3, left)) is not None:
            done[key] += 1
            left -= seconds[key]
            assert left >= 0
        return done

    fast = {"cnn": 100.0, "resnet": 150.0, "mobilenet": 200.0}
    assert schedule(600.0, fast) == {"cnn": 3, "resnet": 3, "mobilenet": 3}
    slow = {"cnn": 115.0, "resnet": 175.0, "mobilenet": 220.0}
    assert schedule(450.0, slow) == {"cnn": 3, "resnet": 3, "mobilenet": 2}
    assert schedule(100.0, slow) == {"cnn": 2, "resnet": 2, "mobilenet": 2}


def test_every_plan_times_at_least_two_rounds_and_the_quick_one_no_more() -> None:
    for plan in PLANS.values():
        assert 2 <= plan.least_rounds <= plan.most_rounds
    assert PLANS["quick"].most_rounds == PLANS["quick"].least_rounds
    assert (PLANS["quick"].budget_s, PLANS["full"].budget_s) == (5 * 60, 45 * 60)
    # the full run's sustained rate is the best of two runs of each size; quick mode runs one
    assert (PLANS["quick"].sustained_passes, PLANS["full"].sustained_passes) == (1, 2)
    # the full run gives each Spark method workers of its own; quick mode cannot afford the
    # wake-up runs that takes and shares one pool
    assert (PLANS["quick"].shared_python_workers, PLANS["full"].shared_python_workers) == (True, False)


def test_files_are_packed_largest_first_into_partitions_up_to_the_limit() -> None:
    sizes = [5, 10, 1, 9, 5]  # each file also costs one byte to open
    # 10 -> 11; 9 would make 20 > 12: new; 5 -> 15 > 12: new (6); 5 -> 11 (12); 1 -> 13 > 12: new
    assert packed_partitions(sizes, 12, open_cost=1) == 4
    assert packed_partitions(sizes, 19, open_cost=1) == 3  # {10}, {9, 5}, {5, 1}
    assert packed_partitions(sizes, 20, open_cost=1) == 2  # {10, 9}, {5, 5, 1}


def test_the_partition_size_is_the_least_that_packs_into_the_partitions_asked() -> None:
    sizes = [5, 10, 1, 9, 5]
    assert partition_bytes_for(sizes, 2, open_cost=1) == 20
    assert partition_bytes_for(sizes, 1, open_cost=1) == 34  # 30 bytes and the first four files' opening
    assert partition_bytes_for(sizes, 5, open_cost=1) == 11  # never below the largest file and its opening


def test_images_of_very_different_sizes_are_packed_by_count() -> None:
    """Scoring costs about the same per image: with Spark's default opening cost (4 MiB) 10 files
    of 40 KB and 30 of 4 KB make 4 partitions of 10 files, the least limit being what the ten
    large files take (by bytes they would hold 4, 4, 21 and 11 files)."""
    sizes = [40_000] * 10 + [4_000] * 30
    opening = 4 * 2**20
    assert partition_bytes_for(sizes, 4) == 9 * (40_000 + opening) + 40_000
    # by bytes (an opening cost of 1 byte): four large files, their openings and 3 bytes (the
    # partitions hold 4, 4, 21 and 11 files)
    assert partition_bytes_for(sizes, 4, open_cost=1) == 4 * 40_000 + 3


def test_a_folders_split_size_counts_its_images_only(tmp_path: Path) -> None:
    """The harness plans a run's split size from the folder before timing it."""
    for i in range(40):
        (tmp_path / f"{i:03d}.jpg").write_bytes(b"x" * (40_000 if i % 4 == 0 else 4_000))
    (tmp_path / "notes.txt").write_bytes(b"x" * 10_000_000)  # not read by the benchmark
    assert split_bytes(tmp_path, 4) == 9 * (40_000 + 4 * 2**20) + 40_000


def test_a_folder_without_images_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"no \*\.jpg images"):
        split_bytes(tmp_path, 2)
