"""How the benchmark splits a run into Spark partitions (no Spark)."""

from __future__ import annotations

import pytest

from include.bench.__main__ import spark_partitions

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (64, 2),  # one batch-pair would leave a core idle: never fewer partitions than cores
        (256, 4),  # 64 images each: two model batches of 32
        (1200, 16),  # capped at 8 per core
        (12000, 16),
    ],
)
def test_partitions_keep_two_batches_each_and_at_most_eight_per_core(images: int, expected: int) -> None:
    assert spark_partitions(images, cores=2, batch_size=32) == expected
