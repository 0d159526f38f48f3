"""The ranker's feature matrix: retriever evidence plus the feature store's declared features.

One row per (user, candidate). Columns, in ``feature_names`` order:

- per source ``S``: ``S_score`` and ``S_rank`` (NaN when ``S`` did not propose the item), and
  ``n_sources``;
- the feature store's numeric user, item and user×item features (``feature_store.definitions``),
  computed from the same user *state* offline and online.

Offline, states are aggregated from histories; online they are read from the store. Item features
are a snapshot matrix computed once when the model is fitted, as of ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl
import scipy.sparse as sp

from feature_store import compute as C
from feature_store import definitions as D
from recsys.candidates.blend import Candidates
from recsys.data import schema as S
from recsys.data.dataset import Histories


def numeric_features(config: D.FeatureConfig, entity: D.Entity) -> list[str]:
    """The declared numeric features of ``entity`` (strings and lists are not ranker inputs)."""
    return [f.name for f in D.features_of(config, entity) if f.dtype.is_numeric()]


@dataclass(frozen=True, eq=False)
class ItemSnapshot:
    """Item features as of ``now`` (row i = item i), with the attributes pair features read.

    ``table`` has the shape of ``feature_store.online.online_items``: item id, ``item_idx``, every
    item feature and the raw category, brand and price, so the serving fast path
    (``feature_store.serving.ServingFeatures``) reads it as it is.
    """

    config: D.FeatureConfig
    table: pl.DataFrame
    embeddings: np.ndarray | None
    now: int

    @classmethod
    def build(
        cls,
        events: pl.DataFrame,
        items: pl.DataFrame,
        *,
        config: D.FeatureConfig,
        now: int,
        embeddings: np.ndarray | None,
    ) -> ItemSnapshot:
        cutoffs = items.select(pl.col(S.ITEM_ID), pl.lit(now, dtype=pl.Int64).alias(D.NOW))
        feats = C.item_features(events, items, cutoffs, config=config).drop(D.NOW)
        attrs = C.item_attributes(items).select(S.ITEM_ID, S.CATEGORY, S.BRAND, S.PRICE)
        table = feats.join(attrs, on=S.ITEM_ID, how="left", maintain_order="left")
        return cls(config, table, embeddings, now)

    @property
    def names(self) -> list[str]:
        """The numeric item features, in feature order."""
        return [f.name for f in D.features_of(self.config, "item") if f.dtype.is_numeric()]

    @cached_property
    def matrix(self) -> np.ndarray:
        """(n_items, len(names)) float32."""
        return self.table.select(pl.col(self.names).cast(pl.Float32)).to_numpy().astype(np.float32)

    @cached_property
    def attrs(self) -> pl.DataFrame:
        return self.table.select(S.ITEM_ID, D.ITEM_IDX_COL, S.CATEGORY, S.BRAND, S.PRICE)


def events_frame(histories: Histories, item_ids: np.ndarray, keys: list[str]) -> pl.DataFrame:
    """Histories as a contract-shaped interactions frame, user ``keys[row]`` for each row."""
    lengths = histories.lengths()
    ts = (
        histories.timestamps
        if histories.timestamps is not None
        else np.arange(len(histories.items), dtype=np.int64) - np.repeat(histories.indptr[:-1], lengths)
    )
    return pl.DataFrame(
        {
            S.USER_ID: np.repeat(np.asarray(keys, dtype=object), lengths).astype(str),
            S.ITEM_ID: item_ids[histories.items].astype(str),
            S.TIMESTAMP: ts.astype(np.int64),
        }
    )


def states_from_histories(
    histories: Histories, items: pl.DataFrame, item_ids: np.ndarray, *, config: D.FeatureConfig, now: int
) -> pl.DataFrame:
    """User states of each history row (user key = row number), as of ``now``."""
    keys = [str(i) for i in range(len(histories))]
    frame = events_frame(histories, item_ids, keys)
    key_frame = pl.DataFrame({S.USER_ID: keys, D.NOW: np.full(len(keys), now, dtype=np.int64)})
    return C.user_states(frame, items, key_frame, config=config)


LAST_ITEM_FEATURES = ("transition_from_last", "text_cosine_to_last")


def feature_names(sources: tuple[str, ...], snapshot: ItemSnapshot) -> list[str]:
    config = snapshot.config
    retriever = [f"{s}_{kind}" for s in sources for kind in ("score", "rank")] + ["n_sources"]
    return retriever + list(LAST_ITEM_FEATURES) + store_features(config)


def last_item_features(
    last: np.ndarray,
    candidates: np.ndarray,
    *,
    transitions: sp.csr_matrix | None,
    embeddings: np.ndarray | None,
) -> np.ndarray:
    """(n, 2): the item-to-item transition weight from each row's last item to its candidate, and
    the text cosine between them (NaN where unknown or there is no last item).

    ``last`` and ``candidates`` are aligned (n,) item rows; ``last`` is -1 for an empty history.
    On sequential shops the next item is mostly a neighbour of the last one, which a history-wide
    score blurs.
    """
    out = np.full((len(last), 2), np.nan, dtype=np.float32)
    ok = last >= 0
    if transitions is not None and ok.any():
        out[ok, 0] = _entries(transitions, last[ok], candidates[ok])
    if embeddings is not None and ok.any():
        out[ok, 1] = np.einsum("ij,ij->i", embeddings[last[ok]], embeddings[candidates[ok]])
    return out


def _entries(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows, cols]`` (0 where there is no entry). When every row is one row (a request: its
    last item) and the matrix's column indices are sorted, a binary search in that row's entries,
    without scipy's fancy-indexing overhead; otherwise scipy's indexing.

    >>> m = sp.csr_matrix(np.array([[0, 2, 1], [0, 0, 3]], dtype=np.float32))
    >>> _entries(m, np.array([0, 0, 0]), np.array([2, 0, 1])).tolist()
    [1.0, 0.0, 2.0]
    """
    if not (rows == rows[0]).all() or not matrix.has_sorted_indices:
        return np.asarray(matrix[rows, cols]).ravel()
    lo, hi = matrix.indptr[rows[0]], matrix.indptr[rows[0] + 1]
    listed, values = matrix.indices[lo:hi], matrix.data[lo:hi]
    if len(listed) == 0:
        return np.zeros(len(cols), dtype=matrix.dtype)
    at = np.minimum(np.searchsorted(listed, cols), len(listed) - 1)
    return np.where(listed[at] == cols, values[at], 0).astype(matrix.dtype)


