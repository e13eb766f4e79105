"""How the benchmark splits a run into Spark partitions (no Spark)."""

from __future__ import annotations

import pytest

from include.bench.__main__ import PLANS, spark_partitions, warmup_count

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
