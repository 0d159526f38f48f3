"""The NumPy inference of the sequential model equals the torch model it was saved from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.candidates.sequential import SequentialConfig, SequentialRecommender
from recsys.candidates.sequential_numpy import SequentialScorer
from recsys.data.dataset import Histories, Interactions


def test_numpy_inference_equals_torch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n_items = 30
    seqs = (rng.integers(0, n_items, size=200)[:, None] + np.arange(8)[None, :]) % n_items
    data = Interactions.from_arrays(np.repeat(np.arange(200), 8), seqs.ravel(), n_users=200, n_items=n_items)
    text = rng.normal(size=(n_items, 6)).astype(np.float32)
    config = SequentialConfig(hidden=16, layers=2, heads=2, max_len=5, max_epochs=3, patience=3, seed=0)
    model = SequentialRecommender(config, item_embeddings=text).fit(data)
    model.save(tmp_path / "seq")
    scorer = SequentialScorer.load(tmp_path / "seq")
    # short, empty, single and longer-than-max_len histories
    histories = Histories.from_lists([[1, 2, 3], [], [5], list(range(12))])
    torch_ids, torch_scores = model.recommend(histories, 10)
    numpy_ids, numpy_scores = scorer.recommend(histories, 10)
    np.testing.assert_array_equal(torch_ids, numpy_ids)
    np.testing.assert_allclose(torch_scores, numpy_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        model.similar_items(np.array([3, 7]), 5)[0], scorer.similar_items(np.array([3, 7]), 5)[0]
    )
