"""The demo's account of a model_rescore it does not run: which case applies and what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.demo import nothing_to_rescore
from spark_jobs.contract import RescorePaths

pytestmark = pytest.mark.unit


@pytest.fixture
def paths(rescore_home: Path) -> RescorePaths:
    return RescorePaths(str(rescore_home))


def test_a_champion_that_failed_validation_is_not_called_promoted(paths: RescorePaths, tmp_path: Path) -> None:
    # Given v2 champion, whose validation failed on an earlier demo run, and v1 still promoted
    reports = Path(paths.reports) / "shapes" / "2"
    reports.mkdir(parents=True)
    (reports / "run.json").write_text(json.dumps({"passed": False}))

    message = nothing_to_rescore(paths, "2", "1", tmp_path / "demo.log")

    # Then the demo says v2 failed, that readers keep v1, and how to move on
    assert "already promoted" not in message
    assert "v2 failed validation" in message
    assert "readers keep v1" in message
    assert "include.publish train" in message and "retry_failed" in message


def test_the_other_cases_each_say_what_applies(paths: RescorePaths, tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    assert "already promoted; nothing to re-score" in nothing_to_rescore(paths, "2", "2", log)
    assert "nothing of shapes is promoted yet" in nothing_to_rescore(paths, "1", None, log)
    assert "has no champion" in nothing_to_rescore(paths, None, None, log)
