"""Toy data for the encoder tests: a tiny random BERT, grouped items and users who buy within a group.

Item ``i`` belongs to group ``i // GROUP_SIZE`` and its title names the item and its group, so the
right answer is known: fine-tuning must pull items of one group together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import transformers
from pipeline_helpers import save_tiny_bert

from recsys.data import schema as S
from recsys.data.dataset import Interactions
from recsys.encoder.config import HeadConfig, LayersConfig, ProjectionConfig

torch.set_num_threads(1)  # tiny models: more threads only add contention on a shared 2-core machine

N_GROUPS, GROUP_SIZE = 8, 5
WORDS = [f"w{i}" for i in range(N_GROUPS * GROUP_SIZE)] + [f"g{g}" for g in range(N_GROUPS)]


@pytest.fixture(scope="module", name="tiny_bert")
def fixture_tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT and a word-level vocabulary, saved like a hub checkpoint.

    The fixture ``tiny_bert`` of the modules that import it (pytest's way to avoid shadowing names).
    """
    folder = save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), WORDS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer("w1 g0")["input_ids"] == [2, 7 + WORDS.index("w1"), 7 + WORDS.index("g0"), 3]
    return folder


def toy_items() -> pl.DataFrame:
    """Item i belongs to group i // GROUP_SIZE; the title names the item and its group."""
    n = N_GROUPS * GROUP_SIZE
    return pl.DataFrame(
        {
            S.ITEM_ID: [f"i{i}" for i in range(n)],
            S.TITLE: [f"w{i} g{i // GROUP_SIZE}" for i in range(n)],
            S.DESCRIPTION: [None if i % 3 else f"w{(i + 1) % n}" for i in range(n)],
        }
    )


def toy_interactions(n_users: int = 120, seed: int = 0) -> Interactions:
    """Each user buys 4 items of one group, so co-occurring items are always in the same group."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(n_users):
        group = user % N_GROUPS
        chosen = rng.choice(GROUP_SIZE, size=4, replace=False) + group * GROUP_SIZE
        users += [user] * 4
        items += chosen.tolist()
    return Interactions.from_arrays(
        np.array(users), np.array(items), n_users=n_users, n_items=N_GROUPS * GROUP_SIZE
    )


def group_margin(embeddings: np.ndarray) -> float:
    """Mean cosine within a group minus mean cosine across groups (self-similarity left out)."""
    group = np.arange(N_GROUPS * GROUP_SIZE) // GROUP_SIZE
    same = group[:, None] == group[None, :]
    np.fill_diagonal(same, False)
    sim = embeddings @ embeddings.T
    return float(sim[same].mean() - sim[~same & ~np.eye(len(sim), dtype=bool)].mean())


def tiny_layers_config(**overrides: object) -> LayersConfig:
    options: dict[str, object] = dict(
        lr=3e-3,
        temperature=0.1,
        epochs=15,
        window=3,
        batch_size=16,
        max_tokens=16,
        validation_pairs=30,
        eval_every=10,
        patience=100,
        warmup_ratio=0.1,
    )
    options.update(overrides)
    return LayersConfig(**options)  # type: ignore[arg-type]


def tiny_head_config(**overrides: object) -> HeadConfig:
    head = ProjectionConfig(hidden=32, lr=1e-2, batch_size=16, max_epochs=30)
    options: dict[str, object] = dict(head=head, window=3, temperature=0.1, validation_pairs=30, patience=100)
    options.update(overrides)
    return HeadConfig(**options)  # type: ignore[arg-type]
