"""Where a scoring task's time goes, added up over a job's tasks through a Spark accumulator.

Spark's UI shows a Python UDF as one opaque step of a stage. Each scoring task keeps a
:class:`StageClock` (a few ``perf_counter`` calls per model batch) and adds it to the job's
accumulator when it ends; the driver then logs what the Python workers spent per image:

- ``wait``: the task's thread waiting for the next decoded batch. Decoding inline (CPU
  executors) this is reading and decoding; with a prefetch pool (GPU executors) only the part
  the pool did not hide behind the model;
- ``input``: reading the Arrow batches Spark sends (the JVM reads the files and hands their bytes
  over), on whichever thread pulls them;
- ``decode``: decoding and preprocessing, summed over the threads or processes that do it (with
  a pool of ``n`` decoders this can reach ``n`` times the task's time);
- ``model``: the forward pass and building the output columns;
- ``output``: handing the predictions back to Spark (the task's thread waits while PySpark
  serialises them and the JVM takes them);
- ``setup``: finding the task's device and getting the model (built on a worker's first task,
  from the worker's cache afterwards);
- ``other``: the rest of the task's time (the task thread's ``setup``, ``wait``, ``model`` and
  ``output`` do not overlap, so this is never negative).

A task that Spark retries adds its time twice (accumulators count every attempt inside a Python
UDF); the per-image figures divide by the images the tasks handled, so they stay right.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.sql import SparkSession

T = TypeVar("T")

#: The stages a task's clock times, in the order of :meth:`StageClock.vector`.
STAGES = ("setup", "wait", "input", "decode", "model", "output")
#: Of those, the ones timed on the task's own thread: they do not overlap, so the task's time
#: minus their sum is what nothing else accounts for.
TASK_THREAD_STAGES = ("setup", "wait", "model", "output")
#: What each stage means, for the log line and the docs.
STAGE_TITLES = {
    "setup": "model setup",
    "wait": "waiting for decoded images",
    "input": "reading Spark's batches",
    "decode": "decoding",
    "model": "model",
    "output": "returning results",
    "other": "other",
}
# the vector: tasks, images, task seconds, task CPU seconds, then STAGES
_HEAD = ("tasks", "images", "task", "cpu")


class StageClock:
    """Seconds per stage of one task, its images, its wall and CPU time.

    :meth:`add` is thread-safe: reading and decoding may run on a prefetch thread.
    :param now: the clock (tests inject a fake one).
    """

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.images = 0
        self.task = 0.0
        self.cpu = 0.0

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def timed(self, items: Iterable[T], stage: str) -> Iterator[T]:
        """``items``, with the time spent getting each (and finding the end) added to ``stage``."""
        iterator = iter(items)
        while True:
            started = self.now()
            try:
                item = next(iterator)
            except StopIteration:
                self.add(stage, self.now() - started)
                return
            self.add(stage, self.now() - started)
            yield item

    def vector(self) -> list[float]:
        """What the accumulator adds up: one task, then :data:`_HEAD` and :data:`STAGES`."""
        with self._lock:
            return [1.0, float(self.images), self.task, self.cpu, *(self.seconds[s] for s in STAGES)]


class StageSeconds:
    """Accumulator parameter adding :meth:`StageClock.vector` element by element (Spark's
    ``AccumulatorParam`` interface; a module-level class, so executors unpickle it by reference)."""

    def zero(self, value: list[float]) -> list[float]:
        return [0.0] * len(value)

    def addInPlace(self, first: list[float], second: list[float]) -> list[float]:  # noqa: N802 - Spark's name
        return [a + b for a, b in zip(first, second, strict=True)]


def stage_accumulator(spark: SparkSession) -> Accumulator[list[float]]:
    """A new accumulator for the scoring UDF's stage clocks (read it with :meth:`StageReport.of`)."""
    return spark.sparkContext.accumulator([0.0] * (len(_HEAD) + len(STAGES)), StageSeconds())  # type: ignore[arg-type]


@dataclass(frozen=True)
class StageReport:
    """A job's stage clocks added up: tasks, images, seconds by stage."""

    tasks: int
    images: int
    task_seconds: float
    cpu_seconds: float
    seconds: dict[str, float]

    @classmethod
    def of(cls, vector: list[float]) -> StageReport:
        if len(vector) != len(_HEAD) + len(STAGES):
            raise ValueError(f"a stage vector has {len(_HEAD) + len(STAGES)} values, got {len(vector)}")
        tasks, images, task, cpu, *stages = vector
        return cls(int(tasks), int(images), task, cpu, dict(zip(STAGES, stages, strict=True)))

    @property
    def other_seconds(self) -> float:
        return max(0.0, self.task_seconds - sum(self.seconds[s] for s in TASK_THREAD_STAGES))

    def ms_per_image(self) -> dict[str, float]:
        """Milliseconds per image by stage, ``other``, the task's (``task``) and CPU (``cpu``)."""
        per = 1000 / max(self.images, 1)
        stages = {name: value * per for name, value in self.seconds.items()}
        totals = {"other": self.other_seconds, "task": self.task_seconds, "cpu": self.cpu_seconds}
        return {**stages, **{name: value * per for name, value in totals.items()}}

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "images": self.images,
            "task_seconds": self.task_seconds,
            "cpu_seconds": self.cpu_seconds,
            "seconds": dict(self.seconds),
            "ms_per_image": self.ms_per_image(),
        }

    def summary(self) -> str:
        """One line for the job's log."""
        if not self.images:
            return f"{self.tasks} tasks, no images"
        ms = self.ms_per_image()
        waited = (
            f"{STAGE_TITLES['wait']} {ms['wait']:.2f} ({STAGE_TITLES['input']} {ms['input']:.2f}, "
            f"{STAGE_TITLES['decode']} {ms['decode']:.2f})"
        )
        rest = ", ".join(f"{STAGE_TITLES[s]} {ms[s]:.2f}" for s in ("model", "output", "other"))
        return (
            f"Python workers' time per image (ms): {waited}, {rest}; task {ms['task']:.2f}, CPU {ms['cpu']:.2f}; "
            f"{STAGE_TITLES['setup']} {self.seconds['setup']:.1f} s in all over {self.tasks} tasks, "
            f"{self.images} images"
        )
