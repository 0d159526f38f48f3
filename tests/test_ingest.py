"""Ingest (recsys.pipeline.ingest): inbox files and the service's event log folded into data_dir once
each, de-duplicated, bad files quarantined with every problem named, and a SIGKILL at every step of
the way leaving data_dir and the inbox consistent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from feature_store import open_store
from recsys.data import schema as S
from recsys.pipeline.datadir import MANIFEST, Manifest, commit
from recsys.pipeline.ingest import IngestResult, ingest, load_data, load_tables
from recsys.pipeline.lock import DIE_AT_ENV

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000

ITEMS = pl.DataFrame(
    {"item_id": ["a", "b", "c"], "title": ["Apple", "Bread", "Cheese"], "price": [1.0, 2.0, 3.0]}
)
EVENTS = pl.DataFrame(
    {
        "user_id": ["u1", "u1", "u2", "u2", "u1"],
        "item_id": ["a", "b", "a", "c", "a"],
        "timestamp": [T0, T0 + 1, T0 + 2, T0 + 3, T0],  # the last row repeats the first
        "event": ["view", "view", "buy", "view", "view"],
    }
)


def drop(inbox: Path, name: str, frame: pl.DataFrame) -> Path:
    """Write ``frame`` into the inbox in the format its suffix names."""
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / name
    if name.endswith(".csv"):
        frame.write_csv(path)
    elif name.endswith(".jsonl"):
        frame.write_ndjson(path)
    else:
        frame.write_parquet(path)
    return path


def run(tmp_path: Path, store_url: str | None = None) -> IngestResult:
    store = open_store(store_url) if store_url else None
    try:
        return ingest(inbox_dir=tmp_path / "inbox", data_dir=tmp_path / "data", store=store)
    finally:
        if store is not None:
            store.close()


def interactions(tmp_path: Path) -> pl.DataFrame:
    return load_tables(tmp_path / "data")[1].sort(S.USER_ID, S.TIMESTAMP, S.ITEM_ID, S.EVENT)


def report(tmp_path: Path, name: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(
        (tmp_path / "inbox" / "quarantine" / f"{name}.report.json").read_text()
    )
    return result


def test_the_first_run_bootstraps_from_the_inbox_in_every_format(tmp_path: Path) -> None:
    drop(tmp_path / "inbox", "1-items.csv", ITEMS)
    drop(tmp_path / "inbox", "2-events.jsonl", EVENTS.head(3))
    drop(tmp_path / "inbox", "3-events.parquet", EVENTS.tail(2))
    result = run(tmp_path)
    assert result.files_ingested == ("1-items.csv", "2-events.jsonl", "3-events.parquet")
    assert result.files_quarantined == ()
    assert result.rows_added == {"interactions": 4, "items": 3}  # the repeated event once
    assert result.items_changed == 0 and result.events_through is None
    assert sorted(p.name for p in (tmp_path / "inbox" / "processed").iterdir()) == list(result.files_ingested)
    assert [p.name for p in (tmp_path / "inbox").iterdir()] == ["processed"]
    data = load_data(tmp_path / "data")
    assert data.summary() == {"users": 2, "items": 3, "interactions": 4}
    assert data.items.get_column("price").to_list() == [1.0, 2.0, 3.0]  # the contract's dtypes
    assert json.loads(json.dumps(result.to_json()))["files_ingested"][0] == "1-items.csv"


def test_duplicates_are_dropped_and_a_rerun_adds_nothing(tmp_path: Path) -> None:
    drop(tmp_path / "inbox", "items.csv", ITEMS)
    drop(tmp_path / "inbox", "day1.csv", EVENTS.head(2))
    run(tmp_path)
    # a later day repeats yesterday's events, adds one, and has the same click as another event type
    day2 = pl.concat([EVENTS.head(3), EVENTS.head(1).with_columns(pl.lit("buy").alias("event"))])
    drop(tmp_path / "inbox", "day2.csv", day2)
    result = run(tmp_path)
    assert result.rows_added == {"interactions": 2, "items": 0}
    table = interactions(tmp_path)
    assert table.height == 4
    assert table.select(S.USER_ID, S.ITEM_ID, S.TIMESTAMP, S.EVENT).n_unique() == 4
    generation = Manifest.read(tmp_path / "data").generation
    again = run(tmp_path)  # the same inbox: everything was moved to processed/
    assert again.files_ingested == () and again.rows_added == {"interactions": 0, "items": 0}
    # the very same file dropped again is known by its content, and only moved along
    drop(tmp_path / "inbox", "day2-copy.csv", day2)
    copy = run(tmp_path)
    assert copy.files_ingested == () and copy.files_already_ingested == ("day2-copy.csv",)
    assert Manifest.read(tmp_path / "data").generation == generation
    assert interactions(tmp_path).equals(table)
    # a new day under yesterday's name goes in, and beside yesterday's file in processed/
    drop(tmp_path / "inbox", "day1.csv", EVENTS.tail(1).with_columns(pl.lit(T0 + 9).alias(S.TIMESTAMP)))
    assert run(tmp_path).rows_added["interactions"] == 1
    processed = sorted(p.name for p in (tmp_path / "inbox" / "processed").glob("day1*"))
    assert processed[1] == "day1.csv" and re.fullmatch(r"day1-[0-9a-f]{12}\.csv", processed[0])


def test_interaction_parts_are_compacted(tmp_path: Path) -> None:
    manifest = Manifest()
    for day in range(5):
        rows = EVENTS.with_columns(pl.col(S.TIMESTAMP) + 100 * day)
        manifest = commit(
            tmp_path,
            manifest,
            items=ITEMS if day == 0 else None,
            rows=rows,
            pending=None,
            events_through=None,
            files={},
            max_parts=2,
        )
        assert len(manifest.interactions) == [1, 2, 1, 2, 1][day]
        assert load_tables(tmp_path)[1].height == EVENTS.height * (day + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST, *manifest.parts()])


def test_the_latest_version_of_an_item_wins(tmp_path: Path) -> None:
    drop(tmp_path / "inbox", "items.csv", ITEMS)
    drop(tmp_path / "inbox", "events.csv", EVENTS)
    run(tmp_path)
    # a catalogue update: a new title for "a" (its price kept: the file has no price column), a new
    # item "d"; a later file of the same batch changes "a" again and "b" not at all
    drop(
        tmp_path / "inbox",
        "items-2.csv",
        pl.DataFrame({"item_id": ["a", "d"], "title": ["Green apple", "Dates"]}),
    )
    update = pl.DataFrame({"item_id": ["a", "b"], "title": ["Red apple", "Bread"], "colour": ["red", None]})
    drop(tmp_path / "inbox", "items-3.parquet", update)
    result = run(tmp_path)
    assert result.rows_added == {"interactions": 0, "items": 1}
    assert result.items_changed == 1  # "a"; "b" only gained an empty column
    items = load_tables(tmp_path / "data")[0]
    assert items.get_column(S.ITEM_ID).to_list() == ["a", "b", "c", "d"]
    a = items.row(0, named=True)
    assert (a["title"], a["price"], a["colour"]) == ("Red apple", 1.0, "red")
    assert items.row(3, named=True)["price"] is None


def test_an_invalid_file_is_quarantined_with_every_problem_and_the_valid_ones_go_in(tmp_path: Path) -> None:
    drop(tmp_path / "inbox", "items.csv", ITEMS)
    drop(tmp_path / "inbox", "good.csv", EVENTS)
    bad = pl.DataFrame(
        {
            "user_id": ["u1", " u2", "u3"],
            "item_id": ["a", "zzz", "b"],
            "timestamp": [str(T0), str(T0), "soon"],
        }
    )
    drop(tmp_path / "inbox", "bad.csv", bad)
    result = run(tmp_path)
    assert result.files_ingested == ("good.csv", "items.csv")
    assert result.files_quarantined == ("bad.csv",)
    assert (tmp_path / "inbox" / "quarantine" / "bad.csv").read_bytes()  # moved whole
    problems = report(tmp_path, "bad.csv")["problems"]
    assert isinstance(problems, list)
    found = {(p["column"], p["rows"][0]) for p in problems}
    assert found == {("user_id", 2), ("item_id", 2), ("timestamp", 3)}
    assert any("unknown item" in p["text"] and "'zzz'" in p["text"] for p in problems)
    assert load_data(tmp_path / "data").summary()["interactions"] == 4


def test_files_that_are_no_table_are_quarantined(tmp_path: Path) -> None:
    drop(tmp_path / "inbox", "prices.csv", pl.DataFrame({"sku": ["a"], "amount": [1.0]}))
    (tmp_path / "inbox" / "notes.txt").write_text("hello")
    (tmp_path / "inbox" / ".upload.csv").write_text("user_id\n")  # in progress: left alone
    drop(tmp_path / "inbox", "events.csv", EVENTS)  # no catalogue yet: every item is unknown
    # a broken record past the lines a reader samples, found only when the file is read whole
    lines = ["item_id,title", *(f"i{k},Item {k}" for k in range(10_000)), "x,Extra,field"]
    (tmp_path / "inbox" / "ragged.csv").write_text("\n".join(lines) + "\n")
    result = run(tmp_path)
    assert result.files_quarantined == ("events.csv", "notes.txt", "prices.csv", "ragged.csv")
    assert "cannot read: found more fields" in str(report(tmp_path, "ragged.csv")["problems"])
    assert "neither an items file" in str(report(tmp_path, "prices.csv")["problems"])
    assert "columns found: amount, sku" in str(report(tmp_path, "prices.csv")["problems"])
    assert "unsupported format" in str(report(tmp_path, "notes.txt")["problems"])
    assert "is empty" in str(report(tmp_path, "events.csv")["problems"])
    assert (tmp_path / "inbox" / ".upload.csv").exists()
    assert not (tmp_path / "data" / MANIFEST).exists()


def test_an_order_index_is_not_mixed_with_clock_times(tmp_path: Path) -> None:
    drop(tmp_path / "inbox", "items.csv", ITEMS)
    drop(tmp_path / "inbox", "events.csv", EVENTS)
    run(tmp_path)
    drop(tmp_path / "inbox", "steps.csv", EVENTS.with_columns(pl.int_range(pl.len()).alias(S.TIMESTAMP)))
    assert run(tmp_path).files_quarantined == ("steps.csv",)
    assert "order index" in str(report(tmp_path, "steps.csv")["problems"])


def test_service_events_reach_data_dir_exactly_once(tmp_path: Path) -> None:
    """What the store's apply_event accepted is in data_dir after the next ingest, once, over two
    ingests; an event for an item not in the catalogue yet waits and joins when the item does."""
    url = f"sqlite:///{tmp_path / 'online.db'}"
    store = open_store(url)
    accepted = [("u1", "a", "view", T0 + 10), ("u3", "b", None, T0 + 11), ("u3", "new", "view", T0 + 12)]
    seqs = [store.apply_event(*e) for e in accepted]
    drop(tmp_path / "inbox", "items.csv", ITEMS)
    drop(tmp_path / "inbox", "events.csv", EVENTS)
    first = run(tmp_path, url)
    assert (first.events_ingested, first.events_pending, first.events_through) == (2, 1, seqs[-1])
    assert first.rows_added["interactions"] == 4 + 2
    store.prune_events(through=seqs[-1])  # as a publish of a snapshot of this data does
    late = ("u1", "c", "buy", T0 + 13)
    seqs.append(store.apply_event(*late))
    drop(tmp_path / "inbox", "items-2.csv", pl.DataFrame({"item_id": ["new"], "title": ["New thing"]}))
    second = run(tmp_path, url)
    assert (second.events_ingested, second.events_pending, second.events_through) == (2, 0, seqs[-1])
    third = run(tmp_path, url)  # nothing new in the log
    assert (third.rows_added["interactions"], third.events_through) == (0, seqs[-1])
    table = interactions(tmp_path)
    for user, item, event, ts in [*accepted, late]:
        match = table.filter(
            (pl.col(S.USER_ID) == user) & (pl.col(S.ITEM_ID) == item) & (pl.col(S.TIMESTAMP) == ts)
        )
        assert match.get_column(S.EVENT).to_list() == [event]
    assert table.height == 4 + 4
    store.close()


# --- SIGKILL ---------------------------------------------------------------------------------------

DRIVER = """
import sys
from pathlib import Path
from feature_store import open_store
from recsys.pipeline.ingest import ingest
store = open_store(sys.argv[3])
ingest(inbox_dir=Path(sys.argv[1]), data_dir=Path(sys.argv[2]), store=store)
"""


def world(root: Path) -> tuple[Path, str]:
    """An inbox of three files and a store whose log holds two events; returns (root, store URL)."""
    drop(root / "inbox", "a-items.csv", ITEMS)
    drop(root / "inbox", "b-events.csv", EVENTS.head(3))
    drop(root / "inbox", "c-events.jsonl", EVENTS.tail(3))
    url = f"sqlite:///{root / 'online.db'}"
    store = open_store(url)
    store.apply_event("u9", "b", "view", T0 + 50)
    store.apply_event("u9", "zzz", "view", T0 + 51)  # kept aside: no such item
    store.close()
    return root, url


@pytest.mark.parametrize("point", ["ingest-before-commit", "ingest-after-write", "ingest-moving"])
def test_a_kill_anywhere_leaves_everything_consistent_and_each_file_goes_in_once(
    tmp_path: Path, point: str
) -> None:
    reference, url = world(tmp_path / "reference")
    expected = run(reference, url)
    root, url = world(tmp_path / "killed")
    env = {**os.environ, DIE_AT_ENV: point, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", DRIVER, str(root / "inbox"), str(root / "data"), url]
    died = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert died.returncode == -signal.SIGKILL, died.stderr
    # consistent: every file is in the inbox or processed, once; data_dir is all of the run or none
    inbox = root / "inbox"
    names = sorted(p.name for p in [*inbox.glob("*.*"), *inbox.glob("processed/*")])
    assert names == ["a-items.csv", "b-events.csv", "c-events.jsonl"]
    committed = point != "ingest-before-commit"
    assert (root / "data" / MANIFEST).exists() == committed
    if committed:
        assert interactions(root).equals(interactions(reference))
    assert sorted(p.name for p in (root / "data").iterdir() if p.name.startswith(".")) == []
    # the next run finishes the job: the same data as a run never killed, each file in once
    moved = tuple(sorted(p.name for p in inbox.glob("processed/*")))
    again = run(root, url)
    assert (
        tuple(sorted(moved + again.files_ingested + again.files_already_ingested)) == expected.files_ingested
    )
    assert (again.files_ingested == ()) == committed
    assert interactions(root).equals(interactions(reference))
    assert load_tables(root / "data")[0].equals(load_tables(reference / "data")[0])
    assert again.events_through == expected.events_through and again.events_pending == 1
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == list(expected.files_ingested)
    assert run(root, url).rows_added == {"interactions": 0, "items": 0}
