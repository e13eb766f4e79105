"""Measurements taken from the process tree (psutil): CPU seconds and the peak resident memory
of Spark's Python workers, sampled by a background thread."""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

import psutil


def tree(root: int | None = None) -> list[psutil.Process]:
    """The process and all its descendants (the JVM, Python workers, DataLoader workers)."""
    proc = psutil.Process(root or os.getpid())
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU of the tree, including children that already exited and were reaped."""
    total = 0.0
    for proc in tree(root):
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def is_python_worker(proc: psutil.Process) -> bool:
    """A PySpark Python worker (forked from ``pyspark.daemon``) or the daemon itself."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    return any("pyspark.daemon" in part or "pyspark.worker" in part for part in cmdline)


class WorkerMemorySampler:
    """Samples the resident memory of Spark's Python workers every ``interval`` seconds.

    ``peak_worker_bytes`` is the largest single worker seen, ``peak_total_bytes`` the largest sum
    over all workers at one instant.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_worker_bytes = 0
        self.peak_total_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        total = 0
        for proc in tree():
            if not is_python_worker(proc):
                continue
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            self.peak_worker_bytes = max(self.peak_worker_bytes, rss)
        self.peak_total_bytes = max(self.peak_total_bytes, total)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> WorkerMemorySampler:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class Stopwatch:
    """Wall seconds and process-tree CPU seconds of a block."""

    def __enter__(self) -> Stopwatch:
        self.cpu_start = tree_cpu_seconds()
        self.start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = max(0.0, tree_cpu_seconds() - self.cpu_start)
