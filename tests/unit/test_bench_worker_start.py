"""The worker-start benchmark's summary and page (include/bench/worker_start.py), from rounds
written by hand."""

from __future__ import annotations

from typing import Any

import pytest

from include.bench.worker_start import render, summarise

pytestmark = pytest.mark.unit


def _round(mode: str, seconds: float, cpu: float, uss: list[float], pss: float) -> dict[str, Any]:
    return {
        "mode": mode,
        "seconds": seconds,
        "python_cpu_s": cpu,
        "workers": len(uss),
        "worker_uss_mib": uss,
        "group_pss_mib": pss,
    }


ROUNDS = [
    _round("pyspark", 3.5, 5.2, [230, 234], 500),
    _round("rescore", 3.6, 3.4, [100, 110], 300),
    _round("rescore", 3.6, 3.8, [108, 112], 310),
    _round("pyspark", 3.7, 5.0, [232, 236], 510),
]


def test_each_way_is_the_median_of_its_rounds_and_rescores_is_divided_by_pysparks() -> None:
    summary = summarise(ROUNDS)

    assert summary["pyspark"] == {
        "rounds": 2,
        "seconds": 3.6,
        "python_cpu_s": pytest.approx(5.1),
        "worker_uss_mib": 233,
        "group_pss_mib": 505,
        "workers": 2,
    }
    assert summary["rescore"]["python_cpu_s"] == pytest.approx(3.6)
    assert summary["rescore"]["worker_uss_mib"] == 109
    assert summary["ratio"] == {"seconds": 1.0, "python_cpu_s": 0.706, "worker_uss_mib": 0.468, "group_pss_mib": 0.604}


def test_the_page_has_a_row_per_way_and_the_ratios() -> None:
    results = {
        "started_at": "2026-12-07 08:20 UTC",
        "machine": {"cpu_model": "AMD EPYC", "cores_used": 2, "python": "3.11.7", "torch": "2.13.0"},
        "note": "dedicated machine",
        "images": 128,
        "batch_size": 32,
        "rounds": ROUNDS,
        "summary": summarise(ROUNDS),
    }

    page = render(results)

    assert "| PySpark's (each worker imports PyTorch) | 3.60 | 5.10 | 233 | 505 (2 workers) |" in page
    assert "| Rescore's (PyTorch imported before the fork) | 3.60 | 3.60 | 109 | 305 (2 workers) |" in page
    assert "job time **1.00x**" in page and "**0.71x**" in page and "**0.47x** (124 MiB less per worker)" in page
    assert "together **0.60x**" in page and "2 rounds each" in page
    assert "- machine: AMD EPYC, 2 cores; Python 3.11.7, torch 2.13.0" in page
