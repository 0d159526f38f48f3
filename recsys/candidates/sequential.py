"""A small self-attentive sequential next-item model (SASRec, Kang & McAuley 2018) in torch.

Long by design: the model, its training loop and its answers read top to bottom in one file, like
nanoGPT's; its torch-free twin for serving is ``sequential_numpy.py``, held equal by a test.

The model reads a user's last ``max_len`` items and predicts the next one. Every position of every
training window is a next-item example, scored against *all* items with a full softmax (the
catalogues are thousands of items, so sampled losses buy nothing). Item vectors are shared between
input and output, and can carry a projection of frozen text embeddings::

    item_vector[i] = id_embedding[i] + W @ text_embedding[i]        # (hidden,)

so a rare or brand-new item, whose id embedding has barely moved from its small random start, still
sits near the items whose text resembles it.

Training stops early on a validation target: by default the last event of (a sample of) training
users is held out, which on a leave-last-out split is exactly the validation target. Epochs and
patience stop it, not a clock, so a seed repeats its result (an optional wall-clock budget,
``time_budget_s``, trades that for a bound); ``stop_reason_`` says which ended the fit. Torch is
imported by this module only; ``import recsys`` stays light.

>>> import numpy as np
>>> from recsys.data.dataset import Histories, Interactions
>>> rng = np.random.default_rng(0)
>>> starts = rng.integers(0, 8, size=200)                # 200 users, each walks i, i+1, i+2, ... mod 8
>>> seqs = (starts[:, None] + np.arange(6)[None, :]) % 8
>>> data = Interactions.from_arrays(np.repeat(np.arange(200), 6), seqs.ravel(), n_users=200, n_items=8)
>>> config = SequentialConfig(hidden=16, layers=1, heads=1, max_epochs=30, patience=30, seed=0)
>>> model = SequentialRecommender(config).fit(data)
>>> model.recommend(Histories.from_lists([[2, 3, 4]]), 1)[0].tolist()
[[5]]
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.candidates.ann import build_if_large, save_beside
from recsys.candidates.artifact import read_meta
from recsys.candidates.base import check_fitted, neighbours, ranked
from recsys.candidates.sequential_config import SequentialConfig as SequentialConfig  # its old home
from recsys.config import from_dict, to_dict
from recsys.data.dataset import Histories, Interactions
from recsys.data.io import atomic_path
from recsys.data.splits import EvalTask

FORMAT = "recsys.sequential/1"
# logits held at once in the loss (256 MB of float32): a batch whose positions x items exceed it is
# scored in chunks, each recomputed in the backward pass instead of kept (catalogues up to ~10k items
# at the default batch never are). 128 windows x 50 positions x 1M items would hold 25.6 GB of logits
LOSS_CELLS = 2**26
log = logging.getLogger(__name__)


# --- the network ---------------------------------------------------------------------------------
class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a position-wise MLP."""

    def __init__(self, cfg: SequentialConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.ffn_mult * cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.ffn_mult * cfg.hidden, cfg.hidden),
        )
        self.dropout = cfg.dropout
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, allowed: Tensor, *, last_only: bool = False) -> Tensor:
        """(batch, seq, hidden) -> same; with ``last_only``, (batch, 1, hidden) for the last query."""
        b, t, d = x.shape  # (batch, seq, hidden)
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        if last_only:  # recommend needs the final state only: one query, all keys
            q, allowed, x = q[:, -1:], allowed[:, :, -1:], x[:, -1:]
        q = q.reshape(b, q.shape[1], self.heads, d // self.heads).transpose(1, 2)  # (b, heads, tq, d/h)
        k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (k, v))
        # allowed: (batch, 1, tq, seq) bool, causal and not a padding key
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # (batch, heads, tq, hidden / heads)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, -1, d)))
        out: Tensor = x + self.drop(self.mlp(self.ln2(x)))
        return out


