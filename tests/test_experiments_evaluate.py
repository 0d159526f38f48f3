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

from recsys.cli import app
from recsys.data.loading import load_dataset
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
