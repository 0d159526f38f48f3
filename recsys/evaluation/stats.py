"""Bootstrap intervals, paired bootstrap tests and Holm's correction, for per-user metric values.

Every statistic here is a mean over the test rows (one per user, or one per (user, period) pair
with ``--windows``), or more generally a ratio of row totals (``sum values / sum counts``, e.g.
novelty: self-information summed over a list / the list's length). Undefined rows are NaN and count
in neither total.

:func:`bootstrap_means` is the one bootstrap of the project (``metrics.paired_difference`` calls it
too): ``resamples`` resamples of the rows, drawn with replacement and seeded, each row's weight the
number of times it was drawn; every column of a matrix is resampled with the *same* draws, so all
models and metrics of a run cost one pass. ``clusters`` (one label per row) resamples labels
instead of rows, with all their rows: one user's test periods are not independent.

* :func:`intervals`: the percentile bootstrap 95% interval of each statistic.
* :func:`pairwise_tests`: every pair of models, on each metric: the mean per-user difference, its
  interval and a two-sided bootstrap p-value, Holm-adjusted within the metric (:func:`holm`).

>>> rng = np.random.default_rng(0)
>>> a = rng.random(200)
>>> found = pairwise_tests({"a": {"m": a + 0.2}, "b": {"m": a}, "c": {"m": a.copy()}}, metrics=["m"])
>>> [(t["a"], t["b"], round(t["mean_diff"], 2), t["significant"]) for t in found["metrics"]["m"]]
[('a', 'b', 0.2, True), ('a', 'c', 0.2, True), ('b', 'c', 0.0, False)]
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# 2,000 resamples: the ends of a 95% percentile interval then move by a few hundredths of its width
# from one seed to another, and the smallest p-value, 2 / 2001 = 0.001, still lets Holm resolve all 45
# pairs of 10 models at 0.05; it keeps the analysis of a run to about a second on 10,000 users
# (``metrics.paired_difference`` keeps its 10,000, and its figures).
RESAMPLES = 2000
CONFIDENCE = 0.95
ALPHA = 0.05  # family-wise error rate of the Holm-corrected pairwise tests
BLOCK = 1000  # resamples drawn at once: bounds memory at BLOCK x clusters weights


def _labels(n_rows: int, clusters: np.ndarray | None) -> np.ndarray:
    if clusters is None:
        return np.arange(n_rows)
    if len(clusters) != n_rows:
        raise ValueError(f"clusters has {len(clusters)} labels for {n_rows} rows")
    return np.unique(np.asarray(clusters), return_inverse=True)[1].ravel()


def bootstrap_means(
    values: np.ndarray,
    *,
    counts: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """(resamples, n_columns) statistic of each resample: ``sum(w * values) / sum(w * counts)``.

    ``values`` is (n_rows,) or (n_rows, n_columns); ``counts`` (same shape) are the denominators of a
    ratio of totals, by default 1 for every defined (finite) value, which makes the statistic the mean
    of the defined values. ``w`` is how often each row (each cluster of rows, with ``clusters``) was
    drawn in a resample of ``n_clusters`` draws with replacement.

    The draws are those of the reference below, in blocks of ``BLOCK`` resamples; weighting the
    cluster totals by a matrix product gives all columns at once.

    >>> values = np.array([1.0, 0.0, 3.0, np.nan])
    >>> fast = bootstrap_means(values, resamples=300, seed=4)[:, 0]
    >>> picks = np.random.default_rng(4).integers(0, 4, size=(300, 4))  # reference: row by row
    >>> slow = [np.nansum(values[p]) / np.isfinite(values[p]).sum() for p in picks]
    >>> bool(np.allclose(fast, slow))
    True
    """
    vals = np.asarray(values, dtype=np.float64)
    vals = vals[:, None] if vals.ndim == 1 else vals
    defined = np.isfinite(vals)
    dens = defined.astype(np.float64)
    if counts is not None:
        dens *= np.asarray(counts, dtype=np.float64).reshape(vals.shape)
    nums = np.where(defined, vals, 0.0)
    labels = _labels(len(vals), clusters)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    if n_clusters == 0:
        return np.full((resamples, vals.shape[1]), np.nan)
    width = vals.shape[1]
    # columns often share their denominators (every metric defined for every user, a slice's rows):
    # each distinct one is weighted once
    first: dict[bytes, int] = {}  # a denominator column's bytes -> its first column
    which = np.array([first.setdefault(dens[:, j].tobytes(), len(first)) for j in range(width)])
    shared = dens[:, np.unique(which, return_index=True)[1]]  # the first column of each
    totals = np.zeros((n_clusters, width + shared.shape[1]))  # each cluster's numerators, denominators
    np.add.at(totals, labels, np.hstack([nums, shared]))
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, width))
    for start in range(0, resamples, BLOCK):
        count = min(BLOCK, resamples - start)
        # int32: the same draws as the default int64 (one 32-bit draw each below 2**32), 4x faster
        picks = rng.integers(0, n_clusters, size=(count, n_clusters), dtype=np.int32)
        weights = np.empty((count, n_clusters))  # draws of each cluster in each resample
        # one bincount per resample: its counters stay in cache, where one bincount over the whole
        # block (count x n_clusters counters) misses it on every draw and is ~10x slower
        for row in range(count):
            weights[row] = np.bincount(picks[row], minlength=n_clusters)
        with np.errstate(divide="ignore", invalid="ignore"):
            drawn = weights @ totals
            out[start : start + count] = drawn[:, :width] / drawn[:, width + which]
    return out


def percentile_interval(
    means: np.ndarray, *, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of each column of :func:`bootstrap_means`; NaN resamples (no defined
    row drawn) are left out, and an all-NaN column gives NaN."""
    tail = 100 * (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: NaN is the answer
        low, high = np.nanpercentile(means, [tail, 100 - tail], axis=0)
    return np.atleast_1d(low), np.atleast_1d(high)


def intervals(
    columns: Mapping[str, np.ndarray],
    *,
    counts: Mapping[str, np.ndarray] | None = None,
    clusters: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, float]]:
    """``{name: {"mean", "ci_low", "ci_high"}}``: each column's statistic on all rows and its
    percentile bootstrap interval, all columns resampled together.

    ``counts[name]``, where given, makes that column a ratio of totals (see :func:`bootstrap_means`).

    >>> found = intervals({"x": np.array([0.0, 1.0, 1.0, 0.0]), "y": np.full(4, 0.5)}, resamples=500)
    >>> found["x"]["mean"], found["y"]
    (0.5, {'mean': 0.5, 'ci_low': 0.5, 'ci_high': 0.5})
    """
    if not columns:
        return {}
    names = list(columns)
    values = np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in names])
    given = counts or {}
    dens = np.column_stack(
        [np.asarray(given[name], dtype=np.float64) if name in given else np.isfinite(values[:, j])
         for j, name in enumerate(names)]
    )  # fmt: skip
    means = bootstrap_means(values, counts=dens, clusters=clusters, resamples=resamples, seed=seed)
    low, high = percentile_interval(means, confidence=confidence)
    defined = np.isfinite(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = np.where(defined, values, 0.0).sum(axis=0) / (dens * defined).sum(axis=0)
    return {
        name: {"mean": float(point[j]), "ci_low": float(low[j]), "ci_high": float(high[j])}
        for j, name in enumerate(names)
    }


def bootstrap_p_value(means: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of "the mean difference is 0", per column of resampled means.

    ``p = min(1, 2 * (min(#resamples <= 0, #resamples >= 0) + 1) / (resamples + 1))``: twice the
    smaller share of resamples on either side of 0 (the percentile interval's dual: ``p < 0.05``
    when 0 lies outside the 95% interval), with the +1 that keeps an estimated p above 0. Identical
    models (every resample 0) get 1.

    >>> bootstrap_p_value(np.array([[0.0], [0.0]])).tolist(), bootstrap_p_value(np.ones((99, 1))).tolist()
    ([1.0], [0.02])
    """
    means = np.asarray(means, dtype=np.float64).reshape(len(means), -1)
    defined = np.isfinite(means)
    below = ((means <= 0) & defined).sum(axis=0)
    above = ((means >= 0) & defined).sum(axis=0)
    n = defined.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(1.0, 2.0 * (np.minimum(below, above) + 1) / (n + 1))
    return np.where(n > 0, p, np.nan)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979); NaN p-values are not part of the family.

    Sorted ascending, the j-th smallest of m p-values becomes ``max_{i <= j} min(1, (m - i + 1) p_(i))``.
    Rejecting where the adjusted value is below alpha controls the family-wise error rate at alpha,
    under any dependence between the tests, and rejects at least what Bonferroni rejects.

    >>> holm([0.01, 0.04, 0.03, 0.005]).round(4).tolist()  # the textbook example: reject H1 and H4
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    defined = np.flatnonzero(np.isfinite(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    m = len(order)
    out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return out


def pairwise_tests(
    per_model: Mapping[str, Mapping[str, np.ndarray]],
    *,
    metrics: Sequence[str],
    clusters: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Paired bootstrap tests of every pair of models on each of ``metrics``, Holm-corrected.

    ``per_model[name][metric]`` holds per-row values (NaN: undefined), the same rows for every model.
    For each metric and each pair ``(a, b)``, ``a`` before ``b`` in ``per_model`` order: the mean of
    ``a - b`` over rows defined in both, its percentile bootstrap interval, the users where ``a`` is
    higher / lower / equal, the bootstrap p-value (:func:`bootstrap_p_value`) and the Holm-adjusted
    one; ``significant`` when that is below ``alpha``.

    Why adjusted p-values and not adjusted intervals: Holm is a step-down procedure on ordered
    p-values, and has no simultaneous intervals that agree with its decisions (Bonferroni intervals
    would, but are wider than Holm's rejections need). So the intervals stay the plain 95% ones, for
    the size of each difference, and ``p_holm`` says which differences the family of tests resolves.
    The family is one metric's pairs: metrics are strongly correlated views of the same lists, and a
    family over all of them would make every test pay for a question it does not answer.
    """
    names = list(per_model)
    pairs = list(itertools.combinations(names, 2))
    columns = [
        np.asarray(per_model[a][metric], dtype=np.float64)
        - np.asarray(per_model[b][metric], dtype=np.float64)
        for metric in metrics
        for a, b in pairs
    ]
    out: dict[str, Any] = {
        "models": names,
        "test": "paired percentile bootstrap, two-sided",
        "correction": "holm",
        "alpha": alpha,
        "resamples": resamples,
        "metrics": {metric: [] for metric in metrics},
    }
    if not columns:
        return out
    diffs = np.column_stack(columns)  # (rows, metrics x pairs)
    means = bootstrap_means(diffs, clusters=clusters, resamples=resamples, seed=seed)
    low, high = percentile_interval(means)
    p_values = bootstrap_p_value(means)
    labels = _labels(len(diffs), clusters)
    for m, metric in enumerate(metrics):
        cols = range(m * len(pairs), (m + 1) * len(pairs))
        adjusted = holm(p_values[list(cols)])
        for (a, b), j, p_holm in zip(pairs, cols, adjusted, strict=True):
            diff = diffs[:, j]
            defined = np.isfinite(diff)
            out["metrics"][metric].append(
                {
                    "a": a,
                    "b": b,
                    "users": int(defined.sum()),
                    "clusters": len(np.unique(labels[defined])),
                    "mean_diff": float(diff[defined].mean()) if defined.any() else float("nan"),
                    "ci_low": float(low[j]),
                    "ci_high": float(high[j]),
                    "p_value": float(p_values[j]),
                    "p_holm": float(p_holm),
                    "significant": bool(p_holm < alpha),
                    "wins": int((diff[defined] > 0).sum()),
                    "losses": int((diff[defined] < 0).sum()),
                    "ties": int((diff[defined] == 0).sum()),
                }
            )
    return out
