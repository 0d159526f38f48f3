"""The pipeline's data-derived defaults (``recsys.pipeline.defaults``): a config file's explicit
value wins, even one equal to a static default; a key it leaves out gets the data's default; and a
bad table is named before any work (or, where only some data rejects it, once the data is read).

That ``recsys train``, ``recsys retrain`` and ``recsys evaluate`` get one config on one data is in
tests/test_label_windows.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import ConfigError
from recsys.pipeline.defaults import check_overrides, merged, pipeline_config_for
from recsys.pipeline.train import TrainConfig, check_train_table, train_config_for

CLOCK = np.array([1_700_000_000 + 3_600 * i for i in range(50)])
STEPS = np.arange(50)


def test_a_key_the_file_sets_wins_even_when_it_equals_a_static_default() -> None:
    # FeatureConfig's own default windows are (1, 7, 30): written in a file, they are kept on clock time
    config = pipeline_config_for(CLOCK, overrides={"features": {"windows": [1, 7, 30], "last_n": 5}})
    assert config.features.windows == (1, 7, 30) and config.features.last_n == 5
    assert config.label_protocol == "temporal" and config.label_windows == 3  # not set: the data's
    # leave-last-out labels set by hand bring their own label defaults (one window), not the clock's
    config = pipeline_config_for(CLOCK, overrides={"label_protocol": "leave-last-out"})
    assert (config.label_protocol, config.label_windows) == ("leave-last-out", 1)
    assert config.features.windows == (1, 7, 30, 90, 365)
    # a configured time unit chooses the defaults, whatever the timestamps look like
    assert pipeline_config_for(CLOCK, overrides={"time_unit": "steps"}).label_protocol == "leave-last-out"
    assert pipeline_config_for(STEPS, overrides={"time_unit": "seconds"}).label_windows == 3


def test_a_train_table_keeps_its_other_keys_and_derives_the_model() -> None:
    table = {"protocol": "temporal", "ks": [5], "model": {"ranker": {"bags": 1}}}
    config = train_config_for(CLOCK, table=table)
    assert config.protocol == "temporal" and config.ks == (5,)
    assert config.model is not None and config.model.ranker.bags == 1 and config.model.label_windows == 3
    assert table == {"protocol": "temporal", "ks": [5], "model": {"ranker": {"bags": 1}}}  # not consumed
    assert TrainConfig().for_data(STEPS).model == pipeline_config_for(STEPS)
    explicit = TrainConfig(model=pipeline_config_for(STEPS))
    assert explicit.for_data(CLOCK) is explicit  # a config object given in code is never replaced


def test_bad_tables_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'label_windowz' in f\.toml\.model"):
        check_train_table({"model": {"label_windowz": 2}}, where="f.toml")
    with pytest.raises(ConfigError, match=r"unknown key 'protocoll' in f\.toml"):
        check_train_table({"protocoll": "temporal"}, where="f.toml")
    with pytest.raises(ConfigError, match="model must be a table"):
        check_overrides(3)
    # fine for clock time, so it passes the check before the data is read; an order index rejects it
    check_train_table({"model": {"label_windows": 3}})
    with pytest.raises(ConfigError, match="needs label_protocol 'temporal'"):
        train_config_for(STEPS, table={"model": {"label_windows": 3}})


def test_merged_copies_and_lays_tables_over_each_other() -> None:
    base = {"a": {"x": 1}}
    out = merged(base, {"a": {"y": 2}})
    out["a"]["x"] = 9
    assert base == {"a": {"x": 1}} and out == {"a": {"x": 9, "y": 2}}
