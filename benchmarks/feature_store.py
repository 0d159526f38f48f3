"""Online feature-store latency: one user's record from the store plus 500 items' features.

Run from the project root (needs ``redis-server`` on the PATH, or ``--redis-url``)::

    .venv/bin/python -m benchmarks.feature_store

The MovieLens snapshot (all ratings, every user) is loaded into a SQLite file, a Redis server on
loopback (started here on a free port unless ``--redis-url`` is given) and an in-memory Arrow
table. Each request picks a random user and 500 random items, as the service does:

* ``fetch``: the user's record from the backend + the 500 items' feature rows from the in-memory
  Arrow table (the service keeps item features in memory; the user side always comes from the
  store). ``memory`` reads the user from an in-memory Arrow table too: the floor.
* ``features``: the user's record from the backend (``get_records``) + every user, item and
  user×item feature of the 500 rows by the NumPy serving path (``serving.ServingFeatures``; no
  embeddings), which tests hold equal to the training definitions.
* ``features_polars``: the same with the Polars reference (``online.features_for``), memory only.
* ``items_from_store``: the 500 items' rows read from the backend instead of memory.
* ``apply_event``: one live event (read-modify-write, atomic).
* ``build_features``: seconds to build 200,000 point-in-time training rows (one label time per user,
  random candidates, 64-d embeddings), the offline path the ranker uses.

Backends run interleaved request by request, so load from other jobs on the shared machine hits all
alike. Prints a table and writes ``benchmarks/results/feature_store.json`` (flat: ``<backend>_p50_ms``
etc. for ``fetch``; ``<backend>_<measure>_p50_ms`` for the others; the machine and its load average at
start and end under ``provenance``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from benchmarks.provenance import ROOT, start_run, write_results
from feature_store import FeatureConfig, build_features, online_items, open_store, write_snapshot
from feature_store.online import OnlineStore
from feature_store.record import frame_to_records
from feature_store.serving import ServingFeatures, features_for
from recsys.data import schema as S
from recsys.data.adapters import movielens

DATA = ROOT.parent / "shared" / "data" / "movielens-latest-small"


class MemoryUsers:
    """The in-memory baseline: user records in an Arrow table, looked up by a dict of row numbers."""

    def __init__(self, states: pl.DataFrame) -> None:
        self.table = states.to_arrow()
        self.row = {u: i for i, u in enumerate(states.get_column(S.USER_ID).to_list())}
        ids, records = frame_to_records(states)
        self.records = dict(zip(ids, records, strict=True))

    def get_user(self, user_ids: list[str]) -> pa.Table:
        return self.table.take([self.row[u] for u in user_ids])

    def get_records(self, user_ids: list[str]) -> list[dict[str, Any]]:
        return [self.records[u] for u in user_ids]


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install it (apt-get install -y redis-server) or pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*args, "--dir", str(folder)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def percentiles(ms: list[float]) -> tuple[float, float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--feature-requests", type=int, default=500)
    parser.add_argument("--reference-requests", type=int, default=100)
    parser.add_argument("--build-rows", type=int, default=200_000)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--out", type=Path, default=None, help="(benchmarks/results/feature_store.json)")
    args = parser.parse_args()
    started = start_run()

    items, interactions = movielens(DATA)
    config = FeatureConfig(event_types=("rating",))
    cutoff = int(interactions.get_column(S.TIMESTAMP).max()) + 1  # type: ignore[arg-type]
    # offline: point-in-time training rows, as the ranker builds them (one label time per user,
    # random candidate items, 64-d random unit embeddings)
    build_rng = np.random.default_rng(1)
    last = interactions.sort(S.TIMESTAMP).group_by(S.USER_ID, maintain_order=True).last()
    train_rows = last.select(S.USER_ID, pl.col(S.TIMESTAMP).alias("cutoff")).sample(
        n=args.build_rows, with_replacement=True, seed=0
    )
    pool = items.get_column(S.ITEM_ID).to_numpy()
    train_rows = train_rows.with_columns(
        pl.Series(S.ITEM_ID, pool[build_rng.integers(0, len(pool), train_rows.height)])
    )
    emb = build_rng.normal(size=(items.height, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    t = time.perf_counter()
    built = build_features(train_rows, interactions=interactions, items=items, config=config, embeddings=emb)
    build_s = time.perf_counter() - t
    assert built.height == train_rows.height
    work = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    redis_proc = None
    try:
        t = time.perf_counter()
        snap = write_snapshot(
            work / "snap", interactions=interactions, items=items, cutoff=cutoff, config=config
        )
        snapshot_s = time.perf_counter() - t
        redis_url = args.redis_url
        if redis_url is None:
            redis_proc, redis_url = start_redis(work)
        stores: dict[str, OnlineStore] = {
            "sqlite": open_store(f"sqlite:///{work / 'online.db'}"),
            "redis": open_store(redis_url),
        }
        load_s = {}
        for name, store in stores.items():
            t = time.perf_counter()
            store.load(snap)
            load_s[name] = time.perf_counter() - t
        memory = MemoryUsers(snap.user_states())
        users: dict[str, Callable[[list[str]], pa.Table]] = {
            "sqlite": stores["sqlite"].get_user,
            "redis": stores["redis"].get_user,
            "memory": memory.get_user,
        }
        items_mem = online_items(snap)
        items_arrow = items_mem.to_arrow()
        item_ids = items_mem.get_column(S.ITEM_ID).to_list()
        user_ids = snap.user_states().get_column(S.USER_ID).to_list()
        rng = np.random.default_rng(0)

        fetch: dict[str, list[float]] = {name: [] for name in users}
        for n in range(args.warmup + args.requests):
            user = user_ids[rng.integers(len(user_ids))]
            rows = rng.choice(len(item_ids), size=args.items, replace=False)
            for name, get in users.items():
                t = time.perf_counter()
                state = get([user])
                block = items_arrow.take(rows)
                elapsed = (time.perf_counter() - t) * 1000
                assert state.num_rows == 1 and block.num_rows == args.items
                if n >= args.warmup:
                    fetch[name].append(elapsed)

        records: dict[str, Callable[[list[str]], list[dict[str, Any]]]] = {
            "sqlite": stores["sqlite"].get_records,
            "redis": stores["redis"].get_records,
            "memory": memory.get_records,
        }
        fast = ServingFeatures(items_mem, config=config)
        features: dict[str, list[float]] = {name: [] for name in users}
        reference: dict[str, list[float]] = {"memory": []}
        from_store: dict[str, list[float]] = {name: [] for name in stores}
        events: dict[str, list[float]] = {name: [] for name in stores}
        for n in range(args.feature_requests + 20):
            user = user_ids[rng.integers(len(user_ids))]
            rows = rng.choice(len(item_ids), size=args.items, replace=False)
            wanted = [item_ids[i] for i in rows]
            for name, get_records in records.items():
                t = time.perf_counter()
                values = fast(get_records([user])[0], rows, now=cutoff)
                elapsed = (time.perf_counter() - t) * 1000
                assert len(values["ui_seen"]) == args.items
                if n >= 20:
                    features[name].append(elapsed)
            if n < args.reference_requests + 20:
                t = time.perf_counter()
                frame = pl.from_arrow(memory.get_user([user]))
                assert isinstance(frame, pl.DataFrame)
                out = features_for(frame, rows, items=items_mem, now=cutoff, config=config)
                elapsed = (time.perf_counter() - t) * 1000
                assert out.height == args.items
                if n >= 20:
                    reference["memory"].append(elapsed)
            for name, store in stores.items():
                t = time.perf_counter()
                got = store.get_items(wanted)
                elapsed = (time.perf_counter() - t) * 1000
                assert got.num_rows == args.items
                if n >= 20:
                    from_store[name].append(elapsed)
                t = time.perf_counter()
                store.apply_event(user, wanted[0], "rating", cutoff + n)
                elapsed = (time.perf_counter() - t) * 1000
                if n >= 20:
                    events[name].append(elapsed)
        for store in stores.values():
            store.close()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    result: dict[str, float | int | str] = {
        "dataset": "movielens-latest-small",
        "users": len(user_ids),
        "items": len(item_ids),
        "items_per_request": args.items,
        "requests": args.requests,
        "feature_requests": args.feature_requests,
        "reference_requests": args.reference_requests,
        "snapshot_write_s": round(snapshot_s, 3),
        "build_rows": train_rows.height,
        "build_user_cutoffs": train_rows.select(S.USER_ID, "cutoff").n_unique(),
        "build_features_s": round(build_s, 3),
    }
    print(f"{'backend':<8} {'measure':<18} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    table: list[tuple[str, str, dict[str, list[float]]]] = [
        ("fetch", "", fetch),
        ("features", "_features", features),
        ("features_polars", "_features_polars", reference),
        ("items_from_store", "_items_from_store", from_store),
        ("apply_event", "_apply_event", events),
    ]
    for measure, suffix, values in table:
        for name, ms in values.items():
            p50, p99, mean = percentiles(ms)
            print(f"{name:<8} {measure:<18} {p50:8.3f} {p99:8.3f} {mean:8.3f}")
            result[f"{name}{suffix}_p50_ms"] = round(p50, 4)
            result[f"{name}{suffix}_p99_ms"] = round(p99, 4)
    for name, seconds in load_s.items():
        result[f"{name}_load_s"] = round(seconds, 3)
        print(f"{name:<8} {'load snapshot':<18} {seconds:8.3f} s")
    out = write_results("feature_store", result, params=vars(args), started=started, out=args.out)
    print(f"build_features: {train_rows.height} rows in {build_s:.3f} s; snapshot write {snapshot_s:.3f} s")
    load = f"{started.loadavg_1min} -> {os.getloadavg()[0]:.2f}"
    print(f"load average (1 min) {load} on {os.cpu_count()} CPUs")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
