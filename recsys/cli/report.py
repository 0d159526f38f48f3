"""``recsys report``: the evaluation report of one or several ``recsys evaluate --json`` files.

::

    recsys report RESULTS.json [MORE.json ...] --out DIR [--baseline OLD.json]

writes ``DIR/index.html`` (one self-contained page: inline CSS, charts embedded, no script and no
link out), ``DIR/report.md`` (the same tables, charts under ``DIR/plots/``) and ``DIR/report.json``
(every number the page shows). Several files are shown side by side, models prefixed by the file's
name. ``--baseline`` adds "what changed": each run minus the baseline, with paired 95% intervals
where the run records of both files (``--runs-dir``) kept per-user metrics on the same data and split.
``recsys evaluate ... --report DIR`` writes the same report at the end of an evaluation.

The report is :mod:`recsys.experiments.report`. Exit codes: 0 success; 2 an input that cannot be read
or is not this version's evaluate JSON (the message names the file).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recsys.cli.app import app
from recsys.cli.runs import RunsDirOption

if TYPE_CHECKING:
    from recsys.experiments.report import Baseline

EXIT_BAD_INPUT = 2


@app.command(name="report")
def report_command(
    results: Annotated[
        list[Path], typer.Argument(metavar="RESULTS.json...", help="JSON files of `recsys evaluate --json`.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for index.html, report.md, report.json and plots/.")
    ],
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="An older evaluate JSON: adds what changed since it."),
    ] = None,
    runs_dir: RunsDirOption = None,
) -> None:
    """Write the evaluation report (HTML, Markdown, JSON) of evaluate JSON files."""
    from recsys.experiments.report import ReportError, baseline_for, load_results

    try:
        runs = load_results(results)
        paths = dict(zip(runs, results, strict=True))
        against = None if baseline is None else baseline_for(baseline, paths, results=runs, runs_dir=runs_dir)
    except ReportError as exc:
        _fail(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    write(runs, out, sources={name: str(path) for name, path in paths.items()}, baseline=against)


def write(
    runs: Mapping[str, Mapping[str, Any]],
    out: Path,
    *,
    sources: Mapping[str, str],
    baseline: Baseline | None = None,
) -> None:
    """Build the report of ``runs`` with a progress bar, write it into ``out`` and say where."""
    from rich.console import Console
    from rich.progress import Progress

    from recsys.experiments.report import build_report, write_report

    with Progress(console=Console(stderr=True), transient=True) as progress:
        report = build_report(runs, sources=sources, baseline=baseline, progress=progress)
    write_report(report, out)
    Console().print(f"wrote {out / 'index.html'} (and report.md, report.json, plots/)", highlight=False)


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
