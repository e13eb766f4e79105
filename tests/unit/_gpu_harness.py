"""Run the GPU benchmark's harness as `make bench-gpu` does: in its own process (a Spark session of
the test process would be reused by getOrCreate, whatever master the harness asks for)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_gpu_harness(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """``python -m include.bench.gpu ARGS`` with its work and output under ``tmp_path``; asserts it
    exited 0 and returns its ``results.json`` and ``README.md``."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "include.bench.gpu", *args, "--workdir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "README.md").read_text()
