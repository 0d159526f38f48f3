"""The one contract every candidate generator passes, on data whose right answer is known.

The data has two disjoint communities (like implicit's checkerboard tests): users ``0..39`` only
interact with items ``0..9`` ("A"), users ``40..79`` only with items ``10..19`` ("B"); item ``20``
is never seen in training. A personalised generator must recommend A items to a history of A items
and call A items similar to an A item; every generator must respect the output contract of
``recsys.candidates.base`` (shapes, -1/-inf padding, best first, no history items, no repeats),
answer a batch exactly as row by row, survive save/load, be deterministic, and handle empty
histories and bad input.

To add a generator, append one :class:`Factory` to :data:`FACTORIES` below: nothing else.
``tests/test_candidates_contract.py`` runs every check on every factory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recsys.candidates.base import CandidateGenerator
from recsys.data.dataset import Histories, Interactions

N_USERS_PER_COMMUNITY = 40
COMMUNITY_ITEMS = 10
A_ITEMS = np.arange(0, COMMUNITY_ITEMS)
B_ITEMS = np.arange(COMMUNITY_ITEMS, 2 * COMMUNITY_ITEMS)
COLD_ITEM = 2 * COMMUNITY_ITEMS
N_ITEMS = COLD_ITEM + 1


def community_data(seed: int = 0) -> Interactions:
    """Two disjoint communities of users and items; item popularity is skewed within each."""
    rng = np.random.default_rng(seed)
    # Zipf-like popularity inside a community, so popularity-based answers are well defined.
    p = 1.0 / np.arange(1, COMMUNITY_ITEMS + 1)
    p /= p.sum()
    users, items = [], []
    for user in range(2 * N_USERS_PER_COMMUNITY):
        pool = A_ITEMS if user < N_USERS_PER_COMMUNITY else B_ITEMS
        chosen = rng.choice(pool, size=int(rng.integers(4, 8)), replace=False, p=p)
        users += [user] * len(chosen)
        items += chosen.tolist()
    return Interactions.from_arrays(
        np.array(users), np.array(items), n_users=2 * N_USERS_PER_COMMUNITY, n_items=N_ITEMS
    )


@dataclass(frozen=True)
class Factory:
    """How the contract suite builds, fits and reloads one generator.

    Parameters
    ----------
    name
        Test id.
    build
        A fresh, unfitted generator with a fixed seed (called several times).
    load
        Reads a folder written by the generator's ``save`` (usually ``Class.load``).
    personalised
        Whether the answer depends on the history: the community checks apply.
    """

    name: str
    build: Callable[[], CandidateGenerator]
    load: Callable[[Path], CandidateGenerator]
    personalised: bool = True
    notes: str = field(default="", compare=False)


def _popularity() -> CandidateGenerator:
    from recsys.candidates.popularity import Popularity

    return Popularity()


def _popularity_decayed() -> CandidateGenerator:
    from recsys.candidates.popularity import Popularity, PopularityConfig

    return Popularity(PopularityConfig(half_life=50.0))


# The community data has rank 2. With more factors than that, ALS spends the rest on the noise of
# which random items each of only 80 users picked, and the order of unseen items becomes noise too.
def _als() -> CandidateGenerator:
    from recsys.candidates.als import ALS, ALSConfig

    return ALS(ALSConfig(factors=2, iterations=10, regularization=0.05, alpha=5.0, seed=7, num_threads=1))


def _als_bm25() -> CandidateGenerator:
    from recsys.candidates.als import ALS, ALSConfig

    return ALS(ALSConfig(factors=2, iterations=10, alpha=5.0, bm25=True, bm25_k1=1.2, seed=7, num_threads=1))


def _itemknn() -> CandidateGenerator:
    from recsys.candidates.itemknn import ItemKNN, ItemKNNConfig

    return ItemKNN(ItemKNNConfig(neighbours=50, num_threads=1))


def _itemknn_bm25() -> CandidateGenerator:
    from recsys.candidates.itemknn import ItemKNN, ItemKNNConfig

    return ItemKNN(ItemKNNConfig(neighbours=5, similarity="bm25", num_threads=1))


def _cooccurrence() -> CandidateGenerator:
    from recsys.candidates.cooccurrence import CoOccurrence, CoOccurrenceConfig

    return CoOccurrence(CoOccurrenceConfig())


def _sequential() -> CandidateGenerator:
    from recsys.candidates.sequential import SequentialConfig, SequentialRecommender

    # tiny on purpose: the suite fits it three times
    config = SequentialConfig(
        max_len=8, hidden=16, layers=1, heads=1, dropout=0.1, lr=0.01, batch_size=32,
        max_epochs=30, patience=30, seed=3, threads=1,
    )  # fmt: skip
    return SequentialRecommender(config)


def _text() -> CandidateGenerator:
    from recsys.candidates.text import TextRetriever

    # Text embeddings that know the communities: A items near one axis, B items near another; the
    # cold item has text (an embedding) but points elsewhere.
    rng = np.random.default_rng(11)
    emb = rng.normal(scale=0.1, size=(N_ITEMS, 4)).astype(np.float32)
    emb[A_ITEMS, 0] += 1.0
    emb[B_ITEMS, 1] += 1.0
    emb[COLD_ITEM, 2] += 1.0
    return TextRetriever(item_embeddings=emb)


def _load(module: str, cls: str) -> Callable[[Path], CandidateGenerator]:
    def load(path: Path) -> CandidateGenerator:
        import importlib

        loaded: CandidateGenerator = getattr(importlib.import_module(module), cls).load(path)
        return loaded

    return load


FACTORIES: list[Factory] = [
    Factory(
        "popularity", _popularity, _load("recsys.candidates.popularity", "Popularity"), personalised=False
    ),
    Factory(
        "popularity-decay",
        _popularity_decayed,
        _load("recsys.candidates.popularity", "Popularity"),
        personalised=False,
    ),
    Factory("als", _als, _load("recsys.candidates.als", "ALS")),
    Factory("als-bm25", _als_bm25, _load("recsys.candidates.als", "ALS")),
    Factory("itemknn", _itemknn, _load("recsys.candidates.itemknn", "ItemKNN")),
    Factory("itemknn-bm25", _itemknn_bm25, _load("recsys.candidates.itemknn", "ItemKNN")),
    Factory("text", _text, _load("recsys.candidates.text", "TextRetriever")),
    Factory("cooccurrence", _cooccurrence, _load("recsys.candidates.cooccurrence", "CoOccurrence")),
    Factory("sequential", _sequential, _load("recsys.candidates.sequential", "SequentialRecommender")),
]


# --- the checks -----------------------------------------------------------------------------------


def probe_histories(seed: int = 1) -> Histories:
    """Unseen sequences: A-only, B-only, single items, repeats, an empty one."""
    rng = np.random.default_rng(seed)
    rows: list[list[int]] = []
    for _ in range(6):
        rows.append(rng.choice(A_ITEMS, size=3, replace=False).tolist())
        rows.append(rng.choice(B_ITEMS, size=3, replace=False).tolist())
    rows += [[0], [COMMUNITY_ITEMS], [3, 3, 3], [12, 12], [], [COLD_ITEM]]
    return Histories.from_lists(rows)


def check_output(ids: np.ndarray, scores: np.ndarray, histories: Histories, n: int) -> None:
    """The output contract of ``CandidateGenerator.recommend`` for one call."""
    assert ids.shape == (len(histories), n) and scores.shape == (len(histories), n)
    assert np.issubdtype(ids.dtype, np.integer) and np.issubdtype(scores.dtype, np.floating)
    assert ((ids >= -1) & (ids < N_ITEMS)).all()
    pad = ids == -1
    assert np.all(np.isneginf(scores[pad])), "padding must score -inf"
    assert np.all(np.isfinite(scores[~pad])), "returned items must have finite scores"
    # padding only at the end, scores best first
    assert not np.any(pad[:, :-1] & ~pad[:, 1:]), "padding must come after every returned item"
    finite = np.where(pad, -np.inf, scores)
    assert np.all(finite[:, 1:] <= finite[:, :-1] + 1e-6), "scores must be non-increasing"
    for row in range(len(histories)):
        got = ids[row][ids[row] >= 0]
        assert len(set(got.tolist())) == len(got), f"row {row} repeats an item"
        assert not set(got.tolist()) & set(histories.sequence(row).tolist()), f"row {row} returns history"
