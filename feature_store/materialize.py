"""Materialisation: interactions -> offline snapshot -> online store, in one call.

>>> import tempfile, pathlib, polars as pl
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> inter = pl.DataFrame({"user_id": ["u", "v"], "item_id": ["a", "a"], "timestamp": [1, 2]})
>>> items = pl.DataFrame({"item_id": ["a"], "title": ["A"]})
>>> url = f"sqlite:///{root / 'online.db'}"
>>> snap, version = materialize(interactions=inter, items=items, cutoff=3, snapshots=root / "snaps",
...                             url=url, config=FeatureConfig(time_unit="steps"))
>>> snap.path.name, version
('cutoff-3', '2')
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feature_store.definitions import FeatureConfig
from feature_store.offline import Snapshot, write_snapshot
from feature_store.online import open_store


def materialize(
    *,
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    cutoff: int,
    snapshots: str | Path,
    url: str,
    config: FeatureConfig,
) -> tuple[Snapshot, str]:
    """Write the snapshot of ``cutoff`` under ``snapshots/cutoff-<cutoff>`` and load it into ``url``.

    Returns the snapshot and the name of its online version (the newest, which readers use by default).
    """
    snapshot = write_snapshot(
        Path(snapshots) / f"cutoff-{cutoff}",
        interactions=interactions,
        items=items,
        cutoff=cutoff,
        config=config,
    )
    store = open_store(url)
    try:
        return snapshot, store.load(snapshot)
    finally:
        store.close()
