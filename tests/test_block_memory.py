"""Scoring blocks shrink with the catalogue (``recsys.candidates.base.block_rows``), so a source's
``recommend`` holds a bounded number of scores at once: the same answers as one big block, and
memory that no longer grows with (batch rows x items) once the catalogue is large."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from benchmarks.synthetic import ShopSpec, builtin_vocabulary, clustered_embeddings, generate
from recsys.candidates import base
from recsys.candidates.registry import source
from recsys.data.dataset import Dataset, Histories, Interactions


@pytest.fixture(scope="module")
def shop_data():  # type: ignore[no-untyped-def]
    shop = generate(ShopSpec(n_items=3_000, n_interactions=30_000, seed=5), vocabulary=builtin_vocabulary())
    data = Dataset.from_tables(shop.items, shop.interactions).to_interactions()
    return data, clustered_embeddings(shop, dim=16)


@pytest.mark.parametrize("name", ["als", "itemknn", "cooccurrence", "text", "popularity"])
def test_small_blocks_give_the_answers_of_one_block(
    name: str, shop_data, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    data, embeddings = shop_data
    model = source(name).build(source(name).config(), item_embeddings=embeddings).fit(data)
    histories = data.histories(np.arange(min(data.n_users, 400)))
    whole_ids, whole_scores = model.recommend(histories, 20)  # 400 rows x 3,000 items: one block
    assert base.block_rows(data.n_items) >= 400
    monkeypatch.setattr(base, "BLOCK_CELLS", 9 * data.n_items)  # 8 rows a block (a power of two)
    assert base.block_rows(data.n_items) == 8
    ids, scores = model.recommend(histories, 20)
    # the same items; a float32 matrix product (ALS, text) may sum in another order for another block shape
    assert np.array_equal(ids, whole_ids) and np.allclose(scores, whole_scores, atol=1e-6)
    similar = model.similar_items(np.arange(50), 10)
    monkeypatch.setattr(base, "BLOCK_CELLS", 2**24)
    one_block = model.similar_items(np.arange(50), 10)
    assert np.array_equal(similar[0], one_block[0]) and np.allclose(similar[1], one_block[1], atol=1e-6)


def test_a_large_catalogue_scores_in_bounded_memory() -> None:
    """300 profiles against 200k items: a fixed 1,024-row block held 300 x 200k scores with the top-k's
    temporaries (about 16 bytes each: 960 MB); blocks of ``block_rows`` stay near 4 x 64 MB."""
    n_items, dim = 200_000, 8
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((n_items, dim), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    one_event = Interactions.from_arrays([0], [0], n_users=1, n_items=n_items)
    model = source("text").build(source("text").config(), item_embeddings=embeddings).fit(one_event)
    histories = Histories.from_lists(rng.integers(0, n_items, size=(300, 3)).tolist())
    tracemalloc.start()
    ids, _ = model.recommend(histories, 10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert ids.shape == (300, 10) and (ids >= 0).all()
    assert peak < 400 * 2**20, f"{peak / 2**20:.0f} MB"
