"""The one contract every candidate generator passes, on data whose right answer is known.

The data has two disjoint communities (like implicit's checkerboard tests): users ``0..39`` only
interact with items ``0..9`` ("A"), users ``40..79`` only with items ``10..19`` ("B"); item ``20``
is never seen in training. A personalised generator must recommend A items to a history of A items
and call A items similar to an A item; every generator must respect the output contract of
``recsys.candidates.base`` (shapes, -1/-inf padding, best first, no history items, no repeats),
give a history its own items back when asked to (``exclude_seen=False``: "buy again"), answer a
batch exactly as row by row, survive save/load, be deterministic, and handle empty histories and
bad input.

Every source of ``recsys.candidates.registry`` needs at least one :class:`Factory` in
:data:`FACTORIES` below (a test says which is missing); ``tests/test_candidates_contract.py`` runs
every check on every factory, and holds what the pipeline loads a saved source with (the sequential
model's NumPy twin) to the fitted generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys.candidates.als import ALSConfig
from recsys.candidates.ann import AnnConfig
from recsys.candidates.base import CandidateGenerator
from recsys.candidates.cooccurrence import CoOccurrenceConfig
from recsys.candidates.itemknn import ItemKNNConfig
from recsys.candidates.popularity import PopularityConfig
from recsys.candidates.registry import SOURCES
from recsys.candidates.sequential_config import SequentialConfig
from recsys.candidates.text import TextRetrieverConfig
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


def community_embeddings() -> np.ndarray:
    """Text embeddings that know the communities: A items near one axis, B items near another; the
    cold item has text (an embedding) but points elsewhere."""
    rng = np.random.default_rng(11)
    emb = rng.normal(scale=0.1, size=(N_ITEMS, 4)).astype(np.float32)
    emb[A_ITEMS, 0] += 1.0
    emb[B_ITEMS, 1] += 1.0
    emb[COLD_ITEM, 2] += 1.0
    return emb


@dataclass(frozen=True)
class Factory:
    """How the contract suite builds, fits and reloads one source of ``recsys.candidates.registry``.

    Parameters
    ----------
    name
        Test id.
    source
        The registry's name of the source.
    config
        Its config, with a fixed seed (the generator is built several times).
    personalised
        Whether the answer depends on the history: the community checks apply.
    """

    name: str
    source: str
    config: Any
    personalised: bool = True

    def build(self) -> CandidateGenerator:
        """A fresh, unfitted generator, as the pipeline builds it (text sources get the embeddings)."""
        return SOURCES[self.source].build(self.config, item_embeddings=community_embeddings())

    def load(self, path: Path) -> CandidateGenerator:
        """Read a folder written by the generator's ``save``, with the generator's own class."""
        loaded: CandidateGenerator = SOURCES[self.source].generator().load(path)  # type: ignore[attr-defined]
        return loaded


# tiny on purpose: the suite fits it three times
TINY_SEQUENTIAL = SequentialConfig(
    max_len=8, hidden=16, layers=1, heads=1, dropout=0.1, lr=0.01, batch_size=32,
    max_epochs=30, patience=30, use_text=False, seed=3, threads=1,
)  # fmt: skip
ANY_SIZE = AnnConfig(min_items=1, build_threads=1)  # one build thread: the same index every time
# The community data has rank 2. With more factors than that, ALS spends the rest on the noise of
# which random items each of only 80 users picked, and the order of unseen items becomes noise too.
FACTORIES: list[Factory] = [
    Factory("popularity", "popularity", PopularityConfig(), personalised=False),
    Factory("popularity-decay", "popularity", PopularityConfig(half_life=50.0), personalised=False),
    Factory(
        "als",
        "als",
        ALSConfig(factors=2, iterations=10, regularization=0.05, alpha=5.0, seed=7, num_threads=1),
    ),
    Factory(
        "als-bm25",
        "als",
        ALSConfig(factors=2, iterations=10, alpha=5.0, bm25=True, bm25_k1=1.2, seed=7, num_threads=1),
    ),
    Factory("itemknn", "itemknn", ItemKNNConfig(neighbours=50, num_threads=1)),
    Factory("itemknn-bm25", "itemknn", ItemKNNConfig(neighbours=5, similarity="bm25", num_threads=1)),
    Factory("text", "text", TextRetrieverConfig()),
    Factory("cooccurrence", "cooccurrence", CoOccurrenceConfig()),
    Factory("sequential", "sequential", TINY_SEQUENTIAL),
    # the same sources searching an IVF index (built for any catalogue size here): same contract
    Factory(
        "als-ann",
        "als",
        ALSConfig(
            factors=2, iterations=10, regularization=0.05, alpha=5.0, seed=7, num_threads=1, ann=ANY_SIZE
        ),
    ),
    Factory("text-ann", "text", TextRetrieverConfig(ann=ANY_SIZE)),
    Factory("sequential-ann", "sequential", replace(TINY_SEQUENTIAL, ann=ANY_SIZE)),
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


def seen_histories(model: CandidateGenerator, *, personalised: bool) -> Histories:
    """Histories of items that ``model`` scores high for them, so that with ``exclude_seen=False``
    some must come back: each community's three most popular items (the Zipf head, and one row in
    another order) for a personalised source; the three items a non-personalised one puts first."""
    if not personalised:
        return Histories.from_lists(model.recommend(Histories.from_lists([[]]), 3)[0].tolist())
    return Histories.from_lists([A_ITEMS[:3].tolist(), B_ITEMS[:3].tolist(), A_ITEMS[[2, 0]].tolist()])


def check_output(
    ids: np.ndarray, scores: np.ndarray, histories: Histories, n: int, *, exclude_seen: bool = True
) -> None:
    """The output contract of ``CandidateGenerator.recommend`` for one call (``exclude_seen`` as passed
    to it: whether the history's own items are barred)."""
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
        if exclude_seen:
            assert not set(got.tolist()) & set(histories.sequence(row).tolist()), f"row {row} returns history"
