"""The documented read path for predictions: always through the promotion pointer.

Read the pointer once, then that version's partition: a reader sees one complete version,
never a mix, even while a new version is being scored or promoted.

    from spark_jobs.read import current_predictions
    df = current_predictions(spark, "var", "shapes")          # Spark
    table = current_predictions_table("var", "shapes")         # pyarrow, no Spark
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spark_jobs.contract import RescorePaths
from spark_jobs.current import current_version

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession


class NothingPromotedError(LookupError):
    pass


def _version(paths: RescorePaths, model_name: str) -> str:
    version = current_version(paths, model_name)
    if version is None:
        raise NothingPromotedError(
            f"no version of {model_name!r} is promoted under {paths.home}: run the image_scoring or "
            "model_rescore DAG first"
        )
    return version


def current_predictions(spark: SparkSession, home: str, model_name: str) -> DataFrame:
    """The promoted version's predictions of ``model_name`` as a Spark DataFrame."""
    from pyspark.sql import functions as F

    paths = RescorePaths(home)
    version = _version(paths, model_name)
    partition = f"{paths.predictions}/model_name={model_name}/model_version={version}"
    return (
        spark.read.option("mergeSchema", "true")  # older files may lack columns (top_k, embedding)
        .parquet(partition)
        .withColumn("model_name", F.lit(model_name))
        .withColumn("model_version", F.lit(version))
    )


def current_predictions_table(home: str, model_name: str) -> pa.Table:
    """The promoted version's predictions of ``model_name`` as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    paths = RescorePaths(home)
    version = _version(paths, model_name)
    partition = f"{paths.predictions}/model_name={model_name}/model_version={version}"
    files = ds.dataset(partition, format="parquet")
    # The columns of every file, not only the first one's: older files may lack top_k or embedding.
    schema = pa.unify_schemas([fragment.physical_schema for fragment in files.get_fragments()])
    table = ds.dataset(partition, format="parquet", schema=schema).to_table()
    return table.append_column("model_name", pa.array([model_name] * table.num_rows, pa.string())).append_column(
        "model_version", pa.array([version] * table.num_rows, pa.string())
    )
