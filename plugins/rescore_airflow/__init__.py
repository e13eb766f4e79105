"""Rescore's Airflow side: operators that submit the Spark jobs, and the model-registry glue.

Nothing heavy is imported here (no torch, tensorflow, pyspark, pandas, mlflow): the
dag-processor imports these modules every time it parses a DAG file.
"""
