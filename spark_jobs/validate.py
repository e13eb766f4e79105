"""Validate: check a model version's predictions and decide whether they may reach readers.

Over a scope (all images, or those ingested between two dates) it measures coverage (every
image has exactly one prediction), sanity (no null/NaN, scores in [0, 1], probabilities
summing to 1, labels among the manifest's), the label and score distributions, and, when
another version is promoted, how the new predictions differ from it (label changes, score
drift, confusion table, the largest swings). Gates hold each measure to a threshold
(``include/validation/gates.toml``, ``$RESCORE_GATES_CONFIG``, ``--max-...`` flags). The report
is written as JSON and HTML under ``$RESCORE_HOME/reports/<model>/<version>/<run>``; the job
exits 1, naming every failed gate, when any gate fails. Keys are documented in docs/validation.md.

    spark-submit spark_jobs/validate.py --home var --model-name shapes [--model-version 2]
        [--from-date 2026-01-01 --to-date 2026-01-31] [--max-psi 0.3]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.contract import RescorePaths, default_home
from spark_jobs.current import current_version, resolve_version
from spark_jobs.gates import (
    THRESHOLD_NAMES,
    GatesConfigError,
    Thresholds,
    evaluate_gates,
    gates_config_path,
    jensen_shannon_divergence,
    load_thresholds,
    population_stability_index,
)
from spark_jobs.model_store import ModelStore
from spark_jobs.scope import check_scope, scope_images
from spark_jobs.session import JobError, get_spark, read_table, run_main

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger("rescore.validate")

#: Report format version; bump when a key changes meaning or disappears.
REPORT_SCHEMA_VERSION = 2
#: How many ids (missing, duplicate) and changed images a report lists.
SAMPLE_IDS = 5
#: The prediction columns validation reads; any others are ignored.
VALIDATED_COLUMNS = ("image_id", "label", "score", "probabilities", "error", "model_version")
#: Bins of the score histogram over [0, 1]; the drift measures compare these bins.
SCORE_BINS = 10


def coverage(images: DataFrame, predictions: DataFrame) -> dict[str, Any]:
    """Images in scope without a prediction, and images with more than one, counted in one pass;
    the sample ids are fetched only when there is something to list."""
    from pyspark.sql import functions as F

    expected = images.select("image_id").distinct().withColumn("expected", F.lit(True))
    per_image = predictions.groupBy("image_id").agg(F.count(F.lit(1)).alias("n"))
    joined = expected.join(per_image, "image_id", "full_outer")
    is_missing = F.col("expected") & F.col("n").isNull()
    is_duplicate = F.col("n") > 1
    row = joined.agg(
        F.count("expected").alias("images_in_scope"),
        F.sum(F.coalesce("n", F.lit(0))).alias("predictions"),
        F.sum(F.when(is_missing, 1).otherwise(0)).alias("missing"),
        F.sum(F.when(is_duplicate, 1).otherwise(0)).alias("duplicates"),
    ).first()
    counts = {
        k: int((row[k] if row is not None else 0) or 0)
        for k in ("images_in_scope", "predictions", "missing", "duplicates")
    }

    def sample(condition: Any) -> list[str]:
        ids = joined.where(condition).select("image_id").orderBy("image_id").limit(SAMPLE_IDS).collect()
        return sorted(r.image_id for r in ids)

    return {
        "images_in_scope": counts["images_in_scope"],
        "predictions": counts["predictions"],
        "missing": counts["missing"],
        "missing_sample": sample(is_missing) if counts["missing"] else [],
        "duplicates": counts["duplicates"],
        "duplicate_sample": sample(is_duplicate) if counts["duplicates"] else [],
    }


#: The sanity invariants, in report order; each counts the rows that break it.
SANITY_CHECKS = ("null_or_nan", "score_out_of_range", "probabilities_not_summing_to_1", "unknown_label")


def profile(
    predictions: DataFrame, labels: list[str], tolerance: float, bins: int = SCORE_BINS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sanity counts and the label and score distribution of some predictions, in one pass.

    One group-by on (label, score bin) carries every count; the groups are few (labels x bins),
    so the driver adds them up. The error sample is fetched only when some row has an error.
    Returns ``(sanity, distribution)``.
    """
    from pyspark.sql import functions as F

    prob_sum = F.aggregate("probabilities", F.lit(0.0).cast("double"), lambda acc, x: acc + x)
    bad_score = F.col("score").isNull() | F.isnan("score")
    checks = {
        "null_or_nan": F.col("label").isNull()
        | bad_score
        | F.col("probabilities").isNull()
        | F.exists("probabilities", lambda x: x.isNull() | F.isnan(x)),
        "score_out_of_range": ~bad_score & ((F.col("score") < 0) | (F.col("score") > 1)),
        # NaN sums are counted by null_or_nan; NaN > tolerance is true in Spark, so exclude them here.
        "probabilities_not_summing_to_1": F.col("probabilities").isNotNull()
        & ~F.isnan(prob_sum)
        & (F.abs(prob_sum - 1.0) > tolerance),
        "unknown_label": F.col("label").isNotNull() & ~F.col("label").isin(labels),
    }
    # Scores are float32: 0.7 is stored as 0.69999999; six decimals put it in the bin a reader expects.
    score = F.round(F.col("score").cast("double"), 6)
    in_range = ~F.isnan("score") & score.between(0, 1)
    bucket = F.when(in_range, F.least(F.floor(score * bins), F.lit(bins - 1)).cast("int"))
    groups = (
        predictions.groupBy(F.col("label"), bucket.alias("bin"))
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(F.when(F.col("error").isNotNull(), 1).otherwise(0)).alias("errors"),
            *[F.sum(F.when(c, 1).otherwise(0)).alias(k) for k, c in checks.items()],
        )
        .collect()
    )
    counts = {k: sum(int(g[k]) for g in groups) for k in SANITY_CHECKS}
    errors = []
    if any(g["errors"] for g in groups):
        erred = predictions.where(F.col("error").isNotNull()).select("error").limit(SAMPLE_IDS).collect()
        errors = [r.error for r in erred]
    sanity = {**counts, "invalid_rows": int(sum(counts.values())), "error_sample": errors}

    label_counts: dict[str, int] = {}
    hist = [0] * bins
    for g in groups:
        label_counts[str(g.label)] = label_counts.get(str(g.label), 0) + int(g.rows)
        if g.bin is not None:
            hist[int(g.bin)] += int(g.rows)
    total = sum(label_counts.values())
    distribution = {
        "rows": total,
        "label_counts": dict(sorted(label_counts.items())),
        "label_shares": {k: round(v / total, 6) for k, v in sorted(label_counts.items())},
        "score_histogram": {"edges": [round(i / bins, 6) for i in range(bins + 1)], "counts": hist},
    }
    return sanity, distribution


