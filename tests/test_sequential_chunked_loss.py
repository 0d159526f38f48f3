"""The sequential model's loss in chunks (``recsys.candidates.sequential.LOSS_CELLS``): a large
catalogue x batch is scored a few positions at a time instead of holding every logit, with the same
loss, so the same training."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.synthetic import ShopSpec, builtin_vocabulary, generate
from recsys.candidates import sequential
from recsys.candidates.sequential import SequentialConfig, SequentialRecommender
from recsys.data.dataset import Dataset, Interactions

CONFIG = SequentialConfig(max_len=8, hidden=16, heads=1, layers=1, max_epochs=3, batch_size=32, threads=1)


@pytest.fixture(scope="module")
def data() -> Interactions:
    shop = generate(ShopSpec(n_items=400, n_interactions=6_000, seed=2), vocabulary=builtin_vocabulary())
    return Dataset.from_tables(shop.items, shop.interactions).to_interactions()


def test_chunked_loss_trains_the_same_model(data: Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = SequentialRecommender(CONFIG).fit(data)  # 32 windows x 8 positions x 400 items: one product
    monkeypatch.setattr(sequential, "LOSS_CELLS", 400 * 7)  # 7 positions a chunk, the last one short
    chunked = SequentialRecommender(CONFIG).fit(data)
    assert len(chunked.history_) == len(whole.history_) == 3
    for before, after in zip(whole.history_, chunked.history_, strict=True):
        assert before["loss"] == pytest.approx(after["loss"], rel=1e-4)
    assert whole.model_ is not None and chunked.model_ is not None
    a = whole.model_.item_vectors().detach().numpy()
    b = chunked.model_.item_vectors().detach().numpy()
    assert np.allclose(a, b, atol=1e-4)  # float sums in another order, over three epochs
    histories = data.histories(np.arange(50))
    assert np.array_equal(whole.recommend(histories, 10)[0], chunked.recommend(histories, 10)[0])
