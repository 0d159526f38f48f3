"""Dataset adapters: tiny hand-made folders (always run) and the shared real datasets (CI)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from recsys.data import schema as S
from recsys.data.adapters import ADAPTERS, amazon_lcrec, movielens
from recsys.data.dataset import Dataset
from recsys.data.io import DataFileError
from recsys.data.loading import bundled_paths, convert
from recsys.data.validation import validate_tables


def contract(items: pl.DataFrame, events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Adapter output must pass validation unchanged in shape."""
    checked = validate_tables(items.lazy(), events.lazy(), items_source="items", interactions_source="events")
    assert checked[0].height == items.height and checked[1].height == events.height
    return checked


@pytest.fixture
def tiny_movielens(tmp_path: Path) -> Path:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Nothing Known (2001),(no genres listed)\n"
        "4,Only Tags (2002),(no genres listed)\n",
        encoding="utf-8",
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,0.5,964981247\n2,1,5.0,964982224\n",
        encoding="utf-8",
    )
    (folder / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "1,1,Pixar,1\n2,1,pixar ,2\n3,1,fun,3\n1,1,Classic,4\n3,1,classic,5\n1,1,  ,6\n"
        "1,4,quirky,7\n",
        encoding="utf-8",
    )
    return folder


def test_movielens_adapter_on_a_tiny_folder(tiny_movielens: Path) -> None:
    items, events = contract(*movielens(tiny_movielens, top_tags=2))
    rows = {r[S.ITEM_ID]: r for r in items.to_dicts()}
    # most used tags first (case and spaces folded, blank tags dropped), ties by name, at most top_tags
    assert rows["1"][S.DESCRIPTION] == "Genres: Adventure, Animation, Children. Tags: classic, pixar"
    assert rows["1"][S.CATEGORY] == "Adventure"
    assert rows["2"][S.TITLE] == "American President, The (1995)"  # quoted comma survives
    assert rows["2"][S.DESCRIPTION] == "Genres: Comedy, Drama, Romance"
    assert rows["3"][S.DESCRIPTION] is None and rows["3"][S.CATEGORY] is None
    assert rows["4"][S.DESCRIPTION] == "Tags: quirky"
    assert events.to_dicts() == [
        {S.USER_ID: "1", S.ITEM_ID: "1", S.TIMESTAMP: 964982703, S.EVENT: "rating", S.WEIGHT: 4.0},
        {S.USER_ID: "1", S.ITEM_ID: "2", S.TIMESTAMP: 964981247, S.EVENT: "rating", S.WEIGHT: 0.5},
        {S.USER_ID: "2", S.ITEM_ID: "1", S.TIMESTAMP: 964982224, S.EVENT: "rating", S.WEIGHT: 5.0},
    ]


def test_movielens_adapter_without_tags(tiny_movielens: Path) -> None:
    (tiny_movielens / "tags.csv").unlink()
    items, _ = contract(*movielens(tiny_movielens))
    assert items.get_column(S.DESCRIPTION).to_list() == [
        "Genres: Adventure, Animation, Children",
        "Genres: Comedy, Drama, Romance",
        None,
        None,
    ]


