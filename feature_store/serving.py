"""Request-time features: one user's record × candidate items, the Polars reference and its NumPy twin.

``features_for`` (and ``serve_features``, which reads the record from the store first) evaluates the
declarations of ``definitions`` with the same ``compute`` functions as training; that is the
reference, and it equals the offline features (tests). Per request its dozens of small Polars calls
cost milliseconds, so the service uses ``ServingFeatures``: the item side is turned into arrays
once, and each request is a few dictionary lookups and vectorised gathers over the candidates. A test
holds it equal to the reference for every feature in the registry, so a feature added to the
registry without a fast form here fails at construction (``KeyError`` naming it).

>>> import polars as pl
>>> items = pl.DataFrame({"item_id": ["a", "b"], "item_idx": [0, 1], "item_pop_all": [3, 1],
...                       "category": ["x", "y"], "brand": [None, None]})
>>> config = D.FeatureConfig(time_unit="steps", windows=(1,), top_categories=1)
>>> fast = ServingFeatures(items, config=config, features=["user_n_events", "item_pop_all",
...                                                        "ui_category_share", "ui_seen"])
>>> record = {"n_events": 2, "n_items": 1, "last_ts": 4, "price_sum": 0.0, "price_n": 0,
...           "events": [], "categories": [{"key": "x", "count": 2}], "last_items": ["a"],
...           "seen": ["a"]}
>>> out = fast(record, np.array([1, 0]), now=5)
>>> {name: values.tolist() for name, values in out.items()}
{'user_n_events': [2, 2], 'item_pop_all': [1, 3], 'ui_category_share': [0.0, 1.0], 'ui_seen': [0, 1]}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from feature_store import compute as C
from feature_store import definitions as D
from recsys.data import schema as S

if TYPE_CHECKING:
    from feature_store.online import OnlineStore


# --- the reference: the declarations evaluated with Polars, as training does -----------------------


def serve_features(
    store: OnlineStore,
    user_id: str,
    item_rows: np.ndarray,
    *,
    items: pl.DataFrame,
    now: int,
    config: D.FeatureConfig,
    embeddings: np.ndarray | None = None,
) -> pl.DataFrame:
    """Features of one user × candidate items at request time ``now``, as training computes them.

    ``items`` is ``record.online_items(snapshot)`` held in memory; ``item_rows`` index it (= item_idx).
    Returns one row per candidate: user features, item features, user×item features.
    """
    states = pl.from_arrow(store.get_user([user_id]))
    assert isinstance(states, pl.DataFrame)
    return features_for(states, item_rows, items=items, now=now, config=config, embeddings=embeddings)


def features_for(
    states: pl.DataFrame,
    item_rows: np.ndarray,
    *,
    items: pl.DataFrame,
    now: int,
    config: D.FeatureConfig,
    embeddings: np.ndarray | None = None,
) -> pl.DataFrame:
    """``serve_features`` once the single user's state row is in hand."""
    if states.height != 1:
        raise ValueError(f"expected the state of one user, got {states.height} rows")
    states = states.with_columns(pl.lit(now, dtype=pl.Int64).alias(D.NOW))
    user = C.user_features(states, config=config).drop(S.USER_ID, D.NOW)
    candidates = items[np.asarray(item_rows, dtype=np.int64)]
    pairs = candidates.select(pl.lit(0, dtype=pl.Int64).alias(C.KEY), pl.col(S.ITEM_ID))
    # user×item features read only the candidates and the user's last items: join against those
    last = items.filter(pl.col(S.ITEM_ID).is_in(states.get_column(D.LAST_ITEMS).explode().drop_nulls()))
    pair = C.pair_features(
        states,
        pairs,
        pl.concat([candidates, last]).unique(S.ITEM_ID, keep="first"),
        config=config,
        embeddings=embeddings,
    )
    item_names = [f.name for f in D.features_of(config, "item")]
    return pl.concat(
        [
            candidates.select(S.ITEM_ID),
            user.select(pl.all().gather(np.zeros(candidates.height, dtype=np.int64))),
            candidates.select(item_names),
            pair,
        ],
        how="horizontal",
    )


# --- the fast path: the same features in NumPy, held equal to the reference by a test -------------

Record = dict[str, Any]  # ``OnlineStore.get_records(...)[0]`` or a row of ``get_user(...).to_pylist()``
PAIR_FEATURES = (
    "ui_category_share",
    "ui_embedding_cosine",
    "ui_same_category_as_last",
    "ui_same_brand_as_last",
    "ui_seen",
)


def _as_dict(counts: dict[str, int] | list[dict[str, Any]]) -> dict[str, int]:
    """A count map as a dict, whether it comes as one (``get_records``) or as Arrow rows."""
    if isinstance(counts, dict):
        return counts
    return {entry[D.MAP_KEY]: entry[D.MAP_COUNT] for entry in counts}


def _codes(values: pl.Series) -> tuple[np.ndarray, dict[str, int]]:
    """Integer codes of a string column (-1 for null) and the code of each value."""
    vocab: dict[str, int] = {}
    codes = np.fromiter(
        (-1 if v is None else vocab.setdefault(v, len(vocab)) for v in values.to_list()),
        dtype=np.int64,
        count=len(values),
    )
    return codes, vocab


