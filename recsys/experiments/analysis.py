"""What ``recsys evaluate`` reports beyond its metrics table, computed once for the report to render.

:func:`analyse` turns the run (each model's test lists of each seed, the test periods, the per-user
metrics) into the JSON sections that ``docs/evaluation_json.md`` describes: ``intervals``,
``pairwise``, ``slices``, ``beyond_accuracy``, ``curves``, ``popularity_bias``, ``samples`` and
``pipeline_diagnostics``. The statistics live in :mod:`recsys.evaluation` (``stats``, ``slices``,
``metrics``); this module gathers their inputs from the run and names the results.

Pooling: with ``--windows`` the rows are (user, period) pairs and every interval resamples users with
all their periods; catalogue statistics (Gini, popularity lift) are each period's value weighted by
its test users, as ``coverage`` is. With ``--repeats``, per-user values and statistics are means over
the seeds; the popularity distributions, the samples and the pipeline diagnostics are the first
seed's, as ``details`` is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from recsys.data import schema as S
from recsys.data.dataset import Dataset
from recsys.data.splits import EvalTask
from recsys.evaluation.metrics import (
    accuracy_curves,
    exposure_gini,
    intra_list_diversity_per_list,
    novelty_per_list,
    popularity_lift,
)
from recsys.evaluation.protocol import ModelResult, item_information
from recsys.evaluation.slices import SliceRows, slice_metrics
from recsys.evaluation.stats import CONFIDENCE, RESAMPLES, intervals, pairwise_tests

CURVE_DEPTH = 100  # NDCG and recall curves at k = 1..100: every test list is ranked this deep
SAMPLE_USERS = 8
SAMPLE_HISTORY = 5  # the sample's most recent history items
SAMPLE_TOP = 10
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
PAIRWISE_METRICS = ("ndcg", "recall")
SECTIONS = (  # the JSON keys, in order
    "intervals",
    "pairwise",
    "slices",
    "beyond_accuracy",
    "curves",
    "popularity_bias",
    "samples",
    "pipeline_diagnostics",
)


def analyse(
    dataset: Dataset,
    runs: Mapping[str, Sequence[ModelResult]],
    tasks: Sequence[EvalTask],
    per_user: Mapping[str, Mapping[str, np.ndarray]],
    *,
    ks: Sequence[int],
    seed: int,
    embeddings: np.ndarray | None = None,
    step: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """The report's sections from a run: ``tasks`` are its test tasks in period order, ``per_user``
    each model's per-row accuracy metrics (seed means, rows as in ``tasks``); ``step(name)`` is
    called as each section is done (a progress bar)."""
    lists = {name: [r.recommended for r in model_runs] for name, model_runs in runs.items()}
    users = np.concatenate([task.users for task in tasks])
    clusters = users if len(tasks) > 1 else None  # one user's periods are resampled together
    categories = (
        dataset.items.get_column(S.CATEGORY).to_list() if S.CATEGORY in dataset.items.columns else None
    )
    rows = SliceRows.from_tasks(tasks, categories=categories)
    sections: dict[str, Callable[[], Any]] = {
        "intervals": lambda: _intervals(per_user, lists, tasks, ks=ks, clusters=clusters, seed=seed,
                                        embeddings=embeddings),
        "pairwise": lambda: pairwise_tests(
            per_user, metrics=[f"{m}@{k}" for k in ks for m in PAIRWISE_METRICS], clusters=clusters, seed=seed
        ),
        "slices": lambda: slice_metrics(lists, rows, ks=ks, clusters=clusters, seed=seed),
        "beyond_accuracy": lambda: _beyond_accuracy(runs, tasks, ks=ks),
        "curves": lambda: _curves(lists, rows),
        "popularity_bias": lambda: _popularity_bias(lists, tasks, k=ks[0]),
        "samples": lambda: _samples(dataset, lists, tasks, seed=seed),
        "pipeline_diagnostics": lambda: {
            name: model_runs[0].diagnostics for name, model_runs in runs.items() if model_runs[0].diagnostics
        },
    }  # fmt: skip
    assert tuple(sections) == SECTIONS
    out = {}
    for name, compute in sections.items():
        out[name] = compute()
        step(name)
    return out


def _periods(tasks: Sequence[EvalTask]) -> list[slice]:
    """The rows of each test period in the pooled lists."""
    ends = np.cumsum([len(task.users) for task in tasks])
    return [slice(int(end - len(task.users)), int(end)) for task, end in zip(tasks, ends, strict=True)]


def _intervals(
    per_user: Mapping[str, Mapping[str, np.ndarray]],
    lists: Mapping[str, Sequence[np.ndarray]],
    tasks: Sequence[EvalTask],
    *,
    ks: Sequence[int],
    clusters: np.ndarray | None,
    seed: int,
    embeddings: np.ndarray | None,
) -> dict[str, Any]:
    """Bootstrap intervals of every per-user metric, novelty (a ratio of the lists' totals) and, with
    embeddings, intra-list diversity; all models and metrics share the resamples."""
    periods = [
        (rows, item_information(task.train)) for rows, task in zip(_periods(tasks), tasks, strict=True)
    ]
    entries: list[tuple[str, str, np.ndarray, np.ndarray | None]] = []  # model, metric, rows, counts
    for name, values in per_user.items():
        entries += [(name, metric, column, None) for metric, column in values.items()]
        for k in ks:
            per_run = [[novelty_per_list(r[rows], info, k=k) for rows, info in periods] for r in lists[name]]
            bits = np.mean([np.concatenate([b for b, _ in run]) for run in per_run], axis=0)
            length = np.mean([np.concatenate([c for _, c in run]) for run in per_run], axis=0)
            entries.append((name, f"novelty@{k}", bits, length))
            if embeddings is not None:
                ild = [intra_list_diversity_per_list(r, embeddings, k=k) for r in lists[name]]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a list too short in every seed: NaN
                    entries.append((name, f"ild@{k}", np.nanmean(ild, axis=0), None))
    found = intervals(
        {str(j): column for j, (_, _, column, _) in enumerate(entries)},
        counts={str(j): count for j, (_, _, _, count) in enumerate(entries) if count is not None},
        clusters=clusters,
        seed=seed,
    )
    models: dict[str, dict[str, dict[str, float]]] = {name: {} for name in per_user}
    for j, (name, metric, _, _) in enumerate(entries):
        models[name][metric] = found[str(j)]
    n_rows = len(next(iter(lists.values()))[0]) if lists else 0
    return {
        "confidence": CONFIDENCE,
        "resamples": RESAMPLES,
        "seed": seed,
        "rows": n_rows,
        "clusters": n_rows if clusters is None else len(np.unique(clusters)),
        "models": models,
    }


BEYOND_ACCURACY = {
    "coverage": "share of the catalogue shown in at least one top-k list",
    "gini": "Gini index of item exposure in the top-k lists over the whole catalogue (0 = every item "
    "shown equally often, near 1 = a few items take all the exposure)",
    "novelty": "mean self-information -log2 p(i) of the recommended items, p(i) the share of training "
    "users who interacted with i",
    "ild": "intra-list diversity: mean pairwise cosine distance of the items' embeddings in a list",
    "popularity_lift": "mean training popularity of the recommended items over that of the users' "
    "history items (1 = as popular as what users chose; above 1 = a lean to popular items)",
}


def _beyond_accuracy(
    runs: Mapping[str, Sequence[ModelResult]], tasks: Sequence[EvalTask], *, ks: Sequence[int]
) -> dict[str, Any]:
    """Coverage, novelty and ILD as the metrics table has them; the Gini index of exposure and the
    popularity lift per test period, weighted by its test users."""
    periods, weights = _periods(tasks), [len(task.users) for task in tasks]
    counts = [task.train.item_counts() for task in tasks]
    history = [task.train.histories(task.users).items for task in tasks]
    n_items = tasks[-1].train.n_items

    def one_run(result: ModelResult) -> dict[str, float]:
        values: dict[str, float] = {}
        for k in ks:
            values[f"coverage@{k}"] = result.metrics[f"coverage@{k}"]
            values[f"gini@{k}"] = float(
                np.average([exposure_gini(result.recommended[rows], n_items, k=k) for rows in periods],
                           weights=weights)
            )  # fmt: skip
            values[f"novelty@{k}"] = result.metrics[f"novelty@{k}"]
            if f"ild@{k}" in result.metrics:
                values[f"ild@{k}"] = result.metrics[f"ild@{k}"]
            lifts = [popularity_lift(result.recommended[rows], items, count, k=k)
                     for rows, items, count in zip(periods, history, counts, strict=True)]  # fmt: skip
            values[f"popularity_lift@{k}"] = float(np.average(lifts, weights=weights))
        return values

    models = {}
    for name, model_runs in runs.items():
        per_run = [one_run(result) for result in model_runs]
        models[name] = {key: float(np.mean([values[key] for values in per_run])) for key in per_run[0]}
    return {"definitions": BEYOND_ACCURACY, "models": models}


def _curves(lists: Mapping[str, Sequence[np.ndarray]], rows: SliceRows) -> dict[str, Any]:
    """Recall and NDCG at k = 1..``CURVE_DEPTH`` of each model (seed means), from prefixes of its lists."""
    models: dict[str, dict[str, list[float]]] = {}
    depth = CURVE_DEPTH
    for name, runs in lists.items():
        per_run = [accuracy_curves(r, rows.targets, max_k=CURVE_DEPTH) for r in runs]
        models[name] = {
            key: np.mean([c[key] for c in per_run], axis=0).tolist() for key in ("recall", "ndcg")
        }
        depth = min(depth, len(models[name]["recall"]))
    return {"k": list(range(1, depth + 1)), "models": models}


def _popularity_bias(
    lists: Mapping[str, Sequence[np.ndarray]], tasks: Sequence[EvalTask], *, k: int
) -> dict[str, Any]:
    """The training popularity of the items in each model's top-``k`` lists (first seed) and of the
    users' history items: mean, quantiles and a histogram on shared power-of-two bins."""
    periods = _periods(tasks)
    counts = [task.train.item_counts() for task in tasks]
    history = np.concatenate(
        [count[task.train.histories(task.users).items] for count, task in zip(counts, tasks, strict=True)]
    )
    shown = {}
    for name, runs in lists.items():
        tops = [runs[0][rows, :k] for rows in periods]
        shown[name] = np.concatenate([count[top[top >= 0]] for count, top in zip(counts, tops, strict=True)])
    largest = max([int(history.max(initial=0))] + [int(v.max(initial=0)) for v in shown.values()])
    edges = [0] + [2**j for j in range(int(largest).bit_length() + 1)]  # the last edge exceeds the largest
    return {
        "k": k,
        "measure": "training interactions of the item (in the test period's training data)",
        "quantiles": list(QUANTILES),
        "edges": edges,
        "history": _profile(history, edges),
        "models": {name: _profile(values, edges) for name, values in shown.items()},
    }


def _profile(values: np.ndarray, edges: list[int]) -> dict[str, Any]:
    """Count, mean, :data:`QUANTILES` and the share of ``values`` in each bin ``[edges[j], edges[j+1])``."""
    if not len(values):
        return {
            "count": 0,
            "mean": None,
            "quantiles": [None] * len(QUANTILES),
            "histogram": [0.0] * (len(edges) - 1),
        }
    histogram = np.histogram(values, bins=edges)[0] / len(values)
    return {
        "count": len(values),
        "mean": float(values.mean()),
        "quantiles": np.quantile(values, QUANTILES).tolist(),
        "histogram": histogram.tolist(),
    }


def _samples(
    dataset: Dataset, lists: Mapping[str, Sequence[np.ndarray]], tasks: Sequence[EvalTask], *, seed: int
) -> list[dict[str, Any]]:
    """``SAMPLE_USERS`` test users of the last period (seeded): their latest history items, held-out
    targets and each model's top ``SAMPLE_TOP`` (first seed), as item ids and titles."""
    last, rows = tasks[-1], _periods(tasks)[-1]
    picked = np.sort(
        np.random.default_rng(seed).choice(
            len(last.users), size=min(SAMPLE_USERS, len(last.users)), replace=False
        )
    )
    item_ids, titles = dataset.item_ids, dataset.items.get_column(S.TITLE).to_list()

    def described(items: np.ndarray) -> list[dict[str, Any]]:
        return [{"item_id": str(item_ids[i]), "title": titles[i]} for i in items.tolist()]

    histories = last.train.histories(last.users[picked])
    out = []
    for j, row in enumerate(picked.tolist()):
        sequence, targets = histories.sequence(j), last.targets[row].indices
        top = {name: runs[0][rows.start + row, :SAMPLE_TOP] for name, runs in lists.items()}
        out.append(
            {
                "user_id": str(dataset.user_ids[int(last.users[row])]),
                "history_length": len(sequence),
                "history": described(sequence[-SAMPLE_HISTORY:]),
                "targets": described(targets),
                "models": {
                    name: [
                        item | {"hit": bool(np.isin(i, targets))}
                        for item, i in zip(described(ids[ids >= 0]), ids[ids >= 0].tolist(), strict=True)
                    ]
                    for name, ids in top.items()
                },
            }
        )
    return out
