"""Item-to-item co-occurrence and transition statistics ("people who bought a, bought b next").

For every pair of events at most ``window`` steps apart in a user's time-ordered sequence, the pair
(a -> b, a earlier) adds ``decay ** (gap - 1)`` to ``C[a, b]`` and ``backward * decay ** (gap - 1)``
to ``C[b, a]``: forward transitions carry most of the signal on e-commerce data, where the next
purchase follows from the last ones. Counts are normalised like cosine item-kNN,
``S[a, b] = C[a, b] / (n_a ** alpha * n_b ** beta)`` with ``n`` the item event counts, so popular
items do not dominate every list, and only the ``neighbours`` best entries per row are kept.

At recommend time the last ``history_len`` items of each history are weighted by recency (the
most recent weighs 1, the one before ``recency_decay``, ...) and their neighbour rows are summed:
one sparse (batch, n_items) @ (n_items, n_items) product per block, no loop over users.

>>> from recsys.data.dataset import Histories, Interactions
>>> data = Interactions.from_arrays([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], n_users=2, n_items=4)
>>> model = CoOccurrence(CoOccurrenceConfig(window=1, popularity_fallback=False)).fit(data)
>>> ids, scores = model.recommend(Histories.from_lists([[0], [1]]), 2)
>>> ids.tolist()
[[1, -1], [2, 0]]
>>> model.similar_items(np.array([1]), 3)[0].tolist()
[[2, 0, -1]]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp

from recsys.candidates.artifact import read_folder, write_folder
from recsys.candidates.base import (
    check_fitted,
    check_items,
    neighbour_evidence,
    ranked,
    sparse_neighbours,
)
from recsys.config import from_dict, to_dict
from recsys.data.dataset import Histories, Interactions

FORMAT = "recsys.cooccurrence/1"
PAIR_CHUNK = 2**21  # event pairs counted at once (about 40 MB of coordinates and weights)
TOP_BLOCK = 2**22  # entries sorted at once when keeping each row's top neighbours


@dataclass(frozen=True)
class CoOccurrenceConfig:
    """Parameters of :class:`CoOccurrence` (defaults tuned on amazon-scientific validation).

    Parameters
    ----------
    window
        Pairs of events at most this many steps apart in a user's sequence co-occur.
    decay
        A pair ``gap`` steps apart weighs ``decay ** (gap - 1)``; 1.0 weighs all pairs equally.
    backward
        Weight of the reverse direction (b was bought after a, so b -> a) relative to forward.
    alpha, beta
        Exponents of the source and target item counts in the normalisation (0.5, 0.5 is cosine).
    neighbours
        Entries kept per item row.
    history_len
        Most recent history items used at recommend time.
    recency_decay
        The ``k``-th most recent history item (``k = 0`` for the last) weighs ``recency_decay ** k``.
    popularity_fallback
        Fill lists beyond the co-occurring items with the most popular ones, at negative scores
        (``-1 < score < 0``) so they always rank below any co-occurrence evidence.
    """

    window: int = 5
    decay: float = 0.8
    backward: float = 0.3
    alpha: float = 0.5
    beta: float = 0.1
    neighbours: int = 200
    history_len: int = 10
    recency_decay: float = 0.8
    popularity_fallback: bool = True

    def __post_init__(self) -> None:
        checks = {
            "window": self.window >= 1,
            "decay": 0 < self.decay <= 1,
            "backward": self.backward >= 0,
            "alpha": 0 <= self.alpha <= 1,
            "beta": 0 <= self.beta <= 1,
            "neighbours": self.neighbours >= 1,
            "history_len": self.history_len >= 1,
            "recency_decay": 0 < self.recency_decay <= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"CoOccurrenceConfig.{bad[0]} out of range: {getattr(self, bad[0])!r}")


class CoOccurrence:
    """Sparse item-to-item transition model; see the module docstring.

    Attributes
    ----------
    similarity_ : scipy.sparse.csr_matrix
        (n_items, n_items) float32, at most ``neighbours`` entries per row, no diagonal.
    item_counts_ : numpy.ndarray
        (n_items,) training events per item (drives normalisation and the popularity fallback).
    """

    def __init__(self, config: CoOccurrenceConfig | None = None) -> None:
        self.config = config or CoOccurrenceConfig()
        self.similarity_: sp.csr_matrix | None = None
        self.item_counts_: np.ndarray | None = None

    # --- fitting ---------------------------------------------------------------------------------
    def fit(self, data: Interactions) -> Self:
        """Count decayed, directed pairs within ``window`` and keep the top neighbours per item."""
        cfg = self.config
        counts = data.item_counts().astype(np.float64)
        forward = transition_weights(data, window=cfg.window, decay=cfg.decay)
        backward = forward.T.tocsr()
        backward.data *= cfg.backward  # in place: one copy of the counts fewer at the peak
        cooc = (forward + backward).tocsr()
        del forward, backward
        cooc.eliminate_zeros()
        safe = np.maximum(counts, 1.0)
        _divide_entries(cooc, safe**cfg.alpha, safe**cfg.beta)
        self.similarity_ = _top_per_row(cooc, cfg.neighbours).astype(np.float32)
        self.item_counts_ = counts.astype(np.int64)
        return self

    # --- prediction ------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        check_fitted(self, "similarity_")
        assert self.similarity_ is not None
        return int(self.similarity_.shape[0])

    def query_matrix(self, histories: Histories) -> sp.csr_matrix:
        """(batch, n_items) recency weights of the last ``history_len`` items of each history."""
        n_items = self.n_items
        check_items(histories.items, n_items, "histories.items")
        length = self.config.history_len
        last = histories.last(length)  # (batch, L), most recent in the last column, -1 padded
        weights = self.config.recency_decay ** np.arange(length - 1, -1, -1, dtype=np.float64)
        rows, cols = np.nonzero(last >= 0)
        q = sp.csr_matrix(
            (weights[cols], (rows, last[rows, cols])), shape=(len(histories), n_items), dtype=np.float32
        )
        q.sum_duplicates()
        return q

    def _score_block(self, block: Histories) -> np.ndarray:
        assert self.similarity_ is not None
        if len(block) == 1:  # one request: merge its last items' neighbour lists (same scores)
            last = block.last(self.config.history_len)[0]  # (L,), most recent last, -1 padded
            weights = self.config.recency_decay ** np.arange(len(last) - 1, -1, -1, dtype=np.float64)
            items, where = np.unique(last[last >= 0], return_inverse=True)
            summed = np.zeros(len(items), dtype=np.float32)  # a repeated item's weights, oldest first
            np.add.at(summed, where, weights[last >= 0].astype(np.float32))
            evidence_row = neighbour_evidence(self.similarity_, items, summed)
            dense = self._base_scores()
            has = evidence_row != 0
            dense[has] = evidence_row[has]
            return dense[None]
        return self._score_sparse(block)

    def _score_sparse(self, block: Histories) -> np.ndarray:
        """(block, n_items): ``query_matrix(block) @ similarity_`` over the base scores."""
        assert self.similarity_ is not None
        evidence = (self.query_matrix(block) @ self.similarity_).tocoo()  # (block, n_items) sparse
        dense = np.broadcast_to(self._base_scores(), (len(block), self.n_items)).copy()
        dense[evidence.row, evidence.col] = evidence.data
        return dense

    def _base_scores(self) -> np.ndarray:
        """Scores of items without evidence: popularity in (-1, 0), or -inf without fallback."""
        assert self.item_counts_ is not None
        if not self.config.popularity_fallback:
            return np.full(len(self.item_counts_), -np.inf, np.float32)
        counts = self.item_counts_.astype(np.float64)
        base: np.ndarray = counts / (counts.max(initial=0.0) + 1.0) - 1.0
        base[counts == 0] = -np.inf  # never seen in training: nothing supports it
        return base.astype(np.float32)

    def recommend(
        self, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items per history, excluding its items unless ``exclude_seen`` is False:
        ``(ids, scores)`` of shape (batch, n)."""
        return ranked(self._score_block, histories, n, self.n_items, exclude_seen=exclude_seen)

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` strongest transition neighbours of each item (never the item itself), from its
        stored row alone (``sparse_neighbours``: the dense reference's answer)."""
        check_fitted(self, "similarity_")
        assert self.similarity_ is not None
        return sparse_neighbours(self.similarity_, items, n)

    # --- persistence -----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write ``config.json`` and the CSR parts as ``.npy`` into the folder ``path``, atomically."""
        check_fitted(self, "similarity_")
        assert self.similarity_ is not None and self.item_counts_ is not None
        meta = {"format": FORMAT, "n_items": self.n_items, "config": to_dict(self.config)}
        arrays = {
            "indptr": self.similarity_.indptr.astype(np.int64),
            "indices": self.similarity_.indices.astype(np.int32),
            "data": self.similarity_.data.astype(np.float32),
            "item_counts": self.item_counts_,
        }
        write_folder(path, meta, arrays)

    @classmethod
    def load(cls, path: Path) -> CoOccurrence:
        """Read a folder written by :meth:`save` (no pickle: arrays load with ``allow_pickle=False``)."""
        meta, arrays = read_folder(path, FORMAT, ("indptr", "indices", "data", "item_counts"))
        where = f"{Path(path) / 'config.json'}:config"
        model = cls(from_dict(CoOccurrenceConfig, meta["config"], where=where))
        n = int(meta["n_items"])
        if len(arrays["indptr"]) != n + 1 or len(arrays["item_counts"]) != n:
            raise ValueError(f"{path}: arrays do not match n_items={n}")
        model.similarity_ = sp.csr_matrix(
            (arrays["data"], arrays["indices"], arrays["indptr"]), shape=(n, n), dtype=np.float32
        )
        model.item_counts_ = arrays["item_counts"]
        return model


def transition_weights(data: Interactions, *, window: int, decay: float) -> sp.csr_matrix:
    """(n_items, n_items) float64: ``F[a, b]`` sums ``decay ** (gap - 1)`` over the pairs of a user's
    events ``gap`` <= ``window`` steps apart, ``a`` first (a repeat of one item is not a transition).

    Counted one gap at a time, ``PAIR_CHUNK`` pairs at a time: the memory holds the counts and one
    chunk, never every pair at once (10M events at window 5 are 50M pairs, 800 MB as coordinates and
    weights). Each gap's counts are integers, exact in any order, so the result does not depend on
    the chunk.

    >>> data = Interactions.from_arrays([0, 0, 0, 1, 1], [0, 1, 2, 2, 2], n_users=2, n_items=3)
    >>> transition_weights(data, window=2, decay=0.5).toarray().tolist()
    [[0.0, 1.0, 0.5], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    """
    n = data.n_items
    total = sp.csr_matrix((n, n), dtype=np.float64)
    for gap in range(1, min(window, max(len(data) - 1, 0)) + 1):
        pairs = sp.csr_matrix((n, n), dtype=np.float64)
        for start in range(0, len(data) - gap, PAIR_CHUNK):
            stop = min(start + PAIR_CHUNK, len(data) - gap)
            a, b = data.items[start:stop], data.items[start + gap : stop + gap]
            pair = (data.users[start:stop] == data.users[start + gap : stop + gap]) & (a != b)
            ones = np.ones(int(pair.sum()), dtype=np.float64)
            pairs = pairs + sp.csr_matrix((ones, (a[pair], b[pair])), shape=(n, n))  # duplicates summed
        total = total + decay ** (gap - 1) * pairs
    return total


def _divide_entries(matrix: sp.csr_matrix, by_row: np.ndarray, by_column: np.ndarray) -> None:
    """``M[a, b] /= by_row[a] * by_column[b]`` in place, ``TOP_BLOCK`` entries at a time (three float64
    temporaries over every entry would cost 24 bytes each)."""
    for lo in range(0, matrix.nnz, TOP_BLOCK):
        hi = min(lo + TOP_BLOCK, matrix.nnz)
        rows = np.searchsorted(matrix.indptr, np.arange(lo, hi), side="right") - 1
        matrix.data[lo:hi] /= by_row[rows] * by_column[matrix.indices[lo:hi]]


def _top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row of a CSR matrix (ties broken by column), sorting
    rows a block of about ``TOP_BLOCK`` entries at a time (a sort's index arrays over every entry
    would cost 40 bytes each)."""
    matrix.sum_duplicates()  # canonical: sorted column indices, no duplicates
    indptr = matrix.indptr
    n_rows = matrix.shape[0]
    kept = []
    row = 0
    while row < n_rows:
        end = max(int(np.searchsorted(indptr, int(indptr[row]) + TOP_BLOCK, side="right")) - 1, row + 1)
        end = min(end, n_rows)
        lo, hi = indptr[row], indptr[end]
        row_of = np.repeat(np.arange(row, end), np.diff(indptr[row : end + 1]))
        order = np.lexsort((matrix.indices[lo:hi], -matrix.data[lo:hi], row_of))  # by row, value descending
        rank = np.arange(len(order)) - (indptr[row_of[order]] - lo)
        kept.append(lo + np.sort(order[rank < k]))
        row = end
    keep = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    sizes = np.minimum(np.diff(indptr), k)
    out_indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(indptr.dtype)
    return sp.csr_matrix((matrix.data[keep], matrix.indices[keep], out_indptr), shape=matrix.shape)
