"""The two-stage pipeline's defaults that depend on the data, in one place.

``recsys train`` (without a config, or for the keys its config leaves out), ``recsys retrain`` and
``recsys evaluate --models pipeline`` all build their model with :func:`pipeline_config_for`, so
the three train the same model on the same data. What the data decides is whether its timestamps
are clock time (Unix seconds, by the one rule ``recsys.data.schema.are_unix_seconds``) or only an
order index:

* **clock time**: the ranker learns from 3 rolling temporal label windows of 10% of the events
  each (chosen on MovieLens validation), and item popularity is counted over the last 1, 7, 30, 90
  and 365 days, for periods whose last month holds few events (chosen on fresh MovieLens test
  periods; both in docs/RESULTS.md). Popularity's 7-day half-life follows the same rule, inside
  ``TwoStageConfig.source_config``.
* **an order index**: no global time, so each user's last event is the label (leave-last-out) and
  the popularity windows count steps.

The label windows follow the label protocol, the data's or one a config sets: temporal labels get
the 3 windows, leave-last-out one. An explicit value wins: ``overrides`` (a config file's
``[model]`` table, as a nested mapping) is laid over the data's defaults key by key, so a key that
a file sets, even to the value a default would have given, is never replaced, and a key it leaves
out gets the data's default.

Callers: ``recsys train`` through ``recsys.pipeline.train.train_config_for`` (the whole TOML table)
and ``TrainConfig.for_data`` (a config object without a model); ``recsys evaluate --models
pipeline`` in ``recsys.experiments.models``; the nightly job, as ``pipeline_config_for(interactions,
overrides=<its [model] table>)``.

>>> import numpy as np
>>> clock = np.array([1_700_000_000, 1_700_086_400])
>>> config = pipeline_config_for(clock)
>>> config.label_protocol, config.label_windows, config.features.windows
('temporal', 3, (1, 7, 30, 90, 365))
>>> pipeline_config_for(np.arange(10)).label_protocol  # an order index
'leave-last-out'
>>> pipeline_config_for(clock, overrides={"label_windows": 2, "features": {"last_n": 5}}).features
... # doctest: +ELLIPSIS
FeatureConfig(time_unit='seconds', windows=(1, 7, 30, 90, 365), ..., last_n=5)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from recsys.config import ConfigError, from_dict
from recsys.data import schema as S
from recsys.data.dataset import Dataset, Interactions
from recsys.pipeline.two_stage import TwoStageConfig

TimeUnit = Literal["seconds", "steps"]

# ``TwoStageConfig`` keys (nested as in a TOML ``[model]`` table) that the data decides: by its time
# unit, the label protocol and the popularity windows; by the label protocol (the data's, or one a
# config sets), the label windows, so that ``label_protocol = "leave-last-out"`` alone is consistent
BY_TIME_UNIT: Mapping[TimeUnit, Mapping[str, Any]] = MappingProxyType(
    {
        "seconds": MappingProxyType(
            {"label_protocol": "temporal", "features": MappingProxyType({"windows": (1, 7, 30, 90, 365)})}
        ),
        "steps": MappingProxyType({"label_protocol": "leave-last-out"}),
    }
)
BY_LABEL_PROTOCOL: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "temporal": MappingProxyType({"label_windows": 3, "label_fraction": 0.1}),
        "leave-last-out": MappingProxyType({"label_windows": 1}),
    }
)


def timestamps_of(data: Dataset | Interactions | pl.DataFrame | npt.ArrayLike) -> np.ndarray:
    """The timestamps of a dataset, an ``Interactions``, a contract interactions table or an array."""
    if isinstance(data, Dataset):
        data = data.interactions
    if isinstance(data, Interactions):
        return data.timestamps
    if isinstance(data, pl.DataFrame):
        return data.get_column(S.TIMESTAMP).to_numpy()
    return np.asarray(data)


def time_unit_of(
    data: Dataset | Interactions | pl.DataFrame | npt.ArrayLike, *, configured: str = "auto"
) -> TimeUnit:
    """``configured`` ("seconds" or "steps") when set, else what the timestamps are (``"auto"``)."""
    if configured in ("seconds", "steps"):
        return "seconds" if configured == "seconds" else "steps"
    return "seconds" if S.are_unix_seconds(timestamps_of(data)) else "steps"


def model_defaults(time_unit: TimeUnit, *, label_protocol: str | None = None) -> dict[str, Any]:
    """The data-derived ``TwoStageConfig`` keys of ``time_unit`` (and of ``label_protocol`` when a
    config sets it), as a nested table.

    >>> model_defaults("steps")
    {'label_protocol': 'leave-last-out', 'label_windows': 1}
    >>> model_defaults("seconds", label_protocol="leave-last-out")["label_windows"]
    1
    """
    table = merged({}, BY_TIME_UNIT[time_unit])
    protocol = label_protocol or table["label_protocol"]
    return merged(table, BY_LABEL_PROTOCOL.get(protocol, {}))  # an unknown one: from_dict names it


def merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` laid over it: tables merge key by key, any other value of ``top`` wins.

    >>> merged({"a": 1, "t": {"x": 1, "y": 2}}, {"t": {"y": 3}, "b": 4})
    {'a': 1, 't': {'x': 1, 'y': 3}, 'b': 4}
    """
    out: dict[str, Any] = {}
    for key in (*base, *(k for k in top if k not in base)):
        low, high = base.get(key), top.get(key)
        if isinstance(low, Mapping) and isinstance(high, Mapping):
            out[key] = merged(low, high)
        elif key in top:
            out[key] = merged({}, high) if isinstance(high, Mapping) else high
        else:
            out[key] = merged({}, low) if isinstance(low, Mapping) else low
    return out


