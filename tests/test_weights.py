"""The optional ``weight`` column in ALS and item-kNN (``use_weights``, off by default).

Without weights (or with every weight 1) both sources must give the answers they gave before
weights were read, bit for bit: the reference below is the all-ones matrix they used to build, fed
to implicit directly. With weights, a weight of ``k`` is ``k`` events, and a heavily weighted item
gains ground.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.candidates.als import ALS, ALSConfig, bm25_weight, item_length_norm
from recsys.candidates.itemknn import ItemKNN, ItemKNNConfig
from recsys.data.dataset import Histories, Interactions
from recsys.data.loading import bundled_paths, load_dataset


def _random_data(weights: str) -> Interactions:
    rng = np.random.default_rng(0)
    n = 600
    users = rng.integers(0, 80, n)
    items = np.minimum(rng.zipf(1.4, n) - 1, 39)  # skewed, with repeats
    w = {"none": None, "ones": np.ones(n)}[weights]
    return Interactions.from_arrays(users, items, n_users=80, n_items=40, weights=w)


def _all_ones(data: Interactions) -> sp.csr_matrix:
    """The matrix ALS and item-kNN were fitted on before they read weights."""
    counts = sp.csr_matrix(
        (np.ones(len(data), np.float32), (data.users, data.items)), shape=(data.n_users, data.n_items)
    )
    counts.sum_duplicates()
    return counts


def _same_csr(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and all(
            np.array_equal(x, y) for x, y in ((a.indptr, b.indptr), (a.indices, b.indices), (a.data, b.data))
        )
    )


@pytest.mark.parametrize("weights", ["none", "ones"])
@pytest.mark.parametrize("use_weights", [False, True])
def test_without_weights_the_matrix_is_the_all_ones_one(weights: str, use_weights: bool) -> None:
    data = _random_data(weights)
    assert _same_csr(data.event_matrix(use_weights=use_weights), _all_ones(data))


@pytest.mark.parametrize("weights", ["none", "ones"])
@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("bm25", [False, True])
def test_without_weights_als_is_bit_identical_to_the_all_ones_reference(
    weights: str, use_weights: bool, bm25: bool
) -> None:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    data = _random_data(weights)
    cfg = ALSConfig(factors=8, alpha=40.0, iterations=5, bm25=bm25, num_threads=1, use_weights=use_weights)
    ours = ALS(cfg).fit(data)
    counts = _all_ones(data)
    if bm25:
        counts = bm25_weight(counts, item_length_norm(counts, b=cfg.bm25_b), k1=cfg.bm25_k1)
    reference = AlternatingLeastSquares(
        factors=8, regularization=cfg.regularization, alpha=40.0, iterations=5, num_threads=1, random_state=0
    )
    with threadpool_limits(limits=1, user_api="blas"):
        reference.fit(counts, show_progress=False)
    assert ours.item_factors_ is not None
    assert np.array_equal(ours.item_factors_, reference.item_factors)


@pytest.mark.filterwarnings("ignore:Method expects CSR input")
@pytest.mark.parametrize("weights", ["none", "ones"])
@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("similarity", ["cosine", "tfidf", "bm25"])
def test_without_weights_itemknn_is_bit_identical_to_the_all_ones_reference(
    weights: str, use_weights: bool, similarity: str
) -> None:
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

    data = _random_data(weights)
    cfg = ItemKNNConfig(neighbours=5, similarity=similarity, num_threads=1, use_weights=use_weights)  # type: ignore[arg-type]
    ours = ItemKNN(cfg).fit(data)
    reference = {
        "cosine": CosineRecommender(K=5, num_threads=1),
        "tfidf": TFIDFRecommender(K=5, num_threads=1),
        "bm25": BM25Recommender(K=5, K1=cfg.bm25_k1, B=cfg.bm25_b, num_threads=1),
    }[similarity]
    reference.fit(_all_ones(data), show_progress=False)
    assert ours.similarity_ is not None
    assert np.array_equal(
        ours.similarity_.toarray(), reference.similarity.toarray().astype(np.float32)
    )  # ours is stored in float32


def test_the_bundled_movielens_ratings_are_not_used_by_default() -> None:
    # its weights are star ratings: the default configs count events, so its figures stay put
    data = load_dataset(*bundled_paths()).to_interactions()
    assert not np.all(data.weights == 1.0)
    assert not ALSConfig().use_weights and not ItemKNNConfig().use_weights
    assert _same_csr(data.event_matrix(use_weights=False), _all_ones(data))


def test_a_weight_counts_as_that_many_events() -> None:
    # three events each, or one of weight 3, or two of weights 2.5 and 0.5
    repeated = Interactions.from_arrays([0, 0, 0, 1, 1, 1], [1, 1, 1, 2, 2, 2], n_users=2, n_items=3)
    weighted = Interactions.from_arrays(
        [0, 1, 1], [1, 2, 2], n_users=2, n_items=3, weights=np.array([3.0, 2.5, 0.5])
    )
    assert _same_csr(weighted.event_matrix(use_weights=True), repeated.event_matrix(use_weights=False))
    assert weighted.event_matrix(use_weights=False).toarray().tolist() == [[0, 1, 0], [0, 0, 2]]


def test_a_zero_weight_is_no_event() -> None:
    data = Interactions.from_arrays(
        [0, 1, 1], [0, 0, 1], n_users=2, n_items=2, weights=np.array([0.0, 1.0, 1.0])
    )
    assert data.event_matrix(use_weights=True).toarray().tolist() == [[0, 0], [1, 1]]
    assert data.event_matrix(use_weights=True).nnz == 2  # no stored zero: ALS would read it as no confidence
    # an item whose only events weigh 0 has no similarity to anything (not 0 / 0)
    model = ItemKNN(ItemKNNConfig(num_threads=1, use_weights=True)).fit(
        Interactions.from_arrays(
            [0, 0, 1, 1], [0, 2, 0, 1], n_users=2, n_items=3, weights=np.array([1, 0, 1, 1.0])
        )
    )
    assert model.similarity_ is not None and np.isfinite(model.similarity_.data).all()
    assert model.similar_items(np.array([2]), 2)[0].tolist() == [[-1, -1]]


def test_itemknn_heavy_co_occurrences_win() -> None:
    # item 0 goes with item 1 for three users, with item 2 for two users who buy both heavily:
    # by counts item 1 is the nearer neighbour, by weights item 2 (item 3, never bought, keeps
    # TF-IDF's idf above 0)
    users = [0, 0, 1, 1, 4, 4, 2, 2, 3, 3]
    items = [0, 1, 0, 1, 0, 1, 0, 2, 0, 2]
    weights = np.array([1, 1, 1, 1, 1, 1, 5, 5, 5, 5], dtype=np.float64)
    data = Interactions.from_arrays(users, items, n_users=5, n_items=4, weights=weights)
    query = Histories.from_lists([[0]])
    for similarity in ("cosine", "tfidf", "bm25"):
        by_counts = ItemKNN(ItemKNNConfig(similarity=similarity, num_threads=1)).fit(data)  # type: ignore[arg-type]
        by_weights = ItemKNN(ItemKNNConfig(similarity=similarity, num_threads=1, use_weights=True)).fit(data)  # type: ignore[arg-type]
        assert by_counts.recommend(query, 2)[0].tolist() == [[1, 2]], similarity
        assert by_weights.recommend(query, 2)[0].tolist() == [[2, 1]], similarity


def _twins(heavy: float) -> Interactions:
    """Two communities of 150 users; half of the first buys both items 1 and 2, item 2 weighing ``heavy``."""
    rng = np.random.default_rng(0)
    users: list[int] = []
    items: list[int] = []
    for user in range(300):
        first = 0 if user < 150 else 20
        own = rng.choice(np.arange(first + 3, first + 11), size=4, replace=False)
        users += [user] * 4
        items += own.tolist()
        if user < 150 and rng.random() < 0.5:
            users += [user, user]
            items += [1, 2]
    item_array = np.array(items)
    weights = np.where(item_array == 2, heavy, 1.0)
    return Interactions.from_arrays(np.array(users), item_array, n_users=300, n_items=40, weights=weights)


def test_als_ranks_the_heavier_of_two_twin_items_first() -> None:
    # items 1 and 2 have the same buyers, so by counts they are a coin toss; weighted, the
    # confidence on item 2 is five times higher and it comes first. ALS weights are confidences
    # (Hu et al.), not a popularity boost: this holds at the pipeline's alpha = 40, and a history,
    # which carries no weights, is folded in as events of weight 1.
    data = _twins(heavy=5.0)
    histories = Histories.from_lists([[3 + k % 8, 3 + (k + 1) % 8] for k in range(8)])

    def share_ahead(use_weights: bool) -> float:
        wins = []
        for seed in range(3):
            cfg = ALSConfig(factors=32, alpha=40.0, seed=seed, num_threads=1, use_weights=use_weights)
            ids, _ = ALS(cfg).fit(data).recommend(histories, 40)
            wins.append(np.argmax(ids == 2, axis=1) < np.argmax(ids == 1, axis=1))
        return float(np.mean(wins))

    assert share_ahead(True) == 1.0
    assert share_ahead(False) < 0.9
