"""Vectorised computation of the base frames and features, shared by offline and online paths.

``user_states`` aggregates interactions into user states as of many cutoffs at once.
``user_features`` / ``item_features`` / ``pair_features`` evaluate the declarations of
``definitions`` on those frames. The online path calls the same ``user_features`` and
``pair_features`` on the record read from the store, so training and serving share one definition.

>>> import polars as pl
>>> inter = pl.DataFrame({"user_id": ["u", "u", "u"], "item_id": ["a", "b", "a"],
...                       "timestamp": [1, 2, 5]})
>>> items = pl.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]})
>>> keys = pl.DataFrame({"user_id": ["u", "u"], "cutoff": [3, 9]})
>>> config = D.FeatureConfig(time_unit="steps")
>>> states = user_states(inter, items, keys, config=config)
>>> states.select("cutoff", "n_events", "n_items", "last_items").rows()
[(3, 2, 2, ['a', 'b']), (9, 3, 2, ['a', 'b', 'a'])]
>>> user_features(states, config=config).get_column("user_since_last").to_list()
[1.0, 4.0]
"""

from __future__ import annotations

import numpy as np
import polars as pl

from feature_store import definitions as D
from recsys.data import schema as S

ROW = "_row"  # order of events within equal timestamps: the input row order
KEY = "_key"  # row of a user state that a pair refers to

ITEM_ATTRS: dict[str, pl.DataType] = {
    S.CATEGORY: pl.String(),
    S.BRAND: pl.String(),
    S.PRICE: pl.Float64(),
    S.DESCRIPTION: pl.String(),
}


def item_attributes(items: pl.DataFrame) -> pl.DataFrame:
    """Items with every optional attribute present (nulls where missing) and their row index."""
    if S.ITEM_ID not in items.columns:
        raise ValueError(f"items table has no {S.ITEM_ID!r} column")
    missing = [
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in ITEM_ATTRS.items() if name not in items
    ]
    title = pl.col(S.TITLE) if S.TITLE in items.columns else pl.lit(None, dtype=pl.String)
    return items.with_columns(missing).select(
        pl.col(S.ITEM_ID),
        pl.int_range(pl.len(), dtype=pl.Int64).alias(D.ITEM_IDX_COL),
        *(pl.col(name).cast(dtype) for name, dtype in ITEM_ATTRS.items()),
        (
            title.fill_null("").str.len_chars().cast(pl.Int64)
            + pl.col(S.DESCRIPTION).cast(pl.String).fill_null("").str.len_chars().cast(pl.Int64)
        ).alias(D.TEXT_LEN),
    )


def _events(interactions: pl.DataFrame) -> pl.DataFrame:
    for name in (S.USER_ID, S.ITEM_ID, S.TIMESTAMP):
        if name not in interactions.columns:
            raise ValueError(f"interactions table has no {name!r} column")
    event = pl.col(S.EVENT) if S.EVENT in interactions.columns else pl.lit(None, dtype=pl.String)
    return interactions.select(
        pl.col(S.USER_ID).cast(pl.String),
        pl.col(S.ITEM_ID).cast(pl.String),
        pl.col(S.TIMESTAMP).cast(pl.Int64),
        event.cast(pl.String).alias(S.EVENT),
    ).with_row_index(ROW)


def _as_map(frame: pl.DataFrame, group: list[str], key: str, name: str) -> pl.DataFrame:
    return (
        frame.filter(pl.col(key).is_not_null())
        .group_by([*group, key])
        .agg(pl.len().cast(pl.Int64).alias(D.MAP_COUNT))
        .sort([*group, key])
        .group_by(group, maintain_order=True)
        .agg(pl.struct(pl.col(key).alias(D.MAP_KEY), pl.col(D.MAP_COUNT)).alias(name))
    )


