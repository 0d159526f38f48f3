"""The synthetic shop generator (``benchmarks.synthetic``): contract tables, deterministic, with the
structure it promises (power-law popularity, sessions in one category, transitions, clock time), and
clustered embeddings in the format ``recsys embed`` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from benchmarks.synthetic import (
    ShopSpec,
    builtin_vocabulary,
    clustered_embeddings,
    generate,
    shared_vocabulary,
    write_clustered_embeddings,
)
from recsys.data import schema as S
from recsys.data.loading import load_dataset
from recsys.encoder.embed import read_embeddings

SPEC = ShopSpec(n_items=2_000, n_interactions=40_000, seed=3)


@pytest.fixture(scope="module")
def shop():  # type: ignore[no-untyped-def]
    return generate(SPEC, vocabulary=builtin_vocabulary())


def test_the_tables_pass_the_contract_and_are_deterministic(shop, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    items, interactions = shop.write(tmp_path)
    dataset = load_dataset(items, interactions)  # raises on any contract problem
    assert dataset.n_items == SPEC.n_items and len(dataset.interactions) == SPEC.n_interactions
    again = generate(SPEC, vocabulary=builtin_vocabulary())
    assert again.items.equals(shop.items) and again.interactions.equals(shop.interactions)
    other = generate(ShopSpec(n_items=2_000, n_interactions=40_000, seed=4), vocabulary=builtin_vocabulary())
    assert not other.interactions.equals(shop.interactions)


def test_popularity_is_a_power_law(shop) -> None:  # type: ignore[no-untyped-def]
    counts = np.sort(shop.interactions.group_by(S.ITEM_ID).len().get_column("len").to_numpy())[::-1]
    top = counts[: len(counts) // 100].sum() / counts.sum()
    assert top > 0.2  # the top 1% of items take over a fifth of the events (uniform: 1%)
    assert (counts == 1).sum() > 0  # and a tail is seen once


def test_users_have_sessions_in_one_category_with_transitions(shop) -> None:  # type: ignore[no-untyped-def]
    events = shop.interactions.join(shop.items.select(S.ITEM_ID, S.CATEGORY), on=S.ITEM_ID)
    step = events.with_columns(
        same_user=pl.col(S.USER_ID) == pl.col(S.USER_ID).shift(1),
        gap=pl.col(S.TIMESTAMP) - pl.col(S.TIMESTAMP).shift(1),
        same_category=pl.col(S.CATEGORY) == pl.col(S.CATEGORY).shift(1),
        next_item=pl.col(S.ITEM_ID).str.slice(1).cast(pl.Int64)
        == pl.col(S.ITEM_ID).str.slice(1).cast(pl.Int64).shift(1) + 1,
    ).filter(pl.col("same_user"))
    assert (step.get_column("gap") >= 0).all()  # sorted by user and time
    within = step.filter(pl.col("gap") < 3_600)  # a session's events are minutes apart
    assert within.height > 0.6 * step.height
    assert within.get_column("same_category").mean() > 0.7  # uniform over the leaves: ~2%
    assert within.get_column("next_item").mean() > 0.05  # the leaf's ring: i -> i + 1 (uniform: 0.05%)
    assert S.are_unix_seconds(shop.interactions.get_column(S.TIMESTAMP).to_numpy())
    weeks = np.ptp(shop.interactions.get_column(S.TIMESTAMP).to_numpy()) / (7 * 86_400)
    assert 10 < weeks <= SPEC.weeks + 1


def test_texts_share_words_within_a_category(shop) -> None:  # type: ignore[no-untyped-def]
    first = shop.items.with_columns(word=pl.col(S.TITLE).str.to_lowercase().str.split(" ").list.first())
    by_leaf = first.group_by(S.CATEGORY).agg(pl.col("word").n_unique(), pl.len())
    assert (by_leaf.get_column("word") <= 4).all()  # titles open with one of the leaf's 4 topic words
    assert first.get_column(S.DESCRIPTION).str.len_chars().min() > 10


def test_the_shared_vocabulary_falls_back_to_the_builtin_one(tmp_path: Path) -> None:
    vocabulary = shared_vocabulary(tmp_path)
    assert vocabulary.source.startswith("built-in") and np.isclose(vocabulary.frequencies.sum(), 1.0)


def test_clustered_embeddings_are_normalised_and_cluster_by_category(shop, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vectors = clustered_embeddings(shop, dim=64)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    same = shop.leaf[:, None] == shop.leaf[None, :]
    cosine = vectors @ vectors.T
    assert cosine[same].mean() > 0.5 > 0.1 > abs(cosine[~same].mean())
    ids, read, fingerprint = read_embeddings(write_clustered_embeddings(shop, tmp_path / "e.parquet", dim=64))
    assert ids.to_list() == shop.items.get_column(S.ITEM_ID).to_list()
    assert np.array_equal(read, vectors) and fingerprint == "synthetic:clustered-64"


def test_bad_specs_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"ShopSpec\.zipf"):
        ShopSpec(n_items=10, n_interactions=10, zipf=-1)
    with pytest.raises(ValueError, match="chain"):
        ShopSpec(n_items=10, n_interactions=10, chain=0.6, repeat=0.3, leave_leaf=0.2)
