"""The ranker's training set: labelled, featurised candidates of label windows held out of the data.

1. An inner split of ``data`` holds out labels (:func:`label_tasks`): each user's last event
   (leave-last-out) or the events after a time cutoff (temporal). With ``windows`` > 1 (temporal
   only) there are several consecutive label windows before the end of the data ("rolling" labels),
   and one ranker group per (user, window).
2. The candidate sources are fitted once on what precedes the earliest window, so candidates and
   features never see a label of any window; the ``refit`` sources are refitted at each later
   window's start.
3. Each group's candidates are featurised as of its window's start and labelled 1 where the
   candidate is a held-out item. Groups whose label is not among their candidates carry no ranking
   signal: they are dropped (and counted). All positives and about ``negatives`` random negatives
   per group are kept.

Memory: users are featurised ``chunk_users`` at a time and only the kept rows of each chunk are
held, so the peak grows with the rows kept (about ``negatives`` + 1 per group), not with every
candidate of every user (``total`` per group, each a few KB while it is featurised). The random
draws run through one generator in row order, chunk after chunk, and a chunk that is a multiple of
``BLOCK_ROWS`` is scored in the sources' blocks of the whole window (``candidates.base.block_rows``),
so the kept rows are, bit for bit, those of featurising every user at once. Another chunk size may
round a dense source's scores (ALS, text) differently in the last bit.

The candidate stage is passed in (``fit_source``, ``featurise``; ``recsys.pipeline.two_stage``
provides both), so this module knows the ranking layer and what is below it, never the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from recsys.candidates.base import BLOCK_ROWS, CandidateGenerator
from recsys.candidates.blend import Candidates
from recsys.data.dataset import Interactions
from recsys.data.splits import EvalTask, make_split, period_starts, window_task

Proposals = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class CandidateRows:
    """Featurised candidates of a batch of histories: ``X[j]`` is ``candidates.ids[rows[j], cols[j]]``."""

    proposals: Proposals  # each source's (ids, scores), (batch, per_source), before the blend
    candidates: Candidates
    X: np.ndarray  # (n_rows, n_features) float32, the valid candidates in row-major order
    rows: np.ndarray  # (n_rows,) history of each feature row, non-decreasing
    cols: np.ndarray  # (n_rows,) its position in ``candidates.ids[rows]``
    names: list[str]  # the columns of X


# fit_source(name, data): the source ``name``, configured as the pipeline configures it, fitted on data
FitSource = Callable[[str, Interactions], CandidateGenerator]
# featurise(generators, data): a function of users giving their histories' candidate rows in data, as
# of its end (what every user shares, such as the item features, is computed once per call)
Featurise = Callable[[Mapping[str, CandidateGenerator], Interactions], Callable[[np.ndarray], CandidateRows]]
# users featurised at once: at the default 200 candidates a user, a chunk's rows take a few hundred MB.
# A multiple of the sources' scoring block (``block_rows`` divides it) keeps every score bit for bit
CHUNK_USERS = BLOCK_ROWS


@dataclass(frozen=True)
class LabelConfig:
    """Where the labels are held out and how the rows are sampled (the two-stage config's
    ``label_*``, ``window_refit``, ``train_negatives`` and ranker seed).

    Parameters
    ----------
    protocol, fraction, windows
        The label windows: see :func:`label_tasks`.
    refit
        Sources refitted at each later window's start (those not fitted are left out).
    negatives
        Negatives sampled per group (every positive is kept), with ``seed``.
    """

    protocol: Literal["leave-last-out", "temporal"] = "leave-last-out"
    fraction: float = 0.1
    windows: int = 1
    refit: tuple[str, ...] = ()
    negatives: int = 50
    seed: int = 0


@dataclass(frozen=True, eq=False)
class RankerRows:
    """The rows the ranker trains on: in each (user, window) group with a label, every positive and
    the sampled negatives (``report["candidate_rows"]`` counts every candidate row featurised)."""

    X: np.ndarray  # (n_rows, n_features) float32
    labels: np.ndarray  # (n_rows,) float32, 1 = a held-out item of the group's user
    group: np.ndarray  # (n_rows,) group of each row, of 0..n_groups-1 (every (user, window)), non-decreasing
    window: np.ndarray  # (n_rows,) label window of each row, earliest (0) first
    feature_names: list[str]
    report: dict[str, Any]  # group, row and recall counts (``TwoStage.report_`` shows them)
    fit_seconds: dict[str, float]  # per source, every fit of it summed

    def training_set(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, labels, group sizes)``: the arguments of ``LambdaRanker.fit``."""
        sizes = np.bincount(self.group)
        return self.X, self.labels, sizes[sizes > 0]


