"""The ``text`` candidate generator: profiles over fixed item embeddings, blocks vs a plain reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.candidates import base
from recsys.candidates.base import unit_rows
from recsys.candidates.text import TextRetriever, TextRetrieverConfig
from recsys.data.dataset import Histories, Interactions


def random_embeddings(n_items: int = 30, dim: int = 8, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).normal(size=(n_items, dim)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def fitted(config: TextRetrieverConfig | None = None, n_items: int = 30) -> TextRetriever:
    # only the first half of the items has ever been interacted with: the rest are cold
    data = Interactions.from_arrays(
        np.repeat(np.arange(5), 3), np.arange(15) % (n_items // 2), n_users=5, n_items=n_items
    )
    return TextRetriever(config, item_embeddings=random_embeddings(n_items)).fit(data)


def reference(model: TextRetriever, history: list[int], n: int) -> list[int]:
    """Plain per-row NumPy: weighted sum of the last items, cosine to all, drop history, sort."""
    emb = model.item_embeddings_
    assert emb is not None
    cfg = model.config
    weights = list(cfg.weights) if cfg.weights else [cfg.decay**k for k in range(cfg.last_n)]
    recent = history[::-1][: cfg.last_n]
    profile = sum(w * emb[i] for w, i in zip(weights, recent, strict=False))
    scores = emb @ profile
    order = [int(i) for i in np.argsort(-scores, kind="stable") if i not in set(history)]
    return order[:n]


@pytest.mark.parametrize(
    "config",
    [
        TextRetrieverConfig(last_n=1),
        TextRetrieverConfig(last_n=3, decay=0.5),
        TextRetrieverConfig(last_n=2, weights=(1.0, 0.25)),
    ],
)
def test_blocks_match_the_plain_reference(
    config: TextRetrieverConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "BLOCK_ROWS", 3)  # several blocks with a handful of rows
    model = fitted(config)
    rng = np.random.default_rng(1)
    rows = [rng.choice(30, size=int(rng.integers(1, 6)), replace=False).tolist() for _ in range(10)]
    ids, scores = model.recommend(Histories.from_lists(rows), 5)
    for row, history in enumerate(rows):
        assert ids[row].tolist() == reference(model, history, 5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_cold_items_are_recommended_and_similar() -> None:
    """Items 15..29 have no interactions at all; text retrieval still finds them."""
    model = fitted(TextRetrieverConfig(last_n=1))
    emb = model.item_embeddings_
    assert emb is not None
    target = 20
    nearest = int(np.argsort(-(emb @ emb[target]))[1])
    ids, _ = model.recommend(Histories.from_lists([[nearest]]), 1)
    assert ids[0, 0] == target or emb[nearest] @ emb[ids[0, 0]] >= emb[nearest] @ emb[target]
    recommended = model.recommend(Histories.from_lists([[i] for i in range(15)]), 10)[0]
    assert (recommended >= 15).any()
    sim_ids, sim_scores = model.similar_items(np.array([target]), 3)
    assert target not in sim_ids[0] and sim_ids[0, 0] == nearest
    np.testing.assert_allclose(sim_scores[0, 0], emb[target] @ emb[nearest], rtol=1e-6)


def test_empty_history_pads_and_profile_is_recency_weighted() -> None:
    model = fitted(TextRetrieverConfig(last_n=2, decay=0.5))
    ids, scores = model.recommend(Histories.from_lists([[]]), 4)
    assert ids.tolist() == [[-1] * 4] and np.isneginf(scores).all()
    emb = model.item_embeddings_
    assert emb is not None
    profile = model.profiles(Histories.from_lists([[1, 2, 3]]))[0]
    np.testing.assert_allclose(profile, emb[3] + 0.5 * emb[2], rtol=1e-6)


def test_bad_inputs_name_the_parameter(tmp_path: Path) -> None:
    data = Interactions.from_arrays([0], [0], n_users=1, n_items=4)
    with pytest.raises(ValueError, match="n_items=4"):
        TextRetriever(item_embeddings=random_embeddings(3)).fit(data)
    with pytest.raises(ValueError, match="NaN"):
        TextRetriever(item_embeddings=np.full((4, 2), np.nan, np.float32)).fit(data)
    with pytest.raises(ValueError, match="weights"):
        TextRetrieverConfig(last_n=2, weights=(1.0,))
    with pytest.raises(ValueError, match="decay"):
        TextRetrieverConfig(decay=0.0)


def test_rows_are_normalised_block_by_block_as_over_the_whole_array() -> None:
    emb = (np.random.default_rng(4).standard_normal((11, 6)) * np.arange(11)[:, None]).astype(np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    reference = emb / np.where(norms > 0, norms, 1.0)  # row 0 is all zero and stays zero
    assert unit_rows(emb, block_values=18).tobytes() == reference.tobytes()  # blocks of 3 rows
    emb[7, 2] = np.inf
    with pytest.raises(ValueError, match="item 7 holds NaN or infinite"):
        unit_rows(emb, block_values=18)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = fitted(TextRetrieverConfig(last_n=2, decay=0.7))
    model.save(tmp_path / "text")
    loaded = TextRetriever.load(tmp_path / "text")
    histories = Histories.from_lists([[1, 2], [5], [29, 3, 4]])
    for a, b in zip(model.recommend(histories, 6), loaded.recommend(histories, 6), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.config == model.config
