"""Ingest: fold the inbox and the service's event log into the accumulated tables of ``data_dir``.

Upstream systems drop files into ``inbox_dir`` (Parquet, CSV or JSON lines). Each file is one table,
told by its columns: an items file has ``item_id`` and ``title``, an interactions file ``user_id``,
``item_id`` and ``timestamp``. Every file is checked with the data contract (``recsys.data.validation``);
an interactions file may only name items of the catalogue, which is ``data_dir``'s items plus this
inbox's valid items files. Then:

- a valid items file adds new items and updates existing ones: the columns it has replace the
  item's old values (a null included), the columns it lacks keep them; files apply in name order,
  so the latest version of each item wins (name the files by date);
- a valid interactions file is appended, de-duplicated on ``(user_id, item_id, timestamp, event)``
  against itself and everything already in ``data_dir``;
- valid files go to ``inbox_dir/processed/``; invalid ones to ``inbox_dir/quarantine/`` with
  ``NAME.report.json`` beside them listing every problem (``validation.Problem`` as JSON). A file
  that is neither table, or cannot be read, is quarantined too. Names starting with ``.`` or ending
  in ``.tmp`` or ``.part`` are uploads in progress and are left alone.

The service's own events. With an online ``store``, the events that its log holds above the
``events_through`` of ``data_dir`` (``OnlineStore.events_after``) are appended in the same step,
and the new ``events_through`` is recorded with them. The job passes it to the snapshot it
publishes (``feature_store.offline.write_snapshot(events_through=...)``), and publishing prunes the
log only through it, so every accepted event reaches the training data exactly once. An event whose
item is not in the catalogue is kept aside in ``data_dir`` (*pending*) and joins the interactions on
the night its item arrives; until then the training data, and so a published snapshot, lack it.

Crash safety. ``data_dir`` holds Parquet parts and ``manifest.json``, which names the current parts,
``events_through``, and the SHA-256 of every inbox file ever ingested. A run writes new parts under
new names, then replaces the manifest in one ``os.replace``: that is the commit. A kill before it
leaves the old manifest, and the next run removes the unnamed parts and ingests again; a kill after
it, before the files are moved, leaves files whose hash the manifest holds, and the next run only
moves them. So each file is ingested exactly once, and re-running on the same inbox adds nothing.
``RECSYS_RETRAIN_DIE_AT`` names the kill points the tests use (``lock.die_at``):
``ingest-before-commit``, ``ingest-after-write`` and ``ingest-moving`` (one file moved).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from recsys.data import schema as S
from recsys.data.io import DataFileError, read_table
from recsys.data.validation import DataValidationError, Problem, validate_items, validate_tables
from recsys.pipeline.datadir import (
    INTERACTIONS,
    ITEMS,
    KEY,
    PENDING_SCHEMA,
    DataDirError,
    Manifest,
    commit,
    load_data,
    load_tables,
    read_interactions,
    read_pending,
    remove_orphans,
)
from recsys.pipeline.lock import die_at

if TYPE_CHECKING:
    from feature_store.online import OnlineStore

logger = logging.getLogger("recsys.ingest")
__all__ = ["IngestError", "IngestResult", "ingest", "load_data", "load_tables"]  # load_*: the job reads here

PROCESSED, QUARANTINE = "processed", "quarantine"
IN_PROGRESS = (".tmp", ".part")
CATALOGUE = "the catalogue (data_dir's items and this inbox's valid items files)"
_ROW, _FROM_LOG = "__ingest_row", "__ingest_from_log"


class IngestError(DataDirError):
    """The service's event log holds events that break the data contract."""


