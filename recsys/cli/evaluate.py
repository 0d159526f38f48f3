"""``recsys evaluate``: tune and test candidate generators with full ranking over all items.

::

    recsys evaluate --items ITEMS --interactions EVENTS --protocol leave-last-out|temporal \\
        --k 10,50 --models popularity,als,itemknn --json OUT

For each model: every configuration of its grid is fitted on the validation task's training data
and scored on the validation targets; the one with the best NDCG@10 is refitted on the test task's
training data and scored on the test targets (a one-configuration grid skips validation). Lists
rank the whole catalogue and never contain an item of the user's input history.

The JSON written to ``--json`` (atomically) is a stable interface that scripts rely on::

    {"protocol": "leave-last-out",
     "dataset": {"users": .., "items": .., "interactions": ..},
     "models": {"als": {"recall@10": .., "ndcg@10": .., ...}, ...},   # flat numeric test metrics
     "details": {"als": {"params": {..}, "validation": [..], "fit_seconds": .., ...}, ...},
     "split": {...}, "k": [10, 50], "seed": 0,
     "paired": {"reference": "popularity",                          # only with --paired-against
                "models": {"als": {"ndcg@10": {"mean_diff": .., "ci_low": .., "ci_high": ..,
                                               "wins": .., "losses": .., "ties": .., ...}}}},
     "repeats": {"seeds": [0, 1, 2],                                # only with --repeats > 1
                 "models": {"als": [{"metrics": {..}, "params": {..}, ...}, ...]}}}

With ``--repeats R`` every model is tuned and tested R times, with seeds ``--seed`` to ``--seed + R - 1``:
``models`` holds the mean over the seeds, ``details`` the first seed's run, ``repeats`` each run, and
the per-user metrics (``--per-user``, ``--paired-against``) are each user's mean over the seeds, so a
model whose training is noisy (the sequential one) is compared as a model, not as one lucky or unlucky
fit.

With 27 test users (MovieLens, temporal) a whole-table difference of a few hundredths of NDCG is
within noise; ``--paired-against`` says which differences the users resolve, and ``--per-user``
keeps every user's metrics for any other test.

``--windows K`` (temporal only) evaluates on K consecutive test periods of ``--test-fraction`` each,
the last being the ordinary temporal test period (a rolling origin,
:func:`recsys.data.splits.rolling_temporal`): every model is tuned and tested once per period on what
precedes it, and the rows of the metrics are (user, period) pairs, so a dataset whose single test
period has few active users is judged on more.
``details[model]["windows"]`` holds each period's choice and metrics; the per-user file gains a
``window`` column (0 = earliest); the paired intervals resample users with all their periods (a
cluster bootstrap), since one user's periods are not independent.

Adding a model: add one entry to ``MODELS`` in :mod:`recsys.experiments.models` (its docstring shows
how); ``--models NAME`` then works here with no change to this module.

Exit codes: 0 success; 2 invalid data (a problem table is printed) or an invalid option (unknown
model, bad ``--k``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recsys.cli._errors import data_errors
from recsys.cli.app import app

if TYPE_CHECKING:
    import numpy as np

    from recsys.data.splits import Split
    from recsys.evaluation.protocol import ModelResult

EXIT_BAD_OPTION = 2
TABLE_METRICS = ("recall", "ndcg", "hitrate", "mrr", "map", "precision", "coverage", "novelty", "ild")


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(
            f"--k must be a comma-separated list of positive integers, got {text!r}"
        ) from None
    if not ks or ks[0] < 1:
        raise typer.BadParameter(f"--k must be a comma-separated list of positive integers, got {text!r}")
    return ks


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]Error:[/] {message}", highlight=False)
    return typer.Exit(EXIT_BAD_OPTION)


@app.command()
def evaluate(
    items: Annotated[Path, typer.Option("--items", help="Items table (Parquet, CSV or JSON lines).")],
    interactions: Annotated[Path, typer.Option("--interactions", help="Interactions table.")],
    protocol: Annotated[
        str, typer.Option("--protocol", help="leave-last-out (last event per user) or temporal (time cut).")
    ] = "leave-last-out",
    k: Annotated[str, typer.Option("--k", help="Cut-offs, comma-separated.")] = "10,50",
    models: Annotated[
        str, typer.Option("--models", help="Models, comma-separated (see recsys.experiments.models).")
    ] = "popularity,als,itemknn",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON here.")] = None,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="temporal: share of the latest events held out for test.")
    ] = 0.1,
    validation_fraction: Annotated[
        float, typer.Option("--validation-fraction", help="temporal: share held out for validation.")
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every model's initialisation.")] = 0,
    repeats: Annotated[
        int,
        typer.Option(
            "--repeats",
            help="Fit every model this many times, seeds --seed, --seed + 1, ...; report means over the "
            "seeds, each seed's run, and per-user metrics averaged over the seeds.",
        ),
    ] = 1,
    threads: Annotated[int, typer.Option("--threads", help="Solver threads per model (0: all cores).")] = 0,
    item_embeddings: Annotated[
        Path | None,
        typer.Option(
            "--item-embeddings",
            help=".npy (n_items, dim) in items-table order: adds intra-list diversity (ild@k).",
        ),
    ] = None,
    encoder: Annotated[
        str,
        typer.Option(
            "--encoder",
            help="text model: item encoder folder (fine-tuned on the validation task's training events "
            "only) or cached hub name; default the packaged MiniLM BERT.",
        ),
    ] = "",
    paired_against: Annotated[
        str,
        typer.Option(
            "--paired-against",
            help="Reference model (one of --models): per-user paired NDCG and recall differences of every "
            "other model against it, with bootstrap 95% intervals.",
        ),
    ] = "",
    per_user: Annotated[
        Path | None,
        typer.Option("--per-user", help="Write every model's per-user test metrics here (Parquet)."),
    ] = None,
    windows: Annotated[
        int,
        typer.Option(
            "--windows",
            help="temporal: test on this many consecutive periods of --test-fraction each (the last is "
            "the usual test period), each model tuned and fitted per period; metrics over (user, period) "
            "pairs.",
        ),
    ] = 1,
) -> None:
    """Tune on validation, report test metrics of each model (full ranking, history excluded)."""
    import numpy as np
    import scipy.sparse as sp
    from rich.console import Console
    from rich.progress import Progress

    from recsys.data.loading import load_dataset
    from recsys.data.splits import make_split, rolling_temporal
    from recsys.evaluation.metrics import intra_list_diversity, paired_difference
    from recsys.experiments.models import MODELS, EvalContext, resolve
    from recsys.evaluation.protocol import pool_windows, tune_and_test

    ks = _parse_ks(k)
    try:
        names = resolve([m.strip() for m in models.split(",") if m.strip()])
    except KeyError as exc:
        raise _fail(str(exc.args[0])) from None
    if protocol not in ("leave-last-out", "temporal"):
        raise _fail(f"unknown --protocol {protocol!r} (use leave-last-out or temporal)")
    if paired_against and paired_against not in names:
        raise _fail(f"--paired-against {paired_against!r} is not one of --models ({', '.join(names)})")
    if repeats < 1:
        raise _fail(f"--repeats must be >= 1, got {repeats}")
    if windows < 1:
        raise _fail(f"--windows must be >= 1, got {windows}")
    if windows > 1 and protocol != "temporal":
        raise _fail(f"--windows {windows} needs --protocol temporal (test periods are periods of time)")

    with data_errors():
        dataset = load_dataset(items, interactions)
    embeddings = None
    if item_embeddings is not None:
        try:
            embeddings = np.load(item_embeddings, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _fail(f"{item_embeddings}: cannot read as .npy: {exc}") from None
        if embeddings.ndim != 2 or embeddings.shape[0] != dataset.n_items:
            raise _fail(
                f"{item_embeddings}: shape {embeddings.shape} is not (n_items={dataset.n_items}, dim)"
            )
    data = dataset.to_interactions()
    options: dict[str, Any] = {}
    if protocol == "temporal":
        options = {"test_fraction": test_fraction, "validation_fraction": validation_fraction}
    try:
        if windows > 1:
            splits = rolling_temporal(data, windows=windows, **options)
        else:
            splits = [make_split(data, protocol, **options)]  # type: ignore[arg-type]
    except ValueError as exc:
        raise _fail(str(exc)) from None
    # the rows of every test metric: (user, period) pairs, periods in order
    test_users = np.concatenate([s.test.users for s in splits])
    test_targets = sp.vstack([s.test.targets for s in splits]).tocsr()

    console = Console(stderr=True)
    ctx = EvalContext(
        dataset=dataset, seed=seed, num_threads=threads, item_embeddings=embeddings, encoder=encoder
    )
    seeds = list(range(seed, seed + repeats))
    runs: dict[str, list[ModelResult]] = {name: [] for name in names}
    with Progress(console=console, transient=True) as progress:
        overall = progress.add_task("models", total=len(names) * repeats * len(splits))
        for run_seed in seeds:
            ctx.seed = run_seed  # one context: derived artifacts (text embeddings) are computed once
            for name in names:
                spec = MODELS[name]
                grid = list(spec.grid(ctx))
                results = []
                for split in splits:
                    results.append(
                        tune_and_test(
                            lambda config, spec=spec: spec.build(ctx, config),  # type: ignore[misc]
                            grid,
                            split,
                            ks=ks,
                            progress=progress,
                            label=name,
                        )
                    )
                    progress.advance(overall)
                runs[name].append(pool_windows(results, splits) if windows > 1 else results[0])
                seed_note = f", seed {run_seed}" if repeats > 1 else ""
                console.print(f"{name}: done ({len(grid)} configuration(s){seed_note})", highlight=False)

    # Diversity last: a builder (e.g. a text model) may have provided embeddings meanwhile.
    if ctx.item_embeddings is not None:
        for result in (r for model_runs in runs.values() for r in model_runs):
            for cut in ks:
                result.metrics[f"ild@{cut}"] = intra_list_diversity(
                    result.recommended, ctx.item_embeddings, k=cut
                )

    per_user_metrics = (
        {name: _mean_per_user(model_runs, test_targets, ks) for name, model_runs in runs.items()}
        if paired_against or per_user is not None
        else {}
    )
    report: dict[str, Any] = {
        "protocol": protocol,
        "dataset": dataset.summary(),
        "models": {name: _mean_metrics(model_runs) for name, model_runs in runs.items()},
        "details": {name: model_runs[0].details() for name, model_runs in runs.items()},
        "split": {
            "validation_users": sum(len(s.validation.users) for s in splits),
            "test_users": len(test_users),
            "test_targets": int(test_targets.nnz),
            "train_interactions": len(splits[-1].test.train),
            **options,
            **({"windows": [_window_summary(s) for s in splits]} if windows > 1 else {}),
        },
        "k": ks,
        "seed": seed,
    }
    if repeats > 1:
        report["repeats"] = {
            "seeds": seeds,
            "models": {
                name: [{"metrics": r.metrics, **r.details()} for r in model_runs]
                for name, model_runs in runs.items()
            },
        }
    if paired_against:
        reference = per_user_metrics[paired_against]
        report["paired"] = {
            "reference": paired_against,
            "models": {
                name: {
                    key: paired_difference(
                        values[key],
                        reference[key],
                        seed=seed,
                        clusters=test_users if windows > 1 else None,
                    )
                    for key in (f"ndcg@{ks[0]}", f"recall@{ks[0]}")
                }
                for name, values in per_user_metrics.items()
                if name != paired_against
            },
        }
    _print_table(report, ks)
    if repeats > 1:
        _print_seeds(report["repeats"], ks[0])
    if windows > 1:
        _print_windows(report, ks[0])
    if paired_against:
        _print_paired(report["paired"])
    if per_user is not None:
        _write_per_user(
            per_user,
            per_user_metrics,
            dataset.user_ids.to_numpy()[test_users],
            np.repeat(np.arange(windows), [len(s.test.users) for s in splits]) if windows > 1 else None,
        )
    if json_out is not None:
        from recsys.data.io import atomic_path

        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(_finite(report), indent=2) + "\n")
        Console().print(f"wrote {json_out}", highlight=False)


def _mean_metrics(model_runs: list[ModelResult]) -> dict[str, float]:
    """Each metric's mean over the runs (one run: its metrics unchanged)."""
    return {key: sum(r.metrics[key] for r in model_runs) / len(model_runs) for key in model_runs[0].metrics}


