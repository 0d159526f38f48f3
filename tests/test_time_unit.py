"""One rule tells Unix seconds from an order index: ``recsys.data.schema.are_unix_seconds``.

The evaluation model list (time-decay grid), the two-stage model (``time_unit="auto"``) and
``recsys validate`` (dates in the summary) all ask it. The edge cases below are the ones the three
rules it replaced got wrong: a long order index, one stray row, milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data.schema import UNIX_SECONDS_RANGE, are_unix_seconds

NOW = 1_700_000_000  # 2023-11-14
DAY = 86_400


def clock_times(n: int, seed: int = 0) -> np.ndarray:
    """``n`` event times spread over ten years before ``NOW``."""
    return np.random.default_rng(seed).integers(NOW - 3650 * DAY, NOW, n)


def test_clock_times_are_seconds_and_order_indices_are_not() -> None:
    assert are_unix_seconds(clock_times(1_000))
    assert are_unix_seconds(np.array([964_982_703]))  # one MovieLens rating, 2000-07-30
    per_user = np.concatenate([np.arange(n) for n in (3, 50, 700)])  # position in each user's list
    assert not are_unix_seconds(per_user)


@pytest.mark.parametrize("n", [10**8, 2 * 10**8, 10**9, 4_102_444_800, 5 * 10**9, 10**10, 10**12])
def test_a_global_order_index_never_passes_however_long(n: int) -> None:
    # an evenly spaced sample of 0..n-1 keeps the index's share of values inside the range
    index = np.linspace(0, n - 1, 200_001).astype(np.int64)
    assert not are_unix_seconds(index)


def test_one_stray_row_does_not_flip_the_answer() -> None:
    times = clock_times(999)
    assert are_unix_seconds(np.append(times, 0))  # a missing date stored as 0
    assert are_unix_seconds(np.append(times, 2**62))  # a far-future sentinel
    index = np.arange(999)
    assert not are_unix_seconds(np.append(index, NOW))  # one clock time in an order index


def test_the_tolerance_is_one_percent_of_the_rows() -> None:
    assert are_unix_seconds(np.append(clock_times(99), 0))
    assert not are_unix_seconds(np.append(clock_times(98), [0, 1]))


def test_the_range_bounds_and_other_units() -> None:
    lo, hi = UNIX_SECONDS_RANGE
    assert are_unix_seconds([lo]) and not are_unix_seconds([lo - 1])
    assert are_unix_seconds([hi - 1]) and not are_unix_seconds([hi])
    assert not are_unix_seconds(clock_times(100) * 1_000)  # milliseconds
    assert not are_unix_seconds(clock_times(100) * 1_000_000)  # microseconds
    assert not are_unix_seconds(np.zeros(0, np.int64))


def test_a_polars_column_is_read_like_an_array() -> None:
    assert are_unix_seconds(pl.Series("timestamp", clock_times(10), dtype=pl.Int64))
    assert not are_unix_seconds(pl.Series("timestamp", [0, 1, 2], dtype=pl.Int64))


def _validate(tmp_path: Path, timestamps: list[int]) -> str:
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n1,Pen\n2,Ink\n", encoding="utf-8")
    events = tmp_path / "events.csv"
    rows = "".join(f"u{k % 7},{1 + k % 2},{t}\n" for k, t in enumerate(timestamps))
    events.write_text("user_id,item_id,timestamp\n" + rows, encoding="utf-8")
    result = CliRunner().invoke(
        app, ["validate", "--items", str(items), "--interactions", str(events)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_validate_shows_dates_by_the_same_rule(tmp_path: Path) -> None:
    # one missing date among clock times: the old rule (first >= 1e8) printed no dates
    output = _validate(tmp_path, [0, *clock_times(199).tolist()])
    assert "as Unix seconds" in output and "1970-01-01" in output
    assert "as Unix seconds" not in _validate(tmp_path, list(range(200)))
