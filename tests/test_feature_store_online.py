"""Online stores against a real SQLite file and a real redis-server: consistency with the offline
features, live events, concurrency, atomic snapshot switches."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from test_feature_store_offline import CONFIG, random_world

from feature_store import (
    FeatureConfig,
    build_features,
    online_items,
    open_store,
    serve_features,
    write_snapshot,
)
from feature_store.offline import Snapshot
from feature_store.online import OnlineStore
from feature_store.record import apply_to_record, empty_record
from feature_store.redis_store import RedisStore
from feature_store.sqlite_store import SQLiteStore
from recsys.data import schema as S

USERS = [f"u{k}" for k in range(7)]  # u6 never acts


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    url = (
        f"sqlite:///{tmp_path / 'online.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("redis_url")
    )
    opened = open_store(url)
    yield opened
    opened.close()


def snapshot(tmp_path: Path, cutoff: int, interactions: pl.DataFrame, items: pl.DataFrame) -> Snapshot:
    return write_snapshot(
        tmp_path / f"cutoff-{cutoff}", interactions=interactions, items=items, cutoff=cutoff, config=CONFIG
    )


def assert_frames_match(online: pl.DataFrame, offline: pl.DataFrame, columns: list[str]) -> None:
    """Integers and strings exactly, floats within 1e-6 (NaN matches NaN)."""
    for name in columns:
        a, b = online.get_column(name), offline.get_column(name)
        assert a.dtype == b.dtype, name
        if a.dtype == pl.Float64:
            x, y = a.to_numpy(), b.to_numpy()
            assert np.array_equal(np.isnan(x), np.isnan(y)), name
            np.testing.assert_allclose(x[~np.isnan(x)], y[~np.isnan(y)], rtol=0, atol=1e-6, err_msg=name)
        else:
            assert a.to_list() == b.to_list(), name


def offline_rows(cutoff: int, items: pl.DataFrame) -> pl.DataFrame:
    ids = items.get_column(S.ITEM_ID).to_list()
    return pl.DataFrame(
        {
            S.USER_ID: [u for u in USERS for _ in ids],
            S.ITEM_ID: ids * len(USERS),
            "cutoff": [cutoff] * (len(USERS) * len(ids)),
        }
    )


def online_rows(store: OnlineStore, now: int, items_mem: pl.DataFrame, emb: np.ndarray) -> pl.DataFrame:
    rows = np.arange(items_mem.height)
    return pl.concat(
        [
            serve_features(store, u, rows, items=items_mem, now=now, config=CONFIG, embeddings=emb)
            for u in USERS
        ]
    )


def test_online_features_equal_offline_features_before_and_after_live_events(
    store: OnlineStore, tmp_path: Path
) -> None:
    items, interactions, emb = random_world(7)
    t0, t1 = 60, 85
    snap = snapshot(tmp_path, t0, interactions, items)
    store.load(snap)
    items_mem = online_items(snap)
    names = [
        c
        for c in build_features(
            offline_rows(t0, items).head(1), interactions=interactions, items=items, config=CONFIG
        ).columns
        if c not in ("user_id", "cutoff")
    ]

    # 1) straight from the snapshot: every feature, at the snapshot's cutoff
    offline = build_features(
        offline_rows(t0, items), interactions=interactions, items=items, config=CONFIG, embeddings=emb
    )
    assert_frames_match(online_rows(store, t0, items_mem, emb), offline, names)

    # 2) replay the events of [t0, t1) live, in time order; users and pairs now match the offline
    # features as of t1, items stay as of the snapshot
    live = interactions.with_row_index("_r").filter(pl.col(S.TIMESTAMP).is_between(t0, t1, closed="left"))
    assert live.height > 10
    for e in live.sort(S.TIMESTAMP, "_r").iter_rows(named=True):
        store.apply_event(e[S.USER_ID], e[S.ITEM_ID], e[S.EVENT], e[S.TIMESTAMP])
    later = build_features(
        offline_rows(t1, items), interactions=interactions, items=items, config=CONFIG, embeddings=emb
    )
    served = online_rows(store, t1, items_mem, emb)
    moving = [n for n in names if n.startswith(("user_", "ui_"))]
    assert_frames_match(served, later, moving)
    assert_frames_match(served, offline, [n for n in names if n.startswith("item_")])
    # the store's items equal the in-memory items
    got = pl.from_arrow(store.get_items(items_mem.get_column(S.ITEM_ID).to_list()))
    assert isinstance(got, pl.DataFrame)
    assert_frames_match(got.cast(items_mem.schema), items_mem, items_mem.columns)  # type: ignore[arg-type]


def test_a_served_call_sees_an_event_immediately(store: OnlineStore, tmp_path: Path) -> None:
    items, interactions, _ = random_world(8)
    store.load(snapshot(tmp_path, 50, interactions, items))
    before = store.get_user(["u1"]).to_pylist()[0]
    store.apply_event("u1", "i4", "cart", 10_000)
    after = store.get_user(["u1"]).to_pylist()[0]
    assert after["n_events"] == before["n_events"] + 1
    assert after["last_ts"] == 10_000
    assert after["last_items"][-1] == "i4"
    assert len(after["last_items"]) == min(CONFIG.last_n, before["n_events"] + 1)
    assert "i4" in after["seen"]
    counts = {e["key"]: e["count"] for e in after["events"]}
    assert counts.get("cart", 0) == 1 + {e["key"]: e["count"] for e in before["events"]}.get("cart", 0)
    # unknown users read as empty, and a first event creates them
    assert store.get_user(["ghost"]).to_pylist()[0]["n_events"] == 0
    store.apply_event("ghost", "i0", None, 5)
    ghost = store.get_user(["ghost", "u1"]).to_pylist()
    assert [g["n_events"] for g in ghost] == [1, after["n_events"]]
    assert ghost[0]["categories"] == [{"key": "c0", "count": 1}]


def test_concurrent_events_for_one_user_lose_no_update(store: OnlineStore) -> None:
    threads, per_thread = 8, 40

    def work(t: int) -> None:
        for k in range(per_thread):
            store.apply_event("hot", f"t{t}-{k}", "view" if k % 2 else "cart", 1000 + k)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    state = store.get_user(["hot"]).to_pylist()[0]
    total = threads * per_thread
    assert state["n_events"] == total
    assert state["n_items"] == total
    assert len(set(state["seen"])) == total
    assert {e["key"]: e["count"] for e in state["events"]} == {"cart": total // 2, "view": total // 2}
    assert state["last_ts"] == 1000 + per_thread - 1
    assert len(state["last_items"]) == FeatureConfig().last_n  # no snapshot loaded: the default N


def test_sqlite_events_from_several_processes_lose_no_update(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'online.db'}"
    SQLiteStore(url).close()
    code = (
        "import sys; from feature_store.sqlite_store import SQLiteStore; s = SQLiteStore(sys.argv[1]);"
        "[s.apply_event('hot', f'{sys.argv[2]}-{k}', 'view', k) for k in range(60)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, url, f"p{p}"]) for p in range(2)]
    store = SQLiteStore(url)
    for k in range(60):
        store.apply_event("hot", f"main-{k}", "view", k)
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    state = store.get_user(["hot"]).to_pylist()[0]
    assert state["n_events"] == state["n_items"] == 180


def test_the_newest_version_switches_atomically_and_retain_drops_the_rest(
    store: OnlineStore, tmp_path: Path
) -> None:
    """Readers that name no version read the newest: a load switches them in one step, never a mix;
    ``retain`` then drops every other version's tables or keys."""
    items, interactions, _ = random_world(9)
    snaps = [snapshot(tmp_path, c, interactions, items) for c in (30, 90)]
    expected = []
    for snap in snaps:
        counts = dict(snap.user_states().select(S.USER_ID, "n_events").iter_rows())
        expected.append(tuple(counts.get(u, 0) for u in USERS))
    assert expected[0] != expected[1]
    store.load(snaps[0])
    seen: list[tuple[int, ...]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(tuple(store.get_user(USERS).column("n_events").to_pylist()))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    while not seen:  # make sure the readers are running before the switches start
        time.sleep(0.001)
    versions = [store.load(snaps[k % 2]) for k in range(1, 7)]
    stop.set()
    for r in readers:
        r.join()
    assert len(set(versions)) == 6 and store.versions()[-6:] == versions
    assert seen and set(seen) <= set(expected), "a reader saw a mix of two snapshots"
    assert store.version() == versions[-1]
    before = store.versions()
    assert store.retain([versions[-1]]) == before[:-1]
    assert store.versions() == [versions[-1]]
    if isinstance(store, SQLiteStore):
        assert store.tables() == [f"items_v{versions[-1]}", f"users_v{versions[-1]}"]
    else:
        assert isinstance(store, RedisStore)
        live = f"fs:{versions[-1]}:"
        assert [k for k in store.key_names() if k.split(":")[1].isdigit() and not k.startswith(live)] == []


def test_bad_urls_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported online store URL 'postgres://x'"):
        open_store("postgres://x")
    with pytest.raises(ValueError, match="bad SQLite URL"):
        open_store("sqlite:///")


def test_serving_a_few_candidates_equals_the_offline_rows(store: OnlineStore, tmp_path: Path) -> None:
    items, interactions, emb = random_world(11)
    snap = snapshot(tmp_path, 70, interactions, items)
    store.load(snap)
    items_mem = online_items(snap)
    rng = np.random.default_rng(0)
    for user in USERS:
        rows = rng.choice(items_mem.height, size=3, replace=False)
        served = serve_features(store, user, rows, items=items_mem, now=70, config=CONFIG, embeddings=emb)
        wanted = pl.DataFrame(
            {S.USER_ID: [user] * 3, S.ITEM_ID: items_mem[rows].get_column(S.ITEM_ID), "cutoff": [70] * 3}
        )
        offline = build_features(
            wanted, interactions=interactions, items=items, config=CONFIG, embeddings=emb
        )
        assert_frames_match(served, offline, [c for c in served.columns])


def test_ids_the_store_cannot_keep_are_refused(store: OnlineStore) -> None:
    with pytest.raises(ValueError, match="item_id='a\\\\x1fb'"):
        store.apply_event("u", "a\x1fb", "view", 1)
    with pytest.raises(ValueError, match="user_id=''"):
        store.apply_event("", "a", "view", 1)
    assert store.get_user(["u"]).column("n_events").to_pylist() == [0]


def test_the_numpy_serving_path_equals_the_definitions(store: OnlineStore, tmp_path: Path) -> None:
    from feature_store.serving import ServingFeatures, features_for

    items, interactions, emb = random_world(12)
    snap = snapshot(tmp_path, 50, interactions, items)
    store.load(snap)
    for e in interactions.filter(pl.col(S.TIMESTAMP).is_between(50, 70)).iter_rows(named=True):
        store.apply_event(e[S.USER_ID], e[S.ITEM_ID], e[S.EVENT], e[S.TIMESTAMP])
    items_mem = online_items(snap)
    rows = np.random.default_rng(1).permutation(items_mem.height)[:7]
    for embeddings in (emb, None):
        fast = ServingFeatures(items_mem, config=CONFIG, embeddings=embeddings)
        for user in [*USERS, "nobody"]:
            table = store.get_user([user])
            reference = features_for(
                pl.DataFrame(pl.from_arrow(table)),
                rows,
                items=items_mem,
                now=90,
                config=CONFIG,
                embeddings=embeddings,
            )
            got = fast(table.to_pylist()[0], rows, now=90)
            again = fast(store.get_records([user])[0], rows, now=90)
            for name, values in got.items():
                if values.dtype == object:
                    assert values.tolist() == again[name].tolist(), name
                else:
                    assert np.array_equal(values, again[name], equal_nan=True), name
            assert list(got) == [c for c in reference.columns if c not in ("item_id", "user_last_items")]
            assert_frames_match(
                pl.DataFrame(got).cast(reference.select(list(got)).schema), reference, list(got)
            )  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="'user_favourite_colour' has no serving fast path"):
        ServingFeatures(items_mem, config=CONFIG, features=["user_favourite_colour"])


