"""``recsys.config``: a config file is checked whole when it is read, before any work starts."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.config import ConfigError, from_dict
from recsys.pipeline.train import TrainConfig

Path_ = tuple[tuple[str, dict[str, Any]], ...]  # (key, the constant keys of its table, such as a tag)


def literal_keys(cls: Any, path: Path_ = ()) -> Iterator[tuple[Path_, tuple[Any, ...]]]:
    """Every settable ``Literal`` field below ``cls``, through nested dataclasses and union members."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        for member in typing.get_args(hint) if union else (hint,):
            if typing.get_origin(member) is Literal and f.init:
                yield (*path, (f.name, {})), typing.get_args(member)
            elif dataclasses.is_dataclass(member):
                constants = {c.name: c.default for c in dataclasses.fields(member) if not c.init}
                yield from literal_keys(member, (*path, (f.name, constants)))


def table(path: Path_, value: object) -> dict[str, Any]:
    data: Any = value
    for name, constants in reversed(path):
        data = {name: {**constants, **data} if constants else data}
    return typing.cast(dict[str, Any], data)


def test_every_literal_of_the_pipeline_config_is_checked_on_load() -> None:
    keys = list(literal_keys(TrainConfig))
    names = {".".join(name for name, _ in path) for path, _ in keys}
    assert {"protocol", "model.label_protocol", "encoder.pooling"} <= names, names
    for path, allowed in keys:
        with pytest.raises(ConfigError) as error:
            from_dict(TrainConfig, table(path, "temporl"))
        where = "TrainConfig." + ".".join(name for name, _ in path)
        choices = ", ".join(repr(a) for a in allowed)
        assert str(error.value) == f"{where} must be one of {choices}, got 'temporl'"
        from_dict(TrainConfig, table(path, allowed[-1]))  # and every allowed value loads


@dataclass(frozen=True)
class Knobs:
    half_life: float | None = 7.0
    size: int | str = 1
    mode: Literal["a", "b"] | int = "a"


def test_unions_take_the_first_member_that_fits() -> None:
    assert (
        from_dict(Knobs, {"half_life": 3}).half_life == 3.0
        and from_dict(Knobs, {"size": "big"}).size == "big"
    )
    assert from_dict(Knobs, {"mode": 2}).mode == 2 and from_dict(Knobs, {"mode": "b"}).mode == "b"
    with pytest.raises(ConfigError, match=r"Knobs\.half_life must be float, got 'soon'"):
        from_dict(Knobs, {"half_life": "soon"})
    with pytest.raises(ConfigError, match=r"Knobs\.mode must be one of 'a', 'b' or int, got 'c'"):
        from_dict(Knobs, {"mode": "c"})
    with pytest.raises(ConfigError, match=r"Knobs\.size must be int or str, got 1\.5"):
        from_dict(Knobs, {"size": 1.5})


@dataclass(frozen=True)
class Untagged:
    first: Knobs | TrainConfig = dataclasses.field(default_factory=Knobs)


def test_a_union_of_dataclasses_without_a_tag_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="needs one Literal tag field"):
        from_dict(Untagged, {"first": {}})


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_a_typo_in_the_config_stops_the_cli_before_it_reads_any_data(command: str, tmp_path: Path) -> None:
    """``label_protocol = "temporl"`` once failed only after the encoder had been fine-tuned."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nlabel_protocol = "temporl"\n')
    data = [
        "--items",
        str(tmp_path / "no-items.parquet"),
        "--interactions",
        str(tmp_path / "no-events.parquet"),
    ]
    result = CliRunner().invoke(app, [command, *data, "--config", str(bad), "--out", str(tmp_path / "out")])
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2, output
    assert (
        "TrainConfig.model.label_protocol must be one of 'leave-last-out', 'temporal', got 'temporl'"
        in output
    )
    assert "no-items" not in output and not (tmp_path / "out").exists()  # no data read, nothing written