def _mean_per_user(model_runs: list[ModelResult], targets: Any, ks: list[int]) -> dict[str, np.ndarray]:
    """Each test user's accuracy metrics, averaged over the runs (seeds) of one model."""
    import numpy as np

    from recsys.evaluation.metrics import accuracy_per_user

    per_run = [accuracy_per_user(r.recommended, targets, ks=ks) for r in model_runs]
    return {key: np.mean([values[key] for values in per_run], axis=0) for key in per_run[0]}


def _write_per_user(
    path: Path,
    metrics: dict[str, dict[str, np.ndarray]],
    user_ids: np.ndarray,
    window: np.ndarray | None,
) -> None:
    """One row per (model, test user[, test period]): the user's external id and every accuracy metric."""
    import polars as pl
    from rich.console import Console

    from recsys.data.io import atomic_path

    periods = {} if window is None else {"window": window}
    frames = [
        pl.DataFrame({"model": name, "user_id": user_ids.astype(str), **periods, **values})
        for name, values in metrics.items()
    ]
    with atomic_path(path) as tmp:
        pl.concat(frames).write_parquet(tmp)
    Console().print(f"wrote {path}", highlight=False)


def _print_seeds(repeats: dict[str, Any], cut: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"test NDCG@{cut} and recall@{cut} of each seed", title_justify="left")
    table.add_column("model")
    for run_seed in repeats["seeds"]:
        table.add_column(f"seed {run_seed}", justify="right")
    for name, model_runs in repeats["models"].items():
        table.add_row(
            name,
            *(f"{r['metrics'][f'ndcg@{cut}']:.4f} / {r['metrics'][f'recall@{cut}']:.4f}" for r in model_runs),
        )
    Console(width=max(100, Console().width)).print(table)


