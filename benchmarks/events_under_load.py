"""``POST /events`` latency while the largest allowed ``/recommend/batch`` requests run back to back.

Run from the project root::

    .venv/bin/python -m benchmarks.events_under_load --home ~/bentoml     # 20 s idle + 40 s loaded
    .venv/bin/python -m benchmarks.events_under_load --duration 10         # quick look

One ``recsys serve`` subprocess (:mod:`benchmarks.harness.process`, loopback only) serves the current
bundle of ``--home`` (``$BENTOML_HOME``). Its online store is a copy of the SQLite store ``recsys
train`` loaded, made for this run, so the events it writes never reach the real one. Two phases on
the same server:

1. **idle** (the floor): one client sends ``/events`` at ``--event-rate`` per second for
   ``--idle-duration`` seconds, nothing else;
2. **loaded**: ``--batch-clients`` clients each send the largest batch the schema allows back to back
   (``serving.schemas``: ``MAX_BATCH_USERS`` known users at ``n = MAX_BATCH_ITEMS // MAX_BATCH_USERS``;
   scoring costs per user, so this is the slowest allowed shape), and the same event client runs
   for ``--duration`` s.

Events are sent open-loop (each at its scheduled time, whatever the previous one is doing), so a
stalled event delays no other and shows in the tail. Everything stops by itself: batch clients
stop when the loaded phase ends (a batch still in flight is abandoned and not counted).

Writes ``benchmarks/results/events_under_load.json`` or ``--out``: flat keys ``idle_events_*`` and
``loaded_events_*`` (p50/p95/p99/max in ms, count, errors), ``loaded_batch_*`` (count, errors,
p50/max seconds, users, n) and ``target_met`` (loaded ``/events`` p99 < 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.process import free_port, recsys_serve_command, running
from benchmarks.provenance import start_run, write_results
from recsys.data.loading import bundled_paths

TARGET_P99_MS = 50.0
HEADERS = {"Content-Type": "application/json"}


def known_ids(interactions: Path, *, users: int) -> tuple[list[str], list[str]]:
    """``users`` user ids of the data (cycled when it has fewer) and its 100 most used item ids."""
    import polars as pl

    from recsys.data import schema as S
    from recsys.data.io import read_table

    frame = (
        read_table(interactions)
        .select(pl.col(S.USER_ID).cast(pl.String), pl.col(S.ITEM_ID).cast(pl.String))
        .collect()
    )
    pool = frame.get_column(S.USER_ID).unique(maintain_order=True).to_list()
    items = frame.get_column(S.ITEM_ID).value_counts(sort=True).get_column(S.ITEM_ID).head(100).to_list()
    return [pool[i % len(pool)] for i in range(users)], items


def store_copy(home: Path, folder: Path) -> str:
    """A copy of the served SQLite online store in ``folder`` (SQLite's backup API: a consistent
    copy), so the benchmark's events leave the real store as it was. Returns its URL."""
    from serving.runtime import default_store_url

    url = os.environ.get("RECSYS_ONLINE_STORE_URL") or default_store_url()
    if not url.startswith("sqlite:///"):
        sys.exit(f"the benchmark copies the SQLite online store; {url!r} is not one")
    source = Path(url.removeprefix("sqlite:///"))
    if not source.exists():
        sys.exit(
            f"no online store at {source} (`recsys train` loads it when it publishes a bundle in {home})"
        )
    target = folder / "online.db"
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return f"sqlite:///{target}"


def summary(prefix: str, seconds: list[float], errors: int) -> dict[str, float]:
    ms = np.asarray(seconds or [np.nan]) * 1000
    return {
        f"{prefix}_count": len(seconds),
        f"{prefix}_errors": errors,
        f"{prefix}_p50_ms": float(np.percentile(ms, 50)),
        f"{prefix}_p95_ms": float(np.percentile(ms, 95)),
        f"{prefix}_p99_ms": float(np.percentile(ms, 99)),
        f"{prefix}_max_ms": float(ms.max()),
    }


async def send_events(
    session: Any, url: str, items: list[str], *, rate: float, duration: float, tag: str
) -> tuple[list[float], int]:
    """``/events`` at ``rate`` per second for ``duration`` s, open-loop; (latencies, errors)."""
    latencies: list[float] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        body = json.dumps({"user_id": f"events-under-load-{tag}-{i % 50}", "item_id": items[i % len(items)]})
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=HEADERS) as response:
                await response.read()
                errors += response.status != 200
        except (OSError, TimeoutError):
            errors += 1
        latencies.append(time.perf_counter() - start)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * duration)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, errors


async def send_batches(
    session: Any, url: str, body: bytes, *, until: float, out: list[tuple[bool, float]]
) -> None:
    """The same batch back to back until ``until`` (``time.perf_counter``); (ok, seconds) into ``out``."""
    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=HEADERS) as response:
                await response.read()
                ok = response.status == 200
        except (OSError, TimeoutError):
            ok = False
        out.append((ok, time.perf_counter() - start))


