"""Freed memory stays in a scoring process (spark_jobs.allocator): a batch's large blocks are
not faulted in again, page by page, on every batch.

Each case runs in a fresh interpreter (the setting is for the whole process and cannot be
undone) and counts the page faults of a loop that allocates, writes and frees 48 MiB in 8 MiB
blocks, as a model's activations are on every batch.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GLIBC = platform.libc_ver()[0] == "glibc"

_LOOP = """
import resource, sys
{setup}
import numpy as np
faults = pages = 0
for i in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [np.ones(2**20) for _ in range(6)]  # 6 x 8 MiB, every page written
    del blocks
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    if i >= 2:  # after the first rounds, what does each round fault in again?
        faults += after - before
        pages += 6 * 8 * 2**20 // 4096
print(faults / pages)
"""

KEEP = "from spark_jobs.allocator import keep_freed_memory\nprint(keep_freed_memory(), file=sys.stderr)"
BUILD = """
from safetensors.torch import save
import torch
from spark_jobs.model_store import Manifest, ModelVersion
from spark_jobs.models import build_predictor
from spark_jobs.models.torch_nets import build_network
manifest = Manifest.from_dict(
    {"name": "m", "framework": "pytorch", "architecture": "small_cnn", "input_size": 32,
     "labels": ["a", "b"], "version": "1"}
)
weights = save({k: v.contiguous() for k, v in build_network("small_cnn", 2).state_dict().items()})
build_predictor(ModelVersion(manifest, weights), num_threads=1)
"""


def _faults_per_page(setup: str = "", **env: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _LOOP.format(setup=setup)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default_faults() -> float:
    """What the C library does by itself; the cases below mean something only if it faults."""
    if not GLIBC:
        pytest.skip("the malloc settings are glibc's: with this C library keep_freed_memory changes nothing")
    faults = _faults_per_page(RESCORE_KEEP_FREED_MEMORY="0")
    if faults < 0.1:
        pytest.skip(f"this C library already keeps freed blocks ({faults:.2f} faults per page): nothing to show")
    return faults


def test_kept_memory_is_not_faulted_in_again(default_faults: float) -> None:
    kept = _faults_per_page(KEEP)
    assert kept < 0.02, f"{kept:.3f} faults per page with the settings, {default_faults:.3f} without"


def test_building_a_predictor_applies_it(default_faults: float) -> None:
    """Every way of scoring builds its model through build_predictor: the ceiling's processes,
    Spark's Python workers (get_predictor) and the benchmark's other methods."""
    kept = _faults_per_page(BUILD)
    assert kept < 0.02, f"{kept:.3f} faults per page after build_predictor, {default_faults:.3f} without"


def test_the_environment_switch_leaves_the_allocator_alone(default_faults: float) -> None:
    switched_off = _faults_per_page(KEEP, RESCORE_KEEP_FREED_MEMORY="0")
    assert switched_off > 0.5 * default_faults


def test_it_reports_whether_the_settings_are_in_force() -> None:
    script = "import sys\n" + KEEP
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    on = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    off = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "RESCORE_KEEP_FREED_MEMORY": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert off.stderr.strip() == "False"
    assert on.stderr.strip() == str(GLIBC)
