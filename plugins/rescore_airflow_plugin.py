"""Rescore's Airflow plugin: the only file under plugins/ that Airflow's plugin loader imports.

Everything else lives in the ``rescore_airflow`` package, which ``.airflowignore`` hides from
the loader (it would import each module as a top-level one, ``packaging`` shadowing the real
library); the package is imported the normal way from here and from the DAG files.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from rescore_airflow.links import ValidationReportLink
from rescore_airflow.operators import ValidatePredictionsOperator

# Deserialised DAGs (the API server's view) attach the link to tasks of these operator classes.
ValidationReportLink.operators = [ValidatePredictionsOperator]


class RescorePlugin(AirflowPlugin):
    """Registers the link from a validate task to its validation report."""

    name = "rescore"
    operator_extra_links = [ValidationReportLink()]  # noqa: RUF012 (AirflowPlugin's declared type)
