"""Feature store: one declaration per feature, point-in-time offline tables, online SQLite/Redis.

The modules, in data-flow order: ``definitions`` (declarations, registry, schema), ``compute``
(vectorised states and features), ``offline`` (point-in-time join, Parquet snapshots), ``record``
(what an online store keeps per user and item), ``online`` (store interface) with ``sqlite_store``
and ``redis_store``, ``serving`` (request-time features: the Polars reference and its NumPy fast
path), and ``materialize``.
"""

from feature_store.definitions import Feature, FeatureConfig, feature_schema, registry, save_schema
from feature_store.materialize import materialize
from feature_store.offline import Snapshot, build_features, write_snapshot
from feature_store.online import OnlineStore, open_store
from feature_store.record import online_items
from feature_store.serving import serve_features

__all__ = [
    "Feature",
    "FeatureConfig",
    "OnlineStore",
    "Snapshot",
    "build_features",
    "feature_schema",
    "materialize",
    "online_items",
    "open_store",
    "registry",
    "save_schema",
    "serve_features",
    "write_snapshot",
]
