"""A nightly ``recsys retrain`` against a from-scratch ``recsys train`` on the same data, side by side.

Run from the project root (a heavy run: ``flock /tmp/heavy.lock`` on a shared machine)::

    .venv/bin/python -m benchmarks.nightly_incremental                  # the bundled MovieLens sample
    .venv/bin/python -m benchmarks.nightly_incremental --items I.parquet --interactions X.parquet

On one dataset (contract tables; timestamps must be Unix seconds, since the job's gate window is days):

1. **train**: ``recsys train --items --interactions`` on all of it, without ``--config`` (every
   default), as a subprocess with its own ``BENTOML_HOME`` and a new bundle folder (so an empty
   embedding cache): what a shop runs by hand today.
2. **bootstrap** (set-up, not compared): the nightly job's first night, on the catalogue and every
   interaction before the last ``--new-days`` days. Its embedding cache starts as a copy of the train
   run's (the same packaged encoder and texts: the vectors the bootstrap would embed itself), which
   saves embedding the catalogue a second time; ``--no-seed-cache`` embeds it again.
3. **nightly** (timed): a file with only the last ``--new-days`` days of interactions, no new
   items, dropped into the inbox, and ``recsys retrain`` run again.

``--users N`` keeps only the N users whose last event is the most recent (and the items they took),
written as contract Parquet beside the run, for a comparison that fits a shorter slot: with every
default, the sequential source trains up to 200 epochs (patience 5) in each of the train's six source
fits on the whole MovieLens sample.

``--train-config FILE`` gives both sides the same model: ``recsys train --config FILE``, and the
file's model tables as the job's ``[train]`` (e.g. ``recsys/configs/demo.toml``, the demo's budgets).

The job's config is the three folders plus ``gate_days = --gate-days`` (thin data such as MovieLens'
last day holds one user, whom a one-day gate cannot evaluate). Prints a table and writes
``benchmarks/results/nightly_incremental.json`` (or ``--out``): both wall times, their ratio against
the 0.6 target, the nightly's items embedded (target 0) and its per-stage seconds from the run summary
(``nightly_stage_<name>_s``), and the train's own split of its time from its bundle's metadata
(``train_<part>_s``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.harness.nightly import (
    DAY,
    Shop,
    Timed,
    isolated_env,
    recsys_command,
    require_clock_time,
    run_timed,
    stage_seconds,
    toml_text,
    train_tables,
)
from benchmarks.provenance import start_run, write_results

TARGET_RATIO = 0.6


def split_last_days(interactions: pl.DataFrame, *, days: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(before, last)``: the interactions before the last ``days`` of data, and those in them."""
    from recsys.data import schema as S

    cutoff = int(interactions.get_column(S.TIMESTAMP).max()) + 1 - int(days * DAY)  # type: ignore[arg-type]
    late = pl.col(S.TIMESTAMP) >= cutoff
    return interactions.filter(~late), interactions.filter(late)


