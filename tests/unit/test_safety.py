"""What the project ships never opens Airflow without a login and never carries a credential."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# every file that starts or configures an Airflow the project ships
AIRFLOW_CONFIGS = ["include/airflow_local.sh", "docker-compose.yaml", ".env.example", "Makefile"]
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH |)PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "Slack token": re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"),
}


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


@pytest.mark.parametrize("config", AIRFLOW_CONFIGS)
def test_no_shipped_configuration_turns_authentication_off(config: str) -> None:
    text = (ROOT / config).read_text()
    assert not re.search(r"SIMPLE_AUTH_MANAGER_ALL_ADMINS\s*[:=]\s*['\"]?(true|True|1)", text), config
    assert "AUTH_ROLE_PUBLIC" not in text, config


def test_the_local_api_server_listens_on_loopback_only() -> None:
    script = (ROOT / "include" / "airflow_local.sh").read_text()
    assert re.search(r"api-server --host 127\.0\.0\.1\b", script)
    assert "AIRFLOW__API__HOST=127.0.0.1" in script


def test_compose_passwords_come_from_the_environment() -> None:
    compose = (ROOT / "docker-compose.yaml").read_text()
    for variable in ("POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_JWT_SECRET"):
        assert f"${{{variable}" in compose, f"{variable} is not taken from the environment"
    example = (ROOT / ".env.example").read_text()
    for line in example.splitlines():
        if re.match(r"^[A-Z_]*(PASSWORD|SECRET)[A-Z_]*=", line):
            assert "change-me" in line, f"{line.split('=')[0]} in .env.example does not say it is a demo value"


def test_no_credential_is_committed() -> None:
    found = []
    for path in _tracked_files():
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for what, pattern in SECRET_PATTERNS.items():
            if pattern.search(text) and path.name != "test_safety.py":
                found.append(f"{what} in {path.relative_to(ROOT)}")
    assert found == []
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text()
    tracked = {p.relative_to(ROOT).as_posix() for p in _tracked_files()}
    assert ".env" not in tracked
