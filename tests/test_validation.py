"""The data contract: every problem found at once, each naming file, column and rows; real bad files.

Each test writes real files (CSV, Parquet, JSON lines) to a temporary folder and reads them the way
users' files are read, through ``load_tables`` / the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data import schema as S
from recsys.data.io import DataFileError
from recsys.data.loading import bundled_paths, load_dataset, load_tables
from recsys.data.validation import DataValidationError, Problem, validate_tables

ITEMS_CSV = (
    "item_id,title,description,category,price,colour\n1,Pen,A pen,office,1.5,red\n2,Ink,,office,,blue\n"
)
EVENTS_CSV = (
    "user_id,item_id,timestamp,event,weight\n"
    "u1,1,2024-01-01T00:00:00Z,view,1\n"
    "u1,2,2024-01-01T01:00:00+01:00,purchase,2.5\n"
    "u2,2,2024-01-02,view,\n"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def good_items(tmp_path: Path) -> Path:
    return write(tmp_path / "items.csv", ITEMS_CSV)


@pytest.fixture
def good_events(tmp_path: Path) -> Path:
    return write(tmp_path / "events.csv", EVENTS_CSV)


def problems_of(items: Path, interactions: Path) -> list[Problem]:
    with pytest.raises(DataValidationError) as info:
        load_tables(items, interactions)
    problems = info.value.problems
    assert problems, "a DataValidationError must carry its problems"
    message = str(info.value)
    for problem in problems:  # the exception text lists every problem
        assert str(problem) in message
    return problems


def find(problems: list[Problem], column: str | None, text: str, *, source: Path | None = None) -> Problem:
    matches = [
        p
        for p in problems
        if p.column == column and text in p.message and (source is None or p.source == str(source))
    ]
    assert len(matches) == 1, f"expected one {column!r} problem with {text!r}, got {problems}"
    return matches[0]


# --- valid data, normalised -------------------------------------------------------------------------


def test_valid_csv_is_normalised_to_contract_dtypes(good_items: Path, good_events: Path) -> None:
    items, events = load_tables(good_items, good_events)
    assert items.schema == pl.Schema(
        {
            S.ITEM_ID: pl.String,
            S.TITLE: pl.String,
            S.DESCRIPTION: pl.String,
            S.CATEGORY: pl.String,
            S.PRICE: pl.Float64,
            "colour": pl.String,  # extra columns are carried along, after the contract columns
        }
    )
    assert items.get_column(S.PRICE).to_list() == [1.5, None]
    assert events.schema == pl.Schema(
        {
            S.USER_ID: pl.String,
            S.ITEM_ID: pl.String,
            S.TIMESTAMP: pl.Int64,
            S.EVENT: pl.String,
            S.WEIGHT: pl.Float64,
        }
    )
    # ISO 8601 becomes Unix seconds; "+01:00" is an offset, so 01:00+01:00 is midnight UTC
    assert events.get_column(S.TIMESTAMP).to_list() == [1704067200, 1704067200, 1704153600]
    assert events.get_column(S.WEIGHT).to_list() == [1.0, 2.5, None]


def test_valid_parquet_with_native_types(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    events = tmp_path / "events.parquet"
    pl.DataFrame({S.ITEM_ID: [10, 20], S.TITLE: ["a", "b"], S.PRICE: [1, 2]}).write_parquet(items)
    stamps = pl.Series(["2024-01-01 00:00:00", "2024-01-01 02:00:00"]).str.to_datetime()
    pl.DataFrame(
        {
            S.USER_ID: ["u", "u"],
            S.ITEM_ID: ["10", "20"],
            S.TIMESTAMP: stamps.dt.replace_time_zone("Europe/Berlin"),
            S.WEIGHT: pl.Series([1, 3], dtype=pl.Int32),
        }
    ).write_parquet(events)
    item_table, event_table = load_tables(items, events)
    assert item_table.get_column(S.ITEM_ID).to_list() == ["10", "20"]  # integer ids become text
    assert item_table.get_column(S.PRICE).dtype == pl.Float64
    # Berlin is UTC+1 in January: midnight there is 23:00 UTC the day before
    assert event_table.get_column(S.TIMESTAMP).to_list() == [1704063600, 1704070800]
    assert event_table.get_column(S.WEIGHT).to_list() == [1.0, 3.0]


def test_valid_jsonl_with_ints_floats_and_order_index(tmp_path: Path) -> None:
    items = write_jsonl(
        tmp_path / "items.jsonl", [{"item_id": 1, "title": "a"}, {"item_id": "x", "title": "b"}]
    )
    events = write_jsonl(
        tmp_path / "events.jsonl",
        [
            {"user_id": 7, "item_id": 1, "timestamp": 0, "weight": 1},
            {"user_id": 7, "item_id": "x", "timestamp": 1.9, "weight": 0.5},
            {"user_id": "z", "item_id": "x", "timestamp": 2},
        ],
    )
    item_table, event_table = load_tables(items, events)
    assert item_table.get_column(S.ITEM_ID).to_list() == ["1", "x"]
    assert event_table.get_column(S.USER_ID).to_list() == ["7", "7", "z"]
    assert event_table.get_column(S.TIMESTAMP).to_list() == [0, 1, 2]  # order index kept, floats floored


def test_duplicate_events_are_allowed(tmp_path: Path) -> None:
    # ids are kept as written (padded ones are refused: test_id_rule.py)
    items = write(tmp_path / "items.csv", "item_id,title\n1,Pen\n")
    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,1,5\nu,1,5\nu,1,5\n")
    _, event_table = load_tables(items, events)
    assert event_table.get_column(S.ITEM_ID).to_list() == ["1", "1", "1"]
    assert load_dataset(items, events).summary() == {"users": 1, "items": 1, "interactions": 3}


def test_bundled_demo_data_is_valid_movielens() -> None:
    items, events = bundled_paths()
    data = load_dataset(items, events)
    assert data.summary() == {"users": 610, "items": 9742, "interactions": 100836}
    assert data.interactions.get_column(S.WEIGHT).is_between(0.5, 5.0).all()
    assert (items.parent / "LICENSE.txt").read_text().count("commercial") >= 1
    assert "Harper" in (items.parent / "LICENSE.txt").read_text()


# --- each kind of problem, in a real file --------------------------------------------------------------


def test_missing_required_columns_are_named(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,name\n1,Pen\n")
    events = write(tmp_path / "events.csv", "user,item_id\nu,1\n")
    problems = problems_of(items, events)
    title = find(problems, S.TITLE, "required column is missing")
    assert title.source == str(items) and "item_id, name" in title.message  # says what it found
    find(problems, S.USER_ID, "required column is missing")
    find(problems, S.TIMESTAMP, "required column is missing")
    assert all(p.source == str(events) for p in problems if p.column in (S.USER_ID, S.TIMESTAMP))


def test_wrong_types_in_parquet(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    events = tmp_path / "events.parquet"
    pl.DataFrame({S.ITEM_ID: [1.5, 2.5], S.TITLE: ["a", "b"], S.PRICE: [[1], [2]]}).write_parquet(items)
    pl.DataFrame(
        {S.USER_ID: ["u"], S.ITEM_ID: ["1"], S.TIMESTAMP: [True], S.WEIGHT: ["heavy"]}
    ).write_parquet(events)
    problems = problems_of(items, events)
    assert "wrong type Float64" in find(problems, S.ITEM_ID, "wrong type").message
    find(problems, S.PRICE, "wrong type")
    find(problems, S.TIMESTAMP, "wrong type")
    weight = find(problems, S.WEIGHT, "not a number")  # text in a number column is parsed, row named
    assert weight.rows == (1,) and weight.count == 1 and "'heavy'" in weight.message


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_null_or_blank_ids(tmp_path: Path, blank: str) -> None:
    items = write(tmp_path / "items.csv", f"item_id,title\n1,Pen\n{blank},Ink\n3,\n")
    events = write(tmp_path / "events.csv", f"user_id,item_id,timestamp\n{blank},1,5\nu,{blank},6\nu,1,7\n")
    problems = problems_of(items, events)
    assert find(problems, S.ITEM_ID, "null or empty", source=items).rows == (2,)
    title = find(problems, S.TITLE, "null or empty")
    assert (title.source, title.rows, title.count) == (str(items), (3,), 1)
    user = find(problems, S.USER_ID, "null or empty")
    assert (user.source, user.rows) == (str(events), (1,))
    event_item = [p for p in problems if p.source == str(events) and p.column == S.ITEM_ID]
    assert [(p.message, p.rows) for p in event_item] == [("null or empty value", (2,))]


def test_duplicate_item_ids_name_the_repeats(tmp_path: Path) -> None:
    rows = "".join(f"{i % 3},title {i}\n" for i in range(10))  # ids 0,1,2 repeat: rows 4..10 are repeats
    items = write(tmp_path / "items.csv", "item_id,title\n" + rows)
    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,1,1\n")
    (problem,) = problems_of(items, events)
    assert (problem.source, problem.column, problem.count) == (str(items), S.ITEM_ID, 7)
    assert problem.rows == (4, 5, 6, 7, 8)  # at most five examples ...
    assert "7 rows; rows 4, 5, 6, 7, 8, ..." in str(problem)  # ... and the total count
    assert "'0'" in problem.message  # example ids


def test_interactions_on_unknown_items(tmp_path: Path, good_items: Path) -> None:
    events = write(
        tmp_path / "events.jsonl",
        "\n".join(json.dumps({"user_id": "u", "item_id": i, "timestamp": t}) for t, i in enumerate("1x2y")),
    )
    (problem,) = problems_of(good_items, events)
    assert (problem.source, problem.column, problem.rows, problem.count) == (
        str(events),
        S.ITEM_ID,
        (2, 4),
        2,
    )
    assert str(good_items) in problem.message and "'x'" in problem.message


def test_unparsable_and_missing_timestamps(tmp_path: Path, good_items: Path) -> None:
    events = write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp\nu,1,2024-01-01\nu,1,yesterday\nu,1,\nu,1,2024-13-45\nu,1, \n",
    )
    problems = problems_of(good_items, events)
    unparsable = find(problems, S.TIMESTAMP, "unparsable")
    assert (unparsable.rows, unparsable.count) == ((2, 4), 2)
    assert "'yesterday'" in unparsable.message
    assert find(problems, S.TIMESTAMP, "missing").rows == (3, 5)  # empty and blank cells


def test_timestamps_mixing_dates_and_numbers(tmp_path: Path, good_items: Path) -> None:
    events = write(
        tmp_path / "events.csv", "user_id,item_id,timestamp\nu,1,2024-01-01\nu,1,2024-01-02\nu,1,3\n"
    )
    (problem,) = problems_of(good_items, events)
    assert (problem.column, problem.rows) == (S.TIMESTAMP, (3,))  # the rarer kind is flagged


def test_negative_and_non_numeric_weights_and_prices(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title,price\n1,Pen,-2\n2,Ink,cheap\n3,Cap,inf\n")
    events = write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,weight\nu,1,1,-1\nu,1,2,1e3\nu,2,3,lots\nu,2,4,-0.5\n",
    )
    problems = problems_of(items, events)
    negative = find(problems, S.WEIGHT, "negative")
    assert (negative.source, negative.rows, negative.count) == (str(events), (1, 4), 2)
    assert find(problems, S.WEIGHT, "not a number").rows == (3,)
    assert find(problems, S.PRICE, "negative").rows == (1,)
    assert find(problems, S.PRICE, "not a number").rows == (2,)
    assert find(problems, S.PRICE, "not a finite").rows == (3,)


def test_empty_tables(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title\n")
    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp\n")
    problems = problems_of(items, events)
    assert {(p.source, p.column, p.message) for p in problems} == {
        (str(items), None, "table has no rows"),
        (str(events), None, "table has no rows"),
    }


def test_reserved_column_names(tmp_path: Path, good_events: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title,item_idx\n1,Pen,0\n2,Ink,1\n")
    problems = problems_of(items, good_events)
    find(problems, S.ITEM_IDX, "reserved")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title,price\n1,Pen,x\n1,Pen again,2\n,Cap,3\n")
    events = write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,weight\nu,1,soon,1\n ,9,5,-1\nu,1,6,1\n",
    )
    problems = problems_of(items, events)
    found = {(Path(p.source).name, p.column, p.message.split(" (")[0]) for p in problems}
    assert found == {
        ("items.csv", S.ITEM_ID, "null or empty value"),
        ("items.csv", S.ITEM_ID, "duplicate id"),
        ("items.csv", S.PRICE, "not a number"),
        ("events.csv", S.USER_ID, "null or empty value"),
        ("events.csv", S.ITEM_ID, "unknown item, not in " + str(items)),
        ("events.csv", S.TIMESTAMP, "unparsable timestamp"),
        ("events.csv", S.WEIGHT, "negative value"),
    }


def test_jsonl_with_mixed_value_types_names_the_rows(tmp_path: Path, good_items: Path) -> None:
    events = write_jsonl(
        tmp_path / "events.jsonl",
        [
            {"user_id": "u", "item_id": 1, "timestamp": 1},
            {"user_id": "u", "item_id": [2], "timestamp": {"at": 2}},
        ],
    )
    problems = problems_of(good_items, events)
    assert find(problems, S.ITEM_ID, "unknown item").rows == (2,)
    assert find(problems, S.TIMESTAMP, "unparsable").rows == (2,)


# --- files that cannot be read at all ---------------------------------------------------------------


def test_unreadable_files(tmp_path: Path, good_items: Path) -> None:
    with pytest.raises(DataFileError, match="file not found"):
        load_tables(tmp_path / "nope.csv", good_items)
    with pytest.raises(DataFileError, match=r"unsupported format '\.xlsx'"):
        load_tables(write(tmp_path / "items.xlsx", "x"), good_items)
    with pytest.raises(DataFileError, match=r"corrupt\.parquet: cannot read as parquet"):
        load_tables(write(tmp_path / "corrupt.parquet", "not parquet"), good_items)
    with pytest.raises(DataFileError, match="line 2 is not valid JSON"):
        load_tables(good_items, write(tmp_path / "bad.jsonl", '{"a": 1}\n{"a": [}\n'))


def test_validation_is_vectorised_on_100k_rows() -> None:
    # Not a timing test (see benchmarks/validation.py): checks 100k rows with problems deep inside.
    n = 100_000
    items = pl.LazyFrame({S.ITEM_ID: [str(i) for i in range(1000)], S.TITLE: ["t"] * 1000})
    events = pl.LazyFrame(
        {
            S.USER_ID: [str(i % 777) for i in range(n)],
            S.ITEM_ID: [str(i % 1000) if i != 99_998 else "missing" for i in range(n)],
            S.TIMESTAMP: [str(i) for i in range(n)],
        }
    )
    with pytest.raises(DataValidationError) as info:
        validate_tables(items, events, items_source="i", interactions_source="e")
    (problem,) = info.value.problems
    assert problem.rows == (99_999,) and problem.count == 1


# --- the CLI ----------------------------------------------------------------------------------------

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def test_cli_validate_reports_problems_with_exit_code_2(tmp_path: Path, good_items: Path) -> None:
    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp,weight\nu,1,soon,1\nu,9,5,-1\n")
    result = runner.invoke(
        app, ["validate", "--items", str(good_items), "--interactions", str(events)], env=WIDE
    )
    assert result.exit_code == 2, result.output
    for text in ("3 data problem(s)", "unparsable timestamp", "unknown item", "negative value", "events.csv"):
        assert text in result.output


def test_cli_validate_summarises_valid_data(good_items: Path, good_events: Path) -> None:
    args = ["validate", "--items", str(good_items), "--interactions", str(good_events)]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Valid. 2 users, 2 items (2 with interactions), 3 interactions" in result.output
    assert "2024-01-01 to 2024-01-02" in result.output
    assert "Extra items columns carried along: colour" in result.output


def test_cli_validate_missing_file_exits_2(tmp_path: Path, good_items: Path) -> None:
    args = ["validate", "--items", str(good_items), "--interactions", str(tmp_path / "nope.parquet")]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 2
    assert "file not found" in result.output


def tiny_movielens(folder: Path, *, ratings: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(
        folder / "movies.csv",
        'movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n2,"Heat, The",Crime\n',
    )
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n" + ratings)
    return folder


def test_cli_convert_writes_contract_parquet(tmp_path: Path) -> None:
    source = tiny_movielens(tmp_path / "ml", ratings="1,1,4.0,100\n1,2,3.5,50\n2,2,5.0,70\n")
    out = tmp_path / "out"
    args = ["convert", "--adapter", "movielens", "--source", str(source), "--out", str(out)]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["interactions.parquet", "items.parquet"]
    data = load_dataset(out / "items.parquet", out / "interactions.parquet")
    assert data.summary() == {"users": 2, "items": 2, "interactions": 3}
    events = pl.read_parquet(out / "interactions.parquet")
    assert events.get_column(S.TIMESTAMP).to_list() == [50, 100, 70]  # sorted by (user, time)


def test_cli_convert_writes_nothing_on_invalid_data(tmp_path: Path) -> None:
    # a rating of a movie that is not in movies.csv, and a negative rating
    source = tiny_movielens(tmp_path / "ml", ratings="1,1,4.0,100\n1,3,-1.0,50\n")
    out = tmp_path / "out"
    args = ["convert", "--adapter", "movielens", "--source", str(source), "--out", str(out)]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 2, result.output
    assert "unknown item" in result.output and "negative value" in result.output
    assert not out.exists()


def test_cli_convert_missing_source_files_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for adapter, text in (
        ("movielens", "missing movies.csv, ratings.csv"),
        ("amazon", "expected exactly one"),
    ):
        args = [
            "convert",
            "--adapter",
            adapter,
            "--source",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "o"),
        ]
        result = runner.invoke(app, args, env=WIDE)
        assert result.exit_code == 2 and text in result.output, result.output
        assert not (tmp_path / "o").exists()


def test_cli_convert_rejects_unknown_adapter(tmp_path: Path) -> None:
    args = ["convert", "--adapter", "netflix", "--source", str(tmp_path), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 2  # click usage error
    assert "netflix" in result.output
