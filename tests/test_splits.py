"""No held-out interaction may leak into the data a model is fitted on, for either split protocol.

Property tests run both splits on random interaction sets (with timestamp ties, repeated items and
users with very few events) and check the leakage invariants event by event.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data.dataset import Interactions
from recsys.data.splits import EvalTask, leave_last_out, make_split, rolling_temporal, temporal

N_ITEMS = 12


@st.composite
def interaction_sets(draw: st.DrawFn, *, unique_pairs: bool = False) -> Interactions:
    """Random events: up to 8 users, 12 items, few distinct timestamps (so ties are common)."""
    n_users = draw(st.integers(1, 8))
    events = draw(
        st.lists(
            st.tuples(st.integers(0, n_users - 1), st.integers(0, N_ITEMS - 1), st.integers(0, 30)),
            min_size=1,
            max_size=60,
        )
    )
    if unique_pairs:
        seen: dict[tuple[int, int], int] = {}
        for user, item, ts in events:
            seen.setdefault((user, item), ts)
        events = [(u, i, t) for (u, i), t in seen.items()]
    users, items, stamps = (np.array(column) for column in zip(*events, strict=True))
    return Interactions.from_arrays(users, items, n_users=n_users, n_items=N_ITEMS, timestamps=stamps)


def _events(data: Interactions) -> list[tuple[int, int, int]]:
    return sorted(zip(data.users.tolist(), data.items.tolist(), data.timestamps.tolist(), strict=True))


def _target_pairs(task: EvalTask) -> set[tuple[int, int]]:
    rows, items = task.targets.nonzero()
    return set(zip(task.users[rows].tolist(), items.tolist(), strict=True))


def _train_pairs(task: EvalTask) -> set[tuple[int, int]]:
    return set(zip(task.train.users.tolist(), task.train.items.tolist(), strict=True))


def _remove(
    events: list[tuple[int, int, int]], removed: list[tuple[int, int, int]]
) -> list[tuple[int, int, int]]:
    left = list(events)
    for event in removed:
        left.remove(event)  # raises if the held-out event was not in the data at all
    return sorted(left)


@settings(max_examples=150, deadline=None)
@given(interaction_sets())
def test_leave_last_out_holds_out_exactly_the_last_events(data: Interactions) -> None:
    split = leave_last_out(data)
    counts = np.bincount(data.users, minlength=data.n_users)
    eval_users = np.flatnonzero(counts >= 3)
    assert split.test.users.tolist() == split.validation.users.tolist() == eval_users.tolist()

    # per evaluated user: its last event is the test target, the one before the validation target
    last = data.indptr[eval_users + 1] - 1
    held_test = [(int(data.users[p]), int(data.items[p]), int(data.timestamps[p])) for p in last]
    held_val = [(int(data.users[p]), int(data.items[p]), int(data.timestamps[p])) for p in last - 1]
    assert split.test.targets.sum(axis=1).A1.tolist() == [1.0] * len(eval_users)
    assert _target_pairs(split.test) == {(u, i) for u, i, _ in held_test}
    assert _target_pairs(split.validation) == {(u, i) for u, i, _ in held_val}

    # training = everything else: the held-out events, and only they, are missing
    assert _events(split.test.train) == _remove(_events(data), held_test)
    assert _events(split.validation.train) == _remove(_events(data), held_test + held_val)

    # no held-out event is at an earlier time than the user's training events
    for task, held in ((split.test, held_test), (split.validation, held_val)):
        for user, _, ts in held:
            user_train = task.train.timestamps[task.train.users == user]
            assert (user_train <= ts).all()

    # users with fewer than 3 events are train-only: all their events stay in both training sets
    short = set(np.flatnonzero((counts > 0) & (counts < 3)).tolist())
    for task in (split.test, split.validation):
        assert short.isdisjoint(task.users.tolist())
        kept = [e for e in _events(task.train) if e[0] in short]
        assert kept == [e for e in _events(data) if e[0] in short]


@settings(max_examples=150, deadline=None)
@given(interaction_sets(unique_pairs=True))
def test_leave_last_out_targets_never_in_training_items(data: Interactions) -> None:
    # With one event per (user, item), as in both shared datasets, a target item is never part of
    # the user's training history, so history masking cannot hide a correct answer.
    split = leave_last_out(data)
    assert _target_pairs(split.test).isdisjoint(_train_pairs(split.test))
    assert _target_pairs(split.validation).isdisjoint(_train_pairs(split.validation))
    assert _target_pairs(split.test).isdisjoint(_target_pairs(split.validation))


def _check_temporal_task(data: Interactions, task: EvalTask, *, start: int, end: int | None) -> None:
    """Training is exactly the events before ``start``; targets are new items seen in [start, end)."""
    ts = data.timestamps
    window = (ts >= start) & (ts < end) if end is not None else ts >= start
    assert _events(task.train) == _events(data.select(ts < start))
    assert (task.train.timestamps < start).all()
    window_pairs = set(zip(data.users[window].tolist(), data.items[window].tolist(), strict=True))
    targets = _target_pairs(task)
    assert targets <= window_pairs  # every target happened in the window, at or after the cutoff
    assert targets.isdisjoint(_train_pairs(task))  # and the user never had it in training
    assert task.targets.shape == (len(task.users), data.n_items)
    assert (task.targets.sum(axis=1).A1 > 0).all()  # no evaluated user without a target


def _validation_cutoff(ts: np.ndarray, cutoff: int) -> int:
    """The documented rule: 10% of all events (1/9 of those before the test cutoff) before it."""
    return int(np.quantile(ts[ts < cutoff], 1 - 0.1 / 0.9, method="higher"))


@settings(max_examples=150, deadline=None)
@given(interaction_sets(), st.integers(0, 31), st.booleans())
def test_temporal_split_with_explicit_cutoff_never_leaks(data: Interactions, cutoff: int, cold: bool) -> None:
    ts = data.timestamps
    if not (ts < cutoff).any() or not (ts >= cutoff).any() or not (ts < _validation_cutoff(ts, cutoff)).any():
        # no training or no test events: refused loudly rather than an empty task
        with pytest.raises(ValueError, match="temporal split"):
            temporal(data, cutoff=cutoff, cold_start_users=cold)
        return
    split = temporal(data, cutoff=cutoff, cold_start_users=cold)
    val_cutoff = _validation_cutoff(ts, cutoff)
    _check_temporal_task(data, split.test, start=cutoff, end=None)
    _check_temporal_task(data, split.validation, start=val_cutoff, end=cutoff)
    for task in (split.test, split.validation):
        known = set(task.train.users.tolist())
        if not cold:  # evaluated users are restricted to users with training events
            assert set(task.users.tolist()) <= known


@settings(max_examples=150, deadline=None)
@given(interaction_sets())
def test_temporal_split_default_cutoffs_never_leak(data: Interactions) -> None:
    ts = data.timestamps
    cutoff = int(np.quantile(ts, 0.9, method="higher"))  # the last 10% of events begins here
    if not (ts < cutoff).any() or not (ts < _validation_cutoff(ts, cutoff)).any():
        with pytest.raises(ValueError, match="need more distinct timestamps"):
            temporal(data)
        return
    split = temporal(data)
    _check_temporal_task(data, split.test, start=cutoff, end=None)
    _check_temporal_task(data, split.validation, start=_validation_cutoff(ts, cutoff), end=cutoff)
    # the validation task never sees a test-window event, not even as a target
    assert (split.validation.train.timestamps < cutoff).all()


def test_temporal_split_small_example() -> None:
    data = Interactions.from_arrays(
        np.array([0, 0, 0, 1, 1]),
        np.array([0, 1, 2, 0, 1]),
        n_users=2,
        n_items=3,
        timestamps=np.array([1, 2, 3, 1, 2]),
    )
    split = temporal(data, cutoff=3)
    assert split.test.users.tolist() == [0]
    assert split.test.targets.indices.tolist() == [2]
    assert len(split.test.train) == 4


@pytest.mark.parametrize("cutoff", [1, 4])
def test_temporal_split_refuses_an_empty_side(cutoff: int) -> None:
    # used to fail with an IndexError / "truth value of an array is ambiguous"
    data = Interactions.from_arrays(
        np.array([0, 0, 1]), np.array([0, 1, 2]), n_users=2, n_items=3, timestamps=np.array([1, 2, 3])
    )
    with pytest.raises(ValueError, match="temporal split: the test cutoff"):
        temporal(data, cutoff=cutoff)


def test_temporal_split_on_bundled_movielens() -> None:
    from recsys.data.loading import bundled_paths, load_dataset

    data = load_dataset(*bundled_paths()).to_interactions()
    split = make_split(data, "temporal")
    cutoff = int(data.timestamps[data.timestamps > split.test.train.timestamps.max()].min())
    assert (split.test.train.timestamps < cutoff).all()
    # about 10% of the events are at or after the cutoff, as documented
    assert 0.09 <= (data.timestamps >= cutoff).mean() <= 0.11
    assert len(split.test.users) > 0 and len(split.validation.users) > 0
    assert _target_pairs(split.test).isdisjoint(_train_pairs(split.test))


def test_make_split_rejects_unknown_protocol() -> None:
    data = Interactions.from_arrays(np.array([0, 0, 0]), np.array([0, 1, 2]), n_users=1, n_items=3)
    with pytest.raises(ValueError, match="unknown protocol"):
        make_split(data, "random")  # type: ignore[arg-type]


def _same_task(a: EvalTask, b: EvalTask) -> bool:
    return (
        _events(a.train) == _events(b.train)
        and a.users.tolist() == b.users.tolist()
        and (a.targets != b.targets).nnz == 0
    )


@settings(max_examples=150, deadline=None)
@given(interaction_sets(), st.integers(1, 4))
def test_rolling_temporal_periods_are_consecutive_and_never_leak(data: Interactions, windows: int) -> None:
    ts = data.timestamps
    try:
        splits = rolling_temporal(data, windows=windows, test_fraction=0.15, validation_fraction=0.1)
    except ValueError as exc:  # too few distinct timestamps for some period: refused, never empty
        assert "temporal split" in str(exc)
        return
    starts = [int(np.quantile(ts, 1 - k * 0.15, method="higher")) for k in range(windows, 0, -1)]
    assert len(splits) == windows
    for j, split in enumerate(splits):
        stop = starts[j + 1] if j + 1 < windows else None
        _check_temporal_task(data, split.test, start=starts[j], end=stop)
        # the validation task sees nothing from the test period or later
        assert (split.validation.train.timestamps < starts[j]).all()
        val_start = int(split.validation.train.timestamps.max(initial=-1)) + 1
        _check_temporal_task(data, split.validation, start=val_start, end=starts[j])
    # the last period is the ordinary temporal split with the same fractions
    last = temporal(data, test_fraction=0.15, validation_fraction=0.1)
    assert _same_task(splits[-1].test, last.test) and _same_task(splits[-1].validation, last.validation)


def test_rolling_temporal_on_bundled_movielens_and_its_errors() -> None:
    from recsys.data.loading import bundled_paths, load_dataset

    data = load_dataset(*bundled_paths()).to_interactions()
    (one,) = rolling_temporal(data, windows=1)
    assert _same_task(one.test, temporal(data).test)
    splits = rolling_temporal(data, windows=3)
    # each period holds about 10% of the events, each on the users active in it
    for split, share in zip(splits, (0.7, 0.8, 0.9), strict=True):
        assert len(split.test.train) / len(data) == pytest.approx(share, abs=0.01)
        assert len(split.test.users) > 0
    for windows, message in ((0, "windows must be a positive integer"), (True, "positive integer"),
                             (9, "windows x test_fraction \\+ validation_fraction must be < 1")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            rolling_temporal(data, windows=windows)  # type: ignore[arg-type]
