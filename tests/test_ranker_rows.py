"""The ranker's training set (``recsys.ranking.dataset.ranker_rows``) on hand-made sources, where each
row's label, each group's fate and each source's recall are known."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

import numpy as np
import pytest

from recsys.candidates.base import CandidateGenerator
from recsys.candidates.blend import blend
from recsys.data.dataset import Histories, Interactions
from recsys.ranking.dataset import CandidateRows, LabelConfig, RankerRows, ranker_rows

N_ITEMS = 8


class Fixed:
    """Proposes the same items, best first, to every history; remembers what it was fitted on."""

    def __init__(self, items: list[int]) -> None:
        self.items = np.array(items)
        self.fitted_on: Interactions | None = None

    def fit(self, data: Interactions) -> Self:
        self.fitted_on = data
        return self

    def recommend(self, histories: Histories, n: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(histories), n), -1)
        scores = np.full((len(histories), n), -np.inf)
        top = self.items[:n]
        ids[:, : len(top)] = top
        scores[:, : len(top)] = -np.arange(len(top), dtype=np.float64)
        return ids, scores

    def similar_items(self, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def save(self, path: Path) -> None:
        raise NotImplementedError


PROPOSED = {"a": [1, 2, 3], "b": [3, 4]}


def _featurise(
    generators: Mapping[str, CandidateGenerator], data: Interactions
) -> Callable[[np.ndarray], CandidateRows]:
    """One feature, the candidate's item id."""

    def rows_of(users: np.ndarray) -> CandidateRows:
        proposals = {name: g.recommend(data.histories(users), 3) for name, g in generators.items()}
        candidates = blend(proposals, total=6, n_items=N_ITEMS)
        rows, cols = np.nonzero(candidates.ids >= 0)
        X = candidates.ids[rows, cols][:, None].astype(np.float32)
        return CandidateRows(proposals, candidates, X, rows, cols, ["item"])

    return rows_of


def _rows(
    data: Interactions, fits: list[tuple[str, int]], labels: LabelConfig, *, chunk_users: int = 1024
) -> RankerRows:
    """``ranker_rows`` with sources a and b; ``fits`` records each fit (source, events)."""

    def fit_source(name: str, data: Interactions) -> CandidateGenerator:
        fits.append((name, len(data)))
        return Fixed(PROPOSED[name]).fit(data)

    return ranker_rows(
        data,
        sources=("a", "b"),
        fit_source=fit_source,
        featurise=_featurise,
        labels=labels,
        chunk_users=chunk_users,
    )


@pytest.mark.parametrize("chunk_users", [1, 3, 4])
def test_labels_dropped_groups_sampling_and_recall_leave_last_out(chunk_users: int) -> None:
    # users' last events: 1 (a's best), 4 (b's second), 6 (nobody proposes it), 3 (both)
    data = Interactions.from_arrays(
        np.repeat(np.arange(4), 3), [0, 5, 1, 0, 5, 4, 0, 5, 6, 0, 5, 3], n_users=4, n_items=N_ITEMS
    )
    fits: list[tuple[str, int]] = []
    labels_config = LabelConfig("leave-last-out", refit=("a", "b"), negatives=1)
    rows = _rows(data, fits, labels_config, chunk_users=chunk_users)
    assert fits == [("a", 8), ("b", 8)]  # once, before the labels (every user's last event held out)
    # every group's candidates in blend order: best rank first, then more sources, then item id;
    # the group whose label nobody proposed (2) is dropped, every positive is kept, and of the 3
    # negatives of a group those whose draw is under 1/3 (the draws run over all 16 rows in order)
    candidates = np.tile([3, 1, 2, 4], 4)
    group = np.repeat(np.arange(4), 4)
    label_of = np.array([1, 4, 6, 3])
    positive = candidates == label_of[group]
    keep = (group != 2) & (positive | (np.random.default_rng(0).random(16) < 1 / 3))
    np.testing.assert_array_equal(rows.X[:, 0], candidates[keep])
    np.testing.assert_array_equal(rows.group, group[keep])
    np.testing.assert_array_equal(rows.labels, positive[keep])
    np.testing.assert_array_equal(rows.window, np.zeros(keep.sum()))
    X, labels, sizes = rows.training_set()
    assert labels.sum() == 3 and len(sizes) == 3 and sizes.sum() == len(X) == keep.sum() < 12
    assert rows.report["candidate_rows"] == 16
    assert rows.report["label_users"] == 4 and rows.report["label_users_dropped"] == 1
    assert rows.report["label_groups"] == 3 and rows.report["training_rows"] == len(X)
    assert rows.report["inner_candidate_recall"] == {"a": 0.5, "b": 0.5, "blended": 0.75}
    assert rows.feature_names == ["item"] and set(rows.fit_seconds) == {"a", "b"}


