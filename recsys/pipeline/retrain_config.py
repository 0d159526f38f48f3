"""The nightly job's config (``recsys retrain --config retrain.toml``) and the state it keeps between nights.

Only ``data_dir``, ``inbox_dir`` and ``work_dir`` are required:

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "retrain.toml"
>>> _ = path.write_text('data_dir = "d"\\ninbox_dir = "i"\\nwork_dir = "w"\\n')
>>> config = load_retrain_config(path)
>>> config.on_bad_file, config.gate_days, config.keep_versions
('fail', 1.0, 5)

A ``[train.model]`` table is laid over the model that the data derives (as ``recsys train --config``
does), not read as a whole model with the static defaults: :meth:`RetrainConfig.pipeline_for`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from recsys.encoder.config import LayersConfig
from recsys.pipeline.train import TrainConfig

if TYPE_CHECKING:
    import polars as pl

    from recsys.data.dataset import Interactions
    from recsys.pipeline.two_stage import TwoStageConfig

STATE = "state.json"


@dataclass(frozen=True)
class RetrainConfig:
    """What the nightly job reads; every key but the three folders has a default (docs/NIGHTLY.md)."""

    data_dir: Path
    inbox_dir: Path
    work_dir: Path
    on_bad_file: Literal["fail", "skip"] = "fail"  # "fail": exit 2 once the valid files are done
    gate_days: float = 1.0  # the gate's held-out window: the last gate_days of data
    tolerance: float = 0.005  # refuse when the NDCG@10 interval's upper end is below -tolerance
    coverage_floor: float = 0.0  # coverage@10 over the catalogue must be above this
    keep_versions: int = 5  # bundles kept in the model store (the current one always is)
    # transformer-layer fine-tuning every this many days (0: never, the default: on amazon-scientific
    # only the head beat the frozen encoder, docs/RESULTS.md), or when new_item_share is passed
    finetune_every_days: int = 0
    new_item_share: float = 0.2  # ... or when this share of the catalogue is new tonight
    layers: LayersConfig = field(default_factory=LayersConfig)  # how the layers are fine-tuned
    # the projection head starts from production's and trains this many epochs (0: from scratch, with
    # early stopping, every night), and from scratch every head_from_scratch_every_days days
    warm_head_epochs: int = 2
    head_from_scratch_every_days: int = 7
    store: str = ""  # online store URL; "" is `recsys train`'s default
    # the pipeline, as `recsys train` reads it, without its model: a file's [train.model] table is
    # kept raw in model_overrides and laid over the data's defaults by pipeline_for
    train: TrainConfig = field(default_factory=TrainConfig)
    model_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = {
            "gate_days": self.gate_days > 0,
            "tolerance": self.tolerance >= 0,
            "coverage_floor": 0 <= self.coverage_floor < 1,
            "keep_versions": self.keep_versions >= 2,  # the current one and the one a rollback needs
            "finetune_every_days": self.finetune_every_days >= 0,
            "new_item_share": 0 < self.new_item_share <= 1,
            "warm_head_epochs": self.warm_head_epochs >= 0,
            "head_from_scratch_every_days": self.head_from_scratch_every_days >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"RetrainConfig.{key} is out of range: {getattr(self, key)!r}")

    def pipeline_for(self, data: pl.DataFrame | Interactions) -> TwoStageConfig:
        """The two-stage model fitted on ``data``: ``train.model`` when code set one, else the data's
        defaults with the file's ``[train.model]`` keys laid over them, exactly as ``recsys train
        --config`` resolves its ``[model]`` table (``recsys.pipeline.defaults.pipeline_config_for``).
        """
        from recsys.pipeline.defaults import pipeline_config_for

        if self.train.model is not None:
            return self.train.model
        return pipeline_config_for(data, overrides=self.model_overrides, where="train.model")

    def resolved(self, base: Path) -> RetrainConfig:
        """The folders made absolute against ``base`` (the config file's folder)."""
        return replace(
            self,
            data_dir=(base / self.data_dir).resolve(),
            inbox_dir=(base / self.inbox_dir).resolve(),
            work_dir=(base / self.work_dir).resolve(),
        )


def load_retrain_config(path: str | Path) -> RetrainConfig:
    """Read ``path``; relative folders are relative to the file. Raises ``ConfigError``.

    The ``[train.model]`` table is checked now as far as it can be before the data is read
    (``recsys.pipeline.defaults.check_overrides``) and kept raw in ``model_overrides``.
    """
    from recsys.config import ConfigError, from_dict, read_toml
    from recsys.pipeline.defaults import check_overrides

    table = read_toml(path)
    try:
        if "model_overrides" in table:  # the field holds [train.model]; a file has no such key
            raise ConfigError("unknown key 'model_overrides' in RetrainConfig (write a [train.model] table)")
        train = table.get("train", {})
        overrides = train.get("model", {}) if isinstance(train, dict) else {}
        if isinstance(train, dict):
            table = {**table, "train": {key: value for key, value in train.items() if key != "model"}}
        config = from_dict(RetrainConfig, table)
        check_overrides(overrides, where="train.model")
    except ValueError as exc:  # a range check of __post_init__, here or in [train]
        raise ConfigError(f"{path}: {exc}") from exc
    return replace(config, model_overrides=overrides).resolved(Path(path).resolve().parent)


@dataclass(frozen=True)
class RetrainState:
    """What one night leaves for the next, in ``work_dir/state.json`` (replaced atomically).

    ``decided_fingerprint``: the data the last finished run decided on (published or refused), so a
    night with nothing new, even after a run killed between ingest and publish, is told apart.
    """

    decided_fingerprint: str | None = None
    layers_date: str | None = None  # the last transformer-layer fine-tuning (ISO date)
    layers_encoder: str | None = None  # its folder, the base of the nightly head

    @classmethod
    def read(cls, work_dir: Path) -> RetrainState:
        path = work_dir / STATE
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def write(self, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        tmp = work_dir / f".{STATE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, work_dir / STATE)


def layers_due(config: RetrainConfig, state: RetrainState, *, today: date, new_share: float) -> str | None:
    """Why the transformer layers are fine-tuned tonight, or ``None`` (the head alone retrains).

    >>> config = RetrainConfig(Path("d"), Path("i"), Path("w"), finetune_every_days=7)
    >>> layers_due(config, RetrainState(layers_date="2026-01-01"), today=date(2026, 1, 3), new_share=0.0)
    >>> layers_due(config, RetrainState(layers_date="2026-01-01"), today=date(2026, 1, 8), new_share=0.0)
    'schedule: 7 days since 2026-01-01'
    >>> layers_due(config, RetrainState(layers_date="2026-01-01"), today=date(2026, 1, 3), new_share=0.5)
    'new items: 50% of the catalogue (threshold 20%)'
    """
    if not config.finetune_every_days or not config.train.finetune:
        return None
    if new_share >= config.new_item_share:
        return f"new items: {new_share:.0%} of the catalogue (threshold {config.new_item_share:.0%})"
    if state.layers_date is None:
        return "schedule: never fine-tuned"
    days = (today - date.fromisoformat(state.layers_date)).days
    if days >= config.finetune_every_days:
        return f"schedule: {days} days since {state.layers_date}"
    return None


def to_json(config: RetrainConfig) -> dict[str, Any]:
    """The config as JSON-ready values (paths as strings)."""
    out: dict[str, Any] = json.loads(json.dumps(asdict(config), default=str))
    return out
