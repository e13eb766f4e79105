"""The whole Rescore story on the embedded defaults (``make demo``).

1. generate labelled sample images into ``$RESCORE_HOME/landing`` (first run only);
2. train the example CNN and publish it as version 1 (first run only);
3. run the ``image_scoring`` DAG (ingest -> score -> validate -> promote the first version);
4. train and publish version 2 as the new champion (first run only);
5. run the ``model_rescore`` DAG: its sensor notices the new champion, re-scores every image
   with v2, validates v2 against v1 and promotes v2;
6. print what happened and where the results and reports are.

Run it twice: the second run finds nothing new to ingest, score or re-score and says so.
Airflow's and Spark's own output goes to ``$RESCORE_HOME/logs/demo-*.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spark_jobs.contract import RescorePaths

MODEL_NAME = "shapes"
ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"[rescore demo] {message}", flush=True)


@contextlib.contextmanager
def output_to(log_file: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (and its children's) to ``log_file`` for a while."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log_file.open("ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def ensure_airflow_db(paths: RescorePaths, log_file: Path) -> None:
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", paths.airflow_home))
    if (airflow_home / "airflow.db").exists():
        return
    say(f"creating the Airflow metadata database in {airflow_home} ...")
    with log_file.open("ab") as fh:
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, stdout=fh, stderr=fh
        )


def use_jvm_archive() -> None:
    """Every Spark job of the demo starts its driver JVM from a class-data archive of Spark's
    classes (include/jvm_archive.py): made on the first run, it takes a third off each job."""
    from include import jvm_archive

    if not jvm_archive.enabled():
        return
    archive = jvm_archive.archive_path()
    if archive is not None and not archive.is_file():
        say(f"making a class-data archive of Spark's classes for the jobs' driver JVM in {archive.parent} ...")
    os.environ["SPARK_SUBMIT_OPTS"] = jvm_archive.submit_options(os.environ.get("SPARK_SUBMIT_OPTS", ""))


def run_dag(dag_id: str, log_file: Path, conf: dict[str, Any] | None = None) -> Any:
    """Run a DAG once with ``dag.test()`` (tasks in this process, Spark jobs via spark-submit)."""
    from airflow.dag_processing.dagbag import DagBag

    with output_to(log_file):
        dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag(dag_id)
        if dag is None:
            raise SystemExit(f"DAG {dag_id} did not load: run `make test` to see the import error")
        return dag.test(run_conf=conf)


@dataclass
class TableCounts:
    images: int
    rejects: int
    predictions: dict[tuple[str, str], int]


def _rows(path: str, columns: list[str]) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.dataset as ds

    if not Path(path).exists():
        return []
    fields = (
        [("model_name", pa.string()), ("model_version", pa.string())]
        if path.endswith("predictions")
        else [("ingest_batch", pa.string())]
    )
    dataset = ds.dataset(path, format="parquet", partitioning=ds.partitioning(pa.schema(fields), flavor="hive"))
    rows: list[dict[str, Any]] = dataset.to_table(columns=columns).to_pylist()
    return rows


def count_tables(paths: RescorePaths) -> TableCounts:
    predictions: dict[tuple[str, str], int] = {}
    for row in _rows(paths.predictions, ["model_name", "model_version"]):
        key = (row["model_name"], row["model_version"])
        predictions[key] = predictions.get(key, 0) + 1
    return TableCounts(
        images=len(_rows(paths.images, ["image_id"])),
        rejects=len(_rows(paths.rejects, ["path"])),
        predictions=predictions,
    )


def accuracy(paths: RescorePaths, version: str) -> tuple[int, int]:
    """(correct, judged) predictions of ``version`` against the generator's labels."""
    from include.sample_data import read_truth

    truth = read_truth(paths)
    judged = correct = 0
    for row in _rows(paths.predictions, ["image_id", "label", "model_name", "model_version"]):
        if row["model_name"] == MODEL_NAME and row["model_version"] == version and row["image_id"] in truth:
            judged += 1
            correct += row["label"] == truth[row["image_id"]]
    return correct, judged


