"""A re-scoring run and its validation share a cutoff: images landing meanwhile are outside both."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

pytestmark = pytest.mark.spark

CUTOFF = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def _images(spark: Any) -> Any:
    rows = [
        ("early", "/l/early.png", datetime(2026, 11, 28, 8, 0, tzinfo=UTC)),
        ("just-before", "/l/b.png", datetime(2026, 11, 28, 8, 59, 59, tzinfo=UTC)),
        ("at-cutoff", "/l/c.png", CUTOFF),
        ("late", "/l/late.png", datetime(2026, 11, 28, 9, 30, tzinfo=UTC)),
    ]
    return spark.createDataFrame(
        [(i, p, None, t) for i, p, t in rows], "image_id string, path string, content binary, ingested_at timestamp"
    )


def test_scoring_takes_only_images_ingested_before_the_cutoff(spark: Any) -> None:
    from spark_jobs.score import select_images

    chosen = select_images(_images(spark), None, model_name="m", model_version="2", ingested_before=CUTOFF)

    assert sorted(r.image_id for r in chosen.collect()) == ["early", "just-before"]


def test_validation_scope_uses_the_same_cutoff(spark: Any) -> None:
    from spark_jobs.validate import scope_images

    in_scope = scope_images(_images(spark), None, None, CUTOFF)

    assert sorted(r.image_id for r in in_scope.collect()) == ["early", "just-before"]
    assert scope_images(_images(spark), None, None).count() == 4


def test_the_flag_parses_iso_timestamps_and_names_the_format_when_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    from spark_jobs.score import parse_args

    args = parse_args(["--model-name", "m", "--ingested-before", "2026-11-28T09:00:00+00:00"])
    assert args.ingested_before == CUTOFF
    with pytest.raises(SystemExit):
        parse_args(["--model-name", "m", "--ingested-before", "yesterday"])
    assert "use ISO 8601" in capsys.readouterr().err
