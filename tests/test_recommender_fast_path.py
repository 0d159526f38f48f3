"""The request-path fast forms against their plain references: same answers, within float32 noise.

Each fast form here replaced a slower one on the path of ``POST /recommend``; the reference is either
the library the fast form re-implements (implicit's fold-in) or the plain NumPy it replaced.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.candidates.als import ALS, ALSConfig, count_matrix, fold_in
from recsys.candidates.base import mask_history, neighbours, ranked, sparse_rows, top_entries, top_k
from recsys.candidates.cooccurrence import CoOccurrence, CoOccurrenceConfig
from recsys.candidates.itemknn import ItemKNN, ItemKNNConfig
from recsys.candidates.text import TextRetriever, TextRetrieverConfig
from recsys.data.dataset import Histories, Interactions
from recsys.pipeline.recommender import stable_top


def _interactions(n_users: int = 300, n_items: int = 120, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, size=4000)
    # a few popular items and a long tail, so the factors are far from isotropic
    items = np.minimum(rng.zipf(1.3, size=4000) - 1, n_items - 11)
    return Interactions.from_arrays(users, items, n_users=n_users, n_items=n_items)


def _histories(n_items: int, seed: int = 1) -> Histories:
    rng = np.random.default_rng(seed)
    rows = [list(rng.integers(0, n_items, size=rng.integers(1, 40))) for _ in range(30)]
    # empty, untrained items only (the last 10 never occur in training), and repeated items
    return Histories.from_lists([*rows, [], [n_items - 1, n_items - 2], [3, 3, 3, 5]])


@pytest.mark.parametrize(
    "config",
    [
        ALSConfig(factors=16, alpha=40.0, regularization=0.01, iterations=5, num_threads=1),
        ALSConfig(factors=8, alpha=1.0, regularization=0.1, iterations=5, bm25=True, num_threads=1),
        ALSConfig(factors=12, alpha=0.5, regularization=0.05, iterations=5, num_threads=1),  # confidence < 1
    ],
)
def test_fold_in_matches_implicit_recalculate_user(config: ALSConfig) -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    data = _interactions()
    model = ALS(config).fit(data)
    histories = _histories(data.n_items)
    ours = model.user_factors(histories)

    reference = AlternatingLeastSquares(
        factors=config.factors, regularization=config.regularization, alpha=config.alpha, num_threads=1
    )
    reference.item_factors = model.item_factors_
    weighted = model._weigh(count_matrix(histories, data.n_items))
    theirs = reference.recalculate_user(np.arange(len(histories)), weighted)

    scale = np.abs(theirs).max()
    assert scale > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)
    # an empty history and one of untrained items only fold in to exactly zero: no recommendations
    assert not ours[-3].any() and not ours[-2].any()
    ids, _ = model.recommend(histories, 5)
    assert (ids[-3] == -1).all() and (ids[-2] == -1).all()


def test_fold_in_rows_are_independent() -> None:
    """A block of histories gives each row the vector it gets alone (the service asks one at a time)."""
    data = _interactions()
    model = ALS(ALSConfig(factors=16, alpha=10.0, iterations=5, num_threads=1)).fit(data)
    histories = _histories(data.n_items)
    together = model.user_factors(histories)
    alone = np.vstack(
        [model.user_factors(Histories.from_lists([list(histories.sequence(r))])) for r in range(3)]
    )
    np.testing.assert_allclose(together[:3], alone, rtol=1e-6, atol=1e-7)


def test_fold_in_negative_confidence_means_no_preference() -> None:
    """Negative confidences count as |c| with preference 0, as in implicit."""
    y = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    gram = y.T.astype(np.float64) @ y + 0.1 * np.eye(2)
    negative = sp.csr_matrix(np.array([[-3.0, 0.0]], dtype=np.float32))
    x = fold_in(y, negative, gram=gram, alpha=1.0)
    np.testing.assert_allclose(x, 0.0)  # no positive preference: the solution is zero


def test_scores_in_column_layout_equal_the_plain_product() -> None:
    """ALS and text score against a transposed copy of their matrices; the plain product is the
    reference, equal within float32 rounding, and the top lists are the same."""
    rng = np.random.default_rng(0)
    data = _interactions()
    histories = _histories(data.n_items)

    als = ALS(ALSConfig(factors=16, alpha=10.0, iterations=5, num_threads=1)).fit(data)
    assert als.item_factors_ is not None
    plain = als.user_factors(histories) @ als.item_factors_.T
    fast = als._score_block(histories)
    finite = np.isfinite(fast)
    np.testing.assert_allclose(fast[finite], plain[finite], rtol=1e-5, atol=1e-5)

    emb = rng.normal(size=(data.n_items, 24)).astype(np.float32)
    text = TextRetriever(TextRetrieverConfig(last_n=3), item_embeddings=emb).fit(data)
    assert text.item_embeddings_ is not None
    plain = text.profiles(histories) @ text.item_embeddings_.T
    fast = text._score_block(histories)
    finite = np.isfinite(fast)
    np.testing.assert_allclose(fast[finite], plain[finite], rtol=1e-5, atol=1e-6)
    plain[histories.lengths() == 0] = -np.inf
    ids_fast, _ = top_k(fast, 10)
    ids_plain, _ = top_k(plain, 10)
    np.testing.assert_array_equal(ids_fast, ids_plain)


def _reference_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain top-k by a full stable sort: the order ``top_k`` must give, ties in item order."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    ids = np.where(np.isneginf(top), -1, order).astype(np.int32)
    if k > scores.shape[1]:
        pad = k - scores.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids, top


@pytest.mark.parametrize("k", [1, 7, 50, 60, 80])
def test_single_row_top_k_equals_the_batched_form(k: int) -> None:
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(5, 60)).astype(np.float32)
    scores[:, ::7] = -np.inf
    scores[1, :] = np.round(scores[1, :])  # many ties
    batched = top_k(scores, k)
    for r in range(len(scores)):
        single = top_k(scores[r : r + 1], k)
        np.testing.assert_array_equal(single[0], batched[0][r : r + 1])
        np.testing.assert_array_equal(single[1], batched[1][r : r + 1])
    reference = _reference_top_k(scores, k)  # ties too: the full stable sort's order, items ascending
    np.testing.assert_array_equal(batched[0], reference[0])
    np.testing.assert_array_equal(batched[1], reference[1])
    for r in range(len(scores)):  # from a row's scored entries alone (the per-candidate fast paths)
        entries = np.flatnonzero(np.isfinite(scores[r]))[::-1]  # in any order
        found = top_entries(entries, scores[r, entries], k)
        np.testing.assert_array_equal(found[0], reference[0][r : r + 1])
        np.testing.assert_array_equal(found[1], reference[1][r : r + 1])


def test_mask_history_equals_the_sparse_reference() -> None:
    rng = np.random.default_rng(0)
    histories = Histories.from_lists([[3, 1, 3], [], [0, 9], [5] * 4])
    scores = rng.normal(size=(4, 10)).astype(np.float32)
    expected = scores.copy()
    rows, cols = histories.to_csr(10).nonzero()
    expected[rows, cols] = -np.inf
    np.testing.assert_array_equal(mask_history(scores.copy(), histories), expected)


def test_ranked_answers_each_row_as_it_answers_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """One history alone (the service) and the same history inside multi-block batches (offline
    evaluation) get the same list."""
    import recsys.candidates.base as base

    monkeypatch.setattr(base, "BLOCK_ROWS", 4)  # several blocks, the last one short
    rng = np.random.default_rng(0)
    table = rng.normal(size=(11, 50)).astype(np.float32)
    histories = Histories.from_lists([list(rng.integers(0, 50, size=r % 5)) for r in range(11)])

    def score_block(block: Histories) -> np.ndarray:
        # a row's scores depend on its history only: the first item selects a row of ``table``
        first = np.array([block.sequence(r)[0] if len(block.sequence(r)) else 0 for r in range(len(block))])
        return table[first % len(table)]

    ids, scores = ranked(score_block, histories, 8, 50)
    for r in range(len(histories)):
        one = Histories.from_lists([list(histories.sequence(r))])
        ids_r, scores_r = ranked(score_block, one, 8, 50)
        np.testing.assert_array_equal(ids_r[0], ids[r])
        np.testing.assert_array_equal(scores_r[0], scores[r])
        assert not set(ids[r]) & set(histories.sequence(r).tolist())


@pytest.mark.parametrize("n", [1, 3, 8, 20, 25])
def test_stable_top_equals_the_full_stable_sort(n: int) -> None:
    rng = np.random.default_rng(n)
    scores = rng.integers(0, 5, size=20).astype(np.float32)  # heavy ties: the order of ties matters
    scores[rng.random(20) < 0.3] = -np.inf
    np.testing.assert_array_equal(stable_top(scores, n), np.argsort(-scores, kind="stable")[:n])
    scores[2] = np.nan
    np.testing.assert_array_equal(stable_top(scores, n), np.argsort(-scores, kind="stable")[:n])


@pytest.mark.parametrize(
    "make",
    [
        lambda: ItemKNN(ItemKNNConfig(neighbours=20, num_threads=1)),
        lambda: ItemKNN(ItemKNNConfig(neighbours=50, similarity="bm25", num_threads=1)),
        lambda: CoOccurrence(CoOccurrenceConfig(neighbours=15)),
        lambda: CoOccurrence(CoOccurrenceConfig(popularity_fallback=False, history_len=4, recency_decay=0.7)),
    ],
)
def test_one_history_merges_neighbour_lists_as_the_sparse_product(make: Any) -> None:
    """The request path's item-to-item scores (one history: its items' stored neighbour lists
    merged) equal the sparse product of the batch path bit for bit, and so does the top list."""
    data = _interactions()
    model = make().fit(data)
    histories = _histories(data.n_items)
    if isinstance(model, CoOccurrence):  # its one-history path still fills a dense row
        for row in range(len(histories)):
            one = histories.rows(row, row + 1)
            np.testing.assert_array_equal(model._score_block(one), model._score_sparse(one))
    for exclude_seen in (True, False):
        single = [
            model.recommend(histories.rows(r, r + 1), 15, exclude_seen=exclude_seen)
            for r in range(len(histories))
        ]
        # blocks of many rows: the sparse product
        batch_ids, batch_scores = model.recommend(histories, 15, exclude_seen=exclude_seen)
        np.testing.assert_array_equal(np.concatenate([ids for ids, _ in single]), batch_ids)
        np.testing.assert_array_equal(np.concatenate([scores for _, scores in single]), batch_scores)
        # and both as the dense reference: every item's score row, ranked by top_k
        dense = ranked(model._score_sparse, histories, 15, data.n_items, exclude_seen=exclude_seen)
        np.testing.assert_array_equal(dense[0], batch_ids)
        np.testing.assert_array_equal(dense[1], batch_scores)


def test_one_rows_transition_entries_equal_scipy_indexing() -> None:
    """The last-item transition feature of one request (binary search in its last item's sorted
    neighbour list) reads the same entries as scipy's fancy indexing, absent ones 0."""
    from recsys.ranking.features import _entries

    model = CoOccurrence(CoOccurrenceConfig(neighbours=15)).fit(_interactions())
    transitions = model.similarity_
    assert transitions is not None and transitions.has_sorted_indices
    candidates = np.arange(transitions.shape[1])
    for last in range(transitions.shape[0]):  # rows with and without entries (untrained items)
        rows = np.full(len(candidates), last)
        expected = np.asarray(transitions[rows, candidates]).ravel()
        np.testing.assert_array_equal(_entries(transitions, rows, candidates), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ItemKNN(ItemKNNConfig(neighbours=20, num_threads=1)),
        lambda: CoOccurrence(CoOccurrenceConfig(neighbours=15)),
    ],
)
def test_similar_items_from_stored_rows_equal_the_dense_reference(make: Any) -> None:
    """``sparse_neighbours`` (the stored entries of the query rows alone) answers as the dense
    reference, ``neighbours`` over full ``sparse_rows``, ties and short rows included."""
    from recsys.candidates.base import sparse_neighbours

    model = make().fit(_interactions())
    matrix = model.similarity_
    matrix.data = np.round(matrix.data, 1)  # many ties
    items = np.arange(matrix.shape[0])  # rows with and without entries (untrained items)
    for n in (1, 5, 30):
        expected = neighbours(lambda query: sparse_rows(matrix, query), items, n, matrix.shape[1])
        found = sparse_neighbours(matrix, items, n)
        np.testing.assert_array_equal(found[0], expected[0])
        np.testing.assert_array_equal(found[1], expected[1])


def test_popularity_from_its_order_equals_the_dense_reference() -> None:
    """``Popularity.recommend`` (the head of one stored order, history dropped) answers as the dense
    reference: ``ranked`` over the whole catalogue's scores, ties and short catalogues included."""
    from recsys.candidates.popularity import Popularity

    data = _interactions()
    model = Popularity().fit(data)
    model.scores_ = np.round(model.scores_ / 3).astype(np.float32)  # many ties
    scores = model.scores_
    histories = _histories(data.n_items)
    for n, exclude_seen in [(10, True), (10, False), (200, True), (1, True)]:
        expected = ranked(
            lambda block: np.tile(scores, (len(block), 1)),
            histories,
            n,
            data.n_items,
            exclude_seen=exclude_seen,
        )
        for rows in (histories, histories.rows(3, 4)):
            found = model.recommend(rows, n, exclude_seen=exclude_seen)
            start = 0 if rows is histories else 3
            np.testing.assert_array_equal(found[0], expected[0][start : start + len(rows)])
            np.testing.assert_array_equal(found[1], expected[1][start : start + len(rows)])
