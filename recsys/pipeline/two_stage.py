"""The two-stage recommender: several retrievers propose candidates, LightGBM LambdaRank orders them.

``fit(data)`` is a pure function of the training interactions:

1. An inner split of ``data`` holds out labels: each user's last event (leave-last-out) or the events
   after a time cutoff (temporal). With ``label_windows`` > 1 (temporal only) there are several
   consecutive label windows before the end of the data ("rolling" labels), and one ranker group
   per (user, window). Generators are fitted once on what precedes the earliest label window, so
   candidates and features never see any label; the ``window_refit`` sources (by default every
   source but the slow sequential model) are refitted at each later window's start.
2. Each labelled user's candidates are blended from all sources, featurised (retriever evidence plus
   the feature store's user, item and user×item features, all as of the window's start: histories
   and item snapshot hold only earlier events) and labelled 1 where the candidate is a held-out
   item. Users whose label is not among their candidates are dropped (and counted): they carry no
   ranking signal.
3. The ranker is fitted on those groups; then every generator is refitted on all of ``data``, and
   item features are recomputed as of its end, for answering.

``recommend(histories, n)`` follows the same path at answer time. The candidate-source ablations
(``sources``) and the optional MMR diversity re-rank are part of the config.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import polars as pl

from feature_store.definitions import FeatureConfig
from recsys.candidates.als import ALSConfig
from recsys.candidates.artifact import read_meta
from recsys.candidates.base import CandidateGenerator, check_fitted, check_n
from recsys.candidates.blend import Candidates, blend
from recsys.candidates.cooccurrence import CoOccurrenceConfig
from recsys.candidates.itemknn import ItemKNNConfig
from recsys.candidates.popularity import PopularityConfig
from recsys.candidates.text import TextRetrieverConfig
from recsys.config import from_dict, to_dict
from recsys.data import schema as S
from recsys.data.dataset import Histories, Interactions
from recsys.data.io import atomic_path
from recsys.data.splits import EvalTask, make_split, period_starts, window_task
from recsys.ranking import features as F
from recsys.ranking.diversity import mmr
from recsys.ranking.ranker import LambdaRanker, RankerConfig

FORMAT = "recsys.two_stage/1"
SOURCES = ("als", "itemknn", "cooccurrence", "text", "sequential", "popularity")


@dataclass(frozen=True)
class SequentialSourceConfig:
    hidden: int = 64
    layers: int = 2
    max_len: int = 50
    max_epochs: int = 200
    patience: int = 5
    # a cap per fit (a pipeline fit trains it twice: labels held out, then all); early stopping usually
    # ends it first (MovieLens: ~20 epochs, 6-7 min on 2 free cores), so results do not depend on load
    time_budget_s: float = 900.0
    text_init: bool = True
    seed: int = 0


@dataclass(frozen=True)
class CandidatesConfig:
    """Which sources propose candidates, how many each, and how many survive the blend."""

    sources: tuple[str, ...] = SOURCES
    per_source: int = 100
    total: int = 200
    als: ALSConfig = field(default_factory=lambda: ALSConfig(factors=128, regularization=0.01, alpha=40.0))
    itemknn: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    # window 10: the best of the co-occurrence grid on amazon-scientific validation (RESULTS.md)
    cooccurrence: CoOccurrenceConfig = field(default_factory=lambda: CoOccurrenceConfig(window=10))
    text: TextRetrieverConfig = field(default_factory=TextRetrieverConfig)
    sequential: SequentialSourceConfig = field(default_factory=SequentialSourceConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown candidate source {unknown[0]!r} (known: {', '.join(SOURCES)})")
        if not self.sources:
            raise ValueError("at least one candidate source is needed")
        if self.per_source < 1 or self.total < 1:
            raise ValueError("per_source and total must be >= 1")


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
        unknown = sorted(set(self.window_refit) - set(SOURCES))
        if unknown:
            raise ValueError(
                f"TwoStageConfig.window_refit: unknown candidate source {unknown[0]!r} "
                f"(known: {', '.join(SOURCES)})"
            )


def label_tasks(
    data: Interactions,
    protocol: Literal["leave-last-out", "temporal"],
    *,
    fraction: float = 0.1,
    windows: int = 1,
) -> list[EvalTask]:
    """The ranker's label tasks inside ``data``, earliest first.

    Leave-last-out: one task, each user's last event. Temporal: ``windows`` consecutive windows,
    each holding about ``fraction`` of the events; window ``k`` (from the end, 1-based) starts at the
    time where the last ``k * fraction`` of events begins and ends where window ``k - 1`` starts.
    Task ``k`` trains on every event before its start, and its targets follow the evaluation's
    temporal rule (new items of users known before the start). One window is exactly the inner
    split ``make_split(data, "temporal", test_fraction=fraction).test``. Windows with no known user
    are left out.

    >>> data = Interactions.from_arrays(
    ...     [0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3, 1, 2, 3, 0],
    ...     n_users=2, n_items=4, timestamps=[1, 2, 3, 4, 1, 2, 3, 4],
    ... )
    >>> tasks = label_tasks(data, "temporal", fraction=0.25, windows=2)
    >>> [(len(t.train), t.users.tolist(), t.targets.nnz) for t in tasks]
    [(4, [0, 1], 2), (6, [0, 1], 2)]
    """
    if protocol == "leave-last-out" or windows == 1:
        options = {"test_fraction": fraction} if protocol == "temporal" else {}
        return [make_split(data, protocol, **options).test]
    ts = data.timestamps
    if not len(ts):
        raise ValueError("temporal labels: no interactions")
    starts = period_starts(ts, windows=windows, fraction=fraction)
    if not (ts < starts[0]).any():
        raise ValueError(
            f"temporal labels: the earliest of {windows} label windows starts at {starts[0]}, which leaves "
            "no events to fit the candidate generators on (use fewer label_windows or a smaller "
            "label_fraction)"
        )
    stops = [*starts[1:], int(ts.max()) + 1]
    tasks = []
    for start, stop in zip(starts, stops, strict=True):
        before, window = ts < start, (ts >= start) & (ts < stop)
        if window.any():
            task = window_task(data, before, window, name=f"labels@{start}", cold_start_users=False)
            if len(task.users):
                tasks.append(task)
    if not tasks:
        raise ValueError("temporal labels: no label window has a user who was seen before it")
    return tasks


def generator_class(name: str) -> type[CandidateGenerator]:
    """The generator class of a source name (imported lazily: some sources pull in heavy libraries)."""
    if name == "als":
        from recsys.candidates.als import ALS

        return ALS
    if name == "itemknn":
        from recsys.candidates.itemknn import ItemKNN

        return ItemKNN
    if name == "cooccurrence":
        from recsys.candidates.cooccurrence import CoOccurrence

        return CoOccurrence
    if name == "popularity":
        from recsys.candidates.popularity import Popularity

        return Popularity
    if name == "text":
        from recsys.candidates.text import TextRetriever

        return TextRetriever
    if name == "sequential":
        from recsys.candidates.sequential import SequentialRecommender

        return SequentialRecommender
    raise ValueError(f"unknown candidate source {name!r} (known: {', '.join(SOURCES)})")


def new_source(
    name: str, config: TwoStageConfig, *, item_embeddings: np.ndarray | None, time_unit: str
) -> CandidateGenerator:
    """An unfitted candidate source, configured as the pipeline configures it."""
    c = config.candidates
    cls: Any = generator_class(name)
    if name in ("text", "sequential"):
        if item_embeddings is None:
            raise ValueError(f"candidate source {name!r} needs item embeddings")
        source_config = c.text if name == "text" else _sequential_config(c.sequential)
        return cls(source_config, item_embeddings=item_embeddings)  # type: ignore[no-any-return]
    if name == "popularity" and time_unit == "seconds" and c.popularity.half_life is None:
        days = config.popularity_half_life_days
        return cls(replace(c.popularity, half_life=None if days is None else days * 86_400.0))  # type: ignore[no-any-return]
    return cls(getattr(c, name))  # type: ignore[no-any-return]


def _loader(name: str) -> Any:
    """The class that loads a saved source: the sequential model answers through its NumPy
    inference, so a loaded model (and the service) never imports torch."""
    if name == "sequential":
        from recsys.candidates.sequential_numpy import SequentialScorer

        return SequentialScorer
    return generator_class(name)


def _sequential_config(s: SequentialSourceConfig) -> Any:
    from recsys.candidates.sequential import SequentialConfig

    return SequentialConfig(
        hidden=s.hidden,
        layers=s.layers,
        max_len=s.max_len,
        max_epochs=s.max_epochs,
        patience=s.patience,
        time_budget_s=s.time_budget_s,
        use_text=s.text_init,
        seed=s.seed,
    )


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
    """

    def __init__(
        self, config: TwoStageConfig, *, items: pl.DataFrame, item_embeddings: np.ndarray | None = None
    ) -> None:
        self.config = config
        self.items = items
        self.item_embeddings = item_embeddings
        self.generators_: dict[str, CandidateGenerator] | None = None
        self.ranker_: LambdaRanker | None = None
        self.snapshot_: F.ItemSnapshot | None = None
        self.feature_names_: list[str] | None = None
        self.report_: dict[str, Any] | None = None
        self._time_unit: str = config.time_unit  # resolved from the data by fit()

    # --- fitting -----------------------------------------------------------------------------------
    def _new_generator(self, name: str) -> CandidateGenerator:
        return new_source(name, self.config, item_embeddings=self.item_embeddings, time_unit=self._time_unit)

    def _fit_generators(
        self, data: Interactions, timings: dict[str, float], *, names: tuple[str, ...] | None = None
    ) -> dict[str, CandidateGenerator]:
        fitted = {}
        for name in self.config.candidates.sources if names is None else names:
            start = time.perf_counter()
            fitted[name] = self._new_generator(name).fit(data)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return fitted

    def _events(self, data: Interactions) -> pl.DataFrame:
        item_ids = self.items.get_column(S.ITEM_ID).to_numpy()
        return pl.DataFrame(
            {
                S.USER_ID: data.users.astype(str),
                S.ITEM_ID: item_ids[data.items].astype(str),
                S.TIMESTAMP: data.timestamps,
            }
        )

    def _snapshot(self, data: Interactions, features: FeatureConfig) -> F.ItemSnapshot:
        now = int(data.timestamps.max()) + 1 if len(data) else 0
        embeddings = self.item_embeddings if self.config.text_features else None
        return F.ItemSnapshot.build(
            self._events(data), self.items, config=features, now=now, embeddings=embeddings
        )

    def fit(self, data: Interactions) -> Self:
        config = self.config
        if data.n_items != self.items.height:
            raise ValueError(
                f"interactions have {data.n_items} items but the items table {self.items.height}"
            )
        self._time_unit = _time_unit(config, data)
        features = replace(config.features, time_unit=self._time_unit)
        timings: dict[str, float] = {}
        tasks = label_tasks(
            data, config.label_protocol, fraction=config.label_fraction, windows=config.label_windows
        )
        # fitted once, on what precedes the earliest label window: no label of any window reaches them
        generators = self._fit_generators(tasks[0].train, timings)
        parts = [
            self._label_groups(generators, task, features, refit=i > 0, timings=timings)
            for i, task in enumerate(tasks)
        ]
        X = np.concatenate([part.X for part in parts])
        labels = np.concatenate([part.labels for part in parts])
        offsets = np.cumsum([0] + [part.n_groups for part in parts])
        rows = np.concatenate([part.rows + offset for part, offset in zip(parts, offsets, strict=False)])
        n_groups = int(offsets[-1])
        has_label = np.zeros(n_groups, dtype=bool)
        has_label[rows[labels > 0]] = True
        keep = has_label[rows] & _sample_negatives(
            rows, labels, config.train_negatives, seed=config.ranker.seed
        )
        groups = np.bincount(rows[keep], minlength=n_groups)
        groups = groups[groups > 0]
        names = parts[0].names
        start = time.perf_counter()
        self.ranker_ = LambdaRanker(config.ranker).fit(X[keep], labels[keep], groups, feature_names=names)
        timings["ranker"] = time.perf_counter() - start
        self.feature_names_ = names
        recall = {
            name: sum(part.hits[name] for part in parts) / max(sum(part.n_targets for part in parts), 1)
            for name in parts[0].hits
        }
        self.generators_ = self._fit_generators(data, timings)
        self.snapshot_ = self._snapshot(data, features)
        self.report_ = {
            "label_users": n_groups,  # (user, window) groups
            "label_users_dropped": int((~has_label).sum()),
            "label_groups": len(groups),
            "label_windows": [
                {"users": part.n_groups, "targets": part.n_targets, "train_events": part.train_events}
                for part in parts
            ],
            "training_rows": int(keep.sum()),
            "inner_candidate_recall": recall,
            "fit_seconds": timings,
            "time_unit": features.time_unit,
        }
        return self

    def _label_groups(
        self,
        generators: dict[str, CandidateGenerator],
        task: EvalTask,
        features: FeatureConfig,
        *,
        refit: bool,
        timings: dict[str, float],
    ) -> _LabelGroups:
        """Featurised, labelled candidates of one label task, one group per user.

        Histories, the item snapshot and (with ``refit``) the ``window_refit`` sources are as of the
        task's start: ``task.train`` holds only events before it.
        """
        if refit:
            generators = generators | self._fit_generators(
                task.train,
                timings,
                names=tuple(s for s in self.config.window_refit if s in generators),
            )
        snapshot = self._snapshot(task.train, features)
        histories = task.train.histories(task.users)
        proposals = self._propose(generators, histories)
        candidates = blend(proposals, total=self.config.candidates.total, n_items=self.items.height)
        X, rows, cols = self._features(generators, candidates, histories, snapshot)
        labels = np.asarray(task.targets[rows, candidates.ids[rows, cols]]).ravel().astype(np.float32)
        hits = {name: _hits(ids, task.targets) for name, (ids, _) in proposals.items()} | {
            "blended": _hits(candidates.ids, task.targets)
        }
        return _LabelGroups(
            X=X,
            labels=labels,
            rows=rows,
            n_groups=len(histories),
            names=F.feature_names(candidates.sources, snapshot),
            hits=hits,
            n_targets=int(task.targets.nnz),
            train_events=len(task.train),
        )

    # --- answering ---------------------------------------------------------------------------------
    def _propose(
        self, generators: dict[str, CandidateGenerator], histories: Histories
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        n = self.config.candidates.per_source
        return {name: g.recommend(histories, n) for name, g in generators.items()}

    def _features(
        self,
        generators: dict[str, CandidateGenerator],
        candidates: Candidates,
        histories: Histories,
        snapshot: F.ItemSnapshot,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        item_ids = snapshot.attrs.get_column(S.ITEM_ID).to_numpy()
        states = F.states_from_histories(
            histories, self.items, item_ids, config=snapshot.config, now=snapshot.now
        )
        rows, cols = np.nonzero(candidates.ids >= 0)
        last = self.last_item_features(generators, histories.last(1)[rows, 0], candidates.ids[rows, cols])
        return F.assemble(candidates, states, snapshot, last)

    def last_item_features(
        self, generators: dict[str, CandidateGenerator], last: np.ndarray, candidates: np.ndarray
    ) -> np.ndarray:
        """``features.last_item_features`` from this model's transitions and embeddings."""
        cooc = generators.get("cooccurrence")
        return F.last_item_features(
            last,
            candidates,
            transitions=getattr(cooc, "similarity_", None),
            embeddings=self.item_embeddings if self.config.text_features else None,
        )

    def candidates(self, histories: Histories) -> Candidates:
        """The blended candidates of each history (before ranking)."""
        check_fitted(self, "generators_")
        assert self.generators_ is not None
        proposals = self._propose(self.generators_, histories)
        return blend(proposals, total=self.config.candidates.total, n_items=self.items.height)

    def recommend(self, histories: Histories, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` of each history by ranker score (after MMR when ``diversity`` > 0)."""
        check_n(n)
        check_fitted(self, "ranker_")
        assert self.ranker_ is not None and self.snapshot_ is not None and self.generators_ is not None
        ids = np.full((len(histories), n), -1, dtype=np.int32)
        scores = np.full((len(histories), n), -np.inf, dtype=np.float32)
        block = 2048  # bounds the feature matrix: block x total x features floats
        for start in range(0, len(histories), block):
            stop = min(start + block, len(histories))
            part = histories.rows(start, stop)
            cands = self.candidates(part)
            X, rows, cols = self._features(self.generators_, cands, part, self.snapshot_)
            dense = np.full(cands.ids.shape, -np.inf, dtype=np.float32)
            dense[rows, cols] = self.ranker_.predict(X)
            top_ids, top_scores = _rank(cands.ids, dense, n, self.config.diversity, self.item_embeddings)
            ids[start:stop], scores[start:stop] = top_ids, top_scores
        return ids, scores

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Item-to-item neighbours from the text source when present, else co-occurrence, else ALS."""
        check_fitted(self, "generators_")
        assert self.generators_ is not None
        for name in ("text", "cooccurrence", "als", "itemknn"):
            if name in self.generators_:
                return self.generators_[name].similar_items(items, n)
        raise ValueError("no source of this model supports similar_items")

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
        config = from_dict(TwoStageConfig, meta["config"], where=f"{path / 'two_stage.json'}:config")
        features = from_dict(FeatureConfig, meta["features"], where=f"{path / 'two_stage.json'}:features")
        emb_path = path / "item_embeddings.npy"
        embeddings = np.load(emb_path, allow_pickle=False) if emb_path.exists() else None
        model = cls(config, items=pl.read_parquet(path / "items.parquet"), item_embeddings=embeddings)
        model.generators_ = {
            name: _loader(name).load(path / "generators" / name) for name in config.candidates.sources
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
        return model


def _sample_negatives(rows: np.ndarray, labels: np.ndarray, per_group: int, *, seed: int) -> np.ndarray:
    """Keep every positive and about ``per_group`` random negatives of each group (row)."""
    negatives = np.bincount(rows[labels == 0], minlength=int(rows.max(initial=-1)) + 1)
    p = np.minimum(1.0, per_group / np.maximum(negatives, 1))
    draw = np.random.default_rng(seed).random(len(rows))
    return np.asarray((labels > 0) | (draw < p[rows]))


def _rank(
    ids: np.ndarray, scores: np.ndarray, n: int, diversity: float, embeddings: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if diversity > 0 and embeddings is not None:
        return mmr(ids, scores, embeddings, n=n, diversity=diversity)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    top_ids = np.take_along_axis(ids, order, axis=1)
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids[~np.isfinite(top_scores)] = -1
    if top_ids.shape[1] < n:
        pad = n - top_ids.shape[1]
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return top_ids, top_scores


def _hits(ids: np.ndarray, targets: Any) -> int:
    """How many target items are found in each row's list, summed over rows."""
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    cols = ids.ravel()
    ok = cols >= 0
    return int(np.asarray(targets[rows[ok], cols[ok]]).ravel().sum())


@dataclass(frozen=True, eq=False)
class _LabelGroups:
    """One label task's ranker rows: ``X[j]`` is a candidate of group ``rows[j]`` with ``labels[j]``."""

    X: np.ndarray  # (n_rows, n_features) float32
    labels: np.ndarray  # (n_rows,) float32, 1 = a held-out item of the group's user
    rows: np.ndarray  # (n_rows,) group (user) of each row, 0..n_groups-1, non-decreasing
    n_groups: int
    names: list[str]
    hits: dict[str, int]  # per source and "blended": targets among the candidates
    n_targets: int
    train_events: int
