"""``recsys.encoder.config``: the item text template and the fine-tuning configs as TOML reads them."""

from __future__ import annotations

import dataclasses
import tomllib

import polars as pl
import pytest

from recsys.config import ConfigError, from_dict
from recsys.data import schema as S
from recsys.encoder.config import (
    EncoderConfig,
    HeadConfig,
    LayersConfig,
    LoraConfig,
    PairTraining,
    ProjectionConfig,
    item_texts,
)
from recsys.pipeline.train import TrainConfig


def test_template_drops_missing_parts_and_rejects_unknown_fields() -> None:
    items = pl.DataFrame(
        {
            S.ITEM_ID: ["a", "b"],
            S.TITLE: ["Drill ", "Tape"],
            S.CATEGORY: ["Tools", "  "],
            S.BRAND: [None, "3M"],
        }
    )
    texts = item_texts(items, EncoderConfig()).to_list()
    assert texts == ["Drill. Category: Tools", "Tape. Brand: 3M"]
    with pytest.raises(ValueError, match="unknown field"):
        EncoderConfig(template=("{title}", "{colour}"))
    with pytest.raises(ValueError, match="max_tokens"):
        EncoderConfig(max_tokens=4)


def training(toml: str) -> object:
    """The ``encoder_training`` that ``recsys train --config`` reads from this TOML."""
    return from_dict(TrainConfig, tomllib.loads(toml)).encoder_training


def test_toml_chooses_the_method_by_its_tag() -> None:
    assert training("") == HeadConfig()  # no section: the head, with every default
    assert training(
        "[encoder_training]\nwindow = 3\n[encoder_training.head]\nmax_epochs = 10\n"
    ) == HeadConfig(window=3, head=ProjectionConfig(max_epochs=10))
    layers = training('[encoder_training]\nmethod = "layers"\ntrain_layers = 1\nlr = 1e-4\n')
    assert layers == LayersConfig(train_layers=1, lr=1e-4) and layers.lora is None  # type: ignore[union-attr]
    # `lora = true` (as the README says) is LoRA with its defaults; a table sets them
    assert training('[encoder_training]\nmethod = "layers"\nlora = true\n') == LayersConfig(lora=LoraConfig())
    assert training('[encoder_training]\nmethod = "layers"\nlora = false\n') == LayersConfig()
    with_table = training('[encoder_training]\nmethod = "layers"\n[encoder_training.lora]\nr = 4\n')
    assert with_table == LayersConfig(lora=LoraConfig(r=4))


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[encoder_training]\nmethod = "lora"\n',
            "TrainConfig.encoder_training.method must be one of 'head', 'layers', got 'lora'",
        ),
        (  # a setting of the other method is no longer silently ignored
            "[encoder_training]\nlr = 1e-4\n",
            "unknown key 'lr' in TrainConfig.encoder_training with method = 'head'",
        ),
        (
            '[encoder_training]\nmethod = "layers"\n[encoder_training.head]\nmax_epochs = 3\n',
            "unknown key 'head' in TrainConfig.encoder_training with method = 'layers'",
        ),
        (
            '[encoder_training]\nmethod = "layers"\nlora = "yes"\n',
            "TrainConfig.encoder_training.lora must be a table, got str",
        ),
        ("[encoder_training]\nwindow = 0\n", "invalid HeadConfig.window: 0"),
        ("[encoder_training.head]\nhidden = 0\n", "invalid ProjectionConfig.hidden: 0"),
        (
            '[encoder]\npooling = "max"\n',
            "TrainConfig.encoder.pooling must be one of 'mean', 'cls', got 'max'",
        ),
    ],
)
def test_toml_mistakes_name_the_key_the_value_and_what_is_allowed(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        training(toml)
    assert message in str(error.value)


def test_each_method_holds_only_the_settings_it_reads() -> None:
    """The settings both methods read are shared; no field of one method exists on the other."""
    shared = {f.name for f in dataclasses.fields(PairTraining)}
    head = {f.name for f in dataclasses.fields(HeadConfig)} - shared
    layers = {f.name for f in dataclasses.fields(LayersConfig)} - shared
    assert head & layers == {"method"}
    assert {HeadConfig().method, LayersConfig().method} == {"head", "layers"}
    with pytest.raises(TypeError):
        HeadConfig(method="layers")  # type: ignore[call-arg]  # the tag is the class, not a setting
    with pytest.raises(ValueError, match=r"invalid LoraConfig\.r: 0"):
        LoraConfig(r=0)


def test_the_demo_config_trains_a_head_for_ten_epochs() -> None:
    from recsys.cli.train import DEMO_CONFIG
    from recsys.config import load_toml

    demo = load_toml(TrainConfig, DEMO_CONFIG).encoder_training
    assert demo == HeadConfig(validation_pairs=500, head=ProjectionConfig(max_epochs=10))