def user_states(
    interactions: pl.DataFrame, items: pl.DataFrame, keys: pl.DataFrame, *, config: D.FeatureConfig
) -> pl.DataFrame:
    """User states as of each ``(user_id, cutoff)`` of ``keys``, from events strictly before it.

    Returns one row per distinct key with ``STATE_SCHEMA`` columns plus ``cutoff``. Users without
    events before their cutoff get the empty state (zero counts, null last time, empty lists).
    """
    keys = keys.select(pl.col(S.USER_ID).cast(pl.String), pl.col(D.NOW).cast(pl.Int64)).unique(
        maintain_order=True
    )
    group = [S.USER_ID, D.NOW]
    attrs = item_attributes(items).select(S.ITEM_ID, S.CATEGORY, S.PRICE)
    history = (
        keys.join(_events(interactions), on=S.USER_ID, how="inner")
        .filter(pl.col(S.TIMESTAMP) < pl.col(D.NOW))
        .join(attrs, on=S.ITEM_ID, how="left")
        .sort([*group, S.TIMESTAMP, ROW])
    )
    main = history.group_by(group, maintain_order=True).agg(
        pl.len().cast(pl.Int64).alias(D.N_EVENTS),
        pl.col(S.ITEM_ID).n_unique().cast(pl.Int64).alias(D.N_ITEMS),
        pl.col(S.TIMESTAMP).max().alias(D.LAST_TS),
        pl.col(S.PRICE).sum().alias(D.PRICE_SUM),
        pl.col(S.PRICE).count().cast(pl.Int64).alias(D.PRICE_N),
        pl.col(S.ITEM_ID).tail(config.last_n).alias(D.LAST_ITEMS),
        pl.col(S.ITEM_ID).unique(maintain_order=True).alias(D.SEEN),
    )
    events = _as_map(history, group, S.EVENT, D.EVENTS)
    categories = _as_map(history, group, S.CATEGORY, D.CATEGORIES)
    empty_map = pl.lit([], dtype=D.MAP_DTYPE)
    return (
        keys.join(main, on=group, how="left")
        .join(events, on=group, how="left")
        .join(categories, on=group, how="left")
        .with_columns(
            pl.col(D.N_EVENTS, D.N_ITEMS, D.PRICE_N).fill_null(0),
            pl.col(D.PRICE_SUM).fill_null(0.0),
            pl.col(D.EVENTS, D.CATEGORIES).fill_null(empty_map),
            pl.col(D.LAST_ITEMS, D.SEEN).fill_null(pl.lit([], dtype=pl.List(pl.String))),
        )
        .select(*D.STATE_SCHEMA, D.NOW)
        .cast(D.STATE_SCHEMA)  # type: ignore[arg-type]
    )


def empty_state(user_ids: list[str]) -> pl.DataFrame:
    """The state of users with no events."""
    n = len(user_ids)
    return pl.DataFrame(
        {
            S.USER_ID: user_ids,
            D.N_EVENTS: [0] * n,
            D.N_ITEMS: [0] * n,
            D.LAST_TS: [None] * n,
            D.PRICE_SUM: [0.0] * n,
            D.PRICE_N: [0] * n,
            D.EVENTS: [[]] * n,
            D.CATEGORIES: [[]] * n,
            D.LAST_ITEMS: [[]] * n,
            D.SEEN: [[]] * n,
        },
        schema=D.STATE_SCHEMA,
    )


def user_features(states: pl.DataFrame, *, config: D.FeatureConfig) -> pl.DataFrame:
    """User features of each state row (``states`` must carry a ``cutoff`` column: the as-of time)."""
    return states.select(
        pl.col(S.USER_ID), pl.col(D.NOW), *(f.evaluate() for f in D.features_of(config, "user"))
    )


def item_base(
    interactions: pl.DataFrame, items: pl.DataFrame, cutoffs: pl.DataFrame, *, config: D.FeatureConfig
) -> pl.DataFrame:
    """Base frame of each distinct ``(item_id, cutoff)`` of ``cutoffs``.

    Counts of events strictly before ``cutoff - offset`` come from an as-of join on per-item
    cumulative counts, so the cost is linear in events + queries, whatever the number of cutoffs.
    """
    queries = cutoffs.select(pl.col(S.ITEM_ID).cast(pl.String), pl.col(D.NOW).cast(pl.Int64)).unique(
        maintain_order=True
    )
    ev = _events(interactions)
    # one row per (item, distinct time) so that the as-of match is unique
    cum = (
        ev.group_by(S.ITEM_ID, S.TIMESTAMP)
        .agg(pl.len().cast(pl.Int64).alias("_n"))
        .sort(S.ITEM_ID, S.TIMESTAMP)
        .with_columns(pl.col("_n").cum_sum().over(S.ITEM_ID).alias("_cum"))
        .select(S.ITEM_ID, S.TIMESTAMP, "_cum")
        .sort(S.TIMESTAMP)
    )
    first = ev.group_by(S.ITEM_ID).agg(pl.col(S.TIMESTAMP).min().alias(D.FIRST_TS))
    base = queries.with_row_index("_q")
    for offset in config.offsets():
        probe = base.select("_q", S.ITEM_ID, (pl.col(D.NOW) - offset).alias(S.TIMESTAMP)).sort(S.TIMESTAMP)
        hit = probe.join_asof(
            cum,
            on=S.TIMESTAMP,
            by=S.ITEM_ID,
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,  # both sides are sorted by time just above
        )
        base = base.join(
            hit.select("_q", pl.col("_cum").fill_null(0).alias(D.n_before(offset))), on="_q", how="left"
        )
    return (
        base.join(first, on=S.ITEM_ID, how="left")
        .with_columns(pl.when(pl.col(D.FIRST_TS) < pl.col(D.NOW)).then(pl.col(D.FIRST_TS)).alias(D.FIRST_TS))
        .join(item_attributes(items), on=S.ITEM_ID, how="left")
        .sort("_q")
        .drop("_q")
    )


