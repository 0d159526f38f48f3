"""Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) via ``implicit``'s ALS.

Training factorises the (user, item) matrix of event counts (or, with ``use_weights``, of summed
event weights), optionally BM25-weighted, with confidence ``alpha * cell`` (implicit's convention).
At recommend time every history is *folded in*: its user vector is the exact least-squares solution
against the fixed item factors (the system implicit's ``recalculate_user`` solves, solved in NumPy
by ``fold_in``), so users unknown at training time and histories that grew since both get fresh
vectors, and offline evaluation needs no user-id bookkeeping. Scores are ``x_u . y_i``. A history
is a list of items without weights, so its events count once each in the fold-in: the weights shape
the item factors, not the query.

Items never seen in training have zero factors and are never recommended; a history without any
trained item (empty, or cold items only) has no preference signal and gets no recommendations (all
``-1``): compose with ``Popularity`` for cold users.

For a catalogue of at least ``ann.min_items`` items, ``fit`` also indexes the trained item factors in
an inverted-file index (``recsys.candidates.ann``): ``x_u . y_i`` is a plain inner product, which the index
ranks by directly, so ``recommend`` searches it instead.

>>> from recsys.data.dataset import Histories, Interactions
>>> users = [0, 0, 1, 1, 2, 2, 3, 3]
>>> items = [0, 1, 0, 1, 2, 3, 2, 3]
>>> data = Interactions.from_arrays(users, items, n_users=4, n_items=4)
>>> model = ALS(ALSConfig(factors=2, iterations=10, regularization=0.01, num_threads=1)).fit(data)
>>> model.recommend(Histories.from_lists([[0], [3]]), 1)[0].tolist()
[[1], [2]]
>>> model.similar_items(np.array([2]), 1)[0].tolist()
[[3]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp

from recsys.candidates.ann import AnnConfig, AnnIndex, build_if_large, load_beside, save_beside
from recsys.candidates.artifact import read_arrays, read_meta, write_folder
from recsys.candidates.base import check_fitted, check_items, neighbours, ranked, unit_rows
from recsys.config import from_dict, to_dict
from recsys.data.dataset import Histories, Interactions

FORMAT = "recsys.als/1"
COSINE_FOLDER = "ann_cosine"  # the cosine index of similar_items, beside ``ann/``


@dataclass(frozen=True)
class ALSConfig:
    """Parameters of :class:`ALS`.

    Parameters
    ----------
    factors
        Latent dimensions.
    regularization
        L2 penalty on user and item factors.
    alpha
        Confidence scale: an observed (user, item) cell has confidence ``alpha * cell``.
    iterations
        Alternating sweeps over users and items.
    bm25
        Weight the count matrix with BM25 (``bm25_k1``, ``bm25_b``), down-weighting heavy users and
        saturating repeated events, as in implicit's examples. Folded-in histories get the same weights.
    use_cg
        Solve training sweeps by conjugate gradient (fast) rather than Cholesky; fold-in is always exact.
    seed
        Seeds the factor initialisation; results are deterministic for a fixed seed.
    num_threads
        Threads of implicit's solver (0: all cores). BLAS is limited to one thread while fitting.
    use_weights
        Fit on the summed ``weight`` of each (user, item) cell instead of its event count (see
        ``Interactions.event_matrix``). Off by default, as in ``PopularityConfig``: what a weight
        means depends on the data (a 0.5 to 5 star rating on MovieLens), and only a validation run
        shows whether it helps as confidence.
    device
        ``"auto"``: implicit's CUDA solver where ``implicit.gpu.HAS_CUDA`` (a GPU and implicit built
        for it), else its CPU one; ``"cpu"`` always the CPU one (bit-for-bit repeats across machines).
        The GPU solver has no ``use_cg`` or ``num_threads``; the fold-in runs on the CPU either way.
    ann
        When and how ``fit`` builds an approximate index (catalogues of ``ann.min_items`` or more).
    """

    factors: int = 64
    regularization: float = 0.01
    alpha: float = 1.0
    iterations: int = 15
    bm25: bool = False
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    use_cg: bool = True
    seed: int = 0
    num_threads: int = 0
    use_weights: bool = False
    device: Literal["auto", "cpu"] = "auto"
    ann: AnnConfig = field(default_factory=AnnConfig)

    def __post_init__(self) -> None:
        checks = {
            "factors": self.factors >= 1,
            "regularization": self.regularization >= 0,
            "alpha": self.alpha > 0,
            "iterations": self.iterations >= 1,
            "bm25_k1": self.bm25_k1 >= 0,
            "bm25_b": 0 <= self.bm25_b <= 1,
            "num_threads": self.num_threads >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ALSConfig.{bad[0]} out of range: {getattr(self, bad[0])!r}")


def count_matrix(histories: Histories, n_items: int) -> sp.csr_matrix:
    """(batch, n_items) float32 event counts of each history (repeats add up)."""
    data = np.ones(len(histories.items), dtype=np.float32)
    # copy: sum_duplicates sorts indices in place and would otherwise rewrite histories.items
    m = sp.csr_matrix((data, histories.items, histories.indptr), shape=(len(histories), n_items), copy=True)
    m.sum_duplicates()
    return m


def fold_in(
    item_factors: np.ndarray, confidence: sp.csr_matrix, *, gram: np.ndarray, alpha: float
) -> np.ndarray:
    """(batch, factors) float64 least-squares user vectors for the rows of ``confidence``.

    Row ``u`` solves ``(YtY + reg I + Yu^T (Cu - I) Yu) x = Yu^T Cu p`` with confidences
    ``alpha * confidence`` (a negative entry counts as that confidence with preference 0), exactly
    the system of implicit's ``recalculate_user``; ``gram`` is ``YtY + reg I``. A row without
    entries gets the zero vector.

    >>> y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    >>> gram = y.T.astype(np.float64) @ y + 0.1 * np.eye(2)
    >>> c = sp.csr_matrix(np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    >>> fold_in(y, c, gram=gram, alpha=1.0).round(3).tolist()
    [[0.762, -0.363], [0.0, 0.0]]
    """
    x = np.zeros((confidence.shape[0], item_factors.shape[1]))  # (batch, factors)
    # one small system per history, solved in turn: a stacked (batch, factors, factors) system would
    # cost batch * factors^2 * 8 bytes at once (134 MB for 1024 histories of 128 factors)
    for u in range(confidence.shape[0]):
        lo, hi = confidence.indptr[u], confidence.indptr[u + 1]
        if lo == hi:
            continue
        c = alpha * confidence.data[lo:hi].astype(np.float64)  # (nnz,)
        y = item_factors[confidence.indices[lo:hi]].astype(np.float64)  # (nnz, factors)
        a = gram + (y * (np.abs(c) - 1.0)[:, None]).T @ y
        x[u] = np.linalg.solve(a, np.maximum(c, 0.0) @ y)
    return x


def bm25_weight(counts: sp.csr_matrix, length_norm: np.ndarray, *, k1: float) -> sp.csr_matrix:
    """BM25 weights of a (users, items) count matrix, given each item's length normalisation.

    Matches ``implicit.nearest_neighbours.bm25_weight`` applied to the (items, users) matrix: items
    are the "documents" (normalised by their total count) and users the "terms" (an idf of
    ``log(n_items) - log1p(distinct items of the user)``).
    """
    counts = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    n_items = counts.shape[1]
    distinct = np.diff(counts.indptr)
    idf = np.log(float(n_items)) - np.log1p(distinct.astype(np.float64))
    rows = np.repeat(np.arange(counts.shape[0]), distinct)
    x = counts.data.astype(np.float64)
    counts.data = (x * (k1 + 1.0) / (k1 * length_norm[counts.indices] + x) * idf[rows]).astype(np.float32)
    return counts


def item_length_norm(counts: sp.csr_matrix, *, b: float) -> np.ndarray:
    """(n_items,) BM25 length normalisation ``(1 - b) + b * total / mean total`` of each item."""
    totals = np.asarray(counts.sum(axis=0), dtype=np.float64).ravel()
    mean = totals.mean() if len(totals) and totals.mean() > 0 else 1.0
    norm: np.ndarray = (1.0 - b) + b * totals / mean
    return norm


class ALS:
    """Implicit ALS with fold-in recommendation; see the module docstring.

    Attributes
    ----------
    item_factors_ : numpy.ndarray
        (n_items, factors) float32 item factors.
    length_norm_ : numpy.ndarray or None
        (n_items,) BM25 item length normalisation from training (only with ``bm25``).
    ann_ : AnnIndex or None
        IVF index of the trained items' factors, for catalogues of at least ``config.ann.min_items``.
    ann_cosine_ : AnnIndex or None
        IVF index of the trained items' *unit* factors, at the same sizes: ``similar_items`` ranks by
        cosine, which the inner-product index of unequal norms does not order.
    """

    def __init__(self, config: ALSConfig | None = None) -> None:
        self.config = config or ALSConfig()
        self.item_factors_: np.ndarray | None = None
        self.length_norm_: np.ndarray | None = None
        self._gram_: np.ndarray | None = None  # derived from item_factors_ on first use
        self._untrained_: np.ndarray | None = None
        self._columns_: np.ndarray | None = None
        self._unit_: np.ndarray | None = None
        self.ann_: AnnIndex | None = None
        self.ann_cosine_: AnnIndex | None = None

    def fit(self, data: Interactions) -> Self:
        """Factorise the (optionally BM25-weighted) count or weight matrix of ``data``."""
        import implicit.cpu.als  # noqa: F401  (load its BLAS before limiting threads)
        from threadpoolctl import threadpool_limits

        cfg = self.config
        cells = data.event_matrix(use_weights=cfg.use_weights)
        self.length_norm_ = item_length_norm(cells, b=cfg.bm25_b) if cfg.bm25 else None
        weighted = self._weigh(cells)
        # implicit's solver threads do the work; a multi-threaded BLAS inside them only thrashes.
        with threadpool_limits(limits=1, user_api="blas"):
            model = self._new_implicit()
            model.fit(weighted, show_progress=False)
        if hasattr(model, "to_cpu"):  # the GPU solver keeps its factors on the device
            model = model.to_cpu()
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self._gram_ = self._untrained_ = self._columns_ = self._unit_ = None
        trained = np.flatnonzero(~self._untrained())  # untrained items are never recommended
        self.ann_ = build_if_large(self.item_factors_, cfg.ann, rows=trained)
        self.ann_cosine_ = None  # built with ann_ (the unit factors are not kept: the exact path makes them)
        if self.ann_ is not None:
            self.ann_cosine_ = AnnIndex.build(unit_rows(self.item_factors_), cfg.ann, rows=trained)
        return self

    def _new_implicit(self) -> Any:
        import implicit.gpu
        from implicit.cpu.als import AlternatingLeastSquares

        cfg = self.config
        if cfg.device == "auto" and implicit.gpu.HAS_CUDA:
            from implicit.gpu.als import AlternatingLeastSquares as GpuAlternatingLeastSquares

            return GpuAlternatingLeastSquares(
                factors=cfg.factors,
                regularization=cfg.regularization,
                alpha=cfg.alpha,
                iterations=cfg.iterations,
                random_state=cfg.seed,
            )
        return AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=cfg.alpha,
            iterations=cfg.iterations,
            use_cg=cfg.use_cg,
            num_threads=cfg.num_threads,
            random_state=cfg.seed,
        )

    def _weigh(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        if self.length_norm_ is None:
            return counts
        return bm25_weight(counts, self.length_norm_, k1=self.config.bm25_k1)

    @property
    def n_items(self) -> int:
        check_fitted(self, "item_factors_")
        assert self.item_factors_ is not None
        return len(self.item_factors_)

    def user_factors(self, histories: Histories) -> np.ndarray:
        """(batch, factors) least-squares user vectors of ``histories`` against the item factors.

        The same normal equations as implicit's ``recalculate_user`` (Hu et al. 2008), solved here
        in NumPy: the Gram matrix ``YtY + regularization * I`` is computed once, and each history only
        adds the outer products of its own items. Implicit's path built a solver model and crossed
        an OpenMP region per call, several times the cost of the solve on the request path.
        """
        check_items(histories.items, self.n_items, "histories.items")
        assert self.item_factors_ is not None
        weighted = self._weigh(count_matrix(histories, self.n_items))
        factors = fold_in(self.item_factors_, weighted, gram=self._gram(), alpha=self.config.alpha)
        return factors.astype(np.float32)

    def _gram(self) -> np.ndarray:
        """(factors, factors) float64 ``YtY + regularization * I``, computed on first use."""
        if self._gram_ is None:
            assert self.item_factors_ is not None
            y = self.item_factors_.astype(np.float64)
            self._gram_ = y.T @ y + self.config.regularization * np.eye(y.shape[1])
        return self._gram_

    def _score_block(self, block: Histories) -> np.ndarray:
        assert self.item_factors_ is not None
        factors = self.user_factors(block)  # (block, factors)
        scores: np.ndarray = factors @ self._columns()  # (block, n_items)
        scores[:, self._untrained()] = -np.inf
        # an empty history, or one of untrained items only, folds in to zero: no preference signal
        scores[~np.any(factors != 0, axis=1)] = -np.inf
        return scores

    def _queries(self, block: Histories) -> tuple[np.ndarray, np.ndarray]:
        factors = self.user_factors(block)  # (block, factors)
        return factors, np.any(factors != 0, axis=1)  # a zero fold-in has no preference signal

    def _columns(self) -> np.ndarray:
        """(factors, n_items) contiguous copy of the item factors, made on first use: the same
        products as ``item_factors_.T`` up to float32 rounding, about twice as fast with OpenBLAS."""
        if self._columns_ is None:
            assert self.item_factors_ is not None
            self._columns_ = np.ascontiguousarray(self.item_factors_.T)
        return self._columns_

    def _untrained(self) -> np.ndarray:
        """(n_items,) bool: items whose factors are all zero (never seen in training); cached."""
        if self._untrained_ is None:
            assert self.item_factors_ is not None
            self._untrained_ = ~np.any(self.item_factors_ != 0, axis=1)
        return self._untrained_

    def recommend(
        self, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items per folded-in history, excluding its items unless ``exclude_seen`` is False:
        ``(ids, scores)``, (batch, n). Searched in ``ann_`` when there is one."""
        if self.ann_ is not None:
            return self.ann_.ranked(self._queries, self._score_block, histories, n, exclude_seen=exclude_seen)
        return ranked(self._score_block, histories, n, self.n_items, exclude_seen=exclude_seen)

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items with the highest cosine between item factors (never the item itself), searched
        in ``ann_cosine_`` when there is one; an untrained item has no direction and no neighbours."""
        check_fitted(self, "item_factors_")
        assert self.item_factors_ is not None
        query = np.asarray(items, dtype=np.int64).ravel()
        check_items(query, self.n_items, "items")
        untrained = self._untrained()

        def score_rows(rows: np.ndarray) -> np.ndarray:
            unit = self._unit()
            cos: np.ndarray = unit[rows] @ unit.T  # (block, n_items)
            cos[:, untrained] = -np.inf
            cos[untrained[rows]] = -np.inf
            return cos

        if self.ann_cosine_ is None:
            return neighbours(score_rows, query, n, self.n_items)
        ids, scores = self.ann_cosine_.similar(query, unit_rows(self.item_factors_[query]), n, score_rows)
        ids[untrained[query]], scores[untrained[query]] = -1, -np.inf  # a zero query scores every item 0
        return ids, scores

    def _unit(self) -> np.ndarray:
        """(n_items, factors) unit item factors (untrained rows stay zero), made on first use."""
        if self._unit_ is None:
            assert self.item_factors_ is not None
            self._unit_ = unit_rows(self.item_factors_)
        return self._unit_

    def save(self, path: Path) -> None:
        """Write ``config.json``, ``item_factors.npy`` (and ``length_norm.npy``, ``ann/``,
        ``ann_cosine/``) into ``path``."""
        check_fitted(self, "item_factors_")
        assert self.item_factors_ is not None
        arrays = {"item_factors": self.item_factors_}
        if self.length_norm_ is not None:
            arrays["length_norm"] = self.length_norm_
        meta = {"format": FORMAT, "n_items": self.n_items, "config": to_dict(self.config)}
        write_folder(path, meta, arrays)
        save_beside(self.ann_, path)
        save_beside(self.ann_cosine_, path, name=COSINE_FOLDER)

    @classmethod
    def load(cls, path: Path) -> ALS:
        """Read a folder written by :meth:`save`."""
        meta = read_meta(path, FORMAT)
        config = from_dict(ALSConfig, meta["config"], where=f"{Path(path) / 'config.json'}:config")
        names = ("item_factors", "length_norm") if config.bm25 else ("item_factors",)
        arrays = read_arrays(path, names, mapped=True)  # a request gathers its history's rows
        model = cls(config)
        n = int(meta["n_items"])
        if arrays["item_factors"].shape != (n, config.factors):
            raise ValueError(f"{path}: item_factors.npy is not ({n}, {config.factors})")
        model.item_factors_ = np.asarray(arrays["item_factors"], dtype=np.float32)
        model.length_norm_ = arrays.get("length_norm")
        model.ann_ = load_beside(path, n)
        model.ann_cosine_ = load_beside(path, n, name=COSINE_FOLDER)
        return model
