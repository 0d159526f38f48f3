"""Load customer tables into a validated :class:`~recsys.data.dataset.Dataset`, and the bundled demo data.

This is the one entry point every command and pipeline uses to read data: it reads Parquet, CSV or
JSON lines (chosen by suffix), validates both tables against the contract, reporting every problem
at once, and encodes them.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.data import schema as S
from recsys.data.adapters import ADAPTERS
from recsys.data.dataset import Dataset
from recsys.data.io import read_table, write_parquet
from recsys.data.validation import validate_tables

BUNDLED = Path(__file__).resolve().parents[1] / "datasets" / "movielens-small"
"""The bundled MovieLens ml-latest-small demo dataset (non-commercial license: see its LICENSE.txt)."""


def load_tables(items: str | Path, interactions: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read and validate the two contract tables; return them normalised to contract dtypes.

    Raises
    ------
    DataFileError
        A file is missing, has an unsupported suffix or cannot be parsed at all.
    DataValidationError
        The tables break the contract; lists every problem with file, column and row numbers.
    """
    items_frame = read_table(items)
    interactions_frame = read_table(interactions)
    return validate_tables(
        items_frame,
        interactions_frame,
        items_source=str(items),
        interactions_source=str(interactions),
    )


def load_dataset(items: str | Path, interactions: str | Path) -> Dataset:
    """Read, validate and encode the two contract tables.

    Examples
    --------
    >>> data = load_dataset(*bundled_paths())
    >>> data.summary()
    {'users': 610, 'items': 9742, 'interactions': 100836}
    """
    return Dataset.from_tables(*load_tables(items, interactions))


def bundled_paths() -> tuple[Path, Path]:
    """``(items, interactions)`` Parquet paths of the bundled MovieLens demo dataset.

    >>> [p.name for p in bundled_paths()]
    ['items.parquet', 'interactions.parquet']
    """
    items, interactions = BUNDLED / "items.parquet", BUNDLED / "interactions.parquet"
    if not (items.is_file() and interactions.is_file()):
        raise FileNotFoundError(f"bundled demo data missing from {BUNDLED}; reinstall recsys")
    return items, interactions


def convert(adapter: str, source: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Turn a public dataset layout into contract Parquet files ``out/items.parquet`` and
    ``out/interactions.parquet``, validating first: on invalid data nothing is written.

    ``adapter`` is a key of :data:`recsys.data.adapters.ADAPTERS` (``"movielens"``, ``"amazon"``).
    Interactions are written sorted by (user, timestamp), stable, which compresses well.
    """
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r} (use {', '.join(sorted(ADAPTERS))})")
    source, out = Path(source), Path(out)
    items, interactions = ADAPTERS[adapter](source)
    items, interactions = validate_tables(
        items.lazy(),
        interactions.lazy(),
        items_source=f"{adapter} items from {source}",
        interactions_source=f"{adapter} interactions from {source}",
    )
    interactions = interactions.sort(S.USER_ID, S.TIMESTAMP, maintain_order=True)
    return write_parquet(items, out / "items.parquet"), write_parquet(
        interactions, out / "interactions.parquet"
    )
