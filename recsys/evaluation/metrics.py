"""Top-K ranking metrics, vectorised over all users at once.

Inputs are the same everywhere: ``recommended``, a (n_users, K) matrix of item ids, best first and
padded with -1, and ``relevant``, a binary (n_users, n_items) CSR matrix of held-out targets. Every
metric is computed for several cut-offs in one pass over a (n_users, K) hit matrix.

Definitions (per user, then averaged over the users that have at least one relevant item):

* ``recall@k``: hits in the top k / number of relevant items.
* ``precision@k``: hits in the top k / k.
* ``hitrate@k``: 1 if any relevant item is in the top k.
* ``mrr@k``: 1 / rank of the first relevant item in the top k, 0 if none.
* ``map@k``: sum of precision@j at each hit j <= k, divided by min(k, number of relevant items).
* ``ndcg@k``: binary-gain DCG (1 / log2(rank + 1)) over the ideal DCG of min(k, relevant) hits.

Beyond accuracy: ``coverage@k`` (share of the catalogue that appears in at least one top-k list),
``novelty@k`` (mean self-information -log2 p(i) of recommended items, p(i) the share of training
users who interacted with i, add-one smoothed) and ``ild@k`` (intra-list diversity: mean pairwise
cosine distance between the item embeddings of a list, over lists with at least two items).

>>> import scipy.sparse as sp
>>> rec = np.array([[2, 0, 1], [1, 2, -1]])
>>> rel = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float32))
>>> m = ranking_metrics(rec, rel, ks=[1, 3])
>>> m["hitrate@1"], m["hitrate@3"], m["mrr@3"], m["recall@3"]
(0.0, 1.0, 0.5, 1.0)
>>> round(m["ndcg@3"], 4)  # both hits at rank 2: 1 / log2(3)
0.6309
>>> round(m["coverage@1"], 4)  # items {2, 1} out of 3
0.6667
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from recsys.evaluation.stats import bootstrap_means

ACCURACY = ("recall", "ndcg", "hitrate", "mrr", "map", "precision")
ILD_BLOCK_ROWS = 512  # lists per block: (512, K, K) similarity and (512, K, dim) embeddings at once


def _check_inputs(recommended: np.ndarray, relevant: sp.spmatrix, ks: Sequence[int]) -> np.ndarray:
    recommended = np.asarray(recommended)
    if recommended.ndim != 2:
        raise ValueError(f"recommended must be a (n_users, K) matrix, got shape {recommended.shape}")
    if not np.issubdtype(recommended.dtype, np.integer):
        raise ValueError(f"recommended must hold integer item ids, got dtype {recommended.dtype}")
    if relevant.shape[0] != recommended.shape[0]:
        raise ValueError(
            f"recommended has {recommended.shape[0]} rows but relevant has {relevant.shape[0]}: "
            "one row per evaluated user in both"
        )
    n_items = relevant.shape[1]
    if recommended.size and (recommended.max() >= n_items or recommended.min() < -1):
        raise ValueError(f"recommended ids must be in [0, {n_items}) or -1 for padding")
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    for k in ks:
        if not 1 <= k <= recommended.shape[1]:
            raise ValueError(f"cut-off k={k} must be in [1, {recommended.shape[1]}] (the list length)")
    return recommended.astype(np.int64, copy=False)


def hit_matrix(recommended: np.ndarray, relevant: sp.spmatrix) -> np.ndarray:
    """(n_users, K) boolean: is ``recommended[u, j]`` a relevant item of user ``u``.

    A repeated id in one list counts only at its first position, so no metric can exceed 1.

    >>> rel = sp.csr_matrix(np.array([[0, 1, 1]], dtype=np.float32))
    >>> hit_matrix(np.array([[1, 0, 1, -1, 2]]), rel).astype(int).tolist()
    [[1, 0, 0, 0, 1]]
    """
    recommended = np.asarray(recommended, dtype=np.int64)
    n_users, k = recommended.shape
    rel = sp.csr_matrix(relevant)
    n_items = rel.shape[1]
    # One int64 key per (user, item) pair; membership of the recommended pairs in the relevant
    # pairs is then a single sorted search over all users at once.
    rel_rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(rel.indptr))
    nonzero = rel.data != 0
    rel_keys = np.unique(rel_rows[nonzero] * n_items + rel.indices[nonzero].astype(np.int64))
    keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + recommended
    hits = np.isin(keys, rel_keys) & (recommended >= 0)
    if k > 1:
        # drop repeats: a position is a hit only if the same id did not occur earlier in the row
        order = np.argsort(recommended, axis=1, kind="stable")
        srt = np.take_along_axis(recommended, order, axis=1)
        repeat_sorted = np.zeros_like(srt, dtype=bool)
        repeat_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        repeat = np.zeros_like(repeat_sorted)
        np.put_along_axis(repeat, order, repeat_sorted, axis=1)
        hits &= ~repeat
    return hits


def accuracy_per_user(
    recommended: np.ndarray, relevant: sp.spmatrix, *, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-user accuracy metrics, ``{"recall@10": (n_users,) float64, ...}``.

    Users without relevant items get NaN (they are undefined, not zero), so that paired tests and
    averages can leave them out explicitly.
    """
    recommended = _check_inputs(recommended, relevant, ks)
    n_relevant = np.diff(sp.csr_matrix(relevant).indptr)
    return accuracy_from_hits(hit_matrix(recommended, relevant), n_relevant, ks=ks)


