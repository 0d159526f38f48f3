"""Versioned model bundles in the BentoML model store, and which version is current.

A bundle is an immutable directory. Publishing copies it into the BentoML model store (which writes
into a temporary folder and moves it in only on success, so a crash never leaves half a model) under
``recsys-bundle:<version>``, then moves the *current* pointer to it. The pointer is a small JSON file
in the BentoML home, replaced atomically; ``rollback`` moves it back. The service follows the pointer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODEL_NAME = "recsys-bundle"


class RegistryError(RuntimeError):
    """No such model version, or nothing published yet."""


def bentoml_home() -> Path:
    """The BentoML home: ``$BENTOML_HOME`` or ``~/bentoml`` (BentoML's own default)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def default_online_store_url() -> str:
    """The embedded SQLite online store in the BentoML home, next to the models it serves."""
    return f"sqlite:///{bentoml_home().resolve() / 'recsys' / 'online.db'}"


def _pointer_path(name: str) -> Path:
    return bentoml_home() / "recsys" / f"{name}.current.json"


def new_version() -> str:
    """A sortable, human-readable version: UTC time plus a random suffix."""
    return datetime.now(UTC).strftime("v%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class ModelVersion:
    tag: str
    version: str
    created_at: str
    path: Path
    metadata: dict[str, Any]


def _as_version(model: Any) -> ModelVersion:
    return ModelVersion(
        tag=str(model.tag),
        version=str(model.tag.version),
        created_at=model.info.creation_time.isoformat(),
        path=Path(model.path),
        metadata=dict(model.info.metadata),
    )


def publish(bundle_dir: Path, *, name: str = MODEL_NAME, make_current: bool = True) -> ModelVersion:
    """Copy ``bundle_dir`` into the model store as a new version and (by default) make it current.

    The version is the one in the bundle's ``metadata.json``; its summary (metrics, fingerprint,
    created_at) also becomes the BentoML model's metadata.
    """
    import bentoml

    meta = json.loads((bundle_dir / "metadata.json").read_text())
    version = meta["version"]
    summary = {k: meta[k] for k in ("created_at", "data_fingerprint", "metrics") if k in meta}
    with bentoml.models.create(f"{name}:{version}", labels={"kind": "recsys"}, metadata=summary) as model:
        shutil.copytree(bundle_dir, model.path, dirs_exist_ok=True)
    published = get(f"{name}:{version}")
    if make_current:
        set_current(published.tag, name=name)
    return published


def get(tag: str) -> ModelVersion:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return _as_version(bentoml.models.get(tag))
    except NotFound as exc:
        raise RegistryError(
            f"model {tag!r} not found in the BentoML model store at {bentoml_home()}"
        ) from exc


def list_versions(name: str = MODEL_NAME) -> list[ModelVersion]:
    """All published versions, oldest first."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(name)
    except NotFound:
        return []
    return sorted((_as_version(m) for m in models), key=lambda v: (v.created_at, v.version))


def _read_pointer(name: str) -> dict[str, Any]:
    path = _pointer_path(name)
    return json.loads(path.read_text()) if path.exists() else {"current": None, "history": []}


def _write_pointer(name: str, pointer: dict[str, Any]) -> None:
    path = _pointer_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(json.dumps(pointer, indent=2))
    os.replace(tmp, path)


def set_current(tag: str, *, name: str = MODEL_NAME) -> None:
    get(tag)  # must exist
    pointer = _read_pointer(name)
    if pointer["current"] != tag:
        if pointer["current"]:
            pointer["history"].append(pointer["current"])
        pointer["current"] = tag
        _write_pointer(name, pointer)


def current(name: str = MODEL_NAME) -> ModelVersion:
    """The current version: the pointer if set (and still in the store), else the newest published."""
    tag = _read_pointer(name)["current"]
    if tag:
        return get(tag)
    versions = list_versions(name)
    if not versions:
        raise RegistryError(f"no {name!r} model published in {bentoml_home()}: run `recsys train` first")
    return versions[-1]


def current_marker(name: str = MODEL_NAME) -> str:
    """A cheap token that changes whenever the current version may have changed (for polling)."""
    path = _pointer_path(name)
    try:
        return f"{path.stat().st_mtime_ns}"
    except FileNotFoundError:
        return ""


def rollback(name: str = MODEL_NAME) -> ModelVersion:
    """Make the previously current version current again."""
    pointer = _read_pointer(name)
    history = [t for t in pointer["history"] if t != pointer["current"]]
    if not history:
        raise RegistryError(f"no earlier version of {name!r} to roll back to")
    previous = history.pop()
    get(previous)
    _write_pointer(name, {"current": previous, "history": history})
    return get(previous)