def compare(
    new: DataFrame,
    old: DataFrame,
    *,
    baseline_version: str,
    current: dict[str, Any],
    labels: list[str],
    bins: int = SCORE_BINS,
) -> dict[str, Any]:
    """How the validated version's predictions differ from the promoted version's, image by image.

    :param current: the validated version's ``distribution`` (already measured), for the drift measures.
    """
    from pyspark.sql import functions as F

    old_one = old.dropDuplicates(["image_id"]).select(
        "image_id", F.col("label").alias("old_label"), F.col("score").alias("old_score")
    )
    new_one = new.dropDuplicates(["image_id"]).select(
        "image_id", F.col("label").alias("new_label"), F.col("score").alias("new_score")
    )
    joined = new_one.join(old_one, "image_id")
    # The confusion table carries both counts: all images compared, and those whose label changed.
    confusion_rows = joined.groupBy("old_label", "new_label").count().collect()
    compared = sum(int(r["count"]) for r in confusion_rows)
    label_changed = sum(int(r["count"]) for r in confusion_rows if r.old_label != r.new_label)
    top = []
    if label_changed:
        changed = ~F.col("old_label").eqNullSafe(F.col("new_label"))
        swing = F.abs(F.col("new_score") - F.col("old_score"))
        top = (
            joined.where(changed)
            .withColumn("swing", swing)
            .orderBy(F.col("swing").desc_nulls_last(), "image_id")
            .limit(SAMPLE_IDS)
            .collect()
        )
    names = sorted({str(r.old_label) for r in confusion_rows} | {str(r.new_label) for r in confusion_rows})
    index = {label: i for i, label in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for r in confusion_rows:
        matrix[index[str(r.old_label)]][index[str(r.new_label)]] = int(r["count"])
    _, baseline = profile(old, labels, tolerance=1.0, bins=bins)
    old_hist, new_hist = baseline["score_histogram"]["counts"], current["score_histogram"]["counts"]
    drift_ok = compared > 0 and sum(old_hist) > 0 and sum(new_hist) > 0
    return {
        "baseline_version": baseline_version,
        "compared_images": compared,
        "label_changed": label_changed,
        "label_change_share": round(label_changed / compared, 6) if compared else None,
        "psi": round(population_stability_index(old_hist, new_hist), 6) if drift_ok else None,
        "js_divergence": round(jensen_shannon_divergence(old_hist, new_hist), 6) if drift_ok else None,
        "baseline_distribution": baseline,
        "confusion": {"labels": names, "counts": matrix},
        "top_changed": [
            {
                "image_id": r.image_id,
                "old_label": r.old_label,
                "new_label": r.new_label,
                "old_score": None if r.old_score is None else round(float(r.old_score), 6),
                "new_score": None if r.new_score is None else round(float(r.new_score), 6),
                "swing": None if r.swing is None else round(float(r.swing), 6),
            }
            for r in top
        ],
    }


def verdict(report: dict[str, Any]) -> str:
    """One line: passed or which gates failed, for which version and scope."""
    gates = report["gates"]
    subject = f"{report['model_name']} v{report['model_version']} over {report['scope']['images']} images"
    if report["passed"]:
        return f"PASSED all {len(gates)} gates: {subject}"
    failed = [g for g in gates if not g["passed"]]
    listed = "; ".join(f"{g['name']} (value {g['value']} > threshold {g['threshold']})" for g in failed)
    return f"FAILED {len(failed)} of {len(gates)} gates: {subject}: {listed}"


def validate_predictions(
    images: DataFrame,
    predictions: DataFrame,
    *,
    model_name: str,
    model_version: str,
    labels: list[str],
    thresholds: Thresholds,
    baseline_version: str | None = None,
    from_date: date | None = None,
    to_date: date | None = None,
    run_id: str = "manual",
    ingested_before: datetime | None = None,
    ingested_from: datetime | None = None,
) -> dict[str, Any]:
    """The whole report for one model version over the images in scope (without writing it).

    :param baseline_version: the promoted version to compare with; None (or the validated
        version itself) skips the comparison and its gates.
    """
    from pyspark.sql import functions as F

    started = time.perf_counter()
    in_scope = scope_images(images, from_date, to_date, ingested_before, ingested_from)
    in_scope = in_scope.select("image_id").distinct().cache()
    # Only the contract's columns: wider tables (top-k, embeddings) are not cached for nothing.
    of_model = (
        predictions.where(F.col("model_name") == model_name)
        .select(*VALIDATED_COLUMNS)
        .join(in_scope, "image_id", "left_semi")
    )
    version_rows = of_model.where(F.col("model_version") == model_version).cache()
    try:
        sanity, distribution = profile(version_rows, labels, thresholds.probability_tolerance)
        metrics: dict[str, Any] = {
            "coverage": coverage(in_scope, version_rows),
            "sanity": sanity,
            "distribution": distribution,
            "comparison": None,
        }
        if baseline_version is not None and baseline_version != model_version:
            old_rows = of_model.where(F.col("model_version") == baseline_version)
            metrics["comparison"] = compare(
                version_rows, old_rows, baseline_version=baseline_version, current=distribution, labels=labels
            )
    finally:
        version_rows.unpersist()
        in_scope.unpersist()
    gates = evaluate_gates(metrics, thresholds)
    elapsed = time.perf_counter() - started
    rows = metrics["coverage"]["predictions"]
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_name": model_name,
        "model_version": model_version,
        "run_id": run_id,
        "created_at": datetime.now(UTC).isoformat(),
        "scope": {
            "from_date": from_date.isoformat() if from_date else None,
            "to_date": to_date.isoformat() if to_date else None,
            "ingested_from": ingested_from.isoformat() if ingested_from else None,
            "ingested_before": ingested_before.isoformat() if ingested_before else None,
            "images": metrics["coverage"]["images_in_scope"],
        },
        **metrics,
        "run": {
            "rows": rows,
            "wall_seconds": round(elapsed, 3),
            "rows_per_second": round(rows / max(elapsed, 1e-9), 1),
        },
        "thresholds": thresholds.as_dict(),
        "gates": [asdict(g) for g in gates],
        "failed_gates": [g.name for g in gates if not g.passed],
        "passed": all(g.passed for g in gates),
    }
    report["verdict"] = verdict(report)
    return report


