"""Ray Train for the two stages that train models: the encoder's fine-tuning and the LightGBM ranker.

* ``ray_finetune``: ``recsys.encoder.finetune.finetune`` on each worker of a ``TorchTrainer``, data
  parallel (``recsys.encoder.parallel``: each worker its share of the pairs, gradients averaged over
  the process group after every backward pass), for the head and for the layer methods. Rank 0's
  folder is the checkpoint, copied to ``out``: the same folder the local engine writes.
* ``ray_fit_ranker``: ``LambdaRanker.fit`` on each worker of Ray Train's ``LightGBMTrainer``, with its
  network parameters: each worker trains on whole user groups (``recsys.ranking.ranker``), and rank
  0 saves the booster bag as LightGBM text, which the driver loads. On one worker it is the local
  bag; on more, its trees can differ where ``min_data_in_leaf`` binds (``recsys.ranking.distributed``).

Every worker receives the arrays through the object store and keeps its share; on data too large
for one worker's memory, the rows would instead come as a Ray Dataset partitioned by user.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import ray
import ray.train

from recsys.config import from_dict, to_dict
from recsys.data.dataset import Interactions
from recsys.data.io import atomic_path
from recsys.encoder.config import EncoderConfig, FinetuneConfig
from recsys.encoder.finetune import FinetuneResult
from recsys.ranking.ranker import FitRanker, LambdaRanker, RankerConfig

RESULT = "result"  # the metric that carries a worker's FinetuneResult fields, as JSON
# fewer user groups than this per worker and the ranker trains on fewer workers: a worker's share
# must hold training groups after the held-out ones are taken, and a few groups gain nothing from more
MIN_GROUPS_PER_WORKER = 10


def _run_config(storage: str, name: str) -> Any:
    from ray.train import RunConfig

    return RunConfig(storage_path=storage, name=name)


def ray_finetune(
    items: pl.DataFrame,
    train: Interactions,
    config: FinetuneConfig,
    *,
    out: Path,
    encoder: EncoderConfig,
    embedding_cache: Path | None,
    workers: int,
    use_gpu: bool,
) -> FinetuneResult:
    """Fine-tune on ``workers`` Ray Train workers; the encoder folder lands in ``out``."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    inputs = ray.put((items, train, config, encoder))
    with tempfile.TemporaryDirectory(prefix="recsys-ray-train-") as storage:
        trainer = TorchTrainer(
            _finetune_worker,
            train_loop_config={"inputs": inputs, "cache": str(embedding_cache) if embedding_cache else ""},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=_run_config(storage, "finetune"),
        )
        result = trainer.fit()
        assert result.checkpoint is not None, "rank 0 reports the fine-tuned encoder"
        fields = json.loads((result.metrics or {})[RESULT])
        with result.checkpoint.as_directory() as folder, atomic_path(out) as tmp:
            shutil.copytree(folder, tmp)
    return FinetuneResult(**(fields | {"path": Path(out)}))


def _finetune_worker(loop_config: dict[str, Any]) -> None:
    """One worker: the training on its share of the pairs; rank 0 saves and reports the folder."""
    from ray.train import Checkpoint

    from recsys.encoder.finetune import train_encoder
    from recsys.encoder.parallel import DataParallel

    context = ray.train.get_context()
    items, train, config, encoder = _inputs(loop_config["inputs"])
    parallel = DataParallel(rank=context.get_world_rank(), world=context.get_world_size())
    cache = Path(loop_config["cache"]) if loop_config["cache"] else None
    trained = train_encoder(items, train, config, encoder=encoder, embedding_cache=cache, parallel=parallel)
    if parallel.rank > 0:  # the same weights as rank 0's (recsys.encoder.parallel)
        ray.train.report({}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = trained.save(Path(tmp) / "encoder")
        fields = {k: v for k, v in result.__dict__.items() if k != "path"}
        ray.train.report({RESULT: json.dumps(fields)}, checkpoint=Checkpoint.from_directory(str(result.path)))


def ray_fit_ranker(*, workers: int, use_gpu: bool) -> FitRanker:
    """The ``FitRanker`` that fits on up to ``workers`` workers of Ray Train's LightGBM trainer
    (fewer when the rows hold fewer than ``MIN_GROUPS_PER_WORKER`` user groups a worker)."""

    def fit(
        config: RankerConfig, features: np.ndarray, labels: np.ndarray, groups: np.ndarray, names: list[str]
    ) -> LambdaRanker:
        from ray.train import ScalingConfig
        from ray.train.lightgbm import LightGBMTrainer

        loop_config = {
            "inputs": ray.put((features, labels, groups)),
            "config": to_dict(config),
            "names": names,
        }
        used = max(1, min(workers, len(groups) // MIN_GROUPS_PER_WORKER))
        with tempfile.TemporaryDirectory(prefix="recsys-ray-train-") as storage:
            trainer = LightGBMTrainer(
                _ranker_worker,
                train_loop_config=loop_config,
                scaling_config=ScalingConfig(num_workers=used, use_gpu=use_gpu),
                run_config=_run_config(storage, "ranker"),
            )
            result = trainer.fit()
            assert result.checkpoint is not None, "rank 0 reports the ranker"
            with result.checkpoint.as_directory() as folder:
                return LambdaRanker.load(Path(folder))

    return fit


def _ranker_worker(loop_config: dict[str, Any]) -> None:
    """One worker: the bag fitted on its user groups with LightGBM's network; rank 0 saves it."""
    from ray.train import Checkpoint
    from ray.train.lightgbm import get_network_params

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    features, labels, groups = _inputs(loop_config["inputs"])
    config = from_dict(RankerConfig, loop_config["config"])
    network = get_network_params() if world > 1 else {}
    ranker = LambdaRanker(config).fit(
        features, labels, groups, feature_names=loop_config["names"], network=network, shard=(rank, world)
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            ranker.save(Path(tmp))
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report({"rows": len(features)}, checkpoint=checkpoint)


def _inputs(value: Any) -> Any:
    """A worker's inputs: the object reference the driver put, or its value where Ray resolved it."""
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value
