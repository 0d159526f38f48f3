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
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feature_store import definitions as D
from feature_store.serving import ServingFeatures
from recsys.candidates.blend import Candidates
from recsys.candidates.popularity import Popularity
from recsys.data import schema as S
from recsys.data.dataset import Histories
from recsys.pipeline.two_stage import SIMILAR_SOURCES, TwoStage
from recsys.ranking import features as F

BATCH = 2048  # users scored at once by recommend_batch: bounds the candidate and feature arrays


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
        has_text = S.DESCRIPTION in items.columns
        self._descriptions = items.get_column(S.DESCRIPTION).to_list() if has_text else [None] * items.height
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
        popularity = model.generators_.get("popularity")
        # the fallback ranking; an ablation without the popularity source falls back to all-time counts
        self._popularity = (
            popularity.item_scores()
            if isinstance(popularity, Popularity)
            else table.get_column("item_pop_all").to_numpy().astype(np.float32)
        )
        expected = F.feature_names(model.config.candidates.sources, model.snapshot_)
        if model.feature_names_ != expected or model.ranker_.feature_names_ != expected:
            raise ValueError(
                "the bundle's ranker was trained on other features than this version of recsys computes "
                f"({len(model.ranker_.feature_names_ or [])} vs {len(expected)}): retrain with `recsys train`"
            )

    @classmethod
    def load(cls, bundle_dir: Path, *, compile_ranker: bool = False) -> Recommender:
        """The bundle in ``bundle_dir``; ``compile_ranker`` compiles the ranker's bag in this process
        first (``LambdaRanker.compile``: seconds to a minute, then several times cheaper requests)."""
        bundle_dir = Path(bundle_dir)
        metadata = json.loads((bundle_dir / "metadata.json").read_text())
        model = TwoStage.load(bundle_dir / "model")
        if compile_ranker and model.ranker_ is not None:
            model.ranker_.compile()
        return cls(model, metadata)

    # --- catalogue ---------------------------------------------------------------------------------
    def has_item(self, item_id: str) -> bool:
        return item_id in self._row_of

    def categories(self) -> frozenset[str]:
        return self._categories

    def _rows(self, item_ids: Sequence[str]) -> list[int]:
        return [self._row_of[i] for i in item_ids if i in self._row_of]

    def _allowed(self, filters: Filters | None, *, excluded: Sequence[int] = ()) -> np.ndarray:
        """(n_items,) bool: the items a request's filters let through, ``excluded`` rows not. Only the
        popularity fallback needs it; ranked candidates are checked one by one (``_passing``)."""
        ok = self._passing(filters, np.arange(len(self._ids)))
        ok[list(excluded)] = False
        return ok

    def _passing(self, filters: Filters | None, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) bool: which of the item ``rows`` a request's filters let through."""
        ok = np.ones(len(rows), dtype=bool)
        if filters is None:
            return ok
        if filters.categories is not None:
            ok &= np.isin(self._category[rows], list(filters.categories))
        ok &= ~np.isin(rows, self._rows(filters.exclude_item_ids))
        with np.errstate(invalid="ignore"):
            if filters.price_min is not None:
                ok &= self._price[rows] >= filters.price_min
            if filters.price_max is not None:
                ok &= self._price[rows] <= filters.price_max
        return ok

    # --- answering ---------------------------------------------------------------------------------
    def _history_rows(self, history: Sequence[str], context: Sequence[str]) -> list[int]:
        """Known history items then context items, each kept at its most recent position."""
        rows = self._rows(list(history) + list(context))
        return list(dict.fromkeys(reversed(rows)))[::-1]

    def _now(self, record: dict[str, Any]) -> int:
        """The features' as-of time: the model's snapshot time, or later if the user acted since.

        Using the wall clock would put every user of a historical catalogue years past anything the
        ranker saw in training; live events move the clock forward for that user.
        """
        last = record.get(D.LAST_TS)
        return max(self._snapshot.now, int(last) + 1) if last is not None else self._snapshot.now

    def _records(
        self, rows: list[list[int]], records: Sequence[dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        """Each history's record from the store, or one built from its rows (anonymous sessions)."""
        out = [r if r is not None and r.get(D.N_EVENTS) else None for r in records]
        missing = [u for u, record in enumerate(out) if record is None]
        if missing:
            from feature_store.record import frame_to_records

            states = F.states_from_histories(
                Histories.from_lists([rows[u] for u in missing]),
                self.model.items,
                self._ids.astype(str),
                config=self._snapshot.config,
                now=self._snapshot.now,
            )
            for u, record in zip(missing, frame_to_records(states)[1], strict=True):
                out[u] = record
        return [r for r in out if r is not None]

    def _matrix(self, candidates: Candidates, last: np.ndarray, records: list[dict[str, Any]]) -> np.ndarray:
        """The ranker's feature rows of every valid candidate (row-major), in ``feature_names_`` order.

        ``last`` is each history's last item row (-1: none), ``records`` each history's user record.
        """
        assert self.model.generators_ is not None
        retriever, rows, cols = F.retriever_features(candidates)
        item_rows = candidates.ids[rows, cols]
        sequence = self.model.last_item_features(self.model.generators_, last[rows], item_rows)
        bounds = np.searchsorted(rows, np.arange(len(records) + 1))  # each history's feature rows
        store = [
            self._features(record, item_rows[a:b], now=self._now(record))
            for record, a, b in zip(records, bounds[:-1], bounds[1:], strict=True)
        ]
        columns = [np.concatenate([part[name] for part in store]) for name in self._features.features]
        return np.column_stack([retriever, sequence, *(c.astype(np.float32) for c in columns)])

    def _scored(
        self, rows: list[list[int]], records: Sequence[dict[str, Any] | None], *, exclude_seen: bool
    ) -> tuple[Candidates, np.ndarray]:
        """The candidates of each (non-empty) history and their ranker scores, -inf where there is none;
        the history's own items are candidates too when ``exclude_seen`` is False."""
        assert self.model.ranker_ is not None
        candidates = self.model.candidates(Histories.from_lists(rows), exclude_seen=exclude_seen)
        last = np.array([r[-1] for r in rows], dtype=np.int64)
        X = self._matrix(candidates, last, self._records(rows, records))
        scores = np.full(candidates.ids.shape, -np.inf, dtype=np.float32)
        scores[candidates.ids >= 0] = self.model.ranker_.predict(X, num_threads=1)
        return candidates, scores

    def _popular(self, allowed: np.ndarray, n: int) -> list[Recommendation]:
        scores = np.where(allowed, self._popularity, -np.inf)
        top = stable_top(scores, n)
        return [
            Recommendation(str(self._ids[i]), float(scores[i]), self._titles[i], ("popularity",))
            for i in top
            if np.isfinite(scores[i])
        ]

    def _top(
        self,
        candidates: Candidates,
        scores: np.ndarray,
        row: int,
        n: int,
        *,
        filters: Filters | None,
        excluded: Sequence[int],
    ) -> list[Recommendation]:
        """The ``n`` best candidates of history ``row`` that pass ``filters`` and are not ``excluded``
        (item rows), filled with popular items that qualify. Per candidate: nothing here reads the
        whole catalogue unless too few candidates qualify."""
        ids = candidates.ids[row]
        ok = (ids >= 0) & np.isfinite(scores[row])
        ok[ok] &= self._passing(filters, ids[ok]) & ~np.isin(ids[ok], np.asarray(excluded, dtype=np.int64))
        by_score = np.argsort(-scores[row], kind="stable")
        order = by_score[ok[by_score]][:n]
        # which sources proposed each answer (rank NaN: not proposed), as Python bools in one call
        proposed = (~np.isnan(candidates.ranks[row, order])).tolist()
        out = [
            Recommendation(
                str(self._ids[ids[j]]),
                float(scores[row, j]),
                self._titles[ids[j]],
                tuple(s for s, by in zip(candidates.sources, flags, strict=True) if by),
            )
            for j, flags in zip(order.tolist(), proposed, strict=True)
        ]
        if len(out) < n:  # filters left too few: fill with popular items that pass them
            chosen = [self._row_of[r.item_id] for r in out]
            out += self._popular(self._allowed(filters, excluded=[*excluded, *chosen]), n - len(out))
        return out

    def _answer(
        self,
        rows: list[list[int]],
        records: Sequence[dict[str, Any] | None],
        *,
        n: int,
        exclude_seen: bool,
        filters: Filters | None,
    ) -> list[list[Recommendation]]:
        """Top ``n`` of each history (item rows, oldest first): every non-empty history's candidates
        are scored in one pass; an empty history gets recent popularity."""
        known = [u for u, history in enumerate(rows) if history]
        scored = (
            self._scored([rows[u] for u in known], [records[u] for u in known], exclude_seen=exclude_seen)
            if known
            else None
        )
        row_of = {u: i for i, u in enumerate(known)}
        out = []
        for u, history in enumerate(rows):
            excluded = history if exclude_seen else []
            if scored is not None and u in row_of:
                out.append(self._top(*scored, row_of[u], n, filters=filters, excluded=excluded))
            else:
                out.append(self._popular(self._allowed(filters, excluded=excluded), n))
        return out

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

        ``exclude_seen`` False lets the history and context items compete with the rest ("buy
        again"); ``filters`` apply either way. ``user_features`` is the online store's record of the
        user (None or empty for unknown users).
        """
        rows = self._history_rows(history, context_item_ids)
        return self._answer([rows], [user_features], n=n, exclude_seen=exclude_seen, filters=filters)[0]

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        *,
        n: int,
        exclude_seen: bool = True,
        filters: Filters | None = None,
        user_features: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[list[Recommendation]]:
        """``recommend`` for many users (campaigns), scored in blocks of ``BATCH`` users."""
        records = user_features or [None] * len(histories)
        if len(records) != len(histories):
            raise ValueError(f"{len(histories)} histories but {len(records)} user records")
        rows = [self._history_rows(h, ()) for h in histories]
        out: list[list[Recommendation]] = []
        for start in range(0, len(rows), BATCH):
            block = slice(start, start + BATCH)
            out += self._answer(rows[block], records[block], n=n, exclude_seen=exclude_seen, filters=filters)
        return out

    def describe(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Each item's catalogue fields (``item_id``, ``title``, ``description``, ``category``,
        ``price``; ``None`` where the catalogue has none); KeyError if an item is unknown."""
        out = []
        for item_id in item_ids:
            row = self._row_of[item_id]
            price = float(self._price[row])
            out.append(
                {
                    S.ITEM_ID: item_id,
                    S.TITLE: self._titles[row],
                    S.DESCRIPTION: self._descriptions[row],
                    S.CATEGORY: self._category[row],
                    S.PRICE: price if np.isfinite(price) else None,
                }
            )
        return out

    def n_items(self) -> int:
        return len(self._ids)

    def feature_importance(self) -> dict[str, float]:
        """The ranker's total gain per feature, largest first."""
        return self.model.feature_importance()

    def similar_sources(self) -> tuple[str, ...]:
        """The item-to-item sources of this model: what ``similar_items(source=...)`` takes."""
        generators = self.model.generators_ or {}
        return tuple(name for name in SIMILAR_SOURCES if name in generators)

    def similar_items(self, item_id: str, *, n: int, source: str | None = None) -> list[Recommendation]:
        """Neighbours of one item, merged over the item-to-item sources (``TwoStage.neighbours``), or
        those of one ``source`` alone (its own order and scores: cosine for text, counts for
        co-occurrence). KeyError if the item is unknown, ValueError if the model has no such source."""
        if source is not None:
            return self._source_neighbours(item_id, n=n, source=source)
        found = self.model.neighbours(np.array([self._row_of[item_id]]), n)
        return [
            Recommendation(
                str(self._ids[i]),
                score,
                self._titles[i],
                tuple(s for s, by in zip(found.sources, flags, strict=True) if by),
            )
            for i, score, flags in zip(
                found.ids[0].tolist(), found.scores[0].tolist(), found.found[0].tolist(), strict=True
            )
            if i >= 0
        ]

    def _source_neighbours(self, item_id: str, *, n: int, source: str) -> list[Recommendation]:
        if source not in self.similar_sources():
            known = ", ".join(self.similar_sources()) or "none"
            raise ValueError(f"this model has no item-to-item source {source!r} (it has: {known})")
        assert self.model.generators_ is not None
        ids, scores = self.model.generators_[source].similar_items(np.array([self._row_of[item_id]]), n)
        return [
            Recommendation(str(self._ids[i]), score, self._titles[i], (source,))
            for i, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True)
            if i >= 0 and math.isfinite(score)
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
        last = np.array([rows[-1] if rows else -1])
        X = self._matrix(single, last, self._records([rows], [user_features]))
        return self.model.ranker_.explain(X, top=top)[0]
