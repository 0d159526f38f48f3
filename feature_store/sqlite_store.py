"""SQLite online store: one file, WAL mode, named versions of the tables, and the event log.

Each version has tables ``users_v{id}`` and ``items_v{id}`` and a row in ``versions``: its name,
whether it is live, and its last-N. A read resolves the name to a live version and reads the rows
inside one read transaction (WAL gives it a consistent snapshot), so it never mixes versions.
``apply_event`` appends to ``event_log`` (``seq INTEGER PRIMARY KEY AUTOINCREMENT``: arrival order,
never reused) and updates every live version, in one ``BEGIN IMMEDIATE`` transaction: writers from
any thread or process are serialised by SQLite's lock and none loses an update. A load copies the
snapshot in chunks of ``CHUNK`` rows and replays the log in chunks of ``CHUNK`` events, each in its
own short transaction, so events keep flowing meanwhile; the transaction that finds fewer than a
chunk left also makes the version live, so no event falls between the replay and the switch. Each
thread uses its own connection.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from feature_store import definitions as D
from feature_store.offline import Snapshot
from feature_store.record import (
    RECORD_FIELDS,
    SEP,
    LogEvent,
    UnknownVersion,
    apply_to_record,
    check_event,
    check_fresh,
    empty_record,
    frame_to_records,
    log_table,
    online_items,
    records_to_arrow,
    replay_order,
    seen_cap,
)
from recsys.data import schema as S

_TABLE = re.compile(r"^(users|items)_v(\d+)$")
_JSON_FIELDS = (D.EVENTS, D.CATEGORIES, D.LAST_ITEMS)
# Seen ids are stored joined by record.SEP rather than as JSON: splitting decodes ~4x faster for
# users with thousands of items, and reads are the hot path.
_COLUMNS = ", ".join(RECORD_FIELDS)
_LOG_COLUMNS = "seq, user_id, item_id, event, timestamp"
DEFAULT_LAST_N = D.FeatureConfig().last_n
CHUNK = 5000  # rows or events per load transaction: an event waits for the lock at most that long
_PARAMS = 500  # ids per IN (...) query: stay under SQLite's bound-parameter limit


def sqlite_path(url: str) -> Path:
    """``sqlite:///x.db`` -> ``x.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``.

    >>> str(sqlite_path("sqlite:////tmp/online.db"))
    '/tmp/online.db'
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"bad SQLite URL {url!r}: expected sqlite:///path/to.db")
    return Path(url[len(prefix) :])


