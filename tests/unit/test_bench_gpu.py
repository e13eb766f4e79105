"""The GPU benchmark's harness, run on the CPU with a few images: every in-process method scores
the same files with the same weights, and the report names the device and the target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_the_gpu_harness_runs_on_the_cpu_and_reports_against_the_pytorch_loop(tmp_path: Path) -> None:
    from include.bench.gpu import main

    out = tmp_path / "out"
    args = ["--device", "cpu", "--images", "12", "--batch-size", "4", "--workers", "0", "--rounds", "1"]
    assert main([*args, "--workdir", str(tmp_path / "work"), "--out", str(out), "--skip-spark"]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["device"] == "cpu"
    assert results["images"] == 12
    methods = {m["method"]: m for m in results["methods"]}
    assert set(methods) == {"pytorch_loop", "rescore_partition"}
    assert methods["pytorch_loop"]["ratio_to_pytorch_loop"] == pytest.approx(1.0)
    assert methods["rescore_partition"]["images_per_s_median"] > 0
    # Rescore's UDF body and the plain loop agree on every probability (same decode, same weights)
    assert results["max_probability_diff"] < 1e-4
    assert methods["rescore_partition"]["argmax_agreement"] == 1.0
    assert results["agree"] is True
    assert results["target"]["method"] == "rescore_partition"
    assert results["target"]["value"] == pytest.approx(methods["rescore_partition"]["ratio_to_pytorch_loop"])
    readme = (out / "README.md").read_text()
    assert "| rescore_partition |" in readme
    assert "Target: Rescore's job at least 0.8 of the PyTorch loop" in readme


def test_agreement_counts_other_argmaxes_and_the_largest_difference() -> None:
    import numpy as np

    from include.bench.gpu import agreement

    reference = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]], dtype=np.float32)
    other = np.array([[0.7, 0.3], [0.2, 0.8], [0.45, 0.55], [0.1, 0.9]], dtype=np.float32)
    result = agreement(reference, other)
    assert result["argmax_agreement"] == pytest.approx(0.75)
    assert result["max_probability_diff"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="cannot be compared"):
        agreement(reference, other[:3])