def accuracy_from_hits(
    hits: np.ndarray, n_relevant: np.ndarray, *, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """:func:`accuracy_per_user` from a (n_users, K) :func:`hit_matrix` and each user's number of
    relevant items: a slice of the targets is its hits masked and its own counts, with no new ranking.

    >>> accuracy_from_hits(np.array([[False, True], [False, False]]), np.array([1, 0]), ks=[2])["recall@2"]
    array([ 1., nan])
    """
    hits = np.asarray(hits, dtype=np.float64)  # (n_users, K)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    defined = n_rel > 0
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    discounts = 1.0 / np.log2(ranks + 1.0)
    cum_hits = np.cumsum(hits, axis=1)  # hits in the top j
    dcg = np.cumsum(hits * discounts, axis=1)
    ideal = np.cumsum(discounts)  # ideal DCG with j relevant items
    ap_terms = np.cumsum(hits * cum_hits / ranks, axis=1)  # sum of precision@j at hits j
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), hits.shape[1])
    rr = np.where(first_hit < hits.shape[1], 1.0 / (first_hit + 1.0), 0.0)

    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in sorted(set(ks)):
            h = cum_hits[:, k - 1]
            n_ideal = np.minimum(n_rel, k).astype(np.int64)
            metrics = {
                "recall": h / n_rel,
                "ndcg": dcg[:, k - 1] / ideal[np.maximum(n_ideal, 1) - 1],
                "hitrate": (h > 0).astype(np.float64),
                "mrr": np.where(first_hit < k, rr, 0.0),
                "map": ap_terms[:, k - 1] / np.maximum(n_ideal, 1),
                "precision": h / k,
            }
            for name in ACCURACY:
                out[f"{name}@{k}"] = np.where(defined, metrics[name], np.nan)
    return out


