"""Rescore's Airflow plugin: the only file under plugins/ that Airflow's plugin loader imports.

Everything else lives in the ``rescore_airflow`` package, which ``.airflowignore`` hides from
the loader (it would import each module as a top-level one, ``packaging`` shadowing the real
library); the package is imported the normal way from here and from the DAG files.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from rescore_airflow.links import ValidationReportLink


class RescorePlugin(AirflowPlugin):
    """Registers the link from a validate task to its validation report.

    The link is computed in the worker when the task ends (``ValidatePredictionsOperator``
    declares it) and stored in XCom, which the UI reads. It names no ``operators`` on purpose:
    a plugin link bound to an operator replaces that stored value in the API server and would be
    computed there instead, where the task's XCom is not reachable through the Task SDK.
    """

    name = "rescore"
    operator_extra_links = [ValidationReportLink()]  # noqa: RUF012 (AirflowPlugin's declared type)
