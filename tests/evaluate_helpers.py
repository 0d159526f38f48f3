"""Test data for ``recsys evaluate``: a small dataset whose right answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys.data import schema as S


def write_small_dataset(
    folder: Path, *, n_users: int = 80, n_items: int = 30, seed: int = 0
) -> tuple[Path, Path]:
    """Two communities of users and items, Unix timestamps, 6-9 events per user."""
    rng = np.random.default_rng(seed)
    users, items, stamps = [], [], []
    for user in range(n_users):
        pool = np.arange(n_items // 2) + (0 if user % 2 else n_items // 2)
        chosen = rng.choice(pool, size=int(rng.integers(6, 10)), replace=False)
        start = 1_500_000_000 + int(rng.integers(0, 10**6))
        users += [f"u{user}"] * len(chosen)
        items += [f"i{i}" for i in chosen]
        stamps += sorted((start + rng.integers(0, 10**7, len(chosen))).tolist())
    folder.mkdir(parents=True, exist_ok=True)
    item_path, event_path = folder / "items.parquet", folder / "interactions.parquet"
    pl.DataFrame(
        {S.ITEM_ID: [f"i{i}" for i in range(n_items)], S.TITLE: [f"item {i}" for i in range(n_items)]}
    ).write_parquet(item_path)
    pl.DataFrame(
        {S.USER_ID: users, S.ITEM_ID: items, S.TIMESTAMP: stamps}, schema_overrides={S.TIMESTAMP: pl.Int64}
    ).write_parquet(event_path)
    return item_path, event_path
