"""Popularity, ALS and item-kNN against plain references and against implicit's own answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.candidates.als import ALS, ALSConfig, bm25_weight, count_matrix, item_length_norm
from recsys.candidates.itemknn import ItemKNN, ItemKNNConfig
from recsys.candidates.popularity import Popularity, PopularityConfig
from recsys.data.dataset import Histories, Interactions


def _random_data(seed: int = 0, n_users: int = 60, n_items: int = 30) -> Interactions:
    rng = np.random.default_rng(seed)
    n = 400
    users = rng.integers(0, n_users, n)
    items = np.minimum(rng.zipf(1.5, n) - 1, n_items - 1)  # skewed, with repeats
    return Interactions.from_arrays(users, items, n_users=n_users, n_items=n_items)


def _histories(data: Interactions, users: np.ndarray) -> Histories:
    return data.histories(users)


def test_popularity_half_life_by_hand() -> None:
    data = Interactions.from_arrays(
        [0, 0, 1], [0, 1, 1], n_users=2, n_items=3, timestamps=np.array([100, 0, 100])
    )
    plain = Popularity().fit(data)
    assert plain.scores_ is not None and plain.scores_.tolist() == [1.0, 2.0, 0.0]
    decayed = Popularity(PopularityConfig(half_life=50.0)).fit(data)
    assert decayed.scores_ is not None
    np.testing.assert_allclose(decayed.scores_, [1.0, 1.0 + 0.25, 0.0])  # the old event is 2 half-lives
    with pytest.raises(ValueError, match="half_life"):
        PopularityConfig(half_life=0.0)


def test_bm25_matches_implicit() -> None:
    from implicit.nearest_neighbours import bm25_weight as implicit_bm25

    counts = _random_data().matrix
    norm = item_length_norm(counts, b=0.8)
    ours = bm25_weight(counts, norm, k1=100.0).toarray()
    theirs = implicit_bm25(counts.T.tocsr(), K1=100, B=0.8).T.toarray()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def _fold_in_reference(model: ALS, history_counts: np.ndarray) -> np.ndarray:
    """Hu et al.'s closed form for one user, with implicit's confidence C = alpha * r."""
    y = model.item_factors_.astype(np.float64)  # type: ignore[union-attr]
    cfg = model.config
    c = cfg.alpha * history_counts
    p = (history_counts > 0).astype(np.float64)
    observed = c > 0
    a = y.T @ y + cfg.regularization * np.eye(cfg.factors)
    a += (y[observed].T * (c[observed] - 1.0)) @ y[observed]
    b = (y[observed].T * (c[observed] * p[observed])).sum(axis=1)
    return np.linalg.solve(a, b)


@pytest.mark.parametrize("alpha", [1.0, 10.0])
def test_fold_in_is_the_exact_least_squares_solution(alpha: float) -> None:
    data = _random_data()
    model = ALS(ALSConfig(factors=6, alpha=alpha, iterations=5, num_threads=1)).fit(data)
    histories = Histories.from_lists([[0, 1, 1, 5], [3], [7, 2, 9, 11, 0]])
    ours = model.user_factors(histories)
    dense = count_matrix(histories, data.n_items).toarray()
    for row in range(len(histories)):
        np.testing.assert_allclose(ours[row], _fold_in_reference(model, dense[row]), rtol=1e-3, atol=1e-4)


def test_als_matches_implicit_recommend_with_recalculated_users() -> None:
    data = _random_data(seed=1)
    model = ALS(ALSConfig(factors=8, alpha=5.0, num_threads=1)).fit(data)
    users = np.flatnonzero(np.diff(data.indptr) > 0)[:20]
    ids, scores = model.recommend(_histories(data, users), 5)
    from implicit.cpu.als import AlternatingLeastSquares

    reference = AlternatingLeastSquares(factors=8, alpha=5.0, regularization=0.01, num_threads=1)
    reference.item_factors = model.item_factors_  # our fold-in is NumPy; implicit's is the reference
    theirs_ids, theirs_scores = reference.recommend(
        users, data.matrix[users], N=5, filter_already_liked_items=True, recalculate_user=True
    )
    np.testing.assert_allclose(scores, theirs_scores, rtol=1e-4, atol=1e-5)
    same = (ids == theirs_ids) | np.isclose(scores, theirs_scores, rtol=1e-4)  # only ties may swap
    assert same.all()


@pytest.mark.filterwarnings("ignore:Method expects CSR input")
def test_itemknn_matches_implicit() -> None:
    from implicit.nearest_neighbours import CosineRecommender

    data = _random_data(seed=2)
    ours = ItemKNN(ItemKNNConfig(neighbours=5, num_threads=1)).fit(data)
    counts = sp.csr_matrix(
        (np.ones(len(data), np.float32), (data.users, data.items)), shape=(data.n_users, data.n_items)
    )
    theirs = CosineRecommender(K=5, num_threads=1)
    theirs.fit(counts, show_progress=False)
    users = np.flatnonzero(np.diff(data.indptr) > 0)[:20]
    ids, scores = ours.recommend(_histories(data, users), 4)
    theirs_ids, theirs_scores = theirs.recommend(users, counts[users], N=4, filter_already_liked_items=True)
    found = np.isfinite(scores)
    np.testing.assert_allclose(scores[found], theirs_scores[found], rtol=1e-5)
    assert ((ids == theirs_ids) | np.isclose(scores, theirs_scores) | ~found).all()


def test_als_ignores_untrained_items_and_empty_histories() -> None:
    data = Interactions.from_arrays([0, 0, 1, 1], [0, 1, 1, 2], n_users=2, n_items=4)
    model = ALS(ALSConfig(factors=2, num_threads=1)).fit(data)
    ids, _ = model.recommend(Histories.from_lists([[0], [], [3]]), 4)
    assert 3 not in ids[0].tolist()  # item 3 was never seen in training
    assert (ids[1] == -1).all() and (ids[2] == -1).all()
    assert model.similar_items(np.array([3]), 2)[0].tolist() == [[-1, -1]]


def test_config_ranges_are_checked() -> None:
    with pytest.raises(ValueError, match=r"ALSConfig\.factors"):
        ALSConfig(factors=0)
    with pytest.raises(ValueError, match=r"ItemKNNConfig\.similarity"):
        ItemKNNConfig(similarity="jaccard")  # type: ignore[arg-type]


def test_building_query_matrices_leaves_histories_untouched() -> None:
    # scipy's sum_duplicates sorts CSR indices in place: without a copy it rewrote Histories.items.
    histories = Histories.from_lists([[3, 3, 1], [2, 0, 2]])
    histories.to_csr(5)
    count_matrix(histories, 5)
    assert histories.items.tolist() == [3, 3, 1, 2, 0, 2]