def recent_users(
    items: pl.DataFrame, interactions: pl.DataFrame, *, users: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``users`` users whose last event is the most recent, their interactions and their items."""
    from recsys.data import schema as S

    last = interactions.group_by(S.USER_ID).agg(pl.col(S.TIMESTAMP).max().alias("last"))
    chosen = last.sort(["last", S.USER_ID], descending=[True, False]).head(users).get_column(S.USER_ID)
    kept = interactions.filter(pl.col(S.USER_ID).is_in(chosen.implode()))
    return items.filter(pl.col(S.ITEM_ID).is_in(kept.get_column(S.ITEM_ID).implode())), kept


def time_train(
    items: Path, interactions: Path, root: Path, *, config: Path | None
) -> tuple[Timed, dict[str, Any]]:
    """``recsys train`` from scratch (with ``--config`` when given); its times and its bundle's metadata."""
    out = root / "bundles"
    options = ["--config", str(config.resolve())] if config is not None else []
    timed = run_timed(
        recsys_command(
            "train", "--items", str(items), "--interactions", str(interactions), "--out", str(out), *options
        ),
        env=isolated_env(root),
        cwd=root,
        log=root / "train.log",
    )
    if timed.returncode != 0:
        raise SystemExit(f"recsys train failed (exit {timed.returncode}):\n{timed.stderr_tail}")
    (bundle,) = [p for p in out.iterdir() if p.is_dir() and (p / "metadata.json").exists()]
    return timed, json.loads((bundle / "metadata.json").read_text())


def time_nightly(
    items: pl.DataFrame,
    before: pl.DataFrame,
    last: pl.DataFrame,
    shop: Shop,
    *,
    gate_days: float,
    seed: Path | None,
    train: dict[str, Any],
) -> dict[str, Any]:
    """Bootstrap the job on ``before``, then time the night that brings ``last``; flat figures."""
    shop.write_config(toml_text({"gate_days": gate_days, "train": train}))
    if seed is not None:
        shutil.copytree(seed, shop.work / "embedding-cache")
    shop.drop("items.parquet", items)
    shop.drop("interactions-before.parquet", before)
    boot, boot_summary = shop.retrain()
    if boot_summary["outcome"] != "published":
        raise SystemExit(f"the bootstrap night did not publish (exit {boot.returncode}):\n{boot.stderr_tail}")
    shop.drop("interactions-new.parquet", last)
    night, summary = shop.retrain()
    if summary["outcome"] not in ("published", "kept production"):
        raise SystemExit(f"the measured night failed (exit {night.returncode}): {summary.get('error')}")
    gate = summary.get("gate") or {}
    interval = gate.get("interval") or {}
    return {
        "bootstrap_s": boot.seconds,
        "bootstrap_cpu_s": boot.cpu_seconds,
        "bootstrap_items_embedded": boot_summary["items_embedded"],
        "nightly_s": night.seconds,
        "nightly_cpu_s": night.cpu_seconds,
        "nightly_exit_code": night.returncode,
        "nightly_outcome": summary["outcome"],
        "nightly_items_embedded": summary["items_embedded"],
        "nightly_rows_ingested": summary["ingest"]["rows_added"].get("interactions"),
        "nightly_items_ingested": summary["ingest"]["rows_added"].get("items"),
        "nightly_peak_rss_mb": summary["peak_rss_mb"],
        "nightly_gate_users": gate.get("users"),
        "nightly_gate_reason": gate.get("reason"),
        "nightly_gate_ndcg@10_diff": interval.get("mean_diff"),
        **stage_seconds(summary, prefix="nightly_"),
    }


def print_table(figures: dict[str, Any]) -> None:
    print(f"\n{'':<34}{'seconds':>10}{'CPU s':>10}")
    print(f"{'recsys train (from scratch)':<34}{figures['train_s']:>10.1f}{figures['train_cpu_s']:>10.1f}")
    for part in ("encoder", "validation", "test", "final_fit"):
        if f"train_{part}_s" in figures:
            print(f"{'  ' + part:<34}{figures[f'train_{part}_s']:>10.1f}")
    night = "recsys retrain (the measured night)"
    print(f"{night:<34}{figures['nightly_s']:>10.1f}{figures['nightly_cpu_s']:>10.1f}")
    for key, value in figures.items():
        if key.startswith("nightly_stage_"):
            print(f"{'  ' + key.removeprefix('nightly_stage_').removesuffix('_s'):<34}{value:>10.1f}")
    print(
        f"{'(bootstrap night, set-up)':<34}{figures['bootstrap_s']:>10.1f}{figures['bootstrap_cpu_s']:>10.1f}"
    )
    verdict = "met" if figures["ratio_met"] else "NOT met"
    print(
        f"\nnightly / train = {figures['ratio']:.3f} wall (target <= {TARGET_RATIO}: {verdict}), "
        f"{figures['cpu_ratio']:.3f} CPU; "
        f"items embedded on the night: {figures['nightly_items_embedded']} (target 0); "
        f"outcome: {figures['nightly_outcome']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=Path, default=None, help="Items table (default: bundled MovieLens).")
    parser.add_argument("--interactions", type=Path, default=None, help="Interactions table.")
    parser.add_argument("--users", type=int, default=0, help="Only the N most recent users (0: all).")
    parser.add_argument("--new-days", type=float, default=7.0, help="Days of interactions the night brings.")
    parser.add_argument("--gate-days", type=float, default=30.0, help="The job's gate window (days).")
    parser.add_argument(
        "--train-config",
        type=Path,
        default=None,
        help="A recsys train --config file for both sides (the job reads its model tables as [train]).",
    )
    parser.add_argument(
        "--no-seed-cache", action="store_true", help="The bootstrap embeds the catalogue again."
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="Keep the folders here (default: a temp dir)."
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/nightly_incremental.json"
    )
    args = parser.parse_args()
    started = start_run()

    from recsys.data.loading import bundled_paths, load_tables

    if (args.items is None) != (args.interactions is None):
        parser.error("give both --items and --interactions, or neither (the bundled MovieLens sample)")
    items_path, interactions_path = (args.items, args.interactions) if args.items else bundled_paths()
    items, interactions = load_tables(items_path, interactions_path)
    require_clock_time(interactions, source=str(interactions_path))
    root = Path(tempfile.mkdtemp(prefix="nightly-incremental-")) if args.work is None else args.work
    root.mkdir(parents=True, exist_ok=True)
    if args.users:
        items, interactions = recent_users(items, interactions, users=args.users)
        items_path, interactions_path = (
            root / "sample" / "items.parquet",
            root / "sample" / "interactions.parquet",
        )
        items_path.parent.mkdir(exist_ok=True)
        items.write_parquet(items_path)
        interactions.write_parquet(interactions_path)
    before, last = split_last_days(interactions, days=args.new_days)
    print(
        f"{items_path.parent}: {items.height:,} items, {interactions.height:,} interactions; "
        f"the night brings the last {args.new_days:g} days ({last.height:,} rows, "
        f"{last['user_id'].n_unique()} users); "
        f"gate_days = {args.gate_days:g}",
        flush=True,
    )
    train, meta = time_train(
        items_path.resolve(), interactions_path.resolve(), root / "train", config=args.train_config
    )
    print(f"recsys train: {train.seconds:.1f} s wall, {train.cpu_seconds:.1f} s CPU", flush=True)
    seed = None if args.no_seed_cache else root / "train" / "bundles" / "embedding-cache"
    tables = train_tables(args.train_config) if args.train_config is not None else {}
    nightly = time_nightly(
        items, before, last, Shop(root / "nightly"), gate_days=args.gate_days, seed=seed, train=tables
    )
    figures: dict[str, Any] = {
        "dataset": str((args.items or bundled_paths()[0]).parent),
        "users": interactions.get_column("user_id").n_unique(),
        "items": items.height,
        "interactions": interactions.height,
        "new_rows": last.height,
        "train_s": train.seconds,
        "train_cpu_s": train.cpu_seconds,
        **{f"train_{part}_s": round(s, 3) for part, s in meta["seconds"].items() if part != "total"},
        **nightly,
    }
    figures["ratio"] = round(figures["nightly_s"] / train.seconds, 4)
    figures["cpu_ratio"] = round(figures["nightly_cpu_s"] / max(train.cpu_seconds, 1e-9), 4)
    figures["ratio_target"] = TARGET_RATIO
    figures["ratio_met"] = figures["ratio"] <= TARGET_RATIO
    figures["items_embedded_met"] = figures["nightly_items_embedded"] == 0
    print_table(figures)
    out = write_results("nightly_incremental", figures, params=vars(args), started=started, out=args.out)
    print(f"wrote {out} (folders kept in {root})")


if __name__ == "__main__":
    main()
