"""Approximate top-k by inner product (a FAISS inverted-file index), with the exact NumPy reference.

The text, ALS and sequential sources score a query vector against every item vector: ``q . y_i``.
At a million 384-d items that exact product costs ~100 ms a request on one core. An inverted file
(IVF) cuts the catalogue into ``lists`` k-means cells and scans, per query, only the items of the
``probes`` cells whose centroids score highest: a few per cent of the catalogue, scored exactly
(``benchmarks/ann.py``; figures in docs/RESULTS.md, the choice in docs/studies/ann.md).

Why IVF and not an HNSW graph: on clustered, text-like vectors with user-profile queries (the mean
of items from one or two clusters), HNSW graphs (FAISS's and hnswlib's alike) left some queries
with none of their true top-100, however wide the search (ef 1024), while IVF's worst query still
found most of them; and IVF builds in about a minute where HNSW takes a quarter of an hour at 1M.

ALS and sequential item vectors have unequal norms, and k-means cells by inner product then favour
the long vectors. Every item is therefore lifted to the same norm ``R`` (the largest) by one extra
coordinate, and every query gets a zero there (Bachrach et al. 2014):

    y'_i = [y_i, sqrt(R^2 - |y_i|^2)],   q' = [q, 0],   q' . y'_i = q . y_i,   |y'_i| = R,

so the cells are cut by direction and the scores FAISS returns are still the sources' own. On 4,000
clustered 64-d items scaled by 0.1x-3x, 64 cells, 8 probes: recall@100 0.97 lifted, 0.83 without.
Unit text embeddings get a zero extra coordinate. Only ``rows`` (for ALS: trained items) are indexed.

The index is saved in FAISS's own binary format (``faiss.write_index``, no pickle) beside a JSON
config and the ``rows`` array. ``faiss`` is imported on first use, so ``import recsys`` stays cheap.

>>> rng = np.random.default_rng(0)
>>> items = rng.standard_normal((500, 8)).astype(np.float32)
>>> index = AnnIndex.build(items, AnnConfig(min_items=1))
>>> queries = rng.standard_normal((4, 8)).astype(np.float32)
>>> recall_at_k(index.search(queries, 10)[0], exact_top_k(items, queries, 10)[0]) > 0.9
True
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.candidates.base import (
    BLOCK_ROWS,
    ScoreFn,
    check_items,
    check_n,
    drop_seen,
    neighbours,
    ranked,
    top_k,
)
from recsys.config import from_dict, to_dict
from recsys.data.dataset import Histories
from recsys.data.io import atomic_path

FORMAT = "recsys.ann/1"
INDEX_FILE = "index.faiss"
FOLDER = "ann"  # a source's index lives in this subfolder of the source's saved folder

QueryFn = Callable[[Histories], tuple[np.ndarray, np.ndarray]]
"""``block -> (vectors (block, dim) float32, answerable (block,) bool)``: rows that are not
answerable (no evidence, or a score that is not an inner product) go to the exact path."""


@dataclass(frozen=True)
class AnnConfig:
    """When a source builds an IVF index, and how.

    Parameters
    ----------
    min_items
        Catalogue size from which ``fit`` builds the index and ``recommend`` searches it; below it
        scoring stays exact. 50,000: the bundled demo (9,742 items) and the shared data (4,344) stay
        exact with a margin of 5x, while exact scoring of 384-d vectors costs ~0.18 ms per 1,000
        items on one core (docs/studies/ann.md), several times the service's request floor at 50k.
    lists
        k-means cells (0: ``4 * sqrt(n)``, FAISS's rule of thumb, at most one per 39 items so that
        k-means has points to fit).
    probes
        Cells scanned per query: recall against speed. Items of a cell are scored exactly.
    train_iterations
        k-means iterations (FAISS's default is 25; 10 reach the same recall at 1M, docs/studies/ann.md).
    build_threads
        OpenMP threads while building (0: FAISS's default, all cores).
    """

    min_items: int = 50_000
    lists: int = 0
    probes: int = 64
    train_iterations: int = 10
    build_threads: int = 0

    def __post_init__(self) -> None:
        checks = {
            "min_items": self.min_items >= 1,
            "lists": self.lists >= 0,
            "probes": self.probes >= 1,
            "train_iterations": self.train_iterations >= 1,
            "build_threads": self.build_threads >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"AnnConfig.{bad[0]} out of range: {getattr(self, bad[0])!r}")

    def cells(self, n: int) -> int:
        """Number of k-means cells for ``n`` indexed items.

        >>> AnnConfig().cells(1_000_000), AnnConfig().cells(100), AnnConfig(lists=10).cells(1_000_000)
        (4000, 2, 10)
        """
        wanted = self.lists or int(4 * np.sqrt(n))
        return max(1, min(wanted, n // 39))


def exact_top_k(items: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: top ``k`` rows of ``items`` (n, dim) by inner product with each query, in blocks.

    >>> exact_top_k(np.eye(3, dtype=np.float32), np.array([[0.2, 0.9, 0.5]], np.float32), 2)[0].tolist()
    [[1, 2]]
    """
    ids = np.full((len(queries), k), -1, np.int32)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    rows = max(1, min(BLOCK_ROWS, 2**25 // max(len(items), 1)))  # a score block of at most 128 MB
    for start in range(0, len(queries), rows):
        block = queries[start : start + rows]
        ids[start : start + len(block)], scores[start : start + len(block)] = top_k(block @ items.T, k)
    return ids, scores


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's true ids (``truth``, -1 padded) that ``found`` holds.

    >>> round(recall_at_k(np.array([[1, 2, 3], [4, 5, -1]]), np.array([[3, 2, 9], [4, -1, -1]])), 4)
    0.8333
    """
    return float(recall_per_row(found, truth).mean())


def recall_per_row(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(rows,) share of each row's true ids that ``found`` holds (the worst row matters too).

    >>> found, truth = np.array([[1, 2, 3], [4, 5, -1]]), np.array([[3, 2, 9], [4, -1, -1]])
    >>> recall_per_row(found, truth).round(3).tolist()
    [0.667, 1.0]
    """
    rows = np.arange(len(truth), dtype=np.int64)[:, None]
    keys_true = np.where(truth >= 0, rows * (1 << 32) + truth, -1)
    keys_found = np.where(found >= 0, rows * (1 << 32) + found, -2)
    hit = np.isin(keys_true, keys_found) & (truth >= 0)
    per_row: np.ndarray = hit.sum(axis=1) / np.maximum((truth >= 0).sum(axis=1), 1)
    return per_row


class AnnIndex:
    """An inverted file over item vectors answering top-k by inner product; see the module docstring.

    Attributes
    ----------
    rows : numpy.ndarray
        (n_indexed,) int32 item index of each indexed vector, ascending.
    n_items : int
        Size of the catalogue the item indices refer to.
    """

    def __init__(self, index: Any, rows: np.ndarray, n_items: int, config: AnnConfig) -> None:
        self.index = index
        self.rows = np.ascontiguousarray(rows, dtype=np.int32)
        self.n_items = n_items
        self.config = config
        self._indexed_: np.ndarray | None = None

    @classmethod
    def build(cls, vectors: np.ndarray, config: AnnConfig, *, rows: np.ndarray | None = None) -> AnnIndex:
        """Index ``vectors[rows]`` ((n_items, dim) float32; ``rows`` defaults to all of them)."""
        import faiss

        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"ANN vectors must be a finite (n_items, dim) array, got shape {vectors.shape}")
        rows = np.arange(len(vectors), dtype=np.int32) if rows is None else np.asarray(rows, np.int32)
        check_items(rows, len(vectors), "ANN rows")
        chosen = lifted(vectors, rows)  # (n_indexed, dim + 1)
        dim, cells = chosen.shape[1], config.cells(len(chosen))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = config.train_iterations
        index.cp.max_points_per_centroid = 64  # k-means on a (seeded) sample of 64 items per cell
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(config.build_threads or previous)
        try:
            index.train(chosen)
            index.add(chosen)
        finally:
            faiss.omp_set_num_threads(previous)
        return cls(index, rows, len(vectors), config)

    @property
    def dim(self) -> int:
        """Dimension of the queries and item vectors (the index holds one more: the lift)."""
        return int(self.index.d) - 1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(queries, dim) -> ``(ids, scores)`` (queries, k): item indices and inner products, best
        first, padded with -1 / -inf where the probed cells hold fewer than ``k`` items."""
        import faiss

        check_n(k)
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"ANN queries must be (n, {self.dim}), got shape {queries.shape}")
        params = faiss.SearchParametersIVF(nprobe=self.config.probes)  # type: ignore[call-arg]
        lifted = np.ascontiguousarray(np.hstack([queries, np.zeros((len(queries), 1), np.float32)]))
        scores, found = self.index.search(lifted, k, params=params)  # (queries, k)
        ids = np.where(found >= 0, self.rows[np.maximum(found, 0)], -1).astype(np.int32)
        return ids, np.where(found >= 0, scores, -np.inf).astype(np.float32)

    def save(self, path: str | Path) -> None:
        """Write ``index.faiss`` (FAISS's binary format), ``rows.npy`` and ``config.json`` into ``path``."""
        import faiss

        with atomic_path(path) as tmp:
            tmp.mkdir()
            meta = {"format": FORMAT, "n_items": self.n_items, "config": to_dict(self.config)}
            (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            np.save(tmp / "rows.npy", self.rows, allow_pickle=False)
            faiss.write_index(self.index, str(tmp / INDEX_FILE))

    @classmethod
    def load(cls, path: str | Path) -> AnnIndex:
        """Read a folder written by :meth:`save` (no pickle: FAISS reads its own format)."""
        import faiss

        from recsys.candidates.artifact import read_arrays, read_meta

        meta = read_meta(path, FORMAT)
        config = from_dict(AnnConfig, meta["config"], where=f"{Path(path) / 'config.json'}:config")
        rows = read_arrays(path, ("rows",))["rows"]
        file = Path(path) / INDEX_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file}: index missing from the saved ANN folder")
        # mapped, not read (IO_FLAG_MMAP): the inverted lists stay in the file, a search reads the cells
        # it probes, and the workers of one machine share the pages (docs/studies/catalogue_size.md)
        index = faiss.read_index(str(file), faiss.IO_FLAG_MMAP)
        if index.ntotal != len(rows):
            raise ValueError(f"{file}: holds {index.ntotal} vectors, rows.npy names {len(rows)}")
        return cls(index, rows, int(meta["n_items"]), config)

    def ranked(
        self, queries: QueryFn, exact: ScoreFn, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``base.ranked`` through the index: the same ``(ids, scores)`` contract and padding.

        Seen items are masked by over-fetching ``n`` plus the longest history of the block and
        dropping them. A row left with fewer than ``n`` while the index holds more unseen items, and a
        row ``queries`` marks not answerable, is scored by ``exact`` (the source's exact block scorer).
        """
        check_n(n)
        check_items(histories.items, self.n_items, "histories.items")
        ids = np.full((len(histories), n), -1, dtype=np.int32)
        scores = np.full((len(histories), n), -np.inf, dtype=np.float32)
        for start in range(0, len(histories), BLOCK_ROWS):
            block = histories.rows(start, min(start + BLOCK_ROWS, len(histories)))
            vectors, answerable = queries(block)  # (block, dim), (block,)
            rows = np.flatnonzero(answerable)
            redo = np.flatnonzero(~answerable)
            if len(rows):
                asked = _subset(block, rows)
                found, found_scores, short = self._search_unseen(vectors[rows], asked, n, exclude_seen)
                ids[start + rows], scores[start + rows] = found, found_scores
                redo = np.sort(np.concatenate([redo, rows[short]]))
            if len(redo):
                ids[start + redo], scores[start + redo] = ranked(
                    exact, _subset(block, redo), n, self.n_items, exclude_seen=exclude_seen
                )
        return ids, scores

    def _search_unseen(
        self, vectors: np.ndarray, asked: Histories, n: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top ``n`` of the index for each row of ``asked`` without its history (when
        ``exclude_seen``), and which rows came back short of what the index could give."""
        available = np.full(len(asked), len(self.rows))  # (rows,) indexed items each row may get
        fetch = n
        if exclude_seen:
            fetch += int(asked.lengths().max(initial=0))
            available -= _distinct_indexed(asked, self._indexed())
        found, found_scores = self.search(vectors, max(1, min(fetch, len(self.rows))))
        if exclude_seen:
            found, found_scores = drop_seen(found, found_scores, asked)
        short = (found >= 0).sum(axis=1) < np.minimum(n, available)
        out_ids = np.full((len(asked), n), -1, np.int32)
        out_scores = np.full((len(asked), n), -np.inf, np.float32)
        width = min(n, found.shape[1])
        out_ids[:, :width], out_scores[:, :width] = found[:, :width], found_scores[:, :width]
        return out_ids, out_scores, short

    def similar(
        self, items: np.ndarray, vectors: np.ndarray, n: int, score_rows: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``base.neighbours`` through the index: the top ``n`` of each item's vector (``vectors``,
        (len(items), dim)), never the item itself; a row left short goes to ``score_rows``."""
        items = np.asarray(items, dtype=np.int64).ravel()
        check_items(items, self.n_items, "items")
        itself = Histories(indptr=np.arange(len(items) + 1, dtype=np.int64), items=items.astype(np.int32))
        ids, scores, short = self._search_unseen(vectors, itself, n, True)
        if short.any():
            ids[short], scores[short] = neighbours(score_rows, items[short], n, self.n_items)
        return ids, scores

    def _indexed(self) -> np.ndarray:
        """(n_items,) bool: the items the index holds; made on first use (not per request)."""
        if self._indexed_ is None:
            self._indexed_ = np.zeros(self.n_items, dtype=bool)
            self._indexed_[self.rows] = True
        return self._indexed_


def build_if_large(
    vectors: np.ndarray, config: AnnConfig, *, rows: np.ndarray | None = None
) -> AnnIndex | None:
    """The index of ``vectors`` when the catalogue has at least ``config.min_items`` items, else None
    (exact scoring stays)."""
    return AnnIndex.build(vectors, config, rows=rows) if len(vectors) >= config.min_items else None


def save_beside(index: AnnIndex | None, folder: str | Path, *, name: str = FOLDER) -> None:
    """Save a source's index into ``folder/<name>`` (call after the source's own folder is written:
    that write replaces the folder). A crash in between leaves a folder without index: still valid,
    scored exactly."""
    if index is not None:
        index.save(Path(folder) / name)


def load_beside(folder: str | Path, n_items: int, *, name: str = FOLDER) -> AnnIndex | None:
    """The index saved in ``folder/<name>``, or None for a folder without one (saved before indexes
    existed, or below ``min_items``)."""
    if not (Path(folder) / name).is_dir():
        return None
    index = AnnIndex.load(Path(folder) / name)
    if index.n_items != n_items:
        raise ValueError(f"{Path(folder) / name}: index of {index.n_items} items, the model has {n_items}")
    return index


def lifted(vectors: np.ndarray, rows: np.ndarray, *, block_values: int = 2**20) -> np.ndarray:
    """(len(rows), dim + 1) float32: ``vectors[rows]`` and the lift column of the module docstring.

    Written block by block into one array: at a million 384-d items a copy is 1.5 GB, and the
    whole-array way (gather, float64 norms, ``hstack``) peaked near six of them. Each row's norm is
    the same float64 reduction as over the whole array, so the index is the same bit for bit.
    """
    out = np.empty((len(rows), vectors.shape[1] + 1), dtype=np.float32)
    norms = np.empty(len(rows), dtype=np.float64)
    block = max(1, block_values // max(vectors.shape[1], 1))  # rows a block (1M values: 4 MB of float32)
    for start in range(0, len(rows), block):
        chosen = vectors[rows[start : start + block]]
        finite = np.isfinite(chosen).all(axis=1)
        if not finite.all():
            item = rows[start + np.flatnonzero(~finite)[0]]
            raise ValueError(f"ANN vectors: item {item}'s vector holds NaN or infinite values")
        out[start : start + len(chosen), :-1] = chosen
        norms[start : start + len(chosen)] = np.linalg.norm(chosen.astype(np.float64), axis=1)
    out[:, -1] = np.sqrt(np.maximum(norms.max(initial=0.0) ** 2 - norms**2, 0.0))
    return out


def _subset(histories: Histories, rows: np.ndarray) -> Histories:
    """The histories ``rows`` (ascending row numbers) as their own batch."""
    lengths = histories.lengths()[rows]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    source = np.repeat(histories.indptr[rows] - indptr[:-1], lengths) + np.arange(indptr[-1])
    return Histories(indptr=indptr, items=histories.items[source])


def _distinct_indexed(histories: Histories, indexed: np.ndarray) -> np.ndarray:
    """(rows,) number of distinct indexed items in each history."""
    row_of = np.repeat(np.arange(len(histories)), histories.lengths())
    items = histories.items[histories.indptr[0] : histories.indptr[-1]]
    keep = indexed[items]
    keys = np.unique(row_of[keep].astype(np.int64) * (1 << 32) + items[keep])
    return np.bincount(keys >> 32, minlength=len(histories))
