"""Validate: check a model version's predictions and decide whether they may reach readers.

Computes coverage (every image in scope has exactly one prediction), sanity (no null/NaN,
scores in [0, 1], probabilities summing to 1, labels among the manifest's), the label
distribution and run facts; evaluates gates against thresholds; writes a JSON report under
``$RESCORE_HOME/reports/<model>/<version>/`` and exits 1 when any gate fails.

    spark-submit spark_jobs/validate.py --home var --model-name shapes [--model-version 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.contract import RescorePaths, default_home
from spark_jobs.current import resolve_version
from spark_jobs.model_store import ModelStore
from spark_jobs.session import JobError, get_spark, read_table, run_main

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger("rescore.validate")

#: Report format version; bump when keys change meaning.
REPORT_SCHEMA_VERSION = 1
SAMPLE_IDS = 5


@dataclass(frozen=True)
class Thresholds:
    """Gate limits. Counts are maxima; ``probability_tolerance`` bounds ``|sum(p) - 1|``."""

    max_missing: int = 0
    max_duplicates: int = 0
    max_invalid: int = 0
    probability_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("max_missing", "max_duplicates", "max_invalid"):
            if getattr(self, name) < 0:
                raise ValueError(f"threshold {name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.probability_tolerance < 1:
            raise ValueError(f"probability_tolerance must be in (0, 1), got {self.probability_tolerance}")


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float
    threshold: float
    detail: str


def coverage(images: DataFrame, predictions: DataFrame) -> dict[str, Any]:
    """Images in scope without a prediction, and images with more than one, counted and sampled."""
    from pyspark.sql import functions as F

    expected = images.select("image_id").distinct()
    missing = expected.join(predictions.select("image_id"), "image_id", "left_anti")
    dupes = predictions.groupBy("image_id").count().where(F.col("count") > 1)
    return {
        "images_in_scope": expected.count(),
        "predictions": predictions.count(),
        "missing": missing.count(),
        "missing_sample": sorted(r.image_id for r in missing.limit(SAMPLE_IDS).collect()),
        "duplicates": dupes.count(),
        "duplicate_sample": sorted(r.image_id for r in dupes.limit(SAMPLE_IDS).collect()),
    }


def sanity(predictions: DataFrame, labels: list[str], tolerance: float) -> dict[str, Any]:
    """Counts of rows that break an invariant; one pass over the predictions."""
    from pyspark.sql import functions as F

    prob_sum = F.aggregate("probabilities", F.lit(0.0).cast("double"), lambda acc, x: acc + x)
    bad_score = F.col("score").isNull() | F.isnan("score")
    checks = {
        "null_or_nan": F.col("label").isNull()
        | bad_score
        | F.col("probabilities").isNull()
        | F.exists("probabilities", lambda x: x.isNull() | F.isnan(x)),
        "score_out_of_range": ~bad_score & ((F.col("score") < 0) | (F.col("score") > 1)),
        "probabilities_not_summing_to_1": F.col("probabilities").isNotNull() & (F.abs(prob_sum - 1.0) > tolerance),
        "unknown_label": F.col("label").isNotNull() & ~F.col("label").isin(labels),
    }
    row = predictions.agg(*[F.sum(F.when(c, 1).otherwise(0)).alias(k) for k, c in checks.items()]).first()
    counts = {k: int(row[k] or 0) for k in checks} if row is not None else dict.fromkeys(checks, 0)
    errors = [r.error for r in predictions.where(F.col("error").isNotNull()).limit(SAMPLE_IDS).collect()]
    return {**counts, "invalid_rows": int(sum(counts.values())), "error_sample": errors}


def distribution(predictions: DataFrame, bins: int = 10) -> dict[str, Any]:
    """Label shares and a histogram of scores over [0, 1]."""
    from pyspark.sql import functions as F

    total = predictions.count()
    shares = {r.label: r["count"] / total for r in predictions.groupBy("label").count().collect()} if total else {}
    bucket = F.least(F.floor(F.col("score") * bins), F.lit(bins - 1)).cast("int")
    hist = dict.fromkeys(range(bins), 0)
    for r in (
        predictions.where(F.col("score").isNotNull() & ~F.isnan("score")).groupBy(bucket.alias("b")).count().collect()
    ):
        if r.b is not None and 0 <= r.b < bins:
            hist[int(r.b)] = int(r["count"])
    return {
        "label_shares": {str(k): round(v, 6) for k, v in sorted(shares.items(), key=lambda kv: str(kv[0]))},
        "score_histogram": {"edges": [i / bins for i in range(bins + 1)], "counts": [hist[i] for i in range(bins)]},
    }


def evaluate_gates(metrics: dict[str, Any], thresholds: Thresholds) -> list[GateResult]:
    """Each gate's verdict with the value it measured and the limit it was held to."""
    cov, san = metrics["coverage"], metrics["sanity"]
    return [
        GateResult(
            "coverage",
            cov["missing"] <= thresholds.max_missing,
            cov["missing"],
            thresholds.max_missing,
            f"{cov['missing']} of {cov['images_in_scope']} images have no prediction",
        ),
        GateResult(
            "uniqueness",
            cov["duplicates"] <= thresholds.max_duplicates,
            cov["duplicates"],
            thresholds.max_duplicates,
            f"{cov['duplicates']} images have more than one prediction",
        ),
        GateResult(
            "sanity",
            san["invalid_rows"] <= thresholds.max_invalid,
            san["invalid_rows"],
            thresholds.max_invalid,
            ", ".join(
                f"{k}={san[k]}"
                for k in ("null_or_nan", "score_out_of_range", "probabilities_not_summing_to_1", "unknown_label")
            ),
        ),
    ]