class SASRec(nn.Module):
    """Item + position embeddings, ``layers`` causal blocks; item vectors double as the output layer.

    Sequences are left-padded with the index ``n_items``; positions count back from the window's
    end, so the most recent item always has position 0 at recommend time, whatever the length.
    """

    def __init__(self, n_items: int, cfg: SequentialConfig, text: Tensor | None) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=n_items)  # row n_items: padding
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[n_items].zero_()
        self.text_proj: nn.Linear | None = None
        if text is not None:
            padded = torch.cat([text, text.new_zeros(1, text.shape[1])])  # (n_items + 1, text_dim)
            self.register_buffer("text", padded)
            self.text_proj = nn.Linear(text.shape[1], cfg.hidden, bias=False)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)

    def item_vectors(self) -> Tensor:
        """(n_items + 1, hidden) input/output vectors; the last row is padding."""
        vectors = self.item_emb.weight
        if self.text_proj is not None:
            vectors = vectors + self.text_proj(self.get_buffer("text"))
        return vectors

    def forward(self, seq: Tensor, vectors: Tensor | None = None, *, last_only: bool = False) -> Tensor:
        """(batch, seq) left-padded item indices -> (batch, seq, hidden) states.

        With ``last_only`` the final block computes the most recent position only: (batch, 1, hidden).
        """
        vectors = self.item_vectors() if vectors is None else vectors
        t = seq.shape[1]
        pad = seq == self.n_items  # (batch, seq)
        positions = torch.arange(t - 1, -1, -1, device=seq.device)  # distance from the window's end
        # F.embedding, not vectors[seq]: indexing's backward (index_put_ with accumulate) adds the
        # rows of a repeated item with racing atomic float adds once a batch holds >= 32768 values
        # and torch runs > 1 thread, so a seed did not repeat (amazon: weights ~1e-7 apart after one
        # epoch); embedding's backward gives each thread its own rows, summed in index order
        x = self.drop(F.embedding(seq, vectors) + self.pos_emb(positions))  # (batch, seq, hidden)
        causal = torch.ones(t, t, dtype=torch.bool, device=seq.device).tril()
        # every query may see itself, so all-padding rows never produce NaN; their outputs are unused
        allowed = (causal & ~pad[:, None, :]) | torch.eye(t, dtype=torch.bool, device=seq.device)
        allowed = allowed[:, None]  # (batch, 1, seq, seq)
        keep = (~pad)[..., None].to(x.dtype)
        for i, block in enumerate(self.blocks):
            final = last_only and i == len(self.blocks) - 1
            x = block(x, allowed, last_only=final) * (keep[:, -1:] if final else keep)
        return self.ln_f(x)  # type: ignore[no-any-return]


