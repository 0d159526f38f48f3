"""Accuracy by slice: user activity, the target's popularity, its category, cold targets.

A test row is a user (with ``--windows``, a (user, period) pair), ranked against its held-out
targets. Slices are of two kinds:

* **user slices** split the rows: ``activity``, the row's history length (training events before
  its test period) in buckets ``0``, ``1``, ``2-3``, ``4-7``, ... ``64+`` (:data:`ACTIVITY_EDGES`).
  Every row falls in exactly one bucket.
* **target slices** split the targets, each judged by its item's training data of the row's period:
  ``popularity`` (:func:`popularity_class`: head / torso / tail), ``cold`` (at most
  :data:`COLD_MAX_INTERACTIONS` training interactions, warm otherwise) and ``category`` (the items
  table's ``category``: the :data:`TOP_CATEGORIES` categories with the most training interactions,
  the rest and the uncategorised in ``other``; only when the items table has the column). A row is
  in a target slice when it has at least one target there, and its metrics there count only those
  targets: ``recall@k`` on the tail is the share of a user's tail targets found in the top k (the
  whole list counts, its other items are simply not hits). A row with targets in several slices
  is in each of them (temporal targets), so only the targets add up over a family's slices.

Every slice reports, for each model, ``SLICE_METRICS`` at each cut-off with a bootstrap interval
over its rows (``SLICE_RESAMPLES`` resamples; :mod:`recsys.evaluation.stats`). Slices reuse each
model's hit matrix: a target slice masks the hits, no list is ranked again.

>>> popularity_class(np.array([4, 4, 3, 3, 2, 2, 1, 1, 0])).tolist()  # shares before: 0, .2, .4, ...
[0, 1, 1, 2, 2, 2, 2, 2, 2]
>>> activity_bucket(np.array([0, 1, 3, 4, 100])).tolist()
[0, 1, 2, 3, 7]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.data.splits import EvalTask
from recsys.evaluation.metrics import accuracy_from_hits, hit_matrix
from recsys.evaluation.stats import intervals

# Lower bounds of the activity buckets after "0": 1, 2-3, 4-7, ..., 64+ training events.
ACTIVITY_EDGES = (1, 2, 4, 8, 16, 32, 64)
# Items sorted by training interactions, most first: the head is the top items that make the first
# 20% of the interactions (the item that crosses 20% included), the torso those up to 50%, the tail
# the rest (never-seen items included). Shares of interactions, not of items, so that the split
# follows the data's skew.
POPULARITY_SHARES = (0.2, 0.5)
POPULARITY_CLASSES = ("head", "torso", "tail")
COLD_MAX_INTERACTIONS = 4  # a cold target: at most this many training interactions (0 = never seen)
TOP_CATEGORIES = 8
OTHER = "other"
SLICE_METRICS = ("recall", "ndcg")
SLICE_RESAMPLES = 1000  # per slice: its intervals show the spread, not a test's small p-values

DEFINITIONS = {
    "activity": "the user's training events before the test period, in buckets (user slices: each "
    "test row in one)",
    "popularity": f"the target's training interactions: head = the most popular items making the first "
    f"{POPULARITY_SHARES[0]:.0%} of interactions, torso = the next, up to {POPULARITY_SHARES[1]:.0%}, "
    "tail = the rest (metrics over each row's targets in the slice)",
    "cold": f"cold = targets with at most {COLD_MAX_INTERACTIONS} training interactions (0: never seen), "
    "warm = the others",
    "category": f"the target's category: the {TOP_CATEGORIES} with the most training interactions, "
    f"the rest and uncategorised items in '{OTHER}'",
}


def activity_bucket(lengths: np.ndarray) -> np.ndarray:
    """Index of each history length's bucket in :func:`activity_names` (0 for an empty history)."""
    return np.searchsorted(np.asarray(ACTIVITY_EDGES), np.asarray(lengths), side="right")


def activity_names() -> list[str]:
    """``["0", "1", "2-3", "4-7", ..., "64+"]``, the names of :func:`activity_bucket`'s indices."""
    edges = ACTIVITY_EDGES
    spans = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    return ["0", *spans, f"{edges[-1]}+"]


