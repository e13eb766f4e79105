"""A re-scoring run and its validation share a cutoff: images landing meanwhile are outside both;
a backfill run's scoring and validation share its data interval."""

from __future__ import annotations

from datetime import UTC, date, datetime
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
    from spark_jobs.scope import scope_images

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


def test_a_backfill_window_takes_the_images_ingested_in_it_for_scoring_and_validation(spark: Any) -> None:
    from spark_jobs.scope import scope_images
    from spark_jobs.score import select_images

    # Given the data interval [08:59:59, 09:30) (its start included, its end not)
    start, end = datetime(2026, 11, 28, 8, 59, 59, tzinfo=UTC), datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
    chosen = select_images(
        _images(spark), None, model_name="m", model_version="2", ingested_from=start, ingested_before=end
    )
    in_scope = scope_images(_images(spark), ingested_from=start, ingested_before=end)
    # Then scoring and validation take the same images
    assert sorted(r.image_id for r in chosen.collect()) == ["at-cutoff", "just-before"]
    assert sorted(r.image_id for r in in_scope.collect()) == ["at-cutoff", "just-before"]


def test_a_window_whose_ends_are_swapped_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from spark_jobs.scope import scope_images
    from spark_jobs.score import parse_args
    from spark_jobs.session import JobError

    with pytest.raises(SystemExit):
        parse_args(
            [
                "--model-name",
                "m",
                "--ingested-from",
                "2026-11-28T10:00:00+00:00",
                "--ingested-before",
                "2026-11-28T09:00:00",
            ]
        )
    assert "--ingested-from 2026-11-28T10:00:00+00:00 is not before --ingested-before" in capsys.readouterr().err
    with pytest.raises(JobError, match="swap them"):
        scope_images(None, date(2026, 11, 7), date(2026, 11, 1))  # type: ignore[arg-type]