def store_features(config: D.FeatureConfig) -> list[str]:
    """The feature store's part of the ranker's features, in order: user, item, user×item."""
    return [name for entity in ("user", "item", "user_item") for name in numeric_features(config, entity)]


def retriever_features(candidates: Candidates) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per valid candidate: each source's score and rank, and how many sources proposed it.

    Returns ``(features, rows, cols)`` with the candidate's position in ``candidates.ids``.
    """
    rows, cols = np.nonzero(candidates.ids >= 0)
    n_src = len(candidates.sources)
    ranks = candidates.ranks[rows, cols]  # (n_valid, n_sources)
    out = np.empty((len(rows), 2 * n_src + 1), dtype=np.float32)
    out[:, 0 : 2 * n_src : 2] = candidates.scores[rows, cols]
    out[:, 1 : 2 * n_src : 2] = ranks
    out[:, -1] = np.sum(~np.isnan(ranks), axis=1)
    return out, rows, cols


def assemble(
    candidates: Candidates, states: pl.DataFrame, snapshot: ItemSnapshot, last_item: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature rows of every valid candidate, in row-major order.

    Returns ``(features, rows, cols)``: ``features`` (n_valid, n_features) float32, and the position
    ``(rows[k], cols[k])`` of each feature row in ``candidates.ids``. ``last_item`` holds the
    ``last_item_features`` columns of those rows.
    """
    config = snapshot.config
    retriever, rows, cols = retriever_features(candidates)
    item_idx = candidates.ids[rows, cols]

    states = states.with_columns(pl.lit(snapshot.now, dtype=pl.Int64).alias(D.NOW))
    user = C.user_features(states, config=config)
    user_matrix = (
        user.select(pl.col(numeric_features(config, "user")).cast(pl.Float32)).to_numpy().astype(np.float32)
    )

    item_ids = snapshot.table.get_column(S.ITEM_ID).to_numpy()
    pairs = pl.DataFrame({C.KEY: rows.astype(np.int64), S.ITEM_ID: item_ids[item_idx].astype(str)})
    pair = C.pair_features(states, pairs, snapshot.attrs, config=config, embeddings=snapshot.embeddings)
    pair_matrix = (
        pair.select(pl.col(numeric_features(config, "user_item")).cast(pl.Float32))
        .to_numpy()
        .astype(np.float32)
    )

    features = np.hstack([retriever, last_item, user_matrix[rows], snapshot.matrix[item_idx], pair_matrix])
    return features, rows, cols
