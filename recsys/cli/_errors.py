"""Turn data errors into a readable problem table and exit code 2, for every command that loads data.

Usage in a command::

    with data_errors():
        dataset = load_dataset(items, interactions)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from recsys.data.validation import DataValidationError

EXIT_INVALID_DATA = 2


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Catch ``DataValidationError`` / ``DataFileError``, print them to stderr, exit with code 2.

    The command must write its outputs after the ``with`` block (or atomically inside it), so
    invalid data leaves nothing written.
    """
    # Imported here so that ``recsys --help`` does not import Polars.
    from recsys.data.io import DataFileError
    from recsys.data.validation import DataValidationError

    try:
        yield
    except DataValidationError as err:
        print_problems(err)
        raise typer.Exit(EXIT_INVALID_DATA) from None
    except DataFileError as err:
        _console().print(f"[bold red]Cannot read data:[/] {err}", markup=True, highlight=False)
        raise typer.Exit(EXIT_INVALID_DATA) from None


def print_problems(err: DataValidationError) -> None:
    """Print a ``DataValidationError`` as a table: file, column, problem, rows affected, example rows."""
    from rich.table import Table

    table = Table(title=f"{len(err.problems)} data problem(s)", title_justify="left", show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("column")
    table.add_column("problem", overflow="fold")
    table.add_column("rows", justify="right")
    table.add_column("example rows (1-based)", overflow="fold")
    for p in err.problems:
        count = f"{p.count:,}" if p.count else ""
        examples = ", ".join(map(str, p.rows)) + (", ..." if p.count > len(p.rows) else "")
        table.add_row(p.source, p.column or "", p.message, count, examples if p.rows else "")
    console = _console()
    console.print(table)
    console.print("Invalid data (exit code 2); nothing was written.", style="bold red")


def _console() -> Console:
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        # Logs and pipes: do not fold long paths and messages into an 80-column table.
        console = Console(stderr=True, width=200)
    return console
