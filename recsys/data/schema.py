"""Column names and dtypes of the data contract, in one place.

Customers bring two tables. ``items``: one row per catalogue item. ``interactions``: one row per
user event. Every other module refers to columns through these constants.
"""

from __future__ import annotations

import re

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

# --- the id rule: one definition for files, the API and the stores ------------------------------------
ID_COLUMNS = (USER_ID, ITEM_ID)
ID_MAX_LENGTH = 256
# Unicode category Cc: C0 controls (tab, newline, carriage return, NUL and the online stores'
# separator \x1f among them), DEL and the C1 controls. Invisible in logs and listings, they break
# line-based exports (a newline in a CSV or JSON-lines row), and \x1f joins ids in the stores.
ID_CONTROL = r"\x00-\x1f\x7f-\x9f"
# Unicode White_Space less the controls above. Spelled out rather than \s, whose meaning differs
# between Python's re, the Rust regex behind Polars and pydantic, and ECMAScript (OpenAPI clients).
ID_SPACE = r"\x20\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# The whole rule as one anchored pattern, for the OpenAPI spec; the checks below are its parts.
ID_PATTERN = rf"^[^{ID_CONTROL}{ID_SPACE}](?:[^{ID_CONTROL}]*[^{ID_CONTROL}{ID_SPACE}])?$"
ID_RULES = (
    (f"[{ID_CONTROL}]", "contains a control character (U+0000-U+001F, U+007F-U+009F: tab, newline, ...)"),
    (
        f"^[{ID_SPACE}]|[{ID_SPACE}]$",
        "has leading or trailing whitespace (ids are taken exactly as written, never stripped)",
    ),
)
"""``(regex, message)`` for each way an id can break the rule; a match breaks it. Polars (Rust
regex) and ``id_problem`` (Python ``re``) read the same strings, which mean the same in both."""
ID_TOO_LONG = f"is longer than {ID_MAX_LENGTH} characters"


def id_problem(value: str) -> str | None:
    r"""What is wrong with ``value`` as a user or item id, or ``None`` when it is a valid id.

    An id is 1 to ``ID_MAX_LENGTH`` (256) characters of text, with no control character anywhere
    and no whitespace at either end; spaces inside are fine. Why:

    - Control characters are refused because they are invisible, break line-based exports, and
      ``\x1f`` is the separator the online stores join seen ids with.
    - 256 characters is what the API takes, so a file id the API could never be asked about is
      refused when the file is read, not found out at serving time.
    - Surrounding whitespace is refused, not stripped, in files and in the API alike: a shop's
      ``"A1 "`` and ``"A1"`` must not silently become one id, and a padded id in a file would
      never match the same id sent unpadded to the API.

    ``recsys validate`` applies the same rule to the ``user_id`` and ``item_id`` columns of both
    tables, and ``serving.schemas.Id`` to every id in a request.

    >>> id_problem("A1 b") is None
    True
    >>> id_problem(" A1")
    'has leading or trailing whitespace (ids are taken exactly as written, never stripped)'
    >>> id_problem("A1\x1fB")
    'contains a control character (U+0000-U+001F, U+007F-U+009F: tab, newline, ...)'
    >>> id_problem("x" * 257), id_problem("")
    ('is longer than 256 characters', 'is empty')
    """
    if not value:
        return "is empty"
    for pattern, message in ID_RULES:
        if re.search(pattern, value):
            return message
    return ID_TOO_LONG if len(value) > ID_MAX_LENGTH else None


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
