"""Versioned model bundles in the BentoML model store, and which version is current.

A bundle is an immutable directory. ``publish`` copies it into the BentoML model store under
``recsys-bundle:<version>``; ``set_current`` then moves the *current* pointer to it, a small JSON
file in the BentoML home replaced atomically (``os.replace``), so that one step switches what the
service serves; ``rollback`` moves it back. The service follows the pointer, and reads the online
store's version named after the bundle it serves, so the pointer switches model and features
together (``recsys.pipeline.publish`` loads the features first).

Publishing runs inside ``publishing()``: one publish at a time per BentoML home (a lock the kernel
releases when the process dies), and a clean slate. BentoML copies into the store's final folder
file by file, so a killed copy leaves half a model there, and its temporary copy elsewhere; the
publish therefore names the version it is adding in ``recsys/publishing/`` first and makes BentoML's
temporary folder there too, and the next ``publishing()`` deletes that version unless it became
current, and the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODEL_NAME = "recsys-bundle"
ENV_STORE_URL = "RECSYS_ONLINE_STORE_URL"
ROLLBACK_DEPTH = 1  # earlier versions whose online features stay live, so a rollback is one step


class RegistryError(RuntimeError):
    """No such model version, or nothing published yet."""


def bentoml_home() -> Path:
    """The BentoML home: ``$BENTOML_HOME`` or ``~/bentoml`` (BentoML's own default)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def default_online_store_url() -> str:
    """``$RECSYS_ONLINE_STORE_URL``, or the embedded SQLite store in the BentoML home, next to the
    models it serves: the store ``recsys serve`` reads unless told otherwise."""
    return os.environ.get(ENV_STORE_URL) or f"sqlite:///{bentoml_home().resolve() / 'recsys' / 'online.db'}"


def _pointer_path(name: str) -> Path:
    return bentoml_home() / "recsys" / f"{name}.current.json"


def _work_dir(name: str) -> Path:
    """What a publish in progress owns: the version it is adding, BentoML's temporary folder."""
    return bentoml_home() / "recsys" / f"{name}.publishing"


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


def publish(bundle_dir: Path, *, name: str = MODEL_NAME) -> ModelVersion:
    """Copy ``bundle_dir`` into the model store as a new version; not current (``set_current`` is).

    Call it inside ``publishing()``. The version is the one in the bundle's ``metadata.json``; its
    summary (metrics, fingerprint, created_at) also becomes the BentoML model's metadata.
    """
    import bentoml

    meta = json.loads((bundle_dir / "metadata.json").read_text())
    tag = f"{name}:{meta['version']}"
    summary = {k: meta[k] for k in ("created_at", "data_fingerprint", "metrics") if k in meta}
    try:
        get(tag)
    except RegistryError:
        pass
    else:  # never overwrite, nor (on failure) delete, a version published before
        raise RegistryError(f"{tag} is already in the model store at {bentoml_home()}")
    work = _work_dir(name)
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    _write_json(work / "adding.json", {"tag": tag})  # before BentoML creates anything
    with (
        _temporary_files_in(work / "tmp"),
        bentoml.models.create(tag, labels={"kind": "recsys"}, metadata=summary) as model,
    ):
        # Links, not copies: BentoML's save copies what they point to into the store, so the bundle
        # is copied once, and a killed run leaves only links behind.
        for entry in bundle_dir.iterdir():
            (Path(model.path) / entry.name).symlink_to(entry.resolve())
    return get(tag)


@contextlib.contextmanager
def _temporary_files_in(folder: Path) -> Iterator[None]:
    """Make ``tempfile``'s default folder ``folder`` for the block (BentoML takes no folder for its
    temporary model copy). A publish is a batch job holding the publish lock."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


@contextlib.contextmanager
def publishing(name: str = MODEL_NAME) -> Iterator[None]:
    """Hold the publish lock of this BentoML home, after removing what a killed publish left behind.

    The lock is ``flock`` on a file: the kernel releases it when the holder dies, even by SIGKILL.
    """
    path = bentoml_home() / "recsys" / f"{name}.publish.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            tidy(name)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def tidy(name: str = MODEL_NAME) -> list[str]:
    """Delete what an unfinished publish left: the version it was adding unless it became current
    (or was, and is in the pointer's history), BentoML's temporary folder, stray pointer files.
    Call it holding the lock (``publishing`` does). Returns what it removed, for logs and tests."""
    import bentoml
    from bentoml.exceptions import NotFound

    removed: list[str] = []
    work = _work_dir(name)
    adding = work / "adding.json"
    if adding.exists():
        tag = json.loads(adding.read_text())["tag"]
        pointer = _read_pointer(name)
        if tag != pointer["current"] and tag not in pointer["history"]:
            with contextlib.suppress(NotFound):
                bentoml.models.delete(tag)  # by path: also a half-copied model that cannot load
                removed.append(tag)
    if work.exists():
        shutil.rmtree(work)
        removed.append(str(work))
    for stray in _pointer_path(name).parent.glob(f".{_pointer_path(name).name}.*"):
        stray.unlink(missing_ok=True)  # written, never moved into place
        removed.append(str(stray))
    return removed


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
    _write_json(_pointer_path(name), pointer)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically: a reader, or a run after a kill, sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(json.dumps(data, indent=2))
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


def kept(name: str = MODEL_NAME) -> list[ModelVersion]:
    """The current version and the ``ROLLBACK_DEPTH`` it would roll back to, newest first: the
    bundles whose online features stay live (empty when nothing is published)."""
    try:
        versions = [current(name)]
    except RegistryError:
        return []
    for tag in reversed(_read_pointer(name)["history"]):
        if len(versions) > ROLLBACK_DEPTH:
            break
        if tag not in {v.tag for v in versions}:
            with contextlib.suppress(RegistryError):  # deleted from the model store by hand
                versions.append(get(tag))
    return versions


def previous(name: str = MODEL_NAME) -> ModelVersion:
    """The version ``rollback`` would make current."""
    pointer = _read_pointer(name)
    history = [t for t in pointer["history"] if t != pointer["current"]]
    if not history:
        raise RegistryError(f"no earlier version of {name!r} to roll back to")
    return get(history[-1])


def rollback(name: str = MODEL_NAME) -> ModelVersion:
    """Make the previously current version current again (one atomic pointer move)."""
    target = previous(name)
    pointer = _read_pointer(name)
    history = [t for t in pointer["history"] if t != pointer["current"]]
    _write_pointer(name, {"current": target.tag, "history": history[:-1]})
    return target
