"""One rule for ids, in files and in the API: the same id passes or fails everywhere.

The rule (``recsys.data.schema``): 1..256 characters, no control character, no leading or trailing
whitespace. Files are checked by ``recsys validate`` and every command that reads data (exit 2
naming file, column and rows); the API refuses the same ids with a 400 naming the field (the
end-to-end cases are in test_serving.py, against the real server).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from id_examples import id_values, validate_accepts
from pydantic import ValidationError
from test_validation import write, write_jsonl
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data import schema as S
from recsys.data.loading import load_tables
from recsys.data.validation import DataValidationError, Problem

runner = CliRunner()
WIDE = {"COLUMNS": "250"}
LONG = "x" * 257


def id_problems(items: Path, events: Path) -> dict[tuple[str, str | None], Problem]:
    """The problems of the two files, by (file name, column); one problem per column expected."""
    with pytest.raises(DataValidationError) as info:
        load_tables(items, events)
    found: dict[tuple[str, str | None], Problem] = {}
    for problem in info.value.problems:
        key = (Path(problem.source).name, problem.column)
        assert key not in found, f"two problems for {key}: {info.value.problems}"
        found[key] = problem
    return found


def cli_validate(items: Path, events: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", "--items", str(items), "--interactions", str(events)], env=WIDE)
    return result.exit_code, result.output


# --- files: validate refuses, naming file, column and rows ---------------------------------------------


def test_control_characters_in_ids_are_refused(tmp_path: Path) -> None:
    # \x1f is the online stores' separator: before, validate passed it and publishing failed
    items = write_jsonl(
        tmp_path / "items.jsonl",
        [
            {"item_id": "A1", "title": "Pen"},
            {"item_id": "a\x1fb", "title": "Ink"},
            {"item_id": "tab\there", "title": "Cap"},
        ],
    )
    events = write_jsonl(
        tmp_path / "events.jsonl",
        [
            {"user_id": "u1", "item_id": "A1", "timestamp": 1},
            {"user_id": "u\x00", "item_id": "A1", "timestamp": 2},
            {"user_id": "u2", "item_id": "line\nbreak", "timestamp": 3},
        ],
    )
    found = id_problems(items, events)
    assert set(found) == {
        ("items.jsonl", S.ITEM_ID),
        ("events.jsonl", S.USER_ID),
        ("events.jsonl", S.ITEM_ID),
    }
    for key, rows in ((("items.jsonl", S.ITEM_ID), (2, 3)), (("events.jsonl", S.USER_ID), (2,))):
        assert "control character" in found[key].message and found[key].rows == rows, found[key]
    # a refused id is reported once, not also as an unknown item
    assert "control character" in found["events.jsonl", S.ITEM_ID].message
    assert found["events.jsonl", S.ITEM_ID].rows == (3,)
    assert r"'a\x1fb'" in found["items.jsonl", S.ITEM_ID].message  # the example shows the character
    code, output = cli_validate(items, events)
    assert code == 2, output
    assert "items.jsonl" in output and "control character" in output


def test_ids_longer_than_the_api_takes_are_refused(tmp_path: Path) -> None:
    fits = "y" * 256
    items = write(tmp_path / "items.csv", f"item_id,title\n{fits},Pen\n{LONG},Ink\n")
    events = write(tmp_path / "events.csv", f"user_id,item_id,timestamp\nu,{fits},1\n{LONG},{fits},2\n")
    found = id_problems(items, events)
    assert set(found) == {("items.csv", S.ITEM_ID), ("events.csv", S.USER_ID)}
    for problem in found.values():
        assert "longer than 256 characters" in problem.message and problem.rows == (2,), problem
        assert LONG not in problem.message  # the example is cut short
    code, output = cli_validate(items, events)
    assert code == 2 and "longer than 256" in output, output


def test_padded_ids_are_refused_not_stripped(tmp_path: Path) -> None:
    # "A1 " and "A1" must not silently become one id; an export with padded ids names its rows
    items = write(tmp_path / "items.csv", 'item_id,title\nA1,Pen\n"A1 ",Pen again\n')
    events = write(tmp_path / "events.csv", 'user_id,item_id,timestamp\n" u1",A1,1\nu1,A1,2\nu1," A1",3\n')
    found = id_problems(items, events)
    assert set(found) == {("items.csv", S.ITEM_ID), ("events.csv", S.USER_ID), ("events.csv", S.ITEM_ID)}
    assert [(p.rows, p.count) for p in found.values()] == [((2,), 1), ((1,), 1), ((3,), 1)]
    assert all("leading or trailing whitespace" in p.message for p in found.values())
    assert "'A1 '" in found["items.csv", S.ITEM_ID].message
    code, output = cli_validate(items, events)
    assert code == 2 and "whitespace" in output, output


def test_blank_ids_stay_missing_values(tmp_path: Path) -> None:
    """Whitespace alone is a missing id (one problem), not also a padded one."""
    items = write(tmp_path / "items.csv", "item_id,title\nA1,Pen\n")
    events = write(tmp_path / "events.csv", 'user_id,item_id,timestamp\n"  ",A1,1\nu,A1,2\n')
    assert [p.message for p in id_problems(items, events).values()] == ["null or empty value"]


def test_valid_ids_are_kept_exactly(tmp_path: Path) -> None:
    odd = ["a b", "ünï/cødé", "x" * S.ID_MAX_LENGTH, "-1", "0042"]
    items = write_jsonl(tmp_path / "items.jsonl", [{"item_id": i, "title": "t"} for i in odd])
    events = write_jsonl(
        tmp_path / "events.jsonl", [{"user_id": i, "item_id": i, "timestamp": 1} for i in odd]
    )
    item_table, event_table = load_tables(items, events)
    assert item_table.get_column(S.ITEM_ID).to_list() == odd
    assert event_table.get_column(S.USER_ID).to_list() == odd


def test_train_on_a_bad_id_exits_2_before_fitting(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title\nA1,Pen\nA2,Ink\n")
    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,A1,1\nu1,A2,2\n u2,A1,3\n")
    out = tmp_path / "bundles"
    args = ["train", "--items", str(items), "--interactions", str(events), "--out", str(out)]
    result = runner.invoke(app, [*args, "--no-finetune", "--no-publish"], env=WIDE)
    assert result.exit_code == 2, result.output
    assert "whitespace" in result.output and "events.csv" in result.output
    assert "embedding" not in result.output
    assert not out.exists()  # nothing fitted, nothing written


# --- duplicate column names -------------------------------------------------------------------------


def test_duplicate_csv_columns_are_an_error(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title,item_id\nA1,Pen,A2\n")
    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,A1,1\n")
    code, output = cli_validate(items, events)
    assert code == 2, output
    assert "items.csv" in output and "'item_id'" in output and "more than once" in output


def test_duplicate_jsonl_keys_are_an_error(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title\nA1,Pen\nA2,Ink\nitem_id,Odd\n")
    lines = [
        '{"user_id": "u", "item_id": "A1", "timestamp": 1}',
        '{"user_id": "u", "item_id": "item_id", "timestamp": 2}',  # a value, not a second key
        '{"user_id": "u", "item_id": "A1", "timestamp": 3, "item_id": "A2"}',
    ]
    events = write(tmp_path / "events.jsonl", "\n".join(lines) + "\n")
    code, output = cli_validate(items, events)
    assert code == 2, output
    assert "events.jsonl" in output and "'item_id'" in output and "line 3" in output


def test_duplicate_parquet_columns_are_an_error(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = tmp_path / "items.parquet"
    table = pa.table(
        [pa.array(["A1"]), pa.array(["Pen"]), pa.array(["A2"])], names=["item_id", "title", "item_id"]
    )
    pq.write_table(table, items)
    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,A1,1\n")
    code, output = cli_validate(items, events)
    assert code == 2 and "items.parquet" in output and "'item_id'" in output, output


# --- one rule: files, the API's request models and the stores agree on every id --------------------------


def api_accepts(value: str) -> bool:
    from serving.schemas import EventRequest

    try:
        EventRequest.model_validate_json(json.dumps({"user_id": value, "item_id": value}))
    except ValidationError as err:
        assert {e["loc"][0] for e in err.errors()} == {S.USER_ID, S.ITEM_ID}, err
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(id_values)
def test_files_and_api_models_agree_on_every_id(value: str) -> None:
    verdict = validate_accepts(value)
    assert api_accepts(value) == verdict, repr(value)
    assert (S.id_problem(value) is None) == verdict, repr(value)
    # the whole-rule pattern (validate's fast path, the OpenAPI spec) agrees with its parts
    whole = re.fullmatch(S.ID_PATTERN, value) is not None and len(value) <= S.ID_MAX_LENGTH
    assert whole == verdict, repr(value)


def test_the_stores_refuse_by_the_same_rule() -> None:
    from feature_store.record import SEP, check_event

    assert S.id_problem(f"a{SEP}b") is not None  # the separator is a control character
    for user, item in ((f"u{SEP}", "A1"), ("u", " A1"), ("u", LONG)):
        with pytest.raises(ValueError, match=S.USER_ID if user != "u" else S.ITEM_ID):
            check_event(user, item, "view")
    check_event("u 1", "A1", None)
