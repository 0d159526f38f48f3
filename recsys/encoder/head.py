"""A projection head trained on the shop's behaviour, on top of the frozen encoder's pooled vectors.

``ProjectionHead`` maps a unit vector ``x`` to ``normalize(x + relu(x U) D)``. ``D`` starts at zero,
so before training the head returns the frozen encoder's vectors unchanged; training moves items that
are bought together closer while the residual keeps what the text already says (near-duplicates stay
near). It runs on the pooled vectors, so training needs the catalogue embedded once (through the
embedding cache) and then takes seconds on a CPU, and every new item gets a vector from its text.

``train_head`` fits it with the fine-tuning loss of ``recsys.encoder.pairs`` (symmetric InfoNCE over
co-occurrence pairs, in-batch negatives), AdamW, one pass over the shuffled pairs per epoch, and early
stopping on held-out pair Recall@10 measured every epoch; the best weights are kept (the start, a zero
residual, included). On amazon-scientific this beats the frozen encoder on validation where training
transformer layers did not (docs/RESULTS.md, Encoder). A warm start from an earlier head (``start``,
the nightly job's way) trains a fixed number of epochs instead (``ProjectionConfig.start``).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.encoder.config import HeadConfig
from recsys.encoder.pairs import EarlyStopping, OnStep, held_out_recall, info_nce
from recsys.encoder.parallel import DataParallel
from recsys.encoder.threads import intra_op_threads

HEAD_FILE = "head.safetensors"


class ProjectionHead(nn.Module):
    """Residual one-hidden-layer MLP on unit vectors, L2-normalised: the identity before training."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        nn.init.normal_(self.up.weight, std=dim**-0.5)
        nn.init.zeros_(self.down.weight)

    @property
    def hidden(self) -> int:
        return int(self.up.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x + self.down(torch.relu(self.up(x))), dim=-1)

    def digest(self) -> str:
        """sha256 of the weights: part of the fingerprint of an encoder that carries this head."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
        return h.hexdigest()

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(weights, directory / HEAD_FILE)

    @classmethod
    def load(cls, directory: Path, *, dim: int, hidden: int) -> ProjectionHead:
        """Read ``head.safetensors`` (no pickle); shapes must match ``dim`` and ``hidden``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = directory / HEAD_FILE
        head = cls(dim, hidden)
        try:
            head.load_state_dict(load_file(path))
        except (OSError, SafetensorError, RuntimeError) as exc:  # missing, corrupt, wrong keys or shapes
            expected = f"dim {dim}, hidden {hidden}"
            raise ValueError(f"{path}: cannot load a projection head ({expected}): {exc}") from exc
        return head.eval()


@dataclass(frozen=True)
class HeadRun:
    head: ProjectionHead  # the best weights seen
    baseline_recall: float  # held-out pair Recall@10 of the start (the frozen vectors, or a warm start)
    best_recall: float
    best_epoch: int  # 0: no epoch beat the start (the head is unchanged); a warm start: the last epoch
    best_step: int  # optimiser steps taken when the best weights were seen
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


def train_head(
    vectors: np.ndarray,
    pairs: np.ndarray,
    held_out: np.ndarray,
    config: HeadConfig,
    *,
    start: ProjectionHead | None = None,
    on_step: OnStep = lambda record: None,
    parallel: DataParallel | None = None,
) -> HeadRun:
    """Fit a head on (n_items, dim) unit ``vectors`` and (n, 2) item-index ``pairs``.

    ``held_out`` pairs are scored (Recall@10) before training and after every epoch; ``on_step``
    sees each record of the history as it is made (``recsys.encoder.pairs.OnStep``). With
    ``parallel`` this worker trains on its share of ``pairs`` (``recsys.encoder.parallel``). From a
    ``start`` head (not changed; a copy trains) it runs ``max_epochs`` and keeps the last weights.
    """
    settings = config.head
    with intra_op_threads(settings.threads):
        return _train(vectors, pairs, held_out, config, start=start, on_step=on_step, parallel=parallel)


def _train(
    vectors: np.ndarray,
    pairs: np.ndarray,
    held_out: np.ndarray,
    config: HeadConfig,
    *,
    start: ProjectionHead | None,
    on_step: OnStep,
    parallel: DataParallel | None,
) -> HeadRun:
    settings = config.head
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    pairs = pairs if parallel is None else parallel.shard(pairs)
    head = ProjectionHead(x.shape[1], settings.hidden) if start is None else copy.deepcopy(start).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=config.weight_decay)
    batch = min(settings.batch_size, len(pairs))

    def evaluate() -> float:
        head.eval()
        with torch.inference_mode():
            score = held_out_recall(head(x).numpy(), held_out)
        head.train()
        return score

    def state() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in head.state_dict().items()}

    history: list[dict[str, float]] = [{"epoch": 0, "recall@10": evaluate()}]
    on_step({"total": settings.max_epochs})
    on_step(history[0])
    best = EarlyStopping(history[0]["recall@10"], state(), patience=config.patience)
    steps = 0
    for epoch in range(1, settings.max_epochs + 1):
        order = rng.permutation(len(pairs))
        losses = []
        for first in range(0, len(order) - batch + 1, batch):  # the last partial batch is dropped
            chosen = torch.from_numpy(pairs[order[first : first + batch]].astype(np.int64))  # (batch, 2)
            out = head(x[chosen.reshape(-1)]).reshape(batch, 2, -1)
            loss = info_nce(out[:, 0], out[:, 1], chosen[:, 0], chosen[:, 1], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if parallel is not None:
                parallel.average_gradients(head.parameters())
            torch.nn.utils.clip_grad_norm_(head.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            steps += 1
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "recall@10": evaluate()}
        history.append(record)
        on_step(record)
        if start is None and best.observe(record["recall@10"], state, step=steps, epoch=epoch):
            break
    baseline = history[0]["recall@10"]
    if start is not None:  # held-out recall was the start's training data: the last weights stand
        return HeadRun(
            head.eval(), baseline, history[-1]["recall@10"], settings.max_epochs, steps, steps, history
        )
    head.load_state_dict(best.state)
    return HeadRun(head.eval(), baseline, best.recall, best.epoch, best.step, steps, history)
