"""The one protocol every candidate generator follows, and the shared batched top-k.

Every generator is fitted on ``Interactions`` and answers for a batch of ``Histories`` (item
sequences), never for user ids: the same call serves offline evaluation, known users whose history
grew since training, and anonymous sessions. Results are ``(ids, scores)`` arrays of shape
``(batch, n)``, best first, padded with id ``-1`` and score ``-inf`` where fewer than ``n`` items
qualify. Items in a row's history are not returned, unless ``recommend`` is asked for them with
``exclude_seen=False`` ("buy again", replenishment): then the masking is skipped and every item keeps
the score the model gives it. The default keeps offline evaluation a full ranking of unseen items.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp

from recsys.data.dataset import Histories, Interactions

# rows scored at once, at most (a power of two): a (1024, n_items) float32 block is cache-friendly
BLOCK_ROWS = 1024
# ... and at most this many scores at once (64 MB of float32): with the top-k's temporaries (a negated
# copy, int64 partition indices) a block costs about 4x that, whatever the catalogue. A fixed 1024
# rows would hold 1024 x 1M x 16 bytes = 16 GB at a million items (benchmarks.scaling)
BLOCK_CELLS = 2**24


def block_rows(n_items: int) -> int:
    """Rows scored at once for a catalogue of ``n_items``: ``BLOCK_ROWS``, fewer (a power of two, so a
    divisor of ``BLOCK_ROWS``) for large catalogues.

    A dense matrix product may round a row's scores differently in another block shape. Because every
    block divides ``BLOCK_ROWS``, a batch cut at multiples of ``BLOCK_ROWS`` (the ranker's training
    rows, ``recsys.ranking.dataset``) is scored in the blocks of the whole batch, bit for bit.

    >>> block_rows(10_000), block_rows(100_000), block_rows(1_000_000), block_rows(10**9)
    (1024, 128, 16, 1)
    """
    rows = min(BLOCK_ROWS, BLOCK_CELLS // max(n_items, 1))
    return 1 << max(rows, 1).bit_length() - 1


@runtime_checkable
class CandidateGenerator(Protocol):
    def fit(self, data: Interactions) -> Self: ...

    def recommend(
        self, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, path: Path) -> None: ...


class NotFittedError(RuntimeError):
    """A predict-time method was called before ``fit``."""


def check_fitted(model: object, attribute: str) -> None:
    if getattr(model, attribute, None) is None:
        raise NotFittedError(f"{type(model).__name__} is not fitted: call fit() first")


def check_n(n: int) -> None:
    """A list length must be a positive integer (``bool`` is refused)."""
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def check_items(items: np.ndarray, n_items: int, name: str) -> None:
    """Every entry of ``items`` must be an item index of the fitted catalogue ``[0, n_items)``."""
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        bad = items[(items < 0) | (items >= n_items)][0]
        raise ValueError(f"{name} holds item index {int(bad)} outside the catalogue [0, {n_items})")


def unit_rows(vectors: np.ndarray, *, name: str = "vectors", block_values: int = 2**20) -> np.ndarray:
    """(n, dim) float32: each row of ``vectors`` divided by its norm (zero rows stay zero), checked
    finite, written block by block into one new array (a million 384-d rows are 1.5 GB: no
    whole-array temporaries); ``name`` is the array an error names.

    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    unit = np.empty(vectors.shape, dtype=np.float32)  # a plain array, also when ``vectors`` is mapped
    block = max(1, block_values // max(vectors.shape[1], 1))  # rows a block (1M values: 4 MB of float32)
    for start in range(0, len(vectors), block):
        part = vectors[start : start + block]
        finite = np.isfinite(part).all(axis=1)
        if not finite.all():
            raise ValueError(
                f"{name}: item {start + np.flatnonzero(~finite)[0]} holds NaN or infinite values"
            )
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        np.divide(part, np.where(norms > 0, norms, 1.0), out=unit[start : start + len(part)])
    return unit


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` of a (rows, n_items) score block, best first, tied scores in item order.

    The order is that of a full stable sort, ``np.argsort(-scores, kind="stable")[:, :k]``, without
    sorting the catalogue: a partition finds each row's k-th best score, and only the entries at
    least that good are sorted. Being defined for ties too, it is what the per-candidate fast paths
    (:func:`top_entries`) reproduce exactly from a row's few scored entries.
    Entries equal to ``-inf`` (or NaN) never make the list; their places are padded with id -1.

    >>> ids, s = top_k(np.array([[0.25, 0.75, -np.inf, 0.5]], dtype=np.float32), 3)
    >>> ids.tolist(), s.tolist()
    ([[1, 3, 0]], [[0.75, 0.5, 0.25]])
    >>> top_k(np.array([[1.0, -np.inf]], dtype=np.float32), 2)[0].tolist()
    [[0, -1]]
    >>> top_k(np.array([[2.0, 1.0, 2.0, 2.0]], dtype=np.float32), 2)[0].tolist()  # ties: item order
    [[0, 2]]
    """
    rows, n_items = scores.shape
    k_eff = min(k, n_items)
    neg = -np.asarray(scores)
    if k_eff < n_items:
        kth = np.partition(neg, k_eff - 1, axis=1)[:, k_eff - 1]  # (rows,) each row's k-th best
        kth = np.where(np.isnan(kth), np.inf, kth)  # NaN among the k best: every scored entry competes
    else:
        kth = np.full(rows, np.inf)
    row, col = np.nonzero(neg < kth[:, None])  # fewer than k per row: better than the k-th best
    # entries tied with the k-th best fill the rest in item order (np.nonzero is row-major), so only
    # k per row are ever sorted, however many items tie (a popularity fallback's equal counts)
    tied_row, tied_col = np.nonzero((neg == kth[:, None]) & (neg < np.inf))
    need = k - np.bincount(row, minlength=rows)  # (rows,) places left for tied entries
    position = np.arange(len(tied_row)) - np.searchsorted(tied_row, np.arange(rows))[tied_row]
    fill = position < need[tied_row]
    row, col = np.concatenate([row, tied_row[fill]]), np.concatenate([col, tied_col[fill]])
    return _first_per_row(row, col, neg[row, col], rows, k)


def top_entries(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` of one row given only its scored entries: ``ids`` distinct item indices,
    ``scores`` theirs; every other item counts as ``-inf``. (1, k) ``(ids, scores)``, the same
    answer bit for bit as ``top_k`` on the dense row, at a cost that does not grow with the catalogue.

    >>> top_entries(np.array([7, 2, 5]), np.array([0.5, 0.5, 0.9], np.float32), 4)[0].tolist()
    [[5, 2, 7, -1]]
    """
    ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores)
    scored = -scores < np.inf  # drops -inf and NaN, as top_k does
    return _first_per_row(np.zeros(int(scored.sum()), np.int64), ids[scored], -scores[scored], 1, k)


def _first_per_row(
    row: np.ndarray, col: np.ndarray, neg: np.ndarray, rows: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` entries of each row by ``neg`` ascending, ties by ``col``: (rows, k) ids and
    scores (``-neg``), padded with -1 / -inf. Only the kept entries are sorted."""
    order = np.lexsort((col, neg, row))
    row, col, neg = row[order], col[order], neg[order]
    position = np.arange(len(row)) - np.searchsorted(row, np.arange(rows))[row]
    keep = position < k
    ids = np.full((rows, k), -1, dtype=np.int32)
    top = np.full((rows, k), -np.inf, dtype=np.float32)
    ids[row[keep], position[keep]] = col[keep]
    top[row[keep], position[keep]] = -neg[keep]
    return ids, top


def mask_history(scores: np.ndarray, histories: Histories) -> np.ndarray:
    """Set the scores of each row's history items to -inf, in place, and return ``scores``.

    Indexes with the CSR arrays of ``histories`` directly: building a sparse matrix cost more than
    the masking itself on the request path.
    """
    rows = np.repeat(np.arange(len(histories)), histories.lengths())
    scores[rows, histories.items[histories.indptr[0] : histories.indptr[-1]]] = -np.inf
    return scores


def drop_seen(found: np.ndarray, scores: np.ndarray, seen: Histories) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's history items from its results (rows, fetched), keeping the order and
    padding the end with -1 / -inf.

    >>> history = Histories.from_lists([[2]])
    >>> found, scores = drop_seen(np.array([[4, 2, 7]]), np.array([[3.0, 2.0, 1.0]]), history)
    >>> found.tolist(), scores.tolist()
    ([[4, 7, -1]], [[3.0, 1.0, -inf]])
    """
    rows = np.arange(len(found), dtype=np.int64)[:, None]
    keys = rows * (1 << 32) + found  # (rows, fetched)
    seen_rows = np.repeat(np.arange(len(seen), dtype=np.int64), seen.lengths())
    seen_keys = seen_rows * (1 << 32) + seen.items[seen.indptr[0] : seen.indptr[-1]]
    drop = np.isin(keys, seen_keys) | (found < 0)
    order = np.argsort(drop, axis=1, kind="stable")  # kept entries first, in their order
    found = np.where(np.take_along_axis(drop, order, axis=1), -1, np.take_along_axis(found, order, axis=1))
    scores = np.where(found >= 0, np.take_along_axis(scores, order, axis=1), -np.inf)
    return found.astype(np.int32), scores.astype(np.float32)


def ranked(
    score_block: ScoreFn, histories: Histories, n: int, n_items: int, *, exclude_seen: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Score histories block by block, mask their own items (unless ``exclude_seen`` is False), and
    keep the top ``n`` of each row.

    Every generator's ``recommend`` goes through here, so its arguments are checked here once.

    >>> table = np.array([[0.5, 0.9, 0.1]], dtype=np.float32)
    >>> history = Histories.from_lists([[1]])
    >>> ranked(lambda block: table.copy(), history, 2, 3)[0].tolist()
    [[0, 2]]
    >>> ranked(lambda block: table.copy(), history, 2, 3, exclude_seen=False)[0].tolist()
    [[1, 0]]
    """
    check_n(n)
    check_items(histories.items, n_items, "histories.items")
    ids = np.full((len(histories), n), -1, dtype=np.int32)
    scores = np.full((len(histories), n), -np.inf, dtype=np.float32)
    rows = block_rows(n_items)
    for start in range(0, len(histories), rows):
        stop = min(start + rows, len(histories))
        whole = stop - start == len(histories) and histories.indptr[0] == 0
        block = histories if whole else histories.rows(start, stop)
        dense = np.asarray(score_block(block), dtype=np.float32)  # (block, n_items)
        if exclude_seen:
            mask_history(dense, block)
        ids[start:stop], scores[start:stop] = top_k(dense, n)
    return ids, scores


class ScoreFn(Protocol):
    def __call__(self, block: Histories) -> np.ndarray: ...


def neighbours(
    score_rows: Callable[[np.ndarray], np.ndarray], items: np.ndarray, n: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """``similar_items`` of every generator: score the query items' rows in blocks, drop each item
    itself (and ``-inf`` entries), keep the top ``n``. ``score_rows(query)`` is (len(query), n_items).
    """
    check_n(n)
    items = np.asarray(items, dtype=np.int64).ravel()
    check_items(items, n_items, "items")
    ids = np.full((len(items), n), -1, np.int32)
    scores = np.full((len(items), n), -np.inf, np.float32)
    rows = block_rows(n_items)
    for start in range(0, len(items), rows):
        query = items[start : start + rows]
        dense = np.array(score_rows(query), dtype=np.float32)  # a copy: the caller's rows stay intact
        dense[np.arange(len(query)), query] = -np.inf
        ids[start : start + len(query)], scores[start : start + len(query)] = top_k(dense, n)
    return ids, scores


def neighbour_sums(
    matrix: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``weights @ matrix[rows]`` for one query as its entries: the distinct columns (ascending) that
    any of ``rows`` has an entry in, and their float32 sums.

    The request path's form of an item-to-item source (one history): it merges the query items'
    stored neighbour lists instead of building two sparse matrices and multiplying them, which cost
    more in scipy's per-call overhead than the sum itself, and touches only those entries, never the
    whole catalogue. It adds exactly as scipy's CSR product does (float32 products, accumulated in
    float32 row by row in ``rows`` order), so a test holds the two bit for bit. ``rows`` ascending and
    distinct, ``weights`` aligned with them.

    >>> m = sp.csr_matrix(np.array([[0, 2, 1], [0, 0, 3], [1, 0, 0]], dtype=np.float32))
    >>> cols, sums = neighbour_sums(m, np.array([0, 1]), np.array([1.0, 0.5]))
    >>> cols.tolist(), sums.tolist()
    ([1, 2], [2.0, 2.5])
    """
    starts = matrix.indptr[rows]
    lengths = matrix.indptr[rows + 1] - starts
    # the positions of every entry of the chosen rows in matrix.data, row after row
    at = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    cols, slot = np.unique(matrix.indices[at], return_inverse=True)
    sums = np.zeros(len(cols), dtype=np.float32)
    np.add.at(sums, slot, matrix.data[at] * np.repeat(weights.astype(np.float32), lengths))
    return cols, sums


def sparse_ranked(
    score_block: Callable[[Histories], sp.spmatrix], histories: Histories, n: int, n_items: int, *,
    exclude_seen: bool = True,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`ranked` for a source whose scores are sparse (absent entries: no evidence, ``-inf``):
    ``score_block(block)`` is a (block, n_items) sparse matrix, and only its stored entries are
    ranked, so a batch costs its evidence, not batch x catalogue. The same answer as ``ranked`` over
    the dense form, bit for bit.
    """
    check_n(n)
    check_items(histories.items, n_items, "histories.items")
    ids = np.full((len(histories), n), -1, dtype=np.int32)
    scores = np.full((len(histories), n), -np.inf, dtype=np.float32)
    for start in range(0, len(histories), BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, len(histories))
        block = histories.rows(start, stop)
        entries = sp.coo_matrix(score_block(block))
        row, col = entries.row.astype(np.int64), entries.col.astype(np.int64)
        neg = -entries.data.astype(np.float32)
        keep = neg < np.inf
        if exclude_seen:
            seen_rows = np.repeat(np.arange(len(block), dtype=np.int64), block.lengths())
            seen = seen_rows * (1 << 32) + block.items[block.indptr[0] : block.indptr[-1]]
            keep &= ~np.isin(row * (1 << 32) + col, seen)
        ids[start:stop], scores[start:stop] = _first_per_row(row[keep], col[keep], neg[keep], len(block), n)
    return ids, scores


def neighbour_evidence(matrix: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n_cols,) float32: :func:`neighbour_sums` as a dense row, 0 where no row has an entry.

    >>> m = sp.csr_matrix(np.array([[0, 2, 1], [0, 0, 3], [1, 0, 0]], dtype=np.float32))
    >>> neighbour_evidence(m, np.array([0, 1]), np.array([1.0, 0.5])).tolist()
    [0.0, 2.0, 2.5]
    """
    cols, sums = neighbour_sums(matrix, rows, weights)
    out = np.zeros(matrix.shape[1], dtype=np.float32)
    out[cols] = sums
    return out


def sparse_neighbours(matrix: sp.csr_matrix, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``neighbours(lambda q: sparse_rows(matrix, q), items, n, n_cols)`` from the stored entries of
    the query rows alone: the same answer (``top_k``'s order) without a dense catalogue row per item.

    >>> m = sp.csr_matrix(np.array([[5, 2, 2], [0, 0, 3], [1, 0, 0]], dtype=np.float32))
    >>> sparse_neighbours(m, np.array([0, 1]), 2)[0].tolist()
    [[1, 2], [2, -1]]
    """
    check_n(n)
    items = np.asarray(items, dtype=np.int64).ravel()
    check_items(items, matrix.shape[0], "items")
    starts = matrix.indptr[items]
    lengths = matrix.indptr[items + 1] - starts
    at = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    row = np.repeat(np.arange(len(items)), lengths)
    col, value = matrix.indices[at].astype(np.int64), matrix.data[at].astype(np.float32)
    other = (col != items[row]) & (-value < np.inf)  # never the item itself; -inf / NaN never listed
    return _first_per_row(row[other], col[other], -value[other], len(items), n)


def sparse_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Dense (len(rows), n_cols) copy of sparse rows, ``-inf`` where there is no entry."""
    part = matrix[rows].tocoo()
    dense = np.full((len(rows), matrix.shape[1]), -np.inf, np.float32)
    dense[part.row, part.col] = part.data
    return dense
