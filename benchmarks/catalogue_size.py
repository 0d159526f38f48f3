"""Catalogue-size independence of serving (issue 22, item 4): ``/recommend`` and ``/similar_items``
latency, server RSS and bundle size on synthetic catalogues of 10k, 100k and 1M items.

Run from the project root (heavy: under the shared lock, one size per run keeps each under 15 min)::

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.catalogue_size                  # all three
    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.catalogue_size --items 1000000 \\
        --out benchmarks/results/catalogue_size_1m.json                                     # one size
    .venv/bin/python -m benchmarks.catalogue_size --quick                                 # a minute

``--keep`` keeps each size's data and published bundle under ``--work``; ``--reuse`` then serves
them again without training (a change to the serving path, measured on the same bundles);
``--train-only`` trains and keeps without serving, so that a 1M-item size fits two 15-minute runs.

Each size is a synthetic shop of ``benchmarks.synthetic`` (three-level categories, power-law
popularity, sessions that stay in a leaf) with the **same number of interactions** (``--interactions``),
so that only the catalogue varies, and clustered 384-d item embeddings given directly (not BERT). A
child process trains and publishes the bundle with ``benchmarks.scaling_stages.run_point`` (the
stages of ``TwoStage.fit``, every default served source but the sequential one: see below) into the
size's own BentoML home. ``recsys serve --compile-ranker`` (one worker) then serves it over HTTP, and
one caller sends requests back to back (concurrency 1) for ``--duration`` seconds after a warm-up:

* ``/recommend``: known users only (their records are in the online store), n = 10;
* ``/similar_items``: items drawn from the interactions (so by popularity), n = 10, every source merged.

Per size it reports p50 and p99 of both routes, the server's RSS once loaded and its peak while
answering (process and worker), the bundle's size on disk, and the training child's figures; then
``p50(largest) / p50(smallest)`` per route, against issue 22's target of at most 3x.

**Why not the sequential source.** Its training took 230 s at 100k interactions on 10k items
(docs/SCALING.md), too long for a 15-minute run at 1M items; it is left out at every size so that the
sizes compare. **Why one label window** (``--label-windows``, default 1, the data's default is 3):
each window refits every source, and at 1M items the text index's k-means (~3 min on 2 cores,
benchmarks/results/ann.json) would run four times; the windows change what the ranker learns from,
not what a request costs.

Writes ``benchmarks/results/catalogue_size.json`` (flat ``m<items>.<figure>`` and ``<route>_p50_ratio``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
from pathlib import Path
from typing import Any

from benchmarks.provenance import start_run, write_results

SIZES = [10_000, 100_000, 1_000_000]
QUICK_SIZES = [300, 1_000]
TARGET_RATIO = 3.0  # issue 22: p50 at the largest catalogue at most 3x the smallest's
# the served sources (the defaults but sequential: module docstring)
SOURCES = ("als", "itemknn", "cooccurrence", "text", "popularity")
QUICK_MODEL = {"ranker": {"bags": 1, "max_rounds": 30}}
ROUTES = ("recommend", "similar")


def recommend_bodies(interactions: Path, *, count: int, seed: int) -> list[bytes]:
    """``/recommend`` bodies for known users (``n`` = 10), drawn uniformly from the user pool."""
    from benchmarks.serving import user_pool

    pool = user_pool(interactions)
    rng = random.Random(seed)
    return [json.dumps({"user_id": rng.choice(pool), "n": 10}).encode() for _ in range(count)]


def similar_bodies(interactions: Path, *, count: int, seed: int) -> list[bytes]:
    """``/similar_items`` bodies for items drawn from the interactions (popular items more often)."""
    import polars as pl

    from recsys.data import schema as S

    items = pl.read_parquet(interactions, columns=[S.ITEM_ID]).get_column(S.ITEM_ID)
    drawn = items.sample(count, with_replacement=True, seed=seed).to_list()
    return [json.dumps({"item_id": item, "n": 10}).encode() for item in drawn]


def train(items: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train and publish the bundle of one size in a child (``run_point``); its stages and facts."""
    from benchmarks.scaling import run_child
    from benchmarks.scaling_stages import Guards, Point, run_point

    model: dict[str, Any] = {"label_windows": args.label_windows}
    if args.quick:
        model |= QUICK_MODEL
    point = Point(args.interactions, items, sources=SOURCES, standalone=(), seed=args.seed, model=model)
    guards = Guards(stage_budget_s=args.stage_budget_s, memory_limit_mb=args.memory_limit_mb)
    out = work / "stages.json"
    return run_child(run_point, (point, guards, work, out), out, timeout=args.point_budget_s)