def popularity_class(counts: np.ndarray, *, shares: Sequence[float] = POPULARITY_SHARES) -> np.ndarray:
    """(n_items,) 0 head, 1 torso, 2 tail, from training interactions per item (see
    :data:`POPULARITY_SHARES`): an item's class is set by the share of all interactions held by the
    items ranked above it (ties: lower index first)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return np.full(len(counts), len(shares), dtype=np.int64)
    order = np.argsort(-counts, kind="stable")
    before = np.empty(len(counts))
    before[order] = (np.cumsum(counts[order]) - counts[order]) / total
    classes = np.searchsorted(np.asarray(shares), before, side="right")
    classes[counts == 0] = len(shares)  # never seen: tail, whatever the shares
    return classes


def category_group(
    categories: Sequence[str | None], counts: np.ndarray, *, top: int = TOP_CATEGORIES
) -> tuple[list[str], np.ndarray]:
    """The slice names (the ``top`` categories by training interactions, then :data:`OTHER`) and
    each item's index among them.

    >>> category_group(["a", "b", None, "b", "c"], np.array([1, 2, 9, 2, 3]), top=2)
    (['b', 'c', 'other'], array([2, 0, 2, 0, 1]))
    """
    labels = np.array(["" if c is None else str(c) for c in categories], dtype=object)
    names, inverse = np.unique(labels, return_inverse=True)
    weight = np.bincount(inverse, weights=np.asarray(counts, dtype=np.float64), minlength=len(names))
    ranked = [int(j) for j in np.lexsort((names, -weight)) if names[j] != ""][:top]
    index = np.full(len(names), len(ranked))
    index[ranked] = np.arange(len(ranked))
    return [str(names[j]) for j in ranked] + [OTHER], index[inverse]


@dataclass(frozen=True, eq=False)
class SliceRows:
    """What slicing needs of the test rows, pooled over test periods in order (as the metrics are)."""

    targets: sp.csr_matrix  # (n_rows, n_items) binary held-out items
    history_length: np.ndarray  # (n_rows,) training events of the row's user before its period
    period: np.ndarray  # (n_rows,) the row's test period, an index into item_counts
    item_counts: np.ndarray  # (n_periods, n_items) training interactions of each item per period
    categories: Sequence[str | None] | None = None  # (n_items,) the items table's category column

    @classmethod
    def from_tasks(
        cls, tasks: Sequence[EvalTask], *, categories: Sequence[str | None] | None = None
    ) -> SliceRows:
        """The rows of each test task, in order."""
        return cls(
            targets=sp.vstack([task.targets for task in tasks]).tocsr(),
            history_length=np.concatenate([np.diff(task.train.indptr)[task.users] for task in tasks]),
            period=np.repeat(np.arange(len(tasks)), [len(task.users) for task in tasks]),
            item_counts=np.stack([task.train.item_counts() for task in tasks]),
            categories=categories,
        )


@dataclass(frozen=True, eq=False)
class Family:
    """One way of slicing: its slice names and, per row (user slices) or per period and item (target
    slices), the index of the slice."""

    name: str
    names: list[str]
    rows: np.ndarray | None = None  # (n_rows,) user slices
    items: np.ndarray | None = None  # (n_periods, n_items) target slices


def families(rows: SliceRows) -> list[Family]:
    """activity, popularity, cold and (with categories) category, as the module docstring defines."""
    counts = rows.item_counts
    found = [
        Family("activity", activity_names(), rows=activity_bucket(rows.history_length)),
        Family("popularity", list(POPULARITY_CLASSES), items=np.stack([popularity_class(c) for c in counts])),
        Family("cold", ["cold", "warm"], items=(counts > COLD_MAX_INTERACTIONS).astype(np.int64)),
    ]
    if rows.categories is not None:
        names, index = category_group(rows.categories, counts[-1])  # the last period: the ordinary test
        found.append(Family("category", names, items=np.broadcast_to(index, counts.shape)))
    return found


def slice_metrics(
    lists: Mapping[str, Sequence[np.ndarray]],
    rows: SliceRows,
    *,
    ks: Sequence[int],
    clusters: np.ndarray | None = None,
    seed: int = 0,
    resamples: int = SLICE_RESAMPLES,
) -> dict[str, Any]:
    """``{family: {"definition", "slices": [{"name", "users", "targets", "models": {model: {metric:
    {"mean", "ci_low", "ci_high"}}}}]}}``, empty slices left out.

    ``lists[model]`` holds the model's test lists of each seed, rows as in ``rows`` (per-row values
    are averaged over the seeds); ``clusters`` (one label per row) resamples a user's periods together.
    All slices share one bootstrap of all the rows, each slice's statistic over the members a
    resample holds: the size of a slice varies between resamples as it would between samples.
    """
    cut = max(ks)
    n_rel = np.diff(rows.targets.indptr)
    entry_row = np.repeat(np.arange(len(n_rel)), n_rel)
    hits = {name: [hit_matrix(r[:, :cut], rows.targets) for r in runs] for name, runs in lists.items()}
    out: dict[str, Any] = {}
    columns: list[tuple[dict[str, Any], str, str, np.ndarray]] = []  # (slice, model, metric, rows)
    for family in families(rows):
        if family.rows is not None:  # user slices: a subset of the rows, with all their targets
            whole = _per_model(hits, None, n_rel, ks=ks)
        else:  # target slices: the slice of each target (by the item's data in the row's period)
            assert family.items is not None
            items = family.items
            code = items[rows.period[entry_row], rows.targets.indices]
            listed_codes = {  # the slice of each listed item (padding's is never looked at: no hit)
                name: [items[rows.period[:, None], np.maximum(r[:, :cut], 0)] for r in runs]
                for name, runs in lists.items()
            }
        found = []
        for index, slice_name in enumerate(family.names):
            if family.rows is not None:
                members, in_slice = family.rows == index, n_rel
            else:
                in_slice = np.bincount(entry_row[code == index], minlength=len(n_rel))
                members = in_slice > 0
            if not members.any():
                continue
            if family.rows is not None:
                per_model = whole
            else:  # only the hits on the slice's items count, against the slice's targets
                inside = {name: [listed == index for listed in runs] for name, runs in listed_codes.items()}
                per_model = _per_model(hits, inside, in_slice, ks=ks)
            entry: dict[str, Any] = {
                "name": slice_name,
                "users": int(members.sum()),
                "targets": int(in_slice[members].sum()),
                "models": {name: {} for name in per_model},
            }
            columns += [
                (entry, name, metric, np.where(members, values, np.nan))
                for name, by_metric in per_model.items()
                for metric, values in by_metric.items()
            ]
            found.append(entry)
        out[family.name] = {"definition": DEFINITIONS[family.name], "slices": found}
    spans = intervals(
        {str(j): values for j, (_, _, _, values) in enumerate(columns)},
        clusters=clusters,
        resamples=resamples,
        seed=seed,
    )
    for j, (entry, name, metric, _) in enumerate(columns):
        entry["models"][name][metric] = spans[str(j)]
    return out


def _per_model(
    hits: Mapping[str, Sequence[np.ndarray]],
    inside: Mapping[str, Sequence[np.ndarray]] | None,
    n_relevant: np.ndarray,
    *,
    ks: Sequence[int],
) -> dict[str, dict[str, np.ndarray]]:
    """Each model's per-row ``SLICE_METRICS`` from its hits (masked to the slice's items when
    ``inside`` says which list positions hold one), averaged over its runs."""
    out = {}
    for name, runs in hits.items():
        per_run = [
            accuracy_from_hits(h if inside is None else h & inside[name][j], n_relevant, ks=ks)
            for j, h in enumerate(runs)
        ]
        out[name] = {
            f"{metric}@{k}": np.mean([values[f"{metric}@{k}"] for values in per_run], axis=0)
            for metric in SLICE_METRICS
            for k in sorted(set(ks))
        }
    return out
