"""What both fine-tuning methods share: co-occurrence pairs, the loss, held-out pair recall.

Items bought close together by the same person should land close together. Positive pairs are
items within ``window`` positions of each other in a user's history, taken from the *training*
interactions only. The loss is symmetric InfoNCE with in-batch negatives: each anchor must pick its
partner among the partners of the other pairs in the batch. A held-out set of pairs gives
pair-retrieval Recall@10 (rank the partner among all held-out items), which decides early stopping.

Also here, the bookkeeping of a run that both methods report through: the step callback
(``OnStep``), a clock of the phases, and early stopping with the best weights seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from recsys.data.dataset import Interactions
from recsys.encoder.config import FinetuneConfig, HeadConfig

EVAL_K = 10

# The step callback: it sees the records of a run as they happen. {"total": n}, the planned steps
# (layers) or epochs (head), first and again when re-planned; {"step": i, "recall@10": r} for each
# validation, the baseline at step 0 first; {"step": i, "loss": l, "lr": lr} after each step. A head
# reports per epoch instead: {"epoch": i, "recall@10": r} at 0, then {"epoch": i, "loss": l,
# "recall@10": r}. All but "total" are the run's history, saved in its metadata.
OnStep = Callable[[dict[str, float]], None]
EmbedFn = Callable[[list[int]], torch.Tensor]  # item indices -> (n, dim) unit vectors


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


def training_pairs(train: Interactions, config: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training pairs, held-out pairs): a seeded shuffle, the same held-out pairs for both methods.

    Raises ``ValueError`` when there are too few pairs for the held-out set and one batch.
    """
    pairs, _ = cooccurrence_pairs(train, window=config.window)
    batch_name, batch_size = (
        ("head.batch_size", config.head.batch_size)
        if isinstance(config, HeadConfig)
        else ("batch_size", config.batch_size)
    )
    if len(pairs) < config.validation_pairs + batch_size:
        raise ValueError(
            f"only {len(pairs)} co-occurrence pairs in the training interactions; need at least "
            f"validation_pairs + {batch_name} = {config.validation_pairs + batch_size}"
        )
    pairs = pairs[np.random.default_rng(config.seed).permutation(len(pairs))]
    held_out, pairs = pairs[: config.validation_pairs], pairs[config.validation_pairs :]
    if config.max_pairs and len(pairs) > config.max_pairs:
        pairs = pairs[: config.max_pairs]
    return pairs, held_out


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    anchor_items: torch.Tensor,
    positive_items: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives; duplicates of the true partner are masked.

    ``anchors``/``positives`` are (batch, dim) unit vectors; ``*_items`` (batch,) item ids. In-batch
    "negatives" that are in fact the same item as the positive (or the anchor itself) are masked out,
    so popular items are not pushed away from themselves.
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

    >>> emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> held_out_recall(emb, np.array([[0, 1], [2, 3]]), k=1), held_out_recall(emb, np.array([[0, 2]]), k=1)
    (1.0, 1.0)
    >>> held_out_recall(emb, np.array([[0, 2], [1, 3]]), k=1)
    0.0
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


class EarlyStopping:
    """The best held-out recall so far, the weights that gave it, and whether patience ran out.

    >>> stop = EarlyStopping(0.5, {}, patience=2)
    >>> [stop.observe(r, dict, step=s) for s, r in enumerate([0.6, 0.55, 0.6, 0.7], start=1)]
    [False, False, True, False]
    >>> stop.recall, stop.step
    (0.7, 4)
    """

    def __init__(self, recall: float, state: dict[str, torch.Tensor], *, patience: int) -> None:
        self.recall, self.state, self.patience = recall, state, patience
        self.step = self.epoch = self.bad = 0  # step 0: the starting weights are the best

    def observe(
        self, recall: float, state: Callable[[], dict[str, torch.Tensor]], *, step: int, epoch: int = 0
    ) -> bool:
        """Record a validation; True when ``patience`` validations in a row did not improve."""
        if recall > self.recall:
            self.recall, self.state, self.step, self.epoch, self.bad = recall, state(), step, epoch, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


class Clock:
    """Seconds per phase of a run: ``lap(phase)`` adds the time since the previous lap to ``phase``."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self.last
        self.last = now

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