class SQLiteStore:
    """Online store in one SQLite file (``sqlite:///path/to.db``).

    Parameters
    ----------
    url
        ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.
    timeout
        Seconds a writer waits for the lock before failing.
    chunk
        Rows, or logged events, a load writes per transaction.
    max_seen
        Items a user's seen list keeps (``record.seen_cap``: default ``$RECSYS_MAX_SEEN`` or 10,000).
    """

    def __init__(
        self, url: str, *, timeout: float = 30.0, chunk: int = CHUNK, max_seen: int | None = None
    ) -> None:
        self.url = url
        self.chunk = chunk
        self.max_seen = seen_cap(max_seen)
        self.path = sqlite_path(url)
        self.timeout = timeout
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS event_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "user_id TEXT NOT NULL, item_id TEXT NOT NULL, event TEXT, timestamp INTEGER NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS versions (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "live INTEGER NOT NULL, last_n INTEGER NOT NULL)"
            )
            legacy = self._meta(db, "version")  # a file written before versions had names
            if legacy is not None:
                last_n = int(self._meta(db, "last_n") or DEFAULT_LAST_N)
                db.execute("INSERT OR IGNORE INTO versions VALUES (?, 'legacy', 1, ?)", (int(legacy), last_n))
                db.execute("DELETE FROM meta WHERE key IN ('version', 'last_n', 'cutoff')")
            if self._meta(db, "next_version") is None:
                # a new store: one empty live version, so events are readable before any load
                self._create_version(db, 1, name="initial", last_n=DEFAULT_LAST_N)
                db.execute("UPDATE versions SET live = 1 WHERE id = 1")
                self._set_meta(db, next_version=2)

    # --- connections and transactions ---------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _read(self, version: str | None) -> Iterator[tuple[sqlite3.Connection, int | None]]:
        """A read transaction and the id of ``version`` (``None``: the newest; no live version: ``None``)."""
        db = self._db
        db.execute("BEGIN")
        try:
            yield db, self._resolve(db, version)
        finally:
            db.execute("COMMIT")

    def _resolve(self, db: sqlite3.Connection, version: str | None) -> int | None:
        if version is None:
            (newest,) = db.execute("SELECT max(id) FROM versions WHERE live = 1").fetchone()
            return None if newest is None else int(newest)
        row = db.execute("SELECT id FROM versions WHERE name = ? AND live = 1", (version,)).fetchone()
        if row is None:
            raise UnknownVersion(f"online feature store {self.url} has no version {version!r}")
        return int(row[0])

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(db: sqlite3.Connection, **values: Any) -> None:
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, str(v)) for k, v in values.items()],
        )

    @staticmethod
    def _create_version(db: sqlite3.Connection, version: int, *, name: str, last_n: int) -> None:
        """Empty tables for ``version``, not live yet."""
        SQLiteStore._drop(db, version)
        db.execute(
            f"CREATE TABLE users_v{version} (user_id TEXT PRIMARY KEY, n_events INTEGER NOT NULL, "
            "n_items INTEGER NOT NULL, last_ts INTEGER, price_sum REAL NOT NULL, price_n INTEGER NOT NULL, "
            "events TEXT NOT NULL, categories TEXT NOT NULL, last_items TEXT NOT NULL, seen TEXT NOT NULL) "
            "WITHOUT ROWID"
        )
        db.execute(
            f"CREATE TABLE items_v{version} (item_id TEXT PRIMARY KEY, category TEXT, price REAL, "
            "row TEXT NOT NULL) WITHOUT ROWID"
        )
        db.execute("INSERT INTO versions VALUES (?, ?, 0, ?)", (version, name, last_n))

    @staticmethod
    def _drop(db: sqlite3.Connection, version: int) -> None:
        db.execute(f"DROP TABLE IF EXISTS users_v{version}")
        db.execute(f"DROP TABLE IF EXISTS items_v{version}")
        db.execute("DELETE FROM versions WHERE id = ?", (version,))

    @staticmethod
    def _pruned(db: sqlite3.Connection) -> int:
        return int(SQLiteStore._meta(db, "pruned_through") or 0)

    # --- reads --------------------------------------------------------------------------------------

    def version(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def versions(self) -> list[str]:
        with self._read(None) as (db, _):
            return [r[0] for r in db.execute("SELECT name FROM versions WHERE live = 1 ORDER BY id")]

    def get_user(self, user_ids: Sequence[str], *, version: str | None = None) -> pa.Table:
        return records_to_arrow([str(u) for u in user_ids], self._records(user_ids, version))

    def get_records(self, user_ids: Sequence[str], *, version: str | None = None) -> list[dict[str, Any]]:
        return [r if r is not None else empty_record() for r in self._records(user_ids, version)]

    def _records(self, user_ids: Sequence[str], version: str | None) -> list[dict[str, Any] | None]:
        ids = [str(u) for u in user_ids]
        with self._read(version) as (db, vid):
            found = {} if vid is None else self._select_users(db, vid, ids)
        return [found.get(u) for u in ids]

    @staticmethod
    def _select_users(db: sqlite3.Connection, version: int, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _PARAMS):
            chunk = ids[start : start + _PARAMS]
            marks = ",".join("?" * len(chunk))
            for row in db.execute(
                f"SELECT user_id, {_COLUMNS} FROM users_v{version} WHERE user_id IN ({marks})", chunk
            ):
                found[row[0]] = _decode(row[1:])
        return found

    def get_items(self, item_ids: Sequence[str], *, version: str | None = None) -> pa.Table:
        ids = [str(i) for i in item_ids]
        found: dict[str, dict[str, Any]] = {}
        with self._read(version) as (db, vid):
            for start in range(0, len(ids) if vid is not None else 0, _PARAMS):
                chunk = ids[start : start + _PARAMS]
                marks = ",".join("?" * len(chunk))
                for item_id, row in db.execute(
                    f"SELECT item_id, row FROM items_v{vid} WHERE item_id IN ({marks})", chunk
                ):
                    found[item_id] = json.loads(row)
        rows = [found.get(i) or {S.ITEM_ID: i} for i in ids]
        return pl.DataFrame(rows, infer_schema_length=None).to_arrow() if rows else pa.table({})

    def events_after(self, seq: int) -> tuple[pa.Table, int]:
        with self._read(None) as (db, _):
            rows = db.execute(f"SELECT {_LOG_COLUMNS} FROM event_log WHERE seq > ? ORDER BY seq", (seq,))
            events: list[LogEvent] = rows.fetchall()
        return log_table(events), (events[-1][0] if events else seq)

    # --- events -------------------------------------------------------------------------------------

    def apply_event(self, user_id: str, item_id: str, event: str | None, timestamp: int) -> int:
        check_event(user_id, item_id, event)
        user_id, item_id, timestamp = str(user_id), str(item_id), int(timestamp)
        with self._write() as db:
            seq = db.execute(
                "INSERT INTO event_log (user_id, item_id, event, timestamp) VALUES (?, ?, ?, ?)",
                (user_id, item_id, event, timestamp),
            ).lastrowid
            for version, last_n in db.execute("SELECT id, last_n FROM versions WHERE live = 1").fetchall():
                self._apply(db, version, last_n, [(0, user_id, item_id, event, timestamp)])
        assert seq is not None
        return int(seq)

    def _apply(self, db: sqlite3.Connection, version: int, last_n: int, events: Sequence[LogEvent]) -> None:
        """Add ``events``, in their order, to the users' states in ``version``."""
        users = list(dict.fromkeys(e[1] for e in events))
        records = self._select_users(db, version, users)
        items = list(dict.fromkeys(e[2] for e in events))
        meta: dict[str, tuple[str | None, float | None]] = {}
        for start in range(0, len(items), _PARAMS):
            chunk = items[start : start + _PARAMS]
            marks = ",".join("?" * len(chunk))
            for item_id, category, price in db.execute(
                f"SELECT item_id, category, price FROM items_v{version} WHERE item_id IN ({marks})", chunk
            ):
                meta[item_id] = (category, price)
        for _, user_id, item_id, event, ts in events:
            category, price = meta.get(item_id, (None, None))
            apply_to_record(
                records.setdefault(user_id, empty_record()),
                item_id=item_id,
                event=event,
                timestamp=ts,
                category=category,
                price=price,
                last_n=last_n,
                max_seen=self.max_seen,
            )
        self._upsert(db, version, users, [records[u] for u in users])

    def prune_events(self, *, through: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM event_log WHERE seq <= ?", (through,))
            self._set_meta(db, pruned_through=max(self._pruned(db), int(through)))

    # --- writes -------------------------------------------------------------------------------------

    @staticmethod
    def _upsert(db: sqlite3.Connection, version: int, ids: list[str], records: list[dict[str, Any]]) -> None:
        marks = ",".join("?" * (len(RECORD_FIELDS) + 1))
        db.executemany(
            f"INSERT OR REPLACE INTO users_v{version} (user_id, {_COLUMNS}) VALUES ({marks})",
            ([user_id, *_encode(record)] for user_id, record in zip(ids, records, strict=True)),
        )

    @staticmethod
    def _put_items(db: sqlite3.Connection, version: int, items: pl.DataFrame) -> None:
        for name in (S.ITEM_ID, S.CATEGORY, S.PRICE):
            if name not in items.columns:
                raise ValueError(f"online item rows need a {name!r} column (see online_items)")
        db.executemany(
            f"INSERT OR REPLACE INTO items_v{version} (item_id, category, price, row) VALUES (?, ?, ?, ?)",
            (
                (row[S.ITEM_ID], row[S.CATEGORY], row[S.PRICE], json.dumps(row))
                for row in items.iter_rows(named=True)
            ),
        )

    def put(
        self,
        *,
        users: pl.DataFrame | None = None,
        items: pl.DataFrame | None = None,
        version: str | None = None,
    ) -> None:
        with self._write() as db:
            vid = self._resolve(db, version)
            if vid is None:
                raise UnknownVersion(f"online feature store {self.url} has no live version to put rows into")
            if users is not None:
                ids, records = frame_to_records(users, max_seen=self.max_seen)
                self._upsert(db, vid, ids, records)
            if items is not None:
                self._put_items(db, vid, items)

    def load(self, snapshot: Snapshot, *, name: str | None = None) -> str:
        with self._write() as db:  # reserve the version; refuse a stale snapshot before copying it
            check_fresh(snapshot, pruned_through=self._pruned(db), store=self.url)
            version = int(self._meta(db, "next_version") or 1)
            self._set_meta(db, next_version=version + 1)
            name = name or str(version)
            self._create_version(db, version, name=name, last_n=snapshot.config.last_n)
        self._write_users(version, snapshot.user_states())
        self._write_items(version, online_items(snapshot))
        self._go_live(version, snapshot)
        return name

    def _write_users(self, version: int, states: pl.DataFrame) -> None:
        ids, records = frame_to_records(states, max_seen=self.max_seen)
        step = self.chunk
        for start in range(0, len(ids), step):
            with self._write() as db:
                self._upsert(db, version, ids[start : start + step], records[start : start + step])

    def _write_items(self, version: int, items: pl.DataFrame) -> None:
        for start in range(0, max(items.height, 1), self.chunk):
            with self._write() as db:
                self._put_items(db, version, items.slice(start, self.chunk))

    def _go_live(self, version: int, snapshot: Snapshot) -> None:
        """Replay the log above the snapshot's ``events_through`` onto ``version``, a chunk per
        transaction; the transaction that finds less than a chunk left also makes it live (and
        retires a live version of the same name), so every event reaches it once."""
        done = snapshot.events_through or 0
        last_n = snapshot.config.last_n
        while True:
            with self._write() as db:
                check_fresh(snapshot, pruned_through=self._pruned(db), store=self.url)
                query = f"SELECT {_LOG_COLUMNS} FROM event_log WHERE seq > ? ORDER BY seq LIMIT ?"
                events: list[LogEvent] = db.execute(query, (done, self.chunk)).fetchall()
                if events:
                    self._apply(db, version, last_n, replay_order(events))
                    done = events[-1][0]
                if len(events) == self.chunk:
                    continue
                (name,) = db.execute("SELECT name FROM versions WHERE id = ?", (version,)).fetchone()
                for (old,) in db.execute(
                    "SELECT id FROM versions WHERE name = ? AND live = 1", (name,)
                ).fetchall():
                    self._drop(db, old)
                db.execute("UPDATE versions SET live = 1 WHERE id = ?", (version,))
                return

    def retain(self, names: Collection[str]) -> list[str]:
        keep = set(names)
        with self._write() as db:
            rows = db.execute("SELECT id, name, live FROM versions ORDER BY id").fetchall()
            kept = {version for version, name, live in rows if live and name in keep}
            for version, _, _ in rows:
                if version not in kept:
                    self._drop(db, version)
            for table, version in self._tables(db):  # tables no row names (files from before versions)
                if version not in kept:
                    db.execute(f"DROP TABLE IF EXISTS {table}")
        return [name for _, name, live in rows if live and name not in keep]

    @staticmethod
    def _tables(db: sqlite3.Connection) -> list[tuple[str, int]]:
        """Every versioned table and its version id."""
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
        return [(r[0], int(m.group(2))) for r in rows if (m := _TABLE.match(r[0]))]

    def tables(self) -> list[str]:
        """Versioned tables present in the file (for inspection and tests)."""
        return [table for table, _ in self._tables(self._db)]

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _encode(record: dict[str, Any]) -> list[Any]:
    values = []
    for name in RECORD_FIELDS:
        value = record[name]
        if name in _JSON_FIELDS:
            value = json.dumps(value, separators=(",", ":"))
        elif name == D.SEEN:
            value = SEP.join(value)
        values.append(value)
    return values


def _decode(row: Sequence[Any]) -> dict[str, Any]:
    record = dict(zip(RECORD_FIELDS, row, strict=True))
    for name in _JSON_FIELDS:
        record[name] = json.loads(record[name])
    record[D.SEEN] = record[D.SEEN].split(SEP) if record[D.SEEN] else []
    return record
