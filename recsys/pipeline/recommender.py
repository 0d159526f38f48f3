"""Answering from a published bundle: what the service calls. No torch, no pickle.

A bundle folder holds ``metadata.json`` and the fitted two-stage model under ``model/``. The
``Recommender`` maps item ids to rows, builds each user's history from the online store's record
(plus any context items), and runs the same candidate, feature and ranking code as offline
evaluation. User×item features come from the feature store's NumPy fast path
(``feature_store.serving.ServingFeatures``), which tests hold equal to the offline definitions.

Fallbacks: a history with no known item gets recent popularity; context items (a session, the
product page being viewed) act as the most recent history, so anonymous users get their
item-to-item and text neighbours. Each answer names the sources that proposed it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feature_store import definitions as D
from feature_store.serving import ServingFeatures
from recsys.candidates.blend import Candidates
from recsys.data import schema as S
from recsys.data.dataset import Histories
from recsys.pipeline.two_stage import TwoStage
from recsys.ranking import features as F


def stable_top(scores: np.ndarray, n: int) -> np.ndarray:
    """``np.argsort(-scores, kind="stable")[:n]`` without sorting the whole catalogue: the first ``n``
    indices by descending score, ties in index order.

    >>> stable_top(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 2).tolist()
    [1, 2]
    """
    neg = -scores
    kth = np.partition(neg, n - 1)[n - 1] if n < len(scores) else np.nan  # the n-th best score
    if np.isnan(kth):  # a short catalogue, or NaN among the best (argsort puts NaN last): sort all
        return np.argsort(neg, kind="stable")[:n]
    tied_or_better = np.flatnonzero(neg <= kth)  # ascending indices, so a stable sort keeps ties in order
    return tied_or_better[np.argsort(neg[tied_or_better], kind="stable")][:n]


@dataclass(frozen=True)
class Filters:
    categories: tuple[str, ...] | None = None
    exclude_item_ids: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    title: str
    sources: tuple[str, ...]


class Recommender:
    """A loaded bundle; see the module docstring."""

    def __init__(self, model: TwoStage, metadata: dict[str, Any]) -> None:
        if model.snapshot_ is None or model.ranker_ is None or model.generators_ is None:
            raise ValueError("the two-stage model is not fitted")
        self.model = model
        self.metadata = metadata
        self.version = str(metadata.get("version", ""))
        items = model.items
        self._ids = items.get_column(S.ITEM_ID).to_numpy().astype(object)
        self._row_of = {item: i for i, item in enumerate(self._ids)}
        self._titles = items.get_column(S.TITLE).to_list()
        table = model.snapshot_.table
        self._category = table.get_column(S.CATEGORY).to_numpy().astype(object)
        self._price = table.get_column(S.PRICE).cast(pl.Float64).to_numpy()
        self._categories = frozenset(c for c in self._category if c is not None)
        self._snapshot = model.snapshot_
        self._features = ServingFeatures(
            table,
            config=model.snapshot_.config,
            embeddings=model.snapshot_.embeddings,
            features=F.store_features(model.snapshot_.config),
        )
        expected = F.feature_names(model.config.candidates.sources, model.snapshot_)
        if model.feature_names_ != expected or model.ranker_.feature_names_ != expected:
            raise ValueError(
                "the bundle's ranker was trained on other features than this version of recsys computes "
                f"({len(model.ranker_.feature_names_ or [])} vs {len(expected)}): retrain with `recsys train`"
            )

    @classmethod
    def load(cls, bundle_dir: Path) -> Recommender:
        bundle_dir = Path(bundle_dir)
        metadata = json.loads((bundle_dir / "metadata.json").read_text())
        return cls(TwoStage.load(bundle_dir / "model"), metadata)

    # --- catalogue ---------------------------------------------------------------------------------
    def has_item(self, item_id: str) -> bool:
        return item_id in self._row_of

    def categories(self) -> frozenset[str]:
        return self._categories

    def _rows(self, item_ids: Sequence[str]) -> list[int]:
        return [self._row_of[i] for i in item_ids if i in self._row_of]

    def _allowed(self, filters: Filters | None, excluded: set[int]) -> np.ndarray:
        """(n_items,) bool: the items a request may return."""
        ok = np.ones(len(self._ids), dtype=bool)
        if excluded:
            ok[list(excluded)] = False
        if filters is None:
            return ok
        if filters.categories is not None:
            ok &= np.isin(self._category, list(filters.categories))
        ok[self._rows(filters.exclude_item_ids)] = False
        with np.errstate(invalid="ignore"):
            if filters.price_min is not None:
                ok &= self._price >= filters.price_min
            if filters.price_max is not None:
                ok &= self._price <= filters.price_max
        return ok

    # --- answering ---------------------------------------------------------------------------------
    def _history_rows(self, history: Sequence[str], context: Sequence[str]) -> list[int]:
        """Known history items then context items, each kept at its most recent position."""
        rows = self._rows(list(history) + list(context))
        return list(dict.fromkeys(reversed(rows)))[::-1]

    def _now(self, record: dict[str, Any] | None) -> int:
        """The features' as-of time: the model's snapshot time, or later if the user acted since.

        Using the wall clock would put every user of a historical catalogue years past anything the
        ranker saw in training; live events move the clock forward for that user.
        """
        last = (record or {}).get(D.LAST_TS)
        return max(self._snapshot.now, int(last) + 1) if last is not None else self._snapshot.now

    def _record(self, rows: list[int], record: dict[str, Any] | None) -> dict[str, Any]:
        """The store's record, or one built from the history rows (anonymous sessions)."""
        if record is not None and record.get(D.N_EVENTS):
            return record
        history = Histories.from_lists([rows])
        states = F.states_from_histories(
            history,
            self.model.items,
            self._ids.astype(str),
            config=self._snapshot.config,
            now=self._snapshot.now,
        )
        from feature_store.record import frame_to_records

        return frame_to_records(states)[1][0]

    def _matrix(self, candidates: Candidates, last: int, record: dict[str, Any]) -> np.ndarray:
        """The ranker's feature rows of one history's valid candidates, in ``feature_names_`` order."""
        assert self.model.generators_ is not None
        retriever, rows, cols = F.retriever_features(candidates)
        item_rows = candidates.ids[rows, cols]
        sequence = self.model.last_item_features(
            self.model.generators_, np.full(len(item_rows), last), item_rows
        )
        store = self._features(record, item_rows, now=self._now(record))
        return np.column_stack(
            [retriever, sequence, *(store[name].astype(np.float32) for name in self._features.features)]
        )

    def _score(self, candidates: Candidates, last: int, record: dict[str, Any]) -> np.ndarray:
        """Ranker scores of one history's candidates (row 0), -inf where there is none."""
        assert self.model.ranker_ is not None
        rows, cols = np.nonzero(candidates.ids >= 0)
        X = self._matrix(candidates, last, record)
        scores = np.full(candidates.ids.shape, -np.inf, dtype=np.float32)
        scores[rows, cols] = self.model.ranker_.predict(X, num_threads=1)
        return scores

    def _popular(self, allowed: np.ndarray, n: int) -> list[Recommendation]:
        assert self.model.generators_ is not None
        popularity = self.model.generators_.get("popularity")
        if popularity is None:  # an ablation without the popularity source: fall back to counts
            counts = self._snapshot.table.get_column("item_pop_all").to_numpy().astype(np.float32)
        else:
            counts = popularity.scores_  # type: ignore[attr-defined]
        scores = np.where(allowed, counts, -np.inf)
        top = stable_top(scores, n)
        return [
            Recommendation(str(self._ids[i]), float(scores[i]), self._titles[i], ("popularity",))
            for i in top
            if np.isfinite(scores[i])
        ]

    def recommend(
        self,
        history: Sequence[str],
        *,
        n: int,
        exclude_seen: bool = True,
        filters: Filters | None = None,
        context_item_ids: Sequence[str] = (),
        user_features: dict[str, Any] | None = None,
    ) -> list[Recommendation]:
        """Top ``n`` for one user: ``history`` is the user's item ids, oldest first.

        ``user_features`` is the online store's record of the user (None or empty for unknown users).
        """
        rows = self._history_rows(history, context_item_ids)
        excluded = set(rows) if exclude_seen else set()
        allowed = self._allowed(filters, excluded)
        if not rows:
            return self._popular(allowed, n)
        candidates = self.model.candidates(Histories.from_lists([rows]))
        scores = self._score(candidates, rows[-1], self._record(rows, user_features))[0]
        ids = candidates.ids[0]
        ok = (ids >= 0) & np.isfinite(scores)
        ok[ok] &= allowed[ids[ok]]
        by_score = np.argsort(-scores, kind="stable")
        order = by_score[ok[by_score]][:n]
        # which sources proposed each answer (rank NaN: not proposed), as Python bools in one call
        proposed = (~np.isnan(candidates.ranks[0, order])).tolist()
        out = [
            Recommendation(
                str(self._ids[ids[j]]),
                float(scores[j]),
                self._titles[ids[j]],
                tuple(s for s, by in zip(candidates.sources, flags, strict=True) if by),
            )
            for j, flags in zip(order.tolist(), proposed, strict=True)
        ]
        if len(out) < n:  # filters left too few: fill with popular items that pass them
            allowed[[self._row_of[r.item_id] for r in out]] = False
            out += self._popular(allowed, n - len(out))
        return out

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        *,
        n: int,
        exclude_seen: bool = True,
        filters: Filters | None = None,
        user_features: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[list[Recommendation]]:
        """``recommend`` for many users (campaigns)."""
        records = user_features or [None] * len(histories)
        return [
            self.recommend(h, n=n, exclude_seen=exclude_seen, filters=filters, user_features=r)
            for h, r in zip(histories, records, strict=True)
        ]

    def similar_items(self, item_id: str, *, n: int) -> list[Recommendation]:
        """Neighbours of one item by text embedding, then co-occurrence; KeyError if unknown."""
        row = self._row_of[item_id]
        assert self.model.generators_ is not None
        merged: dict[int, tuple[float, list[str]]] = {}
        for name in ("text", "cooccurrence", "als", "itemknn"):
            generator = self.model.generators_.get(name)
            if generator is None:
                continue
            ids, scores = generator.similar_items(np.array([row]), n)
            for rank, (i, s) in enumerate(zip(ids[0], scores[0], strict=True)):
                if i >= 0 and np.isfinite(s):
                    best, sources = merged.get(int(i), (np.inf, []))
                    merged[int(i)] = (min(best, rank), [*sources, name])
        order = sorted(merged.items(), key=lambda kv: (kv[1][0], -len(kv[1][1])))[:n]
        return [
            Recommendation(str(self._ids[i]), 1.0 / (1.0 + rank), self._titles[i], tuple(sources))
            for i, (rank, sources) in order
        ]

    def explain(
        self,
        history: Sequence[str],
        item_id: str,
        *,
        top: int = 5,
        user_features: dict[str, Any] | None = None,
    ) -> list[tuple[str, float]]:
        """The ranker's ``top`` feature contributions to ``item_id``'s score for this user."""
        target = self._row_of[item_id]
        rows = self._history_rows(history, ())
        assert self.model.ranker_ is not None
        found = self.model.candidates(Histories.from_lists([rows]))
        at = np.flatnonzero(found.ids[0] == target)
        if len(at):
            j = int(at[0])
            single = Candidates(
                found.sources, found.ids[:, j : j + 1], found.scores[:, j : j + 1], found.ranks[:, j : j + 1]
            )
        else:  # not proposed by any source: explain the ranker's view with no retriever evidence
            shape = (1, 1, len(found.sources))
            single = Candidates(
                found.sources,
                np.array([[target]], dtype=np.int32),
                np.full(shape, np.nan, np.float32),
                np.full(shape, np.nan, np.float32),
            )
        X = self._matrix(single, rows[-1] if rows else -1, self._record(rows, user_features))
        return self.model.ranker_.explain(X, top=top)[0]
