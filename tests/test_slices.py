"""``recsys.evaluation.slices``: slice definitions and slice metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data.dataset import Interactions
from recsys.data.splits import rolling_temporal
from recsys.evaluation.slices import (
    SliceRows,
    activity_bucket,
    activity_names,
    category_group,
    popularity_class,
    slice_metrics,
)

# 9 items with 200 training interactions: the head is item 0 alone (its 40 make the first 20%),
# the torso items 1-2 (shares before them 0.2 and 0.4), the tail items 3-8; item 8 is never seen.
COUNTS = np.array([40, 40, 30, 30, 20, 20, 10, 10, 0])
NDCG_AT_2 = 1 / math.log2(3)  # a single target found at rank 2


def test_popularity_classes_follow_the_shares_of_interactions() -> None:
    assert popularity_class(COUNTS).tolist() == [0, 1, 1, 2, 2, 2, 2, 2, 2]
    # one item with most of the interactions is the whole head; an unseen item is always tail
    assert popularity_class(np.array([0, 90, 5, 5])).tolist() == [2, 0, 2, 2]
    assert popularity_class(np.zeros(3)).tolist() == [2, 2, 2]


def test_activity_buckets_are_powers_of_two() -> None:
    assert activity_names() == ["0", "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64+"]
    assert activity_bucket(np.array([0, 1, 2, 3, 4, 7, 8, 63, 64, 1000])).tolist() == [
        0,
        1,
        2,
        2,
        3,
        3,
        4,
        6,
        7,
        7,
    ]


def test_categories_are_the_largest_by_training_interactions_then_other() -> None:
    names, index = category_group(["x", "y", "x", None, "z", "w"], np.array([5, 30, 10, 99, 20, 1]), top=2)
    assert names == ["y", "z", "other"]  # y 30, z 20, x 15, w 1; the uncategorised item is in other
    assert index.tolist() == [2, 0, 2, 2, 1, 2]


def _rows() -> SliceRows:
    # u0: targets 0 (head) and 3 (tail); u1: target 1 (torso); u2: target 8 (tail, never seen)
    targets = sp.csr_matrix((np.ones(4, np.float32), ([0, 0, 1, 2], [0, 3, 1, 8])), shape=(3, 9))
    return SliceRows(
        targets=targets,
        history_length=np.array([1, 5, 70]),
        period=np.zeros(3, dtype=np.int64),
        item_counts=COUNTS[None, :],
        categories=["a", "a", "b", "b", "b", "c", None, "c", "c"],
    )


# u0 finds its head target first, its tail target only at rank 3; u1 its torso target at rank 2;
# u2 nothing
LISTS = np.array([[0, 5, 3], [2, 1, 4], [0, 1, 2]])


def _by_name(found: dict, family: str) -> dict:
    return {s["name"]: s for s in found[family]["slices"]}


def test_slice_metrics_by_hand() -> None:
    found = slice_metrics({"m": [LISTS]}, _rows(), ks=[2], resamples=200)
    popularity = _by_name(found, "popularity")
    assert [(s["users"], s["targets"]) for s in popularity.values()] == [(1, 1), (1, 1), (2, 2)]
    assert popularity["head"]["models"]["m"]["recall@2"]["mean"] == 1.0  # u0's head target at rank 1
    assert popularity["torso"]["models"]["m"]["ndcg@2"]["mean"] == pytest.approx(NDCG_AT_2)
    # tail: u0's tail target is at rank 3 (its head hit at rank 1 does not count here), u2 finds nothing
    assert popularity["tail"]["models"]["m"]["recall@2"]["mean"] == 0.0

    cold = _by_name(found, "cold")  # at most 4 training interactions: only item 8
    assert (cold["cold"]["users"], cold["cold"]["models"]["m"]["recall@2"]["mean"]) == (1, 0.0)
    # warm: u0 finds 1 of its 2 warm targets, u1 its one: (0.5 + 1) / 2
    assert cold["warm"]["models"]["m"]["recall@2"]["mean"] == 0.75

    activity = _by_name(found, "activity")  # history lengths 1, 5, 70: one user per bucket, all targets
    assert list(activity) == ["1", "4-7", "64+"]
    assert [s["targets"] for s in activity.values()] == [2, 1, 1]
    assert activity["1"]["models"]["m"]["recall@2"]["mean"] == 0.5
    assert activity["4-7"]["models"]["m"]["ndcg@2"]["mean"] == pytest.approx(NDCG_AT_2)

    category = _by_name(found, "category")  # a: 80, b: 80, c: 30 interactions; item 6 uncategorised
    assert list(category) == ["a", "b", "c"]  # 'other' is empty here: left out
    assert [s["users"] for s in category.values()] == [2, 1, 1]
    assert category["a"]["models"]["m"]["recall@2"]["mean"] == 1.0  # u0's item 0 at 1, u1's item 1 at 2


def test_slices_add_up_and_intervals_hold_the_mean() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 60
    targets = sp.random(n_users, n_items, density=0.04, format="csr", random_state=1)
    targets.data[:] = 1
    empty = np.flatnonzero(np.diff(targets.indptr) == 0)
    targets = sp.csr_matrix(
        targets + sp.csr_matrix((np.ones(len(empty)), (empty, empty % n_items)), targets.shape)
    )
    targets.data[:] = 1
    rows = SliceRows(
        targets=targets,
        history_length=rng.integers(0, 100, n_users),
        period=np.zeros(n_users, dtype=np.int64),
        item_counts=rng.zipf(1.5, n_items)[None, :],
    )
    lists = [np.argsort(rng.random((n_users, n_items)), axis=1)[:, :20] for _ in range(2)]  # two seeds
    found = slice_metrics({"a": lists, "b": lists[:1]}, rows, ks=[5, 20], resamples=300)
    assert "category" not in found  # no category column
    assert sum(s["users"] for s in found["activity"]["slices"]) == n_users
    for family in ("activity", "popularity", "cold"):
        assert sum(s["targets"] for s in found[family]["slices"]) == targets.nnz, family
        for entry in found[family]["slices"]:
            for metric in entry["models"]["a"].values():
                assert metric["ci_low"] <= metric["mean"] <= metric["ci_high"]


def test_rows_from_test_periods_use_each_periods_training_data() -> None:
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(30), 8)
    data = Interactions.from_arrays(
        users, rng.integers(0, 12, len(users)), n_users=30, n_items=12, timestamps=rng.permutation(len(users))
    )
    split = rolling_temporal(data, windows=2, test_fraction=0.2, validation_fraction=0.1)
    rows = SliceRows.from_tasks([s.test for s in split])
    first, second = split[0].test, split[1].test
    assert rows.period.tolist() == [0] * len(first.users) + [1] * len(second.users)
    assert rows.item_counts.sum(axis=1).tolist() == [len(first.train), len(second.train)]
    assert (
        rows.history_length[: len(first.users)].tolist() == np.diff(first.train.indptr)[first.users].tolist()
    )
    assert rows.targets.shape == (len(first.users) + len(second.users), 12)
