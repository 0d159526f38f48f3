"""Typed configuration: one frozen dataclass per stage, loaded from TOML and validated on load.

An unknown or misspelt key is an error that names the key, never a silent ``None``. So is a value
outside a ``Literal``, or one that fits no member of a union: the error names the key, the value and
what is allowed, when the file is read, before any work starts.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class ALS:
...     factors: int = 64
...     alpha: float = 10.0
...     solver: Literal["cg", "cholesky"] = "cg"
>>> from_dict(ALS, {"factors": 32})
ALS(factors=32, alpha=10.0, solver='cg')
>>> from_dict(ALS, {"factor": 32})
Traceback (most recent call last):
...
recsys.config.ConfigError: unknown key 'factor' in ALS (known: alpha, factors, solver)
>>> from_dict(ALS, {"solver": "cholesky "})
Traceback (most recent call last):
...
recsys.config.ConfigError: ALS.solver must be one of 'cg', 'cholesky', got 'cholesky '

Unions are read member by member (``float | None`` takes a number; TOML has no null, so ``None``
is only ever a default). Two shapes need a rule:

* ``X | None`` where ``X`` is a dataclass also takes ``true`` (``X`` with its defaults) and
  ``false`` (``None``), so ``lora = true`` switches a section on.
* A union of dataclasses is *tagged*: every member has a ``Literal`` field of one value under the
  same name (``method: Literal["head"]``), and the table's value of that key chooses the member. A
  table without the key is the first member. An unknown tag names the key and the allowed tags.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or mapping does not match the expected dataclass."""


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, recursing into nested dataclasses."""
    return _build(cls, data, label=where or getattr(cls, "__name__", str(cls)))


def _build(cls: type[T], data: dict[str, Any], *, label: str, note: str = "") -> T:
    """``from_dict`` with ``note`` added to an unknown key's error (which member of a union was read)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {unknown[0]!r} in {label}{note} (known: {known})")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        where = f"{label}.{name}"
        coerced = _coerce(hints[name], value, where=where)
        if fields[name].init:
            kwargs[name] = coerced
        elif coerced != fields[name].default:  # a constant, such as a union member's tag
            raise ConfigError(f"{where} is always {fields[name].default!r}, got {value!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {exc}") from exc


def _coerce(hint: Any, value: Any, *, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, label=where)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise ConfigError(f"{where} must be one of {_choices(allowed)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return _union(hint, value, where=where)
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


def _union(hint: Any, value: Any, *, where: str) -> Any:
    """The first member of ``hint`` that ``value`` fits; dataclass members follow the module's rules."""
    members = typing.get_args(hint)
    options = [m for m in members if m is not type(None)]
    optional = len(options) < len(members)
    if value is None and optional:
        return None
    classes = [m for m in options if isinstance(m, type) and dataclasses.is_dataclass(m)]
    if len(classes) > 1 and len(classes) == len(options):
        return _tagged(classes, value, where=where)
    if len(classes) == len(options) == 1 and optional and isinstance(value, bool):
        return _build(classes[0], {}, label=where) if value else None
    for option in options:
        try:
            return _coerce(option, value, where=where)
        except ConfigError:
            if len(options) == 1:
                raise
    raise ConfigError(f"{where} must be {' or '.join(_describe(m) for m in members)}, got {value!r}")


def _tagged(classes: list[Any], value: Any, *, where: str) -> Any:
    """The member of a tagged union of dataclasses that ``value``'s tag names (the first without one)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
    tag = _tag_name(classes)
    by_tag = {typing.get_args(typing.get_type_hints(c)[tag])[0]: c for c in classes}
    chosen = value.get(tag, next(iter(by_tag)))
    if not isinstance(chosen, str) or chosen not in by_tag:
        raise ConfigError(f"{where}.{tag} must be one of {_choices(by_tag)}, got {chosen!r}")
    return _build(by_tag[chosen], value, label=where, note=f" with {tag} = {chosen!r}")


def _tag_name(classes: list[Any]) -> str:
    """The one field that every class declares as a ``Literal`` of a single value."""
    common: set[str] | None = None
    for cls in classes:
        hints = typing.get_type_hints(cls)
        tags = {
            f.name
            for f in dataclasses.fields(cls)
            if typing.get_origin(hints[f.name]) is Literal and len(typing.get_args(hints[f.name])) == 1
        }
        common = tags if common is None else common & tags
    if not common or len(common) > 1:
        names = ", ".join(c.__name__ for c in classes)
        raise TypeError(f"a union of dataclasses ({names}) needs one Literal tag field shared by all")
    return common.pop()


def _choices(allowed: Iterable[Any]) -> str:
    return ", ".join(repr(a) for a in allowed)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return f"one of {_choices(typing.get_args(hint))}"
    return "absent" if hint is type(None) else getattr(hint, "__name__", str(hint))


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table of the TOML file ``path``, unchecked; a missing file or bad TOML names the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def load_toml(cls: type[T], path: str | Path) -> T:
    """Read ``path`` (TOML) into ``cls``; errors name the file and the key."""
    data = read_toml(path)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config dataclass, for JSON metadata."""
    return dataclasses.asdict(config)
