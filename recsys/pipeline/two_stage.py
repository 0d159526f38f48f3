"""The two-stage recommender: several retrievers propose candidates, LightGBM LambdaRank orders them.

``fit(data)`` is a pure function of the training interactions:

1. The ranker's training set (``recsys.ranking.dataset.ranker_rows``): label windows held out of
   ``data`` (each user's last event, or one or more consecutive periods before its end), the
   candidate sources fitted before them, and each labelled user's blended candidates featurised as
   of their window's start (retriever evidence plus the feature store's user, item and user×item
   features) and labelled 1 where the candidate is a held-out item.
2. The ranker is fitted on those groups; then every source is refitted on all of ``data``, and item
   features are recomputed as of its end, for answering.

The sources and their config ``CandidatesConfig`` come from one table, ``recsys.candidates.registry``;
this module composes them with the ranker, and ``recommend(histories, n)`` follows the same path at
answer time. The source ablations (``sources``) and the MMR diversity re-rank are part of the config.

``recommend(..., exclude_seen=False)`` ("buy again") lets every source propose the history's own
items too, and the ranker orders them with the rest. The ranker was trained to find *new* items (a
label is a held-out item, and training candidates never hold the history), so it ranks a repeat item
by the same evidence as any other; ``ui_seen`` is 0 on every training row and carries no weight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import polars as pl

from feature_store.definitions import FeatureConfig
from recsys.candidates.artifact import read_meta
from recsys.candidates.base import CandidateGenerator, check_fitted, check_n
from recsys.candidates.blend import Candidates, blend
from recsys.candidates.registry import CandidatesConfig as CandidatesConfig  # part of TwoStageConfig
from recsys.candidates.registry import check_names, source
from recsys.config import from_dict, to_dict
from recsys.data import schema as S
from recsys.data.dataset import Histories, Interactions
from recsys.data.io import atomic_path
from recsys.ranking import features as F
from recsys.ranking.dataset import (
    CHUNK_USERS,
    CandidateRows,
    LabelConfig,
    Proposals,
    RankerRows,
    fit_sources,
    ranker_rows,
)
from recsys.ranking.diversity import top_n
from recsys.ranking.ranker import FitRanker, LambdaRanker, RankerConfig, fit_ranker

FORMAT = "recsys.two_stage/1"
# the sources whose item-to-item neighbours ``similar_items`` merges, in tie-breaking order
SIMILAR_SOURCES = ("text", "cooccurrence", "als", "itemknn")


@dataclass(frozen=True)
class TwoStageConfig:
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # "auto": Unix seconds when timestamps look like them, else an order index ("steps")
    time_unit: Literal["auto", "seconds", "steps"] = "auto"
    label_protocol: Literal["leave-last-out", "temporal"] = "leave-last-out"
    label_fraction: float = 0.1  # temporal labels: each label window holds this share of the events
    # temporal labels: this many consecutive windows before the end of the data, each a set of
    # (user, window) ranker groups; the generators are fitted once before the earliest window
    label_windows: int = 1
    # sources refitted at each later window's start, so that each window sees them as fresh as the
    # served model will be: every source but the (slow) sequential one. On MovieLens validation,
    # refitting all of them beat refitting popularity only, which beat refitting none (RESULTS.md)
    window_refit: tuple[str, ...] = ("als", "itemknn", "cooccurrence", "text", "popularity")
    text_features: bool = True  # the text-embedding user×item feature (ablation: False)
    train_negatives: int = 50  # negatives sampled per training group (all positives are kept)
    diversity: float = 0.0  # MMR lambda on item embeddings; 0 = off
    # on clock time, the popularity source is *recent* popularity (events decay with this half-life);
    # an order index has no global time, so there it counts every event
    popularity_half_life_days: float | None = 7.0

    def __post_init__(self) -> None:
        if not 0 < self.label_fraction < 1:
            raise ValueError(f"TwoStageConfig.label_fraction must be in (0, 1), got {self.label_fraction!r}")
        if isinstance(self.label_windows, bool) or not isinstance(self.label_windows, int):
            raise ValueError(f"TwoStageConfig.label_windows must be an integer, got {self.label_windows!r}")
        if self.label_windows < 1:
            raise ValueError(f"TwoStageConfig.label_windows must be >= 1, got {self.label_windows}")
        if self.label_windows > 1 and self.label_protocol != "temporal":
            raise ValueError(
                f"TwoStageConfig.label_windows={self.label_windows} needs label_protocol 'temporal' "
                f"(leave-last-out holds out one event per user), got {self.label_protocol!r}"
            )
        if self.label_windows * self.label_fraction >= 1:
            raise ValueError(
                f"TwoStageConfig: label_windows x label_fraction must be < 1 (some events must precede "
                f"the earliest label window), got {self.label_windows} x {self.label_fraction}"
            )
        try:
            check_names(self.window_refit)
        except ValueError as exc:
            raise ValueError(f"TwoStageConfig.window_refit: {exc}") from None

    @property
    def labels(self) -> LabelConfig:
        """The label settings above, as ``ranker_rows`` takes them (the ranker's seed samples too)."""
        return LabelConfig(
            protocol=self.label_protocol,
            fraction=self.label_fraction,
            windows=self.label_windows,
            refit=self.window_refit,
            negatives=self.train_negatives,
            seed=self.ranker.seed,
        )

    def source_config(self, name: str, *, time_unit: str) -> Any:
        """The config the pipeline gives source ``name`` (``candidates.<name>``); on clock time
        (``time_unit`` "seconds") popularity without a half-life of its own gets
        ``popularity_half_life_days``."""
        config = getattr(self.candidates, source(name).name)
        if name == "popularity" and time_unit == "seconds" and config.half_life is None:
            days = self.popularity_half_life_days
            return replace(config, half_life=None if days is None else days * 86_400.0)
        return config


def _time_unit(config: TwoStageConfig, data: Interactions) -> Literal["seconds", "steps"]:
    if config.time_unit != "auto":
        return config.time_unit
    return "seconds" if S.are_unix_seconds(data.timestamps) else "steps"


class TwoStage:
    """Multi-source retrieval + LambdaRank; see the module docstring.

    Parameters
    ----------
    config
        What to fit.
    items
        The validated items table; item index ``i`` is row ``i``.
    item_embeddings
        (n_items, dim) L2-normalised text embeddings, row order of ``items`` (needed by the ``text``
        source, the sequential model's text initialisation and the embedding features).
    fit_ranker
        Fits the ranker (default ``recsys.ranking.ranker.fit_ranker``; ``recsys.pipeline.engine``).
    """

    def __init__(
        self,
        config: TwoStageConfig,
        *,
        items: pl.DataFrame,
        item_embeddings: np.ndarray | None = None,
        fit_ranker: FitRanker | None = None,
    ) -> None:
        self.config = config
        self.fit_ranker = fit_ranker
        self.items = items
        self.item_embeddings = item_embeddings
        self.generators_: dict[str, CandidateGenerator] | None = None
        self.ranker_: LambdaRanker | None = None
        self.snapshot_: F.ItemSnapshot | None = None
        self.feature_names_: list[str] | None = None
        self.report_: dict[str, Any] | None = None
        self._time_unit: Literal["auto", "seconds", "steps"] = config.time_unit  # ranker_rows() resolves it
        self._stops: list[dict[str, Any]] = []  # each early-stopped source fit, as fit_source noted it
        # sources that learn nothing from interactions (text), fitted once per catalogue and embeddings and
        # shared by the label windows and the final model (at 1M items each fit is an ANN build of minutes)
        self._fixed: dict[tuple[str, int], tuple[object, CandidateGenerator]] = {}

    # --- fitting -----------------------------------------------------------------------------------
    def fit(self, data: Interactions) -> Self:
        """The ranker on :meth:`ranker_rows`, then every source and the item features on all of ``data``."""
        self._stops = []
        rows = self.ranker_rows(data)
        start = time.perf_counter()
        fit = self.fit_ranker or fit_ranker
        self.ranker_ = fit(self.config.ranker, *rows.training_set(), rows.feature_names)
        seconds = rows.fit_seconds | {"ranker": time.perf_counter() - start}
        self.feature_names_ = rows.feature_names
        self.generators_ = fit_sources(self.fit_source, data, self.config.candidates.sources, seconds)
        self.snapshot_ = self.item_snapshot(data)
        # why each iterative part stopped: every early-stopped source fit (the labels' fit, then the
        # served one) and each booster of the ranker's bag (its chosen trial, refitted for its rounds)
        assert self.ranker_.report_ is not None
        boosters = [{"seed": bag["seed"]} | bag["best"] for bag in self.ranker_.report_["bags"]]
        stopping = {"sources": list(self._stops), "ranker": boosters}
        self.report_ = dict(rows.report, fit_seconds=seconds, time_unit=self._time_unit, stopping=stopping)
        return self

    def ranker_rows(self, data: Interactions, *, chunk_users: int = CHUNK_USERS) -> RankerRows:
        """The ranker's training set from ``data``, as ``fit`` builds it (``recsys.ranking.dataset``)."""
        if data.n_items != self.items.height:
            raise ValueError(
                f"interactions have {data.n_items} items but the items table {self.items.height}"
            )
        config = self.config
        self._time_unit = _time_unit(config, data)
        return ranker_rows(
            data,
            sources=config.candidates.sources,
            fit_source=self.fit_source,
            featurise=self.featuriser,
            labels=config.labels,
            chunk_users=chunk_users,
        )

    def fit_source(self, name: str, data: Interactions) -> CandidateGenerator:
        """Candidate source ``name``, configured as this model configures it, fitted on ``data``."""
        config = self.config.source_config(name, time_unit=self._time_unit)
        if (fixed := self._fixed.get((name, data.n_items))) and fixed[0] is self.item_embeddings:
            return fixed[1]
        fitted = source(name).build(config, item_embeddings=self.item_embeddings).fit(data)
        if not getattr(fitted, "learns_from_interactions", True):
            self._fixed[name, data.n_items] = (self.item_embeddings, fitted)
        reason = getattr(fitted, "stop_reason_", None)  # sources that stop early say why (sequential)
        if reason is not None:
            epochs = len(getattr(fitted, "history_", []))
            note = {"source": name, "events": len(data), "epochs": epochs, "stop_reason": reason}
            self._stops.append(note | {"best_epoch": getattr(fitted, "best_epoch_", None)})
        return fitted

    def featuriser(
        self, generators: Mapping[str, CandidateGenerator], data: Interactions
    ) -> Callable[[np.ndarray], CandidateRows]:
        """A function of users giving the featurised candidates of their histories in ``data``, all
        features as of its end (the item features are computed here, once for every call of it)."""
        snapshot = self.item_snapshot(data)
        return lambda users: self._candidate_rows(generators, data.histories(users), snapshot)

    @property
    def _feature_config(self) -> FeatureConfig:
        assert self._time_unit != "auto", "ranker_rows() resolves the time unit from the data first"
        return replace(self.config.features, time_unit=self._time_unit)

    def _events(self, data: Interactions) -> pl.DataFrame:
        item_ids = self.items.get_column(S.ITEM_ID).to_numpy()
        return pl.DataFrame(
            {
                S.USER_ID: data.users.astype(str),
                S.ITEM_ID: item_ids[data.items].astype(str),
                S.TIMESTAMP: data.timestamps,
            }
        )

    def item_snapshot(self, data: Interactions) -> F.ItemSnapshot:
        """The item features as of the end of ``data``, as ``fit`` serves them."""
        now = int(data.timestamps.max()) + 1 if len(data) else 0
        embeddings = self.item_embeddings if self.config.text_features else None
        return F.ItemSnapshot.build(
            self._events(data), self.items, config=self._feature_config, now=now, embeddings=embeddings
        )

    # --- answering ---------------------------------------------------------------------------------
    def _candidate_rows(
        self,
        generators: Mapping[str, CandidateGenerator],
        histories: Histories,
        snapshot: F.ItemSnapshot,
        *,
        exclude_seen: bool = True,
    ) -> CandidateRows:
        proposals, candidates = self._propose(generators, histories, exclude_seen=exclude_seen)
        item_ids = snapshot.attrs.get_column(S.ITEM_ID).to_numpy()
        states = F.states_from_histories(
            histories, self.items, item_ids, config=snapshot.config, now=snapshot.now
        )
        rows, cols = np.nonzero(candidates.ids >= 0)
        last = self.last_item_features(generators, histories.last(1)[rows, 0], candidates.ids[rows, cols])
        X, rows, cols = F.assemble(candidates, states, snapshot, last)
        names = F.feature_names(candidates.sources, snapshot)
        return CandidateRows(proposals, candidates, X, rows, cols, names)

    def last_item_features(
        self, generators: Mapping[str, CandidateGenerator], last: np.ndarray, candidates: np.ndarray
    ) -> np.ndarray:
        """``features.last_item_features`` from this model's transitions and embeddings."""
        cooc = generators.get("cooccurrence")
        return F.last_item_features(
            last,
            candidates,
            transitions=getattr(cooc, "similarity_", None),
            embeddings=self.item_embeddings if self.config.text_features else None,
        )

    def candidates(self, histories: Histories, *, exclude_seen: bool = True) -> Candidates:
        """The blended candidates of each history (before ranking); its own items only when
        ``exclude_seen`` is False."""
        return self.proposals(histories, exclude_seen=exclude_seen)[1]

    def proposals(self, histories: Histories, *, exclude_seen: bool = True) -> tuple[Proposals, Candidates]:
        """Each source's candidates of each history, and their blend (what the ranker orders):
        the evaluation measures each source's candidate recall on them."""
        check_fitted(self, "generators_")
        assert self.generators_ is not None
        return self._propose(self.generators_, histories, exclude_seen=exclude_seen)

    def feature_importance(self) -> dict[str, float]:
        """The ranker's total gain per feature, largest first (``LambdaRanker.feature_importance``)."""
        check_fitted(self, "ranker_")
        assert self.ranker_ is not None
        return self.ranker_.feature_importance()

    def _propose(
        self, generators: Mapping[str, CandidateGenerator], histories: Histories, *, exclude_seen: bool = True
    ) -> tuple[Proposals, Candidates]:
        """Each source's ``per_source`` candidates, and their blend."""
        n = self.config.candidates.per_source
        proposals = {
            name: g.recommend(histories, n, exclude_seen=exclude_seen) for name, g in generators.items()
        }
        return proposals, blend(proposals, total=self.config.candidates.total, n_items=self.items.height)

    def recommend(
        self, histories: Histories, n: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` of each history by ranker score (after MMR when ``diversity`` > 0), its own
        items among them when ``exclude_seen`` is False."""
        check_n(n)
        check_fitted(self, "ranker_")
        assert self.ranker_ is not None and self.snapshot_ is not None and self.generators_ is not None
        ids = np.full((len(histories), n), -1, dtype=np.int32)
        scores = np.full((len(histories), n), -np.inf, dtype=np.float32)
        block = 2048  # bounds the feature matrix: block x total x features floats
        for start in range(0, len(histories), block):
            stop = min(start + block, len(histories))
            found = self._candidate_rows(
                self.generators_, histories.rows(start, stop), self.snapshot_, exclude_seen=exclude_seen
            )
            dense = np.full(found.candidates.ids.shape, -np.inf, dtype=np.float32)
            dense[found.rows, found.cols] = self.ranker_.predict(found.X)
            top = top_n(found.candidates.ids, dense, n, self.config.diversity, self.item_embeddings)
            ids[start:stop], scores[start:stop] = top
        return ids, scores

    def neighbours(self, items: np.ndarray, n: int) -> Neighbours:
        """Similar items of each of ``items``: the neighbour lists of the ``SIMILAR_SOURCES`` this
        model has, merged by :func:`merge_neighbours`."""
        check_n(n)
        check_fitted(self, "generators_")
        assert self.generators_ is not None
        proposals = {
            name: self.generators_[name].similar_items(items, n)
            for name in SIMILAR_SOURCES
            if name in self.generators_
        }
        if not proposals:  # an ablation without item-to-item sources: no neighbours
            shape = (len(items), n)
            return Neighbours(np.full(shape, -1), np.full(shape, -np.inf), (), np.zeros((*shape, 0), bool))
        return merge_neighbours(proposals, n, n_items=self.items.height)

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of :meth:`neighbours`."""
        found = self.neighbours(items, n)
        return found.ids, found.scores

    # --- persistence -------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the fitted model into the folder ``path`` (atomically): JSON, Parquet, npy, LightGBM text."""
        check_fitted(self, "ranker_")
        assert self.generators_ is not None and self.ranker_ is not None and self.snapshot_ is not None
        with atomic_path(path) as tmp:
            tmp.mkdir()
            meta = {
                "format": FORMAT,
                "config": to_dict(self.config),
                "features": to_dict(self.snapshot_.config),
                "now": self.snapshot_.now,
                "feature_names": self.feature_names_,
                "report": self.report_,
            }
            (tmp / "two_stage.json").write_text(json.dumps(meta, indent=2))
            self.items.write_parquet(tmp / "items.parquet")
            self.snapshot_.table.write_parquet(tmp / "item_features.parquet")
            if self.item_embeddings is not None:
                np.save(
                    tmp / "item_embeddings.npy", self.item_embeddings.astype(np.float32), allow_pickle=False
                )
            for name, generator in self.generators_.items():
                generator.save(tmp / "generators" / name)
            self.ranker_.save(tmp / "ranker")

    @classmethod
    def load(cls, path: Path) -> TwoStage:
        """Read a folder written by :meth:`save`. Nothing is unpickled."""
        path = Path(path)
        meta = read_meta(path, FORMAT, name="two_stage.json")
        sequential = meta["config"].get("candidates", {}).get("sequential", {})
        if "text_init" in sequential:  # written before this config was the SequentialConfig itself
            sequential["use_text"] = sequential.pop("text_init")
        config = from_dict(TwoStageConfig, meta["config"], where=f"{path / 'two_stage.json'}:config")
        features = from_dict(FeatureConfig, meta["features"], where=f"{path / 'two_stage.json'}:features")
        emb_path = path / "item_embeddings.npy"
        # mapped read-only (the bundle never changes): requests gather only their candidates' rows
        embeddings = np.load(emb_path, allow_pickle=False, mmap_mode="r") if emb_path.exists() else None
        model = cls(config, items=pl.read_parquet(path / "items.parquet"), item_embeddings=embeddings)
        model.generators_ = {
            name: source(name).load(path / "generators" / name) for name in config.candidates.sources
        }
        model.ranker_ = LambdaRanker.load(path / "ranker")
        model.snapshot_ = F.ItemSnapshot(
            features,
            pl.read_parquet(path / "item_features.parquet"),
            embeddings if config.text_features else None,
            int(meta["now"]),
        )
        model.feature_names_ = list(meta["feature_names"])
        model.report_ = meta["report"]
        model._time_unit = features.time_unit
        return model


@dataclass(frozen=True, eq=False)
class Neighbours:
    """Similar items of a batch of query items, merged over sources."""

    ids: np.ndarray  # (batch, n) int32, best first, -1 padded
    scores: np.ndarray  # (batch, n) float64: 1 / (1 + the best rank any source gives), -inf padded
    sources: tuple[str, ...]
    found: np.ndarray  # (batch, n, n_sources) bool: which sources list each item


def merge_neighbours(proposals: Proposals, n: int, *, n_items: int) -> Neighbours:
    """The union of each source's neighbour lists, cut to ``n``: by the best rank any source gives an
    item, then by how many sources list it, then by the first source (in ``proposals`` order) that
    lists it and its rank there.

    >>> a = (np.array([[9, 6, -1]]), np.array([[0.9, 0.5, -np.inf]]))
    >>> b = (np.array([[2, 6, 7]]), np.array([[3.0, 2.0, 1.0]]))
    >>> found = merge_neighbours({"a": a, "b": b}, 3, n_items=10)
    >>> found.ids.tolist(), found.scores.tolist(), found.found[0, 2].tolist()
    ([[9, 2, 6]], [[1.0, 1.0, 0.5]], [True, True])
    """
    merged = blend(proposals, total=n * len(proposals), n_items=n_items)
    listed = ~np.isnan(merged.ranks)  # (batch, total, n_sources)
    best = np.where(listed, merged.ranks, np.inf).min(axis=2).astype(np.float64)  # inf: padding
    first = listed.argmax(axis=2)
    first_rank = np.take_along_axis(merged.ranks, first[..., None], axis=2)[..., 0]
    keys = (np.nan_to_num(first_rank, nan=np.inf), first, -listed.sum(axis=2), best)
    order = np.lexsort(keys, axis=-1)[:, :n]
    ids = np.take_along_axis(merged.ids, order, axis=1)
    best = np.take_along_axis(best, order, axis=1)
    scores = np.where(ids >= 0, 1.0 / (1.0 + best), -np.inf)
    return Neighbours(ids, scores, merged.sources, np.take_along_axis(listed, order[..., None], axis=1))