def mean_accuracy_per_user(
    lists: Sequence[np.ndarray], relevant: sp.spmatrix, *, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """:func:`accuracy_per_user` of each of ``lists`` (one model's runs with several seeds, the same
    users), averaged per user over the runs."""
    per_run = [accuracy_per_user(recommended, relevant, ks=ks) for recommended in lists]
    return {key: np.mean([values[key] for values in per_run], axis=0) for key in per_run[0]}


def coverage(recommended: np.ndarray, n_items: int, *, k: int) -> float:
    """Share of the ``n_items`` catalogue that appears in at least one top-``k`` list."""
    top = np.asarray(recommended)[:, :k]
    return float(len(np.unique(top[top >= 0])) / n_items) if n_items else 0.0


def self_information(item_users: np.ndarray, n_users: int) -> np.ndarray:
    """-log2 of the add-one smoothed share of training users who interacted with each item.

    >>> self_information(np.array([3, 0]), 3).tolist()
    [0.0, 2.0]
    """
    p = (np.asarray(item_users, dtype=np.float64) + 1.0) / (n_users + 1.0)
    return np.log2(1.0 / p)


def novelty(recommended: np.ndarray, information: np.ndarray, *, k: int) -> float:
    """Mean self-information of the items in the top-``k`` lists (padding ignored)."""
    top = np.asarray(recommended)[:, :k]
    valid = top >= 0
    return float(information[top[valid]].mean()) if valid.any() else float("nan")


def novelty_per_list(
    recommended: np.ndarray, information: np.ndarray, *, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each top-``k`` list's summed self-information and its number of items (padding ignored):
    :func:`novelty` is the ratio of their totals, and a bootstrap resamples both.

    >>> novelty_per_list(np.array([[0, 1], [1, -1]]), np.array([1.0, 3.0]), k=2)
    (array([4., 3.]), array([2., 1.]))
    """
    top = np.asarray(recommended)[:, :k]
    valid = top >= 0
    bits = np.where(valid, np.asarray(information, dtype=np.float64)[np.where(valid, top, 0)], 0.0)
    return bits.sum(axis=1), valid.sum(axis=1).astype(np.float64)


def exposure_gini(recommended: np.ndarray, n_items: int, *, k: int) -> float:
    """Gini index of item exposure in the top-``k`` lists, over the whole catalogue.

    ``x_i`` is how many lists show item ``i`` (0 for items never shown); with ``x`` sorted ascending
    and indexed ``i = 1..n``, ``G = sum_i (2i - n - 1) x_i / (n sum_i x_i)``. 0: every item shown
    equally often; ``(n - 1) / n``: one item takes all the exposure. NaN when nothing is shown.

    >>> exposure_gini(np.array([[0, 1], [0, 2]]), 4, k=2)  # exposure [2, 1, 1, 0]: 6 / (4 * 4)
    0.375
    """
    top = np.asarray(recommended)[:, :k]
    exposure = np.sort(np.bincount(top[top >= 0], minlength=n_items)).astype(np.float64)
    if not n_items or exposure.sum() == 0:
        return float("nan")
    rank = np.arange(1, n_items + 1, dtype=np.float64)
    return float(((2 * rank - n_items - 1) * exposure).sum() / (n_items * exposure.sum()))


def popularity_lift(
    recommended: np.ndarray, history_items: np.ndarray, popularity: np.ndarray, *, k: int
) -> float:
    """Mean training popularity of the recommended items over that of the history items.

    ``popularity[i]`` is item ``i``'s number of training interactions; the numerator averages it over
    every (list, position) of the top-``k`` lists (padding ignored), the denominator over every
    history event of the same users. Above 1: the lists lean to more popular items than the users
    chose themselves. NaN when either side is empty or the histories' mean is 0.

    >>> popularity_lift(np.array([[0, 1]]), np.array([1, 2, 2]), np.array([9.0, 3.0, 0.0]), k=2)
    6.0
    """
    top = np.asarray(recommended)[:, :k]
    pop = np.asarray(popularity, dtype=np.float64)
    shown, chosen = pop[top[top >= 0]], pop[np.asarray(history_items)]
    if not len(shown) or not len(chosen) or chosen.mean() == 0:
        return float("nan")
    return float(shown.mean() / chosen.mean())


def accuracy_curves(recommended: np.ndarray, relevant: sp.spmatrix, *, max_k: int) -> dict[str, np.ndarray]:
    """``{"recall": (K,), "ndcg": (K,)}`` at every cut-off ``k = 1..K``, ``K = min(max_k, list length)``,
    averaged over users with relevant items: the values :func:`ranking_metrics` gives at each ``k``,
    from one hit matrix (prefix sums), not one ranking per cut-off.

    >>> import scipy.sparse as sp
    >>> rel = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32))
    >>> curves = accuracy_curves(np.array([[2, 1, 0], [0, 1, 2]]), rel, max_k=5)
    >>> curves["recall"].tolist()  # user 1: 1/2, 1/2, 2/2; user 2: 0, 1, 1
    [0.25, 0.75, 1.0]
    """
    width = min(max_k, np.asarray(recommended).shape[1])
    recommended = _check_inputs(recommended, relevant, [width])[:, :width]
    n_rel = np.diff(sp.csr_matrix(relevant).indptr).astype(np.float64)
    defined = n_rel > 0
    hits = hit_matrix(recommended, relevant)[defined].astype(np.float64)  # (users, K)
    n_rel = n_rel[defined]
    discounts = 1.0 / np.log2(np.arange(2, width + 2, dtype=np.float64))
    cuts = np.arange(1, width + 1)
    ideal = np.cumsum(discounts)[np.minimum(n_rel[:, None], cuts[None, :]).astype(np.int64) - 1]
    recall = np.cumsum(hits, axis=1) / n_rel[:, None]
    ndcg = np.cumsum(hits * discounts, axis=1) / ideal
    if not len(hits):
        return {"recall": np.full(width, np.nan), "ndcg": np.full(width, np.nan)}
    return {"recall": recall.mean(axis=0), "ndcg": ndcg.mean(axis=0)}


def intra_list_diversity(recommended: np.ndarray, embeddings: np.ndarray, *, k: int) -> float:
    """Mean over lists of the mean pairwise cosine distance (1 - cos) between their items.

    Lists with fewer than two items are left out. Scored in blocks of lists, never one at a time.

    >>> emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> intra_list_diversity(np.array([[0, 1, 2]]), emb, k=3)  # distances 1, 0, 1
    0.6666666666666666
    """
    total, lists = 0.0, 0
    for _, per_list, ok in _ild_blocks(recommended, embeddings, k=k):
        total += float(per_list[ok].sum())
        lists += int(ok.sum())
    return total / lists if lists else float("nan")


def intra_list_diversity_per_list(recommended: np.ndarray, embeddings: np.ndarray, *, k: int) -> np.ndarray:
    """(n_lists,) each list's :func:`intra_list_diversity`, NaN for lists with fewer than two items.

    >>> emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> intra_list_diversity_per_list(np.array([[0, 1, 2], [1, -1, -1]]), emb, k=3).round(4).tolist()
    [0.6667, nan]
    """
    out = np.full(len(recommended), np.nan)
    for start, per_list, ok in _ild_blocks(recommended, embeddings, k=k):
        out[start : start + len(ok)] = np.where(ok, per_list, np.nan)
    return out


def _ild_blocks(
    recommended: np.ndarray, embeddings: np.ndarray, *, k: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per block of ``ILD_BLOCK_ROWS`` lists: its first row, each list's ILD, and which lists have one."""
    top = np.asarray(recommended)[:, :k]
    emb = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = emb / np.where(norms > 0, norms, 1.0)
    for start in range(0, len(top), ILD_BLOCK_ROWS):
        block = top[start : start + ILD_BLOCK_ROWS]
        valid = block >= 0  # (rows, k)
        vecs = unit[np.where(valid, block, 0)] * valid[..., None]  # (rows, k, dim), padding = 0
        sims = np.einsum("rid,rjd->rij", vecs, vecs)  # (rows, k, k)
        n = valid.sum(axis=1)
        pairs = n * (n - 1) / 2
        # sum over i < j of (1 - cos) = pairs - (sum of all sims - diagonal) / 2
        diag = np.einsum("rii->r", sims)
        dist_sum = pairs - (sims.sum(axis=(1, 2)) - diag) / 2
        ok = n >= 2
        with np.errstate(divide="ignore", invalid="ignore"):
            yield start, dist_sum / pairs, ok


