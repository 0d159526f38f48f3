"""``recsys models list|current|rollback``: the published model bundles and which one is served."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from recsys.cli.app import app

models_app = typer.Typer(
    name="models",
    help="Published model bundles in the BentoML model store ($BENTOML_HOME) and the current one.",
    no_args_is_help=True,
)
app.add_typer(models_app)


def _metrics(metrics: dict[str, Any]) -> str:
    flat: list[str] = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, dict):
            flat.extend(
                f"{key}.{k}={v:.4g}" if isinstance(v, float) else f"{key}.{k}={v}" for k, v in value.items()
            )
        else:
            flat.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={json.dumps(value)}")
    return ", ".join(flat)


@models_app.command("list")
def list_models() -> None:
    """Every published version, oldest first, with its metrics; the current one is marked with *."""
    from rich.console import Console
    from rich.table import Table

    from recsys.pipeline import registry

    versions = registry.list_versions()
    if not versions:
        typer.echo(f"No model published in {registry.bentoml_home()}: run `recsys train` first.", err=True)
        raise typer.Exit(1)
    current = registry.current().tag
    table = Table(title=f"{registry.MODEL_NAME} in {registry.bentoml_home()}", title_justify="left")
    table.add_column("")
    table.add_column("tag", overflow="fold")
    table.add_column("created_at")
    table.add_column("metrics", overflow="fold")
    for v in versions:
        table.add_row(
            "*" if v.tag == current else "",
            v.tag,
            str(v.metadata.get("created_at", v.created_at)),
            _metrics(dict(v.metadata.get("metrics") or {})),
        )
    Console(width=200).print(table)


@models_app.command("current")
def current_model() -> None:
    """Print the tag of the version being served (the current pointer), alone."""
    from recsys.pipeline import registry

    try:
        typer.echo(registry.current().tag)
    except registry.RegistryError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from None


@models_app.command("rollback")
def rollback(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Online store the service reads (sqlite:///path.db or redis://host:port/db); "
            "default $RECSYS_ONLINE_STORE_URL or sqlite in $BENTOML_HOME/recsys/online.db.",
        ),
    ] = None,
) -> None:
    """Make the previously current version current again, with its features; running services
    follow within a second."""
    from recsys.pipeline import registry
    from recsys.pipeline.publish import PublishError
    from recsys.pipeline.publish import rollback as roll_back

    try:
        before, after = roll_back(store_url=store)
    except (registry.RegistryError, PublishError) as err:
        typer.echo(f"Cannot roll back: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{after.tag} is current again (was {before.tag})")
