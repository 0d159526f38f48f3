"""Column names and dtypes of the data contract, in one place.

Customers bring two tables. ``items``: one row per catalogue item. ``interactions``: one row per
user event. Every other module refers to columns through these constants.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

# --- items -------------------------------------------------------------------------------------
ITEM_ID = "item_id"
TITLE = "title"
DESCRIPTION = "description"
CATEGORY = "category"
PRICE = "price"
BRAND = "brand"  # not required by the contract; used by the text template when present

ITEM_REQUIRED: dict[str, pl.DataType] = {ITEM_ID: pl.String(), TITLE: pl.String()}
ITEM_OPTIONAL: dict[str, pl.DataType] = {
    DESCRIPTION: pl.String(),
    CATEGORY: pl.String(),
    PRICE: pl.Float64(),
    BRAND: pl.String(),
}

# --- interactions --------------------------------------------------------------------------------
USER_ID = "user_id"
TIMESTAMP = "timestamp"
EVENT = "event"
WEIGHT = "weight"

# Timestamps are normalised to Int64: Unix seconds for datetimes, or an integer order index when only
# the order of events is known. Both sort and cut the same way; ``are_unix_seconds`` tells them apart.
INTERACTION_REQUIRED: dict[str, pl.DataType] = {
    USER_ID: pl.String(),
    ITEM_ID: pl.String(),
    TIMESTAMP: pl.Int64(),
}
INTERACTION_OPTIONAL: dict[str, pl.DataType] = {EVENT: pl.String(), WEIGHT: pl.Float64()}

# --- internal, dense integer codes ----------------------------------------------------------------
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"


# --- what the timestamps count ---------------------------------------------------------------------
UNIX_SECONDS_RANGE = (100_000_000, 4_102_444_800)  # [1973-03-03, 2100-01-01) UTC
UNIX_SECONDS_SHARE = 0.99  # of the timestamps inside that range


def are_unix_seconds(timestamps: npt.ArrayLike) -> bool:
    """Whether ``timestamps`` are Unix seconds, not an order index (or milliseconds).

    Both kinds arrive as Int64, so only the values can tell. The rule: at least 99 % of the
    timestamps lie in ``UNIX_SECONDS_RANGE``, 1973-03-03 to 2100-01-01. Why this rule and not the
    smallest or the largest value:

    - An order index never passes, however long: a per-user index stays far below 1e8, and a
      global index ``0..N-1`` always has over 2.4 % of its values outside the range (its first 1e8
      values lie below it, and any beyond 4.1e9 past it).
    - One row cannot flip the answer: a missing date stored as 0 or a far-future sentinel among
      clock times is tolerated (up to 1 % of the rows), where a rule on the minimum would call the
      whole table an order index, and a rule on the maximum would call an index clock time.
    - Milliseconds and microseconds lie past 2100, so they are not taken for seconds: a half-life
      of 7 days would otherwise last 10 minutes.

    A small table pays for the tolerance: one stray row in 10 is 10 %, and it reads as an index;
    so do clock times before 1973. No timestamps at all are not seconds.

    >>> are_unix_seconds([1_700_000_000, 1_700_086_400])
    True
    >>> are_unix_seconds(range(1_000))  # an order index
    False
    >>> are_unix_seconds([0] + [1_700_000_000] * 199)  # one missing date among 200 events
    True
    >>> are_unix_seconds([1_700_000_000_000])  # milliseconds
    False
    >>> are_unix_seconds([])
    False
    """
    stamps = np.asarray(timestamps)
    if stamps.size == 0:
        return False
    lo, hi = UNIX_SECONDS_RANGE
    inside = np.count_nonzero((stamps >= lo) & (stamps < hi))
    return bool(inside >= UNIX_SECONDS_SHARE * stamps.size)
