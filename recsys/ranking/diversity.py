"""Maximal marginal relevance (Carbonell & Goldstein 1998) on item embeddings, batched over users.

Each step picks, per row, the candidate maximising
``(1 - diversity) * relevance - diversity * max cosine to the items already picked``,
with relevance min-max scaled per row so that ``diversity`` means the same for every user.

>>> emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
>>> ids = np.array([[0, 1, 2]]); scores = np.array([[3.0, 2.9, 1.0]], dtype=np.float32)
>>> mmr(ids, scores, emb, n=2, diversity=0.0)[0].tolist()
[[0, 1]]
>>> mmr(ids, scores, emb, n=2, diversity=0.7)[0].tolist()
[[0, 2]]
"""

from __future__ import annotations

import numpy as np


def mmr(
    ids: np.ndarray, scores: np.ndarray, embeddings: np.ndarray, *, n: int, diversity: float
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank (batch, c) candidates ``ids`` (-1 padded) with ``scores`` into (batch, n) lists."""
    if not 0 <= diversity <= 1:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    batch, c = ids.shape
    valid = (ids >= 0) & np.isfinite(scores)
    lo = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
    rel = np.where(valid, (scores - lo) / np.maximum(hi - lo, 1e-12), -np.inf)
    vecs = embeddings[np.maximum(ids, 0)]  # (batch, c, dim)
    max_sim = np.full((batch, c), -np.inf, dtype=np.float32)
    out_ids = np.full((batch, n), -1, dtype=np.int32)
    out_scores = np.full((batch, n), -np.inf, dtype=np.float32)
    rows = np.arange(batch)
    available = valid.copy()
    for step in range(min(n, c)):  # a loop over list positions, not users
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = np.where(available, (1 - diversity) * rel - diversity * penalty, -np.inf)
        pick = np.argmax(value, axis=1)
        ok = available[rows, pick]
        out_ids[ok, step] = ids[rows[ok], pick[ok]]
        out_scores[ok, step] = scores[rows[ok], pick[ok]]
        available[rows, pick] = False
        sim = np.einsum("bcd,bd->bc", vecs, vecs[rows, pick])
        max_sim = np.maximum(max_sim, np.where(ok[:, None], sim, -np.inf)).astype(np.float32)
    return out_ids, out_scores


def top_n(
    ids: np.ndarray, scores: np.ndarray, n: int, diversity: float, embeddings: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n`` best candidates by score (-1 padded), or by :func:`mmr` when ``diversity``
    > 0 and there are embeddings (moved from ``recsys.pipeline.two_stage``)."""
    if diversity > 0 and embeddings is not None:
        return mmr(ids, scores, embeddings, n=n, diversity=diversity)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    top_ids = np.take_along_axis(ids, order, axis=1)
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids[~np.isfinite(top_scores)] = -1
    if top_ids.shape[1] < n:
        pad = n - top_ids.shape[1]
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return top_ids, top_scores
