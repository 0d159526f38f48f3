"""What an online store keeps, shared by both backends: one user's state as a record, and the item rows.

A *record* is a user's state (``definitions.STATE_SCHEMA`` less the id) as plain Python values: the
form the service reads per request, and the one ``apply_to_record`` updates in place. The backends
(``sqlite_store``, ``redis_store``) encode it their own way; this module holds what they must agree
on: the empty record, the incremental update, the conversions to and from Arrow and Polars, the
reserved separator ``SEP`` and the id check that guards it, the bound on the seen list
(``seen_cap``), the errors a store raises (``StoreUnavailable``, ``UnknownVersion``,
``StaleSnapshot``), and the event log's table and replay order.

>>> record = empty_record()
>>> apply_to_record(record, item_id="a", event="view", timestamp=5, category="x", price=2.0, last_n=2)
>>> apply_to_record(record, item_id="b", event="view", timestamp=7, category=None, price=None, last_n=2)
>>> apply_to_record(record, item_id="a", event="cart", timestamp=9, category="x", price=2.0, last_n=2)
>>> record["n_events"], record["n_items"], record["last_ts"], record["last_items"], record["events"]
(3, 2, 9, ['b', 'a'], {'view': 2, 'cart': 1})
>>> history(record)
['b', 'a']
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from feature_store import definitions as D
from recsys.data import schema as S

if TYPE_CHECKING:
    from feature_store.offline import Snapshot

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
SEP = "\x1f"  # joins seen item ids in both backends: a control character, so the id rule refuses it
# A user's seen list keeps at most this many items (the oldest first seen go first), so one busy or
# abusive user id cannot grow its record, and every read of it, without bound.
DEFAULT_MAX_SEEN = 10_000
ENV_MAX_SEEN = "RECSYS_MAX_SEEN"


EVENT_LOG_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        (S.USER_ID, pa.string()),
        (S.ITEM_ID, pa.string()),
        (S.EVENT, pa.string()),
        (S.TIMESTAMP, pa.int64()),
    ]
)
LogEvent = tuple[int, str, str, str | None, int]  # (seq, user_id, item_id, event, timestamp)


class StoreUnavailable(Exception):
    """The store did not answer in time, or could not be reached; the message names the store.

    The service answers it with a 503 (and ``/readyz`` says it), never a 500 or a hang.
    """


def seen_cap(value: int | None = None, *, env: Mapping[str, str] | None = None) -> int:
    """The seen cap: ``value`` when given, else ``$RECSYS_MAX_SEEN``, else ``DEFAULT_MAX_SEEN``.

    >>> seen_cap(env={}), seen_cap(env={"RECSYS_MAX_SEEN": "50"}), seen_cap(7, env={"RECSYS_MAX_SEEN": "50"})
    (10000, 50, 7)
    """
    raw = str(value) if value is not None else (os.environ if env is None else env).get(ENV_MAX_SEEN, "")
    if not raw:
        return DEFAULT_MAX_SEEN
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV_MAX_SEEN} (max_seen) must be a whole number >= 1, got {raw!r}")
    return int(raw)


class UnknownVersion(StoreUnavailable):
    """The store holds no live version of that name (never loaded, or dropped since): a 503 too."""


class StaleSnapshot(ValueError):
    """A snapshot older than the event log: events it does not contain were already pruned."""


def check_fresh(snapshot: Snapshot, *, pruned_through: int, store: str) -> None:
    """Refuse ``snapshot`` when the log was pruned past what it contains: loading it would lose events.

    >>> from types import SimpleNamespace
    >>> check_fresh(SimpleNamespace(events_through=None, path="f"), pruned_through=0, store="s")
    >>> check_fresh(SimpleNamespace(events_through=None, path="f"), pruned_through=7, store="s")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    feature_store.record.StaleSnapshot: s: cannot load the snapshot f: the event log was pruned ...
    """
    through = snapshot.events_through or 0
    if pruned_through > through:
        contains = f"contains it only through event {through}" if through else "contains none of the log"
        raise StaleSnapshot(
            f"{store}: cannot load the snapshot {snapshot.path}: the event log was pruned through event "
            f"{pruned_through} (events a published model was trained on), but the snapshot {contains}; "
            f"train on data that includes the log through event {pruned_through} or later"
        )


def replay_order(events: Sequence[LogEvent]) -> list[LogEvent]:
    """Logged events in the order a load applies them: by timestamp, ties by arrival.

    The log is kept in arrival order, so a late event is never lost; where order matters (the
    last-N items) the replay puts it back in time order among the replayed events.

    >>> replay_order([(1, "u", "a", None, 9), (2, "u", "b", None, 3), (3, "u", "c", None, 3)])
    [(2, 'u', 'b', None, 3), (3, 'u', 'c', None, 3), (1, 'u', 'a', None, 9)]
    """
    return sorted(events, key=lambda e: (e[4], e[0]))


def log_table(events: Sequence[LogEvent]) -> pa.Table:
    """Logged events as a table of ``EVENT_LOG_SCHEMA``."""
    columns = list(zip(*events, strict=True)) if events else [()] * len(EVENT_LOG_SCHEMA)
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, EVENT_LOG_SCHEMA, strict=True)],
        schema=EVENT_LOG_SCHEMA,
    )


def check_event(user_id: str, item_id: str, event: str | None) -> None:
    """Reject ids the stores cannot keep faithfully, naming the field. The rule is the data
    contract's (``schema.id_problem``, as in ``serving.schemas.Id``): it refuses control characters,
    ``SEP`` among them."""
    for name, value in ((S.USER_ID, user_id), (S.ITEM_ID, item_id), (S.EVENT, event)):
        problem = S.id_problem(value) if isinstance(value, str) else "is not a string"
        if problem is not None and not (name == S.EVENT and value is None):
            raise ValueError(f"apply_event: {name}={value!r} {problem}")


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
    max_seen: int = DEFAULT_MAX_SEEN,
) -> None:
    """The incremental form of ``compute.user_states``: add one event to ``record`` in place.

    Events are appended in arrival order; the last-items list is exact when they arrive in time
    order, as live events do. The seen list keeps the ``max_seen`` items seen last for the first
    time; an item dropped from it that comes back counts as a new item in ``n_items``.
    """
    record[D.N_EVENTS] += 1
    seen = record[D.SEEN]
    if item_id not in seen:
        seen.append(item_id)
        record[D.N_ITEMS] += 1
        del seen[: max(0, len(seen) - max_seen)]
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


def history(record: dict[str, Any]) -> list[str]:
    """The user's items oldest first, as the recommender takes them: every item seen, with the most
    recent ones (the last-items list, each at its latest position) at the end.

    >>> history({"seen": ["a", "b", "c"], "last_items": ["c", "a", "c"]})
    ['b', 'a', 'c']
    """
    recent: list[str] = list(dict.fromkeys(reversed(record.get(D.LAST_ITEMS) or [])))[::-1]
    recent_set = set(recent)
    return [i for i in record.get(D.SEEN) or [] if i not in recent_set] + recent


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


def frame_to_records(
    states: pl.DataFrame, *, max_seen: int = DEFAULT_MAX_SEEN
) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of a state frame (``STATE_SCHEMA`` columns) as ids and records, each seen list cut to
    its last ``max_seen`` items."""
    bad = states.filter(pl.col(D.SEEN).list.eval(pl.element().str.contains(SEP, literal=True)).list.any())
    if bad.height:
        raise ValueError(f"user {bad.item(0, S.USER_ID)!r}: an item id contains the reserved character \\x1f")
    ids = states.get_column(S.USER_ID).to_list()
    records: list[dict[str, Any]] = []
    for row in states.select(RECORD_FIELDS).iter_rows(named=True):
        for name in (D.EVENTS, D.CATEGORIES):
            row[name] = {entry[D.MAP_KEY]: int(entry[D.MAP_COUNT]) for entry in row[name] or []}
        row[D.LAST_ITEMS] = list(row[D.LAST_ITEMS] or [])
        row[D.SEEN] = list(row[D.SEEN] or [])[-max_seen:]
        records.append(row)
    return ids, records


def online_items(snapshot: Snapshot) -> pl.DataFrame:
    """What the service holds in memory and the store serves per item: features + raw attributes.

    Rows follow the items table (row ``i`` is ``item_idx == i``, the embedding row).
    """
    attrs = snapshot.item_attributes().select(S.ITEM_ID, S.CATEGORY, S.BRAND, S.PRICE)
    return snapshot.item_features().join(attrs, on=S.ITEM_ID, how="left", maintain_order="left")
