"""Offline store: point-in-time training features and Parquet snapshots.

``build_features`` gives each training row ``(user_id, item_id, cutoff)`` the user, item and
user×item features computed only from events strictly before ``cutoff`` (the label time), all rows
at once. ``write_snapshot`` materialises the tables of one cutoff into a folder, atomically; the
online store is loaded from such a folder. A snapshot also says how much of the online store's event
log its interactions contain (``events_through``), so that a load replays exactly the rest.

>>> import polars as pl
>>> inter = pl.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "b", "a"],
...                       "timestamp": [1, 2, 3]})
>>> items = pl.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"], "category": ["x", "y"]})
>>> rows = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "cutoff": [2, 3]})
>>> out = build_features(rows, interactions=inter, items=items, config=FeatureConfig(time_unit="steps"))
>>> out.select("user_n_events", "item_pop_all", "ui_seen", "ui_category_share").rows()
[(1, 1, 1, 1.0), (2, 1, 1, 0.5)]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feature_store import compute as C
from feature_store import definitions as D
from feature_store.definitions import FeatureConfig
from recsys.config import from_dict
from recsys.data import schema as S
from recsys.data.io import atomic_path

USER_STATES = "user_states.parquet"
USER_FEATURES = "user_features.parquet"
ITEM_FEATURES = "item_features.parquet"
ITEM_ATTRIBUTES = "items.parquet"
MANIFEST = "manifest.json"
ITEM_CUTOFF = "item_cutoff"


def _check_embeddings(embeddings: np.ndarray | None, items: pl.DataFrame) -> None:
    if embeddings is not None and (embeddings.ndim != 2 or embeddings.shape[0] != items.height):
        raise ValueError(
            f"embeddings must have shape (n_items={items.height}, dim), got {tuple(embeddings.shape)}"
        )


def build_features(
    rows: pl.DataFrame,
    *,
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    config: FeatureConfig,
    embeddings: np.ndarray | None = None,
) -> pl.DataFrame:
    """Point-in-time join: ``rows`` with every feature as of just before each row's ``cutoff``.

    Parameters
    ----------
    rows
        ``user_id``, ``item_id``, ``cutoff`` (Int64, same unit as the timestamps; usually the label
        time) and any other columns, which are kept. Events at or after ``cutoff`` are never used.
        An optional ``item_cutoff`` column sets the as-of time of the item features separately:
        with order-only timestamps (Amazon), positions of different users are not comparable, so
        pass e.g. a cutoff past every training event and only the training interactions.
    interactions, items
        Contract tables; ``embeddings`` (n_items, dim), L2-normalised, rows in ``items`` order.

    Returns
    -------
    ``rows`` in their order, followed by the features of ``feature_schema(config)``.
    """
    for name in (S.USER_ID, S.ITEM_ID, D.NOW):
        if name not in rows.columns:
            raise ValueError(f"rows has no {name!r} column (needs user_id, item_id, cutoff)")
    if rows.get_column(D.NOW).null_count():
        raise ValueError(f"rows: column {D.NOW!r} has null values")
    _check_embeddings(embeddings, items)
    keys = rows.select(pl.col(S.USER_ID).cast(pl.String), pl.col(D.NOW).cast(pl.Int64))
    states = C.user_states(interactions, items, keys, config=config)
    users = C.user_features(states, config=config)
    item_time = ITEM_CUTOFF if ITEM_CUTOFF in rows.columns else D.NOW
    if rows.get_column(item_time).null_count():
        raise ValueError(f"rows: column {item_time!r} has null values")
    item_keys = rows.select(pl.col(S.ITEM_ID).cast(pl.String), pl.col(item_time).cast(pl.Int64).alias(D.NOW))
    item_feats = (
        C.item_features(interactions, items, item_keys, config=config)
        .drop(D.ITEM_IDX_COL)
        .rename({D.NOW: item_time})
    )
    key_of = states.select(S.USER_ID, D.NOW).with_row_index(C.KEY).with_columns(pl.col(C.KEY).cast(pl.Int64))
    pairs = rows.select(
        pl.col(S.USER_ID).cast(pl.String), pl.col(S.ITEM_ID).cast(pl.String), pl.col(D.NOW).cast(pl.Int64)
    ).join(key_of, on=[S.USER_ID, D.NOW], how="left", maintain_order="left")
    pair = C.pair_features(states, pairs, C.item_attributes(items), config=config, embeddings=embeddings)
    typed = rows.with_columns(
        pl.col(S.USER_ID).cast(pl.String),
        pl.col(S.ITEM_ID).cast(pl.String),
        pl.col(*{D.NOW, item_time}).cast(pl.Int64),
    )
    out = typed.join(users, on=[S.USER_ID, D.NOW], how="left", maintain_order="left").join(
        item_feats, on=[S.ITEM_ID, item_time], how="left", maintain_order="left"
    )
    return pl.concat([out, pair], how="horizontal")


@dataclass(frozen=True)
class Snapshot:
    """A materialised feature folder: the tables of every user and item as of ``cutoff``.

    ``events_through`` is the highest sequence number of the online store's event log that the
    snapshot's interactions contain (``OnlineStore.events_after`` reads the log), or ``None`` when
    they were read from files that hold none of it, as ``recsys train``'s are. A load replays every
    logged event above it, whatever its timestamp.
    """

    path: Path
    cutoff: int
    config: FeatureConfig
    events_through: int | None = None

    @classmethod
    def open(cls, path: str | Path) -> Snapshot:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{path}: not a feature snapshot (no {MANIFEST})")
        manifest = json.loads(manifest_path.read_text())
        config_data = dict(manifest["config"])
        for name in ("windows", "event_types"):
            config_data[name] = tuple(config_data[name])
        through = manifest.get("events_through")
        return cls(
            path=path,
            cutoff=int(manifest["cutoff"]),
            config=from_dict(FeatureConfig, config_data),
            events_through=None if through is None else int(through),
        )

    def user_states(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / USER_STATES)

    def user_features(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / USER_FEATURES)

    def item_features(self) -> pl.DataFrame:
        """Item features plus ``item_idx``, as of the cutoff."""
        return pl.read_parquet(self.path / ITEM_FEATURES)

    def item_attributes(self) -> pl.DataFrame:
        """What user×item features read of the items (id, idx, category, brand, price)."""
        return pl.read_parquet(self.path / ITEM_ATTRIBUTES)


def write_snapshot(
    folder: str | Path,
    *,
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    cutoff: int,
    config: FeatureConfig,
    events_through: int | None = None,
) -> Snapshot:
    """Materialise the features of every user and item as of ``cutoff`` into ``folder``, atomically.

    Readers see either no folder or the complete one; an existing folder is replaced whole.
    ``events_through``: the last event of the online store's log that ``interactions`` contain
    (``Snapshot.events_through``); ``None`` when they contain none of it.
    """
    if events_through is not None and events_through < 0:
        raise ValueError(f"events_through must be a sequence number >= 0, got {events_through}")
    users = interactions.select(pl.col(S.USER_ID).cast(pl.String).unique(maintain_order=True))
    states = C.user_states(
        interactions, items, users.with_columns(pl.lit(cutoff).alias(D.NOW)), config=config
    )
    item_keys = items.select(pl.col(S.ITEM_ID).cast(pl.String), pl.lit(cutoff, dtype=pl.Int64).alias(D.NOW))
    item_feats = C.item_features(interactions, items, item_keys, config=config).drop(D.NOW)
    return write_tables(
        folder,
        states=states,
        item_features=item_feats,
        items=items,
        cutoff=cutoff,
        config=config,
        events_through=events_through,
    )


def write_tables(
    folder: str | Path,
    *,
    states: pl.DataFrame,
    item_features: pl.DataFrame,
    items: pl.DataFrame,
    cutoff: int,
    config: FeatureConfig,
    events_through: int | None = None,
) -> Snapshot:
    """Write a snapshot folder from its computed tables, atomically: ``states`` (``user_states`` of
    every user as of ``cutoff``, first-seen order) and ``item_features`` (every item, catalogue
    order). :func:`write_snapshot` computes them here; ``recsys.pipeline.ray_engine`` on a cluster."""
    if events_through is not None and events_through < 0:
        raise ValueError(f"events_through must be a sequence number >= 0, got {events_through}")
    manifest: dict[str, Any] = {
        "cutoff": int(cutoff),
        "events_through": events_through,
        "config": config.to_json(),
        "features": D.feature_schema(config),
        "users": states.height,
        "items": item_features.height,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        states.drop(D.NOW).write_parquet(tmp / USER_STATES)
        C.user_features(states, config=config).drop(D.NOW).write_parquet(tmp / USER_FEATURES)
        item_features.write_parquet(tmp / ITEM_FEATURES)
        C.item_attributes(items).write_parquet(tmp / ITEM_ATTRIBUTES)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
    return Snapshot(path=Path(folder), cutoff=int(cutoff), config=config, events_through=events_through)


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    raise TypeError(f"not JSON serialisable: {value!r}")
