"""Run a snippet of Python as spark-submit starts a job's driver, for tests of what a job's
session does with the settings spark-submit gives it (they reach the JVM, not Python)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_submitted(
    code: str,
    submit_args: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` with ``submit_args`` (``--master ...``, ``--conf k=v``) passed the
    way spark-submit passes them, the Spark UI off; ``env`` replaces this process's environment."""
    environment = {
        **(os.environ if env is None else env),
        "PYSPARK_SUBMIT_ARGS": f"{submit_args} --driver-java-options -Dspark.ui.enabled=false pyspark-shell",
    }
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
