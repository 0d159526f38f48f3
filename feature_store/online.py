"""Online store: the interface the service calls, the shared record logic and the serving helper.

Two backends implement ``OnlineStore``: ``SQLiteStore`` (``sqlite:///path/to.db``, the embedded
default) and ``RedisStore`` (``redis://host:port/db``). ``open_store(url)`` picks one.

What the store keeps per user is the *state* of ``definitions`` (counts, last time, event and
category counts, last N items, seen items), not finished features: ``serve_features`` derives the
features from it with the same expressions as training, at the request time. ``apply_event`` updates
the state in one atomic step, so a later read sees the event and concurrent events never overwrite
each other.

Snapshots are loaded under a new version; readers switch to it in one atomic step, live events that
happened at or after the snapshot's cutoff are replayed onto it in that same step, and the previous
version is deleted afterwards.

>>> record = empty_record()
>>> apply_to_record(record, item_id="a", event="view", timestamp=5, category="x", price=2.0, last_n=2)
>>> apply_to_record(record, item_id="b", event="view", timestamp=7, category=None, price=None, last_n=2)
>>> apply_to_record(record, item_id="a", event="cart", timestamp=9, category="x", price=2.0, last_n=2)
>>> record["n_events"], record["n_items"], record["last_ts"], record["last_items"], record["events"]
(3, 2, 9, ['b', 'a'], {'view': 2, 'cart': 1})
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import numpy as np
import polars as pl
import pyarrow as pa

from feature_store import compute as C
from feature_store import definitions as D
from feature_store.offline import Snapshot
from recsys.data import schema as S

_MAP = pa.list_(pa.struct([(D.MAP_KEY, pa.string()), (D.MAP_COUNT, pa.int64())]))
ARROW_STATE_SCHEMA = pa.schema(
    [
        (S.USER_ID, pa.string()),
        (D.N_EVENTS, pa.int64()),
        (D.N_ITEMS, pa.int64()),
        (D.LAST_TS, pa.int64()),
        (D.PRICE_SUM, pa.float64()),
        (D.PRICE_N, pa.int64()),
        (D.EVENTS, _MAP),
        (D.CATEGORIES, _MAP),
        (D.LAST_ITEMS, pa.list_(pa.string())),
        (D.SEEN, pa.list_(pa.string())),
    ]
)
RECORD_FIELDS = [name for name in D.STATE_SCHEMA if name != S.USER_ID]
SEP = "\x1f"  # joins seen item ids in both backends, so ids must not contain it


def check_event(user_id: str, item_id: str, event: str | None) -> None:
    """Reject ids the stores cannot keep faithfully, naming the field."""
    for name, value in ((S.USER_ID, user_id), (S.ITEM_ID, item_id), (S.EVENT, event)):
        if value is not None and (not isinstance(value, str) or not value or SEP in value):
            raise ValueError(f"apply_event: {name}={value!r} must be a non-empty string without \\x1f")


@runtime_checkable
class OnlineStore(Protocol):
    """Key-value feature store for serving."""

    url: str

    def get_user(self, user_ids: Sequence[str]) -> pa.Table:
        """User states (``ARROW_STATE_SCHEMA``), one row per id in order; unknown users are empty."""
        ...

    def get_records(self, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The same states as plain records (maps as dicts): the cheapest form for ``ServingFeatures``."""
        ...

    def get_items(self, item_ids: Sequence[str]) -> pa.Table:
        """Online item rows (``online_items``) in order; unknown items are all-null but the id."""
        ...

    def put(self, *, users: pl.DataFrame | None = None, items: pl.DataFrame | None = None) -> None:
        """Upsert user states and/or online item rows into the current version."""
        ...

    def apply_event(self, user_id: str, item_id: str, event: str | None, timestamp: int) -> None:
        """Add one event to the user's state, atomically; visible to every later read."""
        ...

    def load(self, snapshot: Snapshot) -> int:
        """Copy ``snapshot`` under a new version, switch readers to it atomically; return the version."""
        ...

    def version(self) -> int | None: ...

    def close(self) -> None: ...


def open_store(url: str, **options: Any) -> OnlineStore:
    """The store at ``url``: ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``redis://host:port/db``.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "f.db"
    >>> store = open_store(f"sqlite:///{path}")
    >>> store.apply_event("u1", "a", "view", 10)
    >>> store.get_user(["u1"]).column("n_events").to_pylist()
    [1]
    >>> store.close()
    """
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from feature_store.sqlite_store import SQLiteStore

        return SQLiteStore(url, **options)
    if scheme in ("redis", "rediss", "unix"):
        from feature_store.redis_store import RedisStore

        return RedisStore(url, **options)
    raise ValueError(
        f"unsupported online store URL {url!r}: use sqlite:///path/to.db or redis://host:port/db"
    )


