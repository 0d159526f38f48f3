"""Contrastive fine-tuning of the item encoder on the shop's own behaviour: one entry point.

``finetune`` takes co-occurrence pairs from the *training* interactions only (pass an evaluation
task's ``train``: its targets never become pairs) and holds some out (``recsys.encoder.pairs``). What
it trains is the config's method: by default (``HeadConfig``) a projection head on the frozen
encoder's pooled vectors (``recsys.encoder.head``; seconds on a CPU), or with ``LayersConfig`` the
transformer (``recsys.encoder.layers``: all layers, the top few, or LoRA adapters). Both report each
step to one callback, which draws the progress bar, prints a line per validation and writes
TensorBoard scalars (run-time options of ``finetune``, not of the config).

The saved folder holds the tokenizer and the weights (the whole BERT in safetensors, or only LoRA
adapters or the head, next to a reference to the base checkpoint and its fingerprint) and
``recsys_encoder.json``: both configs (``finetune`` is the fine-tuning config as written when the
folder was; folders written before the configs were split into methods hold one flat table), the
training data fingerprint, the validation history and where the time went. ``load_encoder(path)``
reads it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch

from recsys.config import to_dict
from recsys.data.dataset import Interactions
from recsys.data.io import atomic_path
from recsys.encoder.config import EncoderConfig, FinetuneConfig, HeadConfig, LayersConfig, item_texts
from recsys.encoder.model import ItemEncoder, load_encoder, write_meta
from recsys.encoder.pairs import Clock, OnStep, training_pairs
from recsys.encoder.parallel import DataParallel

if TYPE_CHECKING:
    from recsys.encoder.head import ProjectionHead


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run produced; ``path`` loads with ``load_encoder(path)``."""

    path: Path
    fingerprint: str  # of the saved encoder, as load_encoder(path).fingerprint reports it
    data_fingerprint: str  # training interactions + item texts + config
    baseline_recall: float  # held-out pair Recall@10 before any update
    best_recall: float
    best_step: int  # 0: no update beat the starting model, which is what was saved
    steps: int
    wall_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        return self.best_step > 0


def data_fingerprint(train: Interactions, texts: list[str], config: FinetuneConfig) -> str:
    h = hashlib.sha256()
    for array in (train.users, train.items, train.timestamps):
        h.update(np.ascontiguousarray(array).tobytes())
    h.update("\x1f".join(texts).encode())
    h.update(json.dumps(to_dict(config), sort_keys=True, default=list).encode())
    return h.hexdigest()


def finetune(
    items: pl.DataFrame,
    train: Interactions,
    config: FinetuneConfig | None = None,
    *,
    out: str | Path,
    encoder: EncoderConfig | None = None,
    state_cache: str | Path | None = None,
    embedding_cache: str | Path | None = None,
    progress: bool = False,
    tensorboard_dir: str | Path | None = None,
) -> FinetuneResult:
    """Fine-tune the encoder on co-occurrence pairs of ``train`` and save it into ``out``.

    ``items`` row ``i`` is item index ``i`` of ``train`` (``Dataset.items``). ``encoder`` names the
    starting checkpoint and the text template; the saved encoder keeps them (with the inference
    ``max_tokens`` of ``encoder``, not the shorter training one of ``LayersConfig``). The head trains
    on the catalogue's vectors at that inference length, embedded through ``embedding_cache``
    (``recsys.encoder.embed.embed_items``). With ``train_layers``, ``state_cache`` is a folder where
    the frozen lower layers' outputs are kept between runs (see ``TopLayers.cache_lower``).
    ``progress`` shows a bar and a line per validation on stderr; ``tensorboard_dir`` (which needs the
    tensorboard package) receives the loss, learning rate and held-out recall.
    """
    trained = train_encoder(
        items,
        train,
        config,
        encoder=encoder,
        state_cache=state_cache,
        embedding_cache=embedding_cache,
        progress=progress,
        tensorboard_dir=tensorboard_dir,
    )
    return trained.save(out)


