"""Feature declarations: each feature is written once and serves both training and serving.

A feature is a Polars expression over the *base frame* of its entity, evaluated as of a cutoff
time (``NOW``: nothing at or after it is visible):

- **user** features read the user's *state*, a small record of sufficient statistics (counts,
  last timestamp, event and category counts, last N items, the set of seen items). Offline the state
  is aggregated from interactions before the cutoff; online it is the store's record, kept current
  by ``apply_event``. Deriving features from the state with one expression is what keeps training
  and serving equal.
- **item** features read per-item event counts before ``NOW`` minus a few offsets, the first event
  time and the catalogue attributes.
- **user×item** features read a pair frame built from one user state and the candidate items (the
  user's count of the item's category, embedding cosine, last item's category and brand, seen).

Adding a feature means adding one ``Feature`` to the registry below.

>>> config = FeatureConfig(event_types=("view", "purchase"))
>>> [f.name for f in registry(config) if f.entity == "user"][:4]
['user_n_events', 'user_n_items', 'user_since_last', 'user_share_view']
>>> schema = feature_schema(config)
>>> schema[0]
{'name': 'user_n_events', 'entity': 'user', 'dtype': 'Int64', 'default': 0}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from recsys.data import schema as S

Entity = Literal["user", "item", "user_item"]

# --- column names of the base frames (internal; features read these) ----------------------------
NOW = "cutoff"  # the as-of time of a row: the label time offline, the request time online
N_EVENTS = "n_events"
N_ITEMS = "n_items"
LAST_TS = "last_ts"
PRICE_SUM = "price_sum"
PRICE_N = "price_n"
EVENTS = "events"  # list of {key, count}: events per event type, sorted by key
CATEGORIES = "categories"  # list of {key, count}: events per item category, sorted by key
LAST_ITEMS = "last_items"  # the last N item ids, oldest first
SEEN = "seen"  # every distinct item id the user interacted with, in order of first interaction
MAP_KEY = "key"
MAP_COUNT = "count"

MAP_DTYPE = pl.List(pl.Struct({MAP_KEY: pl.String, MAP_COUNT: pl.Int64}))
STATE_SCHEMA: dict[str, pl.DataType] = {
    S.USER_ID: pl.String(),
    N_EVENTS: pl.Int64(),
    N_ITEMS: pl.Int64(),
    LAST_TS: pl.Int64(),
    PRICE_SUM: pl.Float64(),
    PRICE_N: pl.Int64(),
    EVENTS: MAP_DTYPE,
    CATEGORIES: MAP_DTYPE,
    LAST_ITEMS: pl.List(pl.String),
    SEEN: pl.List(pl.String),
}

FIRST_TS = "_first_ts"
ITEM_IDX_COL = "item_idx"  # row of the item in the items table, hence in the embedding matrix
TEXT_LEN = "_text_len"
CAT_COUNT = "_cat_count"
COSINE = "_cosine"
LAST_CATEGORY = "_last_category"
LAST_BRAND = "_last_brand"
IS_SEEN = "_seen"


def n_before(offset: int) -> str:
    """Base column of an item's events with ``timestamp < NOW - offset``."""
    return f"_n_before_{offset}"


