"""Read + validate speed of the data contract, by file format and size.

Run from the project root::

    .venv/bin/python -m benchmarks.validation --repeats 3

Data: the bundled MovieLens demo tables (9,742 items, 100,836 interactions) and a 10x version
(1,008,360 interactions: the same events for 10 disjoint copies of every user), each written as
Parquet, CSV and JSON lines to a temporary folder. For each (size, format) it times
``load_tables`` (read + validate + normalise both tables, everything reported at once) and
``load_dataset`` (the same plus integer encoding), and reports the median of ``--repeats`` runs,
run interleaved so a change in load from other jobs hits all variants alike.

Prints a table and writes ``benchmarks/results/validation.json``, with the run's provenance.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from benchmarks.provenance import start_run, write_results
from recsys.data import schema as S
from recsys.data.loading import bundled_paths, load_dataset, load_tables

FORMATS = ("parquet", "csv", "jsonl")


def write(frame: pl.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    elif path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_ndjson(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    started = start_run()

    items_path, events_path = bundled_paths()
    items = pl.read_parquet(items_path)
    events = pl.read_parquet(events_path)
    copies = [events.with_columns(pl.col(S.USER_ID) + f"#{k}") for k in range(10)]
    sizes = {"100k": events, "1M": pl.concat(copies)}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files: dict[tuple[str, str], tuple[Path, Path]] = {}
        for size, frame in sizes.items():
            for fmt in FORMATS:
                files[size, fmt] = (
                    write(items, folder / f"items-{size}.{fmt}"),
                    write(frame, folder / f"events-{size}.{fmt}"),
                )
        times: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(args.repeats):
            for (size, fmt), (item_file, event_file) in files.items():
                for step, function in (("validate", load_tables), ("load_dataset", load_dataset)):
                    start = time.perf_counter()
                    function(item_file, event_file)
                    times.setdefault((size, fmt, step), []).append(time.perf_counter() - start)
        file_mb = {key: sum(p.stat().st_size for p in paths) / 1e6 for key, paths in files.items()}

    results: dict[str, float | int | str] = {"repeats": args.repeats}
    header = f"{'size':<5} {'format':<8} {'MB':>7} {'validate s':>11} {'rows/s':>11} {'load_dataset s':>15}"
    print(header)
    print("-" * len(header))
    for size, frame in sizes.items():
        for fmt in FORMATS:
            validate = statistics.median(times[size, fmt, "validate"])
            full = statistics.median(times[size, fmt, "load_dataset"])
            rows = frame.height + items.height
            print(
                f"{size:<5} {fmt:<8} {file_mb[size, fmt]:>7.1f} {validate:>11.3f} "
                f"{rows / validate:>11,.0f} {full:>15.3f}"
            )
            results[f"{size}_{fmt}_validate_s"] = round(validate, 4)
            results[f"{size}_{fmt}_load_dataset_s"] = round(full, 4)
            results[f"{size}_{fmt}_rows"] = rows
            results[f"{size}_{fmt}_mb"] = round(file_mb[size, fmt], 2)
    print(f"wrote {write_results('validation', results, params=vars(args), started=started)}")


if __name__ == "__main__":
    main()
