"""``recsys.experiments.evaluate``: the library run is the CLI's run, and the CLI's options parse to it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from evaluate_helpers import write_small_dataset
from typer.testing import CliRunner

from recsys.candidates.itemknn import ItemKNN, ItemKNNConfig
from recsys.candidates.popularity import Popularity, PopularityConfig
from recsys.cli import app
from recsys.data.dataset import Interactions
from recsys.data.loading import load_dataset
from recsys.data.splits import leave_last_out
from recsys.evaluation.protocol import tune_and_test
from recsys.experiments.evaluate import EvaluationError, EvaluationOptions, SplitProtocol, evaluate
from recsys.experiments.models import MODELS


def _without_timings(value: Any) -> Any:
    """The report minus wall-clock seconds, the only part of it that differs between two runs."""
    if isinstance(value, dict):
        return {key: _without_timings(v) for key, v in value.items() if not key.endswith("_seconds")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("options", "arguments"),
    [
        (
            ["--k", "10,5", "--models", "popularity,itemknn,als", "--paired-against", "popularity"],
            {"ks": [10, 5], "models": ["popularity", "itemknn", "als"], "paired_against": "popularity"},
        ),
        (
            ["--protocol", "temporal", "--windows", "2", "--repeats", "2", "--seed", "3", "--k", "5",
             "--models", "popularity", "--models", "itemknn", "--paired-against", "itemknn"],
            {"protocol": SplitProtocol.TEMPORAL, "windows": 2, "repeats": 2, "seed": 3, "ks": [5],
             "models": ["popularity", "itemknn"], "paired_against": "itemknn"},
        ),
    ],
)  # fmt: skip
def test_the_library_report_is_what_the_cli_writes(
    tmp_path: Path, options: list[str], arguments: dict[str, Any]
) -> None:
    item_path, event_path = write_small_dataset(tmp_path / "data", n_users=120)
    out, users = tmp_path / "eval.json", tmp_path / "users.parquet"
    result = CliRunner().invoke(
        app,
        ["evaluate", "--items", str(item_path), "--interactions", str(event_path), "--threads", "1",
         "--json", str(out), "--per-user", str(users), *options],
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    report = evaluate(load_dataset(item_path, event_path), EvaluationOptions(threads=1, **arguments))
    written, direct = out.read_text(), report.to_json()
    assert _without_timings(json.loads(direct)) == _without_timings(json.loads(written))
    # the same text, line by line, but for the seconds: key order, indentation, number formatting
    assert [line for line in direct.splitlines() if "_seconds" not in line] == [
        line for line in written.splitlines() if "_seconds" not in line
    ]
    assert report.per_user.equals(pl.read_parquet(users))
    assert ("repeats" in json.loads(written)) == (arguments.get("repeats", 1) > 1)


def test_comma_and_repeated_options_are_the_same_run(tmp_path: Path) -> None:
    item_path, event_path = write_small_dataset(tmp_path / "data")
    runner = CliRunner()
    base = ["evaluate", "--items", str(item_path), "--interactions", str(event_path), "--threads", "1"]
    reports = []
    for options in (
        ["--k", "5,10", "--models", "popularity,itemknn"],
        ["--k", "10", "--k", "5", "--models", "popularity", "--models", "itemknn,popularity"],
    ):
        out = tmp_path / f"{len(reports)}.json"
        result = runner.invoke(app, [*base, *options, "--json", str(out)])
        assert result.exit_code == 0, result.output
        reports.append(_without_timings(json.loads(out.read_text())))
    assert reports[0] == reports[1]
    assert reports[0]["k"] == [5, 10] and list(reports[0]["models"]) == ["popularity", "itemknn"]


KNOWN = ", ".join(sorted(MODELS))  # the allowed model names, as the error lists them


@pytest.mark.parametrize(
    ("options", "option", "message"),
    [
        (["--models", "popularity,nope"], "--models", f"unknown model 'nope' (known: {KNOWN})"),
        (["--models", ","], "--models", f"(known: {KNOWN})"),
        (["--k", "10,x"], "--k", "'10,x': allowed are positive integers, comma-separated (e.g. 10,50)"),
        (["--k", "0,10"], "--k", "'0,10': allowed are positive integers"),
        (["--protocol", "random"], "--protocol", "'random' is not one of 'leave-last-out', 'temporal'"),
    ],
)
def test_a_bad_option_is_one_line_naming_the_option_and_the_allowed_values(
    tmp_path: Path, options: list[str], option: str, message: str
) -> None:
    item_path, event_path = write_small_dataset(tmp_path / "data")
    out = tmp_path / "eval.json"
    base = ["evaluate", "--items", str(item_path), "--interactions", str(event_path), "--json", str(out)]
    # a wide terminal: whether the line wraps is then the terminal's business, not the message's
    result = CliRunner().invoke(app, [*base, *options], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    (line,) = [line for line in result.output.splitlines() if f"Invalid value for '{option}'" in line]
    assert message in line, result.output
    assert not out.exists()


def test_the_library_refuses_options_that_cannot_work_before_any_fit(tmp_path: Path) -> None:
    dataset = load_dataset(*write_small_dataset(tmp_path / "data"))
    for options, message in (
        (EvaluationOptions(models=["nope"]), "unknown model 'nope'"),
        (
            EvaluationOptions(models=["als"], paired_against="pop"),
            "paired_against 'pop' is not one of models",
        ),
        (EvaluationOptions(models=["als"], windows=2), "windows 2 needs protocol temporal"),
        (EvaluationOptions(models=["als"], ks=[0, 10]), "ks must be positive integers"),
        (
            EvaluationOptions(models=["als"], protocol=SplitProtocol.TEMPORAL, test_fraction=1.5),
            "test_fraction",
        ),
    ):
        with pytest.raises(EvaluationError, match=re.escape(message)):
            evaluate(dataset, options)
    with pytest.raises(EvaluationError, match=re.escape("are not (n_items=30, dim)")):
        evaluate(dataset, EvaluationOptions(models=["als"]), item_embeddings=np.zeros((3, 2)))


# --- what the report shows: the analysis sections of the JSON ------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {"ks": [5, 10]},
        {"ks": [5], "protocol": SplitProtocol.TEMPORAL, "windows": 2, "repeats": 2},
    ],
)  # fmt: skip
def test_the_json_holds_every_section_the_report_shows(tmp_path: Path, arguments: dict[str, Any]) -> None:
    item_path, event_path = write_small_dataset(tmp_path / "data", n_users=120)
    items = pl.read_parquet(item_path)
    items.with_columns(
        category=pl.Series([f"c{i % 3}" if i % 7 else None for i in range(items.height)])
    ).write_parquet(item_path)
    dataset = load_dataset(item_path, event_path)
    embeddings = np.random.default_rng(0).normal(size=(dataset.n_items, 4))
    names = ["popularity", "itemknn", "als"]
    report = json.loads(
        evaluate(
            dataset, EvaluationOptions(models=names, threads=1, **arguments), item_embeddings=embeddings
        ).to_json()
    )
    ks, rows, targets = report["k"], report["split"]["test_users"], report["split"]["test_targets"]

    intervals = report["intervals"]
    assert intervals["rows"] == rows and (intervals["clusters"] < rows) == ("windows" in arguments)
    for name in names:
        assert set(intervals["models"][name]) == {
            f"{m}@{k}"
            for m in ("recall", "ndcg", "hitrate", "mrr", "map", "precision", "novelty", "ild")
            for k in ks
        }
        for metric, value in intervals["models"][name].items():
            # (a constant column's interval is the mean, up to the rounding of its sums)
            assert value["ci_low"] - 1e-12 <= value["mean"] <= value["ci_high"] + 1e-12, (name, metric)
            if metric.startswith(
                ("recall", "ndcg", "ild")
            ):  # the table's figure (novelty pools periods apart)
                assert value["mean"] == pytest.approx(report["models"][name][metric]), (name, metric)

    pairwise = report["pairwise"]
    assert pairwise["models"] == names and set(pairwise["metrics"]) == {
        f"{m}@{k}" for m in ("ndcg", "recall") for k in ks
    }
    for metric, tests in pairwise["metrics"].items():
        assert [(t["a"], t["b"]) for t in tests] == [
            ("popularity", "itemknn"),
            ("popularity", "als"),
            ("itemknn", "als"),
        ]
        for t in tests:
            assert t["p_value"] <= t["p_holm"] <= 1
            assert t["wins"] + t["losses"] + t["ties"] == t["users"] == rows
            a, b = report["models"][t["a"]], report["models"][t["b"]]
            assert t["mean_diff"] == pytest.approx(a[metric] - b[metric])
    slice_families = report["slices"]
    assert set(slice_families) == {"activity", "popularity", "cold", "category"}
    assert sum(s["users"] for s in slice_families["activity"]["slices"]) == rows
    for family in ("activity", "popularity", "cold", "category"):
        assert sum(s["targets"] for s in slice_families[family]["slices"]) == targets, family
    category = [s["name"] for s in slice_families["category"]["slices"]]  # largest first, other last
    assert sorted(category[:3]) == ["c0", "c1", "c2"] and category[3] == "other"

    beyond = report["beyond_accuracy"]["models"]
    for name in names:
        for k in ks:
            assert 0 <= beyond[name][f"gini@{k}"] < 1 and beyond[name][f"popularity_lift@{k}"] > 0
            assert beyond[name][f"coverage@{k}"] == report["models"][name][f"coverage@{k}"]

    curves = report["curves"]
    assert curves["k"] == list(range(1, 101))
    for name in names:
        recall, ndcg = curves["models"][name]["recall"], curves["models"][name]["ndcg"]
        assert (np.diff(recall) >= -1e-12).all()  # recall@k never falls as k grows
        for k in ks:
            assert recall[k - 1] == pytest.approx(report["models"][name][f"recall@{k}"])
            assert ndcg[k - 1] == pytest.approx(report["models"][name][f"ndcg@{k}"])

    bias = report["popularity_bias"]
    for profile in [bias["history"], *bias["models"].values()]:
        assert sum(profile["histogram"]) == pytest.approx(1.0) and profile["quantiles"] == sorted(
            profile["quantiles"]
        )
    assert bias["k"] == ks[0] and bias["models"]["popularity"]["count"] == rows * ks[0]  # full lists

    titles = dict(zip(items.get_column("item_id"), items.get_column("title"), strict=True))
    assert len(report["samples"]) == 8
    for sample in report["samples"]:
        assert 1 <= len(sample["history"]) <= 5 and sample["targets"]
        for listed in [sample["history"], sample["targets"], *sample["models"].values()]:
            assert all(item["title"] == titles[item["item_id"]] for item in listed)
        assert len(sample["models"]["popularity"]) == 10 and all(
            len(top) <= 10 for top in sample["models"].values()
        )
        held_out = {item["item_id"] for item in sample["targets"]}
        assert all(
            item["hit"] == (item["item_id"] in held_out) for top in sample["models"].values() for item in top
        )
    assert report["pipeline_diagnostics"] == {}


@pytest.mark.parametrize(
    ("build", "config"),
    [(Popularity, PopularityConfig()), (ItemKNN, ItemKNNConfig(neighbours=50, num_threads=1))],
)
def test_deeper_lists_leave_the_metrics_as_they_were(build: Any, config: Any) -> None:
    # sparse random events: scores tie everywhere; top_k's defined tie order (ties in item order, as a
    # full stable sort) makes a 100-deep ranking begin with the 10-deep one, and the metrics see the
    # 10-deep lists either way
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1000), 6)
    data = Interactions.from_arrays(users, rng.integers(0, 1000, len(users)), n_users=1000, n_items=1000)
    split = leave_last_out(data)
    histories = split.test.train.histories(split.test.users)
    fitted = build(config).fit(split.test.train)
    naive = fitted.recommend(histories, 100)[0][:, :10]
    assert (naive == fitted.recommend(histories, 10)[0]).all()

    shallow = tune_and_test(build, [config], split, ks=[3, 10])
    deep = tune_and_test(build, [config], split, ks=[3, 10], depth=100)
    assert deep.recommended.shape == (len(split.test.users), 100)
    assert (deep.recommended[:, :10] == shallow.recommended).all()
    assert deep.metrics == shallow.metrics
    assert (deep.recommended[:, 10:] >= 0).any()  # extended, without repeats
    assert all(len(set(row[row >= 0])) == (row >= 0).sum() for row in deep.recommended)


def test_the_pipeline_reports_candidate_recall_and_feature_importance() -> None:
    from candidate_contract import N_ITEMS, TINY_SEQUENTIAL, community_data, community_embeddings

    from recsys.candidates.als import ALSConfig
    from recsys.pipeline.two_stage import CandidatesConfig, TwoStage, TwoStageConfig
    from recsys.ranking.ranker import RankerConfig

    config = TwoStageConfig(
        candidates=CandidatesConfig(
            per_source=5,
            total=N_ITEMS,
            als=ALSConfig(factors=2, iterations=5, regularization=0.05, alpha=5.0, num_threads=1),
            sequential=TINY_SEQUENTIAL,
        ),
        ranker=RankerConfig(search=((7, 0.1),), max_rounds=20, min_data_in_leaf=5, bags=1, num_threads=1),
    )
    items = pl.DataFrame(
        {"item_id": [f"i{i}" for i in range(N_ITEMS)], "title": [f"t{i}" for i in range(N_ITEMS)]}
    )
    result = tune_and_test(
        lambda c: TwoStage(c, items=items, item_embeddings=community_embeddings()),
        [config],
        leave_last_out(community_data()),
        ks=[5],
        diagnose=MODELS["pipeline"].diagnose,
    )
    found = result.diagnostics
    recall = found["candidate_recall"]
    assert set(recall) == {*config.candidates.sources, "blended"}
    assert all(0 <= value <= 1 for value in recall.values())
    # the blend keeps every candidate here (total = the catalogue): it finds what any source finds
    assert recall["blended"] >= max(v for k, v in recall.items() if k != "blended") > 0
    assert recall["blended"] >= result.metrics["recall@5"]  # the ranker only reorders candidates
    assert list(found["feature_importance"]) and found["importance_type"] == "gain"
    assert sorted(found["feature_importance"].values(), reverse=True) == list(
        found["feature_importance"].values()
    )
    assert "inner_candidate_recall" in found["fit_report"]