def nothing_to_rescore(paths: RescorePaths, champion: str | None, promoted: str | None, log_file: Path) -> str:
    """Why the model-version sensor would not fire for ``champion``, and what to do about it."""
    from rescore_airflow.registry import latest_report_failed

    if champion is None:
        return f"model_rescore: {MODEL_NAME} has no champion in {paths.models}; nothing to re-score"
    if promoted is None:
        return (
            f"model_rescore: nothing of {MODEL_NAME} is promoted yet (champion v{champion}); the image_scoring DAG "
            f"scores and promotes the first version: see {log_file} for why it did not, then run the demo again"
        )
    if champion == promoted:
        return f"model_rescore: the champion (v{champion}) is already promoted; nothing to re-score"
    if latest_report_failed(paths, MODEL_NAME, champion):
        return (
            f"model_rescore: the champion v{champion} failed validation in an earlier run (reports: "
            f"{paths.reports}/{MODEL_NAME}/{champion}/), so it is not re-scored again; readers keep v{promoted}. "
            "Publish a new version (`python -m include.publish train --seed 2`) and run the demo again, or trigger "
            "model_rescore with retry_failed: true (and a looser threshold) from the Airflow UI (`make airflow`)"
        )
    return (
        f"model_rescore: the champion v{champion} is not the promoted v{promoted}, yet the model-version sensor "
        f"would not fire for it: see {log_file}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="sample images to generate on the first run")
    args = parser.parse_args(argv)

    paths = RescorePaths.from_env()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    log_file = Path(paths.home) / "logs" / f"demo-{stamp}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    say(f"RESCORE_HOME = {paths.home}")
    ensure_airflow_db(paths, log_file)
    use_jvm_archive()

    from include.example_models import train_and_publish
    from include.sample_data import generate
    from spark_jobs.model_store import ModelStore

    landing = Path(paths.landing)
    if not landing.exists() or not any(landing.iterdir()):
        say(f"generating {args.images} labelled sample images into {landing} ...")
        generate(paths, count=args.images, seed=1)
    else:
        say(f"landing folder already has files ({landing}); not generating more")

    store = ModelStore(paths.models)
    if not store.versions(MODEL_NAME):
        say("training the example CNN on freshly generated shapes and publishing it as version 1 ...")
        version = train_and_publish(store, name=MODEL_NAME, seed=0)
        say(f"published {MODEL_NAME} v{version} to {paths.models}/{MODEL_NAME}/{version}")

    before = count_tables(paths)
    say("running the image_scoring DAG (ingest -> score -> validate -> promote first version) on local Spark ...")
    run = run_dag("image_scoring", log_file)
    after = count_tables(paths)
    if str(run.state) != "success":
        say(f"image_scoring run {run.run_id} ended {run.state}: see {log_file}")
        return 1

    from spark_jobs.current import current_version, resolve_version

    version = resolve_version(paths, store, MODEL_NAME, None)
    key = (MODEL_NAME, version)
    scored_now = after.predictions.get(key, 0) - before.predictions.get(key, 0)
    ingested_now = after.images - before.images
    rejected_now = after.rejects - before.rejects
    say(f"image_scoring run {run.run_id}: {run.state}")
    say(
        f"  ingested : {ingested_now} images, {rejected_now} rejected"
        + ("  - nothing new landed" if ingested_now == 0 and rejected_now == 0 else "")
    )
    say(
        f"  scored   : {scored_now} with {MODEL_NAME} v{version}"
        + ("  - nothing new to score" if scored_now == 0 else "")
    )

    if len(store.versions(MODEL_NAME)) == 1:
        say("training version 2 (another seed) and publishing it as the new champion ...")
        new_version = train_and_publish(store, name=MODEL_NAME, seed=1)
        say(f"published {MODEL_NAME} v{new_version}; it is now the champion")

    from rescore_airflow.registry import FolderRegistry, pending_champion

    pending = pending_champion(FolderRegistry(paths.models), paths, MODEL_NAME)
    if pending is None:
        say(nothing_to_rescore(paths, store.champion(MODEL_NAME), current_version(paths, MODEL_NAME), log_file))
    else:
        say(f"running the model_rescore DAG: sensor -> re-score with v{pending} -> validate -> promote ...")
        rescore = run_dag("model_rescore", log_file)
        if str(rescore.state) != "success":
            say(f"model_rescore run {rescore.run_id} ended {rescore.state}: see {log_file}")
            return 1
        promoted_now = current_version(paths, MODEL_NAME)
        say(f"model_rescore run {rescore.run_id}: {rescore.state}; readers now use v{promoted_now}")

    final = count_tables(paths)
    promoted = current_version(paths, MODEL_NAME) or version
    correct, judged = accuracy(paths, promoted)
    print()
    say(f"done in {time.perf_counter() - started:.0f} s")
    say(f"  promoted version  : {MODEL_NAME} v{promoted} (pointer: {paths.current})")
    say(
        f"  tables now hold   : {final.images} images, {final.rejects} rejects, "
        + ", ".join(f"{n} predictions from v{v}" for (m, v), n in sorted(final.predictions.items()) if m == MODEL_NAME)
    )
    if judged:
        say(f"  accuracy of v{promoted} vs generator labels: {correct}/{judged} = {correct / judged:.1%}")
    say(f"  images table      : {paths.images}")
    say(f"  rejects table     : {paths.rejects}")
    say(f"  predictions       : {paths.predictions}/model_name={MODEL_NAME}/model_version={promoted}")
    say(f"  validation reports: {paths.reports}/{MODEL_NAME}/")
    say(f"  Airflow + Spark log of this demo: {log_file}")
    say("  read the current predictions: see README 'Read the results'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
