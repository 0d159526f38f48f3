"""The job's accumulated data: Parquet parts in ``data_dir`` and the manifest that names them.

``data_dir/manifest.json`` names the current parts (one items table, interaction parts, the events
kept aside), the highest event-log sequence number the data holds (``events_through``) and the
SHA-256 of every inbox file ever ingested. A change writes its new parts under new names, then
replaces the manifest in one ``os.replace`` (``commit``): readers see the old data or the new, never
half of it, and a run killed before the commit leaves parts no manifest names, which the next run
removes (``remove_orphans``). ``recsys.pipeline.ingest`` is the only writer; ``load_data`` reads.

>>> import tempfile
>>> data_dir = Path(tempfile.mkdtemp())
>>> items = pl.DataFrame({"item_id": ["a"], "title": ["A"]})
>>> rows = pl.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1], "event": [None]})
>>> m = commit(data_dir, Manifest(), items=items, rows=rows, pending=None, events_through=None, files={})
>>> load_data(data_dir).summary(), m.generation
({'users': 1, 'items': 1, 'interactions': 1}, 1)
>>> load_tables(data_dir)[1].columns  # no event column: it is null throughout
['user_id', 'item_id', 'timestamp']
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data import schema as S
from recsys.data.dataset import Dataset
from recsys.data.io import write_parquet
from recsys.pipeline.lock import die_at

MANIFEST = "manifest.json"
ITEMS, INTERACTIONS, PENDING = "items", "interactions", "pending-events"  # part name prefixes
KEY = (S.USER_ID, S.ITEM_ID, S.TIMESTAMP, S.EVENT)  # what makes two interactions the same one
MAX_PARTS = 32  # interaction parts before they are compacted into one
PENDING_SCHEMA = pl.Schema(  # logged events kept aside until their item is in the catalogue
    {
        "seq": pl.Int64(),
        S.USER_ID: pl.String(),
        S.ITEM_ID: pl.String(),
        S.EVENT: pl.String(),
        S.TIMESTAMP: pl.Int64(),
    }
)
_PART = re.compile(rf"({ITEMS}|{INTERACTIONS}|{PENDING})-\d+\.parquet")


class DataDirError(RuntimeError):
    """``data_dir`` holds no data yet, or its manifest is damaged."""


@dataclass
class Manifest:
    """``data_dir/manifest.json``: the current parts, the event-log position, the ingested files."""

    generation: int = 0  # grows with every commit
    items: str | None = None
    interactions: list[str] = field(default_factory=list)
    pending: str | None = None
    events_through: int | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha256 -> name, table, rows, at

    @classmethod
    def read(cls, data_dir: Path) -> Manifest:
        path = data_dir / MANIFEST
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise DataDirError(f"{path}: damaged manifest ({exc}); restore it from a backup") from exc

    def parts(self) -> set[str]:
        return {p for p in (self.items, self.pending, *self.interactions) if p}


def load_tables(data_dir: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The accumulated ``(items, interactions)`` of ``data_dir``, validated when they were ingested.

    Ingest keeps an ``event`` column for de-duplication; when it is null throughout it is left out
    here, as the files had none. Raises ``DataDirError`` when nothing was ingested yet.
    """
    data_dir = Path(data_dir)
    manifest = Manifest.read(data_dir)
    if manifest.items is None:
        message = "no data yet; drop an items file and an interactions file in the inbox"
        raise DataDirError(f"{data_dir}: {message}")
    interactions = read_interactions(data_dir, manifest)
    if interactions.get_column(S.EVENT).null_count() == interactions.height:
        interactions = interactions.drop(S.EVENT)
    return pl.read_parquet(data_dir / manifest.items), interactions


def load_data(data_dir: str | Path) -> Dataset:
    """The accumulated tables of ``data_dir``, encoded (``Dataset.from_tables``)."""
    return Dataset.from_tables(*load_tables(data_dir))


def read_interactions(data_dir: Path, manifest: Manifest, columns: list[str] | None = None) -> pl.DataFrame:
    """Every interaction part, concatenated (``columns`` only, when given)."""
    frames = [pl.read_parquet(data_dir / p, columns=columns) for p in manifest.interactions]
    if not frames:
        empty = pl.DataFrame(schema={**S.INTERACTION_REQUIRED, S.EVENT: pl.String()})
        return empty.select(columns) if columns else empty
    return pl.concat(frames, how="diagonal_relaxed")


def read_pending(data_dir: Path, manifest: Manifest) -> pl.DataFrame:
    if manifest.pending is None:
        return pl.DataFrame(schema=PENDING_SCHEMA)
    return pl.read_parquet(data_dir / manifest.pending)


def commit(
    data_dir: Path,
    old: Manifest,
    *,
    items: pl.DataFrame | None,
    rows: pl.DataFrame,
    pending: pl.DataFrame | None,
    events_through: int | None,
    files: dict[str, dict[str, Any]],
    max_parts: int = MAX_PARTS,
) -> Manifest:
    """Write the new parts, then the manifest naming them: one atomic step. Returns the new manifest.

    ``items``: the whole new catalogue, or ``None`` when unchanged; ``rows``: interactions to append;
    ``pending``: the events now kept aside (``None``: unchanged); ``files``: records to add, by hash.
    Past ``max_parts`` interaction parts, they are compacted into one.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    generation = old.generation + 1
    new = Manifest(
        generation, old.items, list(old.interactions), old.pending, events_through, dict(old.files)
    )
    if items is not None:
        new.items = _write_part(items, data_dir, ITEMS, generation)
    if rows.height:
        if len(new.interactions) >= max_parts:  # compact: one part holds everything
            rows = pl.concat([read_interactions(data_dir, new), rows], how="diagonal_relaxed")
            new.interactions = []
        rows = rows.sort(S.USER_ID, S.TIMESTAMP, maintain_order=True)
        new.interactions.append(_write_part(rows, data_dir, INTERACTIONS, generation))
    if pending is not None:
        new.pending = _write_part(pending, data_dir, PENDING, generation) if pending.height else None
    new.files.update(files)
    die_at("ingest-before-commit")
    tmp = data_dir / f".{MANIFEST}.{os.getpid()}"
    with tmp.open("w") as out:
        out.write(json.dumps(asdict(new), indent=1, sort_keys=True))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, data_dir / MANIFEST)  # the commit
    _fsync(data_dir)
    remove_orphans(data_dir, new)
    return new


def remove_orphans(data_dir: Path, manifest: Manifest) -> None:
    """Delete the parts ``manifest`` does not name, and temporary files: what a killed run left."""
    if not data_dir.is_dir():
        return
    keep = manifest.parts()
    for path in data_dir.iterdir():
        if (_PART.fullmatch(path.name) and path.name not in keep) or path.name.startswith(f".{MANIFEST}."):
            path.unlink()
        elif path.is_dir() and path.name.startswith(".") and _PART.match(path.name[1:]):
            shutil.rmtree(path)  # atomic_path's temporary folder


def _write_part(frame: pl.DataFrame, data_dir: Path, prefix: str, generation: int) -> str:
    name = f"{prefix}-{generation:06d}.parquet"
    write_parquet(frame, data_dir / name)
    _fsync(data_dir / name)  # on disk before the manifest that names it
    return name


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
