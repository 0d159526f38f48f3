"""Adapters from public dataset layouts to the data contract.

Each returns ``(items, interactions)`` as Polars frames in contract form (see ``schema``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl

from recsys.data import schema as S
from recsys.data.io import DataFileError, check_csv_header


def _require(folder: Path, *names: str) -> None:
    if not folder.is_dir():
        raise DataFileError(f"{folder}: not a folder")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataFileError(f"{folder}: missing {', '.join(missing)}")


def _single(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise DataFileError(f"{folder}: expected exactly one {pattern} file, found {listed}")
    return found[0]


def _read_json(path: Path) -> dict:
    """A JSON object; a key that appears twice in one object is an error (``json`` keeps the last)."""

    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        out = dict(pairs)
        if len(out) < len(pairs):
            repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
            raise DataFileError(f"{path}: key {repeated!r} appears more than once in one object")
        return out

    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFileError(f"{path}: cannot read as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataFileError(f"{path}: expected a JSON object at the top level")
    return data


def movielens(folder: str | Path, *, top_tags: int = 5) -> tuple[pl.DataFrame, pl.DataFrame]:
    """GroupLens ``ratings.csv``, ``movies.csv`` and ``tags.csv`` (ml-latest-small layout).

    The description holds the genres and the most used tags; the category is the first genre;
    ratings become ``event="rating"`` with the rating as weight.
    """
    folder = Path(folder)
    _require(folder, "movies.csv", "ratings.csv")
    try:
        for name in ("movies.csv", "ratings.csv", "tags.csv"):
            if (folder / name).is_file():
                check_csv_header(folder / name)
        return _movielens(folder, top_tags=top_tags)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataFileError(f"{folder}: cannot read the MovieLens files: {exc}") from exc


def _movielens(folder: Path, *, top_tags: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    movies = pl.read_csv(folder / "movies.csv", schema_overrides={"movieId": pl.String})
    ratings = pl.read_csv(
        folder / "ratings.csv", schema_overrides={"userId": pl.String, "movieId": pl.String}
    )
    tags_path = folder / "tags.csv"
    if tags_path.exists():
        tags = (
            pl.read_csv(
                tags_path, schema_overrides={"userId": pl.String, "movieId": pl.String, "tag": pl.String}
            )
            .with_columns(pl.col("tag").str.strip_chars().str.to_lowercase())
            .filter(pl.col("tag").str.len_chars() > 0)
            .group_by("movieId", "tag")
            .len()
            .sort(["movieId", "len", "tag"], descending=[False, True, False])
            .group_by("movieId", maintain_order=True)
            .agg(pl.col("tag").head(top_tags).str.join(", ").alias("tags"))
        )
    else:
        tags = pl.DataFrame(schema={"movieId": pl.String, "tags": pl.String})
    no_genre = pl.col("genres") == "(no genres listed)"
    genre_text = (
        pl.when(no_genre).then(None).otherwise("Genres: " + pl.col("genres").str.replace_all(r"\|", ", "))
    )
    description = pl.concat_str([genre_text, "Tags: " + pl.col("tags")], separator=". ", ignore_nulls=True)
    items = movies.join(tags, on="movieId", how="left", maintain_order="left").select(
        pl.col("movieId").alias(S.ITEM_ID),
        pl.col("title").alias(S.TITLE),
        pl.when(description.str.len_chars() > 0).then(description).alias(S.DESCRIPTION),
        pl.when(no_genre)
        .then(None)
        .otherwise(pl.col("genres").str.split("|").list.first())
        .alias(S.CATEGORY),
    )
    interactions = ratings.select(
        pl.col("userId").alias(S.USER_ID),
        pl.col("movieId").alias(S.ITEM_ID),
        pl.col("timestamp").cast(pl.Int64).alias(S.TIMESTAMP),
        pl.lit("rating").alias(S.EVENT),
        pl.col("rating").cast(pl.Float64).alias(S.WEIGHT),
    )
    return items, interactions


def amazon_lcrec(folder: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The LC-Rec JSON layout: ``*.inter.json`` (user -> ordered item list), ``*.item.json``.

    Only the order of events is known, so the position in each user's list becomes the timestamp.
    The category is the leaf of the category path; the brand is kept as a column.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileError(f"{folder}: not a folder")
    inter_path, item_path = _single(folder, "*.inter.json"), _single(folder, "*.item.json")
    meta: dict[str, dict[str, str]] = _read_json(item_path)
    sequences: dict[str, list[int]] = _read_json(inter_path)
    if not all(isinstance(m, dict) for m in meta.values()):
        raise DataFileError(f"{item_path}: expected an object of item id -> {{title, description, ...}}")
    if not all(isinstance(seq, list) for seq in sequences.values()):
        raise DataFileError(f"{inter_path}: expected an object of user id -> list of item ids")

    def text(value: object) -> str | None:
        value = str(value or "").strip()
        return value or None

    items = pl.DataFrame(
        {
            S.ITEM_ID: list(meta),
            S.TITLE: [text(m.get("title")) or "" for m in meta.values()],
            S.DESCRIPTION: [text(m.get("description")) for m in meta.values()],
            S.CATEGORY: [text((m.get("categories") or "").split(",")[-1]) for m in meta.values()],
            S.BRAND: [text(m.get("brand")) for m in meta.values()],
            "category_path": [text(m.get("categories")) for m in meta.values()],
        },
        schema_overrides={S.DESCRIPTION: pl.String, S.CATEGORY: pl.String, S.BRAND: pl.String},
    )
    users = [u for u, seq in sequences.items() for _ in seq]
    interactions = pl.DataFrame(
        {
            S.USER_ID: users,
            S.ITEM_ID: [str(i) for seq in sequences.values() for i in seq],
            S.TIMESTAMP: [t for seq in sequences.values() for t in range(len(seq))],
        },
        schema={S.USER_ID: pl.String, S.ITEM_ID: pl.String, S.TIMESTAMP: pl.Int64},
    )
    return items, interactions


ADAPTERS = {"movielens": movielens, "amazon": amazon_lcrec}
