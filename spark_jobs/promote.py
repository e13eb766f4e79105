"""Promote: switch readers to a model version's predictions in one atomic step.

Promotion rewrites the small pointer ``warehouse/current.json`` (write, then rename), so a
reader that goes through :mod:`spark_jobs.read` sees either the old version's predictions or
the new one's, never a mix. A version is promoted only when its predictions exist and its
newest validation report passed. Old versions' predictions are then deleted beyond
``keep_versions``; the promoted version and any newer one (possibly being re-scored) are kept.
Standard library only: it runs in the Airflow worker, no Spark needed.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from spark_jobs.contract import RescorePaths
from spark_jobs.current import current_version, set_current

log = logging.getLogger("rescore.promote")


class PromotionError(Exception):
    """The version may not be promoted; the message says why and what to do."""


@dataclass(frozen=True)
class Promotion:
    model_name: str
    version: str
    previous: str | None
    deleted_versions: list[str] = field(default_factory=list)


def version_partition(paths: RescorePaths, model_name: str, version: str) -> Path:
    return Path(paths.predictions) / f"model_name={model_name}" / f"model_version={version}"


def newest_report(paths: RescorePaths, model_name: str, version: str) -> dict[str, object] | None:
    folder = Path(paths.reports) / model_name / version
    reports = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not reports:
        return None
    data: dict[str, object] = json.loads(reports[-1].read_text())
    return data


def prune_versions(paths: RescorePaths, model_name: str, keep_versions: int) -> list[str]:
    """Delete predictions of versions older than the promoted one, keeping ``keep_versions`` in all."""
    if keep_versions < 1:
        raise PromotionError(f"keep_versions must be at least 1, got {keep_versions}")
    current = current_version(paths, model_name)
    model_dir = Path(paths.predictions) / f"model_name={model_name}"
    if current is None or not model_dir.is_dir():
        return []
    versions = sorted(
        (p.name.split("=", 1)[1] for p in model_dir.iterdir() if p.name.startswith("model_version=")),
        key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v),
    )
    older = [v for v in versions if v.isdigit() and current.isdigit() and int(v) < int(current)]
    keep_older = keep_versions - 1
    doomed = older[: max(0, len(older) - keep_older)]
    for version in doomed:
        shutil.rmtree(version_partition(paths, model_name, version))
        log.info("deleted predictions of %s v%s (keeping %d versions)", model_name, version, keep_versions)
    return doomed


def promote(
    paths: RescorePaths,
    model_name: str,
    version: str,
    *,
    keep_versions: int = 3,
    require_passed_report: bool = True,
    only_if_unpromoted: bool = False,
) -> Promotion:
    """Point readers of ``model_name`` at ``version``, then prune old versions.

    :param only_if_unpromoted: promote only when no version is promoted yet (the first scoring
        run bootstraps readers; later switches belong to the re-scoring DAG).
    """
    if only_if_unpromoted:
        existing = current_version(paths, model_name)
        if existing is not None:
            log.info("%s v%s is promoted already; leaving the pointer alone", model_name, existing)
            return Promotion(model_name, existing, existing)
    partition = version_partition(paths, model_name, version)
    if not partition.is_dir():
        raise PromotionError(f"{model_name} v{version} has no predictions at {partition}: score it before promoting")
    if require_passed_report:
        report = newest_report(paths, model_name, version)
        if report is None:
            raise PromotionError(f"{model_name} v{version} has no validation report: validate it before promoting")
        if report.get("passed") is not True:
            raise PromotionError(
                f"{model_name} v{version} failed validation: {version} stays unpromoted; see its report in "
                f"{Path(paths.reports) / model_name / version}"
            )
    previous = current_version(paths, model_name)
    if previous == version:
        log.info("%s v%s is already promoted", model_name, version)
    else:
        set_current(paths, model_name, version, previous=previous)
        log.info("promoted %s v%s (was %s)", model_name, version, previous or "none")
    deleted = prune_versions(paths, model_name, keep_versions)
    return Promotion(model_name, version, previous, deleted)
