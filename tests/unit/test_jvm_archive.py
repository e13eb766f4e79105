"""The driver's class-data archive (include/jvm_archive.py): which options name it, what its name
depends on, and that a failure to make it leaves nothing behind and stops nothing."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from include import jvm_archive

pytestmark = pytest.mark.unit

SHORT = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


class _Usage(NamedTuple):  # what shutil.disk_usage returns
    total: int
    used: int
    free: int


def _usage(free: int) -> _Usage:
    return _Usage(100 * 2**30, 100 * 2**30 - free, free)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plenty of free space wherever the archive goes, whatever this machine's disk holds."""
    monkeypatch.setattr(jvm_archive.shutil, "disk_usage", lambda path: _usage(50 * 2**30))


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "spark-driver-x.jsa"
    path.write_bytes(b"not really an archive")
    return path


def test_the_archive_is_named_after_the_options_already_there(archive: Path) -> None:
    assert jvm_archive.with_archive(SHORT, archive) == f"{SHORT} -XX:SharedArchiveFile={archive}"
    assert jvm_archive.with_archive("", archive) == f"-XX:SharedArchiveFile={archive}"


@pytest.mark.parametrize(
    "options",
    ["-XX:SharedArchiveFile=/elsewhere.jsa", f"{SHORT} -Xshare:off", "-XX:ArchiveClassesAtExit=/tmp/new.jsa"],
)
def test_options_that_already_choose_an_archive_or_none_are_left_alone(options: str, archive: Path) -> None:
    assert jvm_archive.with_archive(options, archive) == options


def test_a_missing_archive_adds_nothing(tmp_path: Path) -> None:
    assert jvm_archive.with_archive(SHORT, tmp_path / "missing.jsa") == SHORT
    assert jvm_archive.with_archive(SHORT, None) == SHORT


def test_the_switch_leaves_the_options_alone_without_making_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure() ran although RESCORE_JVM_ARCHIVE=0")

    monkeypatch.setattr(jvm_archive, "ensure", must_not_run)
    assert jvm_archive.submit_options(SHORT, {"RESCORE_JVM_ARCHIVE": "0"}) == SHORT
    assert not jvm_archive.enabled({"RESCORE_JVM_ARCHIVE": " 0 "})
    assert jvm_archive.enabled({})


def _fake_jdk(root: Path, version: str) -> Path:
    (root / "bin").mkdir(parents=True)
    java = root / "bin" / "java"
    java.write_text("#!/bin/sh\n")
    (root / "release").write_text(f'JAVA_VERSION="{version}"\n')
    return java


def test_the_name_changes_with_the_jvm_build_and_with_the_jars(tmp_path: Path) -> None:
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "spark-core_2.13-4.2.0.jar").write_bytes(b"x" * 10)
    java = _fake_jdk(tmp_path / "jdk-a", "17.0.15")
    first = jvm_archive.archive_key(java, jars)
    assert jvm_archive.archive_key(java, jars) == first  # the same build and jars: the same archive

    other_jdk = _fake_jdk(tmp_path / "jdk-b", "17.0.16")
    assert jvm_archive.archive_key(other_jdk, jars) != first

    (jars / "extra-1.0.jar").write_bytes(b"y")
    with_extra = jvm_archive.archive_key(java, jars)
    assert with_extra != first
    (jars / "extra-1.0.jar").write_bytes(b"yy")  # same name, another build of the jar
    assert jvm_archive.archive_key(java, jars) not in {first, with_extra}


def test_java_home_is_the_java_spark_runs(tmp_path: Path) -> None:
    java = _fake_jdk(tmp_path / "jdk", "17")
    assert jvm_archive.java_executable({"JAVA_HOME": str(tmp_path / "jdk"), "PATH": ""}) == java.resolve()
    assert jvm_archive.java_executable({"JAVA_HOME": str(tmp_path / "nowhere"), "PATH": ""}) is None


def test_an_archive_that_exists_is_used_without_making_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = jvm_archive.archive_path(tmp_path)
    assert target is not None, "this machine has java: the test suite needs it"
    target.write_bytes(b"made before")

    def must_not_run(path: Path) -> None:
        raise AssertionError("the archive was made again")

    monkeypatch.setattr(jvm_archive, "_create", must_not_run)
    assert jvm_archive.ensure(tmp_path) == target


