"""The Typer application that every ``recsys.cli`` module registers its commands on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="recsys",
    help="Personalized e-commerce recommendations: validate data, evaluate, train, serve.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