def test_movielens_adapter_names_missing_or_broken_files(tmp_path: Path, tiny_movielens: Path) -> None:
    with pytest.raises(DataFileError, match="not a folder"):
        movielens(tmp_path / "nowhere")
    (tiny_movielens / "ratings.csv").unlink()
    with pytest.raises(DataFileError, match=r"missing ratings\.csv"):
        movielens(tiny_movielens)
    (tiny_movielens / "ratings.csv").write_text("user,film\n1,2\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="cannot read the MovieLens files"):
        movielens(tiny_movielens)


@pytest.fixture
def tiny_amazon(tmp_path: Path) -> Path:
    folder = tmp_path / "amazon"
    folder.mkdir()
    meta = {
        "0": {
            "title": "Relay kit",
            "description": "Hard start",
            "brand": "Supco",
            "categories": "A,B,Relays",
        },
        "1": {"title": "Gloves", "description": "", "brand": "", "categories": ""},
        "2": {"title": " Tape ", "categories": "A,Tape"},
    }
    (folder / "Toy.item.json").write_text(json.dumps(meta), encoding="utf-8")
    (folder / "Toy.inter.json").write_text(json.dumps({"0": [2, 0, 1], "1": [1]}), encoding="utf-8")
    return folder


def test_amazon_adapter_on_a_tiny_folder(tiny_amazon: Path) -> None:
    items, events = contract(*amazon_lcrec(tiny_amazon))
    assert items.to_dicts() == [
        {
            S.ITEM_ID: "0",
            S.TITLE: "Relay kit",
            S.DESCRIPTION: "Hard start",
            S.CATEGORY: "Relays",
            S.BRAND: "Supco",
            "category_path": "A,B,Relays",
        },
        {
            S.ITEM_ID: "1",
            S.TITLE: "Gloves",
            S.DESCRIPTION: None,
            S.CATEGORY: None,
            S.BRAND: None,
            "category_path": None,
        },
        {
            S.ITEM_ID: "2",
            S.TITLE: "Tape",
            S.DESCRIPTION: None,
            S.CATEGORY: "Tape",
            S.BRAND: None,
            "category_path": "A,Tape",
        },
    ]
    # only the order is known: the position in each user's list is the timestamp
    assert events.rows() == [("0", "2", 0), ("0", "0", 1), ("0", "1", 2), ("1", "1", 0)]
    data = Dataset.from_tables(items, events).to_interactions()
    assert data.histories(data.users[:1]).items.tolist() == [2, 0, 1]


def test_amazon_adapter_names_bad_layouts(tiny_amazon: Path) -> None:
    (tiny_amazon / "Other.inter.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"exactly one \*\.inter\.json file, found Other.inter.json, Toy"):
        amazon_lcrec(tiny_amazon)
    (tiny_amazon / "Other.inter.json").unlink()
    (tiny_amazon / "Toy.inter.json").write_text('{"0": [1,', encoding="utf-8")
    with pytest.raises(DataFileError, match=r"Toy\.inter\.json: cannot read as JSON"):
        amazon_lcrec(tiny_amazon)
    (tiny_amazon / "Toy.inter.json").write_text('{"0": 1}', encoding="utf-8")
    with pytest.raises(DataFileError, match="list of item ids"):
        amazon_lcrec(tiny_amazon)


def test_amazon_adapter_output_with_unknown_items_fails_validation(tiny_amazon: Path) -> None:
    (tiny_amazon / "Toy.inter.json").write_text(json.dumps({"0": [0, 7]}), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown item"):
        contract(*amazon_lcrec(tiny_amazon))


def test_movielens_duplicate_columns_are_an_error(tiny_movielens: Path) -> None:
    # polars would read the second movieId as movieId_duplicated_0 and carry on with the first
    (tiny_movielens / "ratings.csv").write_text(
        "userId,movieId,rating,movieId,timestamp\n1,1,4.0,2,5\n", encoding="utf-8"
    )
    with pytest.raises(DataFileError, match=r"ratings\.csv: column 'movieId' appears more than once"):
        movielens(tiny_movielens)


def test_amazon_duplicate_keys_are_an_error(tiny_amazon: Path) -> None:
    # json.loads keeps the last of two equal keys: a user's first sequence would vanish unnoticed
    (tiny_amazon / "Toy.inter.json").write_text('{"0": [2, 0], "1": [1], "0": [1]}', encoding="utf-8")
    with pytest.raises(DataFileError, match=r"Toy\.inter\.json: key '0' appears more than once"):
        amazon_lcrec(tiny_amazon)
    (tiny_amazon / "Toy.inter.json").write_text('{"0": [2, 0]}', encoding="utf-8")
    (tiny_amazon / "Toy.item.json").write_text(
        '{"0": {"title": "A", "title": "B"}, "2": {"title": "C"}}', encoding="utf-8"
    )
    with pytest.raises(DataFileError, match=r"Toy\.item\.json: key 'title' appears more than once"):
        amazon_lcrec(tiny_amazon)


def test_adapter_registry_matches_the_cli_choices() -> None:
    from recsys.cli.data import AdapterName

    assert sorted(ADAPTERS) == sorted(a.value for a in AdapterName)


# --- the shared real datasets ---------------------------------------------------------------------


def test_movielens_adapter_on_the_shared_dataset(movielens_dir: Path) -> None:
    items, events = contract(*movielens(movielens_dir))
    data = Dataset.from_tables(items, events)
    assert data.summary() == {"users": 610, "items": 9742, "interactions": 100836}  # PROVENANCE.md counts
    assert events.get_column(S.TIMESTAMP).min() == 828124615  # 1996-03-29 18:36:55 UTC
    assert events.get_column(S.TIMESTAMP).max() == 1537799250  # 2018-09-24 14:27:30 UTC
    assert items.get_column(S.DESCRIPTION).null_count() == 33  # no genres and no tags
    assert items.get_column(S.CATEGORY).null_count() == 34  # "(no genres listed)"


def test_bundled_data_is_the_converted_shared_dataset(movielens_dir: Path, tmp_path: Path) -> None:
    fresh = convert("movielens", movielens_dir, tmp_path)
    for bundled, rebuilt in zip(bundled_paths(), fresh, strict=True):
        assert pl.read_parquet(bundled).equals(pl.read_parquet(rebuilt)), bundled.name


def test_amazon_adapter_on_the_shared_dataset(amazon_dir: Path) -> None:
    items, events = contract(*amazon_lcrec(amazon_dir))
    data = Dataset.from_tables(items, events)
    assert data.summary() == {"users": 8317, "items": 4344, "interactions": 58492}
    assert (items.get_column(S.TITLE).str.len_chars() > 0).all()
    # order only: each user's events are numbered 0..n-1
    per_user = events.group_by(S.USER_ID).agg(pl.col(S.TIMESTAMP).max() + 1 == pl.len())
    assert per_user.get_column(S.TIMESTAMP).all()
