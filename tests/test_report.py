"""The evaluation report without a browser: charts from known figures, a page that names nothing
outside itself, numbers that are the evaluation's, several runs, a baseline, and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from evaluate_helpers import write_small_dataset
from report_helpers import KS, MODELS, PIPELINE, evaluation, shown_numbers
from typer.testing import CliRunner

from recsys.cli import app
from recsys.experiments import plots
from recsys.experiments.report import ReportError, baseline_for, build_report, load_results, write_report
from recsys.experiments.runs import RunRecord, save_record


def _pairwise_report() -> dict[str, Any]:
    test = {"users": 10, "clusters": 10, "ci_low": 0.01, "ci_high": 0.09, "p_value": 0.01, "wins": 5}
    tests = [
        {**test, "a": "a", "b": "b", "mean_diff": 0.05, "p_holm": 0.02, "significant": True},
        {**test, "a": "a", "b": "c", "mean_diff": -0.01, "p_holm": 0.40, "significant": False},
        {**test, "a": "b", "b": "c", "mean_diff": -0.06, "p_holm": 0.03, "significant": True},
    ]
    return {
        "k": [10],
        "models": {"a": {}, "b": {}, "c": {}},
        "pairwise": {"models": ["a", "b", "c"], "alpha": 0.05, "metrics": {"ndcg@10": tests}},
    }


def test_the_pairwise_matrix_shows_row_minus_column_and_marks_holm_significance() -> None:
    figure = plots.pairwise(_pairwise_report(), metric="ndcg", k=10)
    axes = figure.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in axes.texts}
    assert cells == {
        (0, 1): "+0.0500*", (1, 0): "-0.0500*",  # a - b, significant after Holm
        (0, 2): "-0.0100", (2, 0): "+0.0100",  # not significant: no mark
        (1, 2): "-0.0600*", (2, 1): "+0.0600*",
    }  # fmt: skip
    matrix = axes.images[0].get_array()
    assert matrix[0, 1] == pytest.approx(0.05) and matrix[1, 0] == pytest.approx(-0.05)
    assert np.ma.is_masked(matrix[0, 0])  # a model against itself: no cell
    with pytest.raises(ValueError, match="recall@10"):
        plots.pairwise(_pairwise_report(), metric="recall", k=10)


def test_each_chart_draws_the_figures_of_the_evaluation() -> None:
    report = evaluation()
    lines = plots.curves(report, metric="recall").axes[0].get_lines()
    assert [line.get_label() for line in lines[: len(MODELS)]] == MODELS
    assert list(lines[1].get_ydata()) == report["curves"]["models"]["itemknn"]["recall"]
    activity = report["slices"]["activity"]["slices"]
    bars = plots.slices(report, family="activity", metric="ndcg", k=5).axes[0].patches
    assert [bar.get_height() for bar in bars[: len(activity)]] == pytest.approx(
        [part["models"]["popularity"]["ndcg@5"]["mean"] for part in activity]
    )  # first model's bars, one per slice
    importance = plots.feature_importance(report).axes[0]
    gains = report["pipeline_diagnostics"][PIPELINE]["feature_importance"]
    assert [t.get_text() for t in importance.get_yticklabels()] == list(gains)[: plots.TOP_FEATURES]
    recall = plots.candidate_recall(report).axes[0]
    found = report["pipeline_diagnostics"][PIPELINE]["candidate_recall"]
    assert [bar.get_width() for bar in recall.patches] == pytest.approx(list(found.values()))
    history = plots.popularity_bias(report).axes[0].patches[: len(report["popularity_bias"]["edges"]) - 1]
    assert [bar.get_height() for bar in history] == pytest.approx(
        report["popularity_bias"]["history"]["histogram"]
    )
    assert len(plots.intervals(report, k=10).axes) == 2
    del report["pipeline_diagnostics"]
    with pytest.raises(ValueError, match="--models pipeline"):
        plots.candidate_recall(report)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.references: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.references += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset", "poster")]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    write_report(build_report({"small": evaluation()}, sources={"small": "small.json"}), out)
    return out


def test_the_page_references_no_url_and_no_file(written: Path) -> None:
    page = (written / "index.html").read_text()
    links = _Links()
    links.feed(page)
    assert not re.search(r"https?://", page, flags=re.IGNORECASE)
    assert "script" not in links.tags and "iframe" not in links.tags
    assert links.references and all(ref.startswith(("data:", "#")) for ref in links.references), [
        ref[:40] for ref in links.references if not ref.startswith(("data:", "#"))
    ]
    assert "url(" not in page  # no CSS resource either
    charts = json.loads((written / "report.json").read_text())["charts"]
    assert len(re.findall(r"<img data-chart=", page)) == len(charts) >= 12
    markdown = (written / "report.md").read_text()
    for chart in charts:  # report.md links the PNG files written beside it
        assert f"]({chart['file']})" in markdown and (written / chart["file"]).stat().st_size > 1000


def test_the_numbers_shown_are_the_evaluations(written: Path) -> None:
    report, listed = evaluation(), json.loads((written / "report.json").read_text())["numbers"]
    assert shown_numbers((written / "index.html").read_text()) == listed

    def shown(**tags: str) -> float | None:
        (match,) = [n for n in listed if all(n.get(key) == value for key, value in tags.items())]
        return match["value"]  # type: ignore[no-any-return]

    for model in MODELS:
        for k in KS:
            found = report["intervals"]["models"][model][f"ndcg@{k}"]
            for stat in ("mean", "ci_low", "ci_high"):
                assert shown(section="metrics", model=model, metric=f"ndcg@{k}", stat=stat) == found[stat]
            assert (
                shown(section="metrics", model=model, metric=f"coverage@{k}")
                == report["models"][model][f"coverage@{k}"]
            )
            assert (
                shown(section="beyond", model=model, metric=f"gini@{k}")
                == report["beyond_accuracy"]["models"][model][f"gini@{k}"]
            )
    for test in report["pairwise"]["metrics"]["ndcg@5"]:
        pair = {"a": test["a"], "b": test["b"], "metric": "ndcg@5"}
        assert shown(section="pairwise", stat="p_holm", **pair) == test["p_holm"]
        assert shown(section="matrix", stat="mean_diff", **pair) == test["mean_diff"]
        assert (
            shown(section="matrix", stat="mean_diff", a=test["b"], b=test["a"], metric="ndcg@5")
            == -test["mean_diff"]
        )
    found = report["pipeline_diagnostics"][PIPELINE]["candidate_recall"]["blended"]
    assert shown(section="candidates", source="blended") == found
    tail = next(part for part in report["slices"]["popularity"]["slices"] if part["name"] == "tail")
    assert (
        shown(section="slices", family="popularity", slice="tail", model="itemknn", stat="users")
        == tail["users"]
    )
    assert all(n["text"] == "-" for n in listed if n["value"] is None)


def test_data_strings_are_escaped(tmp_path: Path) -> None:
    report = evaluation()
    report["samples"][0]["history"][0]["title"] = '<script>alert("x")</script> & <b>bold</b>'
    page = build_report({"run": report}).html()
    assert "<script>" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page


def test_several_runs_side_by_side_keep_tests_within_a_run() -> None:
    first, second = evaluation(), evaluation()
    second["slices"]["activity"]["slices"][0]["users"] += 1  # the runs disagree on this slice's users
    report = build_report({"a": first, "b": second})
    listed = json.loads(report.to_json())["numbers"]
    models = {n["model"] for n in listed if n["section"] == "metrics"}
    assert models == {f"{run}/{m}" for run in "ab" for m in MODELS}
    pairs = {(n["a"], n["b"]) for n in listed if n["section"] == "pairwise"}
    assert pairs and all(a.split("/")[0] == b.split("/")[0] for a, b in pairs)  # no test across runs
    counts = [
        n for n in listed if n["section"] == "slices" and n["family"] == "activity" and n["stat"] == "users"
    ]
    first_slice = first["slices"]["activity"]["slices"][0]["name"]
    assert {n["value"] for n in counts if n["slice"] == first_slice} == {None}  # no one count is right
    assert "a/popularity" in report.html() and "b/cooccurrence" in report.html()


def _per_user(path: Path, values: list[float]) -> str:
    users = [f"u{j}" for j in range(len(values))]
    pl.DataFrame({"model": ["itemknn"] * len(values), "user_id": users, "ndcg@10": values}).write_parquet(
        path
    )
    return str(path)


def test_what_changed_has_paired_intervals_from_the_run_records(tmp_path: Path) -> None:
    """Planted: every user's NDCG rises by 0.25 in half the users (0.125 on average)."""
    runs_dir = tmp_path / "runs"
    old, new = evaluation(), evaluation()
    old["models"]["itemknn"]["ndcg@10"], new["models"]["itemknn"]["ndcg@10"] = 0.25, 0.375
    files = {}
    for name, report, values in (("old", old, [0.25] * 40), ("new", new, [0.25, 0.5] * 20)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(report))
        save_record(
            RunRecord(id=name, command="evaluate", created_at="", metrics=report["models"],
                      data={"fingerprint": "same"},
                      outputs={"json": str(files[name].resolve()),
                               "per_user": _per_user(tmp_path / f"{name}.parquet", values)}),
            runs_dir=runs_dir,
        )  # fmt: skip
    baseline = baseline_for(files["old"], {"new": files["new"]}, results={"new": new}, runs_dir=runs_dir)
    (row,) = [
        r
        for r in baseline.comparisons["new"].rows
        if r.model == "itemknn" and r.metric == "ndcg" and r.k == 10
    ]
    assert row.delta == pytest.approx(0.125) and row.paired and 0.05 < row.ci_low < 0.125 < row.ci_high < 0.2
    listed = json.loads(build_report({"new": new}, baseline=baseline).to_json())["numbers"]
    changed = {n["stat"]: n["value"] for n in listed if n["section"] == "changed" and n["model"] == "itemknn"
               and n["metric"] == "ndcg@10" and "side" not in n}  # fmt: skip
    assert changed == {"delta": row.delta, "ci_low": row.ci_low, "ci_high": row.ci_high, "users": 40}
    # a file that no record wrote: plain deltas, and the page says why
    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps(new))
    plain = baseline_for(files["old"], {"new": stray}, results={"new": new}, runs_dir=runs_dir)
    assert plain.comparisons["new"].method == "plain" and "no run record" in plain.notes[0]


