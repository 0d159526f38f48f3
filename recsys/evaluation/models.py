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

>>> sorted(MODELS)
['als', 'itemknn', 'popularity']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from recsys.candidates.als import ALS, ALSConfig
from recsys.candidates.base import CandidateGenerator
from recsys.candidates.itemknn import ItemKNN, ItemKNNConfig
from recsys.candidates.popularity import Popularity, PopularityConfig
from recsys.data import schema as S
from recsys.data.dataset import Dataset

T = TypeVar("T")

UNIX_SECONDS_FROM = 100_000_000  # 1973-03-03: smaller timestamps are taken for order indices
DAY = 86_400.0


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

    def cached(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per run and key."""
        if key not in self.cache:
            self.cache[key] = compute()
        value: T = self.cache[key]
        return value

    @property
    def has_clock_time(self) -> bool:
        """Whether timestamps look like Unix seconds rather than per-user order indices."""
        stamps = self.dataset.interactions.get_column(S.TIMESTAMP)
        return bool(len(stamps)) and int(stamps.min()) >= UNIX_SECONDS_FROM  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelSpec:
    """One row of the model table: how to list the configurations and how to build one."""

    grid: Callable[[EvalContext], Sequence[Any]]
    build: Callable[[EvalContext, Any], CandidateGenerator]
    description: str


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


MODELS: dict[str, ModelSpec] = {
    "popularity": ModelSpec(
        _popularity_grid, _popularity_build, "most popular items (time-decayed half-lives on clock time)"
    ),
    "als": ModelSpec(_als_grid, _als_build, "implicit ALS, fold-in users, factors x alpha x bm25 grid"),
    "itemknn": ModelSpec(_itemknn_grid, _itemknn_build, "implicit item-kNN, cosine/bm25 x K grid"),
}


def resolve(names: Sequence[str]) -> list[str]:
    """Check model names against :data:`MODELS`; an unknown name is an error listing the known ones."""
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise KeyError(f"unknown model {unknown[0]!r} (known: {', '.join(sorted(MODELS))})")
    if not names:
        raise KeyError(f"no model named (known: {', '.join(sorted(MODELS))})")
    return list(dict.fromkeys(names))
