"""Validation gates on a real local SparkSession: each gate fails on data built to break it and
passes on clean data; the job writes JSON + HTML reports and exits 1 naming the failed gates."""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from spark_jobs.contract import RescorePaths
from spark_jobs.current import set_current
from spark_jobs.gates import Thresholds
from spark_jobs.model_store import Manifest, ModelStore

pytestmark = pytest.mark.spark

LABELS = ["circle", "square", "triangle"]
DEFAULTS = Thresholds(
    max_missing=0,
    max_duplicates=0,
    max_invalid=0,
    probability_tolerance=1e-3,
    max_label_change_share=0.2,
    max_psi=0.25,
    max_js_divergence=0.1,
)
IMAGES_SCHEMA = "image_id string, ingested_at timestamp"
PREDICTIONS_SCHEMA = (
    "image_id string, label string, score float, probabilities array<float>, error string, "
    "model_name string, model_version string"
)
# Six images ingested on two days; a clean prediction for each: (label, score, probabilities).
IMAGES = [(f"img-{i}", datetime(2026, 3, 1 if i < 3 else 2, 12, 0)) for i in range(6)]
CLEAN = {
    "img-0": ("circle", 0.9, [0.9, 0.05, 0.05]),
    "img-1": ("square", 0.8, [0.1, 0.8, 0.1]),
    "img-2": ("triangle", 0.7, [0.2, 0.1, 0.7]),
    "img-3": ("circle", 0.6, [0.6, 0.3, 0.1]),
    "img-4": ("square", 0.9, [0.05, 0.9, 0.05]),
    "img-5": ("triangle", 0.5, [0.25, 0.25, 0.5]),
}


def _rows(version: str, preds: dict[str, tuple[str | None, float | None, list[float] | None]]) -> list[tuple]:  # type: ignore[type-arg]
    return [(i, lbl, score, probs, None, "shapes", version) for i, (lbl, score, probs) in preds.items()]


def _validate(spark: Any, v2_rows: list[tuple], v1_rows: list[tuple] | None = None, **kwargs: Any) -> dict:  # type: ignore[type-arg]
    from spark_jobs.validate import validate_predictions

    images = spark.createDataFrame(IMAGES, IMAGES_SCHEMA)
    predictions = spark.createDataFrame(v2_rows + (v1_rows or []), PREDICTIONS_SCHEMA)
    return validate_predictions(
        images,
        predictions,
        model_name="shapes",
        model_version="2",
        labels=LABELS,
        thresholds=kwargs.pop("thresholds", DEFAULTS),
        baseline_version="1" if v1_rows is not None else None,
        **kwargs,
    )


def _failed(report: dict) -> list[str]:  # type: ignore[type-arg]
    return [g["name"] for g in report["gates"] if not g["passed"]]


