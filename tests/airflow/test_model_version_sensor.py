"""The model-version sensor and its trigger: fire once per new champion, survive outages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rescore_airflow import registry as registry_module
from rescore_airflow.registry import FolderRegistry, pending_champion
from rescore_airflow.sensors import ModelVersionSensor
from rescore_airflow.triggers import ModelVersionTrigger
from spark_jobs.contract import RescorePaths
from spark_jobs.current import set_current
from spark_jobs.model_store import Manifest, ModelStore

pytestmark = pytest.mark.airflow


def _publish(paths: RescorePaths, champion: bool = True) -> str:
    weights = Path(paths.home) / "w.safetensors"
    weights.write_bytes(b"w")
    manifest = Manifest(name="m", framework="pytorch", architecture="small_cnn", input_size=8, labels=["a", "b"])
    return ModelStore(paths.models).publish(manifest, weights, champion=champion)


@pytest.fixture
def paths(rescore_home: Path) -> RescorePaths:
    return RescorePaths(str(rescore_home))


def test_pending_champion_follows_the_promotion_pointer(paths: RescorePaths) -> None:
    registry = FolderRegistry(paths.models)
    assert pending_champion(registry, paths, "m") is None  # nothing published
    _publish(paths)
    set_current(paths, "m", "1")  # image_scoring scored and promoted the first version
    assert pending_champion(registry, paths, "m") is None
    _publish(paths)
    assert pending_champion(registry, paths, "m") == "2"
    set_current(paths, "m", "2")
    # a sensor started afresh (scheduler or triggerer restart) does not fire again for v2
    assert pending_champion(FolderRegistry(paths.models), paths, "m") is None
    # rollback: an older version made champion again is pending
    ModelStore(paths.models).set_champion("m", "1")
    assert pending_champion(registry, paths, "m") == "1"


def test_nothing_promoted_yet_is_left_to_image_scoring(paths: RescorePaths, caplog: pytest.LogCaptureFixture) -> None:
    # Given a fresh deployment: v1 published and champion, nothing promoted yet
    _publish(paths)
    registry = FolderRegistry(paths.models)
    # Then neither the sensor's check nor a retry fires for v1, which image_scoring scores and promotes
    with caplog.at_level("INFO", logger="rescore_airflow.registry"):
        assert pending_champion(registry, paths, "m") is None
    assert "nothing promoted yet for m: the image_scoring DAG scores and promotes the first version" in caplog.text
    assert pending_champion(registry, paths, "m", retry_failed=True) is None
    # nor for a second version published before the first was promoted (image_scoring takes the champion)
    _publish(paths)
    assert pending_champion(registry, paths, "m") is None
    # and once image_scoring promoted v1, the newer champion is pending
    set_current(paths, "m", "1")
    assert pending_champion(registry, paths, "m") == "2"


def test_a_champion_that_failed_validation_is_not_retried_unless_asked(paths: RescorePaths) -> None:
    _publish(paths)
    set_current(paths, "m", "1")
    _publish(paths)
    report_dir = Path(paths.reports) / "m" / "2"
    report_dir.mkdir(parents=True)
    (report_dir / "run.json").write_text(json.dumps({"passed": False}))
    registry = FolderRegistry(paths.models)
    assert pending_champion(registry, paths, "m") is None
    assert pending_champion(registry, paths, "m", retry_failed=True) == "2"


def test_poke_mode_returns_the_new_version_as_xcom(paths: RescorePaths) -> None:
    sensor = ModelVersionSensor(task_id="wait", model_name="m", deferrable=False, rescore_home=paths.home)
    assert sensor.poke({}) is False  # type: ignore[arg-type]
    _publish(paths)
    assert sensor.poke({}) is False  # v1 is image_scoring's to promote
    set_current(paths, "m", "1")
    _publish(paths)
    result = sensor.poke({})  # type: ignore[arg-type]
    assert result is not False and result.xcom_value == "2"  # type: ignore[union-attr]


def test_deferrable_mode_with_nothing_promoted_defers_instead_of_firing(paths: RescorePaths) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    _publish(paths)
    sensor = ModelVersionSensor(task_id="wait", model_name="m", rescore_home=paths.home)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert isinstance(deferred.value.trigger, ModelVersionTrigger)


def test_poke_mode_logs_and_waits_while_the_registry_is_down(
    paths: RescorePaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(paths)

    def unreachable(*_: object) -> object:
        raise ConnectionError("registry at 127.0.0.1:5000 refused the connection")

    monkeypatch.setattr("rescore_airflow.sensors.registry_from_config", unreachable)
    sensor = ModelVersionSensor(task_id="wait", model_name="m", deferrable=False, rescore_home=paths.home)
    assert sensor.poke({}) is False  # type: ignore[arg-type]
    # Airflow's task logger writes through structlog to stdout
    assert "model registry unreachable" in capsys.readouterr().out


def test_trigger_round_trips_through_serialize(paths: RescorePaths) -> None:
    trigger = ModelVersionTrigger("m", {"backend": "folder", "location": paths.models}, paths.home, 5.0, True)
    classpath, kwargs = trigger.serialize()
    assert classpath == "rescore_airflow.triggers.ModelVersionTrigger"
    rebuilt = ModelVersionTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_trigger_rides_out_a_registry_outage_then_fires(paths: RescorePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    _publish(paths)
    set_current(paths, "m", "1")
    _publish(paths)
    calls = {"n": 0}
    real = registry_module.registry_from_config

    def flaky(config: object, p: RescorePaths) -> object:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("registry down")
        return real(config, p)  # type: ignore[arg-type]

    monkeypatch.setattr("rescore_airflow.triggers.registry_from_config", flaky)
    trigger = ModelVersionTrigger("m", {"backend": "folder", "location": paths.models}, paths.home, 0.01)

    async def first_event() -> dict[str, object]:
        async for event in trigger.run():
            return event.payload  # type: ignore[no-any-return]
        raise AssertionError("the trigger ended without an event")

    payload = asyncio.run(asyncio.wait_for(first_event(), timeout=30))
    assert payload == {"model_name": "m", "version": "2"}
    assert calls["n"] == 3