def report_stem(reports_dir: str, model_name: str, model_version: str, run_id: str) -> Path:
    """``<reports>/<model>/<version>/<run>`` without suffix; the run id made safe for a file name."""
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return Path(reports_dir) / model_name / str(model_version) / safe_run


def _write_atomically(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    tmp.replace(target)


def write_report(report: dict[str, Any], reports_dir: str, run_id: str | None = None) -> tuple[Path, Path]:
    """Write the HTML page, then the JSON report (each atomically); returns both paths.

    The JSON goes last: promotion and the sensor read the newest JSON, so it must not appear
    before the page it points to.
    """
    from spark_jobs.report_html import render_html

    stem = report_stem(reports_dir, report["model_name"], report["model_version"], run_id or report["run_id"])
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, html_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".html")
    report = {**report, "files": {"json": str(json_path), "html": str(html_path)}}
    _write_atomically(html_path, render_html(report))
    _write_atomically(json_path, json.dumps(report, indent=2, sort_keys=True))
    return json_path, html_path


def _iso_timestamp(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a timestamp: use ISO 8601, e.g. 2026-11-28T09:00:00+00:00"
        ) from exc


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from exc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="validate", description="Validate a model version's predictions.")
    parser.add_argument("--home", default=default_home())
    parser.add_argument("--model-name", required=True)
    parser.add_argument(
        "--model-version", default=None, help="version to validate (default: the promoted version, else the champion)"
    )
    parser.add_argument("--models", default=None, help="model store folder (default: <home>/models)")
    parser.add_argument("--run-id", default="manual")
    parser.add_argument("--from-date", type=_iso_date, default=None, help="first ingestion date in scope (inclusive)")
    parser.add_argument("--to-date", type=_iso_date, default=None, help="last ingestion date in scope (inclusive)")
    parser.add_argument(
        "--ingested-before",
        type=_iso_timestamp,
        default=None,
        help="only images ingested before this ISO timestamp (the re-scoring run's cutoff)",
    )
    parser.add_argument(
        "--ingested-from",
        type=_iso_timestamp,
        default=None,
        help="only images ingested at or after this ISO timestamp (with --ingested-before: a backfill run's "
        "data interval)",
    )
    parser.add_argument(
        "--gates-config",
        default=None,
        help="TOML file of thresholds (default: $RESCORE_GATES_CONFIG, else the project's)",
    )
    for name in THRESHOLD_NAMES:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=float, default=None, help=f"override {name} for this run")
    return parser.parse_args(argv)