class ServingFeatures:
    """Features of one user's record × candidate item rows, as ``features_for`` computes them.

    Parameters
    ----------
    items
        ``record.online_items(snapshot)``, held in memory; candidate rows index it.
    config
        The snapshot's feature config.
    embeddings
        (n_items, dim) item embeddings in the same row order, or None.
    features
        Names to compute, in output order (default: every registry feature but ``user_last_items``).
    """

    def __init__(
        self,
        items: pl.DataFrame,
        *,
        config: D.FeatureConfig,
        embeddings: np.ndarray | None = None,
        features: Sequence[str] | None = None,
    ) -> None:
        self.config = config
        self.embeddings = None if embeddings is None else np.asarray(embeddings, dtype=np.float64)
        self.row_of = {item: i for i, item in enumerate(items.get_column(S.ITEM_ID).to_list())}
        self.category, self.category_code = _codes(items.get_column(S.CATEGORY))
        self.brand, _ = _codes(items.get_column(S.BRAND))
        self.item_columns = {
            f.name: items.get_column(f.name).to_numpy()
            for f in D.features_of(config, "item")
            if f.name in items
        }
        self.features = (
            list(features)
            if features is not None
            else [f.name for f in D.registry(config) if f.name != "user_last_items"]
        )
        self._dtypes = {f.name: f.dtype for f in D.registry(config)}
        empty: Record = {
            D.N_EVENTS: 0,
            D.N_ITEMS: 0,
            D.LAST_TS: None,
            D.PRICE_SUM: 0.0,
            D.PRICE_N: 0,
            D.EVENTS: [],
            D.CATEGORIES: [],
        }
        supported = {*self._user(empty, 0), *self.item_columns, *PAIR_FEATURES}
        missing = [name for name in self.features if name not in supported]
        if missing:
            raise KeyError(f"feature {missing[0]!r} has no serving fast path in feature_store.serving")

    def __call__(self, record: Record, item_rows: np.ndarray, *, now: int) -> dict[str, np.ndarray]:
        """Every requested feature as an array of ``len(item_rows)`` values (user ones repeated)."""
        rows = np.asarray(item_rows, dtype=np.int64)
        n = len(rows)
        user = self._user(record, now)
        pair: dict[str, Callable[[], np.ndarray]] = {
            "ui_category_share": lambda: self._category_share(record, rows),
            "ui_embedding_cosine": lambda: self._cosine(record, rows),
            "ui_same_category_as_last": lambda: self._same_as_last(record, rows, self.category),
            "ui_same_brand_as_last": lambda: self._same_as_last(record, rows, self.brand),
            "ui_seen": lambda: self._seen(record, rows),
        }
        out: dict[str, np.ndarray] = {}
        for name in self.features:
            if name in user:
                out[name] = np.full(n, user[name], dtype=self._numpy_dtype(name))
            elif name in self.item_columns:
                out[name] = self.item_columns[name][rows]
            else:
                out[name] = pair[name]()
        return out

    def _numpy_dtype(self, name: str) -> Any:
        dtype = self._dtypes[name]
        numpy: dict[pl.DataType, Any] = {pl.Int64(): np.int64, pl.Float64(): np.float64, pl.Int8(): np.int8}
        return numpy.get(dtype, object)

    def _user(self, record: Record, now: int) -> dict[str, Any]:
        n = int(record[D.N_EVENTS])
        events = _as_dict(record[D.EVENTS])
        top = sorted(_as_dict(record[D.CATEGORIES]).values(), reverse=True)
        last_ts = record[D.LAST_TS]
        price_n = int(record[D.PRICE_N])
        user: dict[str, Any] = {
            "user_n_events": n,
            "user_n_items": int(record[D.N_ITEMS]),
            "user_since_last": math.nan if last_ts is None else (now - last_ts) / float(self.config.scale),
            "user_mean_price": record[D.PRICE_SUM] / price_n if price_n else math.nan,
        }
        for event in self.config.event_types:
            user[f"user_share_{event}"] = events.get(event, 0) / n if n else 0.0
        for k in range(self.config.top_categories):
            user[f"user_top{k + 1}_category_share"] = top[k] / n if (n and k < len(top)) else 0.0
        return user

    def _category_share(self, record: Record, rows: np.ndarray) -> np.ndarray:
        n = int(record[D.N_EVENTS])
        counts = np.zeros(len(self.category_code) + 1, dtype=np.float64)  # last slot: null category
        for category, count in _as_dict(record[D.CATEGORIES]).items():
            code = self.category_code.get(category)
            if code is not None:
                counts[code] = count
        return counts[self.category[rows]] / n if n else np.zeros(len(rows))

    def _last_rows(self, record: Record) -> list[int]:
        return [r for r in (self.row_of.get(i) for i in record[D.LAST_ITEMS]) if r is not None]

    def _cosine(self, record: Record, rows: np.ndarray) -> np.ndarray:
        last = self._last_rows(record)
        if self.embeddings is None or not last:
            return np.full(len(rows), np.nan)
        profile = self.embeddings[last].sum(axis=0)
        norm = np.linalg.norm(profile)
        if norm == 0:
            return np.full(len(rows), np.nan)
        return np.asarray(self.embeddings[rows] @ (profile / norm))

    def _same_as_last(self, record: Record, rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
        last_items = record[D.LAST_ITEMS]
        last_row = self.row_of.get(last_items[-1]) if last_items else None
        if last_row is None or codes[last_row] < 0:
            return np.zeros(len(rows), dtype=np.int8)
        same: np.ndarray = (codes[rows] == codes[last_row]).astype(np.int8)
        return same

    def _seen(self, record: Record, rows: np.ndarray) -> np.ndarray:
        # per candidate, not a catalogue-wide mask: a request's cost must not grow with the catalogue
        seen = [r for r in map(self.row_of.get, record[D.SEEN]) if r is not None]
        out: np.ndarray = np.isin(rows, np.asarray(seen, dtype=np.int64)).astype(np.int8)
        return out
