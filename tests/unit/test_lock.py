"""The lock file is the install contract: everything pinned, and Spark's client matches Spark."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _lock_pins() -> dict[str, str]:
    pins = {}
    for raw in (ROOT / "requirements.lock").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        assert match, f"requirements.lock line is not an exact pin: {line!r}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_pyspark_and_pyspark_client_versions_are_equal() -> None:
    # Given the installed environment, When both distributions are asked, Then they agree
    # (a different pyspark-client breaks plain-Python SparkSession creation).
    assert version("pyspark") == version("pyspark-client")


def test_lock_pins_pyspark_and_client_to_the_same_version() -> None:
    pins = _lock_pins()
    assert pins["pyspark"] == pins["pyspark-client"]


def test_every_requirement_in_requirements_in_is_pinned_in_the_lock() -> None:
    pins = _lock_pins()
    for line in (ROOT / "requirements.in").read_text().splitlines():
        name = re.split(r"[=<>\[;\s]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
        if name and not name.startswith("#"):
            assert name in pins, f"{name} is in requirements.in but not pinned in requirements.lock: run make lock"


def test_installed_versions_match_the_lock() -> None:
    pins = _lock_pins()
    for name in ("apache-airflow", "pyspark", "pyarrow", "pandas", "torch", "pillow"):
        assert version(name) == pins[name], f"{name} differs from the lock: run make install"
