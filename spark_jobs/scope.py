"""Which images a scoring or validation run covers: a range of ingestion days and a window of
ingestion instants, on the images table's ``ingested_at``."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

from spark_jobs.session import JobError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def instant(value: datetime) -> datetime:
    """``value`` as an aware instant: a naive timestamp is local time, as Spark reads it."""
    return value if value.tzinfo is not None else value.astimezone()


def check_scope(
    from_date: date | None,
    to_date: date | None,
    ingested_from: datetime | None = None,
    ingested_before: datetime | None = None,
) -> None:
    """Refuse a range that holds nothing because its ends are swapped."""
    if from_date is not None and to_date is not None and from_date > to_date:
        raise JobError(f"--from-date {from_date} is after --to-date {to_date}: swap them")
    if ingested_from is not None and ingested_before is not None and instant(ingested_from) >= instant(ingested_before):
        raise JobError(
            f"--ingested-from {ingested_from.isoformat()} is not before --ingested-before "
            f"{ingested_before.isoformat()}: the window holds no instant"
        )


def scope_images(
    images: DataFrame,
    from_date: date | None = None,
    to_date: date | None = None,
    ingested_before: datetime | None = None,
    ingested_from: datetime | None = None,
) -> DataFrame:
    """Images whose ``ingested_at`` day lies in ``[from_date, to_date]`` and whose ``ingested_at``
    lies in ``[ingested_from, ingested_before)`` (any end open when None).

    ``ingested_before`` alone is a re-scoring run's cutoff (validation uses the same one, so
    images landing meanwhile do not fail coverage); both instants are a backfill run's data
    interval.
    """
    from pyspark.sql import functions as F

    check_scope(from_date, to_date, ingested_from, ingested_before)
    day = F.to_date("ingested_at")
    if from_date is not None:
        images = images.where(day >= F.lit(from_date))
    if to_date is not None:
        images = images.where(day <= F.lit(to_date))
    if ingested_from is not None:
        images = images.where(F.col("ingested_at") >= F.lit(ingested_from))
    if ingested_before is not None:
        images = images.where(F.col("ingested_at") < F.lit(ingested_before))
    return images