@dataclass(frozen=True)
class IngestResult:
    """What one ``ingest`` did. ``events_through``: the highest event-log sequence number that
    ``data_dir`` holds (``None``: none ever), for the snapshot the job publishes."""

    files_ingested: tuple[str, ...]  # inbox file names appended this run
    files_quarantined: tuple[str, ...]  # names moved to inbox_dir/quarantine/ (each with NAME.report.json)
    rows_added: dict[str, int]  # {"interactions": n, "items": n} new rows after de-duplication
    items_changed: int  # existing items whose fields changed
    events_through: int | None
    files_already_ingested: tuple[str, ...] = ()  # ingested by a run killed before moving them
    events_ingested: int = 0  # of rows_added["interactions"], from the service's event log
    events_pending: int = 0  # logged events whose item is not in the catalogue yet, kept aside
    generation: int = 0  # the manifest's generation: grows with every change to data_dir

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class _File:
    """One inbox file on its way through: its table kind, validated rows, or problems."""

    path: Path
    digest: str
    table: str | None = None
    frame: pl.DataFrame | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class _Data:
    """What ``data_dir`` holds before this run, as far as checking and de-duplicating need it."""

    items: pl.DataFrame | None  # the catalogue
    keys: pl.DataFrame  # the KEY columns of every interaction
    columns: pl.DataFrame  # no rows: the interactions' columns and types (grows with the batch's files)
    unix: bool | None  # whether the timestamps are Unix seconds (None: no interactions yet)
    pending: pl.DataFrame  # logged events kept aside (PENDING_SCHEMA)

    @classmethod
    def read(cls, data_dir: Path, manifest: Manifest) -> _Data:
        keys = read_interactions(data_dir, manifest, columns=list(KEY))
        schemas = [pl.DataFrame(schema=pl.read_parquet_schema(data_dir / p)) for p in manifest.interactions]
        return cls(
            items=pl.read_parquet(data_dir / manifest.items) if manifest.items else None,
            keys=keys,
            columns=pl.concat([keys.head(0), *schemas], how="diagonal_relaxed"),
            unix=S.are_unix_seconds(keys.get_column(S.TIMESTAMP)) if keys.height else None,
            pending=read_pending(data_dir, manifest),
        )


# --- the inbox ----------------------------------------------------------------------------------------