def train_encoder(
    items: pl.DataFrame,
    train: Interactions,
    config: FinetuneConfig | None = None,
    *,
    encoder: EncoderConfig | None = None,
    state_cache: str | Path | None = None,
    embedding_cache: str | Path | None = None,
    progress: bool = False,
    tensorboard_dir: str | Path | None = None,
    parallel: DataParallel | None = None,
) -> Trained:
    """:func:`finetune`'s training, in memory; ``.save(out)`` writes the folder. With ``parallel``
    this process is one worker of a data-parallel run (``recsys.encoder.parallel``) that trains on
    its share of the pairs: every worker ends with the same weights, and one of them saves them."""
    config = config or HeadConfig()
    encoder_config = encoder or EncoderConfig()
    if items.height != train.n_items:
        raise ValueError(f"items has {items.height} rows but the interactions index {train.n_items} items")
    clock = Clock()  # seconds per phase, as recorded in the saved metadata
    torch.manual_seed(config.seed)
    texts = item_texts(items, encoder_config).to_list()
    pairs, held_out = training_pairs(train, config)
    clock.lap("pairs")
    base = load_encoder(encoder_config.checkpoint, config=dataclasses.replace(encoder_config, quantize=False))
    clock.lap("load")
    with _Report(progress=progress, tensorboard_dir=tensorboard_dir, clock=clock) as on_step:
        if isinstance(config, HeadConfig):
            run = _fit_head(
                base,
                items,
                (pairs, held_out),
                config,
                clock=clock,
                cache=embedding_cache,
                progress=progress,
                on_step=on_step,
                parallel=parallel,
            )
        else:
            run = _fit_layers(
                base,
                texts,
                (pairs, held_out),
                config,
                clock=clock,
                state_cache=state_cache,
                on_step=on_step,
                parallel=parallel,
            )
    meta: dict[str, Any] = {
        "finetune": to_dict(config),
        "base_checkpoint": encoder_config.checkpoint,
        "base_fingerprint": base.fingerprint,
        "data_fingerprint": data_fingerprint(train, texts, config),
        **run.meta,
        "train_pairs": len(pairs),
        "held_out_pairs": len(held_out),
        "baseline_recall@10": run.baseline_recall,
        "best_recall@10": run.best_recall,
        "best_step": run.best_step,
        "steps": run.steps,
        "wall_seconds": clock.elapsed(),
        "prepare_seconds": run.prepare_seconds,
        "timings": clock.timings,
        "history": run.history,
    }
    return Trained(base, run, meta)


@dataclass(frozen=True)
class Trained:
    """A fine-tuned encoder in memory (:func:`train_encoder`): the base, what trained, the metadata."""

    base: ItemEncoder
    run: _Run
    meta: dict[str, Any]

    def save(self, out: str | Path) -> FinetuneResult:
        """Write the encoder folder ``out`` (atomically) and describe it."""
        out, run = Path(out), self.run
        with atomic_path(out) as tmp:
            tmp.mkdir()
            self.base.tokenizer.save_pretrained(tmp)
            run.write(tmp)
            write_meta(tmp, self.base.config, self.meta)
        return FinetuneResult(
            path=out,
            fingerprint=load_encoder(out).fingerprint,
            data_fingerprint=self.meta["data_fingerprint"],
            baseline_recall=run.baseline_recall,
            best_recall=run.best_recall,
            best_step=run.best_step,
            steps=run.steps,
            wall_seconds=self.meta["wall_seconds"],
            history=run.history,
        )


@dataclass(frozen=True)
class _Run:
    """What a method trained, in the terms ``finetune`` records and saves."""

    baseline_recall: float
    best_recall: float
    best_step: int
    steps: int
    prepare_seconds: float  # before the first update
    history: list[dict[str, float]]
    meta: dict[str, Any]  # what only this method records ("lora", "head", "device", ...)
    write: Callable[[Path], None]  # its weights (the whole BERT, LoRA adapters or the head) into a folder


def _fit_head(
    base: ItemEncoder,
    items: pl.DataFrame,
    split: tuple[np.ndarray, np.ndarray],
    config: HeadConfig,
    *,
    clock: Clock,
    cache: str | Path | None,
    progress: bool,
    on_step: OnStep,
    parallel: DataParallel | None,
) -> _Run:
    """Embed the catalogue with ``base`` (through the cache), then train a head on the vectors
    (from the head of ``config.head.start`` when it names one)."""
    from recsys.encoder.embed import embed_items
    from recsys.encoder.head import train_head

    vectors = embed_items(items, encoder=base, cache_dir=cache, progress=progress)
    start = _start_head(Path(config.head.start), base, config) if config.head.start else None
    clock.lap("embed")
    prepare_seconds = clock.elapsed()
    run = train_head(vectors, *split, config, start=start, on_step=on_step, parallel=parallel)
    clock.lap("train")
    meta = {
        "lora": False,
        "head": {"hidden": run.head.hidden, "start": config.head.start},
        "best_epoch": run.best_epoch,
        "device": "cpu",
    }
    scores = (run.baseline_recall, run.best_recall, run.best_step, run.steps)
    return _Run(*scores, prepare_seconds, run.history, meta, run.head.save)