def test_cli_writes_the_report_and_rejects_other_json(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(evaluation()))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", str(results), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"index.html", "report.md", "report.json", "plots"}
    (tmp_path / "other.json").write_text(json.dumps({"models": {}}))
    result = CliRunner().invoke(app, ["report", str(tmp_path / "other.json"), "--out", str(out)])
    assert result.exit_code == 2 and "other.json" in result.output and "intervals" in result.output
    with pytest.raises(ReportError, match="cannot read"):
        load_results([tmp_path / "missing.json"])


def test_evaluate_writes_the_report_in_one_go(tmp_path: Path) -> None:
    items, events = write_small_dataset(tmp_path / "data", n_users=30)
    out = tmp_path / "report"
    arguments = ["evaluate", "--items", str(items), "--interactions", str(events), "--models", "popularity",
                 "--k", "5", "--report", str(out), "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    listed = json.loads((out / "report.json").read_text())["numbers"]
    assert any(n["section"] == "metrics" and n["model"] == "popularity" for n in listed)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert record["outputs"]["report"] == str(out.resolve())


def test_matplotlib_loads_only_when_a_report_is_built() -> None:
    """``import recsys``, the CLI (which registers ``recsys report``) and the serving path stay free of it."""
    check = "print('matplotlib' in sys.modules)\n"
    code = (
        "import sys\nimport recsys, recsys.cli, serving.service, recsys.pipeline.recommender\n"
        f"{check}import recsys.experiments.report\n{check}"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True"]  # the second: the check itself can fail
