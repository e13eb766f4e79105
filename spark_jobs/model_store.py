"""The embedded model store: a folder of published model versions.

Layout (``$RESCORE_HOME/models``)::

    <name>/<version>/manifest.json   what the model is (framework, architecture, input, labels)
    <name>/<version>/<weights file>  model.safetensors (PyTorch) or model.keras (Keras)
    <name>/champion.json             {"version": "<version>"}: the version that should score

A version is written into a hidden temporary folder and renamed into place, so a reader never
sees a half-written version; the champion pointer is replaced atomically the same way.
Standard library only: the Airflow side reads the store at parse and poke time.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
CHAMPION_FILE = "champion.json"
FRAMEWORKS = ("pytorch", "keras")
#: Weight formats that load without unpickling; anything else is refused.
SAFE_WEIGHT_SUFFIXES = {"pytorch": (".safetensors",), "keras": (".keras",)}
#: What a model's output layer returns: ``logits`` get a softmax at scoring time.
OUTPUT_KINDS = ("logits", "probabilities")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelStoreError(Exception):
    """A model or version that is missing or malformed; the message says what to do."""


class ModelLoadError(ModelStoreError):
    """A published version whose weights do not load into what its manifest describes."""


class UnsafeModelError(ModelStoreError):
    """A model file that could only be loaded by unpickling it (arbitrary code): always refused."""


_PICKLE_HINT = {
    "pytorch": "save the state_dict with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')",
    "keras": "save the model with model.save('model.keras') and no Lambda layers holding Python code",
}


def check_weights(framework: str, data: bytes, source: str, *, strict: bool = True) -> None:
    """Refuse weights that are not in the safe format of ``framework``, pickles above all.

    Only the bytes are inspected, nothing is loaded: a safetensors file starts with the
    little-endian length of a JSON header; a ``.keras`` file is a zip archive with a
    ``config.json`` and no pickled member.

    :raises UnsafeModelError: for a pickle (``torch.save``, ``pickle.dump``, ``joblib``) or a
        zip archive holding one.
    :raises ModelStoreError: for anything else that is not the expected format (only when
        ``strict``; publishing refuses pickles, loading refuses everything unexpected).
    """
    hint = _PICKLE_HINT.get(framework, "")
    if data[:1] == b"\x80":  # the PROTO opcode every pickle since protocol 2 starts with
        raise UnsafeModelError(
            f"{source} is a Python pickle (torch.save / pickle.dump output): Rescore never unpickles "
            f"model files because that runs arbitrary code; {hint}"
        )
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as exc:
            raise ModelStoreError(f"{source} is a damaged zip archive ({exc}): save the model again") from exc
        pickled = [n for n in names if n.endswith((".pkl", ".pickle")) or n.endswith("/data.pkl")]
        if pickled:
            raise UnsafeModelError(
                f"{source} is a zip archive holding pickled data ({pickled[0]}), as torch.save writes: "
                f"Rescore never unpickles model files; {hint}"
            )
        if (framework == "keras" and "config.json" in names) or not strict:
            return
        raise ModelStoreError(f"{source} is a zip archive but not a .keras model (no config.json): {hint}")
    if not strict:
        return
    if framework == "pytorch" and len(data) >= 10:
        header_len = int.from_bytes(data[:8], "little")
        if 0 < header_len <= len(data) - 8 and data[8:9] == b"{":
            return
    raise UnsafeModelError(
        f"{source} is not a {framework} model in a safe format (an old-protocol pickle, or another "
        f"format that would need unpickling or custom code to load): {hint}"
    )


@dataclass(frozen=True)
class Manifest:
    """What a published model version is: everything needed to build it and feed it.

    :param name: model name, also the folder name in the store.
    :param framework: ``pytorch`` or ``keras``.
    :param architecture: for PyTorch, a name from ``spark_jobs.models.ARCHITECTURES``.
    :param input_size: square input side in pixels.
    :param labels: class names, in the order of the model's outputs.
    :param mean: per-channel normalisation mean (RGB, on 0..1 pixels).
    :param std: per-channel normalisation standard deviation.
    :param weights: file name of the weights inside the version folder.
    :param output: what the model's last layer returns: ``probabilities`` (already a softmax) or
        ``logits`` (the scoring job applies a softmax). One output per label, in label order.
    :param embedding: optional name of a layer (a PyTorch module path such as ``pool``, or a Keras
        layer name) whose output is written as the ``embedding`` column, flattened per image.
    :param version: filled in by the store when published.
    """

    name: str
    framework: str
    architecture: str
    input_size: int
    labels: list[str]
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    weights: str = "model.safetensors"
    output: str = "logits"
    embedding: str | None = None
    version: str | None = None
    created_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ModelStoreError(
                f"model name {self.name!r} is not usable as a folder name: use letters, digits, '_', '-', '.'"
            )
        if self.framework not in FRAMEWORKS:
            raise ModelStoreError(
                f"manifest of {self.name!r} names framework {self.framework!r}: use one of {FRAMEWORKS}"
            )
        if not _NAME_RE.match(self.weights):
            raise ModelStoreError(
                f"weights {self.weights!r} of {self.name!r} must be a plain file name inside the version "
                "folder (letters, digits, '_', '-', '.'; no '/' or '..'), e.g. 'model.safetensors'"
            )
        if not self.weights.endswith(SAFE_WEIGHT_SUFFIXES[self.framework]):
            raise ModelStoreError(
                f"weights file {self.weights!r} of {self.name!r} would need unpickling or is unknown: "
                f"save {self.framework} weights as {SAFE_WEIGHT_SUFFIXES[self.framework]} instead"
            )
        if self.input_size <= 0:
            raise ModelStoreError(f"input_size of {self.name!r} must be positive, got {self.input_size}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ModelStoreError(f"labels of {self.name!r} must be two or more distinct names, got {self.labels}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelStoreError(f"mean/std of {self.name!r} must be three numbers each, std > 0")
        if self.output not in OUTPUT_KINDS:
            raise ModelStoreError(f"output of {self.name!r} is {self.output!r}: use one of {OUTPUT_KINDS}")
        if self.embedding is not None and not self.embedding.strip():
            raise ModelStoreError(f"embedding of {self.name!r} is empty: name a layer, or leave it out")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ModelStoreError(f"manifest has unknown keys {sorted(unknown)}: known keys are {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass(frozen=True)
class ModelVersion:
    """A published version as the driver reads it once, to broadcast."""

    manifest: Manifest
    weights: bytes

    @property
    def key(self) -> tuple[str, str]:
        return (self.manifest.name, str(self.manifest.version))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ModelStore:
    """A model store folder.

    :param root: the folder holding one sub-folder per model name.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _model_dir(self, name: str) -> Path:
        if not _NAME_RE.match(name):
            raise ModelStoreError(f"model name {name!r} is not a plain folder name: use letters, digits, '_', '-', '.'")
        return self.root / name

    def _inside(self, path: Path) -> Path:
        """``path`` if it resolves (symlinks followed) to a place inside the store, else an error."""
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ModelStoreError(
                f"{path} points outside the model store {self.root}: copy the file into the version folder"
            )
        return path

    def versions(self, name: str) -> list[str]:
        """Published versions of ``name``, oldest first (numeric order)."""
        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            return []
        found = [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        return sorted(found, key=int)

    def champion(self, name: str) -> str | None:
        """The champion version of ``name``, or None when nothing is published."""
        pointer = self._model_dir(name) / CHAMPION_FILE
        if not pointer.exists():
            return None
        return str(json.loads(pointer.read_text())["version"])

    def set_champion(self, name: str, version: str) -> None:
        """Make ``version`` the champion (one atomic replace of the pointer)."""
        if version not in self.versions(name):
            raise ModelStoreError(
                f"cannot make {name} version {version} champion: it is not published "
                f"(published: {self.versions(name) or 'none'})"
            )
        doc = {"version": version, "since": datetime.now(UTC).isoformat()}
        _write_atomic(self._model_dir(name) / CHAMPION_FILE, json.dumps(doc))

    def resolve(self, name: str, version: str | None = None) -> str:
        """Return ``version``, or the champion when it is None/empty/"champion"."""
        if version in (None, "", "champion", "None"):
            champion = self.champion(name)
            if champion is None:
                raise ModelStoreError(
                    f"model {name!r} has no champion in {self.root}: publish a version first "
                    f"(python -m include.publish --help)"
                )
            return champion
        assert version is not None
        if version not in self.versions(name):
            raise ModelStoreError(
                f"model {name!r} has no version {version!r} in {self.root} "
                f"(published: {', '.join(self.versions(name)) or 'none'})"
            )
        return version

    def manifest(self, name: str, version: str) -> Manifest:
        if not str(version).isdigit():
            raise ModelStoreError(f"version {version!r} of {name!r} is not a version number: versions are 1, 2, 3, ...")
        path = self._inside(self._model_dir(name) / version / MANIFEST_FILE)
        if not path.exists():
            raise ModelStoreError(f"{path} is missing: is {name} version {version} published?")
        return Manifest.from_dict(json.loads(path.read_text()))

    def read(self, name: str, version: str | None = None) -> ModelVersion:
        """Read a version's manifest and weights bytes (the driver does this once, then broadcasts)."""
        resolved = self.resolve(name, version)
        manifest = self.manifest(name, resolved)
        weights = self._inside(self._model_dir(name) / resolved / manifest.weights).read_bytes()
        return ModelVersion(manifest=manifest, weights=weights)

    def publish(
        self,
        manifest: Manifest,
        weights_file: str | os.PathLike[str],
        *,
        champion: bool = True,
        version: str | None = None,
    ) -> str:
        """Publish a new version and return its number.

        The version folder is assembled under a hidden name and renamed into place.

        :param manifest: the model's manifest; ``version`` and ``created_at`` are filled in.
        :param weights_file: the weights, copied under ``manifest.weights``.
        :param champion: also make the new version the champion.
        :param version: publish under this number (the one an MLflow registry gave the same
            model) instead of the next free one; refused when it exists.
        """
        if version is not None and (not version.isdigit() or version in self.versions(manifest.name)):
            raise ModelStoreError(
                f"cannot publish {manifest.name} as version {version!r}: it is not a number or already exists "
                f"(published: {', '.join(self.versions(manifest.name)) or 'none'}); the store and the registry "
                "are out of step, publish without a fixed version"
            )
        weights_path = Path(weights_file)
        if not weights_path.is_file():
            raise ModelStoreError(f"weights file {weights_path} does not exist")
        check_weights(manifest.framework, weights_path.read_bytes(), str(weights_path), strict=False)
        model_dir = self._model_dir(manifest.name)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
        try:
            shutil.copyfile(weights_path, staging / manifest.weights)
            while True:
                existing = self.versions(manifest.name)
                number = version or str(int(existing[-1]) + 1 if existing else 1)
                stamped = Manifest.from_dict(
                    {**manifest.to_dict(), "version": number, "created_at": datetime.now(UTC).isoformat()}
                )
                (staging / MANIFEST_FILE).write_text(stamped.to_json())
                try:
                    os.rename(staging, model_dir / number)
                    break
                except OSError:
                    if (model_dir / number).exists() and version is None:
                        continue  # another publisher took this number: take the next one
                    raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if champion:
            self.set_champion(manifest.name, number)
        return number
