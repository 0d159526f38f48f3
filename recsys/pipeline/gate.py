"""The nightly job's evaluation gate: publish a candidate only if it is not worse than production.

Both bundles answer the same question through the serving path (``Recommender.recommend_batch``):
the users active in the last ``gate_days`` of data who were seen before it, each with their history
before the window; the targets are the items each of them took in the window that they had not
taken before (the temporal split's rule, ``recsys.data.splits.window_task``); on data timed by an
order index, each user's last event (``gate_task``). Per-user NDCG@10 of
both goes into ``paired_difference`` (candidate - production), and the candidate is refused when the
upper end of its 95% interval is below ``-tolerance``: a loss the data resolves. Sanity checks also
refuse it: an empty list for any evaluated user, coverage@10 at or below the floor, a NaN score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.data.dataset import Dataset
from recsys.data.splits import EvalTask, leave_last_out, window_task
from recsys.evaluation.metrics import accuracy_per_user, coverage, paired_difference, ranking_metrics

if TYPE_CHECKING:
    from recsys.pipeline.recommender import Recommender

K = 10
METRIC = f"ndcg@{K}"
DAY = 86_400


def gate_task(dataset: Dataset, *, gate_days: float) -> EvalTask:
    """The held-out window: train on events before the last ``gate_days`` of data, evaluate the users
    seen before it on their new items in it.

    Data whose timestamps are an order index, not clock time, has no days: there the window is each
    user's last event (the leave-last-out test task, users with at least 3 events), so a shop that
    records only the order of events is gated too.
    """
    from recsys.data import schema as S

    data = dataset.to_interactions()
    if not len(data):
        raise ValueError("the data holds no interactions: nothing to train or gate on")
    if not S.are_unix_seconds(data.timestamps):
        last = leave_last_out(data).test
        return EvalTask("gate", last.train, last.users, last.targets)
    cutoff = int(data.timestamps.max()) + 1 - int(gate_days * DAY)
    before = data.timestamps < cutoff
    return window_task(data, before, ~before, name="gate", cold_start_users=False)


@dataclass(frozen=True)
class GateScores:
    """One bundle's answers on the gate task: lists (item rows of the dataset, -1 padded) and checks."""

    per_user: np.ndarray  # (n_users,) NDCG@10
    metrics: dict[str, float]
    problems: tuple[str, ...]  # failed sanity checks, in words


def score_bundle(
    recommender: Recommender, task: EvalTask, dataset: Dataset, *, coverage_floor: float
) -> GateScores:
    """Ask ``recommender`` for each gate user's top ``K`` from their history before the window."""
    ids = dataset.item_ids
    row_of = {item: i for i, item in enumerate(ids)}
    histories = task.train.histories(task.users)
    lists = recommender.recommend_batch(
        [ids[histories.sequence(u)].tolist() for u in range(len(task.users))], n=K
    )
    recommended = np.full((len(lists), K), -1, dtype=np.int32)
    problems = []
    scores = np.array([r.score for answer in lists for r in answer], dtype=np.float64)
    for u, answer in enumerate(lists):
        recommended[u, : len(answer)] = [row_of.get(r.item_id, -1) for r in answer]
    empty = sum(1 for answer in lists if not answer)
    if empty:
        problems.append(f"{empty} of {len(lists)} users got an empty list")
    if np.isnan(scores).any():
        problems.append(f"{int(np.isnan(scores).sum())} NaN scores")
    covered = coverage(recommended, dataset.n_items, k=K)
    if covered <= coverage_floor:
        problems.append(f"coverage@{K} {covered:.4f} is not above the floor {coverage_floor}")
    metrics = ranking_metrics(recommended, task.targets, ks=[K]) | {f"coverage@{K}": covered}
    per_user = accuracy_per_user(recommended, task.targets, ks=[K])[METRIC]
    return GateScores(per_user, metrics, tuple(problems))


@dataclass(frozen=True)
class GateDecision:
    publish: bool
    reason: str
    users: int
    candidate: dict[str, float]
    production: dict[str, float] | None
    interval: dict[str, float] | None  # paired_difference(candidate, production) on NDCG@10

    def to_json(self) -> dict[str, Any]:
        def clean(values: dict[str, float] | None) -> dict[str, float | None] | None:
            if values is None:
                return None
            return {
                k: (None if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in values.items()
            }

        return {
            "publish": self.publish,
            "reason": self.reason,
            "users": self.users,
            "metric": METRIC,
            "candidate": clean(self.candidate),
            "production": clean(self.production),
            "interval": clean(self.interval),
        }


def decide(candidate: GateScores, production: GateScores | None, *, tolerance: float) -> GateDecision:
    """The rule of the module docstring. Without production (the first run, or one this code cannot
    read) only the sanity checks gate."""
    users = len(candidate.per_user)
    if candidate.problems:
        reason = "candidate fails sanity checks: " + "; ".join(candidate.problems)
        theirs = production.metrics if production is not None else None
        return GateDecision(False, reason, users, candidate.metrics, theirs, None)
    if production is None:
        return GateDecision(
            True,
            "no production model to compare with: published on the sanity checks alone",
            users,
            candidate.metrics,
            None,
            None,
        )
    diff = paired_difference(candidate.per_user, production.per_user)
    high = diff["ci_high"]
    if math.isnan(high):
        return GateDecision(
            False,
            "no gate user with a target: nothing to compare on",
            users,
            candidate.metrics,
            production.metrics,
            diff,
        )
    publish = high >= -tolerance
    reason = (
        f"{METRIC} difference {diff['mean_diff']:+.4f}, 95% interval [{diff['ci_low']:+.4f}, {high:+.4f}] "
        + ("reaches" if publish else "lies below")
        + f" -tolerance {-tolerance}"
    )
    return GateDecision(publish, reason, users, candidate.metrics, production.metrics, diff)
