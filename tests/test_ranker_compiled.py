"""The compiled ranker (``recsys.ranking.compiled``) against the LightGBM bag it stands in for."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recsys.ranking.compiled import merged_model_text
from recsys.ranking.ranker import LambdaRanker
from tests.test_ranker import CONFIG, NAMES, groups_where_one_source_is_right

BAG = replace(CONFIG, bags=3, try_prior=False, search=((7, 0.1), (15, 0.05)), seed=3)


@pytest.fixture(scope="module")
def bag() -> LambdaRanker:
    X, y, groups = groups_where_one_source_is_right(60)
    return LambdaRanker(BAG).fit(X, y, groups, feature_names=NAMES)


def _rows(seed: int) -> np.ndarray:
    X, *_ = groups_where_one_source_is_right(10, seed=seed)
    X[::7, 2:4] = np.nan  # missing evidence, as for a candidate a source did not propose
    return X


def test_the_merged_model_scores_the_sum_of_the_bag(bag: LambdaRanker) -> None:
    import lightgbm as lgb

    assert bag.boosters_ is not None
    merged = lgb.Booster(model_str=merged_model_text([b.model_to_string() for b in bag.boosters_]))
    assert merged.num_trees() == sum(b.num_trees() for b in bag.boosters_)
    X = _rows(seed=5)
    total = sum(b.predict(X, num_threads=1) for b in bag.boosters_)
    np.testing.assert_allclose(merged.predict(X, num_threads=1), total, rtol=0, atol=1e-12)


def test_the_compiled_bag_gives_the_boosters_scores_and_order(bag: LambdaRanker) -> None:
    pytest.importorskip("lleaves")
    X = _rows(seed=6)
    reference = bag.predict(X, num_threads=1)
    assert bag.compile()
    try:
        compiled = bag.predict(X)
    finally:
        bag.compiled_ = None
    # the trees are summed in one pass instead of booster by booster: float64 rounding, then float32
    np.testing.assert_allclose(compiled, reference, rtol=1e-6, atol=1e-7)
    for group in range(10):  # the order the service answers in: each group's candidates by score
        rows = slice(40 * group, 40 * (group + 1))
        np.testing.assert_array_equal(
            np.argsort(-compiled[rows], kind="stable"), np.argsort(-reference[rows], kind="stable")
        )


def test_a_bag_with_a_prior_stays_on_lightgbm() -> None:
    X, y, groups = groups_where_one_source_is_right(20)
    stumps = replace(CONFIG, bags=1, min_data_in_leaf=10_000)  # only the prior can order the items
    ranker = LambdaRanker(stumps).fit(X, y, groups, feature_names=NAMES)
    assert ranker.priors_ == ["good_rank"]
    assert not ranker.compile()
    assert ranker.compiled_ is None


def test_models_with_other_features_are_not_merged(bag: LambdaRanker) -> None:
    assert bag.boosters_ is not None
    text = bag.boosters_[0].model_to_string()
    other = text.replace("feature_names=good_score", "feature_names=other_score", 1)
    with pytest.raises(ValueError, match="different feature_names"):
        merged_model_text([text, other])


def test_the_service_loads_a_bundle_with_its_ranker_compiled_and_answers_the_same() -> None:
    """``recsys serve --compile-ranker`` (``RECSYS_COMPILE_RANKER=1``): the loader compiles the bag,
    and the answers are the LightGBM bag's, items and scores."""
    pytest.importorskip("lleaves")
    from serving.runtime import Settings, bundle_loader
    from tests.serving_fixtures import tiny_bundle, tiny_tables

    plain = bundle_loader(Settings.from_env({}))(tiny_bundle())
    compiled = bundle_loader(Settings.from_env({"RECSYS_COMPILE_RANKER": "1"}))(tiny_bundle())
    assert plain.model.ranker_ is not None and plain.model.ranker_.compiled_ is None
    assert compiled.model.ranker_ is not None and compiled.model.ranker_.compiled_ is not None
    _, interactions = tiny_tables()
    histories = interactions.group_by("user_id", maintain_order=True).agg("item_id")["item_id"].to_list()
    for history in histories[:40]:
        ours, theirs = (r.recommend(history, n=10) for r in (compiled, plain))
        assert [a.item_id for a in ours] == [b.item_id for b in theirs]
        np.testing.assert_allclose([a.score for a in ours], [b.score for b in theirs], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="RECSYS_COMPILE_RANKER must be 0 or 1"):
        Settings.from_env({"RECSYS_COMPILE_RANKER": "yes"})
