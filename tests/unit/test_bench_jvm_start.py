"""The driver-start benchmark's summary and page (include/bench/jvm_start.py), from rounds written
by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from include.bench.jvm_start import render, summarise

pytestmark = pytest.mark.unit


def _round(options: str, archive: str, seconds: float, cpu: float) -> dict[str, Any]:
    return {"options": options, "archive": archive, "seconds": seconds, "cpu_s": cpu}


ROUNDS = [
    _round("short", "none", 8.0, 9.0),
    _round("short", "archive", 4.4, 5.0),
    _round("default", "none", 9.0, 14.0),
    _round("default", "archive", 5.7, 9.0),
    _round("short", "archive", 4.6, 5.4),
    _round("short", "none", 7.6, 8.6),
    _round("default", "archive", 5.5, 8.6),
    _round("default", "none", 8.6, 13.6),
]


def test_each_way_is_the_median_of_its_rounds_per_option_set() -> None:
    summary = summarise(ROUNDS)

    assert summary["short"]["none"] == {"rounds": 2, "seconds": pytest.approx(7.8), "cpu_s": pytest.approx(8.8)}
    assert summary["short"]["archive"] == {"rounds": 2, "seconds": pytest.approx(4.5), "cpu_s": pytest.approx(5.2)}
    assert summary["short"]["ratio"] == {"seconds": 0.577, "cpu_s": 0.591}
    assert summary["default"]["ratio"] == {"seconds": 0.636, "cpu_s": 0.638}


def test_an_option_set_measured_one_way_only_has_no_ratio() -> None:
    summary = summarise([r for r in ROUNDS if not (r["options"] == "default" and r["archive"] == "archive")])

    assert "ratio" not in summary["default"]
    assert set(summary["default"]) == {"none"}


def test_the_page_has_a_row_per_way_and_the_ratios() -> None:
    results = {
        "started_at": "2026-12-07 10:40 UTC",
        "machine": {
            "cpu_model": "AMD EPYC",
            "cores_used": 2,
            "python": "3.11.7",
            "pyspark": "4.2.0",
            "java": "Java 17",
        },
        "note": "dedicated machine",
        "archive": {"path": "spark-driver-x.jsa", "mib": 179.4, "made_in_s": 21.3},
        "rounds_per_way": 2,
        "rounds": ROUNDS,
        "summary": summarise(ROUNDS),
    }

    page = render(results)

    assert "| short jobs (`make demo`, `make test`) | none | 7.80 | 8.80 |" in page
    assert "| short jobs (`make demo`, `make test`) | archive | 4.50 | 5.20 |" in page
    assert "| the JVM's defaults | archive | 5.60 | 8.80 |" in page
    assert "job time **0.58x**, CPU **0.59x** (3.6 CPU s less per job)" in page
    assert "job time **0.64x**, CPU **0.64x** (5.0 CPU s less per job)" in page
    assert "179 MiB (made in 21.3 s for this run" in page
    assert "- machine: AMD EPYC, 2 cores; Python 3.11.7, Java 17, pyspark 4.2.0" in page


def test_only_the_option_sets_asked_for_are_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from include import jvm_archive
    from include.bench import jvm_start

    archive = tmp_path / "spark-driver-x.jsa"
    archive.write_bytes(b"\0" * 1024)
    monkeypatch.setattr(jvm_archive, "archive_path", lambda: archive)
    submitted: list[str] = []

    def run_job(options: str) -> dict[str, float]:
        submitted.append(options)
        return {"seconds": 1.0, "cpu_s": 1.0}

    monkeypatch.setattr(jvm_start, "run_job", run_job)

    assert jvm_start.main(["--options", "short", "--rounds", "2", "--out", str(tmp_path / "start.md")]) == 0

    rounds = json.loads((tmp_path / "start.json").read_text())["rounds"]
    assert [(r["options"], r["archive"]) for r in rounds] == [
        ("short", "none"),
        ("short", "archive"),
        ("short", "archive"),
        ("short", "none"),
    ]
    # the untimed first job, then 4 timed: none of them with the JVM's default options (empty)
    assert len(submitted) == 5 and all("TieredStopAtLevel=1" in options for options in submitted)
    page = (tmp_path / "start.md").read_text()
    assert "short jobs" in page and "the JVM's defaults" not in page


def test_an_unknown_option_set_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    from include.bench import jvm_start

    with pytest.raises(SystemExit):
        jvm_start.main(["--options", "short,fast"])

    assert "unknown JVM option set ['fast']: choose from short, default" in capsys.readouterr().err
