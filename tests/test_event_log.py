"""The online store's event log: an acknowledged event is kept until a published snapshot's training
data contains it (``events_through``), whatever its timestamp, against a real SQLite file and a real
redis-server."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from test_feature_store_offline import CONFIG, random_world
from test_feature_store_online import store  # noqa: F401 - fixture: SQLite and Redis

from feature_store import open_store, write_snapshot
from feature_store.compute import user_states
from feature_store.offline import Snapshot
from feature_store.online import OnlineStore
from feature_store.record import StaleSnapshot, UnknownVersion
from recsys.data import schema as S

USERS = [f"u{k}" for k in range(6)]


def snapshot(folder: Path, cutoff: int, interactions: pl.DataFrame, items: pl.DataFrame) -> Snapshot:
    return write_snapshot(folder, interactions=interactions, items=items, cutoff=cutoff, config=CONFIG)


def event_frame(events: list[dict[str, Any]], like: pl.DataFrame) -> pl.DataFrame:
    return pl.DataFrame(events).select(like.columns).cast(like.schema)  # type: ignore[arg-type]


def assert_state(got: dict[str, Any], truth: dict[str, Any]) -> None:
    """Counts, maps and the seen set exactly; ``last_items`` is left out (a late event is appended)."""
    for name in ("n_events", "n_items", "last_ts", "price_n", "events", "categories"):
        assert got[name] == truth[name], name
    assert math.isclose(got["price_sum"], truth["price_sum"], abs_tol=1e-6)
    assert set(got["seen"]) == set(truth["seen"])


def truth_of(user: str, interactions: pl.DataFrame, items: pl.DataFrame) -> dict[str, Any]:
    keys = pl.DataFrame({S.USER_ID: [user], "cutoff": [10**9]})
    return user_states(interactions, items, keys, config=CONFIG).to_dicts()[0]


def test_a_late_event_survives_every_later_snapshot(
    store: OnlineStore,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """An event accepted with a timestamp before the next snapshot's cutoff (late or backfilled), when
    that snapshot was built from files without the service's log, is still in the user's state after
    one load and after two."""
    items, interactions, _ = random_world(13)
    base = interactions.filter(pl.col(S.TIMESTAMP) < 50)
    store.load(snapshot(tmp_path / "s50", 50, base, items))
    late = {S.USER_ID: "u2", S.ITEM_ID: "i7", S.EVENT: "cart", S.TIMESTAMP: 30}
    store.apply_event("u2", "i7", "cart", 30)
    truth = truth_of("u2", pl.concat([base, event_frame([late], base)]), items)
    for cutoff in (60, 70):  # two publishes of snapshots built from the same files
        store.load(snapshot(tmp_path / f"s{cutoff}", cutoff, base, items))
        assert_state(store.get_user(["u2"]).to_pylist()[0], truth)


def log_frame(table: Any, like: pl.DataFrame) -> pl.DataFrame:
    """Logged events (``events_after``) as contract interactions."""
    frame = pl.DataFrame(pl.from_arrow(table))
    return frame.select(like.columns).cast(like.schema)  # type: ignore[arg-type]


def test_a_snapshot_that_contains_the_log_through_n_replays_only_the_rest(
    store: OnlineStore,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """What the nightly job does: read the log, train on it, publish a snapshot with
    ``events_through=N``. Events up to N are not counted twice, later ones are replayed, and pruning
    through N leaves only the later ones; a snapshot that holds less than the pruned log is refused."""
    items, interactions, _ = random_world(10)
    base = interactions.filter(pl.col(S.TIMESTAMP) < 50)
    store.load(snapshot(tmp_path / "s50", 50, base, items))
    early = [("u2", "i3", "view", 55), ("u2", "i5", None, 20), ("u4", "i1", "cart", 57)]  # one is late
    seqs = [store.apply_event(*e) for e in early]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    logged, through = store.events_after(0)
    assert through == seqs[-1] and logged.column("seq").to_pylist() == seqs
    assert logged.column("event").to_pylist() == ["view", None, "cart"]
    later = ("u2", "i8", "cart", 70)
    assert store.apply_event(*later) > through
    trained_on = pl.concat([base, log_frame(logged, base)])
    nightly = write_snapshot(
        tmp_path / "nightly",
        interactions=trained_on,
        items=items,
        cutoff=60,
        config=CONFIG,
        events_through=through,
    )
    assert Snapshot.open(nightly.path).events_through == through
    everything = pl.concat([trained_on, event_frame([_event(*later)], base)])
    for _ in range(2):  # loading it again counts nothing twice either
        store.load(nightly)
        for user in ("u2", "u4"):
            assert_state(store.get_user([user]).to_pylist()[0], truth_of(user, everything, items))
    store.prune_events(through=through)
    rest, last = store.events_after(0)
    assert rest.column("seq").to_pylist() == [last] and last > through
    assert store.events_after(last)[0].num_rows == 0 and store.events_after(last)[1] == last
    with pytest.raises(StaleSnapshot, match=f"pruned through event {through} .* contains none of the log"):
        store.load(snapshot(tmp_path / "files", 60, base, items))  # recsys train's files hold no log
    assert_state(store.get_user(["u2"]).to_pylist()[0], truth_of("u2", everything, items))


def test_a_load_changes_nothing_readers_of_other_versions_see_and_events_reach_every_live_version(
    store: OnlineStore,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    items, interactions, _ = random_world(14)
    base = interactions.filter(pl.col(S.TIMESTAMP) < 50)
    store.load(snapshot(tmp_path / "a", 50, base, items), name="a")
    store.apply_event("u1", "i2", "view", 60)
    before = store.get_user(USERS, version="a").to_pylist()
    store.load(snapshot(tmp_path / "b", 80, interactions.filter(pl.col(S.TIMESTAMP) < 80), items), name="b")
    assert store.get_user(USERS, version="a").to_pylist() == before  # loading b changed nothing in a
    assert store.version() == "b" and store.versions()[-2:] == ["a", "b"]
    store.apply_event("u1", "i9", "cart", 90)  # accepted while both are live: reaches both
    a, b = (store.get_records(["u1"], version=v)[0] for v in ("a", "b"))
    assert a["n_events"] == before[1]["n_events"] + 1 and a["last_items"][-1] == "i9"
    truth_b = truth_of(
        "u1",
        pl.concat(
            [
                interactions.filter(pl.col(S.TIMESTAMP) < 80),
                event_frame([_event("u1", "i2", "view", 60), _event("u1", "i9", "cart", 90)], base),
            ]
        ),
        items,
    )
    assert b["n_events"] == truth_b["n_events"] and set(b["seen"]) == set(truth_b["seen"])
    with pytest.raises(UnknownVersion, match="has no version 'nope'"):
        store.get_records(["u1"], version="nope")
    assert store.retain(["b"]) == ["initial", "a"]  # oldest first; "initial" holds events before any load
    assert store.versions() == ["b"]
    with pytest.raises(UnknownVersion, match="has no version 'a'"):
        store.get_user(["u1"], version="a")
    assert store.get_records(["u1"], version="b")[0] == b


def _event(user: str, item: str, event: str | None, ts: int) -> dict[str, Any]:
    return {S.USER_ID: user, S.ITEM_ID: item, S.EVENT: event, S.TIMESTAMP: ts}


@pytest.fixture
def small_chunks(store: OnlineStore) -> Iterator[OnlineStore]:  # noqa: F811 - the fixture
    """The same store, opened so that its loads copy and replay a few rows per transaction (script),
    so they interleave with events."""
    opened = open_store(store.url, chunk=3)
    yield opened
    opened.close()


def test_events_accepted_during_loads_reach_every_version_exactly_once(
    small_chunks: OnlineStore, tmp_path: Path
) -> None:
    items, interactions, _ = random_world(15)
    snap = snapshot(tmp_path / "s", 50, interactions.filter(pl.col(S.TIMESTAMP) < 50), items)
    small_chunks.load(snap, name="first")
    for k in range(10):  # a log to replay, several chunks long
        small_chunks.apply_event("hot", f"i{k % 10}", "view", 100 + k)
    stop = threading.Event()
    sent: list[int] = []

    def write() -> None:
        while not stop.is_set():
            sent.append(small_chunks.apply_event("hot", f"i{len(sent) % 10}", "cart", 200 + len(sent)))

    writer = threading.Thread(target=write)
    writer.start()
    names = [small_chunks.load(snap, name=f"v{k}") for k in range(4)]
    stop.set()
    writer.join()
    assert sent, "no event ran during the loads"
    total = 10 + len(sent)
    for name in ["first", *names]:
        (record,) = small_chunks.get_records(["hot"], version=name)
        assert record["n_events"] == total, name
        assert record["events"] == {"view": 10, "cart": len(sent)}, name
