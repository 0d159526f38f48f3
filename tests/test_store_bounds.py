"""A user's stored state is bounded in both online stores: the last-N items, and at most ``max_seen``
seen items (``$RECSYS_MAX_SEEN``, default 10,000), the first seen dropped first, whether the state
grows by live events or is written whole (``put``; a snapshot load cuts its states the same way), and
when a publish replays the event log onto a new version."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from test_feature_store_offline import CONFIG, random_world

from feature_store import definitions as D
from feature_store import open_store, write_snapshot
from feature_store.record import DEFAULT_MAX_SEEN, ENV_MAX_SEEN, empty_record, records_to_arrow


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online.db'}"
    return str(request.getfixturevalue("redis_url"))


def test_default_seen_cap() -> None:
    assert DEFAULT_MAX_SEEN == 10_000


def test_20000_events_for_one_user_leave_at_most_the_cap(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 500  # RECSYS_MAX_SEEN; small so that 20,000 events stay quick
    monkeypatch.setenv(ENV_MAX_SEEN, str(cap))
    store = open_store(store_url)
    try:
        for k in range(20_000):
            store.apply_event("heavy", f"i{k}", "view", 1_000 + k)
        (record,) = store.get_records(["heavy"])
    finally:
        store.close()
    assert record[D.N_EVENTS] == 20_000
    assert record[D.SEEN] == [f"i{k}" for k in range(20_000 - cap, 20_000)]  # the oldest went first
    assert len(record[D.LAST_ITEMS]) == D.FeatureConfig().last_n


def test_the_cap_is_a_store_option_too(store_url: str) -> None:
    store = open_store(store_url, max_seen=3)
    try:
        for item in ["a", "b", "a", "c", "d", "b"]:  # a repeat keeps its place (first seen)
            store.apply_event("u", item, None, 10)
        (record,) = store.get_records(["u"])
    finally:
        store.close()
    assert record[D.SEEN] == ["b", "c", "d"]


def test_states_written_whole_are_bounded_too(store_url: str) -> None:
    """A snapshot's states (``load``) and ``put`` go through the same cut as live events."""
    record = empty_record()
    record[D.SEEN] = [f"i{k}" for k in range(50)]
    frame = pl.DataFrame(pl.from_arrow(records_to_arrow(["u"], [record])))
    store = open_store(store_url, max_seen=10)
    try:
        store.put(users=frame)
        (stored,) = store.get_records(["u"])
    finally:
        store.close()
    assert stored[D.SEEN] == [f"i{k}" for k in range(40, 50)]


def test_a_load_replays_the_log_under_the_cap(store_url: str, tmp_path: Path) -> None:
    """The replay of a load (in chunks, in timestamp order) cuts the seen list as live events do: the
    log keeps every event, so a replay without the cap would bring back all of them."""
    items, interactions, _ = random_world(3)
    store = open_store(store_url, max_seen=3, chunk=2)
    try:
        for k, item in enumerate(["a", "b", "c", "d", "e"]):
            store.apply_event("cap", item, None, 100 + k)
        snapshot = write_snapshot(
            tmp_path / "snap", interactions=interactions, items=items, cutoff=50, config=CONFIG
        )
        store.load(snapshot)
        (record,) = store.get_records(["cap"])
    finally:
        store.close()
    assert record[D.N_EVENTS] == 5
    assert record[D.SEEN] == ["c", "d", "e"]


def test_a_bad_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MAX_SEEN, "lots")
    with pytest.raises(ValueError, match=ENV_MAX_SEEN):
        open_store(f"sqlite:///{tmp_path / 'online.db'}")