def test_rolling_windows_refit_only_the_refit_sources() -> None:
    users = np.repeat(np.arange(3), 6)
    items = np.tile([0, 5, 1, 2, 3, 4], 3)
    timestamps = np.tile(np.arange(6), 3)
    data = Interactions.from_arrays(users, items, n_users=3, n_items=N_ITEMS, timestamps=timestamps)
    fits: list[tuple[str, int]] = []
    # "c" is not a source of this model: not fitted
    rows = _rows(
        data, fits, LabelConfig("temporal", fraction=1 / 6, windows=2, refit=("b", "c"), negatives=10)
    )
    # windows start at t=4 (12 events before) and t=5 (15 events before)
    assert fits == [("a", 12), ("b", 12), ("b", 15)]
    assert [w["train_events"] for w in rows.report["label_windows"]] == [12, 15]
    np.testing.assert_array_equal(np.unique(rows.window), [0, 1])
    assert (np.diff(rows.group) >= 0).all() and rows.report["label_users"] == 6
    assert rows.report["candidate_rows"] == len(rows.X)  # few negatives: all kept


def test_too_many_windows_is_an_error_before_any_fit() -> None:
    data = Interactions.from_arrays([0, 0, 1, 1], [0, 1, 1, 0], n_users=2, n_items=2, timestamps=[5, 5, 5, 5])
    fits: list[tuple[str, int]] = []
    with pytest.raises(ValueError, match="no events to fit the candidate generators on"):
        _rows(data, fits, LabelConfig("temporal", fraction=0.2, windows=3))
    assert not fits


def test_memory_grows_with_the_kept_rows_not_with_every_candidate() -> None:
    """400 users x 200 candidates x 32 float32 features: 10 MB of candidate rows, of which about
    3 a group are kept. Featurised 16 users at a time, the peak stays near the kept rows plus one
    chunk's candidates (the features are numpy, which tracemalloc sees)."""
    n_users, n_items, width = 400, 300, 32
    data = Interactions.from_arrays(
        np.repeat(np.arange(n_users), 3), np.tile([250, 251, 5], n_users), n_users=n_users, n_items=n_items
    )
    largest = [0]  # most users featurised at once

    def featurise(
        generators: Mapping[str, CandidateGenerator], data: Interactions
    ) -> Callable[[np.ndarray], CandidateRows]:
        def rows_of(users: np.ndarray) -> CandidateRows:
            largest[0] = max(largest[0], len(users))
            proposals = {name: g.recommend(data.histories(users), 200) for name, g in generators.items()}
            candidates = blend(proposals, total=200, n_items=n_items)
            rows, cols = np.nonzero(candidates.ids >= 0)
            X = np.repeat(candidates.ids[rows, cols][:, None], width, axis=1).astype(np.float32)
            return CandidateRows(proposals, candidates, X, rows, cols, [f"f{i}" for i in range(width)])

        return rows_of

    def peak_of(chunk_users: int) -> tuple[int, RankerRows]:
        tracemalloc.start()
        rows = ranker_rows(
            data,
            sources=("a",),
            fit_source=lambda name, data: Fixed(list(range(1, 201))).fit(data),
            featurise=featurise,
            labels=LabelConfig("leave-last-out", negatives=2),
            chunk_users=chunk_users,
        )
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak, rows

    every_row = n_users * 200 * width * 4
    whole_peak, whole = peak_of(n_users)
    chunk_peak, chunked = peak_of(16)
    assert largest[0] == n_users and whole.report["candidate_rows"] * width * 4 == every_row
    np.testing.assert_array_equal(chunked.X, whole.X)
    kept = chunked.X.nbytes
    assert kept < every_row / 20  # about 3 of 200 rows a group
    assert whole_peak > every_row  # every candidate row at once
    assert chunk_peak < kept + 3 * (every_row * 16 // n_users) + 2**20, (chunk_peak, kept, every_row)
