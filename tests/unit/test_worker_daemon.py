"""Rescore's Python daemon (spark_jobs.worker_daemon): which modules it imports before forking
workers, and that nothing it imports can stop it or write to its stdout (the JVM reads the
daemon's port from there)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spark_jobs.worker_daemon import preload, preload_for, preload_modules

pytestmark = pytest.mark.unit


def test_unset_preloads_numpy_and_pillow() -> None:
    assert preload_modules({}) == ["numpy", "PIL.Image"]


@pytest.mark.parametrize(
    ("framework", "expected"),
    [("pytorch", "numpy,PIL.Image,torch"), ("keras", "numpy,PIL.Image")],
)
def test_a_scoring_job_asks_for_its_framework_unless_it_starts_threads(framework: str, expected: str) -> None:
    assert preload_for(framework) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", []), (" json , ,email.utils,", ["json", "email.utils"]), ("torch", ["torch"])],
    ids=["empty-turns-it-off", "comma-separated", "one"],
)
def test_the_environment_variable_names_the_modules(value: str, expected: list[str]) -> None:
    assert preload_modules({"RESCORE_PRELOAD": value}) == expected


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for throwaway modules, forgotten again afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("rescore_noisy", "rescore_broken", "rescore_brokenpkg", "rescore_needs"):
        sys.modules.pop(name, None)


def test_a_missing_or_failing_module_is_skipped_and_what_imports_print_goes_to_stderr(
    modules: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given a module that prints (through Python and straight to file descriptor 1) and one that raises
    (modules / "rescore_noisy.py").write_text(
        "import os\nprint('hello from python')\nos.write(1, b'hello from C\\n')\n"
    )
    (modules / "rescore_broken.py").write_text("raise RuntimeError('half-installed')\n")

    # When the daemon preloads them beside one that is not installed
    imported = preload(["rescore_absent_module", "rescore_broken", "rescore_noisy"])
    print("stdout again")

    # Then the one that imports is imported, the broken one is named on stderr, and stdout holds
    # nothing from the imports (and works again afterwards)
    assert imported == ["rescore_noisy"]
    assert "rescore_noisy" in sys.modules
    out, err = capfd.readouterr()
    assert out == "stdout again\n"
    assert "hello from python" in err and "hello from C" in err
    assert "not preloading rescore_broken" in err and "half-installed" in err
    assert "rescore_absent_module" not in err


# What spark-submit printed when the executors' Python could not import the daemon (trimmed).
_SPARK_SAID = """An error occurred while calling o52.collectToPython.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 0.0 failed 1 times
Error from python worker:
  /opt/venv/bin/python3.11: Error while finding module specification for 'spark_jobs.worker_daemon' \
(ModuleNotFoundError: No module named 'spark_jobs')
\tat org.apache.spark.errors.SparkCoreErrors$.eofExceptionWhileReadPortNumberError(SparkCoreErrors.scala:55)
"""


def test_a_job_whose_executors_cannot_import_the_daemon_says_how_to_fix_it(caplog: pytest.LogCaptureFixture) -> None:
    from spark_jobs.session import run_main

    def body(argv: list[str] | None) -> int:
        raise RuntimeError(_SPARK_SAID)

    assert run_main("score", body, []) == 2
    message = caplog.records[-1].getMessage()
    assert "cannot import spark_jobs.worker_daemon" in message
    assert "PYTHONPATH" in message and "remove spark.python.daemon.module" in message
    assert "No module named 'spark_jobs'" in message and "SparkCoreErrors" not in message


def test_other_failures_still_raise() -> None:
    from spark_jobs.session import run_main

    def body(argv: list[str] | None) -> int:
        raise RuntimeError("No module named 'torchvision'")

    with pytest.raises(RuntimeError, match="torchvision"):
        run_main("score", body, [])


def test_a_broken_package_or_a_missing_dependency_is_named_but_an_absent_package_is_not(
    modules: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given a package whose __init__ raises, and a module that imports something not installed
    (modules / "rescore_brokenpkg").mkdir()
    (modules / "rescore_brokenpkg" / "__init__.py").write_text("raise OSError('missing shared library')\n")
    (modules / "rescore_needs.py").write_text("import rescore_not_installed_dependency\n")

    # When the daemon preloads a module of each, and one of a package that is not installed
    imported = preload(["rescore_brokenpkg.sub", "rescore_needs", "rescore_absent_package.sub"])

    # Then nothing is imported, nothing raised, and the two broken ones are named with their reason
    assert imported == []
    err = capfd.readouterr().err
    assert "not preloading rescore_brokenpkg.sub" in err and "missing shared library" in err
    assert "not preloading rescore_needs" in err and "rescore_not_installed_dependency" in err
    assert "rescore_absent_package" not in err
