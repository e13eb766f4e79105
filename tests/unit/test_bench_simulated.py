"""The simulated accelerator that rehearses the GPU benchmark on a machine without a GPU: the same
probabilities whether it gets 8-bit pixels (Rescore's GPU path) or normalised ones (the PyTorch
loop's), a wait proportional to the batch, and the harness's report saying no GPU ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spark_jobs.model_store import Manifest
from tests.unit._gpu_harness import run_gpu_harness

pytestmark = pytest.mark.unit


def _manifest(labels: int = 5) -> Manifest:
    return Manifest(
        name="sim",
        framework="pytorch",
        architecture="resnet50",
        input_size=16,
        labels=[f"c{i}" for i in range(labels)],
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        version="1",
    )


def test_it_gives_the_same_probabilities_for_8_bit_and_normalised_pixels_and_waits_per_image() -> None:
    from include.bench.simulated import SimulatedAccelerator
    from spark_jobs.images import normalise

    waits: list[float] = []
    accelerator = SimulatedAccelerator(_manifest(), 2.5, sleep=waits.append)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    pixels[0] = 0  # a black image and a white one: the extremes of the normalised range
    pixels[1] = 255
    normalised = np.stack([normalise(p, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) for p in pixels])

    from_uint8 = accelerator.predict(pixels)
    from_float = accelerator.predict(normalised)

    assert from_uint8.shape == (6, 5) and from_uint8.dtype == np.float32
    np.testing.assert_allclose(from_uint8.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)
    # the images differ, and so do their predictions (it is not a constant)
    assert len({tuple(np.round(row, 4)) for row in from_uint8}) == 6
    # 6 images at 2.5 ms each, once per batch
    assert waits == pytest.approx([0.015, 0.015])
    assert accelerator.batches_by_dtype == {"uint8": 1, "float32": 1}


def test_accelerators_sharing_a_device_lock_take_turns(tmp_path: Path) -> None:
    """Two tasks on one GPU (`--tasks-per-gpu 2`): their accelerators share one simulated device,
    so their waits never overlap; without the lock each has a device of its own and they do."""
    import threading
    import time

    from include.bench.simulated import SimulatedAccelerator

    def peak_overlap(lock: Path | None) -> int:
        guard = threading.Lock()
        state = {"inside": 0, "peak": 0}

        def tracking_sleep(seconds: float) -> None:
            with guard:
                state["inside"] += 1
                state["peak"] = max(state["peak"], state["inside"])
            time.sleep(0.2)
            with guard:
                state["inside"] -= 1

        pixels = np.zeros((2, 16, 16, 3), dtype=np.uint8)
        accelerators = [SimulatedAccelerator(_manifest(), 1.0, tracking_sleep, device_lock=lock) for _ in range(2)]
        threads = [threading.Thread(target=a.predict, args=(pixels,)) for a in accelerators]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return state["peak"]

    assert peak_overlap(tmp_path / "device.lock") == 1
    assert peak_overlap(None) == 2


def test_it_refuses_a_negative_time_and_a_batch_that_is_not_four_dimensional() -> None:
    from include.bench.simulated import SimulatedAccelerator

    with pytest.raises(ValueError, match="0 or more"):
        SimulatedAccelerator(_manifest(), -1.0)
    with pytest.raises(ValueError, match=r"N x H x W x 3 .* got shape \(16, 16, 3\)"):
        SimulatedAccelerator(_manifest(), 0.0).predict(np.zeros((16, 16, 3), dtype=np.uint8))


@pytest.mark.spark
def test_the_gpu_harness_rehearses_every_method_with_a_simulated_accelerator(tmp_path: Path) -> None:
    """`--simulate-gpu` on a machine without CUDA: the loop, Rescore's UDF body and its Spark job
    (which takes its GPU path: a task on ``cuda:0`` sends 8-bit pixels; two tasks at a time share
    the one simulated device; its UDF reads the files, ``--read-by-udf``) all score with the
    simulated accelerator, agree with each other, and the report says that no GPU ran."""
    args = ["--simulate-gpu", "0.2", "--images", "10", "--batch-size", "4", "--workers", "2", "--rounds", "1"]
    spark_args = ["--images-per-task", "4", "--tasks-per-gpu", "2", "--read-by-udf"]
    results, readme = run_gpu_harness(tmp_path, *args, *spark_args)

    assert results["simulated_ms_per_image"] == 0.2
    assert results["device"] == "cuda:0"
    assert results["device_name"].startswith("simulated accelerator (0.2 ms per image, no GPU")
    methods = {m["method"]: m for m in results["methods"]}
    assert set(methods) == {"pytorch_loop", "rescore_partition", "rescore_spark"}
    for name in ("rescore_partition", "rescore_spark"):
        assert methods[name]["argmax_agreement"] == 1.0
        assert methods[name]["max_probability_diff"] < 1e-5
    assert results["spark"]["job_device"] == "cuda"
    assert results["spark"]["master"] == "local[2]"
    assert results["spark"]["tasks_at_a_time"] == 2
    # 10 images in tasks of at most 4: Spark planned 3 partitions (as equal as 10 allows)
    assert results["spark"]["tasks_per_run"] == 3
    assert readme.startswith("# GPU benchmark rehearsed on the CPU (simulated accelerator)")
    assert "No GPU ran this" in readme
    assert (
        "local mode, 2 tasks at a time sharing the device, `--device cuda`; 3 tasks per run (up to 4 images each); "
        "the UDF reads the files (`--read-by-udf`), Spark lists them" in readme
    )
    assert results["spark"]["files_read_by_udf"] is True
    assert "Rehearsal against the target: Rescore's job at least 0.8 of the PyTorch loop" in readme


def test_the_in_process_methods_feed_the_accelerator_as_they_would_feed_a_gpu(tmp_path: Path) -> None:
    """Rescore's UDF body on a (simulated) GPU task hands the device 8-bit pixels; the PyTorch
    loop's DataLoader workers normalise on the CPU."""
    from include.bench import gpu

    out = tmp_path / "out"
    args = ["--simulate-gpu", "0", "--images", "6", "--batch-size", "3", "--workers", "0", "--rounds", "1"]
    assert gpu.main([*args, "--workdir", str(tmp_path / "work"), "--out", str(out), "--skip-spark"]) == 0

    from include.bench.simulated import SimulatedAccelerator

    # the harness's in-process methods share one accelerator per device and time per image
    [accelerator] = [p for p in gpu._PREDICTORS.values() if isinstance(p, SimulatedAccelerator)]
    # warm-up and one round: 2 batches each time, for each of the two methods
    assert accelerator.batches_by_dtype == {"uint8": 4, "float32": 4}
    results = json.loads((out / "results.json").read_text())
    assert results["target"]["method"] == "rescore_partition"
    assert results["agree"] is True
