"""Text retrieval: rank items by the cosine of their text embeddings to a user profile.

The item embeddings come from the BERT item encoder (``recsys.encoder``), computed offline and
passed to the constructor, so this module needs no torch. A history's profile is the
recency-weighted mean of its last ``last_n`` item embeddings (the most recent item has weight 1,
the one before ``decay``, then ``decay**2``, ...), or explicit ``weights``. Every item is scored in
blocks of histories, including items nobody has interacted with yet: cold-start items are found
as soon as they have an embedding. ``fit`` learns nothing from behaviour; it checks the catalogue
size and keeps the normalised embeddings, and, for a catalogue of at least ``ann.min_items`` items,
builds an IVF index that ``recommend`` searches instead (``recsys.candidates.ann``).

>>> from recsys.data.dataset import Histories, Interactions
>>> emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
>>> data = Interactions.from_arrays([0, 0], [0, 2], n_users=1, n_items=4)
>>> model = TextRetriever(TextRetrieverConfig(last_n=1), item_embeddings=emb).fit(data)
>>> model.recommend(Histories.from_lists([[2, 0], [2]]), 2)[0].tolist()
[[1, 3], [3, 1]]
>>> model.similar_items(np.array([2]), 1)[0].tolist()
[[3]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np

from recsys.candidates.ann import AnnConfig, AnnIndex, build_if_large, load_beside, save_beside
from recsys.candidates.artifact import read_folder, write_folder
from recsys.candidates.base import check_fitted, check_items, neighbours, ranked, unit_rows
from recsys.config import from_dict, to_dict
from recsys.data.dataset import Histories, Interactions

FORMAT = "recsys.text/1"


@dataclass(frozen=True)
class TextRetrieverConfig:
    """Parameters of :class:`TextRetriever`.

    Parameters
    ----------
    last_n
        Number of most recent history items in the profile.
    decay
        Weight ratio between consecutive history positions (1.0: plain mean of the last items).
    weights
        Explicit weights, most recent first (overrides ``decay``; length ``last_n``).
    ann
        When and how ``fit`` builds an approximate index (catalogues of ``ann.min_items`` or more).
    """

    last_n: int = 3
    decay: float = 0.5
    weights: tuple[float, ...] = ()
    ann: AnnConfig = field(default_factory=AnnConfig)

    def __post_init__(self) -> None:
        if self.last_n < 1:
            raise ValueError(f"TextRetrieverConfig.last_n must be >= 1, got {self.last_n}")
        if not 0 < self.decay <= 1:
            raise ValueError(f"TextRetrieverConfig.decay must be in (0, 1], got {self.decay}")
        if self.weights and (len(self.weights) != self.last_n or min(self.weights) < 0):
            raise ValueError(
                f"TextRetrieverConfig.weights must be {self.last_n} non-negative numbers, got {self.weights}"
            )

    def position_weights(self) -> np.ndarray:
        """(last_n,) weights aligned with ``Histories.last`` (oldest first, most recent last)."""
        w = np.asarray(self.weights, np.float32) if self.weights else self.decay ** np.arange(self.last_n)
        return np.ascontiguousarray(w[::-1], dtype=np.float32)


class TextRetriever:
    """Profile-to-item cosine retrieval over fixed item embeddings; see the module docstring.

    Attributes
    ----------
    item_embeddings_ : numpy.ndarray
        (n_items, dim) float32, L2-normalised rows (all-zero rows for items without text stay zero
        and score 0).
    ann_ : AnnIndex or None
        The IVF index over ``item_embeddings_``, for catalogues of at least ``config.ann.min_items``.
    """

    # ``fit`` reads only the embeddings and the catalogue size: the pipeline fits it once and shares it
    # between the label windows and the served model (``TwoStage.fit_source``)
    learns_from_interactions = False

    def __init__(self, config: TextRetrieverConfig | None = None, *, item_embeddings: np.ndarray) -> None:
        self.config = config or TextRetrieverConfig()
        self.item_embeddings = item_embeddings
        self.item_embeddings_: np.ndarray | None = None
        self._columns_: np.ndarray | None = None  # derived from item_embeddings_ on first use
        self.ann_: AnnIndex | None = None

    def fit(self, data: Interactions) -> Self:
        """Check that the embeddings cover ``data``'s catalogue and keep them normalised."""
        emb = np.asarray(self.item_embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != data.n_items:
            raise ValueError(
                f"item_embeddings must be (n_items={data.n_items}, dim), got shape {emb.shape}: "
                "embed the same catalogue the interactions are encoded against"
            )
        self.item_embeddings_ = unit_rows(emb, name="item_embeddings")
        self._columns_ = None
        self.ann_ = build_if_large(self.item_embeddings_, self.config.ann)
        return self

    @property
    def n_items(self) -> int:
        check_fitted(self, "item_embeddings_")
        assert self.item_embeddings_ is not None
        return int(self.item_embeddings_.shape[0])

    def profiles(self, histories: Histories) -> np.ndarray:
        """(batch, dim) recency-weighted sums of the last items' embeddings (zero for empty rows)."""
        check_fitted(self, "item_embeddings_")
        assert self.item_embeddings_ is not None
        last = histories.last(self.config.last_n)  # (batch, last_n), -1 where the history is shorter
        weights = np.where(last >= 0, self.config.position_weights()[None, :], 0.0).astype(np.float32)
        gathered = self.item_embeddings_[np.maximum(last, 0)]  # (batch, last_n, dim)
        return np.asarray(np.einsum("bl,bld->bd", weights, gathered), dtype=np.float32)

    def _score_block(self, block: Histories) -> np.ndarray:
        assert self.item_embeddings_ is not None
        profile = self.profiles(block)  # (block, dim)
        scores: np.ndarray = profile @ self._columns()  # (block, n_items)
        scores[block.lengths() == 0] = -np.inf  # no history, no evidence: the row pads with -1
        return scores

    def _queries(self, block: Histories) -> tuple[np.ndarray, np.ndarray]:
        return self.profiles(block), block.lengths() > 0  # an empty history has no profile

    def _columns(self) -> np.ndarray:
        """(dim, n_items) contiguous copy of the embeddings, made on first use.

        ``profile @ columns`` equals ``profile @ item_embeddings_.T`` up to float32 rounding, but
        OpenBLAS streams the catalogue 3-4x faster in this layout (1.0 vs 3.6 ms for 9,742 x 384 on
        one core): it is the largest single cost of a request.
        """
        if self._columns_ is None:
            assert self.item_embeddings_ is not None
            self._columns_ = np.ascontiguousarray(self.item_embeddings_.T)
        return self._columns_

    def recommend(
        self, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items by cosine to each history's profile, excluding its items unless
        ``exclude_seen`` is False: ``(ids, scores)``, (batch, n). Searched in ``ann_`` when there is one."""
        if self.ann_ is not None:
            return self.ann_.ranked(self._queries, self._score_block, histories, n, exclude_seen=exclude_seen)
        return ranked(self._score_block, histories, n, self.n_items, exclude_seen=exclude_seen)

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` nearest items of each item by embedding cosine, never the item itself (searched in
        ``ann_`` when there is one: the embeddings are unit vectors, so cosine is the inner product)."""
        check_fitted(self, "item_embeddings_")
        assert self.item_embeddings_ is not None
        emb = self.item_embeddings_
        if self.ann_ is not None:
            query = np.asarray(items, dtype=np.int64).ravel()
            check_items(query, self.n_items, "items")  # before the gather below
            return self.ann_.similar(query, emb[query], n, lambda rows: emb[rows] @ emb.T)
        return neighbours(lambda query: emb[query] @ emb.T, items, n, self.n_items)

    def save(self, path: Path) -> None:
        """A folder with ``config.json`` and ``item_embeddings.npy`` (no pickle), and ``ann/``."""
        check_fitted(self, "item_embeddings_")
        assert self.item_embeddings_ is not None
        meta = {"format": FORMAT, "config": to_dict(self.config), "n_items": self.n_items}
        write_folder(path, meta, {"item_embeddings": self.item_embeddings_})
        save_beside(self.ann_, path)

    @classmethod
    def load(cls, path: str | Path) -> TextRetriever:
        # mapped, not read: a request gathers a few history rows (the ANN index answers the rest)
        meta, arrays = read_folder(path, FORMAT, ("item_embeddings",), mapped=True)
        config = from_dict(TextRetrieverConfig, meta["config"], where=f"{path}/config.json")
        model = cls(config, item_embeddings=arrays["item_embeddings"])
        model.item_embeddings_ = np.ascontiguousarray(arrays["item_embeddings"], dtype=np.float32)
        model.ann_ = load_beside(path, model.n_items)
        return model
