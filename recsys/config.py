"""Typed configuration: one frozen dataclass per stage, loaded from TOML and validated on load.

An unknown or misspelt key is an error that names the key, never a silent ``None``.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class ALS:
...     factors: int = 64
...     alpha: float = 10.0
>>> from_dict(ALS, {"factors": 32})
ALS(factors=32, alpha=10.0)
>>> from_dict(ALS, {"factor": 32})
Traceback (most recent call last):
...
recsys.config.ConfigError: unknown key 'factor' in ALS (known: alpha, factors)
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or mapping does not match the expected dataclass."""


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, recursing into nested dataclasses."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    label = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {label} (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where=f"{label}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {exc}") from exc


def _coerce(hint: Any, value: Any, *, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where=where) if len(args) == 1 else value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        hints: tuple[Any, ...] = typing.get_args(hint) or (Any, ...)
        if len(hints) == 2 and hints[1] is Ellipsis:  # tuple[X, ...]
            hints = (hints[0],) * len(value)
        elif len(hints) != len(value):
            raise ConfigError(f"{where} must have {len(hints)} entries, got {len(value)}")
        return tuple(
            _coerce(h, v, where=f"{where}[{i}]") for i, (h, v) in enumerate(zip(hints, value, strict=True))
        )
    if origin is dict or hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def load_toml(cls: type[T], path: str | Path) -> T:
    """Read ``path`` (TOML) into ``cls``; errors name the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config dataclass, for JSON metadata."""
    return dataclasses.asdict(config)
