"""``recsys evaluate``: tune and test candidate generators with full ranking over all items.

::

    recsys evaluate --items ITEMS --interactions EVENTS --protocol leave-last-out|temporal \\
        --k 10,50 --models popularity,als,itemknn --json OUT

The run is :func:`recsys.experiments.evaluate.evaluate` (its docstring says what is tuned, tested,
repeated over seeds and pooled over test periods); ``--json`` writes its
:meth:`~recsys.experiments.evaluate.EvaluationReport.to_json` atomically, a stable interface that
scripts rely on (``docs/evaluation_json.md`` describes it key by key), and ``--per-user`` its
per-user table as Parquet. This module parses the options and prints the tables: the test metrics,
their bootstrap 95% intervals, and the paired NDCG differences of every pair of models with Holm's
correction, besides the per-seed, per-period and ``--paired-against`` tables when asked for.
``--k`` and ``--models`` take a comma-separated list, or the option repeated (``--k 10 --k 50``).

With 27 test users (MovieLens, temporal) a whole-table difference of a few hundredths of NDCG is
within noise; ``--paired-against`` says which differences the users resolve, and ``--per-user``
keeps every user's metrics for any other test. ``--windows K`` (temporal only) tests on K
consecutive periods (a rolling origin), so a dataset whose single test period has few active users
is judged on more (user, period) pairs.

Adding a model: add one entry to ``MODELS`` in :mod:`recsys.experiments.models` (its docstring shows
how); ``--models NAME`` then works here with no change to this module.

``--report DIR`` also writes the evaluation report there (:mod:`recsys.cli.report`).

Every run is recorded in the runs folder (``recsys runs``; ``--runs-dir``, ``--tensorboard``,
``--mlflow``: :mod:`recsys.cli.runs`).

Exit codes: 0 success; 2 invalid data (a problem table is printed) or an invalid option (unknown
model, bad ``--k`` or ``--protocol``: the message names the option and the allowed values).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recsys.cli._errors import data_errors
from recsys.cli.app import app
from recsys.cli.runs import MlflowOption, RunsDirOption, TensorBoardOption, check_exporters, finish_run
from recsys.experiments.evaluate import EvaluationError, SplitProtocol

if TYPE_CHECKING:
    import numpy as np

    from recsys.experiments.evaluate import EvaluationReport

EXIT_BAD_OPTION = 2
TABLE_METRICS = ("recall", "ndcg", "hitrate", "mrr", "map", "precision", "coverage", "novelty", "ild")


class Cutoffs(tuple[int, ...]):
    """One ``--k`` value: positive cut-offs, e.g. ``10,50``."""


class ModelNames(tuple[str, ...]):
    """One ``--models`` value: names from the model table, e.g. ``popularity,als``."""


def _cutoffs(text: str | Cutoffs) -> Cutoffs:
    """Parse ``--k``; Typer also passes the default through, already parsed."""
    if isinstance(text, Cutoffs):
        return text
    try:
        cuts = Cutoffs(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        cuts = Cutoffs()
    if not cuts or min(cuts) < 1:
        raise typer.BadParameter(f"{text!r}: allowed are positive integers, comma-separated (e.g. 10,50)")
    return cuts


def _model_names(text: str | ModelNames) -> ModelNames:
    """Parse ``--models``: every name must be in the model table, which the message lists."""
    if isinstance(text, ModelNames):
        return text
    from recsys.experiments.models import resolve  # the table imports NumPy: only when parsing

    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        return ModelNames(resolve(names))
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_BAD_OPTION)


# The options that need more than a line, declared once here so the command reads as a list.
CutoffsOption = Annotated[
    list[Cutoffs],
    typer.Option(
        "--k",
        parser=_cutoffs,
        metavar="K[,K...]",
        show_default=False,
        help="Cut-offs, comma-separated or repeated (default 10,50).",
    ),
]
ModelsOption = Annotated[
    list[ModelNames],
    typer.Option(
        "--models",
        parser=_model_names,
        metavar="NAME[,NAME...]",
        show_default=False,
        help="Models, comma-separated or repeated, from recsys.experiments.models "
        "(default popularity,als,itemknn).",
    ),
]
ProtocolOption = Annotated[
    SplitProtocol,
    typer.Option("--protocol", help="leave-last-out (last event per user) or temporal (time cut)."),
]
RepeatsOption = Annotated[
    int,
    typer.Option(
        "--repeats",
        help="Fit every model this many times, seeds --seed, --seed + 1, ...; report means over the "
        "seeds, each seed's run, and per-user metrics averaged over the seeds.",
    ),
]
WindowsOption = Annotated[
    int,
    typer.Option(
        "--windows",
        help="temporal: test on this many consecutive periods of --test-fraction each (the last is "
        "the usual test period), each model tuned and fitted per period; metrics over (user, period) "
        "pairs.",
    ),
]
EmbeddingsOption = Annotated[
    Path | None,
    typer.Option(
        "--item-embeddings",
        help=".npy (n_items, dim) in items-table order: adds intra-list diversity (ild@k).",
    ),
]
EncoderOption = Annotated[
    str,
    typer.Option(
        "--encoder",
        help="text model: item encoder folder (fine-tuned on the validation task's training events "
        "only) or cached hub name; default the packaged MiniLM BERT.",
    ),
]
PairedOption = Annotated[
    str | None,
    typer.Option(
        "--paired-against",
        help="Reference model (one of --models): per-user paired NDCG and recall differences of every "
        "other model against it, with bootstrap 95% intervals.",
    ),
]


@app.command(name="evaluate")
def evaluate_command(
    ctx: typer.Context,
    items: Annotated[Path, typer.Option("--items", help="Items table (Parquet, CSV or JSON lines).")],
    interactions: Annotated[Path, typer.Option("--interactions", help="Interactions table.")],
    protocol: ProtocolOption = SplitProtocol.LEAVE_LAST_OUT,
    k: CutoffsOption = [Cutoffs((10, 50))],  # noqa: B006  (Typer reads the default; nothing mutates it)
    models: ModelsOption = [ModelNames(("popularity", "als", "itemknn"))],  # noqa: B006
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON here.")] = None,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="temporal: share of the latest events held out for test.")
    ] = 0.1,
    validation_fraction: Annotated[
        float, typer.Option("--validation-fraction", help="temporal: share held out for validation.")
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every model's initialisation.")] = 0,
    repeats: RepeatsOption = 1,
    threads: Annotated[int, typer.Option("--threads", help="Solver threads per model (0: all cores).")] = 0,
    item_embeddings: EmbeddingsOption = None,
    encoder: EncoderOption = "",
    paired_against: PairedOption = None,
    per_user: Annotated[
        Path | None,
        typer.Option("--per-user", help="Write every model's per-user test metrics here (Parquet)."),
    ] = None,
    windows: WindowsOption = 1,
    report_dir: Annotated[
        Path | None,
        typer.Option("--report", help="Also write the report (recsys report) into this folder."),
    ] = None,
    runs_dir: RunsDirOption = None,
    tensorboard: TensorBoardOption = None,
    mlflow: MlflowOption = False,
) -> None:
    """Tune on validation, report test metrics of each model (full ranking, history excluded)."""
    started = time.perf_counter()
    from rich.console import Console
    from rich.progress import Progress

    from recsys.data.io import atomic_path
    from recsys.data.loading import load_dataset
    from recsys.experiments.evaluate import EvaluationOptions, evaluate
    from recsys.experiments.runs import Invocation, dataset_facts, evaluation_record

    options = EvaluationOptions(
        models=[name for group in models for name in group],
        ks=[cut for group in k for cut in group],
        protocol=protocol,
        test_fraction=test_fraction,
        validation_fraction=validation_fraction,
        windows=windows,
        seed=seed,
        repeats=repeats,
        threads=threads,
        encoder=encoder,
        paired_against=paired_against,
    )
    try:
        options.check(spell=_option)  # before the data is read
    except EvaluationError as exc:
        raise _fail(str(exc)) from None
    check_exporters(tensorboard=tensorboard, mlflow=mlflow)
    with data_errors():
        dataset = load_dataset(items, interactions)
    embeddings = _read_embeddings(item_embeddings) if item_embeddings is not None else None
    try:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            report = evaluate(dataset, options, item_embeddings=embeddings, progress=progress)
    except EvaluationError as exc:
        raise _fail(str(exc)) from None
    _print_report(report)
    if per_user is not None:
        with atomic_path(per_user) as tmp:
            report.per_user.write_parquet(tmp)
        Console().print(f"wrote {per_user}", highlight=False)
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(report.to_json())
        Console().print(f"wrote {json_out}", highlight=False)
    if report_dir is not None:
        from recsys.cli.report import write

        name = json_out.stem if json_out is not None else items.resolve().parent.name or "evaluate"
        write(
            {name: json.loads(report.to_json())},
            report_dir,
            sources={name: str(json_out)} if json_out else {},
        )
    record = evaluation_record(
        report,
        options=options,
        data=dataset_facts(dataset, items=items, interactions=interactions),
        run=Invocation(
            options=ctx.params,
            outputs={"json": json_out, "per_user": per_user, "report": report_dir},
            seconds=time.perf_counter() - started,
        ),
    )
    finish_run(record, runs_dir=runs_dir, tensorboard=tensorboard, mlflow=mlflow)


def _option(field: str) -> str:
    """A field of :class:`~recsys.experiments.evaluate.EvaluationOptions` as this command spells it."""
    return "--k" if field == "ks" else "--" + field.replace("_", "-")


def _read_embeddings(path: Path) -> np.ndarray:
    import numpy as np

    try:
        embeddings: np.ndarray = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _fail(f"{path}: cannot read as .npy: {exc}") from None
    return embeddings


def _print_report(report: EvaluationReport) -> None:
    """The tables: test metrics and their intervals, then each seed, each test period, the paired
    differences against the reference, and the Holm-corrected matrix of every pair."""
    _print_table(report)
    if "intervals" in report.analysis:
        _print_intervals(report.analysis["intervals"], report.k)
    if report.repeats is not None:
        _print_seeds(report.repeats, report.k[0])
    if "windows" in report.split:
        _print_windows(report, report.k[0])
    if report.paired is not None:
        _print_paired(report.paired)
    pairwise = report.analysis.get("pairwise")
    if pairwise is not None and len(pairwise["models"]) > 1:
        _print_pairwise(pairwise, f"ndcg@{report.k[0]}")


def _print_table(report: EvaluationReport) -> None:
    from rich.console import Console
    from rich.table import Table

    ds, ks = report.dataset, report.k
    table = Table(
        title=(
            f"{report.protocol}: {ds['users']:,} users, {ds['items']:,} items, "
            f"{ds['interactions']:,} interactions; {report.split['test_users']:,} test users"
            + (
                f" (user, period pairs over {len(report.split['windows'])} periods)"
                if "windows" in report.split
                else ""
            )
        ),
        title_justify="left",
    )
    table.add_column("model")
    table.add_column("k", justify="right")
    metrics = [m for m in TABLE_METRICS if any(f"{m}@{ks[0]}" in r for r in report.models.values())]
    for metric in metrics:
        table.add_column(metric, justify="right")
    for name, values in report.models.items():
        for cut in ks:
            table.add_row(name, str(cut), *(_cell(values.get(f"{metric}@{cut}")) for metric in metrics))
    Console(width=max(100, Console().width)).print(table)


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


def _print_windows(report: EvaluationReport, cut: int) -> None:
    from rich.console import Console
    from rich.table import Table

    periods = report.split["windows"]
    table = Table(title=f"test NDCG@{cut} of each test period (first seed)", title_justify="left")
    table.add_column("model")
    for j, period in enumerate(periods):
        table.add_column(f"period {j} ({period['test_users']} users)", justify="right")
    for name, details in report.details.items():
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


def _print_intervals(intervals: dict[str, Any], ks: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    unit = f"{intervals['rows']:,} users"
    if intervals["clusters"] != intervals["rows"]:
        unit = f"{intervals['clusters']:,} users ({intervals['rows']:,} user, period pairs)"
    table = Table(
        title=f"test metrics with bootstrap {intervals['confidence']:.0%} intervals, resampling {unit}",
        title_justify="left",
    )
    table.add_column("model")
    table.add_column("k", justify="right")
    for metric in ("recall", "ndcg"):
        table.add_column(f"{metric} [95% interval]", justify="right")
    for name, by_metric in intervals["models"].items():
        for cut in ks:
            table.add_row(
                name, str(cut), *(_interval(by_metric.get(f"{m}@{cut}")) for m in ("recall", "ndcg"))
            )
    Console(width=max(100, Console().width)).print(table)


def _print_pairwise(pairwise: dict[str, Any], metric: str) -> None:
    from rich.console import Console
    from rich.table import Table

    names = pairwise["models"]
    pairs = len(names) * (len(names) - 1) // 2
    table = Table(
        title=f"paired {metric} differences, row - column; * = Holm-adjusted p < {pairwise['alpha']} "
        f"over {pairs} pair{'s' if pairs > 1 else ''}",
        title_justify="left",
    )
    table.add_column("model")
    for name in names:
        table.add_column(name, justify="right")
    cells = {(name, name): "" for name in names}
    for test in pairwise["metrics"][metric]:
        for row, column, sign in ((test["a"], test["b"], 1), (test["b"], test["a"], -1)):
            mark = "*" if test["significant"] else " "
            p = "p<0.001" if test["p_holm"] < 0.001 else f"p={test['p_holm']:.3f}"
            cells[row, column] = f"{sign * test['mean_diff']:+.4f}{mark} {p}"
    for row in names:
        table.add_row(row, *(cells[row, column] for column in names))
    Console(width=max(100, Console().width)).print(table)


def _interval(value: dict[str, float | None] | None) -> str:
    if value is None:
        return "-"
    low, high = value["ci_low"], value["ci_high"]
    if low is None or high is None:
        return _cell(value["mean"])
    return f"{_cell(value['mean'])} [{low:.4f}, {high:.4f}]"


def _cell(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4f}"
