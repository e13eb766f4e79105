"""Promotion pointer, promotion rules and retention (no Spark: plain files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spark_jobs.contract import RescorePaths
from spark_jobs.current import current_version, set_current
from spark_jobs.promote import PromotionError, promote, prune_versions
from spark_jobs.read import NothingPromotedError, current_predictions_table

pytestmark = pytest.mark.unit


def _scored(paths: RescorePaths, version: str, rows: int = 2) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = Path(paths.predictions) / "model_name=m" / f"model_version={version}"
    part.mkdir(parents=True)
    pq.write_table(pa.table({"image_id": [f"v{version}-{i}" for i in range(rows)]}), part / "part-0.parquet")


def _report(paths: RescorePaths, version: str, passed: bool) -> None:
    folder = Path(paths.reports) / "m" / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"run-{len(list(folder.iterdir()))}.json").write_text(json.dumps({"passed": passed}))


@pytest.fixture
def paths(tmp_path: Path) -> RescorePaths:
    return RescorePaths(str(tmp_path))


def test_promote_switches_the_pointer_and_remembers_the_previous_version(paths: RescorePaths) -> None:
    for v in ("1", "2"):
        _scored(paths, v)
        _report(paths, v, passed=True)
    promote(paths, "m", "1")
    result = promote(paths, "m", "2")
    assert current_version(paths, "m") == "2"
    assert result.previous == "1"
    pointer = json.loads(Path(paths.current).read_text())
    assert pointer["m"]["version"] == "2" and pointer["m"]["previous"] == "1"


def test_a_version_that_failed_validation_is_not_promoted(paths: RescorePaths) -> None:
    _scored(paths, "1")
    _report(paths, "1", passed=True)
    promote(paths, "m", "1")
    _scored(paths, "2")
    _report(paths, "2", passed=False)
    with pytest.raises(PromotionError, match="m v2 failed validation"):
        promote(paths, "m", "2")
    assert current_version(paths, "m") == "1"


def test_a_version_without_predictions_or_report_is_refused(paths: RescorePaths) -> None:
    with pytest.raises(PromotionError, match="has no predictions"):
        promote(paths, "m", "7")
    _scored(paths, "7")
    with pytest.raises(PromotionError, match="has no validation report"):
        promote(paths, "m", "7")
    assert current_version(paths, "m") is None


def test_only_if_unpromoted_never_moves_an_existing_pointer(paths: RescorePaths) -> None:
    for v in ("1", "2"):
        _scored(paths, v)
        _report(paths, v, passed=True)
    promote(paths, "m", "2")
    promote(paths, "m", "1", only_if_unpromoted=True)
    assert current_version(paths, "m") == "2"


def test_retention_keeps_the_newest_versions_and_anything_newer_than_current(paths: RescorePaths) -> None:
    for v in ("1", "2", "3", "4", "5"):
        _scored(paths, v)
    set_current(paths, "m", "4")
    deleted = prune_versions(paths, "m", keep_versions=2)
    assert deleted == ["1", "2"]
    left = sorted(p.name for p in (Path(paths.predictions) / "model_name=m").iterdir())
    assert left == ["model_version=3", "model_version=4", "model_version=5"]


def test_readers_get_exactly_the_promoted_version(paths: RescorePaths) -> None:
    with pytest.raises(NothingPromotedError, match="no version of 'm' is promoted"):
        current_predictions_table(paths.home, "m")
    _scored(paths, "1", rows=2)
    _scored(paths, "2", rows=3)
    set_current(paths, "m", "2")
    table = current_predictions_table(paths.home, "m")
    assert sorted(table.column("image_id").to_pylist()) == ["v2-0", "v2-1", "v2-2"]
    assert set(table.column("model_version").to_pylist()) == {"2"}


def test_readers_get_every_column_when_older_files_lack_some(paths: RescorePaths) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Given a promoted version whose first file predates the top_k column
    _scored(paths, "1", rows=2)
    part = Path(paths.predictions) / "model_name=m" / "model_version=1"
    top_k = pa.array(
        [[{"label": "dog", "score": 0.75}]], pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))
    )
    pq.write_table(pa.table({"image_id": ["new-0"], "top_k": top_k}), part / "part-1.parquet")
    set_current(paths, "m", "1")

    table = current_predictions_table(paths.home, "m")

    rows = {r["image_id"]: r["top_k"] for r in table.to_pylist()}
    assert rows == {"v1-0": None, "v1-1": None, "new-0": [{"label": "dog", "score": 0.75}]}
