"""The promotion pointer ``warehouse/current.json``: which version of each model readers use.

One small JSON document replaced atomically (write a temporary file, then rename), so a reader
sees either the old pointer or the new one, never a mix. Standard library only.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spark_jobs.contract import RescorePaths
from spark_jobs.model_store import ModelStore


def read_pointer(paths: RescorePaths) -> dict[str, Any]:
    """The whole pointer document (``{model_name: {"version": ..., ...}}``), empty when none exists."""
    pointer = Path(paths.current)
    if not pointer.exists():
        return {}
    data: dict[str, Any] = json.loads(pointer.read_text())
    return data


def current_version(paths: RescorePaths, model_name: str) -> str | None:
    """The version of ``model_name`` whose predictions readers use now, or None."""
    entry = read_pointer(paths).get(model_name)
    return str(entry["version"]) if entry else None


def set_current(paths: RescorePaths, model_name: str, version: str, **facts: Any) -> None:
    """Point readers of ``model_name`` at ``version`` in one atomic rename."""
    pointer = Path(paths.current)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    doc = read_pointer(paths)
    doc[model_name] = {"version": str(version), "promoted_at": datetime.now(UTC).isoformat(), **facts}
    fd, tmp = tempfile.mkstemp(dir=pointer.parent, prefix=".current.")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, pointer)


def resolve_version(paths: RescorePaths, store: ModelStore, model_name: str, requested: str | None) -> str:
    """An explicit version, else the promoted one, else the registry's champion."""
    if requested not in (None, "", "None", "current"):
        return store.resolve(model_name, requested)
    return current_version(paths, model_name) or store.resolve(model_name, None)