def label_tasks(
    data: Interactions,
    protocol: Literal["leave-last-out", "temporal"],
    *,
    fraction: float = 0.1,
    windows: int = 1,
) -> list[EvalTask]:
    """The ranker's label tasks inside ``data``, earliest first.

    Leave-last-out: one task, each user's last event. Temporal: ``windows`` consecutive windows,
    each holding about ``fraction`` of the events; window ``k`` (from the end, 1-based) starts at the
    time where the last ``k * fraction`` of events begins and ends where window ``k - 1`` starts.
    Task ``k`` trains on every event before its start, and its targets follow the evaluation's
    temporal rule (new items of users known before the start). One window is exactly the inner
    split ``make_split(data, "temporal", test_fraction=fraction).test``. Windows with no known user
    are left out.

    >>> data = Interactions.from_arrays(
    ...     [0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3, 1, 2, 3, 0],
    ...     n_users=2, n_items=4, timestamps=[1, 2, 3, 4, 1, 2, 3, 4],
    ... )
    >>> tasks = label_tasks(data, "temporal", fraction=0.25, windows=2)
    >>> [(len(t.train), t.users.tolist(), t.targets.nnz) for t in tasks]
    [(4, [0, 1], 2), (6, [0, 1], 2)]
    """
    if protocol == "leave-last-out" or windows == 1:
        options = {"test_fraction": fraction} if protocol == "temporal" else {}
        return [make_split(data, protocol, **options).test]
    ts = data.timestamps
    if not len(ts):
        raise ValueError("temporal labels: no interactions")
    starts = period_starts(ts, windows=windows, fraction=fraction)
    if not (ts < starts[0]).any():
        raise ValueError(
            f"temporal labels: the earliest of {windows} label windows starts at {starts[0]}, which leaves "
            "no events to fit the candidate generators on (use fewer label_windows or a smaller "
            "label_fraction)"
        )
    stops = [*starts[1:], int(ts.max()) + 1]
    tasks = []
    for start, stop in zip(starts, stops, strict=True):
        before, window = ts < start, (ts >= start) & (ts < stop)
        if window.any():
            task = window_task(data, before, window, name=f"labels@{start}", cold_start_users=False)
            if len(task.users):
                tasks.append(task)
    if not tasks:
        raise ValueError("temporal labels: no label window has a user who was seen before it")
    return tasks


def fit_sources(
    fit_source: FitSource, data: Interactions, names: Sequence[str], seconds: dict[str, float]
) -> dict[str, CandidateGenerator]:
    """``fit_source`` of each name on ``data``, in order; each fit's time is added to ``seconds``."""
    fitted = {}
    for name in names:
        start = time.perf_counter()
        fitted[name] = fit_source(name, data)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return fitted


def ranker_rows(
    data: Interactions,
    *,
    sources: Sequence[str],
    fit_source: FitSource,
    featurise: Featurise,
    labels: LabelConfig,
    chunk_users: int = CHUNK_USERS,
) -> RankerRows:
    """The ranker's training set from ``data``; see the module docstring. ``sources`` are fitted
    with ``fit_source`` before the earliest label window, ``labels.refit`` again at each later one;
    ``chunk_users`` users are featurised at a time (it bounds the memory; see the module docstring)."""
    if chunk_users < 1:
        raise ValueError(f"ranker_rows: chunk_users must be >= 1, got {chunk_users}")
    seconds: dict[str, float] = {}
    tasks = label_tasks(data, labels.protocol, fraction=labels.fraction, windows=labels.windows)
    generators = fit_sources(fit_source, tasks[0].train, sources, seconds)
    sampler = _Sampler(labels.negatives, np.random.default_rng(labels.seed))
    parts: list[_Window] = []
    for i, task in enumerate(tasks):
        if i > 0:
            again = [name for name in labels.refit if name in generators]
            generators = generators | fit_sources(fit_source, task.train, again, seconds)
        first_group = sum(part.n_groups for part in parts)
        parts.append(
            _label_window(featurise(generators, task.train), task, sampler, first_group, chunk_users)
        )
    group = np.concatenate([part.group for part in parts])
    n_groups = sum(part.n_groups for part in parts)
    n_targets = max(sum(part.n_targets for part in parts), 1)
    report = {
        "label_users": n_groups,  # (user, window) groups
        "label_users_dropped": sum(part.n_dropped for part in parts),
        "label_groups": len(np.unique(group)),
        "label_windows": [
            {"users": part.n_groups, "targets": part.n_targets, "train_events": part.train_events}
            for part in parts
        ],
        "candidate_rows": sum(part.n_candidates for part in parts),
        "training_rows": len(group),
        "inner_candidate_recall": {
            name: sum(part.hits[name] for part in parts) / n_targets for name in parts[0].hits
        },
    }
    return RankerRows(
        X=np.concatenate([part.X for part in parts]),
        labels=np.concatenate([part.labels for part in parts]),
        group=group,
        window=np.repeat(np.arange(len(parts)), [len(part.labels) for part in parts]),
        feature_names=parts[0].names,
        report=report,
        fit_seconds=seconds,
    )


