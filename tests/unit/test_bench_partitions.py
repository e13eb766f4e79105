"""How the benchmark splits a run into Spark partitions (no Spark)."""

from __future__ import annotations

import pytest

from include.bench.__main__ import spark_partitions

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("images", "cpu_s_per_image", "expected"),
    [
        (64, 0.030, 2),  # never fewer partitions than cores
        (300, 0.030, 4),  # 64 images each (two batches of 32), about 2 s of work
        (1200, 0.030, 16),  # capped at 8 per core
        (1024, 0.0025, 2),  # a cheap model: 1 s of work takes 400 images, so 2 partitions
        (12000, 0.0025, 16),
    ],
)
def test_partitions_carry_two_batches_and_a_second_of_work_and_at_most_eight_per_core(
    images: int, cpu_s_per_image: float, expected: int
) -> None:
    assert spark_partitions(images, cores=2, batch_size=32, cpu_s_per_image=cpu_s_per_image) == expected
