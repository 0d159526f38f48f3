"""The models ``recsys evaluate --models`` knows: one table, :data:`MODELS`, name -> :class:`ModelSpec`.

A spec has a ``grid`` (the configurations to tune over, given the :class:`EvalContext`) and a
``build`` (a fresh, unfitted :class:`~recsys.candidates.base.CandidateGenerator` for one
configuration). The protocol picks the configuration with the best validation NDCG@10, refits it
on the test task's training data and reports test metrics.

Adding a model
--------------
Write a grid function and a build function, and add one entry to :data:`MODELS`::

    def _text_grid(ctx: EvalContext) -> list[TextConfig]:
        return [TextConfig()]

    def _text_build(ctx: EvalContext, config: TextConfig) -> CandidateGenerator:
        from recsys.candidates.text import TextGenerator  # heavy imports stay inside

        embeddings = ctx.cached("item_embeddings", lambda: encode_items(ctx.dataset.items))
        ctx.item_embeddings = embeddings  # optional: enables intra-list diversity for every model
        return TextGenerator(config, embeddings=embeddings)

    MODELS["text"] = ModelSpec(_text_grid, _text_build, "frozen BERT item embeddings")

``ctx.dataset`` is the full, validated :class:`~recsys.data.dataset.Dataset` (item texts included);
anything derived from it is computed once per run through ``ctx.cached``. Builders must never
look at interactions outside what ``fit`` receives: the protocol hands each task's training data
to ``fit``, and that is the only place interactions may come from.

>>> sorted(MODELS)  # doctest: +NORMALIZE_WHITESPACE
['als', 'cooccurrence', 'itemknn', 'pipeline', 'pipeline-notext', 'popularity', 'sequential',
 'sequential-text', 'text']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from recsys.candidates.als import ALS, ALSConfig
from recsys.candidates.base import CandidateGenerator
from recsys.candidates.itemknn import ItemKNN, ItemKNNConfig
from recsys.candidates.popularity import Popularity, PopularityConfig
from recsys.data import schema as S
from recsys.data.dataset import Dataset
from recsys.data.splits import EvalTask
from recsys.evaluation.protocol import Diagnose

if TYPE_CHECKING:
    from recsys.pipeline.two_stage import TwoStageConfig

T = TypeVar("T")

DAY = 86_400.0
DIAGNOSE_BLOCK = 2048  # test users per candidate pass of the pipeline's diagnostics: bounds memory


@dataclass
class EvalContext:
    """What builders may use: the dataset, the run's seed, and a cache for derived artifacts.

    ``item_embeddings`` ((n_items, dim), row ``i`` = item ``i``), when set by the caller or by a
    builder, turns on the intra-list diversity metric for every model of the run.
    """

    dataset: Dataset
    seed: int = 0
    num_threads: int = 0
    item_embeddings: np.ndarray | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    encoder: str = ""  # item encoder of the ``text`` model: '' = packaged MiniLM, or a fine-tuned folder
    pipeline: TwoStageConfig | None = None  # the pipeline models' configuration (None: the built-in one)
    embedding_cache: str = "artifacts/cache/embeddings"  # recsys.encoder.embed cache ('' = none)

    def cached(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per run and key."""
        if key not in self.cache:
            self.cache[key] = compute()
        value: T = self.cache[key]
        return value

    @property
    def has_clock_time(self) -> bool:
        """Whether timestamps look like Unix seconds rather than per-user order indices."""
        return S.are_unix_seconds(self.dataset.interactions.get_column(S.TIMESTAMP))


@dataclass(frozen=True)
class ModelSpec:
    """One row of the model table: how to list the configurations and how to build one, and what
    to report about the fitted test model besides its lists (``diagnose``, optional)."""

    grid: Callable[[EvalContext], Sequence[Any]]
    build: Callable[[EvalContext, Any], CandidateGenerator]
    description: str
    diagnose: Diagnose | None = None


def _popularity_grid(ctx: EvalContext) -> list[PopularityConfig]:
    # A global time decay only means something on clock time; order indices restart per user.
    if not ctx.has_clock_time:
        return [PopularityConfig()]
    return [PopularityConfig()] + [PopularityConfig(half_life=days * DAY) for days in (7, 30, 180)]