def thresholds_from_args(args: argparse.Namespace) -> tuple[Thresholds, str]:
    """The gates file's thresholds with this run's flags on top, and where the defaults came from."""
    path = gates_config_path(args.gates_config)
    try:
        base = load_thresholds(path)
        return base.with_overrides({n: getattr(args, n) for n in THRESHOLD_NAMES}, "command-line flags"), str(path)
    except GatesConfigError as exc:
        raise JobError(str(exc)) from exc


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    check_scope(args.from_date, args.to_date, args.ingested_from, args.ingested_before)
    thresholds, thresholds_source = thresholds_from_args(args)
    paths = RescorePaths(args.home)
    store = ModelStore(args.models or paths.models)
    version = resolve_version(paths, store, args.model_name, args.model_version)
    manifest = store.manifest(args.model_name, version)
    baseline = current_version(paths, args.model_name)
    spark = get_spark("rescore-validate")
    images = read_table(spark, paths.images)
    predictions = read_table(spark, paths.predictions)
    if images is None or predictions is None:
        raise JobError(f"nothing to validate under {paths.warehouse}: run ingest and score first")
    log.info(
        "validating %s v%s (promoted: %s) over %s .. %s",
        args.model_name,
        version,
        baseline or "none",
        args.from_date or "the first image",
        args.to_date or "the last image",
    )
    report = validate_predictions(
        images,
        predictions,
        model_name=args.model_name,
        model_version=version,
        labels=manifest.labels,
        thresholds=thresholds,
        baseline_version=baseline,
        from_date=args.from_date,
        to_date=args.to_date,
        ingested_before=args.ingested_before,
        ingested_from=args.ingested_from,
        run_id=args.run_id,
    )
    report["thresholds_source"] = thresholds_source
    json_path, html_path = write_report(report, paths.reports)
    log.info("report: %s", html_path)
    log.info("report (JSON): %s", json_path)
    if report["passed"]:
        log.info("%s", report["verdict"])
        return 0
    log.error("%s", report["verdict"])
    log.error("failed gates: %s", ", ".join(report["failed_gates"]))
    return 1


def main(argv: list[str] | None = None) -> int:
    return run_main("validate", _main, argv)


if __name__ == "__main__":
    # Re-enter through the package so functions shipped to executors pickle by reference.
    from spark_jobs.validate import main as package_main

    raise SystemExit(package_main())
