"""The BERT item encoder: item text -> unit vector, fine-tuned on the shop's own behaviour.

* ``config``: ``EncoderConfig``, the fine-tuning configs (``FinetuneConfig = HeadConfig |
  LayersConfig``) and the item text template (torch-free).
* ``model``: load a checkpoint (packaged MiniLM BERT by default), tokenize, mean-pool, normalise.
* ``ort``: the same encoder exported to ONNX Runtime (a ``model.Session``), checked against torch.
* ``finetune``: contrastive fine-tuning on co-occurring training items (InfoNCE), by one of two
  methods: a projection head (``head``, the default) or the transformer's layers (``layers``,
  optionally LoRA); ``pairs`` holds what both share (pairs, loss, held-out pair recall).
* ``embed``: batch embedding of a catalogue with a (model, text) cache; Parquet in and out.

Importing this package does not import torch: ``load_encoder``, ``ItemEncoder``, ``finetune`` and
``FinetuneResult`` are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from recsys.encoder.config import (
    EncoderConfig,
    FinetuneConfig,
    HeadConfig,
    LayersConfig,
    LoraConfig,
    ProjectionConfig,
    item_texts,
)
from recsys.encoder.embed import EmbeddingCache, embed_items, read_embeddings, write_embeddings

_LAZY = {
    "ItemEncoder": "recsys.encoder.model",
    "load_encoder": "recsys.encoder.model",
    "finetune": "recsys.encoder.finetune",
    "FinetuneResult": "recsys.encoder.finetune",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recsys.encoder' has no attribute {name!r}")


__all__ = [
    "EmbeddingCache",
    "EncoderConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "HeadConfig",
    "ItemEncoder",
    "LayersConfig",
    "LoraConfig",
    "ProjectionConfig",
    "embed_items",
    "finetune",
    "item_texts",
    "load_encoder",
    "read_embeddings",
    "write_embeddings",
]
