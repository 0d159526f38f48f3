"""CoOccurrence: the sparse statistics against a plain reference, direction, recency, persistence."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.candidates.cooccurrence import CoOccurrence, CoOccurrenceConfig
from recsys.config import ConfigError, from_dict
from recsys.data.dataset import Histories, Interactions


def random_data(seed: int = 0, n_users: int = 60, n_items: int = 25) -> Interactions:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, size=n_users)
    users = np.repeat(np.arange(n_users), lengths)
    items = rng.integers(0, n_items, size=len(users))  # repeats included on purpose
    return Interactions.from_arrays(users, items, n_users=n_users, n_items=n_items)


def reference_similarity(data: Interactions, cfg: CoOccurrenceConfig) -> np.ndarray:
    """The definition, one pair at a time (no truncation)."""
    n = data.n_items
    counts = np.maximum(np.bincount(data.items, minlength=n), 1).astype(np.float64)
    c = np.zeros((n, n))
    for u in range(data.n_users):
        seq = data.items[data.indptr[u] : data.indptr[u + 1]]
        for i in range(len(seq)):
            for j in range(i + 1, min(i + cfg.window, len(seq) - 1) + 1):
                a, b = seq[i], seq[j]
                if a == b:
                    continue
                w = cfg.decay ** (j - i - 1)
                c[a, b] += w
                c[b, a] += w * cfg.backward
    return c / (counts[:, None] ** cfg.alpha * counts[None, :] ** cfg.beta)


@pytest.mark.parametrize(
    "cfg",
    [
        CoOccurrenceConfig(window=1, neighbours=1000),
        CoOccurrenceConfig(window=4, decay=0.5, backward=0.0, alpha=0.0, beta=1.0, neighbours=1000),
        CoOccurrenceConfig(window=3, decay=1.0, backward=1.0, alpha=0.5, beta=0.5, neighbours=1000),
    ],
)
def test_similarity_matches_the_reference(cfg: CoOccurrenceConfig) -> None:
    data = random_data()
    model = CoOccurrence(cfg).fit(data)
    assert model.similarity_ is not None
    np.testing.assert_allclose(model.similarity_.toarray(), reference_similarity(data, cfg), rtol=1e-5)
    assert model.similarity_.diagonal().sum() == 0


def test_keeps_the_top_neighbours_per_row() -> None:
    data = random_data(seed=1)
    cfg = CoOccurrenceConfig(window=5, neighbours=3)
    model = CoOccurrence(cfg).fit(data)
    assert model.similarity_ is not None
    kept = model.similarity_.toarray()
    full = reference_similarity(data, cfg)
    for row in range(data.n_items):
        assert (kept[row] > 0).sum() == min(3, (full[row] > 0).sum())
        if (kept[row] > 0).any():  # every kept value is at least as large as every dropped one
            dropped = full[row][(kept[row] == 0) & (full[row] > 0)]
            assert dropped.size == 0 or dropped.max() <= kept[row][kept[row] > 0].min() + 1e-6


def test_forward_transitions_and_user_boundaries() -> None:
    # user 0: 0 -> 1 -> 2 ; user 1: 3 -> 4. The pair (2, 3) crosses users and must not count.
    data = Interactions.from_arrays([0, 0, 0, 1, 1], [0, 1, 2, 3, 4], n_users=2, n_items=5)
    cfg = CoOccurrenceConfig(window=1, backward=0.0, popularity_fallback=False)
    model = CoOccurrence(cfg).fit(data)
    ids, _ = model.recommend(Histories.from_lists([[0], [1], [2], [4]]), 2)
    assert ids.tolist() == [[1, -1], [2, -1], [-1, -1], [-1, -1]]


def test_recent_items_weigh_more() -> None:
    # 0 -> 5 and 1 -> 6 equally often; after [0, 1], 6 (follows the most recent item) ranks first
    data = Interactions.from_arrays([0, 0, 1, 1, 2, 2, 3, 3], [0, 5, 1, 6, 0, 5, 1, 6], n_users=4, n_items=7)
    model = CoOccurrence(CoOccurrenceConfig(window=1, recency_decay=0.5)).fit(data)
    ids, scores = model.recommend(Histories.from_lists([[0, 1], [1, 0]]), 2)
    assert ids.tolist() == [[6, 5], [5, 6]]
    np.testing.assert_allclose(scores[0], [scores[0, 0], scores[0, 0] * 0.5], rtol=1e-6)
    # only the last history_len items count
    short = CoOccurrence(CoOccurrenceConfig(window=1, history_len=1, popularity_fallback=False)).fit(data)
    assert short.recommend(Histories.from_lists([[0, 1]]), 2)[0].tolist() == [[6, -1]]


def test_scores_equal_the_plain_formula() -> None:
    data = random_data(seed=2)
    cfg = CoOccurrenceConfig(window=3, history_len=4, recency_decay=0.7, popularity_fallback=False)
    model = CoOccurrence(cfg).fit(data)
    assert model.similarity_ is not None
    dense = model.similarity_.toarray()
    histories = data.histories(np.arange(data.n_users))
    ids, scores = model.recommend(histories, 5)
    for row in range(len(histories)):
        seq = histories.sequence(row)[-4:]
        expected = np.zeros(data.n_items)
        for k, item in enumerate(seq[::-1]):
            expected += 0.7**k * dense[item]
        expected[histories.sequence(row)] = 0
        for item, score in zip(ids[row], scores[row], strict=True):
            if item >= 0:
                assert score == pytest.approx(expected[item], rel=1e-5)
        assert (ids[row] >= 0).sum() == min(5, (expected > 0).sum())


def test_popularity_fallback_ranks_below_evidence() -> None:
    data = Interactions.from_arrays([0, 0, 1, 2, 3], [0, 1, 2, 2, 2], n_users=4, n_items=4)
    model = CoOccurrence(CoOccurrenceConfig(window=1)).fit(data)
    ids, scores = model.recommend(Histories.from_lists([[0]]), 4)
    assert ids.tolist() == [[1, 2, -1, -1]]  # 1 by transition, then 2 by popularity; 3 never seen
    assert scores[0, 0] > 0 > scores[0, 1] > -1


def test_save_writes_no_pickle_and_round_trips(tmp_path: Path) -> None:
    data = random_data(seed=3)
    model = CoOccurrence(CoOccurrenceConfig(window=2, neighbours=4)).fit(data)
    model.save(tmp_path / "cooc")
    assert sorted(p.name for p in (tmp_path / "cooc").iterdir()) == [
        "config.json",
        "data.npy",
        "indices.npy",
        "indptr.npy",
        "item_counts.npy",
    ]
    for npy in (tmp_path / "cooc").glob("*.npy"):
        np.load(npy, allow_pickle=False)  # plain arrays, never object arrays
    loaded = CoOccurrence.load(tmp_path / "cooc")
    assert loaded.config == model.config
    assert loaded.similarity_ is not None and model.similarity_ is not None
    assert (loaded.similarity_ != model.similarity_).nnz == 0


def test_load_refuses_inconsistent_arrays(tmp_path: Path) -> None:
    model = CoOccurrence().fit(random_data(seed=4))
    model.save(tmp_path / "m")
    np.save(tmp_path / "m" / "item_counts.npy", np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="n_items"):
        CoOccurrence.load(tmp_path / "m")


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="window"):
        CoOccurrenceConfig(window=0)
    with pytest.raises(ValueError, match="recency_decay"):
        CoOccurrenceConfig(recency_decay=0.0)
    with pytest.raises(ConfigError, match="windw"):
        from_dict(CoOccurrenceConfig, {"windw": 3})
    model = CoOccurrence().fit(random_data(seed=5))
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["beta"] = 2.0
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="beta"):
        CoOccurrence.load(tmp_path / "m")


def test_beats_the_item_knn_peer_on_amazon(amazon_dir: Path) -> None:
    """Validation NDCG@10 on amazon-scientific (leave-last-out); the item-kNN peer has 0.0763 on test."""
    from recsys.data.adapters import amazon_lcrec
    from recsys.data.dataset import Dataset
    from recsys.data.splits import leave_last_out

    split = leave_last_out(Dataset.from_tables(*amazon_lcrec(amazon_dir)).to_interactions())
    task = split.validation
    ids, _ = CoOccurrence().fit(task.train).recommend(task.train.histories(task.users), 10)
    hit = ids == task.targets.indices[:, None]  # one target per user, rows aligned
    ndcg = float((hit / np.log2(np.arange(2, 12))).sum(axis=1).mean())
    assert ndcg > 0.09, ndcg


def all_pairs_similarity(data: Interactions, cfg: CoOccurrenceConfig) -> np.ndarray:
    """The fit before it counted in chunks (the reference): every pair of every gap at once, each
    direction its own weighted entry, summed by scipy, then normalised; no truncation."""
    rows, cols, vals = [], [], []
    for gap in range(1, cfg.window + 1):
        same = data.users[gap:] == data.users[:-gap]
        a, b = data.items[:-gap][same], data.items[gap:][same]
        w = cfg.decay ** (gap - 1)
        rows += [a, b]
        cols += [b, a]
        vals += [np.full(len(a), w), np.full(len(a), w * cfg.backward)]
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    off = r != c
    cooc = sp.csr_matrix((v[off], (r[off], c[off])), shape=(data.n_items, data.n_items))
    cooc.sum_duplicates()
    counts = np.maximum(data.item_counts(), 1).astype(np.float64)
    return np.asarray(cooc.toarray() / (counts[:, None] ** cfg.alpha * counts[None, :] ** cfg.beta))


def top_per_row(dense: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest non-zero entries of each row (ties: the lower column first), the rest 0."""
    out = np.zeros_like(dense)
    for row, values in enumerate(dense):
        columns = np.flatnonzero(values)
        best = columns[np.lexsort((columns, -values[columns]))[:k]]
        out[row, best] = values[best]
    return out