def ranking_metrics(
    recommended: np.ndarray,
    relevant: sp.spmatrix,
    *,
    ks: Sequence[int],
    information: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics at every cut-off in ``ks``, averaged over users with relevant items.

    ``information`` (per-item self-information, see ``self_information``) adds ``novelty@k``;
    ``embeddings`` ((n_items, dim)) adds ``ild@k``. Keys are ``"<metric>@<k>"``.
    """
    per_user = accuracy_per_user(recommended, relevant, ks=ks)
    defined = np.diff(sp.csr_matrix(relevant).indptr) > 0
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        for name in ACCURACY:
            values = per_user[f"{name}@{k}"][defined]
            out[f"{name}@{k}"] = float(values.mean()) if len(values) else float("nan")
        out[f"coverage@{k}"] = coverage(recommended, relevant.shape[1], k=k)
        if information is not None:
            out[f"novelty@{k}"] = novelty(recommended, information, k=k)
        if embeddings is not None:
            out[f"ild@{k}"] = intra_list_diversity(recommended, embeddings, k=k)
    return out


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> dict[str, float]:
    """Per-user paired comparison of two models on the same users: ``a - b``.

    ``a`` and ``b`` are per-user values (``accuracy_per_user``); users undefined in either (NaN) are
    left out. Returns the mean difference, its standard error, a percentile bootstrap 95% interval
    (``resamples`` resamples of the users, seeded), and the users where ``a`` is higher, lower or
    equal. With few users the interval is wide: a difference is resolved only if it excludes 0.

    ``clusters`` (one label per row) makes it a cluster bootstrap: rows that share a label (the same
    user in several test periods) are resampled together, since they are not independent; the
    interval is then over clusters and the standard error is left out (NaN). The resampling is
    :func:`recsys.evaluation.stats.bootstrap_means`.

    >>> d = paired_difference(np.array([1.0, 0.5, 0.0, np.nan]), np.array([0.0, 0.5, 0.0, 1.0]))
    >>> d["users"], d["mean_diff"], d["wins"], d["losses"], d["ties"]
    (3, 0.3333333333333333, 1, 0, 2)
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if clusters is not None and len(clusters) != len(diff):
        raise ValueError(f"clusters has {len(clusters)} labels for {len(diff)} rows")
    defined = np.isfinite(diff)
    diff = diff[defined]
    n = len(diff)
    if n == 0:
        nan = float("nan")
        return {"users": 0, "clusters": 0, "mean_diff": nan, "se": nan, "ci_low": nan, "ci_high": nan,
                "wins": 0, "losses": 0, "ties": 0}  # fmt: skip
    kept = None if clusters is None else np.asarray(clusters)[defined]
    n_clusters = n if kept is None else len(np.unique(kept))
    means = bootstrap_means(diff, clusters=kept, resamples=resamples, seed=seed)[:, 0]
    low, high = np.percentile(means, [2.5, 97.5])
    independent = clusters is None and n > 1
    return {
        "users": n,
        "clusters": n_clusters,
        "mean_diff": float(diff.mean()),
        "se": float(diff.std(ddof=1) / np.sqrt(n)) if independent else float("nan"),
        "ci_low": float(low),
        "ci_high": float(high),
        "wins": int((diff > 0).sum()),
        "losses": int((diff < 0).sum()),
        "ties": int((diff == 0).sum()),
    }
