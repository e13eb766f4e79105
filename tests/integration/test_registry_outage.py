"""The model registry unreachable for a while: a real MLflow tracking server on 127.0.0.1, stopped
while the model-version trigger polls it, then started again with a new champion."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescore_airflow.triggers import ModelVersionTrigger
from spark_jobs.contract import RescorePaths
from spark_jobs.current import set_current
from tests.airflow.test_mlflow_registry import _register

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mlflow = str(Path(sys.executable).parent / "mlflow")
        log = open(self.root / "mlflow-server.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                mlflow,
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--default-artifact-root",
                (self.root / "artifacts").as_uri(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert self.proc.poll() is None, (self.root / "mlflow-server.log").read_text()[-3000:]
                time.sleep(0.5)
        raise AssertionError("the MLflow server did not start within 180 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    # fail fast while the server is down instead of MLflow's long retry back-off
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = MlflowServer(tmp_path, _free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_sensor_trigger_rides_out_a_registry_outage_then_fires(
    mlflow_server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault: the model registry (a real MLflow server) unreachable for a while.
    Does: promotes v1, starts the sensor's trigger polling every 0.5 s, stops the MLflow server for
    several polls, then starts it again and makes v2 champion.
    Asserts: during the outage the trigger logs that the registry is unreachable and neither fails
    nor fires; once the server is back it fires exactly for v2.
    """
    paths = RescorePaths(str(tmp_path / "home"))
    assert _register(mlflow_server.uri, tmp_path, b"weights-1") == "1"
    set_current(paths, "m", "1")
    trigger = ModelVersionTrigger("m", {"backend": "mlflow", "location": mlflow_server.uri}, paths.home, 0.5)

    async def scenario() -> dict[str, str]:
        events = trigger.run()
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(2)
        assert not first.done(), "fired although the champion is the promoted version"
        await asyncio.to_thread(mlflow_server.stop)
        await asyncio.sleep(4)
        assert not first.done(), "the trigger gave up or fired while the registry was down"
        await asyncio.to_thread(mlflow_server.start)
        assert await asyncio.to_thread(_register, mlflow_server.uri, tmp_path, b"weights-2") == "2"
        event = await asyncio.wait_for(first, timeout=120)
        return dict(event.payload)

    payload = asyncio.run(scenario())

    assert payload == {"model_name": "m", "version": "2"}
    # Airflow's trigger logger writes through structlog to stdout
    assert "model registry unreachable" in capsys.readouterr().out
