"""The IVF index against its exact reference: recall, save/load, seen-item masking, the sources that
search it, and folders saved before indexes existed."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from candidate_contract import N_ITEMS, TINY_SEQUENTIAL, community_data, community_embeddings

from benchmarks.ann import catalogue, profiles
from recsys.candidates.als import ALS, ALSConfig
from recsys.candidates.ann import AnnConfig, AnnIndex, exact_top_k, lifted, recall_at_k
from recsys.candidates.base import mask_history, top_k
from recsys.candidates.text import TextRetriever, TextRetrieverConfig
from recsys.data import schema as S
from recsys.data.dataset import Histories, Interactions
from recsys.pipeline.two_stage import CandidatesConfig, TwoStage, TwoStageConfig
from recsys.ranking.ranker import RankerConfig

ANY_SIZE = AnnConfig(min_items=1, build_threads=1)
FEW_PROBES = AnnConfig(min_items=1, lists=32, probes=8)  # a quarter of the cells: approximate, not exact


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """4,000 clustered unit vectors (the benchmark's generator, smaller) and 200 profile queries."""
    vectors, cluster = catalogue(4000, 64, seed=5)
    return vectors, profiles(vectors, cluster, 200, seed=6)


@pytest.fixture(scope="module")
def index(clustered: tuple[np.ndarray, np.ndarray]) -> AnnIndex:
    return AnnIndex.build(clustered[0], FEW_PROBES)


def test_recall_at_100_against_exact(clustered: tuple[np.ndarray, np.ndarray], index: AnnIndex) -> None:
    vectors, queries = clustered
    truth, truth_scores = exact_top_k(vectors, queries, 100)
    ids, scores = index.search(queries, 100)
    assert recall_at_k(ids, truth) >= 0.95
    # the scores are the inner products themselves, best first
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, vectors[ids]), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert np.all(scores[:, 0] <= truth_scores[:, 0] + 1e-5)


def test_inner_products_of_unequal_norms_rank_as_exact(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    """ALS-like vectors, norms 0.1x-3x: the lift to one norm cuts cells by direction, and the index
    still returns the largest inner products (0.83 without the lift at these settings)."""
    vectors, queries = clustered
    items = vectors * np.random.default_rng(0).uniform(0.1, 3.0, (len(vectors), 1)).astype(np.float32)
    index = AnnIndex.build(items, AnnConfig(min_items=1, lists=64, probes=8))
    ids, scores = index.search(queries, 100)
    assert recall_at_k(ids, exact_top_k(items, queries, 100)[0]) >= 0.95
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, items[ids]), rtol=1e-5, atol=1e-5)


def test_only_the_given_rows_are_indexed() -> None:
    items = np.eye(6, dtype=np.float32)
    index = AnnIndex.build(items, ANY_SIZE, rows=np.array([1, 3, 5]))
    ids, scores = index.search(np.ones((1, 6), np.float32), 4)
    assert sorted(ids[0, :3].tolist()) == [1, 3, 5]
    assert ids[0, 3] == -1 and scores[0, 3] == -np.inf  # the protocol's padding


def test_the_lift_is_written_block_by_block_as_the_whole_array_way() -> None:
    """Blocks of 3 rows (of 7 chosen, unequal norms) give the bytes of the gather, float64 norms and
    ``hstack`` over the whole array; a non-finite chosen vector is named, an unchosen one is not read."""
    items = (np.random.default_rng(3).standard_normal((12, 4)) * np.arange(1, 13)[:, None]).astype(np.float32)
    rows = np.array([0, 2, 3, 5, 8, 10, 11], np.int32)
    norms = np.linalg.norm(items[rows].astype(np.float64), axis=1)
    lift = np.sqrt(np.maximum(norms.max() ** 2 - norms**2, 0.0)).astype(np.float32)
    reference = np.hstack([items[rows], lift[:, None]])
    assert lifted(items, rows, block_values=12).tobytes() == reference.tobytes()
    assert lifted(items, rows).tobytes() == reference.tobytes()
    items[1] = np.nan
    lifted(items, rows, block_values=12)  # item 1 is not indexed
    items[8, 0] = np.inf
    with pytest.raises(ValueError, match="item 8's vector holds NaN or infinite"):
        AnnIndex.build(items, ANY_SIZE, rows=rows)


