"""Online store: the interface the service calls, and ``open_store`` to pick a backend.

Two backends implement ``OnlineStore``: ``SQLiteStore`` (``sqlite:///path/to.db``, the embedded
default) and ``RedisStore`` (``redis://host:port/db``). What both keep, and how it is updated, is in
``record``; the request-time features derived from it are in ``serving``.

What the store keeps per user is the *state* of ``definitions`` (counts, last time, event and
category counts, last N items, seen items), not finished features: ``serving.serve_features`` derives
the features from it with the same expressions as training, at the request time. ``apply_event``
updates the state in one atomic step, so a later read sees the event and concurrent events never
overwrite each other.

Snapshots are loaded under a new version; readers switch to it in one atomic step, live events that
happened at or after the snapshot's cutoff are replayed onto it in that same step, and the previous
version is deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def get_user(self, user_ids: Sequence[str]) -> pa.Table:
        """User states (``record.ARROW_STATE_SCHEMA``), one row per id in order; unknown users are empty."""
        ...

    def get_records(self, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The same states as plain records (maps as dicts): the cheapest form for ``ServingFeatures``."""
        ...

    def get_items(self, item_ids: Sequence[str]) -> pa.Table:
        """Online item rows (``record.online_items``) in order; unknown items are all-null but the id."""
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