def sample_negatives(
    rows: np.ndarray, labels: np.ndarray, per_group: int, *, rng: np.random.Generator
) -> np.ndarray:
    """Keep every positive and about ``per_group`` random negatives of each group (row).

    One uniform draw per row, in row order, from ``rng``: drawing for consecutive parts of the rows
    one after another keeps what one draw for all of them keeps.

    >>> rows, labels = np.array([0, 0, 0, 0, 1]), np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    >>> keep = sample_negatives(rows, labels, 1, rng=np.random.default_rng(0))
    >>> bool(keep[0]), int(keep[1:4].sum()) <= 3, bool(keep[4])
    (True, True, True)
    """
    negatives = np.bincount(rows[labels == 0], minlength=int(rows.max(initial=-1)) + 1)
    p = np.minimum(1.0, per_group / np.maximum(negatives, 1))
    draw = rng.random(len(rows))
    return np.asarray((labels > 0) | (draw < p[rows]))


@dataclass(frozen=True)
class _Sampler:
    """``sample_negatives`` with one generator shared by every chunk of every window, in row order."""

    negatives: int
    rng: np.random.Generator

    def keep(self, rows: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
        """Rows of groups with a label that are positives or sampled negatives."""
        has_label = np.zeros(n_groups, dtype=bool)
        has_label[rows[labels > 0]] = True
        sampled = sample_negatives(rows, labels, self.negatives, rng=self.rng)
        return np.asarray(has_label[rows] & sampled)


@dataclass(frozen=True, eq=False)
class _Window:
    """One label task's kept rows: ``X[j]`` is a candidate of group ``group[j]`` (numbered across windows)."""

    X: np.ndarray
    labels: np.ndarray
    group: np.ndarray
    n_groups: int
    n_dropped: int  # groups without a label among their candidates
    n_candidates: int  # candidate rows featurised, kept or not
    names: list[str]
    hits: dict[str, int]  # per source and "blended": targets among the candidates
    n_targets: int
    train_events: int


def _label_window(
    featurise: Callable[[np.ndarray], CandidateRows],
    task: EvalTask,
    sampler: _Sampler,
    first_group: int,
    chunk_users: int,
) -> _Window:
    """The kept rows of one label task, one group per user (``first_group`` + its position), as of the
    task's start (``task.train`` holds only events before it); ``chunk_users`` featurised at a time."""
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    hits: dict[str, int] = {}
    names: list[str] = []
    n_dropped = n_candidates = 0
    for start in range(0, max(len(task.users), 1), chunk_users):
        stop = min(start + chunk_users, len(task.users))
        found = featurise(task.users[start:stop])
        targets = task.targets[start:stop]
        ids = found.candidates.ids
        labels = np.asarray(targets[found.rows, ids[found.rows, found.cols]]).ravel().astype(np.float32)
        keep = sampler.keep(found.rows, labels, stop - start)
        kept.append((found.X[keep], labels[keep], found.rows[keep] + first_group + start))
        found_hits = {name: _hits(proposed, targets) for name, (proposed, _) in found.proposals.items()}
        for name, count in (found_hits | {"blended": _hits(ids, targets)}).items():
            hits[name] = hits.get(name, 0) + count
        n_dropped += (stop - start) - len(np.unique(found.rows[labels > 0]))
        n_candidates += len(labels)
        names = found.names
    X, labels, group = (np.concatenate(parts) for parts in zip(*kept, strict=True))
    return _Window(
        X=X,
        labels=labels,
        group=group,
        n_groups=len(task.users),
        n_dropped=n_dropped,
        n_candidates=n_candidates,
        names=names,
        hits=hits,
        n_targets=int(task.targets.nnz),
        train_events=len(task.train),
    )


def _hits(ids: np.ndarray, targets: sp.csr_matrix) -> int:
    """How many target items are found in each row's list, summed over rows."""
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    cols = ids.ravel()
    ok = cols >= 0
    return int(np.asarray(targets[rows[ok], cols[ok]]).ravel().sum())
