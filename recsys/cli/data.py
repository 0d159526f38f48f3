"""``recsys validate`` and ``recsys convert``: check customer data, turn public datasets into the contract."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from recsys.cli._errors import data_errors
from recsys.cli.app import app


class AdapterName(StrEnum):
    """The layouts ``recsys convert`` reads (keys of ``recsys.data.adapters.ADAPTERS``)."""

    movielens = "movielens"
    amazon = "amazon"


ItemsOption = Annotated[
    Path, typer.Option("--items", help="Items table: Parquet, CSV or JSON lines (.parquet/.csv/.jsonl).")
]
InteractionsOption = Annotated[
    Path, typer.Option("--interactions", help="Interactions table: Parquet, CSV or JSON lines.")
]


@app.command()
def validate(items: ItemsOption, interactions: InteractionsOption) -> None:
    """Check two tables against the data contract; list every problem (exit code 2) or summarise them."""
    import polars as pl
    from rich.console import Console

    from recsys.data import schema as S
    from recsys.data.dataset import Dataset
    from recsys.data.loading import load_tables

    with data_errors():
        item_table, event_table = load_tables(items, interactions)
    data = Dataset.from_tables(item_table, event_table)
    counts = data.summary()
    first, last = event_table.select(
        pl.col(S.TIMESTAMP).min().alias("a"), pl.col(S.TIMESTAMP).max().alias("b")
    ).row(0)
    interacted = data.interactions.get_column(S.ITEM_IDX).n_unique()
    span = f"timestamps {first} to {last}"
    if S.are_unix_seconds(event_table.get_column(S.TIMESTAMP)):
        dates = [datetime.fromtimestamp(t, tz=UTC).date().isoformat() for t in (first, last)]
        span += f" ({dates[0]} to {dates[1]} as Unix seconds)"
    console = Console()
    console.print(
        f"[green]Valid.[/] {counts['users']:,} users, {counts['items']:,} items "
        f"({interacted:,} with interactions), {counts['interactions']:,} interactions; {span}.",
        highlight=False,
    )
    for name, table, contract in (
        ("items", item_table, [*S.ITEM_REQUIRED, *S.ITEM_OPTIONAL]),
        ("interactions", event_table, [*S.INTERACTION_REQUIRED, *S.INTERACTION_OPTIONAL]),
    ):
        extra = [c for c in table.columns if c not in contract]
        if extra:
            console.print(f"Extra {name} columns carried along: {', '.join(extra)}", highlight=False)


@app.command()
def convert(
    adapter: Annotated[AdapterName, typer.Option("--adapter", help="Layout of the source folder.")],
    source: Annotated[Path, typer.Option("--source", help="Folder with the dataset in its public layout.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write items.parquet and interactions.parquet.")
    ],
) -> None:
    """Convert a public dataset layout into contract Parquet files; nothing is written if invalid."""
    from recsys.data.loading import convert as convert_dataset

    with data_errors():
        written = convert_dataset(adapter.value, source, out)
    for path in written:
        typer.echo(f"wrote {path}")
