"""SequentialRecommender: learns a next-item rule, order matters, early stopping, persistence, text input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.candidates.sequential import SequentialConfig, SequentialRecommender
from recsys.config import ConfigError
from recsys.data.dataset import Histories, Interactions
from recsys.data.splits import leave_last_out
from recsys.evaluation.metrics import ranking_metrics

N_ITEMS = 12
STEP = 5  # next(i) = (i + STEP) % N_ITEMS: a cycle through all items, since gcd(5, 12) = 1

TINY = SequentialConfig(
    max_len=6, hidden=24, layers=1, heads=2, dropout=0.0, lr=0.01, batch_size=64,
    max_epochs=40, patience=40, seed=0, threads=1,
)  # fmt: skip


def walks(n_users: int = 300, length: int = 6, seed: int = 0) -> Interactions:
    """Every user follows the deterministic rule from a random start."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, N_ITEMS, size=n_users)
    seqs = (starts[:, None] + STEP * np.arange(length)[None, :]) % N_ITEMS
    users = np.repeat(np.arange(n_users), length)
    return Interactions.from_arrays(users, seqs.ravel(), n_users=n_users, n_items=N_ITEMS)


@pytest.fixture(scope="module")
def walker() -> SequentialRecommender:
    return SequentialRecommender(TINY).fit(walks())


def test_learns_a_deterministic_next_item_rule(walker: SequentialRecommender) -> None:
    rng = np.random.default_rng(1)
    starts = rng.integers(0, N_ITEMS, size=50)
    histories = Histories.from_lists([[(s + STEP * k) % N_ITEMS for k in range(3)] for s in starts])
    ids, _ = walker.recommend(histories, 1)
    expected = (starts + 3 * STEP) % N_ITEMS
    assert (ids[:, 0] == expected).mean() == 1.0
    assert walker.best_score_ > 0.95  # validation NDCG@10 on the held-out last steps
    assert walker.stop_reason_ == "max_epochs" and len(walker.history_) == TINY.max_epochs


def test_order_matters(walker: SequentialRecommender) -> None:
    # the same items in another order (a pair never seen in training): the most recent one decides
    a, b = 0, 1
    ids, _ = walker.recommend(Histories.from_lists([[a, b], [b, a]]), 1)
    assert ids[:, 0].tolist() == [(b + STEP) % N_ITEMS, (a + STEP) % N_ITEMS]


def test_early_stopping_keeps_the_best_epoch() -> None:
    # random sequences: nothing generalises, so validation stops improving and patience ends training
    rng = np.random.default_rng(2)
    users = np.repeat(np.arange(200), 5)
    data = Interactions.from_arrays(users, rng.integers(0, 40, size=1000), n_users=200, n_items=40)
    config = SequentialConfig(
        max_len=5, hidden=16, layers=1, heads=1, lr=0.02, max_epochs=60, patience=2, seed=0, threads=1
    )
    model = SequentialRecommender(config).fit(data)
    assert model.stop_reason_ == "patience"
    assert len(model.history_) == model.best_epoch_ + config.patience < config.max_epochs
    best = max(h["ndcg10"] for h in model.history_)
    assert model.best_score_ == best == model.history_[model.best_epoch_ - 1]["ndcg10"]
    # the restored weights are the best epoch's: re-validating gives the same score. Every user has
    # 5 events (< validation_users users), so fit held out the last event of each: the test task
    holdout = leave_last_out(data).test
    ids, _ = model.recommend(holdout.train.histories(holdout.users), 10)
    assert ranking_metrics(ids, holdout.targets, ks=[10])["ndcg@10"] == pytest.approx(best, abs=1e-9)


def test_time_budget_stops_training() -> None:
    config = SequentialConfig(max_len=6, hidden=8, heads=1, layers=1, time_budget_s=1e-3, threads=1)
    model = SequentialRecommender(config).fit(walks(n_users=50))
    assert model.stop_reason_ == "time_budget" and len(model.history_) == 1


def test_explicit_validation_task() -> None:
    split = leave_last_out(walks(n_users=200, length=7, seed=3))
    model = SequentialRecommender(TINY).fit(split.validation.train, validation=split.validation)
    ids, _ = model.recommend(split.test.train.histories(split.test.users), 1)
    assert (ids[:, 0] == split.test.targets.indices).mean() > 0.95


def test_save_load_gives_identical_scores(walker: SequentialRecommender, tmp_path: Path) -> None:
    walker.save(tmp_path / "seq")
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == ["config.json", "model.safetensors"]
    loaded = SequentialRecommender.load(tmp_path / "seq")
    histories = walks(n_users=20, seed=9).histories(np.arange(20))
    for a, b in zip(walker.recommend(histories, 5), loaded.recommend(histories, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(walker.item_vectors(), loaded.item_vectors())
    assert loaded.best_epoch_ == walker.best_epoch_ and loaded.history_ == walker.history_


def test_text_embeddings_reach_items_never_seen() -> None:
    # items 12..23 never occur in training; item 12 + k has the same text as item k
    rng = np.random.default_rng(4)
    text = rng.normal(size=(N_ITEMS, 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    text = np.concatenate([text, text])
    data = walks()
    data = Interactions.from_arrays(data.users, data.items, n_users=data.n_users, n_items=2 * N_ITEMS)
    model = SequentialRecommender(TINY, item_embeddings=text).fit(data)
    ids, _ = model.similar_items(np.arange(N_ITEMS, 2 * N_ITEMS), 1)
    assert (ids[:, 0] == np.arange(N_ITEMS)).mean() >= 0.75  # the twin is the nearest item
    plain = SequentialRecommender(TINY).fit(data)
    ids, _ = plain.similar_items(np.arange(N_ITEMS, 2 * N_ITEMS), 1)
    assert (ids[:, 0] == np.arange(N_ITEMS)).mean() < 0.5  # without text, unseen items are noise


def test_text_embeddings_survive_save_load(tmp_path: Path) -> None:
    text = np.random.default_rng(5).normal(size=(N_ITEMS, 8)).astype(np.float32)
    config = SequentialConfig(max_len=6, hidden=8, heads=1, layers=1, max_epochs=2, threads=1)
    model = SequentialRecommender(config, item_embeddings=text).fit(walks(n_users=40))
    model.save(tmp_path / "m")
    loaded = SequentialRecommender.load(tmp_path / "m")
    np.testing.assert_array_equal(model.item_vectors(), loaded.item_vectors())


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="item_embeddings must have shape"):
        SequentialRecommender(TINY, item_embeddings=np.zeros((3, 4), np.float32)).fit(walks(n_users=10))
    with pytest.raises(ValueError, match="hidden"):
        SequentialConfig(hidden=10, heads=3)
    with pytest.raises(ValueError, match="dropout"):
        SequentialConfig(dropout=1.0)
    lonely = Interactions.from_arrays([0, 1], [0, 1], n_users=2, n_items=2)
    with pytest.raises(ValueError, match="3 or more events"):
        SequentialRecommender(TINY).fit(lonely)
    config = SequentialConfig(max_len=6, hidden=8, heads=1, layers=1, max_epochs=1, threads=1)
    model = SequentialRecommender(config).fit(walks(n_users=20))
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["hiden"] = 8
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="hiden"):
        SequentialRecommender.load(tmp_path / "m")