def validate_predictions(
    images: DataFrame,
    predictions: DataFrame,
    *,
    model_name: str,
    model_version: str,
    labels: list[str],
    thresholds: Thresholds,
) -> dict[str, Any]:
    """The whole report for one model version over the images in scope (without writing it)."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    version_rows = predictions.where(
        (F.col("model_name") == model_name) & (F.col("model_version") == model_version)
    ).join(images.select("image_id").distinct(), "image_id", "left_semi")
    metrics: dict[str, Any] = {
        "coverage": coverage(images, version_rows),
        "sanity": sanity(version_rows, labels, thresholds.probability_tolerance),
        "distribution": distribution(version_rows),
    }
    gates = evaluate_gates(metrics, thresholds)
    elapsed = time.perf_counter() - started
    rows = metrics["coverage"]["predictions"]
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_name": model_name,
        "model_version": model_version,
        "created_at": datetime.now(UTC).isoformat(),
        **metrics,
        "run": {
            "rows": rows,
            "wall_seconds": round(elapsed, 3),
            "rows_per_second": round(rows / max(elapsed, 1e-9), 1),
        },
        "thresholds": asdict(thresholds),
        "gates": [asdict(g) for g in gates],
        "passed": all(g.passed for g in gates),
    }


def write_report(report: dict[str, Any], reports_dir: str, run_id: str) -> Path:
    """Write the JSON report atomically; returns its path."""
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    target = Path(reports_dir) / report["model_name"] / str(report["model_version"]) / f"{safe_run}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True))
    tmp.replace(target)
    return target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="validate", description="Validate a model version's predictions.")
    parser.add_argument("--home", default=default_home())
    parser.add_argument("--model-name", required=True)
    parser.add_argument(
        "--model-version", default=None, help="version to validate (default: the promoted version, else the champion)"
    )
    parser.add_argument("--models", default=None, help="model store folder (default: <home>/models)")
    parser.add_argument("--run-id", default="manual")
    parser.add_argument("--max-missing", type=int, default=Thresholds.max_missing)
    parser.add_argument("--max-duplicates", type=int, default=Thresholds.max_duplicates)
    parser.add_argument("--max-invalid", type=int, default=Thresholds.max_invalid)
    parser.add_argument("--probability-tolerance", type=float, default=Thresholds.probability_tolerance)
    return parser.parse_args(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    paths = RescorePaths(args.home)
    store = ModelStore(args.models or paths.models)
    version = resolve_version(paths, store, args.model_name, args.model_version)
    manifest = store.manifest(args.model_name, version)
    try:
        thresholds = Thresholds(args.max_missing, args.max_duplicates, args.max_invalid, args.probability_tolerance)
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    spark = get_spark("rescore-validate")
    images = read_table(spark, paths.images)
    predictions = read_table(spark, paths.predictions)
    if images is None or predictions is None:
        raise JobError(f"nothing to validate under {paths.warehouse}: run ingest and score first")
    report = validate_predictions(
        images,
        predictions,
        model_name=args.model_name,
        model_version=version,
        labels=manifest.labels,
        thresholds=thresholds,
    )
    path = write_report(report, paths.reports, args.run_id)
    failed = [g for g in report["gates"] if not g["passed"]]
    log.info("report: %s", path)
    if failed:
        log.error(
            "FAILED %d gate(s) for %s v%s: %s",
            len(failed),
            args.model_name,
            version,
            "; ".join(f"{g['name']} ({g['detail']}; value {g['value']} > threshold {g['threshold']})" for g in failed),
        )
        return 1
    log.info(
        "PASSED all %d gates for %s v%s over %d images",
        len(report["gates"]),
        args.model_name,
        version,
        report["coverage"]["images_in_scope"],
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("validate", _main, argv)


if __name__ == "__main__":
    # Re-enter through the package so functions shipped to executors pickle by reference.
    from spark_jobs.validate import main as package_main

    raise SystemExit(package_main())