def _window_summary(split: Split) -> dict[str, int]:
    return {
        "train_interactions": len(split.test.train),
        "train_until": int(split.test.train.timestamps.max()),
        "validation_users": len(split.validation.users),
        "test_users": len(split.test.users),
        "test_targets": int(split.test.targets.nnz),
    }


def _print_windows(report: dict[str, Any], cut: int) -> None:
    from rich.console import Console
    from rich.table import Table

    periods = report["split"]["windows"]
    table = Table(title=f"test NDCG@{cut} of each test period (first seed)", title_justify="left")
    table.add_column("model")
    for j, period in enumerate(periods):
        table.add_column(f"period {j} ({period['test_users']} users)", justify="right")
    for name, details in report["details"].items():
        table.add_row(name, *(_cell(w["metrics"].get(f"ndcg@{cut}")) for w in details["windows"]))
    Console(width=max(100, Console().width)).print(table)


def _print_paired(paired: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"paired per-user differences against {paired['reference']} (test)", title_justify="left"
    )
    for column in ("model", "metric", "users", "mean diff", "bootstrap 95% CI", "wins / losses / ties"):
        table.add_column(column, justify="left" if column in ("model", "metric") else "right")
    for name, by_metric in paired["models"].items():
        for metric, d in by_metric.items():
            clustered = d["clusters"] != d["users"]  # --windows: rows are (user, period) pairs
            table.add_row(
                name,
                metric,
                f"{d['clusters']} ({d['users']} pairs)" if clustered else str(d["users"]),
                f"{d['mean_diff']:+.4f}",
                f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]",
                f"{d['wins']} / {d['losses']} / {d['ties']}",
            )
    Console(width=max(100, Console().width)).print(table)


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined metrics (e.g. no list with two items for ild) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _print_table(report: dict[str, Any], ks: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    ds = report["dataset"]
    table = Table(
        title=(
            f"{report['protocol']}: {ds['users']:,} users, {ds['items']:,} items, "
            f"{ds['interactions']:,} interactions; {report['split']['test_users']:,} test users"
            + (
                f" (user, period pairs over {len(report['split']['windows'])} periods)"
                if "windows" in report["split"]
                else ""
            )
        ),
        title_justify="left",
    )
    table.add_column("model")
    table.add_column("k", justify="right")
    metrics = [m for m in TABLE_METRICS if any(f"{m}@{ks[0]}" in r for r in report["models"].values())]
    for metric in metrics:
        table.add_column(metric, justify="right")
    for name, values in report["models"].items():
        for cut in ks:
            table.add_row(name, str(cut), *(_cell(values.get(f"{metric}@{cut}")) for metric in metrics))
    Console(width=max(100, Console().width)).print(table)


def _cell(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4f}"
