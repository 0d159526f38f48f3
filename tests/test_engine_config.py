"""The engine switch: validated on load, and the local engine's path imports no Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsys.config import ConfigError, from_dict
from recsys.pipeline.retrain_config import load_retrain_config
from recsys.pipeline.train import TrainConfig, check_train_table


def test_engine_and_address_are_read_and_checked() -> None:
    config = from_dict(TrainConfig, {"engine": "ray", "ray_address": "ray://head:10001"})
    assert (config.engine, config.ray_address) == ("ray", "ray://head:10001")
    assert from_dict(TrainConfig, {}).engine == "local"
    with pytest.raises(ConfigError, match=r"TrainConfig.engine must be one of 'local', 'ray', got 'spark'"):
        check_train_table({"engine": "spark"})
    with pytest.raises(ConfigError, match=r"ray_address must be .* got 'http://head:8265'"):
        from_dict(TrainConfig, {"engine": "ray", "ray_address": "http://head:8265"})
    with pytest.raises(ConfigError, match='ray_address is only read with engine = "ray"'):
        from_dict(TrainConfig, {"ray_address": "auto"})


def test_retrain_config_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "retrain.toml"
    path.write_text(
        'data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\n[train]\nengine = "ray"\nray_address = "auto"\n'
    )
    assert load_retrain_config(path).train.engine == "ray"
    path.write_text('data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\n[train]\nengine = "Ray"\n')
    with pytest.raises(ConfigError, match=r"retrain.toml: RetrainConfig.train.engine must be one of"):
        load_retrain_config(path)


def test_the_local_path_imports_no_ray() -> None:
    code = (
        "import sys\n"
        "import recsys.pipeline.train, recsys.pipeline.retrain, recsys.pipeline.retrain_stages\n"
        "import recsys.pipeline.engine, recsys.cli, recsys.cli.train, recsys.cli.retrain\n"
        "from recsys.pipeline.engine import open_engine\n"
        "with open_engine('local') as engine: assert engine.name == 'local'\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not loaded, loaded\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
