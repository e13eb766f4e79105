"""Package ``spark_jobs`` as the zip that spark-submit ships with ``--py-files``."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

from rescore_airflow.settings import SPARK_JOBS_DIR

# A fixed timestamp keeps the archive byte-identical for identical sources.
_EPOCH = (2020, 1, 1, 0, 0, 0)


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def build_spark_jobs_zip(dest: str | os.PathLike[str], source: Path = SPARK_JOBS_DIR) -> Path:
    """Write ``spark_jobs`` as ``dest`` (atomically) unless an identical archive is already there."""
    dest_path = Path(dest)
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_path.parent, prefix=f".{dest_path.name}.")
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in _sources(source):
            info = zipfile.ZipInfo(f"{source.name}/{path.relative_to(source).as_posix()}", _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    new_digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
    if dest_path.exists() and hashlib.sha256(dest_path.read_bytes()).hexdigest() == new_digest:
        os.unlink(tmp)
    else:
        os.replace(tmp, dest_path)
    return dest_path
