"""Most popular items, optionally "recently popular" with an exponential time decay.

The baseline every personalised model must beat, and the fallback for users with no history. Each
training event adds ``2 ** (-(t_max - t) / half_life)`` to its item's score, ``t_max`` being the
latest training timestamp, so an event one half-life old counts half. Without a half-life every
event counts 1. Every history gets the same ranking, minus its own items (unless ``exclude_seen=False``).

>>> from recsys.data.dataset import Histories, Interactions
>>> data = Interactions.from_arrays([0, 0, 1, 2], [0, 1, 1, 2], n_users=3, n_items=4)
>>> model = Popularity().fit(data)
>>> ids, scores = model.recommend(Histories.from_lists([[1], []]), 3)
>>> ids.tolist(), scores.tolist()
([[0, 2, 3], [1, 0, 2]], [[1.0, 1.0, 0.0], [2.0, 1.0, 1.0]])
>>> model.item_scores().tolist()
[1.0, 2.0, 1.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from recsys.candidates.artifact import read_folder, write_folder
from recsys.candidates.base import check_fitted, check_items, check_n, drop_seen, neighbours
from recsys.config import from_dict, to_dict
from recsys.data.dataset import Histories, Interactions

FORMAT = "recsys.popularity/1"


@dataclass(frozen=True)
class PopularityConfig:
    """Parameters of :class:`Popularity`.

    Parameters
    ----------
    half_life
        Age, in timestamp units (seconds for Unix timestamps), at which an event counts half.
        ``None`` counts every event fully.
    use_weights
        Sum the events' ``weight`` column instead of counting events.
    """

    half_life: float | None = None
    use_weights: bool = False

    def __post_init__(self) -> None:
        if self.half_life is not None and not self.half_life > 0:
            raise ValueError(f"PopularityConfig.half_life must be positive or None, got {self.half_life!r}")


class Popularity:
    """Non-personalised ranking by (time-decayed) event counts.

    Attributes
    ----------
    scores_ : numpy.ndarray
        (n_items,) float32 popularity score of every item; 0 for items never seen in training.
    """

    def __init__(self, config: PopularityConfig | None = None) -> None:
        self.config = config or PopularityConfig()
        self.scores_: np.ndarray | None = None
        self._order_: np.ndarray | None = None  # derived from scores_ on first use

    def fit(self, data: Interactions) -> Self:
        """Sum the (decayed) events of each item."""
        weights = data.weights.astype(np.float64) if self.config.use_weights else np.ones(len(data))
        if self.config.half_life is not None and len(data):
            age = (data.timestamps.max() - data.timestamps).astype(np.float64)
            weights = weights * np.exp2(-age / self.config.half_life)
        self.scores_ = np.bincount(data.items, weights=weights, minlength=data.n_items).astype(np.float32)
        self._order_ = None
        return self

    @property
    def n_items(self) -> int:
        check_fitted(self, "scores_")
        assert self.scores_ is not None
        return len(self.scores_)

    def item_scores(self) -> np.ndarray:
        """(n_items,) float32 popularity of every item, read-only: what :meth:`recommend` ranks by."""
        check_fitted(self, "scores_")
        assert self.scores_ is not None
        scores = self.scores_.view()
        scores.flags.writeable = False
        return scores

    def recommend(
        self, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items not in each history (any item when ``exclude_seen`` is False):
        ``(ids, scores)`` of shape (batch, n)."""
        check_fitted(self, "scores_")
        assert self.scores_ is not None
        check_n(n)
        check_items(histories.items, self.n_items, "histories.items")
        order = self._order()
        # the best n plus as many as a row's history can remove: enough for every row, from one head
        longest = int(histories.lengths().max(initial=0)) if exclude_seen else 0
        head = order[: n + longest]
        ids = np.broadcast_to(head.astype(np.int32), (len(histories), len(head)))
        scores = np.broadcast_to(self.scores_[head], ids.shape)
        if exclude_seen:
            ids, scores = drop_seen(ids, scores, histories)
        out_ids = np.full((len(histories), n), -1, dtype=np.int32)
        out_scores = np.full((len(histories), n), -np.inf, dtype=np.float32)
        width = min(n, ids.shape[1])
        out_ids[:, :width], out_scores[:, :width] = ids[:, :width], scores[:, :width]
        return out_ids, out_scores

    def _order(self) -> np.ndarray:
        """Every item by descending score, ties in item order (``top_k``'s order); made once."""
        if self._order_ is None:
            assert self.scores_ is not None
            order = np.argsort(-self.scores_, kind="stable")
            self._order_ = order[-self.scores_[order] < np.inf]  # as top_k: -inf or NaN is never listed
        return self._order_

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items other than each query item (popularity knows no similarity)."""
        check_fitted(self, "scores_")
        assert self.scores_ is not None
        popular = self.scores_
        return neighbours(lambda query: np.tile(popular, (len(query), 1)), items, n, self.n_items)

    def save(self, path: Path) -> None:
        """Write ``config.json`` and ``scores.npy`` into the folder ``path``, atomically."""
        check_fitted(self, "scores_")
        assert self.scores_ is not None
        meta = {"format": FORMAT, "n_items": self.n_items, "config": to_dict(self.config)}
        write_folder(path, meta, {"scores": self.scores_})

    @classmethod
    def load(cls, path: Path) -> Popularity:
        """Read a folder written by :meth:`save`."""
        meta, arrays = read_folder(path, FORMAT, ("scores",))
        model = cls(from_dict(PopularityConfig, meta["config"], where=f"{Path(path) / 'config.json'}:config"))
        if arrays["scores"].shape != (int(meta["n_items"]),):
            raise ValueError(f"{path}: scores.npy does not match n_items={meta['n_items']}")
        model.scores_ = arrays["scores"].astype(np.float32)
        return model
