"""``recsys.experiments.explore`` and ``tables``: what the notebooks call, on data with a known answer.

A hand-made dataset of four users fixes every history, target and popularity, so each helper's
result can be written down; a small two-community dataset fits the quick pipeline for the
``Recommender`` helpers and for ``EvaluationOptions.pipeline``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from evaluate_helpers import write_small_dataset

from recsys.data import schema as S
from recsys.data.dataset import Dataset
from recsys.data.loading import load_dataset
from recsys.data.splits import leave_last_out
from recsys.experiments import explore as X
from recsys.experiments import tables as T
from recsys.experiments.evaluate import EvaluationOptions, evaluate
from recsys.pipeline.recommender import Recommender
from recsys.pipeline.two_stage import TwoStage


def _tiny() -> Dataset:
    """Items a..f (a, b action; c, d drama; e comedy; f none); users u1..u4, events in time order
    (u4 has two events: training only, under leave-last-out)."""
    items = pl.DataFrame(
        {
            S.ITEM_ID: list("abcdef"),
            S.TITLE: [f"title {c}" for c in "abcdef"],
            S.CATEGORY: ["action", "action", "drama", "drama", "comedy", None],
        }
    )
    events = [
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "d", 4),
        ("u2", "a", 1), ("u2", "c", 2), ("u2", "e", 3),
        ("u3", "a", 1), ("u3", "b", 2), ("u3", "a", 3),
        ("u4", "f", 1), ("u4", "a", 2),
    ]  # fmt: skip
    frame = pl.DataFrame(events, schema=[S.USER_ID, S.ITEM_ID, S.TIMESTAMP], orient="row")
    return Dataset.from_tables(items, frame)


# --- samples and histories ---------------------------------------------------------------------------
def test_sample_users_keeps_whole_users_and_only_their_items() -> None:
    data = _tiny()
    small = X.sample_users(data, users=2, seed=3)
    assert small.n_users == 2
    kept = set(small.user_ids.to_list())
    expected = data.interactions.filter(pl.col(S.USER_ID).is_in(list(kept)))
    assert small.interactions.select(S.USER_ID, S.ITEM_ID, S.TIMESTAMP).equals(
        expected.select(S.USER_ID, S.ITEM_ID, S.TIMESTAMP)
    )
    touched = set(expected.get_column(S.ITEM_ID).to_list())
    assert small.items.get_column(S.ITEM_ID).to_list() == [i for i in "abcdef" if i in touched]
    again = X.sample_users(data, users=2, seed=3)
    assert again.user_ids.to_list() == small.user_ids.to_list()  # seeded
    seeds = {tuple(sorted(X.sample_users(data, users=2, seed=s).user_ids.to_list())) for s in range(8)}
    assert len(seeds) > 1, "the seed chooses the users"


def test_sample_users_all_or_none() -> None:
    data = _tiny()
    assert X.sample_users(data, users=None) is data
    assert X.sample_users(data, users=4) is data and X.sample_users(data, users=10) is data
    with pytest.raises(ValueError, match="users must be >= 1"):
        X.sample_users(data, users=0)


def test_user_history_and_targets_follow_the_split() -> None:
    data = _tiny()
    everything = X.user_history(data, "u1")
    assert everything.get_column(S.ITEM_ID).to_list() == list("abcd")
    assert everything.get_column(S.TITLE).to_list() == [f"title {c}" for c in "abcd"]
    assert everything.columns == [S.ITEM_ID, S.TITLE, S.CATEGORY, S.TIMESTAMP]
    split = leave_last_out(data.to_interactions())
    assert X.user_history(data, "u1", train=split.test.train).get_column(S.ITEM_ID).to_list() == list("abc")
    assert X.user_targets(data, split.test, "u1").get_column(S.ITEM_ID).to_list() == ["d"]
    assert X.user_targets(data, split.test, "u3").get_column(S.ITEM_ID).to_list() == ["a"]
    with pytest.raises(KeyError, match="not a test user"):
        X.user_targets(data, split.test, "u4")  # two events: training only
    with pytest.raises(KeyError, match="unknown user"):
        X.user_history(data, "nobody")


def test_history_profiles_by_hand() -> None:
    data = _tiny()
    split = leave_last_out(data.to_interactions())
    # test users u1, u2, u3; training: u1 a b c, u2 a c, u3 a b, u4 f a
    # training counts: a 4, b 2, c 2, f 1, d 0, e 0 (total 9): head = a (crosses 20%),
    # torso = b (before: 4/9 = 0.44 < 0.5), tail = c (before 6/9), f, and the never-seen d, e
    profiles = X.history_profiles(data, split.test)
    assert profiles.get_column(S.USER_ID).to_list() == ["u1", "u2", "u3"]
    assert profiles.get_column("history_length").to_list() == [3, 2, 2]
    assert profiles.get_column("mean_popularity").to_list() == pytest.approx([8 / 3, 3.0, 3.0])
    shares = profiles.select("head", "torso", "tail").rows()
    assert shares == [pytest.approx((1 / 3, 1 / 3, 1 / 3)), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0)]
    assert profiles.get_column("categories").to_list() == [2, 2, 1]
    # u2 has one action and one drama: the tie goes to the first name alphabetically
    assert profiles.get_column("top_category").to_list() == ["action", "action", "action"]
    assert profiles.get_column("top_category_share").to_list() == pytest.approx([2 / 3, 0.5, 1.0])


def test_history_profiles_without_categories() -> None:
    data = _tiny()
    plain = Dataset.from_tables(data.items.drop(S.CATEGORY), data.interactions.drop(S.USER_IDX, S.ITEM_IDX))
    profiles = X.history_profiles(plain, leave_last_out(plain.to_interactions()).test)
    assert "top_category" not in profiles.columns and profiles.height == 3


# --- head to head ------------------------------------------------------------------------------------
def _per_user(**models: list[float]) -> pl.DataFrame:
    users = [f"u{j}" for j in range(len(next(iter(models.values()))))]
    return pl.concat(
        [
            pl.DataFrame({"model": name, S.USER_ID: users, "ndcg@10": values})
            for name, values in models.items()
        ]
    )


def test_head_to_head_finds_the_planted_losses() -> None:
    per_user = _per_user(pipe=[0.0, 0.5, 1.0, 0.2, 0.0], ref=[1.0, 0.5, 0.0, 0.6, 0.0], other=[9.0] * 5)
    duel = X.head_to_head(per_user, model="pipe", reference="ref", metric="ndcg@10")
    assert duel.columns == [S.USER_ID, "pipe", "ref", "difference", "outcome"]
    assert duel.get_column(S.USER_ID).to_list() == ["u0", "u3", "u1", "u4", "u2"]  # largest loss first
    assert duel.get_column("outcome").to_list() == ["loss", "loss", "tie", "tie", "win"]
    assert duel.get_column("difference").to_list() == pytest.approx([-1.0, -0.4, 0.0, 0.0, 1.0])


def test_head_to_head_pairs_users_and_periods() -> None:
    per_user = pl.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            S.USER_ID: ["u", "u", "u", "u"],
            "window": [0, 1, 1, 0],
            "ndcg@10": [0.1, 0.9, 0.2, 0.4],
        }
    )
    duel = X.head_to_head(per_user, model="a", reference="b", metric="ndcg@10")
    assert duel.select("window", "difference").rows() == [(0, pytest.approx(-0.3)), (1, pytest.approx(0.7))]


def test_head_to_head_refuses_what_it_cannot_pair() -> None:
    per_user = _per_user(a=[0.1], b=[0.2])
    for model, reference in (("a", "a"), ("a", "missing")):
        with pytest.raises(ValueError, match="two different evaluated models"):
            X.head_to_head(per_user, model=model, reference=reference, metric="ndcg@10")
    with pytest.raises(ValueError, match="no per-user 'mrr@5'"):
        X.head_to_head(per_user, model="a", reference="b", metric="mrr@5")


def test_best_model_and_outcome_profiles() -> None:
    models = {"a": {"ndcg@10": 0.2}, "b": {"ndcg@10": 0.1}, "pipe": {"ndcg@10": 0.9}}
    assert X.best_model(models, metric="ndcg@10", among=["a", "b"]) == "a"
    with pytest.raises(ValueError, match="not evaluated"):
        X.best_model(models, metric="ndcg@10", among=["a", "c"])

    data = _tiny()
    profiles = X.history_profiles(data, leave_last_out(data.to_interactions()).test)
    per_user = pl.concat(
        [
            pl.DataFrame({"model": "pipe", S.USER_ID: ["u1", "u2", "u3"], "ndcg@10": [0.0, 1.0, 0.0]}),
            pl.DataFrame({"model": "a", S.USER_ID: ["u1", "u2", "u3"], "ndcg@10": [1.0, 0.0, 1.0]}),
        ]
    )
    duel = X.head_to_head(per_user, model="pipe", reference="a", metric="ndcg@10")
    summary = X.outcome_profiles(duel, profiles)
    assert summary.get_column("outcome").to_list() == ["loss", "win"]  # no tie here
    assert summary.get_column("users").to_list() == [2, 1]
    assert summary.get_column("median_history_length").to_list() == [2.5, 2.0]  # u1 3, u3 2 | u2 2
    assert summary.get_column("head").to_list() == pytest.approx([(1 / 3 + 0.5) / 2, 0.5])


# --- a fitted recommender ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def community(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Recommender]:
    dataset = load_dataset(*write_small_dataset(tmp_path_factory.mktemp("data"), n_users=120))
    model = TwoStage(X.quick_config(), items=dataset.items).fit(dataset.to_interactions())
    return dataset, Recommender(model, {})


def test_placements_rank_what_the_recommender_ranks(community: tuple[Dataset, Recommender]) -> None:
    dataset, recommender = community
    history = X.user_history(dataset, "u0").get_column(S.ITEM_ID).to_list()
    ranked = recommender.recommend(history, n=10)
    asked = [ranked[2].item_id, history[0], ranked[0].item_id]
    found = X.placements(recommender, history, asked, depth=10)
    assert found.columns == [S.ITEM_ID, S.TITLE, "rank", "sources"]
    assert found.get_column(S.ITEM_ID).to_list() == asked
    assert found.get_column("rank").to_list() == [3, None, 1]  # a history item is never recommended
    sources = [", ".join(ranked[2].sources), None, ", ".join(ranked[0].sources)]
    assert found.get_column("sources").to_list() == sources
    title = dataset.items.filter(pl.col(S.ITEM_ID) == history[0]).get_column(S.TITLE).item()
    assert found.get_column(S.TITLE).to_list()[1] == title


def test_explanations_set_the_items_side_by_side(community: tuple[Dataset, Recommender]) -> None:
    dataset, recommender = community
    history = X.user_history(dataset, "u1").get_column(S.ITEM_ID).to_list()
    items = [r.item_id for r in recommender.recommend(history, n=3)][::2]
    table = X.explanations(recommender, history, items, top=4)
    assert table.columns == ["feature", *items]
    for item in items:
        own = dict(recommender.explain(history, item, top=4))
        shown = {f: v for f, v in zip(table["feature"], table[item], strict=True) if v is not None}
        assert shown == pytest.approx(own)
    largest = np.nanmax(np.abs(table.select(items).to_numpy()), axis=1)
    assert np.all(np.diff(largest) <= 0), "largest contribution first"


# --- EvaluationOptions.pipeline ----------------------------------------------------------------------
def test_a_given_pipeline_configuration_is_the_one_evaluated(tmp_path: Path) -> None:
    """Seeded as the built-in one is, and without text embeddings when it reads none: no ``ild@k``,
    which exists exactly when the run has item embeddings."""
    dataset = load_dataset(*write_small_dataset(tmp_path / "data", n_users=120))
    options = EvaluationOptions(models=["pipeline"], ks=[5], seed=3, threads=1, pipeline=X.quick_config())
    report = evaluate(dataset, options)
    params = report.details["pipeline"]["params"]
    assert list(params["candidates"]["sources"]) == ["als", "itemknn", "cooccurrence", "popularity"]
    assert (params["candidates"]["als"]["factors"], params["ranker"]["max_rounds"]) == (32, 100)
    assert (params["candidates"]["als"]["seed"], params["ranker"]["seed"]) == (3, 3)
    assert "ild@5" not in report.models["pipeline"]
    # two communities of 15 items: a list of 5 from a user's own community finds the target often;
    # at random, about 5 in the 23 unseen items (0.64 measured)
    assert report.models["pipeline"]["recall@5"] > 0.4

    results = json.loads(report.to_json())
    intervals = T.interval_table(results, metrics=["recall", "ndcg"])
    assert intervals.select("model", "metric").rows() == [("pipeline", "recall@5"), ("pipeline", "ndcg@5")]
    assert intervals.get_column("mean").to_list() == pytest.approx(
        [report.models["pipeline"]["recall@5"], report.models["pipeline"]["ndcg@5"]]
    )


# --- tables ------------------------------------------------------------------------------------------
def _report() -> dict[str, Any]:
    test = {"users": 9, "clusters": 9, "se": 0.01, "wins": 3, "losses": 1, "ties": 5}
    return {
        "k": [10, 50],
        "intervals": {"models": {"a": {"ndcg@10": {"mean": 0.2, "ci_low": 0.1, "ci_high": 0.3}}}},
        "pairwise": {
            "models": ["a", "b", "c"],
            "metrics": {
                "ndcg@10": [
                    {"a": "a", "b": "b", "mean_diff": 0.05, "ci_low": 0.0, "ci_high": 0.1, "p_value": 0.3,
                     "p_holm": 0.6, "significant": False, **test},
                    {"a": "a", "b": "c", "mean_diff": -0.2, "ci_low": -0.3, "ci_high": -0.1, "p_value": 0.001,
                     "p_holm": 0.003, "significant": True, **test},
                    {"a": "b", "b": "c", "mean_diff": 0.3, "ci_low": 0.2, "ci_high": 0.4, "p_value": 0.001,
                     "p_holm": 0.003, "significant": True, **test},
                ]
            },
        },
        "beyond_accuracy": {"models": {"a": {"coverage@10": 0.5, "gini@10": 0.7}, "b": {"coverage@10": 0.1,
                                                                                         "gini@10": 0.9}}},
        "samples": [{"models": {"a": [{"title": "X", "hit": True}, {"title": "Y", "hit": False}],
                                "b": [{"title": "Z", "hit": False}]}}],
    }  # fmt: skip


def test_tables_from_the_json() -> None:
    report = _report()
    assert T.interval_table(report).rows() == [("a", "ndcg@10", 0.2, 0.1, 0.3)]  # only what is there
    assert T.interval_table(report, k=50).height == 0
    pairs = T.pairwise_table(report, metric="ndcg")
    assert pairs.select("a", "b").rows() == [("b", "c"), ("a", "c"), ("a", "b")]  # significant, larger first
    assert pairs.columns == list(T.PAIR_COLUMNS)
    with pytest.raises(ValueError, match="no paired tests of recall@10"):
        T.pairwise_table(report, metric="recall")
    assert T.beyond_accuracy_table(report).rows() == [("a", 0.5, 0.7), ("b", 0.1, 0.9)]
    assert T.sample_table(report).rows() == [(1, "X [hit]", "Z"), (2, "Y", None)]
    with pytest.raises(ValueError, match="no 'intervals' section"):
        T.interval_table({"k": [10]})
