"""The Airflow UI in a real browser: Debian's Chromium, headless, driven by Playwright.

Starts the embedded Airflow exactly as ``make airflow`` does (``include/airflow_local.sh``:
api-server, scheduler, dag-processor, triggerer on SQLite, 127.0.0.1 only) on a free port with a
temporary AIRFLOW_HOME and RESCORE_HOME holding sample images and a published champion model.
Then, as a user would: log in, find both DAGs, trigger ``image_scoring`` with a changed
``batch_size`` from the trigger form, wait for the run to succeed, open the ``score`` task's log
and find the job's summary line. Screenshots go to ``$RESCORE_SCREENSHOTS_DIR`` (``make ui-test``:
``docs/screenshots/``).

Chromium comes from Debian (``make ui-deps``); Playwright never downloads a browser here.
The scheduler's own schedule is switched off (``use_job_schedule``) so the only run is the one
the test triggers. Every process started is stopped at the end, through its process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# `make ui-test` refreshes the README's screenshots; other runs keep them out of the checkout.
SCREENSHOTS = Path(os.environ.get("RESCORE_SCREENSHOTS_DIR") or tempfile.mkdtemp(prefix="rescore-screenshots-"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADMIN = "admin"
CHANGED_BATCH_SIZE = 32  # the DAG's default is 64
RUN_ID = "ui_test_batch_size_32"
SUMMARY_LINE = re.compile(r"rescore\.score: scored (\d+) images in [\d.]+ s")
SAMPLE_IMAGES = 40
STARTUP_TIMEOUT_S = 420
RUN_TIMEOUT_S = 1500

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: run `make ui-deps` (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: run make install")

PREPARE_HOME = f"""
import sys
from include.example_models import train_and_publish
from include.sample_data import generate
from spark_jobs.contract import RescorePaths
from spark_jobs.model_store import ModelStore

paths = RescorePaths(sys.argv[1])
generate(paths, count={SAMPLE_IMAGES}, seed=1)
print("published version", train_and_publish(ModelStore(paths.models), name="shapes", seed=0, epochs=1, progress=False))
"""


@dataclass
class EmbeddedAirflow:
    base_url: str
    password: str
    home: Path
    airflow_home: Path
    log_file: Path

    def api(self, path: str) -> Any:
        """GET a REST API v2 path with a fresh JWT (diagnostics and readiness only)."""
        token_request = urllib.request.Request(
            f"{self.base_url}/auth/token",
            data=json.dumps({"username": ADMIN, "password": self.password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(token_request, timeout=30) as response:
            token = json.load(response)["access_token"]
        request = urllib.request.Request(f"{self.base_url}{path}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def logs_tail(self, lines: int = 40) -> str:
        parts = []
        for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
            path = self.airflow_home / f"{name}.log"
            if path.exists():
                parts.append(f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (and any descendant that left it), then SIGKILL what is left."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(sig)
        _, alive = psutil.wait_procs(descendants, timeout=20)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue
        if not alive:
            return


def wait_until_ready(airflow: EmbeddedAirflow, proc: subprocess.Popen[bytes]) -> None:
    """Healthy components and both DAGs parsed; fail with Airflow's own words otherwise."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"include/airflow_local.sh exited with {proc.returncode}\n{airflow.logs_tail()}")
        try:
            with urllib.request.urlopen(f"{airflow.base_url}/api/v2/monitor/health", timeout=10) as response:
                health = json.load(response)
            unhealthy = [name for name, part in health.items() if part.get("status") != "healthy"]
            errors = airflow.api("/api/v2/importErrors")["import_errors"]
            if errors:
                traces = "\n".join(f"{e['filename']}:\n{e['stack_trace']}" for e in errors)
                hint = (
                    "\nAirflow imports every .py file under the plugins folder as a top-level module, so "
                    "plugins/rescore_airflow/packaging.py shadows the 'packaging' library: list rescore_airflow "
                    "in plugins/.airflowignore (it is a package on PYTHONPATH, not an Airflow plugin)."
                    if "'packaging' is not a package" in traces
                    else ""
                )
                pytest.fail(f"the DAGs do not import in the embedded Airflow:\n{traces}{hint}")
            dag_ids = {dag["dag_id"] for dag in airflow.api("/api/v2/dags")["dags"]}
            if not unhealthy and {"image_scoring", "model_rescore"} <= dag_ids:
                return
            last_error = f"unhealthy: {unhealthy}, DAGs parsed: {sorted(dag_ids)}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = repr(exc)
        time.sleep(3)
    pytest.fail(f"Airflow was not ready in {STARTUP_TIMEOUT_S} s ({last_error})\n{airflow.logs_tail()}")


@pytest.fixture(scope="module")
def embedded_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedAirflow]:
    root = tmp_path_factory.mktemp("airflow-ui")
    home, airflow_home = root / "home", root / "airflow"
    env = {
        **os.environ,
        "RESCORE_HOME": str(home),
        "AIRFLOW_HOME": str(airflow_home),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
    }
    # Given images in the landing folder and a champion model in the model store.
    subprocess.run(
        [sys.executable, "-c", PREPARE_HOME, str(home)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=900
    )
    port = free_port()
    password = secrets.token_urlsafe(16)
    env |= {
        "RESCORE_AIRFLOW_PORT": str(port),
        "RESCORE_AIRFLOW_ADMIN_PASSWORD": password,
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    }
    log_file = root / "airflow_local.out"
    airflow = EmbeddedAirflow(f"http://127.0.0.1:{port}", password, home, airflow_home, log_file)
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "include" / "airflow_local.sh")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_ready(airflow, proc)
        yield airflow
    finally:
        stop_process_tree(proc)


