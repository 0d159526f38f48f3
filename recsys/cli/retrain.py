"""``recsys retrain --config retrain.toml``: the nightly job (recsys.pipeline.retrain, docs/NIGHTLY.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys.cli.app import app
from recsys.cli.runs import RunsDirOption


def _log_sink(work_dir: Path, *, echo: bool) -> Any:
    """One JSON line per event into ``work_dir/logs/retrain.jsonl``, and on stderr unless a person
    watches it (then a one-line progress display per event instead)."""
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tty = sys.stderr.isatty()
    console = None
    if tty:
        from rich.console import Console

        console = Console(stderr=True)

    def log(event: dict[str, Any]) -> None:
        line = json.dumps(event, default=str)
        with (logs / "retrain.jsonl").open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        if console is not None:
            fields = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("time", "event"))
            console.print(f"[bold]retrain[/bold] {event['event']} {fields}", highlight=False)
        elif echo:
            print(line, file=sys.stderr, flush=True)

    return log


@app.command()
def retrain(
    ctx: typer.Context,
    config: Annotated[
        Path, typer.Option("--config", help="The nightly job's config (TOML; docs/NIGHTLY.md).")
    ],
    runs_dir: RunsDirOption = None,
) -> None:
    """Fold the inbox into the data, retrain, gate against production, publish: the nightly job.

    Exit codes: 0 published (or nothing new), 2 bad input, 3 the gate kept production, 1 failure.
    """
    from rich.console import Console

    from recsys.config import ConfigError
    from recsys.pipeline.lock import LockHeld
    from recsys.pipeline.retrain import EXIT_FAILED, run_retrain
    from recsys.pipeline.retrain_config import load_retrain_config

    console = Console(stderr=True)
    try:
        settings = load_retrain_config(config)
    except ConfigError as exc:
        console.print(f"[bold red]Invalid config:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        summary = run_retrain(settings, log=_log_sink(settings.work_dir, echo=True))
    except LockHeld as exc:
        console.print(f"[bold red]Not started:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    _record(ctx, summary.to_json(), runs_dir=runs_dir)
    console.print(f"retrain: {summary.outcome} (exit {summary.exit_code})", highlight=False)
    raise typer.Exit(summary.exit_code)


def _record(ctx: typer.Context, summary: dict[str, Any], *, runs_dir: Path | None) -> None:
    """The experiment record of the run (``recsys runs list``); never fails the run."""
    from recsys.experiments.runs import Invocation, new_record, record_run

    gate = summary.get("gate") or {}
    metrics = {name: gate[name] for name in ("candidate", "production") if gate.get(name)}
    record = new_record(
        command="retrain",
        run=Invocation(
            options=ctx.params, outputs={"bundle": summary.get("bundle")}, seconds=summary["seconds"]
        ),
        data={**summary["data"], "ingest": summary["ingest"], "items_embedded": summary["items_embedded"]},
        metrics=metrics,
        timings={name: stage["seconds"] for name, stage in summary.get("stages", {}).items()},
        extra={key: summary.get(key) for key in ("outcome", "exit_code", "published", "gate", "error")},
    )
    record_run(record, runs_dir=runs_dir, warn=lambda message: print(f"Warning: {message}", file=sys.stderr))
