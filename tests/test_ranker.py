"""The LambdaRank ranker: boosting from a source's ranking (the prior), prediction, explanation, saving."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recsys.ranking.ranker import LambdaRanker, RankerConfig, ndcg_of_order, prior_scores

NAMES = ["good_score", "good_rank", "poor_score", "poor_rank", "noise"]
CONFIG = RankerConfig(
    min_data_in_leaf=5, max_rounds=30, early_stopping_rounds=5, num_threads=1, try_prior=True
)


def groups_where_one_source_is_right(n_groups: int, size: int = 40, seed: int = 0) -> tuple:
    """Each group's label is the item ``good`` ranks first in 80% of groups (else its 5th); ``poor``
    ranks at random and proposes only half of the items (NaN rank otherwise). Ranks are 0-based."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for _ in range(n_groups):
        good = rng.permutation(size).astype(np.float64)
        poor = rng.permutation(size).astype(np.float64)
        poor[rng.random(size) < 0.5] = np.nan
        label = np.zeros(size)
        label[np.flatnonzero(good == (0.0 if rng.random() < 0.8 else 4.0))] = 1
        rows.append(np.column_stack([1.0 / (1 + good), good, 1.0 / (1 + poor), poor, rng.normal(size=size)]))
        labels.append(label)
    return np.concatenate(rows).astype(np.float32), np.concatenate(labels), np.full(n_groups, size)


def test_prior_scores_and_ndcg_of_an_order() -> None:
    assert prior_scores(np.array([0.0, 2.0, 6.0, np.nan])).tolist() == [1.0, 0.5, 1 / 3, 0.0]
    labels = np.array([1, 0, 0, 0, 1, 0])
    groups = np.array([3, 3])
    # group 1: the label first (1.0); group 2: the label second of three (1 / log2(3))
    ndcg = ndcg_of_order(np.array([3.0, 2.0, 1.0, 3.0, 2.0, 1.0]), labels, groups, k=3)
    assert ndcg == pytest.approx((1.0 + 1 / np.log2(3)) / 2)


def test_few_groups_boost_from_the_right_sources_ranking(tmp_path: Path) -> None:
    X, y, groups = groups_where_one_source_is_right(30)
    ranker = LambdaRanker(replace(CONFIG, bags=1)).fit(X, y, groups, feature_names=NAMES)
    assert ranker.report_ is not None
    (report,) = ranker.report_["bags"]
    assert report["prior_ndcg"]["good_rank"] > report["prior_ndcg"]["poor_rank"]
    assert {t["prior"] for t in report["trials"]} == {None, "good_rank"}
    assert ranker.priors_ == [report["best"]["prior"]]

    # the ranker's order on fresh groups is at least as good as the right source's alone
    X_new, y_new, groups_new = groups_where_one_source_is_right(40, seed=1)
    scores = ranker.predict(X_new)
    alone = ndcg_of_order(prior_scores(X_new[:, 1]), y_new, groups_new, k=10)
    assert ndcg_of_order(scores, y_new, groups_new, k=10) >= alone - 0.05

    # the prior is part of the score and of its feature's explanation: contributions sum to the score
    assert ranker.boosters_ is not None
    raw = ranker.boosters_[0].predict(X_new)
    expected = raw + (prior_scores(X_new[:, 1]) if ranker.priors_ == ["good_rank"] else 0.0)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ranker.contributions(X_new).sum(axis=1), scores, rtol=1e-4, atol=1e-4)
    top = ranker.explain(X_new[:3], top=2)
    assert all(len(row) == 2 and abs(row[0][1]) >= abs(row[1][1]) for row in top)

    ranker.save(tmp_path / "ranker")
    loaded = LambdaRanker.load(tmp_path / "ranker")
    assert loaded.priors_ == ranker.priors_
    np.testing.assert_array_equal(loaded.predict(X_new), scores)


def test_a_bag_averages_boosters_each_held_out_on_its_own_groups(tmp_path: Path) -> None:
    X, y, groups = groups_where_one_source_is_right(40)
    bag = LambdaRanker(replace(CONFIG, bags=3, seed=7)).fit(X, y, groups, feature_names=NAMES)
    singles = [
        LambdaRanker(replace(CONFIG, bags=1, seed=7 + b)).fit(X, y, groups, feature_names=NAMES)
        for b in range(3)
    ]
    assert bag.report_ is not None and [r["seed"] for r in bag.report_["bags"]] == [7, 8, 9]
    assert bag.priors_ == [p for single in singles for p in single.priors_ or []]
    X_new, *_ = groups_where_one_source_is_right(10, seed=3)
    mean = np.mean([single.predict(X_new) for single in singles], axis=0)
    np.testing.assert_allclose(bag.predict(X_new), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bag.contributions(X_new).sum(axis=1), mean, rtol=1e-4, atol=1e-4)
    gain = {name: sum(s.feature_importance()[name] for s in singles) for name in NAMES}
    assert bag.feature_importance() == pytest.approx(gain)

    bag.save(tmp_path / "bag")
    assert sorted(p.name for p in (tmp_path / "bag").glob("*.txt")) == [
        "model_0.txt",
        "model_1.txt",
        "model_2.txt",
    ]
    np.testing.assert_array_equal(LambdaRanker.load(tmp_path / "bag").predict(X_new), bag.predict(X_new))
    with pytest.raises(ValueError, match="bags"):
        RankerConfig(bags=0)


