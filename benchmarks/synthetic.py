"""Synthetic shops of any size with the structure of a real one, written as contract Parquet.

:func:`generate` builds a shop from a :class:`ShopSpec`, deterministically from its ``seed``:

* **a category tree** of three levels (``"c3 > c3.1 > c3.1.4"``), with about ``items_per_leaf``
  items per leaf;
* **power-law popularity**: item ``r`` of a random ranking is drawn with weight
  ``(r + 1) ** -zipf``, so a few items take most events and a long tail is seen once or never;
* **item texts** (title and description) drawn from the word frequencies of the shared datasets
  (``../shared/data``: Amazon titles and descriptions, MovieLens titles and genres) when they are
  there, else from a small built-in vocabulary (``Vocabulary.source`` says which); each leaf has a few
  topic words of its own, so the texts of a category resemble each other;
* **users with sessions**: a session stays in one leaf category; each of its later events is the
  next item of the leaf's ring after the session's first item (``chain``: sequence structure the
  transition and sequential sources can learn), a repeat of the session's first item (``repeat``),
  an item of the leaf by popularity, or, now and then, any item by popularity; user activity is
  log-normal; sessions start at uniform times over ``weeks`` and their events are a minute or so
  apart, in **Unix seconds**.

Everything is vectorised over events, so 10M interactions take seconds, not minutes.
:func:`clustered_embeddings` draws L2-normalised item embeddings around one centre per leaf, in the
shape ``recsys embed`` writes (``write_embeddings``): for catalogue-size tests that must not pay for
BERT.

>>> shop = generate(ShopSpec(n_items=200, n_interactions=2_000, seed=1), vocabulary=builtin_vocabulary())
>>> shop.items.columns, shop.interactions.columns
(['item_id', 'title', 'description', 'category', 'price'], ['user_id', 'item_id', 'timestamp', 'event'])
>>> shop.interactions.height, shop.items.height
(2000, 200)
>>> generate(ShopSpec(n_items=200, n_interactions=2_000, seed=1), vocabulary=builtin_vocabulary()
...          ).interactions.equals(shop.interactions)
True
>>> clustered_embeddings(shop, dim=8).shape
(200, 8)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data import schema as S

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
START = 1_700_000_000  # 2023-11-14 UTC: the first session can start here
EVENTS = ("view", "cart", "purchase")
EVENT_SHARES = (0.87, 0.10, 0.03)
# a fallback when ../shared is absent (a user's machine, a quick test): common shop words, most
# frequent first; their frequencies follow Zipf's law by rank
BUILTIN_WORDS = (
    "the and for with set pack black white steel kit large small mini pro new blue red green "
    "portable digital adjustable stainless heavy duty replacement universal electric wireless "
    "plastic metal glass wood cotton leather rubber silicone waterproof compact premium classic "
    "cable adapter battery charger light lamp bulb switch sensor motor pump valve filter hose "
    "tool drill saw blade wrench screw bolt nut washer clamp tape glue brush paint marker "
    "bottle jar cup bowl plate knife spoon box bag case cover holder stand rack shelf hook "
    "shirt dress shoe sock hat glove jacket coat belt scarf watch ring necklace "
    "book guide manual notebook pen pencil paper card label sticker frame poster "
    "toy game puzzle ball doll block car train robot model figure "
    "camera lens tripod speaker headphone microphone monitor keyboard mouse screen phone tablet"
)


@dataclass(frozen=True)
class ShopSpec:
    """What to generate; every field has a default but the two sizes.

    Parameters
    ----------
    n_items, n_interactions
        Catalogue size and number of events (exactly).
    events_per_user
        Mean events per user: ``n_interactions / events_per_user`` users are drawn from.
    session_length
        Mean events per session (1 + Poisson).
    items_per_leaf
        Mean items per leaf category (the tree's size follows from it).
    zipf
        Item popularity exponent.
    chain, repeat, leave_leaf
        Shares of a session's later events that are the next item of the leaf's ring, a repeat of
        the session's first item, or any item by global popularity (the rest: the leaf by popularity).
    weeks
        Span of the session start times.
    seed
        Everything follows from it.
    """

    n_items: int
    n_interactions: int
    events_per_user: float = 20.0
    session_length: float = 5.0
    items_per_leaf: int = 50
    zipf: float = 1.0
    chain: float = 0.3
    repeat: float = 0.1
    leave_leaf: float = 0.1
    weeks: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "n_items": self.n_items >= 2,
            "n_interactions": self.n_interactions >= 1,
            "events_per_user": self.events_per_user >= 1,
            "session_length": self.session_length >= 1,
            "items_per_leaf": self.items_per_leaf >= 1,
            "zipf": self.zipf >= 0,
            "chain": 0 <= self.chain <= 1,
            "repeat": 0 <= self.repeat <= 1,
            "leave_leaf": 0 <= self.leave_leaf <= 1,
            "weeks": self.weeks >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ShopSpec.{bad[0]} out of range: {getattr(self, bad[0])!r}")
        if self.chain + self.repeat + self.leave_leaf > 1:
            raise ValueError("ShopSpec: chain + repeat + leave_leaf must be <= 1")


@dataclass(frozen=True)
class Vocabulary:
    """Words and their relative frequencies (summing to 1), and where they come from."""

    words: tuple[str, ...]
    frequencies: np.ndarray  # (n_words,) float64
    source: str


@dataclass(frozen=True, eq=False)
class SyntheticShop:
    """A generated shop: contract tables, each item's leaf category index, and how it was made."""

    spec: ShopSpec
    items: pl.DataFrame
    interactions: pl.DataFrame
    leaf: np.ndarray  # (n_items,) int64: each item's leaf category
    vocabulary_source: str

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """``items.parquet`` and ``interactions.parquet`` under ``directory``; returns both paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        items, interactions = out / "items.parquet", out / "interactions.parquet"
        self.items.write_parquet(items)
        self.interactions.write_parquet(interactions)
        return items, interactions


def builtin_vocabulary() -> Vocabulary:
    """The fallback vocabulary: :data:`BUILTIN_WORDS` (distinct, by rank) with Zipf frequencies by rank."""
    words = tuple(BUILTIN_WORDS.split())
    weights = 1.0 / np.arange(1, len(words) + 1)
    return Vocabulary(words, weights / weights.sum(), "built-in (../shared/data absent)")


def shared_vocabulary(data_dir: Path = SHARED_DATA, *, size: int = 5_000) -> Vocabulary:
    """The ``size`` most frequent words of the shared datasets' item texts, with their frequencies;
    :func:`builtin_vocabulary` when neither dataset is there."""
    counts: Counter[str] = Counter()
    amazon = data_dir / "amazon-scientific" / "Scientific.item.json"
    movies = data_dir / "movielens-latest-small" / "movies.csv"
    if amazon.is_file():
        for item in json.loads(amazon.read_text()).values():
            counts.update(_words(f"{item.get('title', '')} {item.get('description', '')}"))
    if movies.is_file():
        frame = pl.read_csv(movies)
        counts.update(_words(" ".join(frame.get_column("title").to_list())))
        counts.update(_words(" ".join(frame.get_column("genres").str.replace_all("|", " ").to_list())))
    if not counts:
        return builtin_vocabulary()
    words, freq = zip(*counts.most_common(size), strict=True)
    weights = np.asarray(freq, dtype=np.float64)
    sources = [p.parent.name for p in (amazon, movies) if p.is_file()]
    return Vocabulary(tuple(words), weights / weights.sum(), f"word frequencies of {', '.join(sources)}")


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if 1 < len(w) < 20]


def generate(spec: ShopSpec, *, vocabulary: Vocabulary | None = None) -> SyntheticShop:
    """The shop of ``spec`` (see the module docstring); ``vocabulary`` defaults to the shared one."""
    vocabulary = vocabulary or shared_vocabulary()
    rng = np.random.default_rng(spec.seed)
    n_leaves = max(1, round(spec.n_items / spec.items_per_leaf))
    leaf = np.sort(rng.integers(0, n_leaves, spec.n_items))  # items of a leaf are neighbours
    rank = rng.permutation(spec.n_items)
    popularity = (rank + 1.0) ** -spec.zipf
    items = _items(spec, leaf, vocabulary, rng)
    interactions = _interactions(spec, leaf, popularity / popularity.sum(), rng)
    return SyntheticShop(spec, items, interactions, leaf, vocabulary.source)


def _category_paths(n_leaves: int) -> list[str]:
    """Three-level paths of ``n_leaves`` leaves, ``branching`` children per node."""
    branching = max(2, int(np.ceil(n_leaves ** (1 / 3))))
    paths = []
    for leaf in range(n_leaves):
        top, rest = divmod(leaf, branching * branching)
        mid, low = divmod(rest, branching)
        paths.append(f"c{top} > c{top}.{mid} > c{top}.{mid}.{low}")
    return paths


def _items(
    spec: ShopSpec, leaf: np.ndarray, vocabulary: Vocabulary, rng: np.random.Generator
) -> pl.DataFrame:
    """Ids, titles and descriptions (leaf topic words among common ones), category paths, prices."""
    n_leaves = int(leaf.max()) + 1
    words = np.asarray(vocabulary.words, dtype=object)
    n_words = len(words)
    topics = rng.choice(n_words, size=(n_leaves, 4))  # each leaf's own words, by frequency
    general = rng.choice(n_words, size=(spec.n_items, 30), p=vocabulary.frequencies)
    topical = topics[leaf[:, None], rng.integers(0, 4, size=(spec.n_items, 30))]
    tokens = np.where(rng.random((spec.n_items, 30)) < 0.3, topical, general)
    tokens[:, :2] = topical[:, :2]  # a title opens with two topic words
    text = words[tokens]
    lengths = rng.integers(12, 30, spec.n_items)
    titles = [" ".join(row[:5]).capitalize() for row in text]
    descriptions = [" ".join(row[5:stop]) + "." for row, stop in zip(text, lengths, strict=True)]
    paths = np.asarray(_category_paths(n_leaves), dtype=object)
    return pl.DataFrame(
        {
            S.ITEM_ID: [f"i{i}" for i in range(spec.n_items)],
            S.TITLE: titles,
            S.DESCRIPTION: descriptions,
            S.CATEGORY: paths[leaf].tolist(),
            S.PRICE: np.round(np.exp(rng.normal(3.0, 1.0, spec.n_items)), 2),
        },
        schema={S.ITEM_ID: pl.String, S.TITLE: pl.String, S.DESCRIPTION: pl.String,
                S.CATEGORY: pl.String, S.PRICE: pl.Float64},
    )  # fmt: skip


def _from_ranges(
    lo: np.ndarray, hi: np.ndarray, cumulative: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One item per (lo, hi) slice of the items (sorted by leaf), drawn by popularity within it.

    ``cumulative`` is ``[0, p0, p0 + p1, ...]`` over the items: a uniform point between the slice's
    two cumulative ends falls in item ``j`` with probability proportional to ``p_j``.
    """
    u = cumulative[lo] + rng.random(len(lo)) * (cumulative[hi] - cumulative[lo])
    found = np.searchsorted(cumulative, u, side="right") - 1
    return np.clip(found, lo, hi - 1)


def _interactions(
    spec: ShopSpec, leaf: np.ndarray, popularity: np.ndarray, rng: np.random.Generator
) -> pl.DataFrame:
    """Sessions of users (see the module docstring), sorted by user and time.

    Long by design: one vectorised pass over every event, each step a few array operations.
    """
    n = spec.n_interactions
    enough = int(1.5 * n / spec.session_length) + 10  # sessions: their lengths surely sum past n
    lengths = 1 + rng.poisson(spec.session_length - 1, size=enough)
    ends = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(ends, n)) + 1
    lengths = lengths[:n_sessions].copy()
    lengths[-1] -= int(ends[n_sessions - 1] - n)  # exactly n events
    ends = np.cumsum(lengths)
    session = np.repeat(np.arange(n_sessions), lengths)  # (n,) each event's session
    position = np.arange(n) - np.repeat(ends - lengths, lengths)
    n_users = max(1, round(n / spec.events_per_user))
    activity = rng.lognormal(0.0, 1.0, n_users)
    user_of_session = rng.choice(n_users, n_sessions, p=activity / activity.sum())

    cumulative = np.concatenate([[0.0], np.cumsum(popularity)])
    cumulative /= cumulative[-1]
    first_of_leaf = np.searchsorted(leaf, np.arange(int(leaf.max()) + 2))  # items sorted by leaf
    leaf_mass = np.add.reduceat(popularity, first_of_leaf[:-1][np.diff(first_of_leaf) > 0])
    leaves = np.flatnonzero(np.diff(first_of_leaf) > 0)
    session_leaf = rng.choice(leaves, n_sessions, p=leaf_mass / leaf_mass.sum())
    lo, hi = first_of_leaf[session_leaf], first_of_leaf[session_leaf + 1]  # (n_sessions,)
    # every event's draw from its session's leaf; the session's first event is one of them
    in_leaf = _from_ranges(lo[session], hi[session], cumulative, rng)
    first = in_leaf[np.repeat(ends - lengths, lengths)]
    size = (hi - lo)[session]
    chained = lo[session] + (first - lo[session] + position) % size  # the leaf's ring, onwards
    anywhere = _from_ranges(np.zeros(n, np.int64), np.full(n, spec.n_items), cumulative, rng)
    kind = rng.random(n)
    cuts = np.cumsum([spec.chain, spec.repeat, spec.leave_leaf])
    item = np.select(
        [position == 0, kind < cuts[0], kind < cuts[1], kind < cuts[2]],
        [in_leaf, chained, first, anywhere],
        default=in_leaf,
    )
    span = spec.weeks * 7 * 86_400
    session_start = START + rng.integers(0, span, n_sessions)
    gaps = rng.exponential(60.0, n).astype(np.int64) + 1
    gaps[position == 0] = 0
    offset = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[ends - lengths], lengths)
    timestamp = session_start[session] + offset
    event = rng.choice(len(EVENTS), n, p=EVENT_SHARES)
    frame = pl.DataFrame(
        {"_user": user_of_session[session], "_item": item, S.TIMESTAMP: timestamp, "_event": event}
    ).sort("_user", S.TIMESTAMP, maintain_order=True)
    return frame.select(
        pl.format("u{}", "_user").alias(S.USER_ID),
        pl.format("i{}", "_item").alias(S.ITEM_ID),
        pl.col(S.TIMESTAMP).cast(pl.Int64),
        pl.col("_event").replace_strict(list(range(len(EVENTS))), list(EVENTS)).alias(S.EVENT),
    )


def clustered_embeddings(shop: SyntheticShop, *, dim: int = 384, spread: float = 0.5) -> np.ndarray:
    """(n_items, dim) float32 L2-normalised embeddings: one random centre per leaf, each item its
    leaf's centre plus Gaussian noise of ``spread`` (per unit of the centre's norm)."""
    rng = np.random.default_rng(shop.spec.seed + 1)
    n_leaves = int(shop.leaf.max()) + 1
    centres = rng.standard_normal((n_leaves, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = rng.standard_normal((len(shop.leaf), dim), dtype=np.float32)
    out *= spread / np.sqrt(dim)
    out += centres[shop.leaf]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def write_clustered_embeddings(shop: SyntheticShop, path: str | Path, *, dim: int = 384) -> Path:
    """:func:`clustered_embeddings` as the Parquet of ``recsys embed --out`` (fingerprint
    ``synthetic:clustered-<dim>``), readable by ``recsys.encoder.embed.read_embeddings``."""
    from recsys.encoder.embed import write_embeddings

    vectors = clustered_embeddings(shop, dim=dim)
    ids = shop.items.get_column(S.ITEM_ID)
    return write_embeddings(ids, vectors, path, fingerprint=f"synthetic:clustered-{dim}")
