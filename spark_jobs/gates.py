"""Validation gates: thresholds (from a TOML file, overridable per run), drift measures, verdicts.

Standard library only: the Airflow side imports it at parse time to check the threshold names a
DAG passes, and the Spark driver evaluates the gates with it. Each gate measures one value and
passes when that value is at most its threshold.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

#: Environment variable naming another gates file than the project's default.
GATES_CONFIG_ENV = "RESCORE_GATES_CONFIG"
#: The project's default thresholds.
DEFAULT_GATES_CONFIG = Path(__file__).resolve().parent.parent / "include" / "validation" / "gates.toml"
#: A histogram bin's share is floored at this before a logarithm, so an empty bin stays finite.
SHARE_FLOOR = 1e-4


class GatesConfigError(ValueError):
    """The gates file or a threshold override is wrong; the message says what to change."""


@dataclass(frozen=True)
class Thresholds:
    """Gate limits; every value is a maximum.

    :param max_missing: images in scope without a prediction.
    :param max_duplicates: images with more than one prediction.
    :param max_invalid: rows breaking one sanity invariant (held per sanity gate).
    :param probability_tolerance: largest accepted ``|sum(probabilities) - 1|``.
    :param max_label_change_share: share of compared images whose label changed vs the promoted version.
    :param max_psi: population stability index of the score histogram vs the promoted version.
    :param max_js_divergence: Jensen-Shannon divergence (base 2) of the score histograms.
    """

    max_missing: int
    max_duplicates: int
    max_invalid: int
    probability_tolerance: float
    max_label_change_share: float
    max_psi: float
    max_js_divergence: float

    def __post_init__(self) -> None:
        for name in ("max_missing", "max_duplicates", "max_invalid", "max_psi"):
            if getattr(self, name) < 0:
                raise GatesConfigError(f"threshold {name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_label_change_share", "max_js_divergence"):
            if not 0 <= getattr(self, name) <= 1:
                raise GatesConfigError(f"threshold {name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.probability_tolerance < 1:
            raise GatesConfigError(f"probability_tolerance must be in (0, 1), got {self.probability_tolerance}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str) -> Thresholds:
        """Thresholds from a complete mapping; unknown or missing names are errors naming ``source``."""
        unknown = sorted(set(values) - set(THRESHOLD_NAMES))
        missing = [n for n in THRESHOLD_NAMES if n not in values]
        if unknown or missing:
            raise GatesConfigError(
                f"{source}: unknown thresholds {unknown}, missing thresholds {missing}; "
                f"expected exactly {list(THRESHOLD_NAMES)}"
            )
        return cls(**{f.name: _coerce(f.name, values[f.name], source) for f in fields(cls)})

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "overrides") -> Thresholds:
        """A copy with some thresholds replaced (``None`` values are ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return Thresholds.from_mapping({**asdict(self), **given}, source)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


THRESHOLD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Thresholds))
_INTEGER_THRESHOLDS = {"max_missing", "max_duplicates", "max_invalid"}


def _coerce(name: str, value: Any, source: str) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise GatesConfigError(f"{source}: threshold {name} must be a number, got {value!r}") from exc
    if name in _INTEGER_THRESHOLDS:
        if not number.is_integer():
            raise GatesConfigError(f"{source}: threshold {name} must be a whole number, got {value!r}")
        return int(number)
    return number


def gates_config_path(explicit: str | None = None) -> Path:
    """The gates file: ``explicit``, else ``$RESCORE_GATES_CONFIG``, else the project's default."""
    return Path(explicit or os.environ.get(GATES_CONFIG_ENV) or DEFAULT_GATES_CONFIG)


def load_thresholds(path: str | os.PathLike[str]) -> Thresholds:
    """Read the ``[thresholds]`` table of a gates file."""
    file = Path(path)
    if not file.is_file():
        raise GatesConfigError(
            f"gates config {file} does not exist: set {GATES_CONFIG_ENV} (or --gates-config) to a TOML file "
            f"like {DEFAULT_GATES_CONFIG.name} in include/validation"
        )
    try:
        doc = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise GatesConfigError(f"gates config {file} is not valid TOML: {exc}") from exc
    table = doc.get("thresholds")
    if not isinstance(table, dict):
        raise GatesConfigError(f"gates config {file} has no [thresholds] table")
    return Thresholds.from_mapping(table, str(file))


