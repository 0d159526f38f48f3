"""``benchmarks.scaling``: its staged fit builds the model ``TwoStage.fit`` builds, its guards and
exponents do their arithmetic, and the quick mode runs end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import scaling
from benchmarks.scaling_stages import Guards, Point, run_point
from recsys.data.loading import load_dataset
from recsys.pipeline.defaults import pipeline_config_for
from recsys.pipeline.two_stage import TwoStage

ONE_BOOSTER = {"ranker": {"bags": 1, "max_rounds": 20}}


def test_the_staged_fit_is_the_pipeline_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "unused"))  # run_point sets its own; restored after
    point = Point(3_000, 300, standalone=(), model=ONE_BOOSTER)
    run_point(point, Guards(stage_budget_s=600, memory_limit_mb=8_000), tmp_path, tmp_path / "stages.json")
    record = json.loads((tmp_path / "stages.json").read_text())
    assert {s["status"] for s in record["stages"].values()} == {"measured"}
    assert record["facts"]["published"] and record["facts"]["bundle_mb"] > 0
    for stage in record["stages"].values():
        assert stage["seconds"] >= 0 and stage["peak_rss_mb"] >= stage["rss_start_mb"] > 0

    staged = TwoStage.load(tmp_path / "bundle" / "model")
    dataset = load_dataset(tmp_path / "data" / "items.parquet", tmp_path / "data" / "interactions.parquet")
    data = dataset.to_interactions()
    overrides = ONE_BOOSTER | {"candidates": {"sources": list(point.sources)}}
    config = pipeline_config_for(data, overrides=overrides)
    fitted = TwoStage(config, items=dataset.items, item_embeddings=staged.item_embeddings).fit(data)
    histories = data.histories(np.arange(data.n_users))
    ids, scores = staged.recommend(histories, 10)
    want_ids, want_scores = fitted.recommend(histories, 10)
    assert np.array_equal(ids, want_ids) and np.allclose(scores, want_scores, atol=1e-6)
    assert staged.feature_names_ == fitted.feature_names_


def test_a_stage_predicted_over_budget_is_skipped_with_what_needs_it(tmp_path: Path) -> None:
    point = Point(2_000, 200, sources=("popularity",), standalone=(), model=ONE_BOOSTER)
    # a generous budget: a stage over it ends the process (os._exit), here pytest's
    guards = Guards(stage_budget_s=600, memory_limit_mb=8_000, predicted={"ranker_rows": 601.0})
    run_point(point, guards, tmp_path, tmp_path / "stages.json")
    stages = json.loads((tmp_path / "stages.json").read_text())["stages"]
    assert stages["ranker_rows"] == {"status": "skipped-predicted", "predicted_s": 601.0}
    assert stages["ranker_train"]["status"] == "skipped-needs-ranker_rows"
    assert stages["source_popularity"]["status"] == "measured"
    assert stages["features"]["status"] == "skipped-needs-ranker_train" and "publish" not in stages


def test_predictions_exponents_and_extrapolation() -> None:
    done = {(100, 10): {"a": {"status": "measured", "seconds": 2.0}},
            (1_000, 10): {"a": {"status": "measured", "seconds": 20.0}},
            (1_000, 100): {"a": {"status": "measured", "seconds": 80.0}}}  # fmt: skip
    assert scaling.predict("a", (10_000, 10), done) == pytest.approx(200.0)  # linear from (1000, 10)
    assert scaling.predict("a", (10_000, 100), done) == pytest.approx(200.0)  # x10 from (1000, 10)
    assert scaling.predict("a", (10, 10), done) is None  # nothing smaller
    axes = {"interactions": [(100, 10), (1_000, 10)], "items": [(1_000, 10), (1_000, 100)]}
    for stages in done.values():
        stages["a"] |= {"peak_rss_mb": 100.0, "rss_start_mb": 50.0}
    slopes = scaling.exponents(axes, done, ["a"])
    assert slopes["interactions.a.seconds"] == pytest.approx(1.0)
    assert slopes["items.a.seconds"] == pytest.approx(np.log10(4))
    assert slopes["items.a.added_rss_mb"] == pytest.approx(0.0)
    # from the largest measured point (1000, 100): x10 interactions at exponent 1
    assert scaling.extrapolate("a", (10_000, 100), done, slopes) == pytest.approx(800.0)
    assert scaling.design(axes) == [(100, 10), (1_000, 10), (1_000, 100)]


def test_a_merged_results_file_gives_back_its_measured_points(tmp_path: Path) -> None:
    measured = {"status": "measured", "seconds": 2.0, "peak_rss_mb": 90.0, "rss_start_mb": 40.0}
    done = {(100, 10): {"a": measured, "b": {"status": "stopped-budget", "seconds_at_least": 7.0}},
            (1_000, 10): {}}  # fmt: skip
    facts = {(100, 10): {"users": 5, "serve_p50_ms": 3.5}, (1_000, 10): {"not_run": "not in --points"}}
    file = tmp_path / "earlier.json"
    file.write_text(json.dumps(scaling.flat_figures(done, facts, {}, ["a", "b", "c"])))
    earlier = scaling.merged([file], [(100, 10), (1_000, 10)], ["a", "b", "c"])
    assert set(earlier) == {(100, 10)}  # the other point measured nothing
    records, merged_facts = earlier[(100, 10)]
    assert records == done[(100, 10)]
    assert merged_facts == facts[(100, 10)] | {"merged_from": str(file)}


@pytest.mark.slow
def test_the_quick_mode_writes_results_and_a_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    argv = [
        "benchmarks.scaling",
        "--quick",
        "--out",
        str(out),
        "--plot",
        str(png),
        "--work",
        str(tmp_path / "w"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    scaling.main()
    figures = json.loads(out.read_text())
    last = scaling.Point(*scaling.design(scaling.QUICK_AXES)[-1]).name
    assert figures[f"{last}.publish.status"] == "measured" and figures[f"{last}.serve_p99_ms"] > 0
    assert figures[f"{last}.serve_errors"] == 0
    assert figures["exponent.interactions.ingest.seconds"] is not None
    assert png.read_bytes()[:4] == b"\x89PNG"
