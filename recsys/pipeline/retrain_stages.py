"""What the nightly job builds between ingest and the gate: the encoder, the embeddings, one fitted
two-stage model, and the bundle folder that holds them.

**One fit.** ``recsys train`` fits the pipeline three times (validation task, test task, served
model). The nightly job fits it once, on the events before the gate window, and that model is both
the one the gate scores and the one published: the service runs exactly the gated model. Its
retrievers and item features are ``gate_days`` older than the data; its feature-store snapshot (the
users' histories and counts the service reads) is as of the end of the data, so every user's
latest events are answered from.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.config import to_dict
from recsys.data.dataset import Dataset
from recsys.data.io import atomic_path
from recsys.data.splits import EvalTask
from recsys.encoder.config import FinetuneConfig, HeadConfig
from recsys.pipeline import registry
from recsys.pipeline.engine import Engine, open_engine
from recsys.pipeline.lock import die_at
from recsys.pipeline.retrain_config import RetrainConfig, RetrainState, layers_due
from recsys.pipeline.train import data_fingerprint, embed_catalogue, library_versions
from recsys.pipeline.two_stage import TwoStage

Log = Callable[[dict[str, Any]], None]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


class Stages:
    """Times each stage, notes the peak memory at its end, and logs one JSON event at its start and end."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.timings: dict[str, dict[str, float]] = {}

    def event(self, event: str, **fields: Any) -> None:
        self.log({"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields})

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.event("stage_start", stage=name)
        start = time.perf_counter()
        yield
        seconds = round(time.perf_counter() - start, 3)
        self.timings[name] = {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}
        self.event("stage_end", stage=name, **self.timings[name])


def cached_vectors(cache_dir: Path) -> int:
    """Vectors in the embedding cache (every model's file): the difference is what a stage embedded."""
    files = sorted(cache_dir.glob("*.parquet")) if cache_dir.is_dir() else []
    return sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in files)


def _encoder(
    config: RetrainConfig,
    dataset: Dataset,
    task: EvalTask,
    state: RetrainState,
    stages: Stages,
    *,
    today: date,
    engine: Engine,
) -> tuple[RetrainConfig, RetrainState]:
    """Fine-tune the transformer layers when due (``layers_due``); returns the config whose encoder
    tonight's head starts from (without the head where the data has too few pairs for it), and the
    state that records it."""
    new_items = dataset.n_items - _known_items(config)
    reason = layers_due(config, state, today=today, new_share=new_items / max(dataset.n_items, 1))
    if reason is not None and (problem := _too_few_pairs(task, config.layers)):
        stages.event("layers_finetune_skipped", reason=reason, problem=problem)
    elif reason is not None:
        stages.event("layers_finetune", reason=reason)
        die_at("finetune")
        folder = config.work_dir / "encoders" / f"layers-{today.isoformat()}"
        engine.finetune(
            dataset.items,
            task.train,
            config.layers,
            out=folder,
            encoder=config.train.encoder,
            embedding_cache=config.work_dir / "embedding-cache",
        )
        state = replace(state, layers_date=today.isoformat(), layers_encoder=str(folder))
        state.write(config.work_dir)
    train = config.train
    if train.finetune and (problem := _too_few_pairs(task, train.encoder_training)):
        # a young shop: the frozen encoder tonight, the head once the data holds enough pairs
        stages.event("head_finetune_skipped", problem=problem)
        train = replace(train, finetune=False)
    if state.layers_encoder is not None:
        train = replace(train, encoder=replace(train.encoder, checkpoint=state.layers_encoder))
    return replace(config, train=train), state


def _too_few_pairs(task: EvalTask, training: FinetuneConfig) -> str | None:
    """Why fine-tuning cannot run on the training events (too few co-occurrence pairs), or ``None``."""
    from recsys.encoder.pairs import training_pairs

    try:
        training_pairs(task.train, training)
    except ValueError as exc:
        return str(exc)
    return None


def _warm_head(
    config: RetrainConfig, task: EvalTask, stages: Stages, *, today: date
) -> tuple[RetrainConfig, str | None]:
    """Start tonight's projection head from production's, unless a from-scratch head is due.

    Returns the config whose head starts where it should and the date of the from-scratch head that
    tonight's descends from (recorded in the bundle's metadata, so the schedule follows production
    through refusals and rollbacks), or ``None`` when no head trains tonight.
    """
    training = config.train.encoder_training
    if not config.train.finetune or not isinstance(training, HeadConfig):
        return config, None
    found = _production_head(config, task, today=today)
    if isinstance(found, str):
        stages.event("head_from_scratch", reason=found)
        return config, today.isoformat()
    start, since = found
    epochs = min(config.warm_head_epochs, training.head.max_epochs)
    stages.event("head_warm_start", start=str(start), epochs=epochs, from_scratch_on=since)
    head = replace(training.head, start=str(start), max_epochs=epochs)
    train = replace(config.train, encoder_training=replace(training, head=head))
    return replace(config, train=train), since


def _production_head(config: RetrainConfig, task: EvalTask, *, today: date) -> tuple[Path, str] | str:
    """(production's encoder folder, the date of its from-scratch head) when tonight's head can start
    from it, else why not."""
    from recsys.encoder.model import read_meta

    if not config.warm_head_epochs:
        return "warm_head_epochs = 0"
    try:
        bundle = registry.current().path
    except registry.RegistryError:
        return "no production bundle yet"
    meta = json.loads((bundle / "metadata.json").read_text())
    since = meta.get("encoder", {}).get("head_from_scratch")
    if since is None:  # `recsys train`'s bundles, and nights without a head
        return "production's head was not trained by this job"
    days = (today - date.fromisoformat(since)).days
    if days >= config.head_from_scratch_every_days:
        return f"schedule: {days} days since the head was trained from scratch on {since}"
    if meta["fitted_on"]["before"] > int(task.train.timestamps.max()) + 1:  # gate_days grew
        return "production was fitted on events after tonight's cutoff"
    encoder, wanted = read_meta(bundle / "encoder") or {}, config.train.encoder
    same_base = encoder.get("base_checkpoint") == wanted.checkpoint and all(
        encoder.get("encoder", {}).get(key) == getattr(wanted, key) for key in ("max_tokens", "pooling")
    )
    head = encoder.get("head", {})
    assert isinstance(config.train.encoder_training, HeadConfig)
    if not same_base or head.get("hidden") != config.train.encoder_training.head.hidden:
        return "production's head sits on another encoder or has another width"
    return bundle / "encoder", since


def _known_items(config: RetrainConfig) -> int:
    """Items of the current production bundle (0 before the first publish): the rest are new tonight."""
    try:
        path = registry.current().path / "model" / "items.parquet"
    except registry.RegistryError:
        return 0
    return pl.scan_parquet(path).select(pl.len()).collect().item() if path.exists() else 0


def build_bundle(
    config: RetrainConfig,
    dataset: Dataset,
    task: EvalTask,
    *,
    state: RetrainState,
    stages: Stages,
    events_through: int | None,
    today: date,
) -> tuple[Path, dict[str, Any], RetrainState]:
    """Embed, fine-tune the head, fit on ``task.train`` and write the bundle under ``work_dir/bundles``.

    Returns the bundle, what the run summary reports of it (items embedded, the encoder's record)
    and the state (a layers fine-tuning is recorded in it). The heavy stages run on the engine of
    ``config.train`` (``recsys.pipeline.engine``).
    """
    train = config.train
    with open_engine(train.engine, ray_address=train.ray_address) as engine:
        return _build(
            config,
            dataset,
            task,
            state=state,
            stages=stages,
            events_through=events_through,
            today=today,
            engine=engine,
        )


def _build(
    config: RetrainConfig,
    dataset: Dataset,
    task: EvalTask,
    *,
    state: RetrainState,
    stages: Stages,
    events_through: int | None,
    today: date,
    engine: Engine,
) -> tuple[Path, dict[str, Any], RetrainState]:
    started = time.perf_counter()
    cache = config.work_dir / "embedding-cache"
    version = registry.new_version()
    target = config.work_dir / "bundles" / version
    with atomic_path(target) as tmp:
        tmp.mkdir()
        with stages.stage("embed"):
            config, state = _encoder(config, dataset, task, state, stages, today=today, engine=engine)
            config, head_lineage = _warm_head(config, task, stages, today=today)
            die_at("finetune")  # the head's fine-tuning (or, with finetune = false, where it would be)
            before = cached_vectors(cache)
            embeddings, encoder_record = embed_catalogue(
                dataset,
                task.train,
                config.train,
                encoder_dir=tmp / "encoder",
                cache_dir=cache,
                engine=engine,
            )
            embedded = cached_vectors(cache) - before
            if head_lineage is not None:
                encoder_record["head_from_scratch"] = head_lineage
            stages.event("embedded", items=embedded, catalogue=dataset.n_items)
        with stages.stage("fit"):
            # the model `recsys train` and `recsys evaluate` fit on this data (recsys.pipeline.defaults)
            pipeline = config.pipeline_for(dataset.interactions)
            model = TwoStage(
                pipeline, items=dataset.items, item_embeddings=embeddings, fit_ranker=engine.fit_ranker
            ).fit(task.train)
        with stages.stage("bundle"):
            model.save(tmp / "model")
            die_at("bundle")
            _write_features(tmp, dataset, model, events_through=events_through, engine=engine)
            meta = _metadata(version, config, dataset, task, model, encoder_record)
            meta["seconds"] = {"total": time.perf_counter() - started}
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=_json_default))
    return target, {"items_embedded": embedded, "encoder": encoder_record}, state


