"""Measurements taken from the process tree (psutil): CPU seconds and the peak resident memory
of Spark's Python workers, sampled by a background thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

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
    return sum(tree_cpu_by_kind(root).values())


#: Where a Spark method's CPU goes: Spark's Python workers (and their daemon), the JVM, the
#: benchmark's own process (the driver's Python side), and everything else (the ceiling's
#: process pool and DataLoader workers).
CPU_KINDS = ("python_workers", "jvm", "driver", "other")


def process_kind(proc: psutil.Process, driver_pid: int) -> str:
    """One of :data:`CPU_KINDS` for ``proc`` in the tree of ``driver_pid``."""
    if proc.pid == driver_pid:
        return "driver"
    if is_python_worker(proc):
        return "python_workers"
    try:
        if proc.name() == "java":
            return "jvm"
    except psutil.Error:
        pass
    return "other"


def tree_cpu_by_process(root: int | None = None) -> dict[tuple[int, float], tuple[str, float]]:
    """User + system CPU seconds of each process in the tree (including its reaped children),
    keyed by (pid, start time), with its :func:`process_kind`."""
    driver_pid = root or os.getpid()
    cpu: dict[tuple[int, float], tuple[str, float]] = {}
    for proc in tree(driver_pid):
        try:
            t = proc.cpu_times()
            key = (proc.pid, proc.create_time())
        except psutil.Error:
            continue
        cpu[key] = (process_kind(proc, driver_pid), t.user + t.system + t.children_user + t.children_system)
    return cpu


def tree_cpu_by_kind(root: int | None = None) -> dict[str, float]:
    """:func:`tree_cpu_seconds` split by :func:`process_kind`. A process that exited and was
    reaped counts in its parent's kind (the kernel adds its CPU to the parent's children)."""
    totals = dict.fromkeys(CPU_KINDS, 0.0)
    for kind, seconds in tree_cpu_by_process(root).values():
        totals[kind] += seconds
    return totals


def cpu_between(
    start: dict[Any, tuple[str, float]], end: dict[Any, tuple[str, float]], kinds: tuple[str, ...] = CPU_KINDS
) -> dict[str, float]:
    """CPU seconds by kind spent between two :func:`tree_cpu_by_process` snapshots, process by
    process: a process that started meanwhile counts in full, one that vanished counts nothing.

    Totals of the whole tree cannot be subtracted: PySpark's daemon ignores SIGCHLD, so a Python
    worker that Spark stops (its idle workers after a minute without tasks) takes its lifetime's
    CPU with it, and the difference of two totals went negative.
    """
    spent = dict.fromkeys(kinds, 0.0)
    for key, (kind, seconds) in end.items():
        spent[kind] += seconds - start.get(key, (kind, 0.0))[1]
    return spent


#: The JVM's threads by what they do, from their names as the kernel keeps them (15 characters):
#: the JIT compilers, the garbage collector, Spark's task threads (reading files, Arrow to and from
#: the Python workers, writing Parquet); ``other`` is every other thread (Arrow's writer threads
#: to the workers, the scheduler, RPC).
JVM_THREAD_GROUPS: dict[str, tuple[str, ...]] = {
    "compiler": ("C1 CompilerThre", "C2 CompilerThre"),
    "gc": ("GC Thread", "G1 "),
    "tasks": ("Executor task",),
}
JVM_GROUPS = (*JVM_THREAD_GROUPS, "other")


def jvm_thread_group(name: str) -> str:
    """One of :data:`JVM_GROUPS` for a JVM thread's kernel name."""
    for group, prefixes in JVM_THREAD_GROUPS.items():
        if name.startswith(prefixes):
            return group
    return "other"