def _shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    if total <= 0:
        raise ValueError("a histogram without any count has no distribution")
    return [max(c / total, SHARE_FLOOR) for c in counts]


def population_stability_index(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI of two histograms over the same bins: ``sum((a - e) * ln(a / e))`` of the bin shares."""
    if len(expected) != len(actual):
        raise ValueError(f"histograms have {len(expected)} and {len(actual)} bins")
    e, a = _shares(expected), _shares(actual)
    return sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a, strict=True))


def jensen_shannon_divergence(p_counts: Sequence[float], q_counts: Sequence[float]) -> float:
    """Jensen-Shannon divergence, base 2 (0: same distribution, 1: disjoint), of two histograms."""
    if len(p_counts) != len(q_counts):
        raise ValueError(f"histograms have {len(p_counts)} and {len(q_counts)} bins")
    p_total, q_total = float(sum(p_counts)), float(sum(q_counts))
    if p_total <= 0 or q_total <= 0:
        raise ValueError("a histogram without any count has no distribution")
    p = [c / p_total for c in p_counts]
    q = [c / q_total for c in q_counts]
    m = [(pi + qi) / 2 for pi, qi in zip(p, q, strict=True)]

    def kl(x: list[float]) -> float:
        return sum(xi * math.log2(xi / mi) for xi, mi in zip(x, m, strict=True) if xi > 0)

    return max(0.0, (kl(p) + kl(q)) / 2)


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict. ``skipped`` gates (nothing to compare with) pass with ``value`` None."""

    name: str
    passed: bool
    value: float | None
    threshold: float
    detail: str
    skipped: bool = False


#: Sanity counts (``report["sanity"]``) and the gate that holds each to ``max_invalid``.
SANITY_GATES = {
    "null_or_nan": "no_null_or_nan",
    "score_out_of_range": "score_in_range",
    "probabilities_not_summing_to_1": "probabilities_sum_to_1",
    "unknown_label": "known_labels",
}


def evaluate_gates(metrics: Mapping[str, Any], thresholds: Thresholds) -> list[GateResult]:
    """Each gate's verdict from the measured metrics (``coverage``, ``sanity``, ``comparison``)."""
    cov, san, cmp = metrics["coverage"], metrics["sanity"], metrics.get("comparison")
    results = [
        GateResult(
            "coverage",
            cov["missing"] <= thresholds.max_missing,
            cov["missing"],
            thresholds.max_missing,
            f"{cov['missing']} of {cov['images_in_scope']} images in scope have no prediction",
        ),
        GateResult(
            "uniqueness",
            cov["duplicates"] <= thresholds.max_duplicates,
            cov["duplicates"],
            thresholds.max_duplicates,
            f"{cov['duplicates']} images have more than one prediction",
        ),
    ]
    results += [
        GateResult(
            gate, san[count] <= thresholds.max_invalid, san[count], thresholds.max_invalid, f"{count}={san[count]}"
        )
        for count, gate in SANITY_GATES.items()
    ]
    comparisons = (
        (
            "label_change",
            "label_change_share",
            thresholds.max_label_change_share,
            "share of images whose label changed",
        ),
        ("score_drift_psi", "psi", thresholds.max_psi, "population stability index of the score histogram"),
        ("score_drift_js", "js_divergence", thresholds.max_js_divergence, "Jensen-Shannon divergence of scores"),
    )
    for gate, key, limit, what in comparisons:
        value = cmp.get(key) if cmp else None
        if value is None:
            reason = "no promoted version to compare with" if not cmp else "no image scored by both versions"
            results.append(GateResult(gate, True, None, limit, f"skipped: {reason}", skipped=True))
        else:
            assert cmp is not None
            detail = f"{what} vs v{cmp['baseline_version']}: {value:.4f}"
            results.append(GateResult(gate, value <= limit, round(value, 6), limit, detail))
    return results