@dataclass(frozen=True)
class FeatureConfig:
    """What the starter features look at.

    Parameters
    ----------
    time_unit
        ``"seconds"`` when timestamps are Unix seconds (recency and ages in days, windows in days),
        ``"steps"`` when they are only an order index (everything in steps).
    windows
        Popularity windows, in days or steps.
    trend_window
        The trend compares this many days (steps) before the cutoff with the same span before that.
    event_types
        Event types whose share of the user's events is a feature (``event`` column values).
    top_categories
        Number of top category shares of the user.
    last_n
        Length of the user's last-items list (also the span of the embedding profile).
    """

    time_unit: Literal["seconds", "steps"] = "seconds"
    windows: tuple[int, ...] = (1, 7, 30)
    trend_window: int = 7
    event_types: tuple[str, ...] = ()
    top_categories: int = 3
    last_n: int = 20

    def __post_init__(self) -> None:
        if self.time_unit not in ("seconds", "steps"):
            raise ValueError(f"time_unit must be 'seconds' or 'steps', got {self.time_unit!r}")
        if not self.windows or any(w <= 0 for w in self.windows):
            raise ValueError(f"windows must be positive, got {self.windows!r}")
        if self.trend_window <= 0 or self.top_categories < 0 or self.last_n <= 0:
            raise ValueError("trend_window and last_n must be positive, top_categories non-negative")

    @property
    def scale(self) -> int:
        """Timestamp units per reported unit (a day, or a step)."""
        return 86_400 if self.time_unit == "seconds" else 1

    def offsets(self) -> tuple[int, ...]:
        """Every ``NOW - offset`` at which item counts are needed, in timestamp units."""
        spans = {0, *(w * self.scale for w in self.windows)}
        spans |= {self.trend_window * self.scale, 2 * self.trend_window * self.scale}
        return tuple(sorted(spans))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Feature:
    """One declared feature.

    ``expr`` is evaluated on the base frame of ``entity``; nulls become ``default`` and the result
    is cast to ``dtype``.
    """

    name: str
    entity: Entity
    dtype: pl.DataType
    default: Any
    expr: pl.Expr = field(repr=False)
    doc: str = ""

    def evaluate(self) -> pl.Expr:
        expr = self.expr.cast(self.dtype)
        if self.default is not None:
            expr = expr.fill_null(pl.lit(self.default, dtype=self.dtype))
        return expr.alias(self.name)


def map_get(column: str, key: str) -> pl.Expr:
    """The count stored under ``key`` in a ``{key, count}`` list column (0 when absent)."""
    return (
        pl.col(column)
        .list.eval(pl.element().filter(pl.element().struct.field(MAP_KEY) == key).struct.field(MAP_COUNT))
        .list.sum()
    )


def per_event(count: pl.Expr) -> pl.Expr:
    """``count`` as a share of the user's events; null (hence the default) for users without any."""
    return pl.when(pl.col(N_EVENTS) > 0).then(count.cast(pl.Float64) / pl.col(N_EVENTS))


def _nth_largest_share(k: int) -> pl.Expr:
    counts = pl.col(CATEGORIES).list.eval(pl.element().struct.field(MAP_COUNT).sort(descending=True))
    return per_event(counts.list.get(k, null_on_oob=True))


def _window_count(start: int, end: int) -> pl.Expr:
    """Events in ``[NOW - end, NOW - start)``."""
    return pl.col(n_before(start)) - pl.col(n_before(end))


def registry(config: FeatureConfig) -> tuple[Feature, ...]:
    """Every feature, in the order of the feature schema: user, item, then user×item features."""
    return (*_user_features(config), *_item_features(config), *_pair_features())


# The three tables below are the declarations themselves: one ``Feature`` per entry, read top down.
_I64, _F64, _I8 = pl.Int64(), pl.Float64(), pl.Int8()
_NAN = math.nan


def _user_features(config: FeatureConfig) -> list[Feature]:
    scale = float(config.scale)
    return [
        Feature("user_n_events", "user", _I64, 0, pl.col(N_EVENTS), "events before the cutoff"),
        Feature("user_n_items", "user", _I64, 0, pl.col(N_ITEMS), "distinct items before the cutoff"),
        Feature(
            "user_since_last",
            "user",
            _F64,
            _NAN,
            (pl.col(NOW) - pl.col(LAST_TS)).cast(pl.Float64) / scale,
            "days (steps) since the last event",
        ),
        *(
            Feature(
                f"user_share_{event}",
                "user",
                _F64,
                0.0,
                per_event(map_get(EVENTS, event)),
                f"share of '{event}' events",
            )
            for event in config.event_types
        ),
        *(
            Feature(
                f"user_top{k + 1}_category_share",
                "user",
                _F64,
                0.0,
                _nth_largest_share(k),
                f"share of events in the user's #{k + 1} category",
            )
            for k in range(config.top_categories)
        ),
        Feature(
            "user_mean_price",
            "user",
            _F64,
            _NAN,
            pl.when(pl.col(PRICE_N) > 0).then(pl.col(PRICE_SUM) / pl.col(PRICE_N)),
            "mean price of the items the user interacted with",
        ),
        Feature("user_last_items", "user", pl.List(pl.String), None, pl.col(LAST_ITEMS), "last N item ids"),
    ]