def _gate(report: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(g for g in report["gates"] if g["name"] == name)


def test_clean_predictions_pass_every_gate(spark: Any) -> None:
    # Given clean v2 predictions identical to the promoted v1's
    report = _validate(spark, _rows("2", CLEAN), _rows("1", CLEAN))
    # Then every gate passes, the comparison gates included, with their measured values
    assert report["passed"] is True
    assert report["failed_gates"] == []
    assert [g["name"] for g in report["gates"]] == [
        "coverage", "uniqueness", "no_null_or_nan", "score_in_range", "probabilities_sum_to_1", "known_labels",
        "label_change", "score_drift_psi", "score_drift_js",
    ]  # fmt: skip
    assert _gate(report, "label_change") == {
        "name": "label_change", "passed": True, "value": 0.0, "threshold": 0.2, "skipped": False,
        "detail": "share of images whose label changed vs v1: 0.0000",
    }  # fmt: skip
    assert _gate(report, "score_drift_psi")["value"] == 0.0
    assert report["coverage"]["images_in_scope"] == 6
    assert report["distribution"]["label_counts"] == {"circle": 2, "square": 2, "triangle": 2}
    # scores 0.5, 0.6, 0.7, 0.8, 0.9, 0.9 -> one in each of bins 5..8, two in bin 9
    assert report["distribution"]["score_histogram"]["counts"] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert report["run"]["rows"] == 6
    assert report["verdict"] == "PASSED all 9 gates: shapes v2 over 6 images"


def test_without_a_promoted_version_the_comparison_gates_are_skipped(spark: Any) -> None:
    report = _validate(spark, _rows("2", CLEAN))
    assert report["passed"] is True
    assert report["comparison"] is None
    assert _gate(report, "label_change")["skipped"] is True
    assert _gate(report, "label_change")["value"] is None


def test_a_missing_row_fails_coverage(spark: Any) -> None:
    preds = {k: v for k, v in CLEAN.items() if k != "img-4"}
    report = _validate(spark, _rows("2", preds))
    assert _failed(report) == ["coverage"]
    assert _gate(report, "coverage")["value"] == 1
    assert report["coverage"]["missing_sample"] == ["img-4"]


def test_a_duplicate_fails_uniqueness(spark: Any) -> None:
    rows = _rows("2", CLEAN) + _rows("2", {"img-1": CLEAN["img-1"]})
    report = _validate(spark, rows)
    assert _failed(report) == ["uniqueness"]
    assert report["coverage"]["duplicates"] == 1
    assert report["coverage"]["duplicate_sample"] == ["img-1"]


def test_a_nan_score_fails_no_null_or_nan(spark: Any) -> None:
    report = _validate(spark, _rows("2", {**CLEAN, "img-2": ("triangle", float("nan"), [0.2, 0.1, 0.7])}))
    assert _failed(report) == ["no_null_or_nan"]
    assert report["sanity"]["null_or_nan"] == 1


def test_a_scoring_error_counts_as_null_and_its_message_is_sampled(spark: Any) -> None:
    rows = [r for r in _rows("2", CLEAN) if r[0] != "img-3"]
    rows.append(("img-3", None, None, None, "cannot identify image file: truncated JPEG", "shapes", "2"))
    report = _validate(spark, rows)
    assert _failed(report) == ["no_null_or_nan"]
    assert report["sanity"]["null_or_nan"] == 1
    assert report["sanity"]["error_sample"] == ["cannot identify image file: truncated JPEG"]
    # the row still counts as the image's prediction, under its null label
    assert report["coverage"]["missing"] == 0
    assert report["distribution"]["label_counts"]["None"] == 1
    assert sum(report["distribution"]["score_histogram"]["counts"]) == 5


def test_a_score_above_one_fails_score_in_range(spark: Any) -> None:
    report = _validate(spark, _rows("2", {**CLEAN, "img-2": ("triangle", 1.5, [0.2, 0.1, 0.7])}))
    assert _failed(report) == ["score_in_range"]


def test_a_probability_row_summing_to_0_7_fails_probabilities_sum_to_1(spark: Any) -> None:
    report = _validate(spark, _rows("2", {**CLEAN, "img-3": ("circle", 0.5, [0.5, 0.1, 0.1])}))
    assert _failed(report) == ["probabilities_sum_to_1"]
    assert _gate(report, "probabilities_sum_to_1")["value"] == 1


def test_an_unknown_label_fails_known_labels(spark: Any) -> None:
    report = _validate(spark, _rows("2", {**CLEAN, "img-5": ("hexagon", 0.5, [0.25, 0.25, 0.5])}))
    assert _failed(report) == ["known_labels"]
    assert report["sanity"]["unknown_label"] == 1


def test_a_flipped_label_distribution_fails_label_change(spark: Any) -> None:
    # Given v1 said circle/square where v2 says square/circle (same scores)
    flip = {"circle": "square", "square": "circle", "triangle": "triangle"}
    v2 = {k: (flip[lbl], s, p) for k, (lbl, s, p) in CLEAN.items()}
    report = _validate(spark, _rows("2", v2), _rows("1", CLEAN))
    # Then 4 of 6 labels changed and only the label-change gate fails (scores did not move)
    assert _failed(report) == ["label_change"]
    cmp = report["comparison"]
    assert cmp["label_changed"] == 4
    assert cmp["label_change_share"] == round(4 / 6, 6)
    assert cmp["confusion"] == {
        "labels": ["circle", "square", "triangle"],
        "counts": [[0, 2, 0], [2, 0, 0], [0, 0, 2]],  # rows: old label, columns: new label
    }
    assert {c["image_id"] for c in cmp["top_changed"]} == {"img-0", "img-1", "img-3", "img-4"}
    assert cmp["baseline_distribution"]["label_counts"] == {"circle": 2, "square": 2, "triangle": 2}


def test_changed_labels_are_listed_by_confidence_swing(spark: Any) -> None:
    v2 = {**CLEAN, "img-0": ("square", 0.4, [0.3, 0.4, 0.3]), "img-1": ("circle", 0.7, [0.7, 0.2, 0.1])}
    report = _validate(spark, _rows("2", v2), _rows("1", CLEAN), thresholds=DEFAULTS.with_overrides({
        "max_label_change_share": 1.0, "max_psi": 100.0, "max_js_divergence": 1.0}))  # fmt: skip
    top = report["comparison"]["top_changed"]
    # img-0 swung 0.9 -> 0.4 (0.5), img-1 0.8 -> 0.7 (0.1)
    assert [(c["image_id"], c["old_label"], c["new_label"], c["swing"]) for c in top] == [
        ("img-0", "circle", "square", pytest.approx(0.5, abs=1e-6)),
        ("img-1", "square", "circle", pytest.approx(0.1, abs=1e-6)),
    ]


def test_a_shifted_score_distribution_fails_the_drift_gates(spark: Any) -> None:
    # Given the same labels, but every v2 score in bin 3 where v1's were in bins 5..9
    v2 = {k: (lbl, 0.35, p) for k, (lbl, _, p) in CLEAN.items()}
    report = _validate(spark, _rows("2", v2), _rows("1", CLEAN))
    assert _failed(report) == ["score_drift_psi", "score_drift_js"]
    # disjoint histograms: Jensen-Shannon reaches its maximum, 1
    assert report["comparison"]["js_divergence"] == pytest.approx(1.0, abs=1e-6)
    assert report["comparison"]["psi"] > 5


def test_the_date_range_limits_the_images_in_scope(spark: Any) -> None:
    # Given predictions only for the images ingested on 2026-03-01 (img-0..2)
    preds = {k: v for k, v in CLEAN.items() if k in ("img-0", "img-1", "img-2")}
    # Then that day alone is fully covered (both ends inclusive), and the day after is not
    on_day = _validate(spark, _rows("2", preds), from_date=date(2026, 3, 1), to_date=date(2026, 3, 1))
    assert on_day["passed"] is True
    assert on_day["scope"] == {
        "from_date": "2026-03-01",
        "to_date": "2026-03-01",
        "ingested_from": None,
        "ingested_before": None,
        "images": 3,
    }
    day_after = _validate(spark, _rows("2", preds), from_date=date(2026, 3, 2))
    assert _failed(day_after) == ["coverage"]
    assert day_after["coverage"]["missing_sample"] == ["img-3", "img-4", "img-5"]
    assert day_after["coverage"]["predictions"] == 0


# ---- the job: files, exit code, thresholds from config and flags -------------------------------


def _home(spark: Any, home: Path, v2: dict, v1: dict) -> RescorePaths:  # type: ignore[type-arg]
    paths = RescorePaths(str(home))
    spark.createDataFrame(IMAGES, IMAGES_SCHEMA).write.mode("overwrite").parquet(paths.images)
    from pyspark.sql import functions as F

    # an extra column (as top-k or embeddings would add) is ignored
    predictions = spark.createDataFrame(_rows("2", v2) + _rows("1", v1), PREDICTIONS_SCHEMA)
    predictions.withColumn("embedding", F.array(F.lit(0.5))).write.partitionBy("model_name", "model_version").mode(
        "overwrite"
    ).parquet(paths.predictions)
    weights = home / "w.safetensors"
    weights.write_bytes(b"not read by validate")
    store = ModelStore(paths.models)
    manifest = Manifest(name="shapes", framework="pytorch", architecture="small_cnn", input_size=32, labels=LABELS)
    assert store.publish(manifest, weights) == "1"
    assert store.publish(manifest, weights) == "2"
    set_current(paths, "shapes", "1")
    return paths


def _flipped() -> dict:  # type: ignore[type-arg]
    flip = {"circle": "square", "square": "circle", "triangle": "triangle"}
    return {k: (flip[lbl], s, p) for k, (lbl, s, p) in CLEAN.items()}


def test_the_job_writes_json_and_html_and_exits_1_naming_the_failed_gate(
    spark: Any, rescore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from spark_jobs.validate import main

    paths = _home(spark, rescore_home, _flipped(), CLEAN)
    # When v2 (labels flipped vs the promoted v1) is validated
    with caplog.at_level("INFO", logger="rescore.validate"):
        code = main(["--home", paths.home, "--model-name", "shapes", "--model-version", "2", "--run-id", "run/1"])
    # Then the job fails, names the gate and says where the report is
    assert code == 1
    folder = Path(paths.reports) / "shapes" / "2"
    assert sorted(p.name for p in folder.iterdir()) == ["run_1.html", "run_1.json"]
    report = json.loads((folder / "run_1.json").read_text())
    assert report["passed"] is False
    assert report["failed_gates"] == ["label_change"]
    assert report["files"] == {"json": str(folder / "run_1.json"), "html": str(folder / "run_1.html")}
    assert report["thresholds_source"].endswith("include/validation/gates.toml")
    assert f"report: {folder / 'run_1.html'}" in caplog.text
    assert "FAILED 1 of 9 gates: shapes v2 over 6 images: label_change (value 0.666667 > threshold 0.2)" in caplog.text
    # and the HTML page is self-contained, with its three plots embedded as PNG
    page = (folder / "run_1.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    import base64

    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert "label shares old vs new" in page and "confusion table old vs new" in page
    assert 'src="http' not in page and "<script" not in page


def test_flags_and_another_gates_file_override_the_default_thresholds(
    spark: Any, rescore_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from spark_jobs.validate import main

    paths = _home(spark, rescore_home, _flipped(), CLEAN)
    args = ["--home", paths.home, "--model-name", "shapes", "--model-version", "2"]
    # A per-run flag lifts the label-change limit: the run passes
    assert main([*args, "--run-id", "lenient", "--max-label-change-share", "0.7"]) == 0
    lenient = json.loads((Path(paths.reports) / "shapes" / "2" / "lenient.json").read_text())
    assert lenient["thresholds"]["max_label_change_share"] == 0.7
    assert lenient["thresholds"]["max_psi"] == 0.25
    # A gates file named by RESCORE_GATES_CONFIG does the same for every run
    config = tmp_path / "gates.toml"
    config.write_text(
        "[thresholds]\nmax_missing = 0\nmax_duplicates = 0\nmax_invalid = 0\nprobability_tolerance = 0.001\n"
        "max_label_change_share = 0.9\nmax_psi = 0.25\nmax_js_divergence = 0.1\n"
    )
    monkeypatch.setenv("RESCORE_GATES_CONFIG", str(config))
    assert main([*args, "--run-id", "from-file"]) == 0
    # and a broken gates file is a clear error (exit 2), not a traceback
    config.write_text("[thresholds]\nmax_psi = 0.3\n")
    assert main([*args, "--run-id", "broken"]) == 2