def jvm_threads_cpu(root: int | None = None) -> dict[tuple[int, int], tuple[str, float]]:
    """User + system CPU seconds of each thread of the JVMs in the tree, keyed by (pid, thread
    id), with its :func:`jvm_thread_group` (names from ``/proc``: Linux; elsewhere ``other``)."""
    driver_pid = root or os.getpid()
    cpu: dict[tuple[int, int], tuple[str, float]] = {}
    for proc in tree(driver_pid):
        if process_kind(proc, driver_pid) != "jvm":
            continue
        try:
            threads = proc.threads()
        except psutil.Error:
            continue
        for thread in threads:
            try:
                name = Path(f"/proc/{proc.pid}/task/{thread.id}/comm").read_text().strip()
            except OSError:
                name = ""
            cpu[proc.pid, thread.id] = (jvm_thread_group(name), thread.user_time + thread.system_time)
    return cpu


#: Kinds of resident memory :func:`memory_split` tells apart.
MEMORY_KINDS = ("heap", "anonymous", "other")


def split_smaps(text: str) -> dict[str, int]:
    """Resident bytes by kind of mapping, from the text of ``/proc/<pid>/smaps``: ``heap`` is the
    C library's main heap (``[heap]``: what ``malloc`` serves below its mmap threshold from the
    main thread's arena), ``anonymous`` the mappings without a name (large ``malloc`` blocks,
    other threads' arenas, Arrow's and PyTorch's own pools), ``other`` the rest (code and data
    of libraries and files, stacks)."""
    split = dict.fromkeys(MEMORY_KINDS, 0)
    kind = "other"
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if not fields[0].endswith(":"):  # a mapping's header: address perms offset dev inode [name]
            name = fields[5] if len(fields) > 5 else ""
            kind = "heap" if name == "[heap]" else "anonymous" if name == "" else "other"
        elif fields[0] == "Rss:":
            split[kind] += int(fields[1]) * 1024
    return split


def memory_split(pid: int) -> dict[str, int] | None:
    """:func:`split_smaps` of a running process; None when it is gone or cannot be read."""
    try:
        return split_smaps(Path(f"/proc/{pid}/smaps").read_text())
    except OSError:
        return None


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
    over all workers at one instant. ``peak_worker_split`` is that worker's resident memory by
    kind (:func:`memory_split`), read whenever its peak rose by :data:`SPLIT_STEP` or more since
    the last reading (reading ``smaps`` costs milliseconds: not on every sample).
    """

    #: bytes the peak must rise by before its split is read again
    SPLIT_STEP = 1 << 20

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_worker_bytes = 0
        self.peak_worker_split: dict[str, int] | None = None
        self._split_at = 0
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
            if rss > self.peak_worker_bytes:
                self.peak_worker_bytes = rss
                if rss >= self._split_at + self.SPLIT_STEP:
                    split = memory_split(proc.pid)
                    if split is not None:
                        self.peak_worker_split, self._split_at = split, rss
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
    """Wall seconds and process-tree CPU seconds of a block, in all, by :data:`CPU_KINDS` and
    the JVM's by :data:`JVM_GROUPS`."""

    def __enter__(self) -> Stopwatch:
        # The threads' snapshots are taken inside the processes' ones, so that the threads' window
        # lies within the processes' and their sum cannot take in CPU the processes' total missed.
        self.cpu_start = tree_cpu_by_process()
        self.jvm_start = jvm_threads_cpu()
        self.start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.seconds = time.perf_counter() - self.start
        jvm_end = jvm_threads_cpu()
        self.cpu_by_kind = cpu_between(self.cpu_start, tree_cpu_by_process())
        self.cpu_seconds = sum(self.cpu_by_kind.values())
        #: the JVM's CPU by :data:`JVM_GROUPS`, over the threads alive at the end of the block
        #: (the kernel counts each thread's CPU in clock ticks, so each thread's share may be off
        #: by one tick, ``1 / os.sysconf("SC_CLK_TCK")`` seconds, usually 0.01)
        self.jvm_by_thread = cpu_between(self.jvm_start, jvm_end, JVM_GROUPS)
