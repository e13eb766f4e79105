"""Gate thresholds (file, environment, overrides), drift measures against hand-computed values,
and gate verdicts from measured metrics (no Spark)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from spark_jobs.gates import (
    DEFAULT_GATES_CONFIG,
    THRESHOLD_NAMES,
    GatesConfigError,
    evaluate_gates,
    gates_config_path,
    jensen_shannon_divergence,
    load_thresholds,
    population_stability_index,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_gates_file_holds_the_documented_defaults() -> None:
    t = load_thresholds(ROOT / "include" / "validation" / "gates.toml")
    assert (t.max_missing, t.max_duplicates, t.max_invalid) == (0, 0, 0)
    assert t.max_label_change_share == 0.2
    assert t.max_psi == 0.25
    assert t.max_js_divergence == 0.1
    assert t.probability_tolerance == 0.001
    assert DEFAULT_GATES_CONFIG == ROOT / "include" / "validation" / "gates.toml"


def test_the_environment_names_another_gates_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESCORE_GATES_CONFIG", str(tmp_path / "g.toml"))
    assert gates_config_path() == tmp_path / "g.toml"
    assert gates_config_path("/explicit.toml") == Path("/explicit.toml")
    monkeypatch.delenv("RESCORE_GATES_CONFIG")
    assert gates_config_path() == DEFAULT_GATES_CONFIG


def test_overrides_replace_only_the_given_thresholds() -> None:
    base = load_thresholds(DEFAULT_GATES_CONFIG)
    t = base.with_overrides({"max_psi": "0.4", "max_missing": 3.0, "max_invalid": None})
    assert t.max_psi == 0.4
    assert t.max_missing == 3 and isinstance(t.max_missing, int)
    assert t.max_invalid == 0
    assert t.max_label_change_share == 0.2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[thresholds]\nmax_psi = 0.3\n", "missing thresholds"),
        ("max_psi = 0.3\n", "no \\[thresholds\\] table"),
        ("[thresholds\n", "not valid TOML"),
    ],
)
def test_a_broken_gates_file_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gates.toml"
    path.write_text(text)
    with pytest.raises(GatesConfigError, match=message):
        load_thresholds(path)


def test_a_missing_gates_file_names_the_variable_to_set(tmp_path: Path) -> None:
    with pytest.raises(GatesConfigError, match="RESCORE_GATES_CONFIG"):
        load_thresholds(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"max_pis": 1}, "unknown thresholds \\['max_pis'\\]"),
        ({"max_missing": 1.5}, "whole number"),
        ({"max_psi": "high"}, "must be a number"),
        ({"max_label_change_share": 2}, "must be in \\[0, 1\\]"),
        ({"max_missing": -1}, "must be >= 0"),
    ],
)
def test_a_bad_override_is_refused(override: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(GatesConfigError, match=message):
        load_thresholds(DEFAULT_GATES_CONFIG).with_overrides(override)


def test_every_threshold_is_in_the_default_file() -> None:
    doc = tomllib.loads(DEFAULT_GATES_CONFIG.read_text())
    assert sorted(doc["thresholds"]) == sorted(THRESHOLD_NAMES)


def test_psi_against_a_hand_computed_value() -> None:
    # shares 0.5/0.5 -> 0.9/0.1: 0.4*ln(1.8) + (-0.4)*ln(0.2) = 0.235115 + 0.643775
    assert population_stability_index([50, 50], [90, 10]) == pytest.approx(0.878890, abs=1e-6)
    assert population_stability_index([3, 1, 0], [6, 2, 0]) == 0.0


def test_psi_stays_finite_when_a_bin_empties() -> None:
    value = population_stability_index([10, 10], [20, 0])
    # floor 1e-4 on the empty share: (1 - .5) ln(1/.5) + (1e-4 - .5) ln(1e-4/.5)
    assert value == pytest.approx(0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5), rel=1e-9)


def test_jensen_shannon_against_hand_computed_values() -> None:
    assert jensen_shannon_divergence([5, 5], [5, 5]) == 0.0
    assert jensen_shannon_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    # p = (.5, .5), q = (1, 0), m = (.75, .25): (0.2075187 + 0.4150375) / 2
    assert jensen_shannon_divergence([1, 1], [2, 0]) == pytest.approx(0.3112781, abs=1e-7)


def _metrics(missing: int = 0, unknown: int = 0, share: float | None = None) -> dict:  # type: ignore[type-arg]
    sanity = {"null_or_nan": 0, "score_out_of_range": 0, "probabilities_not_summing_to_1": 0, "unknown_label": unknown}
    comparison = None if share is None else {"baseline_version": "1", "label_change_share": share, "psi": 0.0,
                                             "js_divergence": 0.0}  # fmt: skip
    return {
        "coverage": {"missing": missing, "duplicates": 0, "images_in_scope": 10},
        "sanity": sanity,
        "comparison": comparison,
    }


def test_gates_report_value_and_threshold_and_fail_above_it() -> None:
    t = load_thresholds(DEFAULT_GATES_CONFIG)
    gates = {g.name: g for g in evaluate_gates(_metrics(missing=2, unknown=1, share=0.2), t)}
    assert (gates["coverage"].passed, gates["coverage"].value, gates["coverage"].threshold) == (False, 2, 0)
    assert gates["coverage"].detail == "2 of 10 images in scope have no prediction"
    assert (gates["known_labels"].passed, gates["known_labels"].value) == (False, 1)
    # exactly at the threshold passes
    assert (gates["label_change"].passed, gates["label_change"].value) == (True, 0.2)
    assert [n for n, g in gates.items() if not g.passed] == ["coverage", "known_labels"]


def test_comparison_gates_are_skipped_without_a_promoted_version() -> None:
    gates = {g.name: g for g in evaluate_gates(_metrics(), load_thresholds(DEFAULT_GATES_CONFIG))}
    for name in ("label_change", "score_drift_psi", "score_drift_js"):
        assert gates[name].skipped and gates[name].passed and gates[name].value is None
        assert gates[name].detail == "skipped: no promoted version to compare with"