def _popularity_build(ctx: EvalContext, config: PopularityConfig) -> CandidateGenerator:
    return Popularity(config)


def _als_grid(ctx: EvalContext) -> list[ALSConfig]:
    return [
        ALSConfig(
            factors=factors,
            regularization=0.01,
            alpha=alpha,
            iterations=15,
            bm25=bm25,
            seed=ctx.seed,
            num_threads=ctx.num_threads,
        )
        for factors in (64, 128)
        for alpha in (10.0, 40.0)
        for bm25 in (False, True)
    ]


def _als_build(ctx: EvalContext, config: ALSConfig) -> CandidateGenerator:
    return ALS(config)


def _itemknn_grid(ctx: EvalContext) -> list[ItemKNNConfig]:
    return [
        ItemKNNConfig(neighbours=k, similarity=similarity, num_threads=ctx.num_threads)
        for similarity in ("cosine", "bm25")
        for k in (50, 200, 1000)
    ]


def _itemknn_build(ctx: EvalContext, config: ItemKNNConfig) -> CandidateGenerator:
    return ItemKNN(config)


def _text_grid(ctx: EvalContext) -> list[Any]:
    from recsys.candidates.text import TextRetrieverConfig

    return [TextRetrieverConfig(last_n=1)] + [
        TextRetrieverConfig(last_n=n, decay=decay) for n in (3, 5) for decay in (0.5, 0.8)
    ]


def _text_embeddings(ctx: EvalContext) -> np.ndarray:
    """Item embeddings of the ``--encoder`` (computed once per run)."""

    def embed() -> np.ndarray:
        from recsys.encoder.embed import embed_items  # imports torch only here

        return embed_items(ctx.dataset.items, encoder=ctx.encoder, cache_dir=ctx.embedding_cache or None)

    embeddings = ctx.cached(f"text_embeddings:{ctx.encoder}", embed)
    if ctx.item_embeddings is None:
        ctx.item_embeddings = embeddings  # enables intra-list diversity for every model of the run
    return embeddings


def _text_build(ctx: EvalContext, config: Any) -> CandidateGenerator:
    from recsys.candidates.text import TextRetriever

    return TextRetriever(config, item_embeddings=_text_embeddings(ctx))


def _pipeline_grid(ctx: EvalContext, *, text: bool = True) -> list[Any]:
    from recsys.pipeline.defaults import pipeline_config_for

    # the model `recsys train` and `recsys retrain` fit on this data: labels held out the way the
    # data's time allows, popularity windows to match (recsys.pipeline.defaults); or the caller's
    # own configuration (EvaluationOptions.pipeline)
    base = ctx.pipeline if ctx.pipeline is not None else pipeline_config_for(ctx.dataset)
    # the run's seed reaches every seeded part: ALS, the sequential model, the ranker's sampling
    candidates = replace(
        base.candidates,
        sources=tuple(s for s in base.candidates.sources if text or s != "text"),
        als=replace(base.candidates.als, seed=ctx.seed),
        sequential=replace(
            base.candidates.sequential, use_text=text and base.candidates.sequential.use_text, seed=ctx.seed
        ),
    )
    seeded = replace(base, candidates=candidates, ranker=replace(base.ranker, seed=ctx.seed))
    return [seeded if text else replace(seeded, text_features=False)]


def _pipeline_build(ctx: EvalContext, config: Any) -> CandidateGenerator:
    from recsys.candidates.registry import source
    from recsys.pipeline.two_stage import TwoStage

    # the catalogue is embedded only for a configuration that reads the embeddings (the built-in
    # ones all do: the sequential source takes them); a quick one without them skips that minute
    reads = (
        config.text_features
        or config.diversity > 0
        or any(source(name).embeddings for name in config.candidates.sources)
    )
    return TwoStage(config, items=ctx.dataset.items, item_embeddings=_text_embeddings(ctx) if reads else None)


