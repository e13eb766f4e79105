"""Airflow for real: api-server, scheduler, dag-processor and triggerer with the LocalExecutor on
the machine's PostgreSQL (a throwaway database per run), driven only through the REST API v2 with
a token from the simple auth manager.

The DAGs run as users run them: ``image_scoring`` triggered with a Param, then ``model_rescore``
unpaused so that its deferrable sensor waits in the triggerer; the scheduler and the triggerer are
restarted while it waits, a new champion is published, and the re-scoring must happen exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from include.sample_data import generate
from spark_jobs.contract import RescorePaths
from spark_jobs.current import current_version
from spark_jobs.model_store import Manifest, ModelStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PG_DSN = os.environ.get("RESCORE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
COMPONENTS = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect(PG_DSN, connect_timeout=3).close()
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def throwaway_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this run's Airflow metadata, dropped afterwards."""
    if not _postgres_available():
        pytest.skip(f"no PostgreSQL server at {PG_DSN} (set RESCORE_TEST_PG to one with trust or password auth)")
    import psycopg2

    name = f"rescore_it_{secrets.token_hex(4)}"
    admin = psycopg2.connect(PG_DSN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        base, _, _ = PG_DSN.rpartition("/")
        yield f"{base.replace('postgresql://', 'postgresql+psycopg2://', 1)}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class Deployment:
    """The four Airflow components, each in its own process group, and an API client."""

    def __init__(self, root: Path, env: dict[str, str], port: int, password: str) -> None:
        self.root = root
        self.env = env
        self.port = port
        self.password = password
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None
        self.image_ids: set[str] = set()

    def airflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        airflow = str(Path(sys.executable).parent / "airflow")
        return subprocess.run([airflow, *args], check=False, env=self.env, capture_output=True, text=True, timeout=600)

    def start(self, component: str) -> None:
        airflow = str(Path(sys.executable).parent / "airflow")
        args = [a.format(port=self.port) for a in COMPONENTS[component]]
        log = open(self.root / f"{component}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[component] = subprocess.Popen(
            [airflow, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, component: str) -> None:
        proc = self.procs.pop(component, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        else:
            # children the component forked (task supervisors, gunicorn workers) share its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for component in list(self.procs):
            self.stop(component)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} (last lines)\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:])
            for p in sorted(self.root.glob("*.log"))
        )

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        if self._token is None:
            response = httpx.post(
                f"http://127.0.0.1:{self.port}/auth/token",
                json={"username": "admin", "password": self.password},
                timeout=30,
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        response = httpx.request(
            method,
            f"http://127.0.0.1:{self.port}/api/v2{path}",
            json=body,
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=30,
        )
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json() if response.content else None

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result = check()
            except Exception:  # the API may be restarting
                result = None
            if result:
                return result
            time.sleep(3)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")


@pytest.fixture(scope="module")
def deployment(
    throwaway_database: str, tmp_path_factory: pytest.TempPathFactory, trained_model_dir: Path
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("airflow-deployment")
    airflow_home = root / "airflow"
    airflow_home.mkdir()
    home = root / "home"
    port = _free_port()
    password = secrets.token_urlsafe(12)
    passwords_file = airflow_home / "passwords.json"
    passwords_file.write_text(json.dumps({"admin": password}))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "RESCORE_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": throwaway_database,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    paths = RescorePaths(str(home))
    samples = generate(paths, count=24, seed=31)
    manifest = Manifest.from_dict(json.loads((trained_model_dir / "manifest.json").read_text()))
    ModelStore(paths.models).publish(manifest, trained_model_dir / "model.safetensors")

    dep = Deployment(airflow_home, env, port, password)
    dep.image_ids = {s.image_id for s in samples}
    migrated = dep.airflow("db", "migrate")
    assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    try:
        for component in COMPONENTS:
            dep.start(component)
        dep.wait_for(
            "the API to serve and both DAGs to be parsed",
            lambda: _dag_ids(dep) >= {"image_scoring", "model_rescore"},
            240,
        )
        yield dep
    finally:
        dep.stop_all()


def _dag_ids(dep: Deployment) -> set[str]:
    return {d["dag_id"] for d in dep.api("GET", "/dags")["dags"]}


def _run_state(dep: Deployment, dag_id: str, run_id: str) -> str:
    return str(dep.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])


def _task_states(dep: Deployment, dag_id: str, run_id: str) -> dict[str, str]:
    tis = dep.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    return {ti["task_id"]: ti["state"] for ti in tis}


def _prediction_ids(home: str, version: str) -> Counter[str]:
    import pyarrow.dataset as ds

    part = Path(RescorePaths(home).predictions) / "model_name=shapes" / f"model_version={version}"
    return Counter(ds.dataset(str(part), format="parquet").to_table(columns=["image_id"]).column(0).to_pylist())


def test_image_scoring_triggered_through_the_rest_api_with_a_param(deployment: Deployment) -> None:
    home = deployment.env["RESCORE_HOME"]
    deployment.api("PATCH", "/dags/image_scoring", {"is_paused": False})
    run = deployment.api("POST", "/dags/image_scoring/dagRuns", {"logical_date": None, "conf": {"batch_size": 8}})
    assert run["conf"] == {"batch_size": 8}

    state = deployment.wait_for(
        "image_scoring to finish",
        lambda: (s := _run_state(deployment, "image_scoring", run["dag_run_id"])) in {"success", "failed"} and s,
        900,
    )
    assert state == "success", deployment.logs()
    assert set(_task_states(deployment, "image_scoring", run["dag_run_id"]).values()) <= {"success", "skipped"}
    assert _prediction_ids(home, "1") == Counter(deployment.image_ids)
    assert current_version(RescorePaths(home), "shapes") == "1"
    deployment.api("PATCH", "/dags/image_scoring", {"is_paused": True})


def test_rescoring_happens_once_across_a_scheduler_and_triggerer_restart(
    deployment: Deployment, trained_model_dir: Path
) -> None:
    """Fault: scheduler and triggerer restarted while the model-version sensor is deferred.
    Does: unpauses model_rescore on Airflow with PostgreSQL until its sensor defers, stops the
    scheduler and the triggerer, publishes v2 as champion, starts both again.
    Asserts: the waiting run re-scores, validates and promotes v2 (one row per image); no other run
    re-scores it; the next continuous run waits for a newer champion.
    """
    home = deployment.env["RESCORE_HOME"]
    paths = RescorePaths(home)
    assert current_version(paths, "shapes") == "1", "runs after the image_scoring test"

    # Given the re-scoring DAG waiting in the triggerer (nothing new to score yet)
    deployment.api("PATCH", "/dags/model_rescore", {"is_paused": False})

    def deferred_run() -> str | None:
        for run in deployment.api("GET", "/dags/model_rescore/dagRuns")["dag_runs"]:
            if _task_states(deployment, "model_rescore", run["dag_run_id"]).get("wait_for_new_champion") == "deferred":
                return str(run["dag_run_id"])
        return None

    waiting = deployment.wait_for("the sensor to defer", deferred_run, 300)

    # When the scheduler and the triggerer are restarted while it waits, and v2 becomes champion
    deployment.stop("scheduler")
    deployment.stop("triggerer")
    manifest = Manifest.from_dict(json.loads((trained_model_dir / "manifest.json").read_text()))
    assert ModelStore(paths.models).publish(manifest, trained_model_dir / "model.safetensors") == "2"
    deployment.start("scheduler")
    deployment.start("triggerer")

    # Then the waiting run picks v2 up, re-scores, validates and promotes it
    state = deployment.wait_for(
        "the waiting model_rescore run to finish",
        lambda: (s := _run_state(deployment, "model_rescore", waiting)) in {"success", "failed"} and s,
        900,
    )
    assert state == "success", deployment.logs()
    assert current_version(paths, "shapes") == "2"
    assert _prediction_ids(home, "2") == Counter(deployment.image_ids)

    # and no other run re-scores v2 again: the next continuous run waits in its sensor
    def next_run_waits() -> bool:
        runs = deployment.api("GET", "/dags/model_rescore/dagRuns")["dag_runs"]
        others = [r["dag_run_id"] for r in runs if r["dag_run_id"] != waiting]
        states = [_task_states(deployment, "model_rescore", r) for r in others]
        return bool(states) and all(s.get("wait_for_new_champion") == "deferred" for s in states)

    deployment.wait_for("the next continuous run to wait for a newer champion", next_run_waits, 300)
    deployment.api("PATCH", "/dags/model_rescore", {"is_paused": True})
    rescored = [
        r["dag_run_id"]
        for r in deployment.api("GET", "/dags/model_rescore/dagRuns")["dag_runs"]
        if _task_states(deployment, "model_rescore", r["dag_run_id"]).get("rescore") == "success"
    ]
    assert rescored == [waiting]
