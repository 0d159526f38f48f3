"""Replay the bundled MovieLens sample's real time through the nightly job, one period per night.

Run from the project root (a heavy run: ``flock /tmp/heavy.lock`` on a shared machine)::

    .venv/bin/python -m benchmarks.nightly_replay            # 8 nights, small budgets (nightly_replay.toml)
    .venv/bin/python -m benchmarks.nightly_replay --quick    # 2 nights on a 12-user sample, tiny model

The sample's timestamps are real (1996-2018), but its days are thin: most of its last days hold no
event or one user's. So the period is chosen from the data: the shortest of a day, a week, two weeks
and 30 days for which each of the last ``--nights`` periods holds at least ``--min-rows`` events of at
least ``--min-users`` users (the choice and every candidate's counts are printed). Everything before
those periods is the initial part.

One shop (``benchmarks.harness.nightly.Shop``: one ``BENTOML_HOME``, one data and work folder) gets
the initial part's items and interactions, and ``recsys retrain`` bootstraps on them (night 0). Then
each period is dropped into the inbox as it would arrive: an items file with the items first seen in
it (if any) and an interactions file; the job runs after each drop. The gate window is the period
(``gate_days`` = its length), so each night's gate scores the candidate and production on the newest
period's returning users.

Per night: wall time and each stage's seconds, rows ingested, items embedded, the gate's decision,
reason, users and interval, the published version, and the metrics on that night's gate window of the
candidate, of production and of the model served after the night (the candidate when published, else
production). These are the gate's metrics on the newest window: the run summary holds no other test
of the published model. Prints a table, writes ``benchmarks/results/nightly_replay.json`` (a ``runs``
list, one flat dict per night) and plots the served model's metrics over the nights to
``docs/nightly_replay.png``.

The model: ``--train-config`` (a ``recsys train --config`` file; default
``benchmarks/nightly_replay.toml``: small budgets, no sequential source, no head) supplies the job's
``[train]`` table (its ``finetune``, ``[encoder]``, ``[encoder_training]`` and ``[model]``; the keys
only ``recsys train`` reads are left out).
``--quick`` uses a tiny model without fine-tuning instead.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.harness.nightly import DAY, Shop, Timed, stage_seconds, toml_text, train_tables
from benchmarks.provenance import ROOT, start_run, write_results
from recsys.data import schema as S

PERIODS = {"day": 1, "week": 7, "two weeks": 14, "30 days": 30}
QUICK_TRAIN: dict[str, Any] = {
    "finetune": False,
    "encoder": {"max_tokens": 16},
    "model": {
        "candidates": {
            "per_source": 20,
            "total": 40,
            "sources": ["popularity", "als", "cooccurrence", "text"],
            "als": {"factors": 8, "iterations": 3},
        },
        "ranker": {"search": [[7, 0.1]], "max_rounds": 30, "min_data_in_leaf": 5, "bags": 1},
    },
}


@dataclass(frozen=True)
class Period:
    """One night's events: ``[start, end)`` in Unix seconds."""

    start: int
    end: int

    def label(self) -> str:
        return datetime.fromtimestamp(self.end - 1, UTC).date().isoformat()


def choose_period(interactions: pl.DataFrame, *, nights: int, min_rows: int, min_users: int) -> int:
    """The shortest period (days, of ``PERIODS``) whose last ``nights`` periods each hold enough."""
    end = int(interactions.get_column(S.TIMESTAMP).max()) + 1  # type: ignore[arg-type]
    for name, days in PERIODS.items():
        parts = [interactions.filter(_within(p)) for p in last_periods(end, days=days, nights=nights)]
        rows = [p.height for p in parts]
        users = [p.get_column(S.USER_ID).n_unique() for p in parts]
        thick = min(rows) >= min_rows and min(users) >= min_users
        print(f"  {name:>9}: events {rows}, users {users}{'  <- chosen' if thick else ''}", flush=True)
        if thick:
            return days
    raise SystemExit(
        f"no period of {', '.join(PERIODS)} gives {nights} periods of at least {min_rows} events and "
        f"{min_users} users: lower --min-rows/--min-users or --nights"
    )


def last_periods(end: int, *, days: int, nights: int) -> list[Period]:
    """The last ``nights`` periods of ``days`` before ``end``, oldest first."""
    length = days * DAY
    return [Period(end - (nights - i) * length, end - (nights - i - 1) * length) for i in range(nights)]


def _within(period: Period) -> pl.Expr:
    return pl.col(S.TIMESTAMP).is_between(period.start, period.end, closed="left")


