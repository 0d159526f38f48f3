"""Ranking metrics: hand-computed cases, a plain per-user reference, and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.evaluation.metrics import (
    ACCURACY,
    accuracy_curves,
    accuracy_per_user,
    coverage,
    exposure_gini,
    hit_matrix,
    intra_list_diversity,
    intra_list_diversity_per_list,
    novelty,
    novelty_per_list,
    paired_difference,
    popularity_lift,
    ranking_metrics,
    self_information,
)


def _relevance(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int32)
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(rows), n_items))


def _reference(rec: list[int], rel: set[int], k: int) -> dict[str, float]:
    """Textbook per-user definitions, one list at a time."""
    top = [i for i in rec[:k]]
    seen: set[int] = set()
    hits = []
    for i in top:
        hits.append(i >= 0 and i in rel and i not in seen)
        seen.add(i)
    n_hits = sum(hits)
    dcg = sum(1 / math.log2(j + 2) for j, h in enumerate(hits) if h)
    idcg = sum(1 / math.log2(j + 2) for j in range(min(len(rel), k)))
    precisions = [sum(hits[: j + 1]) / (j + 1) for j, h in enumerate(hits) if h]
    first = next((j for j, h in enumerate(hits) if h), None)
    return {
        "recall": n_hits / len(rel),
        "ndcg": dcg / idcg,
        "hitrate": float(n_hits > 0),
        "mrr": 0.0 if first is None else 1 / (first + 1),
        "map": sum(precisions) / min(len(rel), k),
        "precision": n_hits / k,
    }


# --- hand-computed ------------------------------------------------------------------------------


def test_two_relevant_items_by_hand() -> None:
    # relevant {0, 1}; list [0, 5, 1, 6]: hits at ranks 1 and 3
    m = ranking_metrics(np.array([[0, 5, 1, 6]]), _relevance([[0, 1]], 8), ks=[2, 4])
    assert m["recall@2"] == 0.5 and m["recall@4"] == 1.0
    assert m["precision@2"] == 0.5 and m["precision@4"] == 0.5
    assert m["hitrate@2"] == 1.0 and m["mrr@4"] == 1.0
    assert m["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["ndcg@4"] == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    assert m["map@2"] == pytest.approx(1 / 2)  # precision@1 = 1, divided by min(2, 2)
    assert m["map@4"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["coverage@2"] == pytest.approx(2 / 8)


def test_leave_one_out_by_hand_averages_users() -> None:
    rec = np.array([[3, 4, 2], [1, 0, 2], [0, 1, 2]])  # target at rank 3, rank 1, missing
    m = ranking_metrics(rec, _relevance([[2], [1], [4]], 5), ks=[3])
    assert m["hitrate@3"] == pytest.approx(2 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["mrr@3"] == pytest.approx((1 / 3 + 1) / 3)
    assert m["ndcg@3"] == pytest.approx((0.5 + 1) / 3)
    assert m["map@3"] == pytest.approx((1 / 3 + 1) / 3)
    assert m["precision@3"] == pytest.approx(2 / 9)


def test_padding_is_never_a_hit_and_users_without_targets_are_left_out() -> None:
    rec = np.array([[-1, -1], [1, -1], [0, 1]])
    rel = _relevance([[0], [1], []], 3)
    per_user = accuracy_per_user(rec, rel, ks=[2])
    assert per_user["recall@2"][:2].tolist() == [0.0, 1.0]
    assert np.isnan(per_user["recall@2"][2])
    assert ranking_metrics(rec, rel, ks=[2])["recall@2"] == 0.5


def test_repeated_ids_count_once() -> None:
    assert hit_matrix(np.array([[1, 1, 1]]), _relevance([[1]], 2)).tolist() == [[True, False, False]]
    m = ranking_metrics(np.array([[1, 1]]), _relevance([[1, 0]], 2), ks=[2])
    assert m["recall@2"] == 0.5 and m["precision@2"] == 0.5


def test_coverage_novelty_and_diversity_by_hand() -> None:
    rec = np.array([[0, 1, -1], [0, 2, 1]])
    assert coverage(rec, 4, k=1) == 0.25
    assert coverage(rec, 4, k=3) == 0.75
    info = self_information(np.array([3, 1, 0, 0]), 3)  # p = 1, 1/2, 1/4, 1/4
    assert info.tolist() == [0.0, 1.0, 2.0, 2.0]
    assert novelty(rec, info, k=2) == pytest.approx((0 + 1 + 0 + 2) / 4)
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, 5.0]])
    d01, d02, d12 = 1.0, 1 - 1 / math.sqrt(2), 1 - 1 / math.sqrt(2)
    expected = (d01 + (d02 + d01 + d12) / 3) / 2  # the first list has two items, the second three
    assert intra_list_diversity(rec, emb, k=3) == pytest.approx(expected, rel=1e-6)
    assert math.isnan(intra_list_diversity(np.array([[0, -1]]), emb, k=2))
    m = ranking_metrics(rec, _relevance([[0], [2]], 4), ks=[2], information=info, embeddings=emb)
    assert {"novelty@2", "ild@2", "coverage@2"} <= set(m)
    assert "ild@2" not in ranking_metrics(rec, _relevance([[0], [2]], 4), ks=[2])


def test_per_list_novelty_and_diversity_make_the_catalogue_figures() -> None:
    rec = np.array([[0, 1, -1], [0, 2, 1], [3, -1, -1]])
    info = self_information(np.array([3, 1, 0, 0]), 3)
    bits, lengths = novelty_per_list(rec, info, k=3)
    assert bits.tolist() == [1.0, 3.0, 2.0] and lengths.tolist() == [2.0, 3.0, 1.0]
    assert bits.sum() / lengths.sum() == pytest.approx(novelty(rec, info, k=3))
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, 5.0]])
    per_list = intra_list_diversity_per_list(rec, emb, k=3)
    assert per_list[0] == pytest.approx(1.0) and math.isnan(per_list[2])  # one item: no pair
    assert np.nanmean(per_list) == pytest.approx(intra_list_diversity(rec, emb, k=3))


def test_exposure_gini_by_hand() -> None:
    # exposure [2, 1, 1, 0] sorted [0, 1, 1, 2]: (-3*0 - 1*1 + 1*1 + 3*2) / (4 * 4)
    assert exposure_gini(np.array([[0, 1], [0, 2]]), 4, k=2) == 0.375
    assert exposure_gini(np.array([[0, 1], [2, 3]]), 4, k=2) == 0.0  # every item shown once
    assert exposure_gini(np.array([[0, -1], [0, -1]]), 4, k=2) == pytest.approx(3 / 4)  # (n - 1) / n
    assert exposure_gini(np.array([[0, 1], [2, 3]]), 4, k=1) == pytest.approx(0.5)  # [1, 0, 1, 0]
    assert math.isnan(exposure_gini(np.array([[-1, -1]]), 4, k=2))


def test_popularity_lift_by_hand() -> None:
    popularity = np.array([100.0, 10.0, 1.0, 0.0])
    # recommended 0, 1, 0, 2 (padding ignored): mean 52.75; histories 1, 2, 2, 3: mean 3
    rec = np.array([[0, 1, -1], [0, 2, 3]])
    assert popularity_lift(rec, np.array([1, 2, 2, 3]), popularity, k=2) == pytest.approx(52.75 / 3)
    assert popularity_lift(np.array([[1]]), np.array([1]), popularity, k=1) == 1.0
    assert math.isnan(popularity_lift(rec, np.array([3]), popularity, k=2))  # histories of popularity 0


@pytest.mark.parametrize(
    ("rec", "ks", "message"),
    [
        (np.array([[0, 1]]), [3], "cut-off k=3"),
        (np.array([[0, 1]]), [], "at least one"),
        (np.array([[0, 9]]), [1], "ids must be in"),
        (np.array([[0.0, 1.0]]), [1], "integer item ids"),
        (np.array([[0, 1], [1, 0]]), [1], "2 rows but relevant has 1"),
        (np.array([0, 1]), [1], "matrix"),
    ],
)
def test_bad_input_is_named(rec: np.ndarray, ks: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ranking_metrics(rec, _relevance([[0]], 3), ks=ks)


# --- properties ---------------------------------------------------------------------------------


@st.composite
def _cases(draw: st.DrawFn) -> tuple[np.ndarray, sp.csr_matrix, list[list[int]], list[int]]:
    n_items = draw(st.integers(2, 12))
    n_users = draw(st.integers(1, 6))
    length = draw(st.integers(1, n_items))
    lists, relevant = [], []
    for _ in range(n_users):
        perm = draw(st.permutations(range(n_items)))
        n_valid = draw(st.integers(0, length))
        lists.append(list(perm[:n_valid]) + [-1] * (length - n_valid))
        relevant.append(sorted(draw(st.sets(st.integers(0, n_items - 1), min_size=1, max_size=n_items))))
    ks = sorted(draw(st.sets(st.integers(1, length), min_size=1, max_size=3)))
    return np.array(lists), _relevance(relevant, n_items), relevant, ks


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_vectorised_equals_reference(
    case: tuple[np.ndarray, sp.csr_matrix, list[list[int]], list[int]],
) -> None:
    rec, rel, relevant, ks = case
    per_user = accuracy_per_user(rec, rel, ks=ks)
    for u in range(len(rec)):
        for k in ks:
            expected = _reference(rec[u].tolist(), set(relevant[u]), k)
            for name in ACCURACY:
                assert per_user[f"{name}@{k}"][u] == pytest.approx(expected[name]), (name, k, u)


@settings(max_examples=100, deadline=None)
@given(_cases(), st.randoms(use_true_random=False))
def test_ties_between_non_relevant_items_do_not_matter(
    case: tuple[np.ndarray, sp.csr_matrix, list[list[int]], list[int]], rnd: object
) -> None:
    # Re-ordering the non-relevant entries among their own positions (how a scorer breaks ties
    # between them) leaves every accuracy metric unchanged.
    rec, rel, relevant, ks = case
    shuffled = rec.copy()
    for u in range(len(rec)):
        positions = [j for j, i in enumerate(rec[u]) if i not in set(relevant[u])]
        values = [rec[u, j] for j in positions]
        rnd.shuffle(values)  # type: ignore[attr-defined]
        shuffled[u, positions] = values
    a, b = ranking_metrics(rec, rel, ks=ks), ranking_metrics(shuffled, rel, ks=ks)
    for name in ACCURACY:
        for k in ks:
            assert a[f"{name}@{k}"] == pytest.approx(b[f"{name}@{k}"])


@settings(max_examples=100, deadline=None)
@given(_cases())
def test_perfect_ranking_scores_one(
    case: tuple[np.ndarray, sp.csr_matrix, list[list[int]], list[int]],
) -> None:
    rec, rel, relevant, ks = case
    n_items, length = rel.shape[1], rec.shape[1]
    perfect = np.full_like(rec, -1)
    for u, items in enumerate(relevant):
        rest = [i for i in range(n_items) if i not in set(items)]
        perfect[u] = (items + rest)[:length]
    per_user = accuracy_per_user(perfect, rel, ks=ks)
    for k in ks:
        for name in ("ndcg", "hitrate", "mrr", "map"):
            assert np.allclose(per_user[f"{name}@{k}"], 1.0), name
        fits = np.array([len(items) <= k for items in relevant])
        assert np.allclose(per_user[f"recall@{k}"][fits], 1.0)


@settings(max_examples=100, deadline=None)
@given(_cases())
def test_bounds_and_monotone_in_k(case: tuple[np.ndarray, sp.csr_matrix, list[list[int]], list[int]]) -> None:
    rec, rel, _, _ = case
    ks = list(range(1, rec.shape[1] + 1))
    m = ranking_metrics(rec, rel, ks=ks)
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in m.values())
    for name in ("recall", "hitrate", "mrr", "coverage"):
        values = [m[f"{name}@{k}"] for k in ks]
        assert values == sorted(values), name


def test_paired_difference_with_one_cluster_per_row_is_the_plain_bootstrap() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(40), rng.random(40)
    plain = paired_difference(a, b, resamples=2000)
    clustered = paired_difference(a, b, resamples=2000, clusters=np.arange(40) * 7)
    for key in ("users", "mean_diff", "ci_low", "ci_high", "wins", "losses", "ties"):
        assert clustered[key] == pytest.approx(plain[key], abs=1e-12), key
    assert plain["clusters"] == clustered["clusters"] == 40
    assert math.isnan(clustered["se"]) and plain["se"] > 0


def test_paired_difference_resamples_a_cluster_as_a_whole() -> None:
    # 20 users, each in 3 test periods with the same difference: as independent rows the interval
    # would be ~sqrt(3) too narrow; resampled by user it is the 20 users' interval
    rng = np.random.default_rng(1)
    per_user = rng.normal(0.1, 0.3, size=20)
    rows, users = np.repeat(per_user, 3), np.repeat(np.arange(20), 3)
    by_user = paired_difference(per_user, np.zeros(20))
    clustered = paired_difference(rows, np.zeros(60), clusters=users)
    naive = paired_difference(rows, np.zeros(60))
    assert clustered["users"] == 60 and clustered["clusters"] == 20
    assert clustered["mean_diff"] == pytest.approx(by_user["mean_diff"])
    width = clustered["ci_high"] - clustered["ci_low"]
    assert width == pytest.approx(by_user["ci_high"] - by_user["ci_low"], rel=0.1)
    assert width > 1.4 * (naive["ci_high"] - naive["ci_low"])
    # undefined rows are left out before clustering; a label per row is required
    with_nan = paired_difference(np.append(rows, np.nan), np.zeros(61), clusters=np.append(users, 99))
    assert with_nan["clusters"] == 20 and with_nan["users"] == 60
    with pytest.raises(ValueError, match="clusters has 3 labels for 60 rows"):
        paired_difference(rows, np.zeros(60), clusters=np.arange(3))


@settings(max_examples=100, deadline=None)
@given(_cases())
def test_curves_are_the_metrics_at_every_cut_off(
    case: tuple[np.ndarray, sp.csr_matrix, list[list[int]], list[int]],
) -> None:
    rec, rel, _, _ = case
    curves = accuracy_curves(rec, rel, max_k=100)
    assert len(curves["recall"]) == rec.shape[1]  # no deeper than the lists
    m = ranking_metrics(rec, rel, ks=list(range(1, rec.shape[1] + 1)))
    for k in range(1, rec.shape[1] + 1):
        assert curves["recall"][k - 1] == pytest.approx(m[f"recall@{k}"])
        assert curves["ndcg"][k - 1] == pytest.approx(m[f"ndcg@{k}"])
    assert (np.diff(curves["recall"]) >= -1e-12).all()
    assert len(accuracy_curves(rec, rel, max_k=1)["ndcg"]) == 1