def _start_head(folder: Path, base: ItemEncoder, config: HeadConfig) -> ProjectionHead:
    """The head saved in the fine-tuned encoder ``folder``, checked to sit on ``base``."""
    from recsys.encoder.head import ProjectionHead
    from recsys.encoder.model import read_meta

    meta = read_meta(folder)
    if meta is None or "head" not in meta:
        raise ValueError(f"head.start = {str(folder)!r} is not an encoder folder with a projection head")
    if meta.get("base_fingerprint") != base.fingerprint:
        raise ValueError(
            f"head.start = {str(folder)!r}: its head was trained on another base encoder "
            f"({meta.get('base_checkpoint')!r}), not on the one this run fine-tunes"
        )
    return ProjectionHead.load(folder, dim=base.dim, hidden=config.head.hidden)


def _fit_layers(
    base: ItemEncoder,
    texts: list[str],
    split: tuple[np.ndarray, np.ndarray],
    config: LayersConfig,
    *,
    clock: Clock,
    state_cache: str | Path | None,
    on_step: OnStep,
    parallel: DataParallel | None,
) -> _Run:
    """Train the transformer (``recsys.encoder.layers``); with LoRA only the adapters are saved."""
    from recsys.encoder.layers import train_layers

    run = train_layers(
        base, texts, *split, config, clock=clock, state_cache=state_cache, on_step=on_step, parallel=parallel
    )
    meta = {
        "lora": config.lora is not None,
        "seconds_per_step": clock.timings.get("steps", 0.0) / max(1, run.steps),
        "device": run.device,
    }

    def write(folder: Path) -> None:
        run.model.save_pretrained(folder, safe_serialization=True)  # with LoRA, the adapters only

    scores = (run.baseline_recall, run.best_recall, run.best_step, run.steps)
    return _Run(*scores, run.prepare_seconds, run.history, meta, write)


class _Report:
    """``finetune``'s step callback: a progress bar, a line per validation on stderr, TensorBoard.

    The bar opens with a run's first step record, so it never overlaps the embedding bar before it.
    """

    def __init__(self, *, progress: bool, tensorboard_dir: str | Path | None, clock: Clock) -> None:
        self.progress, self.clock = progress, clock
        self.writer = _summary_writer(tensorboard_dir) if tensorboard_dir else None
        self.bar: Any = None
        self.total, self.loss, self.best = 0, float("nan"), (float("-inf"), 0)

    def __enter__(self) -> OnStep:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.writer is not None:
            self.writer.close()

    def __call__(self, record: dict[str, float]) -> None:
        if "total" in record:
            self.total = int(record["total"])
            if self.bar is not None:
                self.bar.update(self.task, total=self.total)
            return
        unit = "step" if "step" in record else "epoch"
        at = int(record[unit])
        if self.progress and self.bar is None:
            self._open_bar(unit)
        if "loss" in record:
            self.loss = record["loss"]
            self._scalars(at, {"train/loss": self.loss, "train/lr": record.get("lr")})
            if self.bar is not None:
                self.bar.update(self.task, advance=1, loss=self.loss)
        if "recall@10" in record:
            recall = record["recall@10"]
            self._scalars(at, {"validation/pair_recall@10": recall})
            self.best = max(self.best, (recall, at), key=lambda best: best[0])  # ties: the earlier
            if self.bar is not None:
                self.bar.update(self.task, recall=recall)
            if self.progress and at > 0:  # a line per validation also reaches logs that are not a terminal
                print(
                    f"{unit} {at}/{self.total}: loss {self.loss:.4f}, pair R@10 {recall:.4f} "
                    f"(best {self.best[0]:.4f} at {unit} {self.best[1]}), {self.clock.elapsed():.0f}s",
                    file=sys.stderr,
                    flush=True,
                )

    def _scalars(self, at: int, values: dict[str, float | None]) -> None:
        for name, value in values.items():
            if self.writer is not None and value is not None:
                self.writer.add_scalar(name, value, at)

    def _open_bar(self, unit: str) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("fine-tuning"),
            BarColumn(),
            TextColumn(f"{{task.completed}}/{{task.total}} {unit}s"),
            TextColumn("loss {task.fields[loss]:.4f} R@10 {task.fields[recall]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.bar.start()
        self.task = self.bar.add_task("finetune", total=self.total, loss=float("nan"), recall=float("nan"))


def _summary_writer(directory: str | Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            "finetune(tensorboard_dir=...) needs the tensorboard package: pip install tensorboard"
        ) from exc
    return SummaryWriter(str(directory))
