"""Serving latency and throughput: ``POST /recommend`` on the real server vs a bare BentoML echo floor.

Run from the project root::

    .venv/bin/python -m benchmarks.serving                 # 60 s per concurrency level
    .venv/bin/python -m benchmarks.serving --duration 10   # quick look

Both servers run as subprocesses (``recsys serve`` and ``bentoml serve benchmarks.harness.echo:Echo``,
started by :mod:`benchmarks.harness.process`) with the
same number of workers, one after the other, and are driven by the same closed-loop client
(``aiohttp``, one connection per concurrent caller) for ``--duration`` seconds at each concurrency
(default 1 and 16), after a short warm-up. Requests use real user ids of the demo data
(``--interactions``, the bundled MovieLens by default) mixed with ``--unknown-share`` unknown users.

The model is the current bundle of ``$BENTOML_HOME`` (or ``--home``): publish one first (``make demo``
trains and publishes the demo bundle; ``recsys train`` any other). The online store is the one
``recsys train`` loaded (``$RECSYS_ONLINE_STORE_URL`` or SQLite in the BentoML home).

Prints a table and writes ``benchmarks/results/serving.json`` or ``--out`` (flat keys
``<server>_c<N>_<measure>``; latencies in ms, throughput in requests/s, RSS in MB: the server process
and all its workers, sampled every 0.5 s, peak; server CPU ms per request, which shared-machine load
distorts less than latency; the client's own CPU ms per request, since it runs on the same cores) plus
``recsys_c<N>_p99_vs_echo`` and ``..._rps_vs_echo`` ratios. ``benchmarks.serving_profile`` splits
the recommender's part of the server CPU into its stages. ``<server>_c<N>_busiest_process_cpu_share``
is the busiest server process's share of the server CPU: with ``--workers 2``, near 0.5 when the
client's connections were split evenly, near 1.0 when they all landed on one worker (BentoML's workers
accept from one shared socket, so a burst of new connections can all go to one of them).
``--repeats R`` measures both servers R times back to back and writes the R runs' flat figures as a
``runs`` list in the one file, with the provenance of the whole invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.process import Server, bentoml_serve_command, free_port, recsys_serve_command, running
from benchmarks.provenance import start_run, write_results
from recsys.data.loading import bundled_paths
from serving.schemas import MAX_BATCH_USERS

# issue 22's targets, as ratios to the echo measured in the same run (the machine's noise cancels):
# server CPU per request and p50 at most 2.5x the echo's, p99 at most 3x (concurrency 1), throughput at
# the highest concurrency at least 40% of the echo's; and the peak RSS of the serving issue
TARGETS = {"cpu_vs_echo": 2.5, "p50_vs_echo": 2.5, "p99_vs_echo": 3.0, "rps_vs_echo": 0.4, "rss_mb": 1500.0}
BATCH_N = 10  # items per user in the /recommend/batch requests, as in the single requests


def user_pool(interactions: Path) -> list[str]:
    """The distinct user ids of an interactions table, in order of first appearance."""
    import polars as pl

    from recsys.data import schema as S
    from recsys.data.io import read_table

    users = (
        read_table(interactions)
        .select(pl.col(S.USER_ID).cast(pl.String).unique(maintain_order=True))
        .collect()
    )
    return list(users.get_column(S.USER_ID).to_list())


def request_bodies(interactions: Path, *, unknown_share: float, count: int, seed: int) -> list[bytes]:
    """JSON bodies for ``/recommend``: real user ids, a share replaced by never-seen ids."""
    pool = user_pool(interactions)
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        user = f"benchmark-unknown-{i}" if rng.random() < unknown_share else rng.choice(pool)
        bodies.append(json.dumps({"user_id": user, "n": 10}).encode())
    return bodies


def batch_bodies(interactions: Path, *, size: int, count: int, seed: int) -> list[bytes]:
    """JSON bodies for ``/recommend/batch``: ``size`` distinct real user ids each, n = ``BATCH_N``."""
    users = user_pool(interactions)
    rng = random.Random(seed)
    return [
        json.dumps({"user_ids": rng.sample(users, min(size, len(users))), "n": BATCH_N}).encode()
        for _ in range(count)
    ]


async def _drive(url: str, bodies: list[bytes], *, concurrency: int, duration: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        stop = start + duration

        async def caller(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        cpu_start = time.process_time()
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
        client_cpu = time.process_time() - cpu_start
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        # the client shares the machine's cores with the server: what it costs is not the server's
        "client_cpu_ms_per_request": 1000 * client_cpu / max(len(latencies), 1),
    }


class PeakRss:
    """Samples the server's RSS (process + workers) every 0.5 s in a thread; ``peak`` in bytes."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = server.rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self.server.rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(server: Server) -> dict[int, float]:
    """User + system CPU time so far of the server process and each of its workers, by pid."""
    import psutil

    root = psutil.Process(server.process.pid)
    out: dict[int, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[proc.pid] = times.user + times.system
    return out


def measure(
    name: str, server: Server, bodies: list[bytes], *, levels: list[int], duration: float, warmup: float
) -> dict[str, float]:
    url = server.url + "/recommend"
    out: dict[str, float] = {}
    asyncio.run(_drive(url, bodies, concurrency=max(levels), duration=warmup))
    with PeakRss(server) as rss:
        for level in levels:
            cpu_before = cpu_seconds(server)
            result = asyncio.run(_drive(url, bodies, concurrency=level, duration=duration))
            used = [t - cpu_before.get(pid, 0.0) for pid, t in cpu_seconds(server).items()]
            result["cpu_ms_per_request"] = 1000 * sum(used) / max(result["requests"], 1)
            # with several workers, the busiest process's share of the server CPU shows how evenly the
            # shared listening socket split the client's keep-alive connections (1.0: one did all)
            result["busiest_process_cpu_share"] = max(used) / max(sum(used), 1e-9)
            for key, value in result.items():
                out[f"{name}_c{level}_{key}"] = value
            out[f"{name}_c{level}_rss_mb"] = rss.peak / 2**20
            print(
                f"  {name:6s} c={level:<3d} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:6.2f}  "
                f"p95 {result['p95_ms']:6.2f}  p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}  "
                f"RSS {rss.peak / 2**20:.0f} MB  server CPU {result['cpu_ms_per_request']:.2f} ms/request  "
                f"client CPU {result['client_cpu_ms_per_request']:.2f} ms/request  "
                f"busiest process {result['busiest_process_cpu_share']:.0%} of server CPU",
                flush=True,
            )
    return out


def measure_batches(
    server: Server, batches: dict[int, list[bytes]], *, duration: float, warmup: float
) -> dict[str, float]:
    """``/recommend/batch`` sent back to back by one caller (a campaign job), per batch size:
    users per second, latency per batch, and server CPU per user."""
    url = server.url + "/recommend/batch"
    out: dict[str, float] = {}
    for size, bodies in batches.items():
        asyncio.run(_drive(url, bodies, concurrency=1, duration=warmup))
        cpu_before = cpu_seconds(server)
        result = asyncio.run(_drive(url, bodies, concurrency=1, duration=duration))
        used = sum(t - cpu_before.get(pid, 0.0) for pid, t in cpu_seconds(server).items())
        users = result["requests"] * size
        k = f"recsys_batch{size}_"
        out[k + "users_per_s"] = result["rps"] * size
        out[k + "p50_ms"], out[k + "p99_ms"] = result["p50_ms"], result["p99_ms"]
        out[k + "errors"] = result["errors"]
        out[k + "cpu_ms_per_user"] = 1000 * used / max(users, 1)
        print(
            f"  batch  {size:4d} users {out[k + 'users_per_s']:8.1f} users/s  "
            f"p50 {result['p50_ms']:7.1f} ms  errors {result['errors']}  "
            f"server CPU {out[k + 'cpu_ms_per_user']:.2f} ms/user",
            flush=True,
        )
    return out


def ratios(results: dict[str, Any], levels: list[int]) -> dict[str, float]:
    """The recommender's figures over the echo's of the same run, at each concurrency level."""
    out = {}
    for level in levels:
        for measure in ("cpu_ms_per_request", "p50_ms", "p99_ms", "rps"):
            short = measure.removesuffix("_ms_per_request").removesuffix("_ms")
            out[f"recsys_c{level}_{short}_vs_echo"] = (
                results[f"recsys_c{level}_{measure}"] / results[f"echo_c{level}_{measure}"]
            )
    return out


def measure_both(
    args: argparse.Namespace,
    bodies: list[bytes],
    *,
    env: dict[str, str],
    model: str,
    batches: dict[int, list[bytes]],
) -> dict[str, Any]:
    """One run: the echo floor, then the recommender, at every concurrency level; flat figures."""
    results: dict[str, Any] = {
        "model": model,
        "workers": args.workers,
        "duration_s": args.duration,
        "unknown_share": args.unknown_share,
        "compile_ranker": args.compile_ranker,
    }
    port = free_port()
    echo_command = bentoml_serve_command("benchmarks.harness.echo:Echo", port=port)
    with running(echo_command, port=port, env=env) as echo:
        results.update(
            measure("echo", echo, bodies, levels=args.concurrency, duration=args.duration, warmup=args.warmup)
        )
    port = free_port()
    options = ["--workers", str(args.workers)] + (["--compile-ranker"] if args.compile_ranker else [])
    command = recsys_serve_command(port=port, options=options)
    with running(command, port=port, env=env) as server:
        results.update(
            measure(
                "recsys", server, bodies, levels=args.concurrency, duration=args.duration, warmup=args.warmup
            )
        )
        results.update(measure_batches(server, batches, duration=args.duration, warmup=args.warmup))
    results.update(ratios(results, args.concurrency))
    return results


def print_table(results: dict[str, Any], levels: list[int], batch_sizes: list[int]) -> None:
    print()
    columns = ["server", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "peak RSS MB"]
    ratio_columns = ["CPU ms/req", "CPU / echo", "p50 / echo", "p99 / echo", "req/s / echo"]
    print("| " + " | ".join([*columns, *ratio_columns]) + " |")
    print("|" + "---|" * (len(columns) + len(ratio_columns)))
    for level in levels:
        for name in ("echo", "recsys"):
            k = f"{name}_c{level}_"
            shown = [
                results[f"recsys_c{level}_{m}_vs_echo"] if name == "recsys" else 1.0
                for m in ("cpu", "p50", "p99", "rps")
            ]
            print(
                f"| {name} | {level} | {results[k + 'rps']:.0f} | {results[k + 'p50_ms']:.2f} | "
                f"{results[k + 'p95_ms']:.2f} | {results[k + 'p99_ms']:.2f} | {int(results[k + 'errors'])} | "
                f"{results[k + 'rss_mb']:.0f} | {results[k + 'cpu_ms_per_request']:.2f} | "
                + " | ".join(f"{r:.2f}" for r in shown)
                + " |"
            )
    if batch_sizes:
        print("\n| users per request | users/s | p50 ms per request | errors | server CPU ms/user |")
        print("|---|---|---|---|---|")
        for level in levels:
            print(f"| 1 (`/recommend`, c={level}) | {results[f'recsys_c{level}_rps']:.0f} | "
                  f"{results[f'recsys_c{level}_p50_ms']:.2f} | {int(results[f'recsys_c{level}_errors'])} | "
                  f"{results[f'recsys_c{level}_cpu_ms_per_request']:.2f} |")  # fmt: skip
        for size in batch_sizes:
            k = f"recsys_batch{size}_"
            print(f"| {size} (`/recommend/batch`, c=1) | {results[k + 'users_per_s']:.0f} | "
                  f"{results[k + 'p50_ms']:.1f} | {int(results[k + 'errors'])} | "
                  f"{results[k + 'cpu_ms_per_user']:.2f} |")  # fmt: skip
    low, top = min(levels), max(levels)
    met = {
        f"CPU/request <= {TARGETS['cpu_vs_echo']:g}x echo (c={top})": (
            results[f"recsys_c{top}_cpu_vs_echo"] <= TARGETS["cpu_vs_echo"]
        ),
        f"p50 <= {TARGETS['p50_vs_echo']:g}x echo (c={low})": (
            results[f"recsys_c{low}_p50_vs_echo"] <= TARGETS["p50_vs_echo"]
        ),
        f"p99 <= {TARGETS['p99_vs_echo']:g}x echo (c={low})": (
            results[f"recsys_c{low}_p99_vs_echo"] <= TARGETS["p99_vs_echo"]
        ),
        f"req/s >= {TARGETS['rps_vs_echo']:.0%} of echo (c={top})": (
            results[f"recsys_c{top}_rps_vs_echo"] >= TARGETS["rps_vs_echo"]
        ),
        "zero errors": all(results[f"recsys_c{c}_errors"] == 0 for c in levels)
        and all(results[f"recsys_batch{b}_errors"] == 0 for b in batch_sizes),
        f"RSS < {TARGETS['rss_mb']:g} MB": results[f"recsys_c{top}_rss_mb"] < TARGETS["rss_mb"],
    }
    print("\ntargets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds per concurrency level.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Warm-up seconds before measuring.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--workers", type=int, default=1, help="Server worker processes (both servers).")
    parser.add_argument("--unknown-share", type=float, default=0.1)
    parser.add_argument(
        "--compile-ranker", action="store_true", help="Serve with `recsys serve --compile-ranker`."
    )
    parser.add_argument("--repeats", type=int, default=1, help="Runs back to back, kept as a `runs` list.")
    parser.add_argument("--home", type=Path, default=None, help="BENTOML_HOME with a published bundle.")
    parser.add_argument("--interactions", type=Path, default=None, help="Where real user ids come from.")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="*",
        default=[100, 250],
        help="Users per /recommend/batch request to measure after the single requests (none: skip); "
        "at most the schema's MAX_BATCH_USERS.",
    )
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/serving.json")
    args = parser.parse_args()
    started = start_run()

    from recsys.pipeline import registry

    if args.home is not None:
        os.environ["BENTOML_HOME"] = str(args.home.resolve())
    try:
        version = registry.current()
    except registry.RegistryError as err:
        sys.exit(f"{err} (`make demo` trains and publishes the demo bundle)")
    interactions = args.interactions or bundled_paths()[1]
    bodies = request_bodies(interactions, unknown_share=args.unknown_share, count=20_000, seed=0)
    if any(size > MAX_BATCH_USERS for size in args.batch_sizes):
        parser.error(f"--batch-sizes: at most MAX_BATCH_USERS = {MAX_BATCH_USERS} users per request")
    batches = {size: batch_bodies(interactions, size=size, count=50, seed=size) for size in args.batch_sizes}
    env = {"BENTOML_HOME": str(registry.bentoml_home()), "RECSYS_WORKERS": str(args.workers)}
    print(
        f"model {version.tag}; {args.workers} worker(s); {args.duration:g} s per level; "
        f"{args.repeats} run(s); {os.cpu_count()} CPUs on {platform.node()}",
        flush=True,
    )
    runs = []
    for run in range(args.repeats):
        if args.repeats > 1:
            print(f"run {run + 1} of {args.repeats}", flush=True)
        runs.append(measure_both(args, bodies, env=env, model=version.tag, batches=batches))
        print_table(runs[-1], args.concurrency, args.batch_sizes)
    figures = runs[0] if args.repeats == 1 else runs
    out = write_results("serving", figures, params=vars(args), started=started, out=args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
