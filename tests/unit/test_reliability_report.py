"""The reliability table is built from the fault tests' own docstrings and their results."""

from __future__ import annotations

from pathlib import Path

import pytest

from include import reliability_report as rr

pytestmark = pytest.mark.unit

MODULE = '''
def test_worker_killed():
    """Fault: a worker killed.
    Does: kills worker 2
      by pid.
    Asserts: one row per image.
    """

def test_not_a_fault():
    """Just a test."""

def test_missing_asserts():
    """Fault: something.
    Does: something else.
    """
'''


def test_collects_only_tests_with_all_three_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rr, "ROOT", tmp_path)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_faults.py").write_text(MODULE)

    faults = rr.collect(tmp_path / "tests")

    assert faults == [
        rr.FaultTest(
            "tests/test_faults.py::test_worker_killed",
            "a worker killed.",
            "kills worker 2 by pid.",
            "one row per image.",
        )
    ]


def test_table_shows_each_result_and_marks_tests_that_did_not_run() -> None:
    faults = [
        rr.FaultTest("tests/a.py::test_a", "F1", "D1", "A1"),
        rr.FaultTest("tests/b.py::test_b", "F2", "D2", "A2"),
    ]

    text = rr.render(faults, {"tests/a.py::test_a": ("passed", 12.4)})

    assert "| F1 | D1 | A1 | passed in 12 s (`test_a`) |" in text
    assert "| F2 | D2 | A2 | not run (`test_b`) |" in text
    assert "The 1 fault tests that ran took 0.2 min in all" in text


def test_total_counts_only_the_fault_tests_and_is_absent_when_none_ran() -> None:
    faults = [
        rr.FaultTest("tests/a.py::test_a", "F1", "D1", "A1"),
        rr.FaultTest("tests/b.py::test_b", "F2", "D2", "A2"),
    ]
    results = {
        "tests/a.py::test_a": ("passed", 300.0),
        "tests/b.py::test_b": ("failed", 150.0),
        "tests/c.py::test_not_a_fault": ("passed", 900.0),
    }

    assert "took 7.5 min in all" in rr.render(faults, results)
    assert "in all" not in rr.render(faults, {})


def test_the_repository_documents_its_fault_tests() -> None:
    faults = rr.collect()
    assert len(faults) >= 3, [f.node_id for f in faults]
