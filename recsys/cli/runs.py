"""``recsys runs list|show|compare``: the experiment records that ``evaluate`` and ``train`` write; and
the options and the one call with which those commands write them (``--runs-dir``, ``--tensorboard``,
``--mlflow``).

The records live in :mod:`recsys.experiments.runs`; this module parses and prints. An id may be
shortened to any prefix that names one run; an unknown or ambiguous one exits 2 with one line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recsys.cli.app import app

if TYPE_CHECKING:
    from rich.console import Console

    from recsys.experiments.run_compare import RunComparison
    from recsys.experiments.runs import RunRecord

EXIT_BAD_RUN = 2

runs_app = typer.Typer(
    name="runs",
    help="Experiment records written by `recsys evaluate` and `recsys train` ($RECSYS_RUNS_DIR, "
    "else ./recsys-runs).",
    no_args_is_help=True,
)
app.add_typer(runs_app)

RunsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--runs-dir",
        show_default=False,
        help="Folder of the run records (default $RECSYS_RUNS_DIR, else ./recsys-runs).",
    ),
]
TensorBoardOption = Annotated[
    Path | None,
    typer.Option(
        "--tensorboard",
        help="Also write the run's metrics and timings as TensorBoard scalars under DIR/RUN_ID "
        "(needs the tensorboard package).",
    ),
]
MlflowOption = Annotated[
    bool,
    typer.Option("--mlflow", help="Also log the run to MLflow's active tracking URI (needs mlflow)."),
]


def check_exporters(*, tensorboard: Path | None, mlflow: bool) -> None:
    """Exit 2 with one line before any work when an asked-for exporter is not installed."""
    from recsys.experiments.run_exports import missing_exporter

    for name, asked in (("tensorboard", tensorboard is not None), ("mlflow", mlflow)):
        message = missing_exporter(name) if asked else None
        if message:
            _error(message)
            raise typer.Exit(EXIT_BAD_RUN)


def finish_run(record: RunRecord, *, runs_dir: Path | None, tensorboard: Path | None, mlflow: bool) -> None:
    """Write ``record`` and the asked-for exports. All are by-products of a run that has succeeded, so a
    failure here is a warning on stderr, never an error exit."""
    from recsys.experiments.runs import record_run

    console = _stderr()

    def warn(message: str) -> None:
        console.print(f"[bold yellow]Warning:[/] {_escape(message)}", highlight=False, soft_wrap=True)

    path = record_run(record, runs_dir=runs_dir, warn=warn)
    if path is not None:
        console.print(f"run {record.id} recorded in {path}", markup=False, highlight=False, soft_wrap=True)
    if tensorboard is not None:
        from recsys.experiments.run_exports import export_tensorboard

        try:
            folder = export_tensorboard(record, tensorboard)
            console.print(f"TensorBoard scalars in {folder}", markup=False, highlight=False)
        except (OSError, ImportError) as exc:
            warn(f"TensorBoard export failed: {exc}")
    if mlflow:
        from recsys.experiments.run_exports import log_to_mlflow

        try:
            console.print(f"MLflow run {log_to_mlflow(record, record_path=path)}", markup=False)
        except Exception as exc:  # a tracking server's any error must not fail the run
            warn(f"MLflow logging failed: {type(exc).__name__}: {exc}")


@runs_app.command("list")
def list_runs(runs_dir: RunsDirOption = None) -> None:
    """Every recorded run, oldest first: id, date, command, data fingerprint, N@10 of each model, commit."""
    from rich.console import Console
    from rich.table import Table

    from recsys.experiments.runs import load_records, runs_folder

    folder = runs_folder(runs_dir)
    records = load_records(
        folder, on_skip=lambda path, why: _stderr().print(f"skipped {path}: {why}", markup=False)
    )
    if not records:
        typer.echo(
            f"No run recorded in {folder}: `recsys evaluate` and `recsys train` record theirs.", err=True
        )
        return
    table = Table(title=f"runs in {folder}", title_justify="left")
    for column in ("id", "date (UTC)", "command", "data", "NDCG@10 (or first K) per model", "commit"):
        table.add_column(column, overflow="fold")
    for record in records:
        headline = ", ".join(f"{model} {_number(value)}" for model, value in record.headline().items())
        table.add_row(
            record.id,
            record.created_at.replace("T", " ")[:16],
            record.command,
            str(record.data.get("fingerprint") or "-")[:8],
            headline or "-",
            _commit(record),
        )
    Console(width=max(120, Console().width)).print(table)


@runs_app.command("show")
def show_run(
    run_id: Annotated[str, typer.Argument(metavar="ID", help="A run id or a prefix naming one run.")],
    runs_dir: RunsDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record file as it is.")] = False,
) -> None:
    """One run: what ran on what data, where it wrote, its timings and its metrics."""
    from rich.console import Console

    record = _find(runs_dir, run_id)
    if as_json:
        typer.echo(record.to_json(), nl=False)
        return
    console = Console(width=max(120, Console().width))
    for label, value in _facts(record):
        console.print(f"[bold]{label:<13}[/] {_escape(value)}", highlight=False, soft_wrap=True)
    console.print(_metrics_table(record))


@runs_app.command("compare")
def compare_command(
    run_a: Annotated[str, typer.Argument(metavar="A", help="The baseline run (id or prefix).")],
    run_b: Annotated[str, typer.Argument(metavar="B", help="The run compared with it (id or prefix).")],
    runs_dir: RunsDirOption = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric", help="Metrics to show, repeated (default ndcg and recall; 'all': every one)."
        ),
    ] = None,
) -> None:
    """Metric deltas B - A per model and K: paired 95% intervals from per-user files where the data allows."""
    from recsys.experiments.run_compare import compare_runs

    comparison = compare_runs(_find(runs_dir, run_a), _find(runs_dir, run_b))
    names = metric or ["ndcg", "recall"]
    _print_comparison(comparison, metrics=None if "all" in names else set(names))


def _print_comparison(comparison: RunComparison, *, metrics: set[str] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    a, b = comparison.a, comparison.b
    table = Table(
        title=f"B - A: A = {a['id']} ({a['command']}), B = {b['id']} ({b['command']})",
        caption=_escape(comparison.reason),
        title_justify="left",
        caption_justify="left",
    )
    for column in ("model", "metric", "A", "B", "B - A", "paired 95% CI", "users"):
        table.add_column(column, justify="left" if column in ("model", "metric") else "right")
    for row in comparison.rows:
        if metrics is not None and row.metric not in metrics:
            continue
        table.add_row(
            row.model,
            row.metric if row.k is None else f"{row.metric}@{row.k}",
            _number(row.a),
            _number(row.b),
            _number(row.delta, signed=True),
            f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}]"
            if row.ci_low is not None and row.ci_high is not None
            else "-",
            str(row.users) if row.users is not None else "-",
        )
    console = Console(width=max(120, Console().width))
    console.print(table)
    for note in comparison.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def _find(runs_dir: Path | None, prefix: str) -> RunRecord:
    from recsys.experiments.runs import RunLookupError, find_record, runs_folder

    try:
        return find_record(runs_folder(runs_dir), prefix)
    except RunLookupError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_BAD_RUN) from None


def _facts(record: RunRecord) -> list[tuple[str, str]]:
    data = record.data
    sizes = ", ".join(f"{data[key]:,} {key}" for key in ("users", "items", "interactions") if key in data)
    facts = [
        ("run", record.id),
        ("date", f"{record.created_at} (UTC)"),
        ("command", f"recsys {record.command}"),
        ("data", f"fingerprint {data.get('fingerprint', '-')}" + (f"; {sizes}" if sizes else "")),
    ]
    facts += [(f"  {key}", str(path)) for key, path in dict(data.get("files") or {}).items()]
    facts.append(("commit", _commit(record, full=True)))
    facts += [("options", _inline(record.options))]
    facts += [(f"wrote {key}", value) for key, value in record.outputs.items()]
    facts.append(
        ("timings", ", ".join(f"{name} {seconds:.1f} s" for name, seconds in record.timings.items()))
    )
    facts.append(("versions", _inline(record.versions)))
    return facts


def _metrics_table(record: RunRecord) -> Any:
    """One row per model and cut-off, one column per metric, as ``recsys evaluate`` prints them."""
    from rich.table import Table

    from recsys.experiments.runs import split_metric

    keys = [split_metric(key) for values in record.metrics.values() for key in values]
    names = list(dict.fromkeys(name for name, _ in keys))
    cuts = sorted({cut for _, cut in keys}, key=lambda cut: (cut is None, cut or 0))
    table = Table(title="test metrics", title_justify="left")
    table.add_column("model")
    table.add_column("k", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for model, values in record.metrics.items():
        for cut in cuts:
            row = [values.get(name if cut is None else f"{name}@{cut}") for name in names]
            if any(value is not None for value in row):
                table.add_row(model, "-" if cut is None else str(cut), *(_number(value) for value in row))
    return table


def _commit(record: RunRecord, *, full: bool = False) -> str:
    """The commit, short in tables (``*``: uncommitted changes); ``-`` outside a git checkout."""
    if record.git is None:
        return "- (not a git checkout)" if full else "-"
    commit, dirty = str(record.git["commit"]), bool(record.git["dirty"])
    if full:
        return commit + (" (uncommitted changes)" if dirty else "")
    return commit[:10] + ("*" if dirty else "")


def _inline(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items() if value not in (None, "", [], {}))


def _number(value: float | None, *, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _error(message: str) -> None:
    _stderr().print(f"[bold red]Error:[/] {_escape(message)}", highlight=False, soft_wrap=True)


def _escape(text: str) -> str:
    """Paths and advice such as ``the [tensorboard] extra`` are text, not rich markup."""
    from rich.markup import escape

    return escape(text)


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)