def test_chunked_counts_give_the_all_pairs_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting pairs in chunks and sorting rows in blocks changes no bit; against the all-pairs fit,
    the same entries and scores up to float64 summation order, and the same recommendations."""
    from benchmarks.synthetic import ShopSpec, builtin_vocabulary, generate
    from recsys.candidates import cooccurrence as module
    from recsys.data.dataset import Dataset

    shop = generate(ShopSpec(n_items=400, n_interactions=20_000, seed=3), vocabulary=builtin_vocabulary())
    data = Dataset.from_tables(shop.items, shop.interactions).to_interactions()
    cfg = CoOccurrenceConfig(neighbours=30)
    model = CoOccurrence(cfg).fit(data)
    monkeypatch.setattr(module, "PAIR_CHUNK", 997)  # about 20 chunks a gap
    monkeypatch.setattr(module, "TOP_BLOCK", 300)  # a few rows a block
    chunked = CoOccurrence(cfg).fit(data)
    assert model.similarity_ is not None and chunked.similarity_ is not None
    assert (model.similarity_ != chunked.similarity_).nnz == 0
    np.testing.assert_array_equal(model.similarity_.indptr, chunked.similarity_.indptr)
    np.testing.assert_array_equal(model.similarity_.indices, chunked.similarity_.indices)
    np.testing.assert_array_equal(model.similarity_.data, chunked.similarity_.data)

    full = all_pairs_similarity(data, cfg)
    untruncated = CoOccurrence(replace(cfg, neighbours=data.n_items)).fit(data)
    assert untruncated.similarity_ is not None
    kept = untruncated.similarity_.toarray()
    np.testing.assert_array_equal(kept != 0, full != 0)
    np.testing.assert_allclose(kept, full.astype(np.float32), rtol=1e-6)
    histories = data.histories(np.arange(data.n_users))
    reference = CoOccurrence(cfg)
    reference.similarity_ = sp.csr_matrix(top_per_row(full, cfg.neighbours).astype(np.float32))
    reference.item_counts_ = data.item_counts().astype(np.int64)
    ids, scores = model.recommend(histories, 20)
    expected_ids, expected_scores = reference.recommend(histories, 20)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