async def phases(url: str, args: argparse.Namespace, batch: bytes, items: list[str]) -> dict[str, Any]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=args.batch_clients + 64)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        events = url + "/events"
        await send_events(session, events, items, rate=args.event_rate, duration=2.0, tag="warmup")
        idle, idle_errors = await send_events(
            session, events, items, rate=args.event_rate, duration=args.idle_duration, tag="idle"
        )
        batches: list[tuple[bool, float]] = []
        until = time.perf_counter() + args.duration + 2.0
        clients = [
            asyncio.create_task(
                send_batches(session, url + "/recommend/batch", batch, until=until, out=batches)
            )
            for _ in range(args.batch_clients)
        ]
        await asyncio.sleep(2.0)  # every batch client has a batch in flight
        loaded, loaded_errors = await send_events(
            session, events, items, rate=args.event_rate, duration=args.duration, tag="loaded"
        )
        for client in clients:
            client.cancel()  # a batch still in flight is abandoned: the run ends on time
        await asyncio.gather(*clients, return_exceptions=True)
    done = [seconds for ok, seconds in batches if ok]
    return {
        **summary("idle_events", idle, idle_errors),
        **summary("loaded_events", loaded, loaded_errors),
        "loaded_batch_count": len(done),
        "loaded_batch_errors": sum(not ok for ok, _ in batches),
        "loaded_batch_p50_s": float(np.median(done)) if done else None,
        "loaded_batch_max_s": max(done, default=None),
    }


def print_table(results: dict[str, Any]) -> None:
    print(
        "\n| phase | /events sent | errors | p50 ms | p95 ms | p99 ms | max ms | batches done | batch p50 s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for phase in ("idle", "loaded"):
        figures = [results[f"{phase}_events_{key}"] for key in ("count", "errors")]
        figures += [f"{results[f'{phase}_events_{key}_ms']:.1f}" for key in ("p50", "p95", "p99", "max")]
        if phase == "loaded":
            figures += [results["loaded_batch_count"], f"{results['loaded_batch_p50_s'] or float('nan'):.2f}"]
        else:
            figures += [0, "-"]
        print(f"| {phase} | " + " | ".join(map(str, figures)) + " |")
    met = "met" if results["target_met"] else "NOT met"
    print(f"\ntarget /events p99 < {TARGET_P99_MS:g} ms under load: {met}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=40.0, help="Seconds of the loaded phase.")
    parser.add_argument("--idle-duration", type=float, default=20.0, help="Seconds of the idle phase.")
    parser.add_argument("--event-rate", type=float, default=20.0, help="/events per second.")
    parser.add_argument("--batch-clients", type=int, default=2, help="Clients sending batches back to back.")
    parser.add_argument(
        "--users", type=int, default=None, help="Users per batch (default: the most allowed)."
    )
    parser.add_argument("--n", type=int, default=None, help="n of each batch (default: the most allowed).")
    parser.add_argument("--workers", type=int, default=2, help="Server worker processes (make serve: 2).")
    parser.add_argument("--home", type=Path, default=None, help="BENTOML_HOME with a published bundle.")
    parser.add_argument("--interactions", type=Path, default=None, help="Where real ids come from.")
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/events_under_load.json"
    )
    args = parser.parse_args()
    started = start_run()
    if args.home is not None:
        os.environ["BENTOML_HOME"] = str(args.home.resolve())
    if args.users is None or args.n is None:
        from serving.schemas import MAX_BATCH_ITEMS, MAX_BATCH_USERS

        args.users = args.users or MAX_BATCH_USERS
        args.n = args.n or MAX_BATCH_ITEMS // args.users

    from recsys.pipeline import registry

    try:
        version = registry.current()
    except registry.RegistryError as err:
        sys.exit(f"{err} (`make demo` trains and publishes the demo bundle)")
    users, items = known_ids(args.interactions or bundled_paths()[1], users=args.users)
    batch = json.dumps({"user_ids": users, "n": args.n}).encode()
    print(
        f"model {version.tag}; {args.workers} worker(s); batches of {args.users} users x n={args.n} from "
        f"{args.batch_clients} clients; /events at {args.event_rate:g}/s, {args.idle_duration:g} s idle then "
        f"{args.duration:g} s loaded; {os.cpu_count()} CPUs on {platform.node()}",
        flush=True,
    )
    folder = Path(tempfile.mkdtemp(prefix="events-under-load-"))
    try:
        env = {
            "BENTOML_HOME": str(registry.bentoml_home()),
            "RECSYS_ONLINE_STORE_URL": store_copy(registry.bentoml_home(), folder),
        }
        port = free_port()
        command = recsys_serve_command(port=port, options=["--workers", str(args.workers)])
        with running(command, port=port, env=env, log_dir=folder) as server:
            results = asyncio.run(phases(server.url, args, batch, items))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results.update(model=version.tag, workers=args.workers, batch_users=args.users, batch_n=args.n)
    results["target_met"] = (
        results["loaded_events_p99_ms"] < TARGET_P99_MS and not results["loaded_events_errors"]
    )
    print_table(results)
    out = write_results("events_under_load", results, params=vars(args), started=started, out=args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
