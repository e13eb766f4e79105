"""The SparkSession every job entry point builds: its defaults, and that spark-submit's settings win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.spark

_PRINT_SETTING = (
    "from spark_jobs.session import CACHED_PLAN_COALESCING, get_spark\n"
    "spark = get_spark('rescore-session-test')\n"
    "print('setting=' + spark.conf.get(CACHED_PLAN_COALESCING))\n"
    "spark.stop()\n"
)


@pytest.mark.parametrize(
    ("submit_args", "expected"),
    [
        ("--master local[1]", "true"),
        ("--master local[1] --conf spark.sql.optimizer.canChangeCachedPlanOutputPartitioning=false", "false"),
    ],
    ids=["default", "spark-submit-conf-wins"],
)
def test_cached_plans_may_be_coalesced_unless_spark_submit_says_otherwise(submit_args: str, expected: str) -> None:
    # Given a job started the way spark-submit starts it (the settings reach the JVM, not Python)
    env = {
        **os.environ,
        "PYSPARK_SUBMIT_ARGS": f"{submit_args} --driver-java-options -Dspark.ui.enabled=false pyspark-shell",
    }

    # When its entry point builds the session
    done = subprocess.run(
        [sys.executable, "-c", _PRINT_SETTING], check=False, env=env, capture_output=True, text=True, timeout=300
    )

    # Then adaptive execution may coalesce cached plans' shuffles, unless spark-submit set it
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"setting={expected}" in done.stdout.splitlines()
