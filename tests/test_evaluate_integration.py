"""End to end: the Amazon adapter and the evaluation protocol on the shared data; the CLI's JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from evaluate_helpers import write_small_dataset
from typer.testing import CliRunner

from recsys.candidates.als import ALS, ALSConfig
from recsys.candidates.popularity import Popularity, PopularityConfig
from recsys.cli import app
from recsys.data.loading import convert, load_dataset
from recsys.data.splits import leave_last_out
from recsys.evaluation.protocol import tune_and_test


@pytest.mark.slow
def test_als_beats_popularity_on_amazon(amazon_dir: Path, tmp_path: Path) -> None:
    items, interactions = convert("amazon", amazon_dir, tmp_path / "amazon")
    dataset = load_dataset(items, interactions)
    assert dataset.summary() == {"users": 8317, "items": 4344, "interactions": 58492}
    split = leave_last_out(dataset.to_interactions())
    assert len(split.test.users) == 8317  # every user has at least 5 events

    popularity = tune_and_test(Popularity, [PopularityConfig()], split, ks=[10])
    # The peers' popularity on this exact copy and split: R@10 0.0261, N@10 0.0172.
    assert popularity.metrics["recall@10"] == pytest.approx(0.0261, abs=5e-4)
    assert popularity.metrics["ndcg@10"] == pytest.approx(0.0172, abs=5e-4)

    config = ALSConfig(factors=64, regularization=0.01, alpha=40.0, iterations=10, num_threads=2)
    als = tune_and_test(ALS, [config], split, ks=[10])
    assert als.metrics["ndcg@10"] > popularity.metrics["ndcg@10"]
    assert als.metrics["ndcg@10"] > 0.05, als.metrics  # measured about 0.07: far below means broken
    recommended = als.recommended
    history = split.test.train.histories(split.test.users).to_csr(dataset.n_items)
    rows = np.repeat(np.arange(len(recommended)), recommended.shape[1])
    flat = recommended.ravel()
    assert not np.asarray(history[rows[flat >= 0], flat[flat >= 0]]).any(), "a history item was recommended"


# --- the CLI on a small synthetic dataset ---------------------------------------------------------


@pytest.mark.parametrize("protocol", ["leave-last-out", "temporal"])
def test_cli_writes_the_stable_json_shape(tmp_path: Path, protocol: str) -> None:
    item_path, event_path = write_small_dataset(tmp_path / "data")
    out = tmp_path / "out" / "eval.json"
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32))
    result = CliRunner().invoke(
        app,
        [
            "evaluate", "--items", str(item_path), "--interactions", str(event_path),
            "--protocol", protocol, "--k", "5,10", "--models", "popularity,itemknn,als",
            "--json", str(out), "--threads", "1", "--item-embeddings", str(emb),
            "--paired-against", "popularity", "--per-user", str(tmp_path / "out" / "users.parquet"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())

    # per-user lists: one row per (model, test user), and their means are the reported metrics
    users = pl.read_parquet(tmp_path / "out" / "users.parquet")
    assert users.get_column("model").unique(maintain_order=True).to_list() == ["popularity", "itemknn", "als"]
    assert users.height == 3 * report["split"]["test_users"]
    for name in ("popularity", "itemknn", "als"):
        mine = users.filter(pl.col("model") == name)
        assert mine.get_column("user_id").n_unique() == mine.height
        assert mine.get_column("ndcg@10").mean() == pytest.approx(report["models"][name]["ndcg@10"])
    # paired differences against the reference: the mean difference is the difference of the means
    assert report["paired"]["reference"] == "popularity"
    assert set(report["paired"]["models"]) == {"itemknn", "als"}
    for name, by_metric in report["paired"]["models"].items():
        d = by_metric["ndcg@5"]
        means = report["models"]
        assert d["mean_diff"] == pytest.approx(means[name]["ndcg@5"] - means["popularity"]["ndcg@5"])
        assert d["ci_low"] <= d["mean_diff"] <= d["ci_high"]
        assert d["wins"] + d["losses"] + d["ties"] == d["users"] == report["split"]["test_users"]
    assert "paired per-user differences against popularity" in result.output
    assert report["protocol"] == protocol
    assert report["dataset"] == {"users": 80, "items": 30, "interactions": report["dataset"]["interactions"]}
    assert list(report["models"]) == ["popularity", "itemknn", "als"]
    for name, metrics in report["models"].items():
        expected = {
            f"{m}@{k}"
            for m in ("recall", "ndcg", "hitrate", "mrr", "map", "precision", "coverage", "novelty", "ild")
            for k in (5, 10)
        }
        assert set(metrics) == expected, name
        assert all(isinstance(v, float) for v in metrics.values()), name  # flat numbers only
    assert set(report["details"]) == set(report["models"])
    assert report["details"]["als"]["params"]["factors"] in (64, 128)
    assert len(report["details"]["als"]["validation"]) == 8
    if protocol == "temporal":  # clock time: popularity tries half-lives
        assert len(report["details"]["popularity"]["validation"]) == 4
    # two disjoint communities: the personalised models must beat popularity
    assert report["models"]["itemknn"]["ndcg@10"] > report["models"]["popularity"]["ndcg@10"]
    assert "itemknn" in result.output and "recall" in result.output


def test_cli_errors_exit_2_and_write_nothing(tmp_path: Path) -> None:
    item_path, event_path = write_small_dataset(tmp_path / "data")
    out = tmp_path / "eval.json"
    runner = CliRunner()
    base = ["evaluate", "--items", str(item_path), "--interactions", str(event_path), "--json", str(out)]

    unknown = runner.invoke(app, [*base, "--models", "popularity,nope"])
    assert unknown.exit_code == 2 and "unknown model 'nope'" in unknown.output
    bad_k = runner.invoke(app, [*base, "--k", "10,x"])
    assert bad_k.exit_code == 2 and "--k" in bad_k.output
    unpaired = runner.invoke(app, [*base, "--models", "popularity", "--paired-against", "als"])
    assert unpaired.exit_code == 2 and "--paired-against 'als'" in unpaired.output
    bad_protocol = runner.invoke(app, [*base, "--protocol", "random"])
    assert bad_protocol.exit_code == 2 and "protocol" in bad_protocol.output
    missing = runner.invoke(
        app, ["evaluate", "--items", str(tmp_path / "nope.parquet"), "--interactions", str(event_path)]
    )
    assert missing.exit_code == 2 and "nope.parquet" in missing.output
    bad_rows = tmp_path / "bad.csv"
    bad_rows.write_text("user_id,item_id,timestamp\nu1,i1,not-a-time\n")
    invalid = runner.invoke(app, ["evaluate", "--items", str(item_path), "--interactions", str(bad_rows)])
    assert invalid.exit_code == 2 and "timestamp" in invalid.output
    assert not out.exists()


@pytest.mark.parametrize("model", ["pipeline", "pipeline-notext"])
def test_the_run_seed_reaches_every_seeded_part_of_the_pipeline(tmp_path: Path, model: str) -> None:
    from recsys.experiments.models import MODELS, EvalContext

    dataset = load_dataset(*write_small_dataset(tmp_path / "data"))
    (config,) = MODELS[model].grid(EvalContext(dataset=dataset, seed=7))
    c = config.candidates
    assert (c.als.seed, c.sequential.seed, config.ranker.seed) == (7, 7, 7)
    assert c.sequential.use_text == config.text_features == ("text" in c.sources) == (model == "pipeline")
    (default,) = MODELS[model].grid(EvalContext(dataset=dataset))
    assert (default.candidates.als.seed, default.candidates.sequential.seed, default.ranker.seed) == (0, 0, 0)


def test_cli_repeats_report_the_mean_over_seeds_and_each_seed(tmp_path: Path) -> None:
    item_path, event_path = write_small_dataset(tmp_path / "data")
    base = [
        "evaluate", "--items", str(item_path), "--interactions", str(event_path), "--k", "5,10",
        "--models", "popularity,als", "--threads", "1",
    ]  # fmt: skip
    runner = CliRunner()
    out, users_path = tmp_path / "eval.json", tmp_path / "users.parquet"
    result = runner.invoke(
        app,
        [*base, "--seed", "3", "--repeats", "2", "--json", str(out), "--per-user", str(users_path),
         "--paired-against", "popularity"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["repeats"]["seeds"] == [3, 4] and report["seed"] == 3
    for name in ("popularity", "als"):
        runs = report["repeats"]["models"][name]
        assert len(runs) == 2 and all("fit_seconds" in run and "params" in run for run in runs)
        for key in ("ndcg@10", "recall@5"):
            assert report["models"][name][key] == pytest.approx(
                np.mean([run["metrics"][key] for run in runs])
            )
    # each user's metrics are averaged over the seeds: their mean is the reported mean
    users = pl.read_parquet(users_path)
    assert users.height == 2 * report["split"]["test_users"]
    als = users.filter(pl.col("model") == "als")
    assert als.get_column("ndcg@10").mean() == pytest.approx(report["models"]["als"]["ndcg@10"])
    diff = report["paired"]["models"]["als"]["ndcg@5"]["mean_diff"]
    assert diff == pytest.approx(report["models"]["als"]["ndcg@5"] - report["models"]["popularity"]["ndcg@5"])
    assert "seed 4" in result.output

    # the second repeat is exactly the single run with that seed
    single = tmp_path / "single.json"
    assert runner.invoke(app, [*base, "--seed", "4", "--json", str(single)]).exit_code == 0
    assert json.loads(single.read_text())["models"]["als"] == report["repeats"]["models"]["als"][1]["metrics"]
    assert "repeats" not in json.loads(single.read_text())

    bad = runner.invoke(app, [*base, "--repeats", "0"])
    assert bad.exit_code == 2 and "--repeats must be >= 1" in bad.output


def test_cli_windows_pool_user_period_pairs_over_consecutive_test_periods(tmp_path: Path) -> None:
    item_path, event_path = write_small_dataset(tmp_path / "data", n_users=160)
    base = [
        "evaluate", "--items", str(item_path), "--interactions", str(event_path), "--protocol", "temporal",
        "--k", "5,10", "--models", "popularity,itemknn", "--threads", "1",
    ]  # fmt: skip
    runner = CliRunner()
    out, users_path = tmp_path / "eval.json", tmp_path / "users.parquet"
    result = runner.invoke(
        app,
        [*base, "--windows", "3", "--json", str(out), "--per-user", str(users_path),
         "--paired-against", "popularity"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    periods = report["split"]["windows"]
    assert len(periods) == 3 and report["split"]["test_users"] == sum(p["test_users"] for p in periods)
    assert [p["train_interactions"] for p in periods] == sorted(p["train_interactions"] for p in periods)
    for name in ("popularity", "itemknn"):
        by_period = report["details"][name]["windows"]
        assert [w["test_users"] for w in by_period] == [p["test_users"] for p in periods]
        weights = [w["test_users"] for w in by_period]
        for key in ("ndcg@10", "recall@5", "coverage@10"):
            assert report["models"][name][key] == pytest.approx(
                np.average([w["metrics"][key] for w in by_period], weights=weights)
            )
    # one row per (model, user, period); a user may be evaluated in several periods
    users = pl.read_parquet(users_path)
    assert users.height == 2 * report["split"]["test_users"]
    itemknn = users.filter(pl.col("model") == "itemknn")
    assert itemknn.select("user_id", "window").n_unique() == itemknn.height
    assert itemknn.group_by("window").len().sort("window").get_column("len").to_list() == [
        p["test_users"] for p in periods
    ]
    assert itemknn.get_column("ndcg@10").mean() == pytest.approx(report["models"]["itemknn"]["ndcg@10"])
    paired = report["paired"]["models"]["itemknn"]["ndcg@5"]
    assert paired["users"] == report["split"]["test_users"]
    assert paired["clusters"] == itemknn.get_column("user_id").n_unique()
    assert "period 2" in result.output
    assert f"{paired['clusters']} ({paired['users']} pairs)" in result.output  # users, then pairs

    # the last period is the ordinary temporal run
    single = tmp_path / "single.json"
    assert runner.invoke(app, [*base, "--json", str(single)]).exit_code == 0
    assert (
        json.loads(single.read_text())["models"]["itemknn"]
        == report["details"]["itemknn"]["windows"][-1]["metrics"]
    )

    for options, message in (
        (["--windows", "0"], "--windows must be >= 1"),
        (["--windows", "2", "--protocol", "leave-last-out"], "needs --protocol temporal"),
        (["--windows", "9"], "must be < 1"),
    ):
        bad = runner.invoke(app, [*base, *options, "--json", str(tmp_path / "bad.json")])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    assert not (tmp_path / "bad.json").exists()
