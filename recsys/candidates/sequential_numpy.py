"""Torch-free inference for a saved :class:`~recsys.candidates.sequential.SequentialRecommender`.

The service must not import torch, yet it answers with the sequential model. This module reads the
same folder (``config.json`` + ``model.safetensors``, via ``safetensors.numpy``) and runs the SASRec
forward pass in NumPy for the most recent position only. It is the plain reference next to the
torch model; a test holds the two equal. A folder saved with an IVF index (``ann/``, catalogues of
``ann.min_items`` or more) is searched instead of scoring every item; histories without items keep
the popularity answer, which is not an inner product.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Self

import numpy as np
from scipy.special import erf

from recsys.candidates.ann import AnnIndex, load_beside
from recsys.candidates.artifact import read_meta
from recsys.candidates.base import check_fitted, neighbours, ranked
from recsys.data.dataset import Histories, Interactions

FORMAT = "recsys.sequential/1"
LN_EPS = 1e-5  # torch.nn.LayerNorm's default


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + LN_EPS) * weight + bias)


def _gelu(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * x * (1.0 + erf(x / math.sqrt(2.0))))


class SequentialScorer:
    """NumPy SASRec inference over a saved sequential model folder. ``fit`` is not supported:
    train with ``SequentialRecommender`` and load its folder here."""

    def __init__(self) -> None:
        self.weights_: dict[str, np.ndarray] | None = None
        self.vectors_: np.ndarray | None = None  # (n_items + 1, hidden); last row: padding
        self.columns_: np.ndarray | None = None  # (hidden, n_items) contiguous copy of vectors_[:n_items].T
        self.meta_: dict[str, Any] = {}
        self.ann_: AnnIndex | None = None

    def fit(self, data: Interactions) -> Self:
        raise TypeError("SequentialScorer only answers; fit a SequentialRecommender and load its folder")

    @classmethod
    def load(cls, path: Path) -> SequentialScorer:
        from safetensors.numpy import load_file

        path = Path(path)
        meta = read_meta(path, FORMAT)
        weights = {k: v.astype(np.float32) for k, v in load_file(str(path / "model.safetensors")).items()}
        out = cls()
        out.meta_ = meta
        out.weights_ = weights
        vectors = weights["item_emb.weight"]
        if "text_proj.weight" in weights:
            vectors = vectors + weights["text"] @ weights["text_proj.weight"].T
        out.vectors_ = np.ascontiguousarray(vectors, dtype=np.float32)
        # the scoring layout: same products as vectors_[:n_items].T, faster with OpenBLAS
        out.columns_ = np.ascontiguousarray(out.vectors_[: int(meta["n_items"])].T)
        out.ann_ = load_beside(path, out.n_items)
        return out

    @property
    def n_items(self) -> int:
        check_fitted(self, "vectors_")
        return int(self.meta_["n_items"])

    def _last_states(self, seq: np.ndarray) -> np.ndarray:
        """(batch, width) left-padded item rows -> (batch, hidden) final state of the last position."""
        assert self.weights_ is not None and self.vectors_ is not None
        w = self.weights_
        config = self.meta_["config"]
        heads, layers = int(config["heads"]), int(config["layers"])
        b, t = seq.shape
        pad = seq == self.n_items  # (batch, seq)
        positions = np.arange(t - 1, -1, -1)  # distance from the window's end
        x = self.vectors_[seq] + w["pos_emb.weight"][positions]  # (batch, seq, hidden)
        d = x.shape[-1]
        dh = d // heads
        causal = np.tril(np.ones((t, t), dtype=bool))
        allowed = (causal[None] & ~pad[:, None, :]) | np.eye(t, dtype=bool)[None]  # (batch, tq, seq)
        keep = (~pad)[..., None].astype(np.float32)
        for i in range(layers):
            p = f"blocks.{i}."
            final = i == layers - 1
            qkv = (
                _layer_norm(x, w[p + "ln1.weight"], w[p + "ln1.bias"]) @ w[p + "qkv.weight"].T
                + w[p + "qkv.bias"]
            )
            q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
            mask = allowed
            if final:  # only the most recent position is needed from the last block
                q, x, mask = q[:, -1:], x[:, -1:], allowed[:, -1:]
            tq = q.shape[1]
            q = q.reshape(b, tq, heads, dh).transpose(0, 2, 1, 3)  # (b, heads, tq, dh)
            k = k.reshape(b, t, heads, dh).transpose(0, 2, 1, 3)  # (b, heads, t, dh)
            v = v.reshape(b, t, heads, dh).transpose(0, 2, 1, 3)
            att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)  # (b, heads, tq, t)
            att = np.where(mask[:, None], att, -np.inf)
            att = np.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            y = (att @ v).transpose(0, 2, 1, 3).reshape(b, tq, d)
            x = x + y @ w[p + "proj.weight"].T + w[p + "proj.bias"]
            h = _layer_norm(x, w[p + "ln2.weight"], w[p + "ln2.bias"])
            h = _gelu(h @ w[p + "mlp.0.weight"].T + w[p + "mlp.0.bias"]) @ w[p + "mlp.2.weight"].T
            x = (x + h + w[p + "mlp.2.bias"]) * (keep[:, -1:] if final else keep)
        out: np.ndarray = _layer_norm(x[:, -1], w["ln_f.weight"], w["ln_f.bias"])
        return out

    def _states(self, block: Histories) -> np.ndarray:
        """(block, hidden) final state of each history: its scores are ``state @ columns_``."""
        max_len = int(self.meta_["config"]["max_len"])
        width = max(1, int(min(block.lengths().max(initial=0), max_len)))
        last = block.last(width)
        return self._last_states(np.where(last < 0, self.n_items, last))

    def _queries(self, block: Histories) -> tuple[np.ndarray, np.ndarray]:
        return self._states(block), block.lengths() > 0  # empty: popularity, scored exactly

    def _score_block(self, block: Histories) -> np.ndarray:
        assert self.columns_ is not None and self.weights_ is not None
        scores = self._states(block) @ self.columns_  # (block, n_items)
        empty = block.lengths() == 0
        if empty.any():  # nothing to condition on: most popular first, as the torch model does
            scores[empty] = np.log1p(self.weights_["item_counts"].astype(np.float32))
        return np.asarray(scores, dtype=np.float32)

    def recommend(
        self, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.ann_ is not None:
            return self.ann_.ranked(self._queries, self._score_block, histories, n, exclude_seen=exclude_seen)
        return ranked(self._score_block, histories, n, self.n_items, exclude_seen=exclude_seen)

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items whose vectors have the highest cosine with each item's (never itself)."""
        assert self.vectors_ is not None
        vectors = self.vectors_[: self.n_items]
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return neighbours(lambda query: unit[query] @ unit.T, items, n, self.n_items)

    def save(self, path: Path) -> None:
        raise TypeError("SequentialScorer is read-only: save the SequentialRecommender it was loaded from")