def _options_of(kwargs: dict[str, object]) -> tuple[str, Path]:
    """The SPARK_SUBMIT_OPTS a spark-submit call was given, and the archive it asks the JVM to write."""
    options = str(kwargs["env"]["SPARK_SUBMIT_OPTS"])  # type: ignore[index]
    return options, Path(options.split("-XX:ArchiveClassesAtExit=")[1].split(maxsplit=1)[0])


@pytest.mark.usefixtures("disk")
def test_a_failed_workload_leaves_no_archive_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing_submit(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        _, partial = _options_of(kwargs)
        partial.write_bytes(b"half written")  # as a JVM killed mid-dump would leave it
        return subprocess.CompletedProcess(command, 1, "", "Exception in thread main: no room left on device")

    monkeypatch.setattr(jvm_archive.subprocess, "run", failing_submit)
    with caplog.at_level(logging.WARNING, logger="rescore.jvm_archive"):
        assert jvm_archive.ensure(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir() if p.name != ".lock"] == []
    assert "was not made (spark-submit exited 1)" in caplog.text
    assert "no room left on device" in caplog.text


@pytest.mark.usefixtures("disk")
def test_the_workload_is_run_with_the_archive_option_and_without_other_archive_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, str] = {}

    def recording_submit(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen["options"], partial = _options_of(kwargs)
        partial.write_bytes(b"an archive")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setenv("SPARK_SUBMIT_OPTS", f"{SHORT} -XX:SharedArchiveFile=/old.jsa '-Dlabel=a b'")
    monkeypatch.setattr(jvm_archive.subprocess, "run", recording_submit)
    made = jvm_archive.ensure(tmp_path)
    assert made is not None and made.read_bytes() == b"an archive"
    assert "/old.jsa" not in seen["options"]
    assert seen["options"].startswith(f"{SHORT} '-Dlabel=a b' -XX:ArchiveClassesAtExit=")  # quoting kept


def test_a_nearly_full_disk_gets_no_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the workload ran on a nearly full disk")

    monkeypatch.setattr(jvm_archive.subprocess, "run", must_not_run)
    monkeypatch.setattr(jvm_archive.shutil, "disk_usage", lambda path: _usage(500 * 2**20))
    with caplog.at_level(logging.WARNING, logger="rescore.jvm_archive"):
        assert jvm_archive.ensure(tmp_path) is None
    assert "only 0.5 GiB free" in caplog.text and "RESCORE_JVM_ARCHIVE_DIR" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.name != ".lock"] == []


@pytest.mark.usefixtures("disk")
def test_processes_that_need_it_at_once_make_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    runs: list[str] = []

    def slow_submit(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        options, partial = _options_of(kwargs)
        runs.append(options)
        time.sleep(0.3)  # the others arrive while this one is making it
        partial.write_bytes(b"an archive")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(jvm_archive.subprocess, "run", slow_submit)
    got: list[Path | None] = []
    threads = [threading.Thread(target=lambda: got.append(jvm_archive.ensure(tmp_path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(runs) == 1
    assert len(got) == 3 and len(set(got)) == 1 and got[0] is not None and got[0].read_bytes() == b"an archive"


def test_a_folder_that_cannot_be_written_gets_no_archive_and_stops_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the archive folder would go")
    with caplog.at_level(logging.WARNING, logger="rescore.jvm_archive"):
        assert jvm_archive.ensure(blocker / "jvm") is None
    assert "no class-data archive in" in caplog.text and "RESCORE_JVM_ARCHIVE_DIR" in caplog.text


def test_link_gives_the_archive_a_name_that_does_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "spark-driver-aaaa.jsa", tmp_path / "spark-driver-bbbb.jsa"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    stable = tmp_path / "image" / "spark-driver.jsa"
    made = iter([first, second])
    monkeypatch.setattr(jvm_archive, "ensure", lambda force=False: next(made))

    assert jvm_archive.main(["--link", str(stable)]) == 0
    assert stable.read_bytes() == b"one"
    assert capsys.readouterr().out.strip() == f"-XX:SharedArchiveFile={stable}"
    assert jvm_archive.main(["--link", str(stable)]) == 0  # a new JVM or Spark: the link follows
    assert stable.is_symlink() and stable.read_bytes() == b"two"
    assert sorted(p.name for p in stable.parent.iterdir()) == ["spark-driver.jsa"]
