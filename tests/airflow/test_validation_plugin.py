"""Airflow's plugin loader: only the plugin entry file is imported (plugins/.airflowignore), so
``rescore_airflow/packaging.py`` no longer shadows the real ``packaging`` library, and the report
link plugin is registered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]

# Loads the plugins exactly as every Airflow component does, then imports a part of the real
# `packaging` that nothing has imported yet.
PROBE = """
import json, sys
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
result = {
    "import_errors": plugins_manager.get_import_errors(),
    "links": [type(link).__name__ for link in plugins_manager.get_operator_extra_links()],
    "packaging_file": getattr(sys.modules.get("packaging"), "__file__", None),
    "bare_modules": [m for m in ("settings", "operators", "links", "packaging") if m in sys.modules
                     and "rescore_airflow" in str(getattr(sys.modules[m], "__file__", ""))],
}
try:
    import packaging.markers  # noqa: F401
    result["packaging_markers"] = "ok"
except ImportError as exc:
    result["packaging_markers"] = str(exc)
print("PROBE" + json.dumps(result))
"""


def _probe(plugins_folder: Path, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    env = {
        **os.environ,
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugins_folder)]),
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("PROBE"))
    return json.loads(line.removeprefix("PROBE"))  # type: ignore[no-any-return]


def test_the_plugin_loads_and_the_real_packaging_library_still_imports(tmp_path: Path) -> None:
    # When Airflow loads the project's plugins folder
    result = _probe(ROOT / "plugins", tmp_path)
    # Then the report link plugin is loaded without errors
    assert result["import_errors"] == {}
    assert result["links"] == ["ValidationReportLink"]
    # and `packaging` is still the library, not rescore_airflow/packaging.py
    assert result["packaging_markers"] == "ok"
    assert "site-packages" in result["packaging_file"]
    assert result["bare_modules"] == []


def test_without_the_ignore_file_the_loader_shadows_packaging(tmp_path: Path) -> None:
    # Given the same plugins folder without its .airflowignore (the bug this file fixes)
    copy = tmp_path / "plugins"
    shutil.copytree(ROOT / "plugins", copy, ignore=shutil.ignore_patterns("__pycache__", ".airflowignore"))
    # Then the loader imports rescore_airflow/packaging.py as `packaging`, and the library breaks
    result = _probe(copy, tmp_path)
    assert "packaging" in result["bare_modules"]
    assert "'packaging' is not a package" in result["packaging_markers"]


def test_airflow_plugins_command_lists_the_rescore_plugin(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    airflow = str(Path(sys.executable).parent / "airflow")
    out = subprocess.run(
        [airflow, "plugins", "--output", "json"], env=env, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    plugins = json.loads(out[out.index("[") :])
    rescore = next(p for p in plugins if p["name"] == "rescore")
    assert rescore["source"] == "$PLUGINS_FOLDER/rescore_airflow_plugin.py"
    assert rescore["operator_extra_links"] == ["<rescore_airflow.links.ValidationReportLink object>"]
    assert [p["name"] for p in plugins] == ["rescore"]
