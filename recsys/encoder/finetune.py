"""Contrastive fine-tuning of the item encoder on the shop's own behaviour.

Items bought close together by the same person should land close together. Positive pairs are
items within ``window`` positions of each other in a user's history, taken from the *training*
interactions only (pass an evaluation task's ``train``: its targets never become pairs). The loss is
symmetric InfoNCE with in-batch negatives: each anchor must pick its partner among the partners of
the other pairs in the batch, at ``temperature``. In-batch "negatives" that are in fact the same
item as the positive (or the anchor itself) are masked out, so popular items are not pushed away
from themselves.

What is trained is ``FinetuneConfig.method``: by default a projection head on the frozen encoder's
pooled vectors (``recsys.encoder.head``; seconds on a CPU), or, with ``"layers"``, the transformer.
For the layers, optimisation is AdamW with linear warm-up and decay, gradient clipping and a seeded
order. A held-out set of pairs gives pair-retrieval Recall@10 (rank the partner among all held-out
items), measured before training and every ``eval_every`` steps (every epoch for the head); training
stops after ``patience`` measurements without improvement and the best weights are kept. With
``lora`` only low-rank adapters are trained and saved, next to a reference to the base checkpoint and
its fingerprint; a head is saved the same way.

The saved folder holds safetensors weights (or adapters, or the head), the Hugging Face config and
tokenizer, and ``recsys_encoder.json`` with both configs, the training data fingerprint and the
validation history. ``load_encoder(path)`` reads it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from recsys.data.dataset import Interactions
from recsys.data.io import atomic_path
from recsys.encoder.config import EncoderConfig, FinetuneConfig, item_texts
from recsys.encoder.model import ItemEncoder, cls_pool, load_encoder, mean_pool, save_encoder, write_meta

EVAL_K = 10


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


def cooccurrence_pairs(train: Interactions, *, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Unordered item pairs within ``window`` positions in some user's history, and their counts.

    >>> data = Interactions.from_arrays([0, 0, 0, 1, 1], [5, 6, 7, 6, 5], n_users=2, n_items=8)
    >>> pairs, counts = cooccurrence_pairs(data, window=1)
    >>> pairs.tolist(), counts.tolist()
    ([[5, 6], [6, 7]], [2, 1])
    """
    firsts, seconds = [], []
    for offset in range(1, window + 1):  # a loop over offsets, each step vectorised over all events
        same_user = train.users[:-offset] == train.users[offset:]
        firsts.append(train.items[:-offset][same_user])
        seconds.append(train.items[offset:][same_user])
    a = np.concatenate(firsts) if firsts else np.zeros(0, np.int32)
    b = np.concatenate(seconds) if seconds else np.zeros(0, np.int32)
    keep = a != b
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    if not len(lo):
        return np.zeros((0, 2), np.int32), np.zeros(0, np.int64)
    pairs, counts = np.unique(np.stack([lo, hi], axis=1), axis=0, return_counts=True)
    return pairs.astype(np.int32), counts