# --- the estimator -------------------------------------------------------------------------------
class SequentialRecommender:
    """SASRec-style next-item candidate generator; see the module docstring.

    Parameters
    ----------
    config
        Model and training settings.
    item_embeddings
        Optional (n_items, text_dim) float32 frozen text embeddings, row ``i`` for item ``i``.

    Attributes
    ----------
    model_ : SASRec
        The trained network (best validation epoch).
    item_counts_ : numpy.ndarray
        (n_items,) training events per item; empty histories get the most popular items.
    history_ : list of dict
        Per epoch: ``epoch``, ``loss``, ``ndcg10``, ``recall10``, ``seconds`` (since the start of fit).
    best_epoch_, best_score_, stop_reason_, fit_seconds_
        Outcome of early stopping.
    """

    def __init__(self, config: SequentialConfig | None = None, *, item_embeddings: np.ndarray | None = None):
        self.config = config or SequentialConfig()
        self.item_embeddings = item_embeddings
        self.model_: SASRec | None = None
        self.item_counts_: np.ndarray | None = None
        self.history_: list[dict[str, float]] = []
        self.best_epoch_ = 0
        self.best_score_ = float("nan")
        self.stop_reason_ = ""
        self.fit_seconds_ = 0.0

    # --- fitting ---------------------------------------------------------------------------------
    def fit(self, data: Interactions, *, validation: EvalTask | None = None) -> Self:
        """Train on ``data``, stopping early on ``validation`` (or on held-out last events).

        ``validation`` must be a task whose targets are not in ``data`` (for example
        ``split.validation`` with ``data = split.validation.train``). Without it, the last event
        of up to ``validation_users`` users is held out of ``data``.
        """
        cfg = self.config
        text = self._text_tensor(data.n_items)
        with _threads(cfg.threads):
            torch.manual_seed(cfg.seed)
            rng = np.random.default_rng(cfg.seed)
            if validation is None:
                data, validation = _hold_out_last(data, cfg.validation_users, rng)
            elif validation.train.n_items != data.n_items:
                raise ValueError(
                    f"validation has {validation.train.n_items} items but data has {data.n_items}"
                )
            windows = _windows(data, cfg.max_len)  # (n_windows, max_len + 1), -1 padded on the left
            if len(windows) == 0:
                raise ValueError("data has no user with two or more events: nothing to learn from")
            windows = np.where(windows < 0, data.n_items, windows)
            lengths = (windows != data.n_items).sum(axis=1)
            self.item_counts_ = data.item_counts().astype(np.int64)
            self.model_ = SASRec(data.n_items, cfg, text)
            self._train(windows, lengths, validation, rng)
        return self

    def _train(
        self, windows: np.ndarray, lengths: np.ndarray, val: EvalTask, rng: np.random.Generator
    ) -> None:
        cfg, model = self.config, self.model_
        assert model is not None
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        val_histories = val.train.histories(val.users)
        start = time.perf_counter()
        best_state: dict[str, Tensor] | None = None
        self.history_, self.best_score_, self.best_epoch_, since_best = [], -1.0, 0, 0
        self.stop_reason_ = "max_epochs"
        # length-bucketed batches: windows of similar length together, so little time goes on padding
        by_length = np.argsort(lengths, kind="stable")
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            jitter = rng.permutation(len(by_length))  # shuffle within equal lengths, then bucket
            order = jitter[np.argsort(lengths[jitter], kind="stable")]
            batches = np.array_split(order, math.ceil(len(order) / cfg.batch_size))
            total, count = 0.0, 0
            for i in rng.permutation(len(batches)):
                rows = batches[i]
                width = int(lengths[rows].max())
                chunk = torch.from_numpy(windows[rows, -width:].astype(np.int64))  # (batch, width)
                loss = self._loss(chunk[:, :-1], chunk[:, 1:])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total, count = total + loss.item() * len(rows), count + len(rows)
                if cfg.time_budget_s and time.perf_counter() - start > cfg.time_budget_s:
                    break
            ndcg, recall = self._validate(val_histories, val.targets)
            seconds = time.perf_counter() - start
            self.history_.append(
                {
                    "epoch": epoch,
                    "loss": total / max(count, 1),
                    "ndcg10": ndcg,
                    "recall10": recall,
                    "seconds": seconds,
                }
            )
            log.info(
                "epoch %d: loss %.4f, validation NDCG@10 %.4f, %.0f s",
                epoch,
                total / max(count, 1),
                ndcg,
                seconds,
            )
            if ndcg > self.best_score_:
                self.best_score_, self.best_epoch_, since_best = ndcg, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
            if since_best >= cfg.patience:
                self.stop_reason_ = "patience"
                break
            if cfg.time_budget_s and seconds > cfg.time_budget_s:
                self.stop_reason_ = "time_budget"
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        self.fit_seconds_ = time.perf_counter() - start

    def _loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Full-softmax cross-entropy of the next item at every non-padding position."""
        assert self.model_ is not None
        pad = self.model_.n_items
        vectors = self.model_.item_vectors()  # (n_items + 1, hidden)
        states = self.model_(inputs, vectors)  # (batch, width - 1, hidden)
        valid = (inputs != pad) & (targets != pad)
        rows = max(1, LOSS_CELLS // pad)  # positions scored at once
        if int(valid.sum()) <= rows:
            logits = states[valid] @ vectors[:pad].T  # (n_valid, n_items)
            return F.cross_entropy(logits, targets[valid])
        # the same mean, summed chunk by chunk; checkpointing frees each chunk's (rows, n_items) logits
        # after its forward pass and recomputes them in the backward pass, one chunk at a time
        from torch.utils.checkpoint import checkpoint

        kept, wanted = states[valid], targets[valid]
        total = sum(
            checkpoint(
                _summed_loss, kept[i : i + rows], vectors[:pad], wanted[i : i + rows], use_reentrant=False
            )
            for i in range(0, len(wanted), rows)
        )
        return total / len(wanted)  # type: ignore[no-any-return]

    def _validate(self, histories: Histories, targets: sp.csr_matrix) -> tuple[float, float]:
        ids, _ = self.recommend(histories, 10)
        return _ndcg_recall(ids, targets)

    def _text_tensor(self, n_items: int) -> Tensor | None:
        if self.item_embeddings is None or not self.config.use_text:
            return None
        emb = np.asarray(self.item_embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != n_items:
            raise ValueError(f"item_embeddings must have shape (n_items={n_items}, dim), got {emb.shape}")
        if not np.isfinite(emb).all():
            raise ValueError("item_embeddings holds NaN or infinite values")
        return torch.from_numpy(emb.copy())

    # --- prediction ------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        check_fitted(self, "model_")
        assert self.model_ is not None
        return self.model_.n_items

    @torch.no_grad()
    def _score_block(self, block: Histories) -> np.ndarray:
        assert self.model_ is not None and self.item_counts_ is not None
        model, pad = self.model_, self.model_.n_items
        last = block.last(self.config.max_len)  # (block, max_len), most recent last, -1 padded
        last = np.where(last < 0, pad, last).astype(np.int64)
        lengths = np.minimum(block.lengths(), self.config.max_len)
        vectors = model.item_vectors()
        user = torch.empty(len(block), vectors.shape[1])  # (block, hidden)
        # sub-batches of similar length, each cut to its longest history: little work on padding
        order = np.argsort(lengths, kind="stable")
        for rows in np.array_split(order, math.ceil(len(order) / 256)) if len(order) else []:
            width = max(int(lengths[rows].max()), 1)
            seq = torch.from_numpy(last[rows, -width:])
            user[torch.from_numpy(rows)] = model(seq, vectors, last_only=True)[:, -1]
        scores = (user @ vectors[:pad].T).numpy()  # (block, n_items)
        empty = block.lengths() == 0
        if empty.any():  # nothing to condition on: most popular first
            scores[empty] = np.log1p(self.item_counts_.astype(np.float32))
        return scores

    def recommend(
        self, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` next items per history, excluding its items unless ``exclude_seen`` is False:
        ``(ids, scores)`` (batch, n)."""
        check_fitted(self, "model_")
        assert self.model_ is not None
        was_training = self.model_.training
        self.model_.eval()
        try:
            with _threads(self.config.threads):
                return ranked(self._score_block, histories, n, self.n_items, exclude_seen=exclude_seen)
        finally:
            self.model_.train(was_training)

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """(n_items, hidden) float32 output vectors of the items."""
        check_fitted(self, "model_")
        assert self.model_ is not None
        return self.model_.item_vectors()[: self.n_items].numpy().copy()

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items whose vectors have the highest cosine with each item's (never itself)."""
        vectors = self.item_vectors()
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return neighbours(lambda query: unit[query] @ unit.T, items, n, self.n_items)

    # --- persistence -----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``, atomically."""
        from safetensors.torch import save_file

        check_fitted(self, "model_")
        assert self.model_ is not None and self.item_counts_ is not None
        meta = {
            "format": FORMAT,
            "n_items": self.n_items,
            "text_dim": None if self.model_.text_proj is None else self.model_.text_proj.in_features,
            "config": to_dict(self.config),
            "training": {
                "best_epoch": self.best_epoch_,
                "best_ndcg10": self.best_score_,
                "stop_reason": self.stop_reason_,
                "fit_seconds": self.fit_seconds_,
                "history": self.history_,
            },
        }
        tensors = {k: v.detach().contiguous() for k, v in self.model_.state_dict().items()}
        tensors["item_counts"] = torch.from_numpy(self.item_counts_.astype(np.int64))
        with atomic_path(path) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps(meta, indent=2))
            save_file(tensors, str(tmp / "model.safetensors"))
            # the final layer scores state . vector_i: an inner product the index ranks by
            save_beside(build_if_large(self.item_vectors(), self.config.ann), tmp)

    @classmethod
    def load(cls, path: Path) -> SequentialRecommender:
        """Read a folder written by :meth:`save`."""
        from safetensors.torch import load_file

        path = Path(path)
        meta = read_meta(path, FORMAT)
        config = from_dict(SequentialConfig, meta["config"], where=f"{path / 'config.json'}:config")
        tensors = load_file(str(path / "model.safetensors"))
        n_items, text_dim = int(meta["n_items"]), meta["text_dim"]
        text = None if text_dim is None else torch.zeros(n_items, int(text_dim))
        out = cls(config)
        out.item_counts_ = tensors.pop("item_counts").numpy()
        out.model_ = SASRec(n_items, config, text)
        out.model_.load_state_dict(tensors)  # strict: a missing or extra tensor is an error
        out.model_.eval()
        training = meta.get("training", {})
        out.best_epoch_ = int(training.get("best_epoch", 0))
        out.best_score_ = float(training.get("best_ndcg10", float("nan")))
        out.stop_reason_ = str(training.get("stop_reason", ""))
        out.fit_seconds_ = float(training.get("fit_seconds", 0.0))
        out.history_ = list(training.get("history", []))
        return out


