"""Most popular items, optionally "recently popular" with an exponential time decay.

The baseline every personalised model must beat, and the fallback for users with no history. Each
training event adds ``2 ** (-(t_max - t) / half_life)`` to its item's score, ``t_max`` being the
latest training timestamp, so an event one half-life old counts half. Without a half-life every
event counts 1. Every history gets the same ranking, minus its own items.

Which half-life suits a catalogue changes with its activity (a week when thousands of events arrive
daily, months when a week holds a handful). With ``half_life_choices``, ``fit`` chooses the
half-life itself, on its own training data: the one whose list scores the best NDCG@10 on the last
``choice_fraction`` of the events (the temporal split's targets: new items of users seen before),
fitted on the events before them; then it fits on all the events with it.

>>> from recsys.data.dataset import Histories, Interactions
>>> data = Interactions.from_arrays([0, 0, 1, 2], [0, 1, 1, 2], n_users=3, n_items=4)
>>> model = Popularity().fit(data)
>>> ids, scores = model.recommend(Histories.from_lists([[1], []]), 3)
>>> ids.tolist(), scores.tolist()
([[0, 2, 3], [1, 0, 2]], [[1.0, 1.0, 0.0], [2.0, 1.0, 1.0]])
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

import numpy as np

from recsys.candidates.artifact import read_folder, write_folder
from recsys.candidates.base import check_fitted, neighbours, ranked
from recsys.config import from_dict, to_dict
from recsys.data.dataset import Histories, Interactions
from recsys.data.splits import window_task
from recsys.evaluation.metrics import ranking_metrics

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
    half_life_choices
        Further half-lives ``fit`` may choose instead of ``half_life`` (module docstring); empty: no
        choice. A saved model's config holds the chosen one and no choices.
    choice_fraction
        Share of the latest training events the choice is scored on.
    """

    half_life: float | None = None
    use_weights: bool = False
    half_life_choices: tuple[float, ...] = ()
    choice_fraction: float = 0.1

    def __post_init__(self) -> None:
        for value in (self.half_life, *self.half_life_choices):
            if value is not None and not value > 0:
                raise ValueError(
                    f"PopularityConfig: half_life and half_life_choices must be positive, got {value!r}"
                )
        if not 0 < self.choice_fraction < 1:
            raise ValueError(
                f"PopularityConfig.choice_fraction must be in (0, 1), got {self.choice_fraction!r}"
            )


class Popularity:
    """Non-personalised ranking by (time-decayed) event counts.

    Attributes
    ----------
    scores_ : numpy.ndarray
        (n_items,) float32 popularity score of every item; 0 for items never seen in training.
    half_life_ : float or None
        The half-life the scores were computed with (the chosen one, with ``half_life_choices``).
    """

    def __init__(self, config: PopularityConfig | None = None) -> None:
        self.config = config or PopularityConfig()
        self.scores_: np.ndarray | None = None
        self.half_life_: float | None = None

    def fit(self, data: Interactions) -> Self:
        """Sum the (decayed) events of each item, with the chosen half-life if there is a choice."""
        self.half_life_ = (
            self._choose_half_life(data) if self.config.half_life_choices else self.config.half_life
        )
        self.scores_ = _scores(data, replace(self.config, half_life=self.half_life_))
        return self

    def _choose_half_life(self, data: Interactions) -> float | None:
        """The candidate half-life with the best NDCG@10 on the latest ``choice_fraction`` of ``data``
        (the first, ``half_life``, on ties or when there is nothing to score)."""
        candidates = (self.config.half_life, *self.config.half_life_choices)
        ts = data.timestamps
        if not len(ts):
            return candidates[0]
        before = ts < int(np.quantile(ts, 1 - self.config.choice_fraction, method="higher"))
        task = window_task(data, before, ~before, name="half-life choice", cold_start_users=False)
        if not len(task.users):
            return candidates[0]
        histories = task.train.histories(task.users)
        scores = []
        for half_life in candidates:
            popular = _scores(task.train, replace(self.config, half_life=half_life))
            ids, _ = ranked(lambda block, p=popular: np.tile(p, (len(block), 1)), histories, 10, data.n_items)
            scores.append(ranking_metrics(ids, task.targets, ks=[10])["ndcg@10"])
        return candidates[int(np.argmax(scores))]  # argmax: the first of equal scores

    @property
    def n_items(self) -> int:
        check_fitted(self, "scores_")
        assert self.scores_ is not None
        return len(self.scores_)

    def recommend(self, histories: Histories, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items not in each history: ``(ids, scores)`` of shape (batch, n)."""
        check_fitted(self, "scores_")
        assert self.scores_ is not None
        scores = self.scores_
        return ranked(lambda block: np.tile(scores, (len(block), 1)), histories, n, self.n_items)

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
        fitted = replace(self.config, half_life=self.half_life_, half_life_choices=())
        meta = {"format": FORMAT, "n_items": self.n_items, "config": to_dict(fitted)}
        write_folder(path, meta, {"scores": self.scores_})

    @classmethod
    def load(cls, path: Path) -> Popularity:
        """Read a folder written by :meth:`save`."""
        meta, arrays = read_folder(path, FORMAT, ("scores",))
        model = cls(from_dict(PopularityConfig, meta["config"], where=f"{Path(path) / 'config.json'}:config"))
        if arrays["scores"].shape != (int(meta["n_items"]),):
            raise ValueError(f"{path}: scores.npy does not match n_items={meta['n_items']}")
        model.scores_ = arrays["scores"].astype(np.float32)
        model.half_life_ = model.config.half_life
        return model


def _scores(data: Interactions, config: PopularityConfig) -> np.ndarray:
    weights = data.weights.astype(np.float64) if config.use_weights else np.ones(len(data))
    if config.half_life is not None and len(data):
        age = (data.timestamps.max() - data.timestamps).astype(np.float64)
        weights = weights * np.exp2(-age / config.half_life)
    return np.bincount(data.items, weights=weights, minlength=data.n_items).astype(np.float32)