def test_save_load_round_trip(
    clustered: tuple[np.ndarray, np.ndarray], index: AnnIndex, tmp_path: Path
) -> None:
    index.save(tmp_path / "ann")
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == ["config.json", "index.faiss", "rows.npy"]
    loaded = AnnIndex.load(tmp_path / "ann")
    queries = clustered[1]
    for got, want in zip(loaded.search(queries, 20), index.search(queries, 20), strict=True):
        np.testing.assert_array_equal(got, want)
    assert loaded.config == index.config and loaded.n_items == index.n_items
    (tmp_path / "ann" / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match=r"index\.faiss"):
        AnnIndex.load(tmp_path / "ann")


def test_bad_queries_name_their_shape(index: AnnIndex) -> None:
    with pytest.raises(ValueError, match=r"ANN queries must be \(n, 64\)"):
        index.search(np.zeros((2, 3), np.float32), 5)
    with pytest.raises(ValueError, match="min_items"):
        AnnConfig(min_items=0)


def test_seen_items_are_masked_and_the_rest_is_exact(
    clustered: tuple[np.ndarray, np.ndarray], index: AnnIndex
) -> None:
    """Histories holding each query's own best items: over-fetched, filtered, still the exact order."""
    vectors, queries = clustered
    best = exact_top_k(vectors, queries, 30)[0]
    histories = Histories.from_lists([best[i, : 1 + i % 30].tolist() for i in range(len(queries))])

    def unused(block: Histories) -> np.ndarray:
        raise AssertionError("the over-fetch covers every history here: no exact fallback")

    def answer(block: Histories) -> tuple[np.ndarray, np.ndarray]:
        return queries, np.ones(len(queries), dtype=bool)

    ids, _ = index.ranked(answer, unused, histories, 50)
    assert not any(np.isin(ids[i], histories.sequence(i)).any() for i in range(len(histories)))
    want = top_k(mask_history(queries @ vectors.T, histories), 50)[0]
    assert recall_at_k(ids, want) >= 0.95
    kept, _ = index.ranked(answer, unused, histories, 50, exclude_seen=False)
    assert recall_at_k(kept, exact_top_k(vectors, queries, 50)[0]) >= 0.95


def test_rows_without_a_query_and_short_rows_go_to_the_exact_path() -> None:
    """An unanswerable row (empty history) and a row whose history covers almost the catalogue are
    answered by the exact scorer, with the protocol's padding."""
    items = np.eye(8, dtype=np.float32)
    index = AnnIndex.build(items, ANY_SIZE)
    histories = Histories.from_lists([[], [0, 1, 2, 3, 4, 5], [7]])

    def exact(block: Histories) -> np.ndarray:
        return np.tile(np.arange(8, dtype=np.float32), (len(block), 1))

    def answer(block: Histories) -> tuple[np.ndarray, np.ndarray]:
        return np.tile(np.arange(8, dtype=np.float32), (len(block), 1)), block.lengths() > 0

    ids, scores = index.ranked(answer, exact, histories, 4)
    assert ids.tolist() == [[7, 6, 5, 4], [7, 6, -1, -1], [6, 5, 4, 3]]
    assert scores[1, 2] == -np.inf


def text_case(n_items: int = 3000, n_users: int = 300) -> tuple[np.ndarray, Interactions, Histories]:
    """Clustered item embeddings, and users who each take 5 items of the cluster of one item."""
    vectors, cluster = catalogue(n_items, 32, seed=9)
    rng = np.random.default_rng(2)
    users = np.repeat(np.arange(n_users), 5)
    items = np.concatenate(
        [rng.choice(np.flatnonzero(cluster == cluster[rng.integers(n_items)]), 5) for _ in range(n_users)]
    )
    data = Interactions.from_arrays(users, items, n_users=n_users, n_items=n_items)
    return vectors, data, data.histories(np.arange(min(n_users, 300)))