def test_awkward_ids_and_values_survive_the_store_exactly(store: OnlineStore, tmp_path: Path) -> None:
    """Numeric-looking and non-ASCII ids, JSON-special characters, long float sums, events without a
    type and last-N trimming: the store's record equals the in-Python reference update."""
    items = pl.DataFrame(
        {
            S.ITEM_ID: ["1", "2.0", "é/☃", 'q"\\', "x"],
            S.TITLE: ["a", "b", "c", "d", "e"],
            S.CATEGORY: ["10", None, "ü", "10", "[]"],
            S.BRAND: [None] * 5,
            S.PRICE: [0.1, 0.2, None, 1e-7, 123456.789012345],
        }
    )
    first = pl.DataFrame({S.USER_ID: ["7"], S.ITEM_ID: ["x"], S.TIMESTAMP: [5], S.EVENT: ["view"]})
    store.load(snapshot(tmp_path, 6, first, items))
    reference = empty_record()
    meta = {r[S.ITEM_ID]: r for r in items.iter_rows(named=True)}

    def apply(item: str, event: str | None, ts: int) -> None:
        row = meta[item]
        apply_to_record(
            reference,
            item_id=item,
            event=event,
            timestamp=ts,
            category=row[S.CATEGORY],
            price=row[S.PRICE],
            last_n=CONFIG.last_n,
        )

    apply("x", "view", 5)  # what the snapshot holds
    events = [("1", "view", 7), ("2.0", None, 9), ("é/☃", "cart", 8), ('q"\\', "view", 10)]
    events += [(item, "cart", 11 + k) for k, item in enumerate(["1", "x", "2.0"] * 5)]
    for item, event, ts in events:
        store.apply_event("7", item, event, ts)
        apply(item, event, ts)
    (got,) = store.get_records(["7"])
    assert {k: v for k, v in got.items() if k != "price_sum"} == {
        k: v for k, v in reference.items() if k != "price_sum"
    }
    assert got["price_sum"] == pytest.approx(reference["price_sum"], rel=1e-15)
