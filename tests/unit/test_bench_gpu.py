"""The GPU benchmark's harness, run on the CPU with a few images: every in-process method scores
the same files with the same weights, and the report names the device and the target."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.unit._gpu_harness import run_gpu_harness

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

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


@pytest.mark.integration
def test_the_gpu_harness_runs_spark_on_a_standalone_worker_that_offers_a_gpu(tmp_path: Path) -> None:
    """One executor per GPU: the worker offers one GPU (a discovery script that reports address 0,
    as nvidia-smi's would on a one-GPU host) and every task is assigned it, two tasks at a time
    with half of it each. The job is told ``--device cpu`` here, so it scores on the CPU of a
    machine without CUDA."""

    discovery = tmp_path / "gpus.sh"
    discovery.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    discovery.chmod(0o755)
    args = ["--device", "cpu", "--images", "8", "--batch-size", "4", "--workers", "2", "--rounds", "1"]
    cluster = ["--cluster", "--cluster-gpus", "1", "--tasks-per-gpu", "2", "--gpu-discovery", str(discovery)]
    results, readme = run_gpu_harness(tmp_path, *args, *cluster)

    assert results["spark"]["mode"] == "standalone"
    assert results["spark"]["executor_gpus"] == 1
    assert results["spark"]["tasks_at_a_time"] == 2
    # Spark's scheduler gave both tasks (half a GPU each) the worker's GPU: what Rescore's UDF
    # reads to pick its device
    assert results["spark"]["task_devices"] == ["cuda:0"]
    methods = {m["method"]: m for m in results["methods"]}
    assert methods["rescore_spark"]["argmax_agreement"] == 1.0
    assert methods["rescore_spark"]["max_probability_diff"] < 1e-4
    assert "one executor of 2 cores, 1 GPU per executor, shared by 2 tasks at a time" in readme
    # the harness stopped the cluster it started: its master's port is closed, no worker runs
    port = int(results["spark"]["master"].rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the master still listens"
    pattern = str(tmp_path / "work" / "cluster")
    workers = subprocess.run(["pgrep", "-f", pattern], check=False, capture_output=True, text=True)
    assert workers.stdout == "", f"still running: {workers.stdout}"


@pytest.mark.spark
def test_the_harness_refuses_to_run_on_a_session_of_another_master(spark: SparkSession) -> None:
    """getOrCreate hands back a running session whatever master is asked for: the harness says so
    instead of measuring local mode under the name of a cluster, and leaves that session alone."""
    from include.bench.gpu import start_spark

    with pytest.raises(RuntimeError, match=r"already runs a Spark session on local\[2\].*in its own process"):
        start_spark(4, 2, "spark://127.0.0.1:1", gpus=1)
    assert spark.range(3).count() == 3