def item_features(
    interactions: pl.DataFrame, items: pl.DataFrame, cutoffs: pl.DataFrame, *, config: D.FeatureConfig
) -> pl.DataFrame:
    """Item features of each distinct ``(item_id, cutoff)``, plus ``item_idx`` (the embedding row)."""
    base = item_base(interactions, items, cutoffs, config=config)
    return base.select(
        pl.col(S.ITEM_ID),
        pl.col(D.NOW),
        pl.col(D.ITEM_IDX_COL),
        *(f.evaluate() for f in D.features_of(config, "item")),
    )


def _profiles(states: pl.DataFrame, attrs: pl.DataFrame, embeddings: np.ndarray) -> np.ndarray:
    """(n_states, dim) L2-normalised mean embedding of each state's last items (zero rows if none)."""
    last = (
        states.select(pl.int_range(pl.len(), dtype=pl.Int64).alias(KEY), pl.col(D.LAST_ITEMS))
        .explode(D.LAST_ITEMS)
        .join(attrs.select(S.ITEM_ID, D.ITEM_IDX_COL), left_on=D.LAST_ITEMS, right_on=S.ITEM_ID, how="inner")
        .sort(KEY, maintain_order=True)
    )
    keys = last.get_column(KEY).to_numpy()
    rows = last.get_column(D.ITEM_IDX_COL).to_numpy()
    out = np.zeros((states.height, embeddings.shape[1]), dtype=np.float64)
    np.add.at(out, keys, embeddings[rows].astype(np.float64))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def pair_features(
    states: pl.DataFrame,
    pairs: pl.DataFrame,
    attrs: pl.DataFrame,
    *,
    config: D.FeatureConfig,
    embeddings: np.ndarray | None = None,
) -> pl.DataFrame:
    """User×item features of ``pairs`` (columns ``_key``: row of ``states``, ``item_id``), in order.

    ``attrs`` is ``item_attributes(items)`` (or the item features of a snapshot, which carry the
    same columns); ``embeddings`` rows follow its ``item_idx``.
    """
    n_states = states.height
    keyed = states.with_columns(pl.int_range(n_states, dtype=pl.Int64).alias(KEY))
    attr = attrs.select(S.ITEM_ID, D.ITEM_IDX_COL, S.CATEGORY, S.BRAND)
    last = keyed.select(KEY, pl.col(D.LAST_ITEMS).list.last().alias(S.ITEM_ID)).join(
        attr.select(
            S.ITEM_ID, pl.col(S.CATEGORY).alias(D.LAST_CATEGORY), pl.col(S.BRAND).alias(D.LAST_BRAND)
        ),
        on=S.ITEM_ID,
        how="left",
    )
    cats = (
        keyed.select(KEY, D.CATEGORIES)
        .explode(D.CATEGORIES)
        .select(
            KEY,
            pl.col(D.CATEGORIES).struct.field(D.MAP_KEY).alias(S.CATEGORY),
            pl.col(D.CATEGORIES).struct.field(D.MAP_COUNT).alias(D.CAT_COUNT),
        )
        .drop_nulls(S.CATEGORY)
    )
    seen = (
        keyed.select(KEY, pl.col(D.SEEN).alias(S.ITEM_ID))
        .explode(S.ITEM_ID)
        .drop_nulls(S.ITEM_ID)
        .with_columns(pl.lit(True).alias(D.IS_SEEN))
    )
    frame = (
        pairs.select(pl.col(KEY).cast(pl.Int64), pl.col(S.ITEM_ID).cast(pl.String))
        .with_row_index("_p")
        .join(attr, on=S.ITEM_ID, how="left")
        .join(keyed.select(KEY, D.N_EVENTS), on=KEY, how="left")
        .join(last.drop(S.ITEM_ID), on=KEY, how="left")
        .join(cats, on=[KEY, S.CATEGORY], how="left")
        .join(seen, on=[KEY, S.ITEM_ID], how="left")
        .with_columns(pl.col(D.CAT_COUNT).fill_null(0), pl.col(D.IS_SEEN).fill_null(False))
        .sort("_p")
    )
    cosine = pl.Series(D.COSINE, [None] * frame.height, dtype=pl.Float64)
    if embeddings is not None:
        profiles = _profiles(states, attr, embeddings)
        keys = frame.get_column(KEY).to_numpy()
        idx = frame.get_column(D.ITEM_IDX_COL).to_numpy(allow_copy=True)
        known = ~frame.get_column(D.ITEM_IDX_COL).is_null().to_numpy()
        has_profile = np.linalg.norm(profiles, axis=1) > 0
        ok = known & has_profile[keys]
        values = np.full(frame.height, np.nan)
        rows = idx[ok].astype(np.int64)
        values[ok] = np.einsum("ij,ij->i", embeddings[rows].astype(np.float64), profiles[keys[ok]])
        cosine = pl.Series(D.COSINE, values).fill_nan(None)
    frame = frame.with_columns(cosine)
    return frame.select(*(f.evaluate() for f in D.features_of(config, "user_item")))