def _item_features(config: FeatureConfig) -> list[Feature]:
    tw = config.trend_window * config.scale
    return [
        Feature("item_pop_all", "item", _I64, 0, pl.col(n_before(0)), "events before the cutoff"),
        *(
            Feature(
                f"item_pop_{w}",
                "item",
                _I64,
                0,
                _window_count(0, w * config.scale),
                f"events in the last {w} {'days' if config.time_unit == 'seconds' else 'steps'}",
            )
            for w in config.windows
        ),
        Feature(
            "item_trend",
            "item",
            _F64,
            0.0,
            _window_count(0, tw).cast(pl.Float64).log1p()
            - _window_count(tw, 2 * tw).cast(pl.Float64).log1p(),
            "log1p(events in the last trend window) - log1p(events in the window before)",
        ),
        Feature(
            "item_age",
            "item",
            _F64,
            _NAN,
            (pl.col(NOW) - pl.col(FIRST_TS)).cast(pl.Float64) / float(config.scale),
            "days (steps) since the item's first event",
        ),
        Feature("item_price", "item", _F64, _NAN, pl.col(S.PRICE), "catalogue price"),
        Feature("item_category", "item", pl.String(), "", pl.col(S.CATEGORY), "catalogue category"),
        Feature("item_brand", "item", pl.String(), "", pl.col(S.BRAND), "catalogue brand"),
        Feature("item_text_len", "item", _I64, 0, pl.col(TEXT_LEN), "characters of title + description"),
    ]


def _pair_features() -> list[Feature]:
    return [
        Feature(
            "ui_category_share",
            "user_item",
            _F64,
            0.0,
            per_event(pl.col(CAT_COUNT)),
            "the user's share of events in the item's category",
        ),
        Feature(
            "ui_embedding_cosine",
            "user_item",
            _F64,
            _NAN,
            pl.col(COSINE),
            "cosine of the item embedding to the mean embedding of the user's last N items",
        ),
        Feature(
            "ui_same_category_as_last",
            "user_item",
            _I8,
            0,
            pl.col(S.CATEGORY) == pl.col(LAST_CATEGORY),
            "the item's category equals the last item's",
        ),
        Feature(
            "ui_same_brand_as_last",
            "user_item",
            _I8,
            0,
            pl.col(S.BRAND) == pl.col(LAST_BRAND),
            "the item's brand equals the last item's",
        ),
        Feature("ui_seen", "user_item", _I8, 0, pl.col(IS_SEEN), "the user already interacted with the item"),
    ]


def features_of(config: FeatureConfig, entity: Entity) -> tuple[Feature, ...]:
    return tuple(f for f in registry(config) if f.entity == entity)


def feature_schema(config: FeatureConfig) -> list[dict[str, Any]]:
    """Names, entities, dtypes and defaults of every feature (JSON-ready, NaN as ``"nan"``)."""

    def default(value: Any) -> Any:
        return "nan" if isinstance(value, float) and math.isnan(value) else value

    return [
        {"name": f.name, "entity": f.entity, "dtype": str(f.dtype), "default": default(f.default)}
        for f in registry(config)
    ]


def save_schema(config: FeatureConfig, path: str | Path) -> None:
    """Write the feature schema and its config as JSON (for model bundles)."""
    from recsys.data.io import atomic_path

    payload = {"config": config.to_json(), "features": feature_schema(config)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))
