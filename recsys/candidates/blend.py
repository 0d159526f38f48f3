"""Union the candidate lists of several generators, keeping each source's score and rank.

The blended list is what the ranker re-orders: each candidate carries, per source, the score and
the rank that source gave it, NaN where the source did not propose it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Candidates:
    """Blended candidates for a batch: ``ids`` (batch, total), -1 padded, best first by best rank."""

    sources: tuple[str, ...]
    ids: np.ndarray  # (batch, total) int32
    scores: np.ndarray  # (batch, total, n_sources) float32, NaN = not proposed by that source
    ranks: np.ndarray  # (batch, total, n_sources) float32, 0 = the source's best, NaN = not proposed

    def mask(self) -> np.ndarray:
        return self.ids >= 0


def blend(proposals: dict[str, tuple[np.ndarray, np.ndarray]], *, total: int, n_items: int) -> Candidates:
    """Union per row, ordered by best rank over sources (ties: more sources first), cut to ``total``.

    ``proposals`` maps a source name to its ``(ids, scores)``, both (batch, n_source), -1 padded.

    >>> a = (np.array([[5, 6, -1]]), np.array([[0.9, 0.5, -np.inf]]))
    >>> b = (np.array([[6, 7, 8]]), np.array([[3.0, 2.0, 1.0]]))
    >>> c = blend({"a": a, "b": b}, total=3, n_items=10)
    >>> c.ids.tolist()
    [[6, 5, 7]]
    >>> c.ranks[0].tolist()
    [[1.0, 0.0], [0.0, nan], [nan, 1.0]]
    """
    sources = tuple(proposals)
    batch = next(iter(proposals.values()))[0].shape[0]
    rows, items, ranks, scores, src = [], [], [], [], []
    for s, (ids, sc) in enumerate(proposals.values()):
        r, c = np.nonzero(ids >= 0)
        rows.append(r)
        items.append(ids[r, c].astype(np.int64))
        ranks.append(c)
        scores.append(sc[r, c])
        src.append(np.full(len(r), s))
    row, item, rank = np.concatenate(rows), np.concatenate(items), np.concatenate(ranks)
    score, source = np.concatenate(scores).astype(np.float32), np.concatenate(src)

    key = row * n_items + item
    uniq, inverse = np.unique(key, return_inverse=True)
    n_unique = len(uniq)
    per_score = np.full((n_unique, len(sources)), np.nan, dtype=np.float32)
    per_rank = np.full((n_unique, len(sources)), np.nan, dtype=np.float32)
    per_score[inverse, source] = score
    per_rank[inverse, source] = rank
    best = np.nanmin(per_rank, axis=1)
    n_prop = np.sum(~np.isnan(per_rank), axis=1)
    u_row = uniq // n_items
    # order within each row: best rank ascending, then proposed by more sources, then item id
    order = np.lexsort((uniq % n_items, -n_prop, best, u_row))
    u_row_sorted = u_row[order]
    starts = np.searchsorted(u_row_sorted, np.arange(batch))
    pos = np.arange(n_unique) - starts[u_row_sorted]
    keep = pos < total
    sel, r, p = order[keep], u_row_sorted[keep], pos[keep]

    out_ids = np.full((batch, total), -1, dtype=np.int32)
    out_scores = np.full((batch, total, len(sources)), np.nan, dtype=np.float32)
    out_ranks = np.full((batch, total, len(sources)), np.nan, dtype=np.float32)
    out_ids[r, p] = uniq[sel] % n_items
    out_scores[r, p] = per_score[sel]
    out_ranks[r, p] = per_rank[sel]
    return Candidates(sources, out_ids, out_scores, out_ranks)