def _pipeline_diagnose(model: CandidateGenerator, task: EvalTask) -> dict[str, Any]:
    """The fitted pipeline on its test task: the share of test targets among each source's
    candidates and among the blend (what the ranker can at best find), the ranker's feature
    importance, and the fit's own report (its label groups, inner candidate recall, seconds)."""
    from recsys.evaluation.metrics import hit_matrix
    from recsys.pipeline.two_stage import TwoStage

    assert isinstance(model, TwoStage), f"pipeline diagnostics of a {type(model).__name__}"
    hits: dict[str, int] = {}
    for lo in range(0, len(task.users), DIAGNOSE_BLOCK):
        users = task.users[lo : lo + DIAGNOSE_BLOCK]
        proposals, blended = model.proposals(task.train.histories(users))
        targets = task.targets[lo : lo + len(users)]
        for name, ids in [*((name, ids) for name, (ids, _) in proposals.items()), ("blended", blended.ids)]:
            hits[name] = hits.get(name, 0) + int(hit_matrix(ids, targets).sum())
    n_targets = max(int(task.targets.nnz), 1)
    candidates = model.config.candidates
    return {
        "candidate_recall": {name: count / n_targets for name, count in hits.items()},
        "candidates": {"per_source": candidates.per_source, "total": candidates.total},
        "feature_importance": model.feature_importance(),
        "importance_type": "gain",
        "fit_report": model.report_,
    }


def _cooccurrence_grid(ctx: EvalContext) -> list[Any]:
    from recsys.candidates.cooccurrence import CoOccurrenceConfig

    return [
        CoOccurrenceConfig(window=window, beta=beta, recency_decay=recency)
        for window in (3, 5, 10)
        for beta in (0.1, 0.3)
        for recency in (0.6, 0.8)
    ]


def _cooccurrence_build(ctx: EvalContext, config: Any) -> CandidateGenerator:
    from recsys.candidates.cooccurrence import CoOccurrence

    return CoOccurrence(config)


def _sequential_grid(ctx: EvalContext) -> list[Any]:
    from recsys.candidates.sequential import SequentialConfig  # imports torch only here

    # one configuration: each fit trains a network (with its own early stopping), minutes on 2 cores
    return [SequentialConfig(seed=ctx.seed, threads=ctx.num_threads)]


def _sequential_build(ctx: EvalContext, config: Any) -> CandidateGenerator:
    from recsys.candidates.sequential import SequentialRecommender

    return SequentialRecommender(config)  # item ids only


def _sequential_text_build(ctx: EvalContext, config: Any) -> CandidateGenerator:
    from recsys.candidates.sequential import SequentialRecommender

    # item vectors = id embedding + projection of the --encoder's frozen text embeddings
    return SequentialRecommender(config, item_embeddings=_text_embeddings(ctx))


MODELS: dict[str, ModelSpec] = {
    "popularity": ModelSpec(
        _popularity_grid, _popularity_build, "most popular items (time-decayed half-lives on clock time)"
    ),
    "als": ModelSpec(_als_grid, _als_build, "implicit ALS, fold-in users, factors x alpha x bm25 grid"),
    "itemknn": ModelSpec(_itemknn_grid, _itemknn_build, "implicit item-kNN, cosine/bm25 x K grid"),
    "text": ModelSpec(
        _text_grid, _text_build, "BERT item-text embeddings (--encoder), recency-weighted profile, cosine"
    ),
    "cooccurrence": ModelSpec(
        _cooccurrence_grid, _cooccurrence_build, "recency-weighted item-to-item transitions, window grid"
    ),
    "sequential": ModelSpec(_sequential_grid, _sequential_build, "SASRec-style next-item transformer"),
    "sequential-text": ModelSpec(
        _sequential_grid, _sequential_text_build, "SASRec-style, item vectors + text embeddings (--encoder)"
    ),
    "pipeline": ModelSpec(
        _pipeline_grid,
        _pipeline_build,
        "two-stage: all retrievers blended, LightGBM LambdaRank (--encoder)",
        _pipeline_diagnose,
    ),
    "pipeline-notext": ModelSpec(
        lambda ctx: _pipeline_grid(ctx, text=False),
        _pipeline_build,
        "ablation: the two-stage pipeline without any text-embedding source, init or feature",
        _pipeline_diagnose,
    ),
}


def resolve(names: Sequence[str]) -> list[str]:
    """Check model names against :data:`MODELS`; an unknown name is an error listing the known ones."""
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise KeyError(f"unknown model {unknown[0]!r} (known: {', '.join(sorted(MODELS))})")
    if not names:
        raise KeyError(f"no model named (known: {', '.join(sorted(MODELS))})")
    return list(dict.fromkeys(names))
