"""The sequential model's parameters, apart from the model: the pipeline's config names them
without importing torch (``recsys.candidates.sequential`` imports it, and re-exports this class).

>>> SequentialConfig(hidden=16, heads=2).hidden
16
>>> SequentialConfig(hidden=15, heads=2)
Traceback (most recent call last):
...
ValueError: SequentialConfig.hidden out of range: 15
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys.candidates.ann import AnnConfig


@dataclass(frozen=True)
class SequentialConfig:
    """Parameters of :class:`~recsys.candidates.sequential.SequentialRecommender`; the defaults are
    the two-stage pipeline's.

    Parameters
    ----------
    max_len
        Most recent items the model reads; training sequences are cut into windows of this length.
    hidden, layers, heads, dropout
        Transformer size (``hidden`` must be divisible by ``heads``).
    ffn_mult
        Width of the position-wise feed-forward layer, in multiples of ``hidden`` (1 as in SASRec:
        on 2 CPU cores the full-softmax output layer already dominates the cost).
    lr, weight_decay, batch_size
        AdamW settings; ``batch_size`` counts windows.
    max_epochs, patience
        Stop after ``max_epochs``, or when validation NDCG@10 has not improved for ``patience`` epochs.
    time_budget_s
        Wall-clock limit of ``fit`` (checked after every batch; the best epoch so far is kept), or
        0: none, the default. A clock stops training at whatever batch a machine's load lets it
        reach, so figures stop repeating at a fixed seed; ``max_epochs`` and ``patience`` do not.
    validation_users
        Users (a seeded sample of those with at least 3 events; 0: all of them) whose last training
        event is held out for early stopping when ``fit`` gets no validation task. A sample keeps
        the other users' most recent transitions in training: on amazon-scientific, 2000 gave test
        NDCG@10 0.0772 against 0.0695 when holding out every user (figures cut, not rounded).
    use_text
        Add a learned projection of the ``item_embeddings`` passed to the constructor.
    seed, threads
        Seed of initialisation, dropout and shuffling; torch threads (0: all cores available). At a
        fixed seed and thread count a fit repeats bit for bit on CPU; torch's sums depend on the
        thread count (1 against 2 threads moved item vectors by ~4e-8), so 0 repeats on one machine
        only, and a fixed count across machines.
    ann
        For a catalogue of at least ``ann.min_items`` items, ``save`` indexes the item output vectors
        in an IVF index that the saved model's scorer (``sequential_numpy``) searches; the torch
        model itself, used only while training, scores exactly.
    """

    max_len: int = 50
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.3
    ffn_mult: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 5
    time_budget_s: float = 0.0  # 0: no wall-clock limit (reproducible)
    validation_users: int = 2000
    use_text: bool = True
    seed: int = 0
    threads: int = 0
    ann: AnnConfig = field(default_factory=AnnConfig)

    def __post_init__(self) -> None:
        checks = {
            "max_len": self.max_len >= 1,
            "hidden": self.hidden >= 1 and self.heads >= 1 and self.hidden % self.heads == 0,
            "layers": self.layers >= 1,
            "heads": self.heads >= 1,
            "ffn_mult": self.ffn_mult >= 1,
            "dropout": 0 <= self.dropout < 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": self.batch_size >= 1,
            "max_epochs": self.max_epochs >= 1,
            "patience": self.patience >= 1,
            "time_budget_s": self.time_budget_s >= 0,
            "validation_users": self.validation_users >= 0,
            "threads": self.threads >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SequentialConfig.{bad[0]} out of range: {getattr(self, bad[0])!r}")
