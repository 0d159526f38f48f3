"""The offline evaluation protocol: fit, rank all items, score against held-out targets; tune, then test.

``evaluate_task`` fits a generator on ``task.train``, ranks the full catalogue for each evaluated
user's training history (history items excluded, by the generator contract) and computes every
metric against ``task.targets``. ``tune_and_test`` picks the grid entry with the best validation
NDCG@10 (each fitted on ``split.validation.train``), refits it on ``split.test.train`` and reports
test metrics; a one-entry grid skips validation. Nothing about the test targets reaches a model.

>>> from recsys.candidates.popularity import Popularity, PopularityConfig
>>> from recsys.data.dataset import Interactions
>>> from recsys.data.splits import leave_last_out
>>> data = Interactions.from_arrays(
...     [0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 2, 0, 1, 2, 1, 0, 2], n_users=3, n_items=4
... )
>>> grid = [PopularityConfig(), PopularityConfig(half_life=1.0)]
>>> result = tune_and_test(Popularity, grid, leave_last_out(data), ks=[2])
>>> result.metrics["hitrate@2"]  # two items are left to rank for each user: the target is one
1.0
>>> result.params, len(result.validation)
({'half_life': None, 'use_weights': False}, 2)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from recsys.candidates.base import CandidateGenerator
from recsys.data.dataset import Interactions
from recsys.data.splits import EvalTask, Split
from recsys.evaluation.metrics import ranking_metrics, self_information

if TYPE_CHECKING:
    from rich.progress import Progress

C = TypeVar("C")
# What a model's ``diagnose`` reports after the test fit: the fitted model and its test task in,
# JSON-ready figures out (the two-stage pipeline's candidate recall per source, for example).
Diagnose = Callable[[CandidateGenerator, EvalTask], dict[str, Any]]

SELECTION_METRIC = "ndcg@10"
RECOMMEND_CHUNK = 8192  # users per recommend() call: bounds memory and paces the progress bar


@dataclass(frozen=True)
class TaskResult:
    """Metrics of one fitted generator on one task, and the (users, max k) lists it produced."""

    metrics: dict[str, float]
    recommended: np.ndarray  # (n_eval, max(max(ks), depth)) int32, -1 padded
    fit_seconds: float
    recommend_seconds: float


@dataclass(frozen=True)
class ModelResult:
    """Test metrics of the chosen configuration, with what led to choosing it."""

    metrics: dict[str, float]
    params: dict[str, Any]
    recommended: np.ndarray  # test lists, (n_test_users, max(max(ks), depth))
    fit_seconds: float
    recommend_seconds: float
    validation: list[dict[str, Any]] = field(default_factory=list)  # [{"params", metric: value}]
    windows: list[dict[str, Any]] = field(default_factory=list)  # pooled test periods, earliest first
    diagnostics: dict[str, Any] = field(default_factory=dict)  # ``diagnose`` on the test fit, if any

    def details(self) -> dict[str, Any]:
        """JSON-ready description: chosen params, validation results and timings."""
        out = {
            "params": self.params,
            "selection_metric": SELECTION_METRIC,
            "validation": self.validation,
            "fit_seconds": round(self.fit_seconds, 3),
            "recommend_seconds": round(self.recommend_seconds, 3),
        }
        return {**out, "windows": self.windows} if self.windows else out


def evaluate_task(
    model: CandidateGenerator,
    task: EvalTask,
    *,
    ks: Sequence[int],
    depth: int = 0,
    progress: Progress | None = None,
    label: str = "",
) -> TaskResult:
    """Fit ``model`` on ``task.train`` and score its full-catalogue top-``max(ks)`` lists.

    ``depth`` > ``max(ks)`` asks for longer lists (metric curves over deeper cut-offs), whose first
    ``max(ks)`` items, and so every metric, are what they are without it. Two rankings of the same
    scores may order tied items differently (a top-k partition depends on k), so where a row's top
    ``max(ks) + 1`` scores hold a tie, its ``max(ks)``-long list is ranked too and extended
    (:func:`extend_lists`); elsewhere the prefix is that list, since a model's n items are its n best.
    """
    if not len(task.users):
        raise ValueError(f"the {task.name} task has no evaluated users: nothing to score")
    n = max(ks)
    start = time.perf_counter()
    model.fit(task.train)
    fit_seconds = time.perf_counter() - start

    start = time.perf_counter()
    recommended = np.full((len(task.users), max(n, depth)), -1, dtype=np.int32)
    bar = progress.add_task(f"{label} recommend", total=len(task.users)) if progress else None
    for lo in range(0, len(task.users), RECOMMEND_CHUNK):
        users = task.users[lo : lo + RECOMMEND_CHUNK]
        ids, scores = model.recommend(task.train.histories(users), max(n, depth))
        if depth > n:
            top = scores[:, : n + 1]
            tied = ((top[:, 1:] == top[:, :-1]) & np.isfinite(top[:, 1:])).any(axis=1)
            if tied.any():
                ids[tied] = extend_lists(model.recommend(task.train.histories(users[tied]), n)[0], ids[tied])
        recommended[lo : lo + len(users)] = ids
        if progress is not None and bar is not None:
            progress.advance(bar, len(users))
    if progress is not None and bar is not None:
        progress.remove_task(bar)
    recommend_seconds = time.perf_counter() - start

    metrics = ranking_metrics(
        recommended[:, :n], task.targets, ks=ks, information=item_information(task.train)
    )  # the lists of max(ks) items: their metrics are those of the longer lists, at less cost
    return TaskResult(metrics, recommended, fit_seconds, recommend_seconds)


def extend_lists(lists: np.ndarray, deeper: np.ndarray) -> np.ndarray:
    """``lists`` (rows of item ids, -1 padded) followed by the items of ``deeper`` that they lack, in
    ``deeper``'s order, cut to ``deeper``'s width.

    Two rankings of the same scores can order tied items differently (a top-k partition depends on
    k), so the top 50 of a 100-long list need not be the 50-long list; extending keeps the list the
    metrics are computed on exactly as it was, and the tail a valid continuation of it.

    >>> extend_lists(np.array([[3, 1], [2, -1]]), np.array([[3, 5, 1, 4], [2, -1, -1, -1]])).tolist()
    [[3, 1, 5, 4], [2, -1, -1, -1]]
    """
    rows, width = len(lists), deeper.shape[1]
    out = np.full((rows, width), -1, dtype=np.int32)
    out[:, : lists.shape[1]] = lists[:, :width]
    span = int(max(lists.max(initial=-1), deeper.max(initial=-1))) + 2  # ids and -1 as distinct keys
    row = np.arange(rows, dtype=np.int64)[:, None] * span
    new = (deeper >= 0) & ~np.isin(row + deeper + 1, row + lists + 1)
    position = lists.shape[1] + np.cumsum(new, axis=1) - 1  # where each new item goes
    keep = new & (position < width)
    out[np.nonzero(keep)[0], position[keep]] = deeper[keep]
    return out


def item_information(train: Interactions) -> np.ndarray:
    """(n_items,) self-information of each item in ``train``, the novelty metric's weights: from the
    share of training users who interacted with it (``metrics.self_information``)."""
    matrix = train.matrix
    item_users = np.bincount(matrix.indices, minlength=train.n_items)  # distinct users per item
    return self_information(item_users, int((np.diff(matrix.indptr) > 0).sum()))


def _params(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return {"config": repr(config)}


def tune_and_test(
    build: Callable[[C], CandidateGenerator],
    grid: Sequence[C],
    split: Split,
    *,
    ks: Sequence[int],
    depth: int = 0,
    diagnose: Diagnose | None = None,
    progress: Progress | None = None,
    label: str = "",
) -> ModelResult:
    """Choose the grid entry with the best validation NDCG@10, refit it on the test task's data.

    ``build(config)`` must return a fresh, unfitted generator. Validation always also computes
    NDCG@10 (the selection metric), whatever ``ks`` asks for. A NaN score never wins. The test lists
    are at least ``depth`` long (:func:`evaluate_task`); ``diagnose``, when given, is called on the
    fitted test model and its result kept in ``diagnostics``.
    """
    if not grid:
        raise ValueError(f"{label or 'model'}: empty parameter grid")
    validation: list[dict[str, Any]] = []
    best = grid[0]
    if len(grid) > 1:
        val_ks = sorted({*ks, 10})
        bar = progress.add_task(f"{label} validation grid", total=len(grid)) if progress else None
        best_score = -math.inf
        for config in grid:
            result = evaluate_task(build(config), split.validation, ks=val_ks, progress=progress, label=label)
            score = result.metrics[SELECTION_METRIC]
            validation.append(
                {
                    "params": _params(config),
                    **{k: v for k, v in result.metrics.items() if k.startswith(("ndcg@", "recall@"))},
                }
            )
            if score > best_score:  # strict: the first of equal configurations wins
                best, best_score = config, score
            if progress is not None and bar is not None:
                progress.advance(bar)
        if progress is not None and bar is not None:
            progress.remove_task(bar)
    model = build(best)
    test = evaluate_task(model, split.test, ks=ks, depth=depth, progress=progress, label=label)
    return ModelResult(
        metrics=test.metrics,
        params=_params(best),
        recommended=test.recommended,
        fit_seconds=test.fit_seconds,
        recommend_seconds=test.recommend_seconds,
        validation=validation,
        diagnostics=diagnose(model, split.test) if diagnose is not None else {},
    )


def pool_windows(results: Sequence[ModelResult], splits: Sequence[Split]) -> ModelResult:
    """One model's results on several test periods (``rolling_temporal``) as one result whose rows
    are (user, period) pairs, in period order.

    Each metric is the mean of the periods' values weighted by their test users: for the per-user
    metrics (recall, NDCG, ...) that is their mean over all (user, period) pairs; coverage, a
    catalogue metric, becomes the user-weighted mean of each period's coverage. ``params`` and
    ``validation`` (and ``diagnostics``) are the last period's (the ordinary temporal split); every
    period's choice, users and metrics are in ``windows``; the seconds are summed.
    """
    if len(results) != len(splits) or not results:
        raise ValueError(f"{len(results)} results for {len(splits)} test periods")
    weights = np.array([len(split.test.users) for split in splits], dtype=np.float64)
    last = results[-1]
    return ModelResult(
        metrics={
            key: float(np.average([r.metrics[key] for r in results], weights=weights)) for key in last.metrics
        },
        params=last.params,
        recommended=np.vstack([r.recommended for r in results]),
        fit_seconds=sum(r.fit_seconds for r in results),
        recommend_seconds=sum(r.recommend_seconds for r in results),
        validation=last.validation,
        diagnostics=last.diagnostics,
        windows=[
            {"test_users": len(split.test.users), "params": r.params, "metrics": r.metrics}
            for r, split in zip(results, splits, strict=True)
        ],
    )
