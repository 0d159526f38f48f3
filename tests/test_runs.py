"""Experiment records: what `recsys evaluate` and `recsys train` write, and `recsys runs` reading them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import Result
from evaluate_helpers import write_small_dataset
from pipeline_helpers import save_tiny_bert, vocabulary
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data import schema as S
from recsys.data.loading import load_dataset
from recsys.experiments.run_compare import compare_runs
from recsys.experiments.run_exports import log_to_mlflow
from recsys.experiments.runs import Invocation, RunRecord, git_state, load_records, new_record, save_record
from recsys.pipeline.train import data_fingerprint

RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
PLANTED = 0.1  # run B's per-user NDCG@10 is run A's plus this, plus noise


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_small_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def outside_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory that git does not see as a checkout (git stops looking above tmp_path)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _evaluate(data: tuple[Path, Path], *options: str) -> Result:
    items, interactions = data
    arguments = ["evaluate", "--items", str(items), "--interactions", str(interactions)]
    arguments += ["--models", "popularity,itemknn", "--k", "5,10", "--threads", "1", *options]
    return CliRunner().invoke(app, arguments)


def _only_record(folder: Path) -> RunRecord:
    records = load_records(folder)
    assert len(records) == 1, records
    assert (folder / f"{records[0].id}.json").is_file()
    return records[0]


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


# --- what a run records -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_evaluate_records_what_ran_on_what_and_what_came_out(
    data: tuple[Path, Path], outside_git: Path, tmp_path: Path
) -> None:
    work = outside_git
    _git(work, "init", "-q")
    (work / "notes.txt").write_text("v1\n")
    _git(work, "add", "notes.txt")
    _git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    runs = tmp_path / "runs"

    result = _evaluate(
        data, "--json", "out/eval.json", "--per-user", "out/users.parquet", "--runs-dir", str(runs)
    )

    assert result.exit_code == 0, result.output
    record = _only_record(runs)
    assert RUN_ID.match(record.id) and record.command == "evaluate"
    assert f"run {record.id} recorded" in result.output
    assert record.config["models"] == ["popularity", "itemknn"] and record.config["ks"] == [5, 10]
    assert record.options["per_user"] == "out/users.parquet" and record.options["threads"] == 1
    dataset = load_dataset(*data)
    assert record.data["fingerprint"] == data_fingerprint(
        dataset.items, dataset.interactions.drop(S.USER_IDX, S.ITEM_IDX)
    )  # the fingerprint `recsys train` writes into a bundle for the same tables
    assert record.data["users"] == 80 and record.data["files"]["items"] == str(data[0].resolve())
    # out/ is untracked: the outputs of a run do not mark the checkout dirty
    assert record.git == {"commit": _git(work, "rev-parse", "HEAD"), "dirty": False}
    assert {"python", "recsys", "numpy", "polars"} <= record.versions.keys()
    assert record.metrics == json.loads((work / "out" / "eval.json").read_text())["models"]
    assert record.timings["total"] > 0 and "itemknn.fit" in record.timings
    assert record.outputs == {
        "json": str((work / "out" / "eval.json").resolve()),
        "per_user": str((work / "out" / "users.parquet").resolve()),
    }
    (work / "notes.txt").write_text("v2\n")
    assert git_state(work) == {"commit": record.git["commit"], "dirty": True}


def test_a_directory_outside_git_records_without_a_commit(
    data: tuple[Path, Path], outside_git: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECSYS_RUNS_DIR")  # the default folder: ./recsys-runs
    result = _evaluate(data)
    assert result.exit_code == 0, result.output
    assert _only_record(outside_git / "recsys-runs").git is None


def test_without_git_on_the_path_there_is_no_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert git_state(Path(__file__).parent) is None


def test_an_unwritable_runs_folder_warns_and_the_run_succeeds(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder cannot be made under a file, even by root
    result = _evaluate(data, "--json", str(tmp_path / "eval.json"), "--runs-dir", str(blocker / "runs"))
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.output and "record was not written" in result.output
    assert (tmp_path / "eval.json").is_file()


@pytest.mark.slow
def test_train_records_the_bundle_and_its_metrics(tmp_path: Path) -> None:
    items, interactions = write_small_dataset(tmp_path / "data")
    checkpoint = save_tiny_bert(tmp_path / "bert", vocabulary(pl.read_parquet(items)))
    config = tmp_path / "fast.toml"
    config.write_text(FAST_TRAIN_TOML.format(checkpoint=checkpoint))
    runs = tmp_path / "runs"
    arguments = ["train", "--items", str(items), "--interactions", str(interactions), "--config", str(config)]
    arguments += [
        "--no-finetune",
        "--no-publish",
        "--out",
        str(tmp_path / "bundles"),
        "--runs-dir",
        str(runs),
    ]

    result = CliRunner().invoke(app, arguments)

    assert result.exit_code == 0, result.output
    record = _only_record(runs)
    bundle = Path(record.outputs["bundle"])
    meta = json.loads((bundle / "metadata.json").read_text())
    assert record.command == "train" and bundle.parent == (tmp_path / "bundles").resolve()
    assert "bundle_tag" not in record.outputs  # not published
    assert record.metrics == {"pipeline": meta["metrics"]["test"]}
    assert record.data["fingerprint"] == meta["data_fingerprint"] and record.data["users"] == 80
    assert record.config == meta["config"] and record.versions == meta["library_versions"]
    assert record.timings["command_total"] >= record.timings["total"] > 0


# Fast settings (as tests/pipeline_helpers.fast_config) as the TOML `recsys train --config` reads.
FAST_TRAIN_TOML = """
protocol = "temporal"
finetune = false
evaluate_validation = false
[encoder]
checkpoint = "{checkpoint}"
max_tokens = 32
[model]
label_protocol = "temporal"
[model.candidates]
per_source = 30
total = 60
[model.candidates.als]
factors = 16
iterations = 5
[model.candidates.sequential]
hidden = 16
layers = 1
max_len = 10
max_epochs = 2
time_budget_s = 10.0
[model.ranker]
search = [[15, 0.1]]
max_rounds = 50
min_data_in_leaf = 5
"""


# --- list, show, compare ------------------------------------------------------------------------------


def _planted_runs(folder: Path, *, fingerprint_b: str = "f" * 16) -> tuple[RunRecord, RunRecord]:
    """Two evaluate records on 60 users: B's NDCG@10 is A's + PLANTED (+ small noise), recall equal."""
    rng = np.random.default_rng(0)
    ndcg_a = rng.uniform(0.0, 0.6, 60)
    ndcg_b = ndcg_a + PLANTED + rng.normal(0.0, 0.02, 60)
    recall = rng.uniform(0.0, 1.0, 60)
    records = []
    for name, ndcg, fingerprint, day in (("a", ndcg_a, "f" * 16, 1), ("b", ndcg_b, fingerprint_b, 2)):
        per_user = folder / f"{name}.parquet"
        pl.DataFrame(
            {"model": "als", "user_id": [f"u{i}" for i in range(60)], "ndcg@10": ndcg, "recall@10": recall}
        ).write_parquet(per_user)
        record = new_record(
            command="evaluate",
            config={"protocol": "leave-last-out", "windows": 1},
            data={"fingerprint": fingerprint},
            metrics={"als": {"ndcg@10": ndcg.mean(), "recall@10": recall.mean(), "coverage@10": 0.5}},
            run=Invocation(outputs={"per_user": per_user}, git_dir=None),
            versions={},
            now=datetime(2026, 1, day, tzinfo=UTC),
        )
        save_record(record, runs_dir=folder / "runs")
        records.append(record)
    return records[0], records[1]


def test_compare_pairs_users_and_finds_the_planted_difference(tmp_path: Path) -> None:
    a, b = _planted_runs(tmp_path)
    comparison = compare_runs(a, b)
    assert comparison.method == "paired" and "per-user files" in comparison.reason
    rows = {(row.model, row.metric, row.k): row for row in comparison.rows}
    ndcg = rows[("als", "ndcg", 10)]
    assert ndcg.delta == pytest.approx(b.metrics["als"]["ndcg@10"] - a.metrics["als"]["ndcg@10"])
    assert ndcg.ci_low is not None and ndcg.ci_high is not None and ndcg.users == 60
    assert 0 < ndcg.ci_low < PLANTED < ndcg.ci_high  # resolved, and covers what was planted
    recall = rows[("als", "recall", 10)]
    assert (recall.delta, recall.ci_low, recall.ci_high) == (0.0, 0.0, 0.0)  # identical per user
    assert not rows[("als", "coverage", 10)].paired  # no per-user value: a plain delta
    assert comparison.to_dict()["rows"][0]["paired"] is True


def test_compare_falls_back_to_plain_deltas_and_says_why(tmp_path: Path) -> None:
    a, b = _planted_runs(tmp_path, fingerprint_b="0" * 16)
    comparison = compare_runs(a, b)
    assert comparison.method == "plain" and "different data" in comparison.reason
    assert not any(row.paired for row in comparison.rows)
    assert any("different data" in note for note in comparison.notes)


def test_identical_evaluations_compare_to_a_zero_interval(data: tuple[Path, Path], tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = _evaluate(data, "--per-user", str(tmp_path / f"{name}.parquet"), "--runs-dir", str(tmp_path))
        assert result.exit_code == 0, result.output
    comparison = compare_runs(*load_records(tmp_path))
    paired = [row for row in comparison.rows if row.paired]
    assert {row.model for row in paired} == {"popularity", "itemknn"}
    assert all((row.delta, row.ci_low, row.ci_high, row.users) == (0.0, 0.0, 0.0, 80) for row in paired)


def test_cli_lists_shows_and_compares(tmp_path: Path) -> None:
    a, b = _planted_runs(tmp_path)
    runs = ["--runs-dir", str(tmp_path / "runs")]
    runner = CliRunner()

    listed = runner.invoke(app, ["runs", "list", *runs])
    assert listed.exit_code == 0, listed.output
    assert a.id in listed.output and b.id in listed.output and "f" * 8 in listed.output
    assert f"als {a.metrics['als']['ndcg@10']:.4f}" in listed.output  # the headline: N@10

    shown = runner.invoke(app, ["runs", "show", a.id[:17], *runs])
    assert shown.exit_code == 0, shown.output
    assert a.id in shown.output and f"{a.metrics['als']['ndcg@10']:.4f}" in shown.output
    raw = runner.invoke(app, ["runs", "show", b.id, "--json", *runs])
    assert raw.stdout == (tmp_path / "runs" / f"{b.id}.json").read_text()

    compared = runner.invoke(app, ["runs", "compare", a.id[:17], b.id[:17], *runs])
    assert compared.exit_code == 0, compared.output
    ndcg = next(row for row in compare_runs(a, b).rows if row.metric == "ndcg")
    assert f"{ndcg.delta:+.4f}" in compared.output
    assert f"[{ndcg.ci_low:+.4f}, {ndcg.ci_high:+.4f}]" in compared.output
    assert "coverage" not in compared.output  # default: ndcg and recall only


@pytest.mark.parametrize(("prefix", "message"), [("1999", "no run '1999'"), ("2026", "matches 2 runs")])
def test_an_unknown_or_ambiguous_id_is_one_line_and_exit_2(tmp_path: Path, prefix: str, message: str) -> None:
    _planted_runs(tmp_path)
    result = CliRunner().invoke(app, ["runs", "show", prefix, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


# --- TensorBoard and MLflow -----------------------------------------------------------------------------


def test_tensorboard_export_writes_every_scalar(data: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip(
        "tensorboard", reason="the tensorboard package (recsys[tensorboard]) is not installed"
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _evaluate(data, "--tensorboard", str(tmp_path / "tb"), "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    record = _only_record(tmp_path / "runs")
    events = EventAccumulator(str(tmp_path / "tb" / record.id))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"popularity/ndcg@5", "itemknn/recall@10", "timings/total", "timings/itemknn.fit"} <= tags
    [point] = events.Scalars("itemknn/ndcg@10")
    assert point.value == pytest.approx(record.metrics["itemknn"]["ndcg@10"], rel=1e-6)


@pytest.mark.parametrize(
    ("option", "module", "advice"),
    [(["--tensorboard", "tb"], "tensorboard", "(the [tensorboard] extra): pip install tensorboard"),
     (["--mlflow"], "mlflow", "pip install mlflow")],
)  # fmt: skip
def test_a_missing_exporter_fails_before_any_work(
    data: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    option: list[str],
    module: str,
    advice: str,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # Python's own "not installed": import raises
    result = _evaluate(data, *option, "--json", str(tmp_path / "eval.json"), "--runs-dir", str(tmp_path))
    assert result.exit_code == 2
    assert advice in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "eval.json").exists() and not load_records(tmp_path)


def test_mlflow_receives_params_metrics_and_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow", reason="MLflow is optional and not installed")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database; a folder suffices
    a, _ = _planted_runs(tmp_path)

    run_id = log_to_mlflow(a, record_path=tmp_path / "runs" / f"{a.id}.json")

    client = mlflow.tracking.MlflowClient()
    logged = client.get_run(run_id)
    assert logged.data.metrics["als/ndcg_at_10"] == pytest.approx(a.metrics["als"]["ndcg@10"])
    assert logged.data.params["config.protocol"] == "leave-last-out"
    assert logged.data.tags["recsys.run_id"] == a.id
    artifacts = {item.path for item in client.list_artifacts(run_id)}
    assert f"{a.id}.json" in artifacts and "outputs" in artifacts
