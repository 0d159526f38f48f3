"""Online store: the interface the service calls, and ``open_store`` to pick a backend.

Two backends implement ``OnlineStore``: ``SQLiteStore`` (``sqlite:///path/to.db``, the embedded
default) and ``RedisStore`` (``redis://host:port/db``). What both keep, and how it is updated, is in
``record``; the request-time features derived from it are in ``serving``.

What the store keeps per user is the *state* of ``definitions`` (counts, last time, event and
category counts, last N items, seen items), not finished features: ``serving.serve_features`` derives
the features from it with the same expressions as training, at the request time. ``apply_event``
updates the state in one atomic step, so a later read sees the event and concurrent events never
overwrite each other.

Versions. A snapshot is loaded under a *version* of its own, named by the caller (a published
bundle names its store version after itself): the load changes nothing that readers of other
versions see, and readers name the version they read, so the service, which reads the version of
the bundle it serves, switches model and features together when the registry's pointer moves
(``recsys.pipeline.publish``). ``version=None`` reads the newest version, for a store used on its
own. ``retain`` drops the versions no longer needed.

The event log. ``apply_event`` appends every event to a log ordered by arrival (a sequence number
that only grows) and applies it to every live version in the same atomic step. A load copies the
snapshot, then in one atomic step replays every logged event above the snapshot's
``events_through`` (whatever its timestamp: a late or backfilled event is kept) and makes the version
live, so each event reaches the new version exactly once, by the replay or live. The log is pruned
(``prune_events``) only through the ``events_through`` of a published snapshot, whose training data
contains those events; a snapshot older than the pruned log is refused (``record.StaleSnapshot``).
``events_after`` reads the log, for a job that adds it to the training data.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlparse

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from feature_store.offline import Snapshot


@runtime_checkable
class OnlineStore(Protocol):
    """Key-value feature store for serving.

    A read or an event that the store cannot answer in time (a stalled or unreachable server)
    raises ``record.StoreUnavailable`` naming the store, after the backend's own bounded retries.
    """

    url: str

    def get_user(self, user_ids: Sequence[str], *, version: str | None = None) -> pa.Table:
        """User states (``record.ARROW_STATE_SCHEMA``), one row per id in order; unknown users are empty.

        Every read takes ``version`` (default: the newest) and raises ``record.UnknownVersion`` when
        the store holds no live version of that name.
        """
        ...

    def get_records(self, user_ids: Sequence[str], *, version: str | None = None) -> list[dict[str, Any]]:
        """The same states as plain records (maps as dicts): the cheapest form for ``ServingFeatures``."""
        ...

    def get_items(self, item_ids: Sequence[str], *, version: str | None = None) -> pa.Table:
        """Online item rows (``record.online_items``) in order; unknown items are all-null but the id."""
        ...

    def put(
        self,
        *,
        users: pl.DataFrame | None = None,
        items: pl.DataFrame | None = None,
        version: str | None = None,
    ) -> None:
        """Upsert user states and/or online item rows into a version (default: the newest)."""
        ...

    def apply_event(self, user_id: str, item_id: str, event: str | None, timestamp: int) -> int:
        """Log one event and add it to the user's state in every live version, atomically; visible to
        every later read. Returns its sequence number in the log."""
        ...

    def load(self, snapshot: Snapshot, *, name: str | None = None) -> str:
        """Copy ``snapshot`` under the version ``name`` (default: a new number), replay the log above
        its ``events_through`` and make it live, atomically; return the name.

        Readers of other versions see no change; a live version of the same name is replaced in the
        same step. Raises ``record.StaleSnapshot`` when the log was pruned past the snapshot.
        """
        ...

    def version(self) -> str | None:
        """The newest live version, or ``None``."""
        ...

    def versions(self) -> list[str]:
        """Every live version, oldest first."""
        ...

    def retain(self, names: Collection[str]) -> list[str]:
        """Drop every version not in ``names``, and what an unfinished load left; return the dropped
        live versions. Not while another process loads into this store (publishing takes a lock)."""
        ...

    def events_after(self, seq: int) -> tuple[pa.Table, int]:
        """The logged events above sequence number ``seq`` (``record.EVENT_LOG_SCHEMA``, in arrival
        order) and the last sequence number returned (``seq`` when there is none)."""
        ...

    def prune_events(self, *, through: int) -> None:
        """Delete the logged events up to ``through``: a published snapshot's training data holds them."""
        ...

    def close(self) -> None: ...


def open_store(url: str, **options: Any) -> OnlineStore:
    """The store at ``url``: ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``redis://host:port/db``.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "f.db"
    >>> store = open_store(f"sqlite:///{path}")
    >>> store.apply_event("u1", "a", "view", 10)
    1
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
