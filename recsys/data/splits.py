"""Evaluation splits. Each produces a validation task (for tuning) and a test task (for reporting).

A task holds the interactions a model may be fitted on and, for each evaluated user, the held-out
target items. Models see nothing of a task's targets: the test task's training data is everything
before the test targets, the validation task's is everything before the validation targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from recsys.data.dataset import Interactions

Protocol = Literal["leave-last-out", "temporal"]


@dataclass(frozen=True, eq=False)
class EvalTask:
    """Fit on ``train``; for each of ``users`` rank all items and compare with ``targets``."""

    name: str
    train: Interactions
    users: np.ndarray  # (n_eval,) int32 user indices
    targets: sp.csr_matrix  # (n_eval, n_items) binary relevance

    def __post_init__(self) -> None:
        if self.targets.shape != (len(self.users), self.train.n_items):
            raise ValueError("targets must be (len(users), n_items)")


@dataclass(frozen=True, eq=False)
class Split:
    protocol: str
    validation: EvalTask
    test: EvalTask


def _targets(rows: np.ndarray, items: np.ndarray, n_rows: int, n_items: int) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, items)), shape=(n_rows, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def leave_last_out(data: Interactions) -> Split:
    """Per user, the last event is the test target and the second last the validation target.

    Users with fewer than 3 events are kept for training only (in both tasks).

    >>> d = Interactions.from_arrays([0, 0, 0, 1, 1], [0, 1, 2, 0, 1], n_users=2, n_items=3)
    >>> s = leave_last_out(d)
    >>> s.test.users.tolist(), s.test.targets.indices.tolist(), len(s.test.train)
    ([0], [2], 4)
    >>> s.validation.targets.indices.tolist(), len(s.validation.train)
    ([1], 3)
    """
    counts = np.diff(data.indptr)
    eval_users = np.flatnonzero(counts >= 3).astype(np.int32)
    last = data.indptr[eval_users + 1] - 1  # position of each evaluated user's last event
    keep_test = np.ones(len(data), dtype=bool)
    keep_test[last] = False
    keep_val = keep_test.copy()
    keep_val[last - 1] = False
    n_eval = len(eval_users)
    rows = np.arange(n_eval)
    test = EvalTask(
        "test", data.select(keep_test), eval_users, _targets(rows, data.items[last], n_eval, data.n_items)
    )
    validation = EvalTask(
        "validation",
        data.select(keep_val),
        eval_users,
        _targets(rows, data.items[last - 1], n_eval, data.n_items),
    )
    return Split("leave-last-out", validation, test)


def window_task(
    data: Interactions, before: np.ndarray, window: np.ndarray, *, name: str, cold_start_users: bool
) -> EvalTask:
    """Train on ``before``; targets are ``window`` events on items the user had not seen before
    (the temporal split's rule, also used for the pipeline's rolling label windows)."""
    train = data.select(before)
    known = np.diff(train.indptr) > 0
    w_users, w_items = data.users[window], data.items[window]
    # (user, item) pairs as single int64 keys: a window event is new if its pair never occurs in training
    seen = np.isin(
        w_users.astype(np.int64) * data.n_items + w_items,
        train.users.astype(np.int64) * data.n_items + train.items,
    )
    keep = (known[w_users] | cold_start_users) & ~seen
    w_users, w_items = w_users[keep], w_items[keep]
    users, rows = np.unique(w_users, return_inverse=True)
    return EvalTask(name, train, users.astype(np.int32), _targets(rows, w_items, len(users), data.n_items))


def temporal(
    data: Interactions,
    *,
    test_fraction: float = 0.1,
    validation_fraction: float = 0.1,
    cutoff: int | None = None,
    cold_start_users: bool = False,
) -> Split:
    """A global time cutoff: events at or after it are test targets, earlier ones are training.

    By default the cutoff is the time at which the last ``test_fraction`` of events begins; the
    validation cutoff sits ``validation_fraction`` of events earlier. Targets are items the user had
    not interacted with before the cutoff. Test users are restricted to users seen in training,
    unless ``cold_start_users`` (they then have an empty history: only cold-start methods help).
    """
    _check_fractions(test_fraction=test_fraction, validation_fraction=validation_fraction)
    ts = data.timestamps
    if cutoff is None:
        if not len(ts):
            raise ValueError("temporal split: no interactions")
        cutoff = int(np.quantile(ts, 1 - test_fraction, method="higher"))
    return _split_at(
        data, cutoff, None, validation_fraction / (1 - test_fraction), cold_start_users=cold_start_users
    )


def rolling_temporal(
    data: Interactions,
    *,
    windows: int,
    test_fraction: float = 0.1,
    validation_fraction: float = 0.1,
    cold_start_users: bool = False,
) -> list[Split]:
    """``windows`` consecutive test periods (rolling origin), earliest first: one temporal split each.

    Test period ``j`` (of ``K = windows``) holds the events from where the last ``(K - j) x
    test_fraction`` of events begins up to where period ``j + 1`` begins (the last one runs to the
    end). Its split trains on every event before that start, validates on the ``validation_fraction``
    of events before it, and never sees a later period. The last split is exactly ``temporal(data)``
    with the same fractions, so one window is the ordinary temporal split; more windows evaluate
    more (user, period) pairs where a single period has few active users.

    >>> data = Interactions.from_arrays(
    ...     [0] * 10, list(range(10)), n_users=1, n_items=10, timestamps=list(range(10))
    ... )
    >>> [(len(s.test.train), s.test.targets.indices.tolist()) for s in rolling_temporal(
    ...     data, windows=3, test_fraction=0.2, validation_fraction=0.2)]
    [(4, [4, 5]), (6, [6, 7]), (8, [8, 9])]
    """
    _check_fractions(test_fraction=test_fraction, validation_fraction=validation_fraction)
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise ValueError(f"windows must be a positive integer, got {windows!r}")
    if windows * test_fraction + validation_fraction >= 1:
        raise ValueError(
            f"rolling temporal split: windows x test_fraction + validation_fraction must be < 1 (the "
            f"earliest window needs training events), got {windows} x {test_fraction} + {validation_fraction}"
        )
    ts = data.timestamps
    if not len(ts):
        raise ValueError("temporal split: no interactions")
    starts = period_starts(ts, windows=windows, fraction=test_fraction)
    stops: list[int | None] = [*starts[1:], None]
    return [
        _split_at(
            data,
            start,
            stop,
            validation_fraction / (1 - k * test_fraction),
            cold_start_users=cold_start_users,
        )
        for k, start, stop in zip(range(windows, 0, -1), starts, stops, strict=True)
    ]


def period_starts(timestamps: np.ndarray, *, windows: int, fraction: float) -> list[int]:
    """Start times of ``windows`` consecutive periods of about ``fraction`` of the events each, ending
    at the last event, earliest first: period ``k`` from the end starts where the last ``k x fraction``
    of the events begins. (The test periods of :func:`rolling_temporal`, and the two-stage ranker's
    label windows.)

    >>> period_starts(np.arange(10), windows=2, fraction=0.2)
    [6, 8]
    """
    return [int(np.quantile(timestamps, 1 - k * fraction, method="higher")) for k in range(windows, 0, -1)]


def _check_fractions(**fractions: float) -> None:
    for name, value in fractions.items():
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")


def _split_at(
    data: Interactions, cutoff: int, stop: int | None, validation_share: float, *, cold_start_users: bool
) -> Split:
    """Test targets in [cutoff, stop); validation targets in the last ``validation_share`` of the
    events before the cutoff; nothing at or after ``stop`` is seen by either task."""
    ts = data.timestamps
    in_test = ts >= cutoff if stop is None else (ts >= cutoff) & (ts < stop)
    if not (ts < cutoff).any() or not in_test.any():
        raise ValueError(
            f"temporal split: the test cutoff {cutoff} leaves no events before or none after it "
            f"(timestamps span {ts.min(initial=0)}..{ts.max(initial=0)}; need more distinct timestamps)"
        )
    val_cutoff = int(np.quantile(ts[ts < cutoff], 1 - validation_share, method="higher"))
    if not (ts < val_cutoff).any():
        raise ValueError(
            f"temporal split: the validation cutoff {val_cutoff} leaves no training events before it "
            "(need more distinct timestamps before the test cutoff)"
        )
    test = window_task(data, ts < cutoff, in_test, name="test", cold_start_users=cold_start_users)
    validation = window_task(
        data,
        ts < val_cutoff,
        (ts >= val_cutoff) & (ts < cutoff),
        name="validation",
        cold_start_users=cold_start_users,
    )
    return Split("temporal", validation, test)


def make_split(data: Interactions, protocol: Protocol, **options: float | int | bool | None) -> Split:
    if protocol == "leave-last-out":
        return leave_last_out(data)
    if protocol == "temporal":
        return temporal(data, **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown protocol {protocol!r} (use leave-last-out or temporal)")