def _inbox_files(inbox_dir: Path) -> list[Path]:
    if not inbox_dir.is_dir():
        return []
    return sorted(
        p
        for p in inbox_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(IN_PROGRESS)
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _classify(file: _File) -> pl.LazyFrame | None:
    """Read ``file`` and decide its table by its columns; on failure, record why and return None."""
    name = file.path.name
    try:
        frame = read_table(file.path)
        columns = set(frame.collect_schema().names())
    except DataFileError as exc:
        file.problems.append(Problem(name, None, str(exc).removeprefix(f"{file.path}: ")))
        return None
    if {S.USER_ID, S.ITEM_ID, S.TIMESTAMP} <= columns:
        file.table = INTERACTIONS
    elif {S.ITEM_ID, S.TITLE} <= columns:
        file.table = ITEMS
    else:
        found = ", ".join(sorted(columns)) or "none"
        message = (
            "neither an items file (needs item_id, title) nor an interactions file "
            f"(needs user_id, item_id, timestamp); columns found: {found}"
        )
        file.problems.append(Problem(name, None, message))
        return None
    return frame


def _merge_items(catalogue: pl.DataFrame | None, update: pl.DataFrame) -> pl.DataFrame:
    """``catalogue`` with ``update`` applied: its columns replace existing items' values, new items
    are appended. Raises ``pl.exceptions.PolarsError`` when a column's types cannot be reconciled."""
    if catalogue is None:
        return update
    wide = pl.concat([catalogue, update.head(0)], how="diagonal_relaxed")
    update = update.cast({c: wide.schema[c] for c in update.columns})
    known = update.get_column(S.ITEM_ID).is_in(catalogue.get_column(S.ITEM_ID).implode())
    merged = wide.update(update.filter(known), on=S.ITEM_ID, how="left", include_nulls=True)
    return pl.concat([merged, update.filter(~known)], how="diagonal_relaxed")


def _item_changes(before: pl.DataFrame | None, after: pl.DataFrame | None) -> tuple[int, int]:
    """(items added, existing items whose fields changed) from ``before`` to ``after``."""
    if after is None:
        return 0, 0
    if before is None:
        return after.height, 0
    added = after.filter(~pl.col(S.ITEM_ID).is_in(before.get_column(S.ITEM_ID).implode())).height
    wide = pl.concat([after.head(0), before], how="diagonal_relaxed").select(after.columns)
    both = wide.join(after, on=S.ITEM_ID, how="inner", suffix="__new")
    differs = [pl.col(c).ne_missing(pl.col(f"{c}__new")) for c in after.columns if c != S.ITEM_ID]
    return added, both.filter(pl.any_horizontal(differs)).height


def _check_interactions(
    file: _File, frame: pl.LazyFrame, catalogue: pl.DataFrame | None, data: _Data
) -> None:
    """Validate an interactions file against ``catalogue``; set ``file.frame`` or ``file.problems``."""
    name = file.path.name
    items = catalogue if catalogue is not None else pl.DataFrame(schema=S.ITEM_REQUIRED)
    try:
        _, checked = validate_tables(items.lazy(), frame, items_source=CATALOGUE, interactions_source=name)
    except DataValidationError as err:
        file.problems += [p for p in err.problems if p.source == name]
        checked = None
    except pl.exceptions.PolarsError as exc:  # a corrupt record past what read_table looked at
        file.problems.append(Problem(name, None, f"cannot read: {exc}"))
        checked = None
    if catalogue is None:
        message = f"unknown items: {CATALOGUE} is empty; add an items file to the inbox"
        file.problems.append(Problem(name, S.ITEM_ID, message))
    if checked is None or file.problems:
        return
    unix = S.are_unix_seconds(checked.get_column(S.TIMESTAMP))
    if data.unix is not None and unix != data.unix:
        here, there = ("Unix seconds", "an order index") if unix else ("an order index", "Unix seconds")
        message = f"timestamps are {here}, but data_dir's are {there}; use one kind throughout"
        file.problems.append(Problem(name, S.TIMESTAMP, message))
        return
    if S.EVENT not in checked.columns:
        checked = checked.with_columns(pl.lit(None, pl.String).alias(S.EVENT))
    try:
        data.columns = pl.concat([data.columns, checked.head(0)], how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:
        file.problems.append(Problem(name, None, f"columns do not match data_dir's interactions: {exc}"))
        return
    data.unix = unix
    file.frame = checked


def _validate(files: list[_File], data: _Data) -> pl.DataFrame | None:
    """Classify and validate ``files`` (name order); return the catalogue with the valid items files
    applied. Each file ends with ``frame`` (valid) or ``problems``."""
    frames = {f.path: frame for f in files if (frame := _classify(f)) is not None}
    catalogue = data.items
    for file in (f for f in files if f.table == ITEMS):
        name = file.path.name
        try:
            checked = validate_items(frames[file.path], source=name)
        except DataValidationError as err:
            file.problems += err.problems
            continue
        except pl.exceptions.PolarsError as exc:  # a corrupt record past what read_table looked at
            file.problems.append(Problem(name, None, f"cannot read: {exc}"))
            continue
        try:
            catalogue = _merge_items(catalogue, checked)
        except pl.exceptions.PolarsError as exc:
            file.problems.append(Problem(name, None, f"columns do not match data_dir's items: {exc}"))
            continue
        file.frame = checked
    for file in (f for f in files if f.table == INTERACTIONS):
        _check_interactions(file, frames[file.path], catalogue, data)
    return catalogue


# --- the service's event log ------------------------------------------------------------------------


def _read_events(
    store: OnlineStore | None, through: int | None, catalogue: pl.DataFrame | None, pending: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, int | None]:
    """(events to append, events still pending, new ``events_through``).

    The log above ``through`` joins the events kept aside before; those whose item is in
    ``catalogue`` are checked with the contract and appended, the others stay pending.
    """
    fresh = pl.DataFrame(schema=PENDING_SCHEMA)
    if store is not None:
        table, last = store.events_after(through or 0)
        if table.num_rows:
            fresh = pl.DataFrame(pl.from_arrow(table)).cast(PENDING_SCHEMA).select(PENDING_SCHEMA.names())
            through = last
    events = pl.concat([pending, fresh])
    ids = (catalogue if catalogue is not None else pl.DataFrame(schema=S.ITEM_REQUIRED)).get_column(S.ITEM_ID)
    known = events.get_column(S.ITEM_ID).is_in(ids.implode())
    append = events.filter(known).drop("seq")
    if append.height:
        assert catalogue is not None
        source = f"the event log of {getattr(store, 'url', 'the online store')}"
        try:
            _, append = validate_tables(
                catalogue.lazy(), append.lazy(), items_source=CATALOGUE, interactions_source=source
            )
        except DataValidationError as err:
            raise IngestError(f"{source} holds events that break the data contract:\n{err}") from err
    return append, events.filter(~known), through


# --- writing data_dir -------------------------------------------------------------------------------


def _new_interactions(frames: list[pl.DataFrame], keys: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``frames`` (in order) that are in neither ``keys`` nor an earlier frame or row."""
    if not frames:
        return pl.DataFrame()
    rows = pl.concat(frames, how="diagonal_relaxed")
    marked = pl.concat(
        [
            keys.select(KEY).with_columns(pl.lit(-1, pl.Int64).alias(_ROW)),
            rows.select(KEY).with_row_index(_ROW).select(*KEY, pl.col(_ROW).cast(pl.Int64)),
        ],
        how="vertical_relaxed",
    )
    first = marked.unique(subset=list(KEY), keep="first", maintain_order=True)
    return rows[first.filter(pl.col(_ROW) >= 0).get_column(_ROW)]


def _target(folder: Path, file: _File) -> Path:
    """Where ``file`` goes in ``folder``: its own name, or with its content hash added when taken."""
    folder.mkdir(exist_ok=True)
    target = folder / file.path.name
    if target.exists():
        target = folder / f"{file.path.stem}-{file.digest[:12]}{file.path.suffix}"
    return target


def _quarantine(file: _File, inbox_dir: Path) -> str:
    """Move ``file`` to the quarantine with ``NAME.report.json`` beside it; return its name there."""
    target = _target(inbox_dir / QUARANTINE, file)
    report = {
        "file": file.path.name,
        "sha256": file.digest,
        "table": file.table,
        "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "problems": [asdict(p) | {"text": str(p)} for p in file.problems],
    }
    report_path = target.with_name(f"{target.name}.report.json")
    tmp = report_path.with_name(f".{report_path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, report_path)  # the report first: a kill in between leaves the file to check again
    os.replace(file.path, target)
    return target.name


def ingest(*, inbox_dir: Path, data_dir: Path, store: OnlineStore | None) -> IngestResult:
    """Fold the inbox (and, with ``store``, the service's event log) into ``data_dir``; see the module
    docstring. Invalid files are quarantined and reported, never raised: the job picks the exit code.

    Raises
    ------
    DataDirError
        ``data_dir``'s manifest is damaged.
    IngestError
        The event log holds events that break the data contract.
    """
    inbox_dir, data_dir = Path(inbox_dir), Path(data_dir)
    manifest = Manifest.read(data_dir)
    remove_orphans(data_dir, manifest)
    data = _Data.read(data_dir, manifest)
    files = [_File(path, _sha256(path)) for path in _inbox_files(inbox_dir)]
    done = [f for f in files if f.digest in manifest.files]  # a killed run committed, did not move
    todo = [f for f in files if f.digest not in manifest.files]
    catalogue = _validate(todo, data)
    valid = [(f, f.frame) for f in todo if f.frame is not None]
    events, pending, through = _read_events(store, manifest.events_through, catalogue, data.pending)
    from_files = [
        frame.with_columns(pl.lit(value=False).alias(_FROM_LOG))
        for f, frame in valid
        if f.table == INTERACTIONS
    ]
    rows = _new_interactions(
        [*from_files, events.with_columns(pl.lit(value=True).alias(_FROM_LOG))], data.keys
    )
    from_log = int(rows.get_column(_FROM_LOG).sum())
    rows = rows.drop(_FROM_LOG)
    added, changed = _item_changes(data.items, catalogue)
    pending_changed = not pending.get_column("seq").equals(data.pending.get_column("seq"))
    if valid or through != manifest.events_through or pending_changed:
        when = datetime.now(UTC).isoformat(timespec="seconds")
        records = {
            f.digest: {"name": f.path.name, "table": f.table, "rows": len(frame), "at": when}
            for f, frame in valid
        }
        manifest = commit(
            data_dir,
            manifest,
            items=catalogue if added or changed else None,
            rows=rows,
            pending=pending if pending_changed else None,
            events_through=through,
            files=records,
        )
    die_at("ingest-after-write")
    moves = [(f, False) for f in (*done, *(f for f, _ in valid))] + [
        (f, True) for f in todo if f.frame is None
    ]
    quarantined = []
    for i, (file, bad) in enumerate(moves):
        if bad:
            quarantined.append(_quarantine(file, inbox_dir))
        else:
            os.replace(file.path, _target(inbox_dir / PROCESSED, file))
        if i == 0:
            die_at("ingest-moving")
    result = IngestResult(
        files_ingested=tuple(f.path.name for f, _ in valid),
        files_quarantined=tuple(quarantined),
        rows_added={INTERACTIONS: rows.height, ITEMS: added},
        items_changed=changed,
        events_through=manifest.events_through,
        files_already_ingested=tuple(f.path.name for f in done),
        events_ingested=from_log,
        events_pending=pending.height,
        generation=manifest.generation,
    )
    logger.info("ingested %s", json.dumps(result.to_json()))
    return result