def test_text_source_with_ann_answers_as_exact(tmp_path: Path) -> None:
    vectors, data, histories = text_case()
    exact = TextRetriever(TextRetrieverConfig(), item_embeddings=vectors).fit(data)
    ann = TextRetriever(TextRetrieverConfig(ann=FEW_PROBES), item_embeddings=vectors).fit(data)
    assert exact.ann_ is None and ann.ann_ is not None
    want, want_scores = exact.recommend(histories, 100)
    got, got_scores = ann.recommend(histories, 100)
    assert recall_at_k(got, want) >= 0.95
    np.testing.assert_allclose(got_scores[:, 0], want_scores[:, 0], atol=1e-5)
    assert not any(np.isin(got[i], histories.sequence(i)).any() for i in range(len(histories)))
    ann.save(tmp_path / "text")
    loaded = TextRetriever.load(tmp_path / "text")
    assert loaded.ann_ is not None
    np.testing.assert_array_equal(loaded.recommend(histories, 100)[0], got)


def test_text_similar_items_through_the_index() -> None:
    vectors, data, _ = text_case()
    exact = TextRetriever(TextRetrieverConfig(), item_embeddings=vectors).fit(data)
    ann = TextRetriever(TextRetrieverConfig(ann=FEW_PROBES), item_embeddings=vectors).fit(data)
    items = np.arange(0, 3000, 7)
    want, got = exact.similar_items(items, 50), ann.similar_items(items, 50)
    assert recall_at_k(got[0], want[0]) >= 0.95
    assert not (got[0] == items[:, None]).any()  # never the item itself
    np.testing.assert_allclose(got[1][:, 0], want[1][:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="outside the catalogue"):
        ann.similar_items(np.array([3000]), 5)


def test_als_with_ann_ranks_by_the_same_score() -> None:
    _, data, histories = text_case(n_users=3000)  # ~5 events per item: factors with a structure
    config = ALSConfig(factors=16, iterations=5, seed=1, num_threads=1)
    exact = ALS(config).fit(data)
    # half the cells: ALS's top-100 spreads over more cells than text's (recall 0.89 with 8 of 32)
    half = AnnConfig(min_items=1, lists=32, probes=16)
    ann = ALS(ALSConfig(factors=16, iterations=5, seed=1, num_threads=1, ann=half)).fit(data)
    np.testing.assert_array_equal(exact.item_factors_, ann.item_factors_)
    assert ann.ann_ is not None and len(ann.ann_.rows) == int((data.item_counts() > 0).sum())
    want = exact.recommend(histories, 100)[0]
    got = ann.recommend(histories, 100)[0]
    assert recall_at_k(got, want) >= 0.95
    assert not np.isin(got, np.flatnonzero(data.item_counts() == 0)).any()  # untrained never come back
    empty = ann.recommend(Histories.from_lists([[]]), 5)[0]
    assert (empty == -1).all()


def test_als_similar_items_through_the_cosine_index(tmp_path: Path) -> None:
    """ALS ranks neighbours by cosine: its unit-vector index holds the exact answer's recall, never
    returns the item itself, gives an untrained item no neighbours, and survives save and load."""
    _, data, _ = text_case(n_users=3000)
    exact = ALS(ALSConfig(factors=16, iterations=5, seed=1, num_threads=1)).fit(data)
    half = AnnConfig(min_items=1, lists=32, probes=16)
    ann = ALS(ALSConfig(factors=16, iterations=5, seed=1, num_threads=1, ann=half)).fit(data)
    assert exact.ann_cosine_ is None and ann.ann_cosine_ is not None
    trained = np.flatnonzero(data.item_counts() > 0)
    items = trained[::7]
    want, got = exact.similar_items(items, 50), ann.similar_items(items, 50)
    assert recall_at_k(got[0], want[0]) >= 0.95
    assert not (got[0] == items[:, None]).any()
    np.testing.assert_allclose(got[1][:, 0], want[1][:, 0], atol=1e-5)  # the best cosine itself
    untrained = np.flatnonzero(data.item_counts() == 0)[:3]
    assert len(untrained) == 3
    assert (ann.similar_items(untrained, 5)[0] == -1).all()
    assert not np.isin(got[0], untrained).any()
    ann.save(tmp_path / "als")
    loaded = ALS.load(tmp_path / "als")
    for a, b in zip(loaded.similar_items(items, 50), got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_folder_saved_before_indexes_loads_and_scores_exactly(tmp_path: Path) -> None:
    """No ``ann/`` and no ``ann`` key in config.json: what bundles written before this look like."""
    vectors, data, histories = text_case(500)
    model = TextRetriever(TextRetrieverConfig(ann=ANY_SIZE), item_embeddings=vectors).fit(data)
    model.save(tmp_path / "text")
    shutil.rmtree(tmp_path / "text" / "ann")
    meta = json.loads((tmp_path / "text" / "config.json").read_text())
    del meta["config"]["ann"]
    (tmp_path / "text" / "config.json").write_text(json.dumps(meta))
    old = TextRetriever.load(tmp_path / "text")
    assert old.ann_ is None and old.config.ann == AnnConfig()
    exact = TextRetriever(TextRetrieverConfig(), item_embeddings=vectors).fit(data)
    for got, want in zip(old.recommend(histories, 20), exact.recommend(histories, 20), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_bundle_carries_each_index_and_answers_the_same_after_loading(tmp_path: Path) -> None:
    """The two-stage bundle saves ``generators/<source>/ann/`` for the three sources and loads them."""
    candidates = CandidatesConfig(
        per_source=10,
        total=N_ITEMS,
        als=ALSConfig(factors=2, iterations=10, seed=7, num_threads=1, ann=ANY_SIZE),
        text=TextRetrieverConfig(ann=ANY_SIZE),
        sequential=replace(TINY_SEQUENTIAL, ann=ANY_SIZE),
    )
    ranker = RankerConfig(search=((7, 0.1),), max_rounds=20, min_data_in_leaf=5, bags=1, num_threads=1)
    config = TwoStageConfig(candidates=candidates, ranker=ranker, label_protocol="leave-last-out")
    items = pl.DataFrame({S.ITEM_ID: [f"i{i}" for i in range(N_ITEMS)], S.TITLE: ["t"] * N_ITEMS})
    model = TwoStage(config, items=items, item_embeddings=community_embeddings()).fit(community_data())
    model.save(tmp_path / "bundle")
    for name in ("als", "text", "sequential"):
        assert (tmp_path / "bundle" / "generators" / name / "ann" / "index.faiss").is_file(), name
    assert (tmp_path / "bundle" / "generators" / "als" / "ann_cosine" / "index.faiss").is_file()
    loaded = TwoStage.load(tmp_path / "bundle")
    histories = community_data().histories(np.arange(80))
    for got, want in zip(loaded.recommend(histories, 5), model.recommend(histories, 5), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_text_source_is_fitted_once_per_catalogue_and_embeddings() -> None:
    """Text learns nothing from the interactions: the label windows and the final model share one fit
    (at 1M items its index build takes minutes); other embeddings, or any other source, fit anew."""
    als = ALSConfig(factors=2, iterations=2, num_threads=1)
    config = TwoStageConfig(candidates=CandidatesConfig(als=als))
    items = pl.DataFrame({S.ITEM_ID: [f"i{i}" for i in range(N_ITEMS)], S.TITLE: ["t"] * N_ITEMS})
    data = community_data()
    model = TwoStage(config, items=items, item_embeddings=community_embeddings())
    first = model.fit_source("text", data)
    assert model.fit_source("text", data) is first
    assert model.fit_source("als", data) is not model.fit_source("als", data)
    model.item_embeddings = community_embeddings().copy()
    assert model.fit_source("text", data) is not first