def sqlite_path(url: str) -> Path:
    """``sqlite:///x.db`` -> ``x.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"bad SQLite URL {url!r}: expected sqlite:///path/to.db")
    return Path(url[len(prefix) :])


# --- the record: one user's state as plain Python values ---------------------------------------


def empty_record() -> dict[str, Any]:
    return {
        D.N_EVENTS: 0,
        D.N_ITEMS: 0,
        D.LAST_TS: None,
        D.PRICE_SUM: 0.0,
        D.PRICE_N: 0,
        D.EVENTS: {},
        D.CATEGORIES: {},
        D.LAST_ITEMS: [],
        D.SEEN: [],
    }


def apply_to_record(
    record: dict[str, Any],
    *,
    item_id: str,
    event: str | None,
    timestamp: int,
    category: str | None,
    price: float | None,
    last_n: int,
) -> None:
    """The incremental form of ``compute.user_states``: add one event to ``record`` in place.

    Events are appended in arrival order; the last-items list is exact when they arrive in time
    order, as live events do.
    """
    record[D.N_EVENTS] += 1
    if item_id not in record[D.SEEN]:
        record[D.SEEN].append(item_id)
        record[D.N_ITEMS] += 1
    last = record[D.LAST_TS]
    record[D.LAST_TS] = timestamp if last is None else max(int(last), timestamp)
    if event is not None:
        record[D.EVENTS][event] = record[D.EVENTS].get(event, 0) + 1
    if category is not None:
        record[D.CATEGORIES][category] = record[D.CATEGORIES].get(category, 0) + 1
    if price is not None and not np.isnan(price):
        record[D.PRICE_SUM] += float(price)
        record[D.PRICE_N] += 1
    items = record[D.LAST_ITEMS]
    items.append(item_id)
    del items[: max(0, len(items) - last_n)]


def records_to_arrow(user_ids: Sequence[str], records: Sequence[dict[str, Any] | None]) -> pa.Table:
    """Records (``None`` for unknown users) as a table of ``ARROW_STATE_SCHEMA``."""
    empty = empty_record()
    columns: dict[str, list[Any]] = {S.USER_ID: list(user_ids)}
    for name in RECORD_FIELDS:
        values = [(r if r is not None else empty)[name] for r in records]
        if name in (D.EVENTS, D.CATEGORIES):
            values = [[{D.MAP_KEY: k, D.MAP_COUNT: v[k]} for k in sorted(v)] for v in values]
        columns[name] = values
    return pa.Table.from_pydict(columns, schema=ARROW_STATE_SCHEMA)


def frame_to_records(states: pl.DataFrame) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of a state frame (``STATE_SCHEMA`` columns) as ids and records."""
    bad = states.filter(pl.col(D.SEEN).list.eval(pl.element().str.contains(SEP, literal=True)).list.any())
    if bad.height:
        raise ValueError(f"user {bad.item(0, S.USER_ID)!r}: an item id contains the reserved character \\x1f")
    ids = states.get_column(S.USER_ID).to_list()
    records: list[dict[str, Any]] = []
    for row in states.select(RECORD_FIELDS).iter_rows(named=True):
        for name in (D.EVENTS, D.CATEGORIES):
            row[name] = {entry[D.MAP_KEY]: int(entry[D.MAP_COUNT]) for entry in row[name] or []}
        row[D.LAST_ITEMS] = list(row[D.LAST_ITEMS] or [])
        row[D.SEEN] = list(row[D.SEEN] or [])
        records.append(row)
    return ids, records


def online_items(snapshot: Snapshot) -> pl.DataFrame:
    """What the service holds in memory and the store serves per item: features + raw attributes.

    Rows follow the items table (row ``i`` is ``item_idx == i``, the embedding row).
    """
    attrs = snapshot.item_attributes().select(S.ITEM_ID, S.CATEGORY, S.BRAND, S.PRICE)
    return snapshot.item_features().join(attrs, on=S.ITEM_ID, how="left", maintain_order="left")


def serve_features(
    store: OnlineStore,
    user_id: str,
    item_rows: np.ndarray,
    *,
    items: pl.DataFrame,
    now: int,
    config: D.FeatureConfig,
    embeddings: np.ndarray | None = None,
) -> pl.DataFrame:
    """Features of one user × candidate items at request time ``now``, as training computes them.

    ``items`` is ``online_items(snapshot)`` held in memory; ``item_rows`` index it (= item_idx).
    Returns one row per candidate: user features, item features, user×item features.
    """
    states = pl.from_arrow(store.get_user([user_id]))
    assert isinstance(states, pl.DataFrame)
    return features_for(states, item_rows, items=items, now=now, config=config, embeddings=embeddings)


def features_for(
    states: pl.DataFrame,
    item_rows: np.ndarray,
    *,
    items: pl.DataFrame,
    now: int,
    config: D.FeatureConfig,
    embeddings: np.ndarray | None = None,
) -> pl.DataFrame:
    """``serve_features`` once the single user's state row is in hand."""
    if states.height != 1:
        raise ValueError(f"expected the state of one user, got {states.height} rows")
    states = states.with_columns(pl.lit(now, dtype=pl.Int64).alias(D.NOW))
    user = C.user_features(states, config=config).drop(S.USER_ID, D.NOW)
    candidates = items[np.asarray(item_rows, dtype=np.int64)]
    pairs = candidates.select(pl.lit(0, dtype=pl.Int64).alias(C.KEY), pl.col(S.ITEM_ID))
    # user×item features read only the candidates and the user's last items: join against those
    last = items.filter(pl.col(S.ITEM_ID).is_in(states.get_column(D.LAST_ITEMS).explode().drop_nulls()))
    pair = C.pair_features(
        states,
        pairs,
        pl.concat([candidates, last]).unique(S.ITEM_ID, keep="first"),
        config=config,
        embeddings=embeddings,
    )
    item_names = [f.name for f in D.features_of(config, "item")]
    return pl.concat(
        [
            candidates.select(S.ITEM_ID),
            user.select(pl.all().gather(np.zeros(candidates.height, dtype=np.int64))),
            candidates.select(item_names),
            pair,
        ],
        how="horizontal",
    )
