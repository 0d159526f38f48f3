"""Item-based nearest neighbours (Sarwar et al. 2001; Deshpande & Karypis 2004) via ``implicit``.

The similarity of two items is the cosine (or TF-IDF / BM25 weighted cosine) between their user
columns in the training count matrix (or, with ``use_weights``, of summed event weights); each item
keeps its ``neighbours`` most similar items. A history scores item ``j`` by
``sum_i count(i) * S[i, j]`` over its items ``i``, one sparse product per block of histories,
exactly as ``implicit``'s ``ItemItemRecommender.recommend``: a history carries no weights, so the
weights shape the similarities, not the query. Items that are neighbours of no history item have no
evidence and are not recommended (their places pad with -1).

>>> from recsys.data.dataset import Histories, Interactions
>>> data = Interactions.from_arrays([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 2, 3], n_users=3, n_items=4)
>>> model = ItemKNN(ItemKNNConfig(neighbours=10, num_threads=1)).fit(data)
>>> ids, scores = model.recommend(Histories.from_lists([[0], [2]]), 2)
>>> ids.tolist()
[[1, -1], [3, -1]]
>>> model.similar_items(np.array([1]), 2)[0].tolist()
[[0, -1]]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import numpy as np
import scipy.sparse as sp

from recsys.candidates.als import count_matrix
from recsys.candidates.artifact import read_folder, write_folder
from recsys.candidates.base import (
    check_fitted,
    check_items,
    check_n,
    neighbour_sums,
    sparse_neighbours,
    sparse_ranked,
    top_entries,
)
from recsys.config import from_dict, to_dict
from recsys.data.dataset import Histories, Interactions

FORMAT = "recsys.itemknn/1"


@dataclass(frozen=True)
class ItemKNNConfig:
    """Parameters of :class:`ItemKNN`.

    Parameters
    ----------
    neighbours
        Most similar items kept per item (implicit's ``K``).
    similarity
        ``"cosine"``, ``"tfidf"`` (cosine of TF-IDF weighted columns) or ``"bm25"``.
    bm25_k1, bm25_b
        BM25 parameters (``similarity="bm25"`` only).
    num_threads
        Threads of implicit's neighbour search (0: all cores).
    use_weights
        Compare items on the summed ``weight`` of each (user, item) cell instead of its event count
        (see ``Interactions.event_matrix``). Off by default, as in ``ALSConfig``.
    """

    neighbours: int = 100
    similarity: Literal["cosine", "tfidf", "bm25"] = "cosine"
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    num_threads: int = 0
    use_weights: bool = False

    def __post_init__(self) -> None:
        checks = {
            "neighbours": self.neighbours >= 1,
            "similarity": self.similarity in ("cosine", "tfidf", "bm25"),
            "bm25_k1": self.bm25_k1 >= 0,
            "bm25_b": 0 <= self.bm25_b <= 1,
            "num_threads": self.num_threads >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ItemKNNConfig.{bad[0]} out of range: {getattr(self, bad[0])!r}")


class ItemKNN:
    """Sparse item-item neighbourhood model; see the module docstring.

    Attributes
    ----------
    similarity_ : scipy.sparse.csr_matrix
        (n_items, n_items) float32; row ``i`` holds the ``neighbours`` items most similar to ``i``.
    """

    def __init__(self, config: ItemKNNConfig | None = None) -> None:
        self.config = config or ItemKNNConfig()
        self.similarity_: sp.csr_matrix | None = None

    def fit(self, data: Interactions) -> Self:
        """Compute the top-``neighbours`` similarity row of every item."""
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender
        from implicit.utils import ParameterWarning

        cfg = self.config
        cells = data.event_matrix(use_weights=cfg.use_weights)
        if cfg.similarity == "bm25":
            model = BM25Recommender(
                K=cfg.neighbours, K1=cfg.bm25_k1, B=cfg.bm25_b, num_threads=cfg.num_threads
            )
        elif cfg.similarity == "tfidf":
            model = TFIDFRecommender(K=cfg.neighbours, num_threads=cfg.num_threads)
        else:
            model = CosineRecommender(K=cfg.neighbours, num_threads=cfg.num_threads)
        with warnings.catch_warnings():
            # implicit hands its own normalised COO matrix to the neighbour search, which then warns
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(cells, show_progress=False)
        similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
        similarity.eliminate_zeros()
        similarity.sort_indices()
        self.similarity_ = similarity
        return self

    @property
    def n_items(self) -> int:
        check_fitted(self, "similarity_")
        assert self.similarity_ is not None
        return int(self.similarity_.shape[0])

    def _recommend_one(
        self, history: Histories, n: int, *, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """One request: merge its items' neighbour lists and rank only the items they name.

        The same answer, bit for bit, as ``ranked(self._score_sparse, ...)`` (the scores add up as
        scipy's product does, ``top_entries`` orders as ``top_k``), at a cost of history x neighbours
        instead of the catalogue. Batches (offline evaluation, campaigns) take one sparse product per
        block and rank its entries (``sparse_ranked``), never a dense (block, catalogue) row either.
        """
        assert self.similarity_ is not None
        check_n(n)
        check_items(history.items, self.n_items, "histories.items")
        items, counts = np.unique(history.sequence(0), return_counts=True)
        cols, sums = neighbour_sums(self.similarity_, items, counts)
        evidence = sums != 0  # as the dense path: no evidence, no recommendation
        if exclude_seen:
            evidence &= ~np.isin(cols, items)
        return top_entries(cols[evidence], sums[evidence], n)

    def _evidence(self, block: Histories) -> sp.csr_matrix:
        """(block, n_items) sparse: ``count_matrix(block) @ similarity_``."""
        assert self.similarity_ is not None
        evidence: sp.csr_matrix = count_matrix(block, self.n_items) @ self.similarity_
        return evidence

    def _score_sparse(self, block: Histories) -> np.ndarray:
        """(block, n_items) dense :meth:`_evidence`, -inf where there is none: the reference that
        the sparse paths are tested against."""
        evidence = self._evidence(block).tocoo()
        dense = np.full((len(block), self.n_items), -np.inf, np.float32)
        dense[evidence.row, evidence.col] = evidence.data
        return dense

    def recommend(
        self, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` neighbours of each history, excluding its items unless ``exclude_seen`` is False:
        ``(ids, scores)``, (batch, n)."""
        check_fitted(self, "similarity_")
        if len(histories) == 1:
            return self._recommend_one(histories, n, exclude_seen=exclude_seen)
        return sparse_ranked(self._evidence, histories, n, self.n_items, exclude_seen=exclude_seen)

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most similar items of each item (its similarity row, never the item itself), read
        from the stored rows alone (``sparse_neighbours``: the dense reference's answer)."""
        check_fitted(self, "similarity_")
        assert self.similarity_ is not None
        return sparse_neighbours(self.similarity_, items, n)

    def save(self, path: Path) -> None:
        """Write ``config.json`` and the CSR parts of ``similarity_`` as ``.npy`` into ``path``."""
        check_fitted(self, "similarity_")
        assert self.similarity_ is not None
        meta = {"format": FORMAT, "n_items": self.n_items, "config": to_dict(self.config)}
        arrays = {
            "indptr": self.similarity_.indptr.astype(np.int64),
            "indices": self.similarity_.indices.astype(np.int32),
            "data": self.similarity_.data.astype(np.float32),
        }
        write_folder(path, meta, arrays)

    @classmethod
    def load(cls, path: Path) -> ItemKNN:
        """Read a folder written by :meth:`save`."""
        meta, arrays = read_folder(path, FORMAT, ("indptr", "indices", "data"))
        model = cls(from_dict(ItemKNNConfig, meta["config"], where=f"{Path(path) / 'config.json'}:config"))
        n = int(meta["n_items"])
        if len(arrays["indptr"]) != n + 1 or len(arrays["indices"]) != len(arrays["data"]):
            raise ValueError(f"{path}: similarity arrays do not match n_items={n}")
        model.similarity_ = sp.csr_matrix(
            (arrays["data"], arrays["indices"], arrays["indptr"]), shape=(n, n), dtype=np.float32
        )
        return model
