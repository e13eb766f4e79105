"""Where a scoring task's time goes (spark_jobs.stages): the clock a task keeps, what the
accumulator adds up, and the per-image report the score job logs."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from spark_jobs.model_store import Manifest
from spark_jobs.models import BatchOutput
from spark_jobs.score import ScoringOptions, score_partition
from spark_jobs.stages import STAGES, StageClock, StageReport, StageSeconds


class FakeTime:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class SlowPredictor:
    """Three (fake) seconds per model batch."""

    def __init__(self, clock: FakeTime) -> None:
        self.clock = clock
        self.manifest = Manifest(
            name="slow", framework="pytorch", architecture="fake", input_size=4, labels=["a", "b"], version="1"
        )

    def forward(self, batch: np.ndarray) -> BatchOutput:
        self.clock.advance(3.0)
        return BatchOutput(np.tile(np.array([[0.25, 0.75]], dtype=np.float32), (len(batch), 1)), None)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch).probabilities


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _arrow_batches(clock: FakeTime, count: int, rows: int) -> Iterator[tuple[pd.Series, pd.Series]]:
    """``count`` batches of ``rows`` images, each taking Spark two (fake) seconds to hand over."""
    data = _png()
    for b in range(count):
        clock.advance(2.0)
        yield pd.Series([data] * rows), pd.Series([f"mem://{b}/{r}" for r in range(rows)])


def test_a_tasks_clock_splits_its_time_into_reading_waiting_model_and_returning_results() -> None:
    # Given 5 Arrow batches of 4 images (2 s each to arrive), model batches of 2 (3 s each),
    # frames of 4 rows back to Spark, and a consumer that takes 1 s with each frame
    fake = FakeTime()
    clock = StageClock(now=fake)
    options = ScoringOptions(batch_size=2, decode="inline", output_rows=4)
    frames = score_partition(_arrow_batches(fake, 5, 4), SlowPredictor(fake), options, clock=clock)

    # When the task runs to the end
    rows = 0
    for frame in frames:
        rows += len(frame)
        fake.advance(1.0)

    # Then: 5 x 2 s reading, all of it spent waiting for decoded batches (decoding is inline);
    # 10 model batches x 3 s; 5 frames x 1 s handing them back; 20 images
    assert rows == 20
    assert clock.images == 20
    assert clock.seconds["input"] == pytest.approx(10.0)
    assert clock.seconds["wait"] == pytest.approx(10.0)
    assert clock.seconds["model"] == pytest.approx(30.0)
    assert clock.seconds["output"] == pytest.approx(5.0)
    # decoding is timed on the real clock, wherever it runs
    assert clock.seconds["decode"] > 0


def test_a_task_stopped_early_keeps_what_it_timed() -> None:
    fake = FakeTime()
    clock = StageClock(now=fake)
    options = ScoringOptions(batch_size=2, decode="inline", output_rows=2)
    frames = score_partition(_arrow_batches(fake, 3, 2), SlowPredictor(fake), options, clock=clock)
    first = next(frames)
    frames.close()
    assert len(first) == 2
    assert clock.images == 2
    assert clock.seconds["model"] == pytest.approx(3.0)
    assert clock.seconds["input"] == pytest.approx(2.0)


def test_the_accumulator_adds_tasks_element_by_element() -> None:
    param = StageSeconds()
    first, second = StageClock(now=FakeTime()), StageClock(now=FakeTime())
    first.images, first.task, first.cpu = 10, 4.0, 3.5
    first.add("model", 3.0)
    second.images, second.task, second.cpu = 30, 9.0, 8.0
    second.add("model", 6.0)
    second.add("wait", 2.0)
    total = param.addInPlace(param.addInPlace(param.zero(first.vector()), first.vector()), second.vector())
    report = StageReport.of(total)
    assert (report.tasks, report.images) == (2, 40)
    assert report.task_seconds == pytest.approx(13.0)
    assert report.cpu_seconds == pytest.approx(11.5)
    assert report.seconds["model"] == pytest.approx(9.0)
    assert report.seconds["wait"] == pytest.approx(2.0)


def test_the_report_gives_milliseconds_per_image_and_what_no_stage_accounts_for() -> None:
    # 2 tasks, 400 images, 10 s of task time of which setup 0.5, wait 2, model 6, output 0.5
    # (input 1.2 and decode 0.9 happened inside the wait), 9 s of CPU
    seconds = {"setup": 0.5, "wait": 2.0, "input": 1.2, "decode": 0.9, "model": 6.0, "output": 0.5}
    report = StageReport.of([2, 400, 10.0, 9.0, *(seconds[s] for s in STAGES)])
    ms = report.ms_per_image()
    assert ms["model"] == pytest.approx(15.0)
    assert ms["wait"] == pytest.approx(5.0)
    assert ms["input"] == pytest.approx(3.0)
    assert ms["other"] == pytest.approx(2.5)  # 10 - (0.5 + 2 + 6 + 0.5) = 1 s over 400 images
    assert ms["task"] == pytest.approx(25.0)
    assert ms["cpu"] == pytest.approx(22.5)
    line = report.summary()
    assert "model 15.00" in line and "other 2.50" in line and "400 images" in line and "2 tasks" in line
    assert report.as_dict()["ms_per_image"]["decode"] == pytest.approx(2.25)


def test_a_vector_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="stage vector has 10 values, got 3"):
        StageReport.of([1.0, 2.0, 3.0])


def test_a_job_that_scored_nothing_says_so() -> None:
    assert StageReport.of([0.0] * 10).summary() == "0 tasks, no images"