# --- data preparation ----------------------------------------------------------------------------
def _summed_loss(states: Tensor, items: Tensor, targets: Tensor) -> Tensor:
    """Summed cross-entropy of ``states`` (rows, hidden) against every item (n_items, hidden)."""
    return F.cross_entropy(states @ items.T, targets, reduction="sum")


def _windows(data: Interactions, max_len: int) -> np.ndarray:
    """Cut each user's sequence, from its end, into windows of ``max_len + 1`` events.

    Consecutive windows overlap by one event, so every event after a user's first is a target
    exactly once. Returns (n_windows, max_len + 1) int64, left-padded with -1.

    >>> d = Interactions.from_arrays([0, 0, 0, 0, 1, 2, 2], [5, 6, 7, 8, 1, 2, 3], n_users=3, n_items=9)
    >>> _windows(d, 2).tolist()
    [[6, 7, 8], [-1, 5, 6], [-1, 2, 3]]
    """
    lengths = np.diff(data.indptr)
    n_win = np.where(lengths >= 2, -(-(lengths - 1) // max_len), 0)  # ceil((len - 1) / max_len)
    user = np.repeat(np.arange(data.n_users), n_win)
    k = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # window number from the end
    end = data.indptr[user + 1] - k * max_len  # exclusive end of each window
    src = end[:, None] - (max_len + 1) + np.arange(max_len + 1)[None, :]  # (n_windows, max_len + 1)
    out = np.full(src.shape, -1, dtype=np.int64)
    valid = src >= data.indptr[user][:, None]
    out[valid] = data.items[src[valid]]
    return out


def _hold_out_last(
    data: Interactions, n_users: int, rng: np.random.Generator
) -> tuple[Interactions, EvalTask]:
    """Hold out the last event of (a sample of ``n_users``) users with >= 3 events."""
    lengths = np.diff(data.indptr)
    users = np.flatnonzero(lengths >= 3).astype(np.int32)
    if len(users) == 0:
        raise ValueError("no user has 3 or more events: pass a validation task to fit()")
    if 0 < n_users < len(users):
        users = np.sort(rng.choice(users, size=n_users, replace=False)).astype(np.int32)
    last = data.indptr[users + 1] - 1
    keep = np.ones(len(data), dtype=bool)
    keep[last] = False
    train = data.select(keep)
    rows = np.arange(len(users))
    targets = sp.csr_matrix(
        (np.ones(len(users), np.float32), (rows, data.items[last])), shape=(len(users), data.n_items)
    )
    return train, EvalTask("holdout", train, users, targets)


def _ndcg_recall(ids: np.ndarray, targets: sp.csr_matrix, k: int = 10) -> tuple[float, float]:
    """Mean NDCG@k and Recall@k of ranked ``ids`` (rows aligned with ``targets``)."""
    ids = ids[:, :k]
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    hit = np.asarray(targets[rows, np.maximum(ids, 0).ravel()]).reshape(ids.shape) * (ids >= 0)
    n_rel = np.maximum(np.diff(targets.indptr), 1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    return float(np.mean((hit * discount).sum(1) / ideal)), float(np.mean(hit.sum(1) / n_rel))


class _threads:
    """Set torch's intra-op threads for a block (0: every core this process may use)."""

    def __init__(self, n: int) -> None:
        self.n = n or len(os.sched_getaffinity(0))
        self.previous = 0

    def __enter__(self) -> None:
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.previous)
