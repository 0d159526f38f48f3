"""Column names and dtypes of the data contract, in one place.

Customers bring two tables. ``items``: one row per catalogue item. ``interactions``: one row per
user event. Every other module refers to columns through these constants.
"""

from __future__ import annotations

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
# the order of events is known. Both sort and cut the same way.
INTERACTION_REQUIRED: dict[str, pl.DataType] = {
    USER_ID: pl.String(),
    ITEM_ID: pl.String(),
    TIMESTAMP: pl.Int64(),
}
INTERACTION_OPTIONAL: dict[str, pl.DataType] = {EVENT: pl.String(), WEIGHT: pl.Float64()}

# --- internal, dense integer codes ----------------------------------------------------------------
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
