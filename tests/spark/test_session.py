"""The SparkSession every job entry point builds: its defaults, and that spark-submit's settings win."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.spark._submitted import run_submitted

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
    # When its entry point builds the session
    done = run_submitted(_PRINT_SETTING, submit_args)

    # Then adaptive execution may coalesce cached plans' shuffles, unless spark-submit set it
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"setting={expected}" in done.stdout.splitlines()


_LIST_A_TABLE_OF_MANY_BATCHES = (
    "import sys\n"
    "from pathlib import Path\n"
    "import pyarrow as pa, pyarrow.parquet as pq\n"
    "from spark_jobs.session import LISTING_TASKS, OPEN_COST, get_spark\n"
    "table = Path(sys.argv[1])\n"
    "for batch in range(40):\n"
    "    folder = table / f'ingest_batch={batch}'\n"
    "    folder.mkdir(parents=True)\n"
    "    ids = [f'{batch}-{i}' for i in range(3)]\n"
    "    pq.write_table(pa.table({'image_id': ids}), folder / 'part-0.parquet')\n"
    "spark = get_spark('rescore-session-test')\n"
    "sc = spark.sparkContext\n"
    "sc.setJobGroup('listing', 'the table is listed')\n"
    "spark.read.parquet(str(table))\n"
    "sc._jsc.sc().listenerBus().waitUntilEmpty()\n"
    "tracker = sc.statusTracker()\n"
    "jobs = tracker.getJobIdsForGroup('listing')\n"
    "stages = [tracker.getStageInfo(s) for j in jobs for s in tracker.getJobInfo(j).stageIds]\n"
    "print(f'widest_stage={max(stage.numTasks for stage in stages)}')\n"
    "print('settings=' + spark.conf.get(LISTING_TASKS) + ',' + spark.conf.get(OPEN_COST))\n"
    "spark.stop()\n"
)


@pytest.mark.parametrize(
    ("submit_args", "listing_tasks", "settings"),
    [
        ("--master local[2]", 2, "2,65536"),
        (
            "--master local[2] --conf spark.sql.sources.parallelPartitionDiscovery.parallelism=10000 "
            "--conf spark.sql.files.openCostInBytes=4194304",
            40,
            "10000,4194304",
        ),
    ],
    ids=["default", "spark-submit-conf-wins"],
)
def test_a_table_of_many_ingest_batches_is_listed_in_as_many_tasks_as_cores(
    tmp_path: Path, submit_args: str, listing_tasks: int, settings: str
) -> None:
    # Given a table of 40 ingest-batch folders (past Spark's 32, it lists them with a Spark job)
    # When a job's session (get_spark), started as spark-submit starts it, opens it
    done = run_submitted(_LIST_A_TABLE_OF_MANY_BATCHES, submit_args, str(tmp_path / "images"))

    # Then the folders are listed by one task per core, not one per folder (Spark's default), and
    # the files are packed with Rescore's small open cost, unless spark-submit said otherwise
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert f"widest_stage={listing_tasks}" in lines
    assert f"settings={settings}" in lines