def test_a_ranker_saved_before_the_bag_still_loads(tmp_path: Path) -> None:
    """Bundles written before the bag hold one ``model.txt`` and one ``prior`` (or none)."""
    X, y, groups = groups_where_one_source_is_right(20)
    ranker = LambdaRanker(replace(CONFIG, bags=1)).fit(X, y, groups, feature_names=NAMES)
    ranker.save(tmp_path / "old")
    (tmp_path / "old" / "model_0.txt").rename(tmp_path / "old" / "model.txt")
    meta_path = tmp_path / "old" / "ranker.json"
    meta = json.loads(meta_path.read_text())
    meta["prior"] = meta.pop("priors")[0]
    del meta["models"], meta["config"]["bags"]
    meta_path.write_text(json.dumps(meta))
    loaded = LambdaRanker.load(tmp_path / "old")
    assert loaded.priors_ == ranker.priors_ and loaded.config.bags == 1
    np.testing.assert_array_equal(loaded.predict(X), ranker.predict(X))


def test_the_prior_wins_when_boosting_cannot_learn(tmp_path: Path) -> None:
    """With trees that cannot split (too few rows per leaf), only the prior can order the items."""
    X, y, groups = groups_where_one_source_is_right(20)
    stumps = replace(CONFIG, min_data_in_leaf=10_000)
    ranker = LambdaRanker(stumps).fit(X, y, groups, feature_names=NAMES)
    assert ranker.priors_ == ["good_rank"] * CONFIG.bags
    no_prior = LambdaRanker(replace(stumps, try_prior=False)).fit(X, y, groups, feature_names=NAMES)
    assert RankerConfig().try_prior is False  # opt-in: no measured win on the shared datasets yet
    assert no_prior.priors_ == [None] * CONFIG.bags
    assert no_prior.report_ is not None
    assert {t["prior"] for bag in no_prior.report_["bags"] for t in bag["trials"]} == {None}
    X_new, y_new, groups_new = groups_where_one_source_is_right(40, seed=2)
    with_prior = ndcg_of_order(ranker.predict(X_new), y_new, groups_new, k=10)
    without = ndcg_of_order(no_prior.predict(X_new), y_new, groups_new, k=10)
    assert with_prior > without + 0.3


def test_a_saved_prior_must_be_one_of_the_features(tmp_path: Path) -> None:
    X, y, groups = groups_where_one_source_is_right(20)
    LambdaRanker(CONFIG).fit(X, y, groups, feature_names=NAMES).save(tmp_path / "ranker")
    meta_path = tmp_path / "ranker" / "ranker.json"
    meta = json.loads(meta_path.read_text())
    meta["priors"][-1] = "unknown_rank"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown_rank"):
        LambdaRanker.load(tmp_path / "ranker")


def test_a_worker_bins_as_the_local_fit_above_lightgbm_s_bin_sample(tmp_path: Path) -> None:
    """Above 200,000 rows LightGBM finds the bins on a sample its seed draws: a worker's reference
    Dataset must draw the local fit's (another seed gives other bins, the check's own control)."""
    import lightgbm as lgb

    from recsys.ranking.distributed import Worker

    features = np.random.default_rng(0).standard_normal((250_000, 2)).astype(np.float32)
    rows = np.arange(len(features)) % 10 != 0
    names = ["a", "b"]
    ranker = LambdaRanker(RankerConfig(seed=3))
    local = lgb.Dataset(features[rows], feature_name=names, params=ranker._params(31, 0.05, seed=3))
    worker = Worker({"num_machines": 2}, rank=1, world=2)

    def saved(dataset: lgb.Dataset, name: str) -> bytes:
        dataset.construct().save_binary(tmp_path / name)
        return (tmp_path / name).read_bytes()

    min_leaf = ranker.config.min_data_in_leaf
    assert saved(worker.bins(features, rows, names, min_data_in_leaf=min_leaf, seed=3), "worker") == saved(
        local, "local"
    )
    other = worker.bins(features, rows, names, min_data_in_leaf=min_leaf, seed=4)
    assert saved(other, "other") != saved(local, "again")
