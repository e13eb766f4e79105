"""The operator extra link to a validation report, shown on the validate task in the Airflow UI.

The validate task pushes the report's URL to XCom (:data:`REPORT_URL_XCOM_KEY`); at the end of
the task Airflow asks :class:`ValidationReportLink` for the link, which reads that XCom, and
stores the answer for the UI. The URL is under ``$RESCORE_REPORTS_BASE_URL`` when set (where the
reports folder is served from, reachable from the browser), else a ``file://`` URL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: XCom key under which the validate task pushes its report URL.
REPORT_URL_XCOM_KEY = "validation_report_url"
#: Environment variable: the URL at which ``$RESCORE_HOME/reports`` is served to the browser.
REPORTS_BASE_URL_ENV = "RESCORE_REPORTS_BASE_URL"


def report_url(report_file: str | os.PathLike[str], reports_dir: str | os.PathLike[str]) -> str:
    """The URL of a report file: under ``$RESCORE_REPORTS_BASE_URL`` when set, else ``file://``.

    :param report_file: the report (HTML) file, inside ``reports_dir``.
    :param reports_dir: the reports root (``$RESCORE_HOME/reports``) that the base URL serves.
    """
    base = os.environ.get(REPORTS_BASE_URL_ENV, "").strip()
    path = Path(report_file).resolve()
    if not base:
        return path.as_uri()
    try:
        relative = path.relative_to(Path(reports_dir).resolve())
    except ValueError as exc:
        raise ValueError(
            f"report {path} is not under the reports folder {reports_dir} that {REPORTS_BASE_URL_ENV} serves"
        ) from exc
    return f"{base.rstrip('/')}/{quote(relative.as_posix())}"


class ValidationReportLink(BaseOperatorLink):
    """The "Validation report" button on a validate task: the URL the task pushed to XCom."""

    name = "Validation report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        url = XCom.get_value(ti_key=ti_key, key=REPORT_URL_XCOM_KEY)
        return str(url) if url else ""
