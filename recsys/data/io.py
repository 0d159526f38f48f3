"""Reading customer tables (Parquet, CSV, JSONL) and writing artifacts atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class DataFileError(ValueError):
    """A table file cannot be read at all (missing, unknown format, corrupt)."""


def read_table(path: str | Path) -> pl.LazyFrame:
    """Scan a Parquet, CSV or JSON-lines table lazily, choosing the reader by suffix.

    CSV columns are read as strings so that validation, not the CSV sniffer, decides types.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataFileError(f"{path}: unsupported format {path.suffix!r} (use {', '.join(sorted(SUFFIXES))})")
    try:
        if kind == "parquet":
            frame = pl.scan_parquet(path)
        elif kind == "csv":
            frame = pl.scan_csv(path, infer_schema=False)
        else:
            frame = pl.scan_ndjson(path, infer_schema_length=None)
            try:
                frame.collect_schema()
            except pl.exceptions.PolarsError:
                # A key whose values have no common type (say a number in one line, a list in
                # another): read every key as text, so validation names the bad rows.
                frame = pl.scan_ndjson(path, schema=dict.fromkeys(_jsonl_keys(path), pl.String))
        frame.collect_schema()  # fail here, with the file's name, on a corrupt header
        # Polars renames a repeated CSV column to NAME_duplicated_0 and keeps the first of two equal
        # JSON keys; either way one of the two values would be dropped unseen. (Parquet refuses.)
        if kind == "csv":
            check_csv_header(path)
        elif kind == "jsonl":
            _check_jsonl_keys(path, frame.collect_schema().names())
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataFileError(f"{path}: cannot read as {kind}: {exc}") from exc
    return frame


def check_csv_header(path: Path) -> None:
    """Raise ``DataFileError`` naming every column that appears more than once in a CSV header."""
    header = pl.read_csv(path, has_header=False, n_rows=1, infer_schema=False).row(0)
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if repeated:
        names = ", ".join(repr(name) for name in repeated)
        which = f"column {names} appears" if len(repeated) == 1 else f"columns {names} appear"
        raise DataFileError(f"{path}: {which} more than once in the header; rename or drop the repeats")


def _check_jsonl_keys(path: Path, keys: list[str]) -> None:
    """Raise ``DataFileError`` naming a key that appears twice in one record, with its line numbers.

    Only lines where a key's quoted name occurs twice are parsed (in Python, to see the keys), so
    a file without repeats costs one vectorised pass.
    """
    lines = pl.scan_lines(path, name="text", row_index_name="line", row_index_offset=1)
    quoted = [json.dumps(key, ensure_ascii=False) for key in keys]
    twice = pl.any_horizontal([pl.col("text").str.count_matches(q, literal=True) > 1 for q in quoted])
    repeated: dict[str, list[int]] = {}
    for number, text in lines.filter(twice).collect().iter_rows():
        try:
            record = json.loads(text, object_pairs_hook=_Pairs)
        except json.JSONDecodeError:
            continue  # not this check's business: the reader names bad JSON
        if not isinstance(record, _Pairs):
            continue
        for key, count in Counter(key for key, _ in record).items():
            if count > 1:
                repeated.setdefault(key, []).append(int(number))
    if repeated:
        key, numbers = next(iter(repeated.items()))
        noun = "line" if len(numbers) == 1 else "lines"
        shown = ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
        raise DataFileError(f"{path}: key {key!r} appears more than once in one record ({noun} {shown})")


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, repeats included."""


def _jsonl_keys(path: Path) -> list[str]:
    """Every top-level key of a JSON-lines file, in order of first appearance."""
    keys: dict[str, None] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}: line {number} is not valid JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise DataFileError(f"{path}: line {number} is not a JSON object")
            keys.update(dict.fromkeys(record))
    return list(keys)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``path`` only if the block succeeds.

    Works for files and directories. Readers never see a half-written artifact, and a crash leaves
    the previous version in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_parquet(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` atomically (zstd-compressed Parquet)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd")
    return Path(path)
