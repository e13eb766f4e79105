"""PySpark's worker daemon, with the scoring libraries imported once, before it forks workers.

Spark starts one Python daemon per executor (``python -m pyspark.daemon``) and forks a Python
worker from it for each task slot. Every worker then imports PyTorch for itself: 1 s of CPU and
about 124 MiB of memory of its own per worker (2-core AMD EPYC, PyTorch 2.13 CPU build;
``python -m include.bench.worker_start``), so an executor of 16 cores spends 16 s of CPU and
2 GiB on it before its first image. Imported here, in the daemon, the forked workers start with
it and share its pages copy-on-write.

Spark runs this module instead of ``pyspark.daemon`` when ``spark.python.daemon.module`` names
it; :func:`spark_jobs.session.get_spark` sets that for a local master unless the job was given
another value, and the profiles in ``include/spark`` set it for every master. The executors'
Python must import ``spark_jobs`` before any task has shipped it (``--py-files`` reach the
workers, not the daemon): see ``docs/inference.md``.

Which modules: :data:`PRELOAD_ENV` in the executors' environment, a comma-separated list;
unset, :data:`DEFAULT_PRELOAD` (NumPy, Pillow); empty, nothing (then this is PySpark's own
daemon). The scoring UDF asks for its framework's too (:func:`request_preload`: PyTorch for a
PyTorch model); ``spark.executorEnv.RESCORE_PRELOAD`` given to the job overrides both.

Only modules that start no threads when imported belong here: a fork copies the calling thread
only, so a child would find another thread's locks held forever. That rules out pandas and
pyarrow (PySpark imports them in each worker for this reason) and TensorFlow; NumPy's OpenBLAS
pool shuts itself down around a fork and PyTorch starts its pools on first use (as DataLoader
workers rely on). CUDA is not touched by importing PyTorch, so GPU workers still initialise
their own device after the fork.

A module that fails to import is skipped with a line on stderr, never fatal: if the daemon does
not start, no Python UDF of the application can run.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import os
import sys

#: the executor environment variable that lists the modules to import before forking
PRELOAD_ENV = "RESCORE_PRELOAD"
#: imported when :data:`PRELOAD_ENV` is unset (each only where it is installed): what every
#: Rescore job's Python workers use (ingest's door check decodes with Pillow)
DEFAULT_PRELOAD = ("numpy", "PIL.Image")
#: what a scoring job's daemon imports besides, per framework (TensorFlow starts threads when
#: imported: nothing for Keras)
FRAMEWORK_PRELOAD: dict[str, tuple[str, ...]] = {"pytorch": ("torch",), "keras": ()}


def preload_for(framework: str) -> str:
    """The :data:`PRELOAD_ENV` value for a job that scores with ``framework``."""
    return ",".join([*DEFAULT_PRELOAD, *FRAMEWORK_PRELOAD.get(framework, ())])


def request_preload(framework: str) -> None:
    """Ask the daemon of the Python UDFs created from now on to import ``framework``'s modules
    too (:func:`preload_for`), unless the application chose the list itself
    (``spark.executorEnv.RESCORE_PRELOAD``, or ``sc.environment``).

    A UDF takes its workers' environment from ``sc.environment`` when it is created, and Spark
    keeps a daemon per environment: the scoring UDF's workers get a daemon that imported PyTorch,
    while ingest's, say, do not pay for it."""
    from pyspark import SparkContext

    environment = SparkContext.getOrCreate().environment
    current = environment.get(PRELOAD_ENV)
    if current is None or current in {preload_for(name) for name in FRAMEWORK_PRELOAD}:  # unset, or ours
        environment[PRELOAD_ENV] = preload_for(framework)


def preload_modules(environ: dict[str, str] | None = None) -> list[str]:
    """The modules to import, from :data:`PRELOAD_ENV` (unset: :data:`DEFAULT_PRELOAD`)."""
    value = (os.environ if environ is None else environ).get(PRELOAD_ENV)
    if value is None:
        return list(DEFAULT_PRELOAD)
    return [name.strip() for name in value.split(",") if name.strip()]


def preload(names: list[str]) -> list[str]:
    """Import ``names`` that are installed; return those imported. Never raises.

    Anything they print goes to stderr: the daemon's stdout tells the JVM its port."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return _import_each(names)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _import_each(names: list[str]) -> list[str]:
    imported = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                continue  # not installed
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
                continue  # the module, or a package of its dotted name, is not installed
            _skip(name, exc)
        except Exception as exc:  # a broken install must not stop the daemon
            _skip(name, exc)
        else:
            imported.append(name)
    return imported


def _skip(name: str, exc: Exception) -> None:
    print(f"rescore worker daemon: not preloading {name}: {exc!r}", file=sys.stderr, flush=True)


def main() -> None:
    if preload(preload_modules()):
        # Move what was imported out of the cyclic collector's reach before forking: the workers'
        # collections (PySpark's daemon runs one after every task) then never walk those objects,
        # nor write to their pages, which would copy them into each worker.
        gc.collect()
        gc.freeze()
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