def _write_features(
    folder: Path, dataset: Dataset, model: TwoStage, *, events_through: int | None, engine: Engine
) -> None:
    """The feature-store snapshot as of the end of the data (all of it, the gate window included)."""
    assert model.snapshot_ is not None
    timestamps = dataset.interactions.get_column("timestamp").to_numpy()
    engine.write_snapshot(
        folder / "features",
        interactions=dataset.interactions,
        items=dataset.items,
        cutoff=int(timestamps.max()) + 1,
        config=model.snapshot_.config,
        events_through=events_through,
    )


def _metadata(
    version: str,
    config: RetrainConfig,
    dataset: Dataset,
    task: EvalTask,
    model: TwoStage,
    encoder_record: dict[str, Any],
) -> dict[str, Any]:
    from recsys.pipeline.retrain_config import to_json

    return {
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_fingerprint": data_fingerprint(dataset.items, dataset.interactions),
        "dataset": dataset.summary(),
        "protocol": "nightly: fitted on the events before the gate window",
        "fitted_on": {"events": len(task.train), "before": int(task.train.timestamps.max()) + 1},
        "metrics": {},  # the gate's scores are in the run summary (work_dir/runs/)
        "fit_reports": {"served": model.report_},
        "encoder": encoder_record,
        "config": to_dict(replace(config.train, model=model.config)),
        "retrain_config": to_json(config),
        "library_versions": library_versions(),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