def data_fingerprint(train: Interactions, texts: list[str], config: FinetuneConfig) -> str:
    h = hashlib.sha256()
    for array in (train.users, train.items, train.timestamps):
        h.update(np.ascontiguousarray(array).tobytes())
    h.update("\x1f".join(texts).encode())
    h.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=list).encode())
    return h.hexdigest()


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    anchor_items: torch.Tensor,
    positive_items: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives; duplicates of the true partner are masked.

    ``anchors``/``positives`` are (batch, dim) unit vectors; ``*_items`` (batch,) item ids.
    """
    batch = anchors.shape[0]
    eye = torch.eye(batch, dtype=torch.bool, device=anchors.device)
    losses = []
    for q, k, q_items, k_items in (
        (anchors, positives, anchor_items, positive_items),
        (positives, anchors, positive_items, anchor_items),
    ):
        logits = q @ k.T / temperature  # (batch, batch)
        # column j is a false negative for row i if its key is row i's partner item or row i's query
        # item, or if its own query is row i's query item (then its key is a partner of row i too)
        false_negative = (
            (k_items[None, :] == k_items[:, None])
            | (k_items[None, :] == q_items[:, None])
            | (q_items[None, :] == q_items[:, None])
        )
        logits = logits.masked_fill(false_negative & ~eye, float("-inf"))
        target = torch.arange(batch, device=anchors.device)
        losses.append(nn.functional.cross_entropy(logits, target))
    return (losses[0] + losses[1]) / 2


EmbedFn = Callable[[list[int]], torch.Tensor]  # item indices -> (n, dim) unit vectors


def pair_recall(embed: EmbedFn, model: nn.Module, pairs: np.ndarray, *, k: int = EVAL_K) -> float:
    """Recall@k of finding each held-out partner among all held-out items (both directions)."""
    pool = np.unique(pairs)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        parts = [
            embed(pool[start : start + 128].tolist()).float().cpu().numpy()
            for start in range(0, len(pool), 128)
        ]
    model.train(was_training)
    emb = np.zeros((int(pool.max()) + 1, parts[0].shape[1]), np.float32)
    emb[pool] = np.concatenate(parts)
    return held_out_recall(emb, pairs, k=k)


def held_out_recall(embeddings: np.ndarray, pairs: np.ndarray, *, k: int = EVAL_K) -> float:
    """Recall@k of finding each pair's partner among all items of ``pairs`` (both directions).

    ``embeddings`` are (n_items, dim) unit vectors indexed by item; only the pairs' items are used.
    """
    pool, inverse = np.unique(pairs, return_inverse=True)
    inverse = inverse.reshape(pairs.shape)
    emb = embeddings[pool]
    queries = np.concatenate([inverse[:, 0], inverse[:, 1]])
    answers = np.concatenate([inverse[:, 1], inverse[:, 0]])
    scores = emb[queries] @ emb.T  # (2 * pairs, pool)
    scores[np.arange(len(queries)), queries] = -np.inf
    k_eff = min(k, len(pool) - 1)
    top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    return float((top == answers[:, None]).any(axis=1).mean())


class TopLayers:
    """Fine-tune only the top ``n`` transformer layers of a BERT-style model, on cached inputs.

    The frozen part (embeddings and the lower layers) gives the same output for an item at every
    step, so it runs once per item, under ``inference_mode``, and each training step runs only the
    top layers. On a CPU this makes a step several times cheaper than back-propagating through the
    whole network; the saved model is still a complete BERT.
    """

    def __init__(self, encoder: ItemEncoder, n: int) -> None:
        model = encoder.model
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if layers is None or not hasattr(model, "embeddings") or model.config.is_decoder:
            raise ValueError("FinetuneConfig.train_layers needs a BERT-style encoder (model.encoder.layer)")
        if not 1 <= n <= len(layers):
            raise ValueError(
                f"FinetuneConfig.train_layers must be in [1, {len(layers)}] for this model, got {n}"
            )
        self.encoder, self.model = encoder, model
        self.lower, self.upper = list(layers[: len(layers) - n]), list(layers[len(layers) - n :])
        self.states: list[torch.Tensor] = []

    def trainable(self) -> list[nn.Parameter]:
        return [p for layer in self.upper for p in layer.parameters()]

    def _mask(self, hidden: torch.Tensor, mask: torch.Tensor) -> Any:
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)

    def cache_lower(
        self, token_ids: list[list[int]], *, batch_size: int = 128, cache_dir: str | Path | None = None
    ) -> None:
        """Outputs of the frozen lower part for every item, unpadded: a list of (len_i, dim) tensors.

        With ``cache_dir`` they are read from, or else written to, two ``.npy`` files there (all
        states in one float32 array and the row offsets), named by a hash of the frozen weights (the
        model fingerprint and the number of lower layers) and of the token ids, so a re-run or a
        sweep over the top layers' settings computes them once. On a 2-core CPU the lower five
        layers of MiniLM over a 4,344-item catalogue at 128 tokens take about ten minutes.
        """
        files = self._cache_files(token_ids, cache_dir) if cache_dir is not None else None
        if files is not None and files[0].is_file() and files[1].is_file():
            flat, offsets = np.load(files[0]), np.load(files[1])
            if len(offsets) == len(token_ids) + 1 and offsets[-1] == len(flat):
                whole = torch.from_numpy(flat)
                self.states = [whole[a:b] for a, b in itertools.pairwise(offsets.tolist())]
                return
        device = self.encoder.device
        order = np.argsort([-len(t) for t in token_ids], kind="stable")
        states: list[torch.Tensor | None] = [None] * len(token_ids)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                ids, mask = self.encoder._pad([token_ids[r] for r in rows])
                ids, mask = ids.to(device), mask.to(device)
                hidden = self.model.embeddings(input_ids=ids)  # (batch, seq, dim)
                extended = self._mask(hidden, mask)
                for layer in self.lower:
                    hidden = layer(hidden, extended)
                lengths = mask.sum(1).tolist()
                for r, h, n in zip(rows, hidden, lengths, strict=True):
                    states[r] = h[:n].clone()
        self.model.train(was_training)
        self.states = [s for s in states if s is not None]
        if files is not None:
            offsets = np.concatenate([[0], np.cumsum([len(s) for s in self.states])]).astype(np.int64)
            for path, array in zip(
                files, (torch.cat(self.states).float().cpu().numpy(), offsets), strict=True
            ):
                with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # np.save(path) adds .npy
                    np.save(handle, array)

    def _cache_files(self, token_ids: list[list[int]], cache_dir: str | Path) -> tuple[Path, Path]:
        h = hashlib.sha256(f"{self.encoder.fingerprint}|lower={len(self.lower)}".encode())
        for ids in token_ids:
            h.update(np.asarray(ids, dtype=np.int32).tobytes())
            h.update(b"|")
        key = h.hexdigest()[:32]
        directory = Path(cache_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"lower-{key}.states.npy", directory / f"lower-{key}.offsets.npy"

    def share_lower(self, other: TopLayers) -> None:
        """Reuse ``other``'s cached lower-layer states; its lower part must have the same weights."""
        if len(other.lower) != len(self.lower):
            raise ValueError("share_lower needs the same number of frozen lower layers")
        mine = [p for m in [self.model.embeddings, *self.lower] for p in m.state_dict().values()]
        theirs = [p for m in [other.model.embeddings, *other.lower] for p in m.state_dict().values()]
        if len(mine) != len(theirs) or not all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True)):
            raise ValueError("share_lower: the two models' embeddings or lower layers differ")
        self.states = other.states

    def embed_all(self, *, batch_size: int = 64) -> np.ndarray:
        """(n_items, dim) float32 unit vectors of every cached item: only the top layers run."""
        order = np.argsort([-len(s) for s in self.states], kind="stable")
        out = np.zeros((len(self.states), self.encoder.dim), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self.embed(rows.tolist()).float().cpu().numpy()
        self.model.train(was_training)
        return out

    def embed(self, items: list[int]) -> torch.Tensor:
        """Pooled unit vectors of ``items`` through the top layers only. -> (len(items), dim)."""
        rows = [self.states[i] for i in items]
        length = max(len(r) for r in rows)
        device = self.encoder.device
        hidden = torch.zeros(len(rows), length, rows[0].shape[-1], device=device)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        for j, r in enumerate(rows):  # per batch row, a copy of cached states
            hidden[j, : len(r)] = r
            mask[j, : len(r)] = 1
        extended = self._mask(hidden, mask)
        for layer in self.upper:
            hidden = layer(hidden, extended)
        pool = mean_pool if self.encoder.config.pooling == "mean" else cls_pool
        return pool(hidden, mask)


def _batches(pairs: np.ndarray, config: FinetuneConfig, epoch: int, device: torch.device) -> Iterator[Any]:
    """Shuffled pair batches; a DataLoader with workers and pinned memory when training on a GPU."""
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    cuda = device.type == "cuda"
    loader = DataLoader(
        TensorDataset(torch.from_numpy(pairs.astype(np.int64))),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(pairs) >= 2 * config.batch_size,
        generator=generator,
        num_workers=config.num_workers if cuda else 0,
        pin_memory=cuda,
    )
    for (batch,) in loader:
        yield batch


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def _tensorboard(directory: str) -> Iterator[Any]:
    if not directory:
        yield None
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            "FinetuneConfig.tensorboard_dir needs the tensorboard package: pip install tensorboard"
        ) from exc
    writer = SummaryWriter(directory)
    try:
        yield writer
    finally:
        writer.close()


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, unit: str = "steps") -> Iterator[Any]:
    if not enabled:
        yield lambda **kw: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("fine-tuning"),
        BarColumn(),
        TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
        TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} R@10 {task.fields[recall]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("finetune", total=total, loss=float("nan"), lr=0.0, recall=float("nan"))
        yield lambda **kw: bar.update(task, **kw)


def finetune(
    items: pl.DataFrame,
    train: Interactions,
    config: FinetuneConfig | None = None,
    *,
    out: str | Path,
    encoder: EncoderConfig | None = None,
    state_cache: str | Path | None = None,
    embedding_cache: str | Path | None = None,
) -> FinetuneResult:
    """Fine-tune the encoder on co-occurrence pairs of ``train`` and save it into ``out``.

    ``items`` row ``i`` is item index ``i`` of ``train`` (``Dataset.items``). ``encoder`` names the
    starting checkpoint and the text template; the saved encoder keeps them (with the inference
    ``max_tokens`` of ``encoder``, not the shorter training one). With ``method = "head"`` the head
    trains on the catalogue's vectors at that inference length, embedded through
    ``embedding_cache`` (``recsys.encoder.embed.embed_items``). With ``train_layers``,
    ``state_cache`` is a folder where the frozen lower layers' outputs are kept between runs
    (see ``TopLayers.cache_lower``).
    """
    config = config or FinetuneConfig()
    encoder_config = encoder or EncoderConfig()
    if items.height != train.n_items:
        raise ValueError(f"items has {items.height} rows but the interactions index {train.n_items} items")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    texts = item_texts(items, encoder_config).to_list()
    pairs, _ = cooccurrence_pairs(train, window=config.window)
    batch_size, batch_name = (
        (config.head.batch_size, "head.batch_size")
        if config.method == "head"
        else (config.batch_size, "batch_size")
    )
    if len(pairs) < config.validation_pairs + batch_size:
        raise ValueError(
            f"only {len(pairs)} co-occurrence pairs in the training interactions; need at least "
            f"validation_pairs + {batch_name} = {config.validation_pairs + batch_size}"
        )
    pairs = pairs[rng.permutation(len(pairs))]  # the held-out pairs are the same for both methods
    held_out, pairs = pairs[: config.validation_pairs], pairs[config.validation_pairs :]
    if config.max_pairs and len(pairs) > config.max_pairs:
        pairs = pairs[: config.max_pairs]

    timings: dict[str, float] = {}  # seconds per phase, as recorded in the saved metadata
    clock = started  # texts and pairs above count as "pairs"

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[phase] = timings.get(phase, 0.0) + now - clock
        clock = now

    lap("pairs")
    base = load_encoder(encoder_config.checkpoint, config=dataclasses.replace(encoder_config, quantize=False))
    if config.method == "head":
        return _finetune_head(
            base,
            items,
            texts,
            train,
            pairs,
            held_out,
            config,
            out=Path(out),
            cache=embedding_cache,
            started=started,
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model: Any = base.model
    top = TopLayers(base, config.train_layers) if config.train_layers else None
    if top is not None and not config.lora:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in top.trainable():
            p.requires_grad_(True)
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets),
            layers_to_transform=(
                list(range(len(top.lower), len(top.lower) + len(top.upper))) if top is not None else None
            ),
            bias="none",
        )
        model = get_peft_model(model, lora)
    model.to(device).train()
    work = ItemEncoder(base.config, tokenizer=base.tokenizer, model=model, fingerprint=base.fingerprint)
    lap("load")
    token_ids = work.tokenize(texts, max_tokens=config.max_tokens)
    lap("tokenize")
    embed: EmbedFn
    if top is not None:
        top.cache_lower(token_ids, cache_dir=state_cache)
        embed = top.embed
        lap("lower_cache")
    else:
        embed = lambda items: work.embed_batch([token_ids[i] for i in items])  # noqa: E731

    steps_per_epoch = len(pairs) // config.batch_size if len(pairs) >= 2 * config.batch_size else 1
    total = config.epochs * steps_per_epoch
    if config.max_steps:
        total = min(total, config.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    plan = {"total": total, "warmup": max(1, int(config.warmup_ratio * total))}

    def lr_factor(s: int) -> float:  # linear warm-up, then linear decay to 0 at the planned last step
        if s < plan["warmup"]:
            return (s + 1) / plan["warmup"]
        return max(0.0, (plan["total"] - s) / max(1, plan["total"] - plan["warmup"]))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    timed_steps = 5  # with a time budget, the plan is fitted to the speed of the first steps
    amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

    baseline = pair_recall(embed, model, held_out)
    lap("evaluate")
    history: list[dict[str, float]] = [{"step": 0, "recall@10": baseline}]
    best_recall, best_step, best_state = baseline, 0, _trainable(model)
    bad_evals, step, stop = 0, 0, False
    train_started = time.perf_counter()
    prepare_seconds = train_started - started  # loading, tokenizing, lower-layer cache, baseline
    with _tensorboard(config.tensorboard_dir) as writer, _progress_bar(config.progress, total) as show:
        if writer is not None:
            writer.add_scalar("validation/pair_recall@10", baseline, 0)
        for epoch in range(config.epochs):
            for batch in _batches(pairs, config, epoch, device):
                a_items, b_items = batch[:, 0], batch[:, 1]
                unique, index = torch.unique(batch.reshape(-1), return_inverse=True)
                index = index.reshape(-1, 2)
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
                    emb = embed(unique.tolist())  # (unique, dim)
                    loss = info_nce(
                        emb[index[:, 0]].float(),
                        emb[index[:, 1]].float(),
                        a_items.to(device),
                        b_items.to(device),
                        config.temperature,
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                step += 1
                if step == 1:
                    train_started = time.perf_counter()
                if config.time_budget_s and step == timed_steps + 1:
                    # seconds per step (evaluations take about one eval_every-th more), then re-plan
                    per_step = (
                        (time.perf_counter() - train_started) / timed_steps * (1 + 2 / config.eval_every)
                    )
                    left = config.time_budget_s - (time.perf_counter() - started)
                    planned = max(step + 1, step + int(left / per_step))
                    if planned < plan["total"]:
                        plan["total"] = planned
                        plan["warmup"] = max(1, min(plan["warmup"], int(config.warmup_ratio * planned)))
                        total = planned
                        show(total=total)
                lr = float(schedule.get_last_lr()[0])
                loss_value = float(loss.detach())
                history.append({"step": step, "loss": loss_value, "lr": lr})
                if writer is not None:
                    writer.add_scalar("train/loss", loss_value, step)
                    writer.add_scalar("train/lr", lr, step)
                if step % config.eval_every == 0 or step == total:
                    lap("steps")
                    recall = pair_recall(embed, model, held_out)
                    lap("evaluate")
                    history.append({"step": step, "recall@10": recall})
                    if writer is not None:
                        writer.add_scalar("validation/pair_recall@10", recall, step)
                    if recall > best_recall:
                        best_recall, best_step, best_state, bad_evals = recall, step, _trainable(model), 0
                    else:
                        bad_evals += 1
                    show(recall=recall)
                    if config.progress:  # a line per validation also reaches logs that are not a terminal
                        print(
                            f"step {step}/{total}: loss {loss_value:.4f}, pair R@10 {recall:.4f} "
                            f"(best {best_recall:.4f} at step {best_step}), "
                            f"{time.perf_counter() - started:.0f}s",
                            file=sys.stderr,
                            flush=True,
                        )
                    stop = bad_evals >= config.patience
                show(advance=1, loss=loss_value, lr=lr)
                if stop or step >= total:
                    break
            if stop or step >= total:
                break

    lap("steps")
    with torch.no_grad():  # keep the best weights seen, which may be the starting ones
        named = dict(model.named_parameters())
        for name, value in best_state.items():
            named[name].copy_(value)
    model.eval().cpu()
    wall = time.perf_counter() - started
    fingerprint_data = data_fingerprint(train, texts, config)
    meta: dict[str, Any] = {
        "finetune": dataclasses.asdict(config),
        "base_checkpoint": encoder_config.checkpoint,
        "base_fingerprint": base.fingerprint,
        "data_fingerprint": fingerprint_data,
        "lora": config.lora,
        "train_pairs": len(pairs),
        "held_out_pairs": len(held_out),
        "baseline_recall@10": baseline,
        "best_recall@10": best_recall,
        "best_step": best_step,
        "steps": step,
        "wall_seconds": wall,
        "prepare_seconds": prepare_seconds,
        "seconds_per_step": timings.get("steps", 0.0) / max(1, step),
        "timings": timings,
        "device": device.type,
        "history": history,
    }
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if config.lora:
            model.save_pretrained(tmp, safe_serialization=True)  # adapters only
            base.tokenizer.save_pretrained(tmp)
            write_meta(tmp, base.config, meta)
        else:
            saved = ItemEncoder(base.config, tokenizer=base.tokenizer, model=model, fingerprint="")
            save_encoder(saved, tmp, meta=meta)
    fingerprint = load_encoder(out).fingerprint
    return FinetuneResult(
        path=out,
        fingerprint=fingerprint,
        data_fingerprint=fingerprint_data,
        baseline_recall=baseline,
        best_recall=best_recall,
        best_step=best_step,
        steps=step,
        wall_seconds=wall,
        history=history,
    )


def _finetune_head(
    base: ItemEncoder,
    items: pl.DataFrame,
    texts: list[str],
    train: Interactions,
    pairs: np.ndarray,
    held_out: np.ndarray,
    config: FinetuneConfig,
    *,
    out: Path,
    cache: str | Path | None,
    started: float,
) -> FinetuneResult:
    """``finetune`` with ``method = "head"``: embed the catalogue with ``base``, train a head, save it.

    The folder holds the tokenizer, ``head.safetensors`` and the metadata naming the base checkpoint
    and its fingerprint, like LoRA adapters; ``load_encoder`` puts the head on the base model.
    """
    from recsys.encoder.embed import embed_items
    from recsys.encoder.head import train_head

    timings = {"pairs_and_load": time.perf_counter() - started}
    clock = time.perf_counter()
    vectors = embed_items(items, encoder=base, cache_dir=cache, progress=config.progress)
    timings["embed"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with (
        _tensorboard(config.tensorboard_dir) as writer,
        _progress_bar(config.progress, config.head.max_epochs, unit="epochs") as show,
    ):

        def on_epoch(record: dict[str, float]) -> None:
            show(advance=1, loss=record["loss"], lr=config.head.lr, recall=record["recall@10"])
            if writer is not None:
                writer.add_scalar("train/loss", record["loss"], int(record["epoch"]))
                writer.add_scalar("validation/pair_recall@10", record["recall@10"], int(record["epoch"]))

        run = train_head(vectors, pairs, held_out, config, recall=held_out_recall, on_epoch=on_epoch)
    timings["train"] = time.perf_counter() - clock
    fingerprint_data = data_fingerprint(train, texts, config)
    meta: dict[str, Any] = {
        "finetune": dataclasses.asdict(config),
        "base_checkpoint": base.config.checkpoint,
        "base_fingerprint": base.fingerprint,
        "data_fingerprint": fingerprint_data,
        "lora": False,
        "head": {"hidden": run.head.hidden},
        "train_pairs": len(pairs),
        "held_out_pairs": len(held_out),
        "baseline_recall@10": run.baseline_recall,
        "best_recall@10": run.best_recall,
        "best_epoch": run.best_epoch,
        "best_step": run.best_step,
        "steps": run.steps,
        "wall_seconds": time.perf_counter() - started,
        "prepare_seconds": timings["pairs_and_load"] + timings["embed"],
        "timings": timings,
        "device": "cpu",
        "history": run.history,
    }
    with atomic_path(out) as tmp:
        tmp.mkdir()
        base.tokenizer.save_pretrained(tmp)
        run.head.save(tmp)
        write_meta(tmp, base.config, meta)
    return FinetuneResult(
        path=out,
        # the saved head holds these exact weights, so the loaded encoder's fingerprint is this one
        fingerprint=base.with_head(run.head).fingerprint,
        data_fingerprint=fingerprint_data,
        baseline_recall=run.baseline_recall,
        best_recall=run.best_recall,
        best_step=run.best_step,
        steps=run.steps,
        wall_seconds=meta["wall_seconds"],
        history=run.history,
    )