def drive(server: Any, route: str, bodies: list[bytes], *, duration: float, warmup: float) -> dict[str, Any]:
    """One caller, back to back, on ``route``: latency percentiles and errors, after a warm-up."""
    from benchmarks.serving import _drive

    url = f"{server.url}/{route}"
    asyncio.run(_drive(url, bodies, concurrency=1, duration=warmup))
    found = asyncio.run(_drive(url, bodies, concurrency=1, duration=duration))
    return {k: found[k] for k in ("requests", "errors", "p50_ms", "p99_ms")}


def serve(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Serve the size's published bundle (``--compile-ranker``, one worker) and measure both routes."""
    from benchmarks.harness.process import free_port, recsys_serve_command, running
    from benchmarks.serving import PeakRss

    interactions = work / "data" / "interactions.parquet"
    bodies = {
        "recommend": recommend_bodies(interactions, count=2_000, seed=args.seed),
        "similar": similar_bodies(interactions, count=2_000, seed=args.seed),
    }
    paths = {"recommend": "recommend", "similar": "similar_items"}
    port = free_port()
    env = {"BENTOML_HOME": str(work / "bentoml"), "RECSYS_WORKERS": "1"}
    command = recsys_serve_command(port=port, options=["--compile-ranker"])
    out: dict[str, Any] = {}
    with running(command, port=port, env=env, timeout=900.0, log_dir=work) as server:
        out["server_rss_loaded_mb"] = server.rss_bytes() / 2**20
        with PeakRss(server) as rss:
            for route in ROUTES:
                found = drive(server, paths[route], bodies[route], duration=args.duration,
                              warmup=args.warmup)  # fmt: skip
                out |= {f"{route}_{k}": v for k, v in found.items()}
                print(f"  /{paths[route]:14s} p50 {found['p50_ms']:7.2f} ms  p99 {found['p99_ms']:7.2f} ms  "
                      f"{found['requests']} requests, {found['errors']} errors", flush=True)  # fmt: skip
        out["server_rss_peak_mb"] = rss.peak / 2**20
    return out


def size_figures(items: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Train, serve and measure one catalogue size; flat figures without the size prefix."""
    work = root / f"m{items}"
    trained = work / "trained.json"  # the training child's record, kept with ``--keep`` for ``--reuse``
    print(f"m{items}: {items:,} items, {args.interactions:,} interactions", flush=True)
    record = json.loads(trained.read_text()) if args.reuse and trained.is_file() else None
    if record is None or record["facts"]["point"]["interactions"] != args.interactions:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        record = train(items, args, work)
        trained.write_text(json.dumps(record))
    else:
        print("  reusing the bundle trained earlier (--reuse)", flush=True)
    out: dict[str, Any] = {"train_exitcode": record["exitcode"], "train_seconds": record["seconds"]}
    for stage, figures in record["stages"].items():
        out[f"train.{stage}.status"] = figures["status"]
        for key in ("seconds", "peak_rss_mb"):
            if key in figures:
                out[f"train.{stage}.{key}"] = figures[key]
        print(f"  {stage:20s} {figures['status']:18s} {figures.get('seconds', float('nan')):8.1f} s  "
              f"peak {figures.get('peak_rss_mb', float('nan')):7.0f} MB", flush=True)  # fmt: skip
    facts = record["facts"]
    out |= {k: v for k, v in facts.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    if facts.get("published") and not args.train_only:
        out |= serve(work, args)
    if not (args.keep or args.reuse or args.train_only):
        shutil.rmtree(work, ignore_errors=True)
    return out


def ratios(figures: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """``<route>_p50_ratio``: p50 at the largest measured size over the smallest's, and its sizes.

    >>> ratios({"m10.recommend_p50_ms": 2.0, "m100.recommend_p50_ms": 5.0}, [10, 100])
    {'recommend_p50_ratio': 2.5, 'recommend_ratio_sizes': '100/10', 'recommend_ratio_target_met': True}
    """
    out: dict[str, Any] = {}
    for route in ROUTES:
        measured = [m for m in sizes if f"m{m}.{route}_p50_ms" in figures]
        if len(measured) < 2:
            continue
        small, large = min(measured), max(measured)
        ratio = figures[f"m{large}.{route}_p50_ms"] / figures[f"m{small}.{route}_p50_ms"]
        out[f"{route}_p50_ratio"] = ratio
        out[f"{route}_ratio_sizes"] = f"{large}/{small}"
        out[f"{route}_ratio_target_met"] = bool(ratio <= TARGET_RATIO)
    return out


def print_table(figures: dict[str, Any], sizes: list[int]) -> None:
    columns = [
        ("recommend_p50_ms", "/recommend p50"), ("recommend_p99_ms", "p99"),
        ("similar_p50_ms", "/similar p50"), ("similar_p99_ms", "p99"),
        ("server_rss_loaded_mb", "RSS loaded MB"), ("server_rss_peak_mb", "RSS peak MB"),
        ("bundle_mb", "bundle MB"), ("train_seconds", "train s"),
    ]  # fmt: skip
    print("\n| items | " + " | ".join(label for _, label in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for m in sizes:
        cells = [figures.get(f"m{m}.{key}") for key, _ in columns]
        text = [f"{c:,.2f}" if isinstance(c, float) else "-" for c in cells]
        print(f"| {m:,} | " + " | ".join(text) + " |")
    for route in ROUTES:
        if f"{route}_p50_ratio" in figures:
            print(f"{route}: p50 ratio {figures[f'{route}_ratio_sizes']} = "
                  f"{figures[f'{route}_p50_ratio']:.2f} (target <= {TARGET_RATIO})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 and 1,000 items, 5,000 interactions.")
    parser.add_argument("--items", type=int, nargs="*", default=None, help="default 10k 100k 1M")
    parser.add_argument("--interactions", type=int, default=None, help="default 200,000 (quick: 5,000)")
    parser.add_argument("--label-windows", type=int, default=1, help="the ranker's label windows")
    parser.add_argument("--duration", type=float, default=None, help="seconds per route (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--stage-budget-s", type=float, default=600.0)
    parser.add_argument("--point-budget-s", type=float, default=840.0)
    parser.add_argument("--memory-limit-mb", type=float, default=14_000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="Keep each size's data and bundle.")
    parser.add_argument(
        "--reuse", action="store_true", help="Serve a size's bundle kept by an earlier --keep run."
    )
    parser.add_argument("--train-only", action="store_true", help="Train and keep, serve later (--reuse).")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recsys-catalogue-size"), help="Scratch.")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/")
    args = parser.parse_args()
    started = start_run()
    sizes = args.items or (QUICK_SIZES if args.quick else SIZES)
    args.interactions = args.interactions or (5_000 if args.quick else 200_000)
    args.duration = args.duration or (2.0 if args.quick else 20.0)
    if args.quick:
        args.warmup = min(args.warmup, 1.0)
    figures: dict[str, Any] = {"interactions": args.interactions, "sources": ",".join(SOURCES)}
    for items in sorted(sizes):
        figures |= {f"m{items}.{k}": v for k, v in size_figures(items, args, args.work).items()}
        figures |= ratios(figures, sorted(sizes))
        # after every size: a run stopped by its time limit keeps the sizes it measured
        out = write_results("catalogue_size", figures, params=vars(args), started=started, out=args.out)
    print_table(figures, sorted(sizes))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
