"""The whole two-stage model on the contract suite's two-community data, where the answer is known.

Every single source finds the structure (``tests/candidate_contract.py``): a history of community A
items gets A items, and an A item's neighbours are A items. Blending, featurising and ranking must
keep it: the ranked list of an A history holds only A items, offline and through the service's
``Recommender``. A ranker whose scores were reversed, or candidates handed to the wrong history,
puts the other community's items first and fails here.

All six sources take part: the text source reads the communities' toy embeddings, and the
sequential model is the contract suite's tiny one (well under a second per fit).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from candidate_contract import (
    A_ITEMS,
    B_ITEMS,
    COMMUNITY_ITEMS,
    N_ITEMS,
    N_USERS_PER_COMMUNITY,
    TINY_SEQUENTIAL,
    community_data,
    community_embeddings,
)

from recsys.candidates.als import ALSConfig
from recsys.candidates.registry import SOURCES
from recsys.data import schema as S
from recsys.data.dataset import Histories
from recsys.pipeline.recommender import Filters, Recommender
from recsys.pipeline.two_stage import CandidatesConfig, TwoStage, TwoStageConfig
from recsys.ranking.ranker import RankerConfig

N = 3  # every A history has at least 3 unseen A items (histories hold at most 7 of the 10)


@pytest.fixture(scope="module")
def model() -> TwoStage:
    candidates = CandidatesConfig(
        per_source=10,
        total=N_ITEMS,
        als=ALSConfig(factors=2, iterations=10, regularization=0.05, alpha=5.0, seed=7, num_threads=1),
        sequential=TINY_SEQUENTIAL,
    )
    ranker = RankerConfig(search=((7, 0.1),), max_rounds=50, min_data_in_leaf=5, bags=1, num_threads=1)
    config = TwoStageConfig(candidates=candidates, ranker=ranker, label_protocol="leave-last-out")
    items = pl.DataFrame(
        {S.ITEM_ID: [f"i{i}" for i in range(N_ITEMS)], S.TITLE: [f"item {i}" for i in range(N_ITEMS)]}
    )
    return TwoStage(config, items=items, item_embeddings=community_embeddings()).fit(community_data())


def _probes() -> tuple[Histories, np.ndarray]:
    """Each training user's own history, then unseen A and B histories; and each row's community."""
    data = community_data()
    rng = np.random.default_rng(5)
    unseen = [rng.choice(A_ITEMS, size=3, replace=False).tolist() for _ in range(10)]
    unseen += [rng.choice(B_ITEMS, size=3, replace=False).tolist() for _ in range(10)]
    users = data.histories(np.arange(data.n_users))
    rows = [users.sequence(u).tolist() for u in range(len(users))] + unseen
    community_b = [u >= N_USERS_PER_COMMUNITY for u in range(data.n_users)] + [False] * 10 + [True] * 10
    return Histories.from_lists(rows), np.array(community_b)


def _assert_own_community(ids: np.ndarray, community_b: np.ndarray) -> None:
    assert (ids >= 0).all(), "every list must be full"
    own = np.where(community_b[:, None], np.isin(ids, B_ITEMS), np.isin(ids, A_ITEMS))
    wrong = np.flatnonzero(~own.all(axis=1))
    assert not len(wrong), (
        f"{len(wrong)} histories got the other community, e.g. row {wrong[0]}: {ids[wrong[0]]}"
    )


def test_every_source_takes_part(model: TwoStage) -> None:
    assert model.generators_ is not None and set(model.generators_) == set(SOURCES)
    assert model.report_ is not None and model.report_["label_groups"] > N_USERS_PER_COMMUNITY


def test_the_ranked_list_keeps_each_community(model: TwoStage) -> None:
    histories, community_b = _probes()
    candidates = model.candidates(histories)
    # the blend holds both communities (popularity proposes the other one's hits): the ranker orders them
    assert np.isin(candidates.ids[~community_b], B_ITEMS).any(axis=1).all()
    ids, scores = model.recommend(histories, N)
    _assert_own_community(ids, community_b)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_the_recommender_keeps_each_community(model: TwoStage) -> None:
    histories, community_b = _probes()
    recommender = Recommender(model, {})
    names = [[f"i{i}" for i in histories.sequence(r)] for r in range(len(histories))]
    answers = recommender.recommend_batch(names, n=N)
    ids = np.array([[int(r.item_id[1:]) for r in answer] for answer in answers])
    _assert_own_community(ids, community_b)
    assert all("popularity" not in r.sources or len(r.sources) > 1 for answer in answers for r in answer)


def test_similar_items_stay_in_the_community(model: TwoStage) -> None:
    queries = np.array([0, 4, COMMUNITY_ITEMS, COMMUNITY_ITEMS + 5])
    ids, scores = model.similar_items(queries, N)
    _assert_own_community(ids, np.array([False, False, True, True]))
    assert not (ids == queries[:, None]).any() and np.all(np.diff(scores, axis=1) <= 0)


def test_a_model_without_the_personalised_sources_does_not_know_the_communities(model: TwoStage) -> None:
    """The check above can fail: popularity alone recommends the globally popular items to all."""
    config = replace(
        model.config, candidates=replace(model.config.candidates, sources=("popularity",)), window_refit=()
    )
    popular = TwoStage(config, items=model.items, item_embeddings=model.item_embeddings).fit(community_data())
    histories, community_b = _probes()
    ids, _ = popular.recommend(histories, N)
    with pytest.raises(AssertionError, match="got the other community"):
        _assert_own_community(ids, community_b)


def test_exclude_seen_false_ranks_the_history_too(model: TwoStage) -> None:
    """A history of community A's three most popular items: with ``exclude_seen=False`` ("buy again")
    the top ten are then exactly A's ten items, history included, offline and through the
    ``Recommender``, with the request's exclusions still applied; by default none of the three."""
    seen = A_ITEMS[:3].tolist()
    histories, n = Histories.from_lists([seen]), COMMUNITY_ITEMS
    ids, _ = model.recommend(histories, n, exclude_seen=False)
    assert sorted(ids[0].tolist()) == A_ITEMS.tolist(), ids
    assert not np.isin(model.recommend(histories, n)[0], seen).any()

    recommender = Recommender(model, {})
    names = [f"i{i}" for i in seen]
    again = [r.item_id for r in recommender.recommend(names, n=n, exclude_seen=False)]
    assert sorted(again) == sorted(f"i{i}" for i in A_ITEMS), again
    assert not {r.item_id for r in recommender.recommend(names, n=n)} & set(names)
    batch = recommender.recommend_batch([names, names[:1]], n=n, exclude_seen=False)
    assert [r.item_id for r in batch[0]] == again
    barred = Filters(exclude_item_ids=(names[0],))
    kept = [r.item_id for r in recommender.recommend(names, n=n, exclude_seen=False, filters=barred)]
    assert names[0] not in kept and set(names[1:]) <= set(kept) and len(kept) == n
