"""Generating benchmark images in a process pool beside a live Spark session."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from include.bench.data import generate_images

pytestmark = pytest.mark.spark


def test_the_generating_pool_does_not_close_the_drivers_connection_to_the_jvm(
    spark: SparkSession, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A forked child inherits the driver's py4j connection and closes it on exit ("Closing down
    clientserver connection" in each child; in a benchmark run the driver's next call then met
    "Connection reset by peer"). A spawned child starts without it."""
    assert spark.range(3).count() == 3  # the driver's connection is open before the pool starts
    py4j = logging.getLogger("py4j.clientserver")
    handler = logging.StreamHandler(sys.stderr)  # what a forked child would inherit and write to
    old_level = py4j.level
    py4j.addHandler(handler)
    py4j.setLevel(logging.INFO)
    try:
        files = generate_images(tmp_path / "img", 4, seed=3, processes=2)
        err = capfd.readouterr().err
    finally:
        py4j.removeHandler(handler)
        py4j.setLevel(old_level)
    assert len(files) == 4
    assert "Closing down clientserver connection" not in err
    assert spark.range(5).count() == 5