def pipeline_config_for(
    data: Dataset | Interactions | pl.DataFrame | npt.ArrayLike,
    *,
    overrides: Mapping[str, Any] | None = None,
    where: str = "model",
) -> TwoStageConfig:
    """The two-stage config for ``data``: its data-derived defaults, with ``overrides`` laid over them.

    Parameters
    ----------
    data
        The interactions the model will be fitted on (only their timestamps are read): a
        ``Dataset``, an ``Interactions``, a contract interactions table or the timestamps.
    overrides
        ``TwoStageConfig`` keys, nested as a TOML ``[model]`` table (``{"ranker": {"bags": 1}}``).
        Each key given wins over the default; its ``time_unit`` ("seconds" or "steps"), when set,
        also chooses the defaults instead of the timestamps.
    where
        How errors name the table (a config file's ``path:model``).

    Raises
    ------
    recsys.config.ConfigError
        An unknown key or a bad value, named under ``where``.
    """
    table = _table(overrides or {}, where=where)
    unit = time_unit_of(data, configured=str(table.get("time_unit", "auto")))
    return _build(table, unit, where=where)


def check_overrides(overrides: Any, *, where: str = "model") -> None:
    """Check a ``[model]`` table before the data is read: a key or value that every kind of data
    rejects (an unknown key, a wrong type) raises now; one that only some data rejects
    (``label_windows = 3`` needs temporal labels, which only clock time defaults to) is reported by
    :func:`pipeline_config_for` once the data is known."""
    table = _table(overrides, where=where)
    errors: list[ConfigError] = []
    for unit in BY_TIME_UNIT:
        try:
            _build(table, unit, where=where)
            return
        except ConfigError as exc:
            errors.append(exc)
    raise errors[0]


def _table(overrides: Any, *, where: str) -> Mapping[str, Any]:
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where} must be a table, got {type(overrides).__name__}")
    return overrides


def _build(overrides: Mapping[str, Any], unit: TimeUnit, *, where: str) -> TwoStageConfig:
    protocol = overrides.get("label_protocol")
    defaults = model_defaults(unit, label_protocol=protocol if isinstance(protocol, str) else None)
    return from_dict(TwoStageConfig, merged(defaults, overrides), where=where)