@pytest.fixture
def page(embedded_airflow: EmbeddedAirflow) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            new_page = context.new_page()
            new_page.set_default_timeout(90_000)
            yield new_page
        finally:
            browser.close()


def log_in(page: Any, airflow: EmbeddedAirflow, password: str) -> None:
    page.goto(f"{airflow.base_url}/auth/login?next=%2Fdags")
    page.fill("input[name=username]", ADMIN)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_the_ui_asks_for_a_login_and_rejects_a_wrong_password(page: Any, embedded_airflow: EmbeddedAirflow) -> None:
    # Given no session, When the UI opens, Then it sends the browser to the login form.
    page.goto(embedded_airflow.base_url + "/dags")
    page.wait_for_url(re.compile(r".*/auth/login.*"))
    # When the password is wrong, Then the browser stays on the login form.
    log_in(page, embedded_airflow, embedded_airflow.password + "-wrong")
    page.wait_for_timeout(2_000)
    assert "/auth/login" in page.url
    assert page.get_by_test_id("dag-card").count() == 0
    # And the REST API refuses a request without a token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{embedded_airflow.base_url}/api/v2/dags", timeout=30)
    assert refused.value.code == 401


def test_trigger_image_scoring_with_a_changed_param_and_read_the_score_log(
    page: Any, embedded_airflow: EmbeddedAirflow
) -> None:
    airflow = embedded_airflow
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # Given a logged-in admin, When the DAG list opens, Then both Rescore DAGs are there.
    log_in(page, airflow, airflow.password)
    page.wait_for_url(re.compile(r".*/dags$"))
    cards = page.get_by_test_id("dag-card")
    cards.filter(has_text="model_rescore").wait_for()
    dag_ids = set(page.get_by_test_id("dag-id").all_inner_texts())
    assert {"image_scoring", "model_rescore"} <= dag_ids
    page.screenshot(path=str(SCREENSHOTS / "dag-list.png"))

    # When image_scoring is triggered from its card with batch_size changed in the form.
    cards.filter(has_text="image_scoring").get_by_test_id("trigger-dag-button").click()
    dialog = page.locator("[role=dialog][data-state=open]")
    batch_size = dialog.locator("input[name=element_batch_size]")
    assert batch_size.input_value() == "64"
    batch_size.fill(str(CHANGED_BATCH_SIZE))
    batch_size.press("Tab")
    dialog.get_by_text("Advanced Options").click()
    dialog.locator("input[name=dagRunId]").fill(RUN_ID)
    dialog.get_by_test_id("trigger-dag-submit").click()
    page.get_by_text("Dag run has been successfully triggered").wait_for()

    # Then the run carries the changed param and succeeds (its page shows the state as it moves).
    run = airflow.api(f"/api/v2/dags/image_scoring/dagRuns/{RUN_ID}")
    assert run["conf"]["batch_size"] == CHANGED_BATCH_SIZE
    assert run["triggered_by"] == "ui" and run["triggering_user_name"] == ADMIN
    page.goto(f"{airflow.base_url}/dags/image_scoring/runs/{RUN_ID}")
    badge = page.get_by_test_id("header-card").get_by_test_id("state-badge")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        state = airflow.api(f"/api/v2/dags/image_scoring/dagRuns/{RUN_ID}")["state"]
        if state in ("success", "failed"):
            break
        time.sleep(10)
    tasks = {
        ti["task_id"]: ti["state"]
        for ti in airflow.api(f"/api/v2/dags/image_scoring/dagRuns/{RUN_ID}/taskInstances")["task_instances"]
    }
    assert state == "success", f"run {RUN_ID} ended {state!r}: tasks {tasks}\n{airflow.logs_tail()}"
    assert set(tasks.values()) == {"success"}, tasks
    page.reload()
    page.get_by_test_id(f"grid-{RUN_ID}-score").wait_for()
    assert badge.inner_text().strip() == "Success"
    page.screenshot(path=str(SCREENSHOTS / "run-grid.png"))

    # When the score task's log opens, Then the job's summary line is in it.
    page.goto(f"{airflow.base_url}/dags/image_scoring/runs/{RUN_ID}/tasks/score")
    summary = page.get_by_text(SUMMARY_LINE)
    summary.wait_for()
    match = SUMMARY_LINE.search(summary.inner_text())
    assert match and int(match.group(1)) == SAMPLE_IMAGES, summary.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "task-log.png"))
    # And the spark-submit command in the same log carries the batch size chosen in the form.
    page.get_by_test_id("log-search-input").fill("--batch-size")
    command = page.locator("[data-testid^=virtualized-item]").filter(has_text="Spark-Submit cmd")
    command.wait_for()
    assert f"--batch-size {CHANGED_BATCH_SIZE}" in command.inner_text()