def quick_sample(
    items: pl.DataFrame, interactions: pl.DataFrame, *, users: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The last 60 days of data, for the ``users`` most active in them, and the items they took."""
    end = int(interactions.get_column(S.TIMESTAMP).max()) + 1  # type: ignore[arg-type]
    recent = interactions.filter(pl.col(S.TIMESTAMP) >= end - 60 * DAY)
    top = recent.group_by(S.USER_ID).len().sort(["len", S.USER_ID], descending=[True, False]).head(users)
    kept = recent.filter(pl.col(S.USER_ID).is_in(top.get_column(S.USER_ID).implode()))
    return items.filter(pl.col(S.ITEM_ID).is_in(kept.get_column(S.ITEM_ID).implode())), kept


def night_figures(
    night: int, period: Period | None, rows: int, new_items: int, timed: Timed, summary: dict[str, Any]
) -> dict[str, Any]:
    """One flat row of the results file from a night's run summary."""
    gate = summary.get("gate") or {}
    candidate, production = gate.get("candidate") or {}, gate.get("production") or {}
    interval = gate.get("interval") or {}
    published = summary["outcome"] == "published"
    served = candidate if published else production
    return {
        "night": night,
        "period_start": None if period is None else datetime.fromtimestamp(period.start, UTC).isoformat(),
        "period_end": None if period is None else datetime.fromtimestamp(period.end, UTC).isoformat(),
        "rows_dropped": rows,
        "new_items_dropped": new_items,
        "rows_ingested": summary["ingest"].get("rows_added", {}).get("interactions"),
        "items_ingested": summary["ingest"].get("rows_added", {}).get("items"),
        "items_embedded": summary["items_embedded"],
        "seconds": timed.seconds,
        "cpu_seconds": timed.cpu_seconds,
        **stage_seconds(summary, prefix=""),
        "peak_rss_mb": summary["peak_rss_mb"],
        "outcome": summary["outcome"],
        "exit_code": summary["exit_code"],
        "published": summary.get("published"),
        "gate_reason": gate.get("reason"),
        "gate_users": gate.get("users"),
        **{f"candidate_{k}": v for k, v in candidate.items()},
        **{f"production_{k}": v for k, v in production.items()},
        **{f"served_{k}": v for k, v in served.items()},
        **{f"interval_{k}": interval.get(k) for k in ("mean_diff", "ci_low", "ci_high")},
    }


def replay(
    shop: Shop, items: pl.DataFrame, interactions: pl.DataFrame, periods: list[Period]
) -> list[dict[str, Any]]:
    """Bootstrap on what comes before ``periods``, then one night per period; a row per night."""
    first_seen = interactions.group_by(S.ITEM_ID).agg(pl.col(S.TIMESTAMP).min().alias("first"))
    items = items.join(first_seen, on=S.ITEM_ID, how="left")
    start = periods[0].start
    # the initial catalogue: items seen before the replay, and items nobody has taken yet
    shop.drop(
        "0000-items.parquet",
        items.filter(pl.col("first").is_null() | (pl.col("first") < start)).drop("first"),
    )
    initial = interactions.filter(pl.col(S.TIMESTAMP) < start)
    shop.drop("0000-interactions.parquet", initial)
    runs = [_night(shop, 0, None, initial.height, 0)]
    for night, period in enumerate(periods, start=1):
        new_items = items.filter(pl.col("first").is_between(period.start, period.end, closed="left")).drop(
            "first"
        )
        if new_items.height:
            shop.drop(f"{night:04d}-items.parquet", new_items)
        events = interactions.filter(_within(period))
        shop.drop(f"{night:04d}-interactions.parquet", events)
        runs.append(_night(shop, night, period, events.height, new_items.height))
    return runs


def _night(shop: Shop, night: int, period: Period | None, rows: int, new_items: int) -> dict[str, Any]:
    timed, summary = shop.retrain()
    if summary["outcome"] == "failed":
        raise SystemExit(f"night {night} failed (exit {timed.returncode}): {summary.get('error')}")
    row = night_figures(night, period, rows, new_items, timed, summary)
    print(
        f"night {night} ({'initial part' if period is None else period.label()}): {row['outcome']}, "
        f"{timed.seconds:.1f} s, {row['items_embedded']} embedded, served N@10 {row.get('served_ndcg@10')}",
        flush=True,
    )
    return row


def print_table(runs: list[dict[str, Any]]) -> None:
    # the stages in the order the job runs them (dicts keep the summary's order)
    stages = list(dict.fromkeys(k[6:-2] for r in runs for k in r if k.startswith("stage_")))
    head = [
        "night",
        "ends",
        "rows",
        "new items",
        "embedded",
        "s",
        "CPU s",
        *stages,
        "outcome",
        "gate users",
        "N@10 cand",
        "N@10 prod",
        "interval",
    ]
    print("\n" + " | ".join(head))
    for r in runs:
        interval = (
            "-"
            if r["interval_ci_low"] is None
            else f"[{r['interval_ci_low']:+.3f}, {r['interval_ci_high']:+.3f}]"
        )
        cells = [
            str(r["night"]),
            (r["period_end"] or "initial")[:10],
            str(r["rows_ingested"]),
            str(r["new_items_dropped"]),
            str(r["items_embedded"]),
            f"{r['seconds']:.1f}",
            f"{r['cpu_seconds']:.1f}",
            *(f"{r.get(f'stage_{s}_s', 0.0):.1f}" for s in stages),
            r["outcome"],
            str(r["gate_users"]),
            _number(r.get("candidate_ndcg@10")),
            _number(r.get("production_ndcg@10")),
            interval,
        ]
        print(" | ".join(cells))


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def plot(runs: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """The served model's N@10 and R@10 on each night's gate window, with both gated models' N@10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nights = [r for r in runs if r["period_end"] is not None]
    x = [r["night"] for r in nights]
    labels = [r["period_end"][:10] for r in nights]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    for key, style, name in (
        ("served_ndcg@10", "o-", "served after the night: NDCG@10"),
        ("served_recall@10", "s--", "served after the night: recall@10"),
        ("candidate_ndcg@10", "x", "candidate NDCG@10"),
        ("production_ndcg@10", "+", "production NDCG@10"),
    ):
        values = [r.get(key) for r in nights]
        if any(v is not None for v in values):
            ax.plot(x, [float("nan") if v is None else v for v in values], style, label=name)
    for r in nights:
        if r["outcome"] != "published":
            ax.axvline(r["night"], color="grey", alpha=0.3, lw=6)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("on the night's gate window")
    ax.set_title(title + " (grey: the gate kept production)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=8, help="Periods replayed after the initial part.")
    parser.add_argument("--min-rows", type=int, default=20, help="Fewest events in each replayed period.")
    parser.add_argument("--min-users", type=int, default=3, help="Fewest users in each replayed period.")
    parser.add_argument("--train-config", type=Path, default=ROOT / "benchmarks" / "nightly_replay.toml")
    parser.add_argument("--quick", action="store_true", help="2 nights, 12 users, a tiny model.")
    parser.add_argument("--users", type=int, default=12, help="--quick: users in the sample.")
    parser.add_argument("--work", type=Path, default=None, help="The shop's folder (default: a temp dir).")
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/nightly_replay.json"
    )
    parser.add_argument("--plot", type=Path, default=None, help="default docs/nightly_replay.png")
    args = parser.parse_args()
    started = start_run()

    from recsys.data.loading import bundled_paths, load_tables

    items, interactions = load_tables(*bundled_paths())
    root = Path(tempfile.mkdtemp(prefix="nightly-replay-")) if args.work is None else args.work
    if args.quick:
        args.nights = min(args.nights, 2)
        items, interactions = quick_sample(items, interactions, users=args.users)
        train: dict[str, Any] = QUICK_TRAIN
        out, picture = args.out or root / "nightly_replay.json", args.plot or root / "nightly_replay.png"
    else:
        train = train_tables(args.train_config)
        out = args.out or ROOT / "benchmarks" / "results" / "nightly_replay.json"
        picture = args.plot or ROOT / "docs" / "nightly_replay.png"
    print(f"{items.height:,} items, {interactions.height:,} interactions; choosing the period:", flush=True)
    days = choose_period(interactions, nights=args.nights, min_rows=args.min_rows, min_users=args.min_users)
    end = int(interactions.get_column(S.TIMESTAMP).max()) + 1  # type: ignore[arg-type]
    periods = last_periods(end, days=days, nights=args.nights)
    shop = Shop(root / "shop")
    shop.write_config(toml_text({"gate_days": float(days), "train": train}))
    runs = replay(shop, items, interactions, periods)
    print_table(runs)
    path = write_results(
        "nightly_replay", runs, params=vars(args) | {"period_days": days}, started=started, out=out
    )
    plot(runs, picture, title=f"nightly replay of the MovieLens sample, one night per {days} days")
    print(f"wrote {path} and {picture} (the shop is in {root})")


if __name__ == "__main__":
    main()
