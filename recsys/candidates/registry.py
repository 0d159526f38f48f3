"""Every candidate source, in one table: name -> config type, generator class, the class that loads it.

The pipeline's candidate config (``CandidatesConfig``, below: one field per source, named as here),
the evaluation's model list and the contract suite (``tests/candidate_contract.py``) read this
table. To add a source: write its module (a ``CandidateGenerator`` with a frozen config), add one
row to the table and a field of its config type to ``CandidatesConfig``; the contract suite then
asks for a factory.

Config types are imported here, classes only when asked for: the sequential model imports torch,
and ``import recsys`` must not. A saved sequential source is loaded by its NumPy twin
(``loader``), so a loaded model, and the service, never import torch either.

>>> [s.name for s in SOURCES.values()]
['als', 'itemknn', 'cooccurrence', 'text', 'sequential', 'popularity']
>>> source("popularity").generator().__name__
'Popularity'
>>> source("sequential").config().use_text
True
>>> check_names(["als", "popularrity"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown candidate source 'popularrity' (known: als, itemknn, ..., popularity)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from recsys.candidates.als import ALSConfig
from recsys.candidates.base import CandidateGenerator
from recsys.candidates.cooccurrence import CoOccurrenceConfig
from recsys.candidates.itemknn import ItemKNNConfig
from recsys.candidates.popularity import PopularityConfig
from recsys.candidates.sequential_config import SequentialConfig
from recsys.candidates.text import TextRetrieverConfig

GeneratorClass = Callable[[], type[CandidateGenerator]]


@dataclass(frozen=True)
class Source:
    """One candidate source.

    Parameters
    ----------
    name
        The name configs and bundles use (a ``CandidatesConfig`` field, a ``generators/`` folder).
    config
        Its frozen config dataclass.
    generator
        Imports and returns the class the pipeline fits: ``cls(config)``, or
        ``cls(config, item_embeddings=...)`` when ``embeddings``.
    loader
        Imports and returns the class whose ``load`` reads a saved folder, when not ``generator``.
    embeddings
        The constructor needs the (n_items, dim) item text embeddings.
    """

    name: str
    config: type[Any]
    generator: GeneratorClass
    loader: GeneratorClass | None = None
    embeddings: bool = False

    def build(self, config: Any, *, item_embeddings: np.ndarray | None) -> CandidateGenerator:
        """An unfitted generator with ``config``; ``item_embeddings`` go to the sources that read them."""
        if not isinstance(config, self.config):
            raise TypeError(f"candidate source {self.name!r} takes {self.config.__name__}, got {config!r}")
        cls: Any = self.generator()
        if not self.embeddings:
            return cls(config)  # type: ignore[no-any-return]
        if item_embeddings is None:
            raise ValueError(f"candidate source {self.name!r} needs item embeddings")
        return cls(config, item_embeddings=item_embeddings)  # type: ignore[no-any-return]

    def load(self, path: Path) -> CandidateGenerator:
        """Read a folder the generator saved, with the class that answers for it at serving time."""
        cls: Any = (self.loader or self.generator)()
        return cls.load(path)  # type: ignore[no-any-return]


def _lazy(module: str, name: str) -> GeneratorClass:
    """The class ``recsys.candidates.<module>.<name>``, imported when first asked for (the contract
    suite holds each to the ``CandidateGenerator`` protocol)."""

    def generator() -> type[CandidateGenerator]:
        cls: type[CandidateGenerator] = getattr(importlib.import_module(f"recsys.candidates.{module}"), name)
        return cls

    return generator


# The order is the pipeline's default source order, which fixes the ranker's feature order.
SOURCES: Mapping[str, Source] = MappingProxyType(
    {
        s.name: s
        for s in (
            Source("als", ALSConfig, _lazy("als", "ALS")),
            Source("itemknn", ItemKNNConfig, _lazy("itemknn", "ItemKNN")),
            Source("cooccurrence", CoOccurrenceConfig, _lazy("cooccurrence", "CoOccurrence")),
            Source("text", TextRetrieverConfig, _lazy("text", "TextRetriever"), embeddings=True),
            Source(
                "sequential",
                SequentialConfig,
                _lazy("sequential", "SequentialRecommender"),  # imports torch
                loader=_lazy("sequential_numpy", "SequentialScorer"),  # NumPy inference
                embeddings=True,
            ),
            Source("popularity", PopularityConfig, _lazy("popularity", "Popularity")),
        )
    }
)


def check_names(names: Iterable[str]) -> None:
    """ValueError naming the first unknown source of ``names`` (alphabetically) and the known ones."""
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown candidate source {unknown[0]!r} (known: {', '.join(SOURCES)})")


def source(name: str) -> Source:
    """The table's row for ``name``; ValueError naming the known sources if there is none."""
    check_names([name])
    return SOURCES[name]


@dataclass(frozen=True)
class CandidatesConfig:
    """Which sources propose candidates, how many each, and how many survive the blend; and one
    config per source of the table, under its name (the two-stage pipeline's defaults)."""

    sources: tuple[str, ...] = tuple(SOURCES)
    per_source: int = 100
    total: int = 200
    als: ALSConfig = field(default_factory=lambda: ALSConfig(factors=128, regularization=0.01, alpha=40.0))
    itemknn: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    # window 10: the best of the co-occurrence grid on amazon-scientific validation (RESULTS.md)
    cooccurrence: CoOccurrenceConfig = field(default_factory=lambda: CoOccurrenceConfig(window=10))
    text: TextRetrieverConfig = field(default_factory=TextRetrieverConfig)
    # stopped by epochs and patience, not a clock, so a seed repeats (a pipeline fit trains it twice:
    # labels held out, then all); MovieLens: ~20 epochs, 6-7 min on 2 free cores
    sequential: SequentialConfig = field(default_factory=SequentialConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)

    def __post_init__(self) -> None:
        check_names(self.sources)
        if not self.sources:
            raise ValueError("at least one candidate source is needed")
        if self.per_source < 1 or self.total < 1:
            raise ValueError("per_source and total must be >= 1")
