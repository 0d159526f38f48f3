"""Small, fast building blocks for pipeline tests: a tiny random BERT and a quick train config."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.data import schema as S


def save_tiny_bert(folder: Path, words: list[str] | None = None) -> Path:
    """A 2-layer, 32-wide random BERT with a word-level vocabulary, saved like a hub checkpoint."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ":", *(words or [])]
    tokenizer = transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def vocabulary(items: pl.DataFrame) -> list[str]:
    """Lower-cased words of the item titles, for a tiny tokenizer that knows the catalogue."""
    words = items.get_column(S.TITLE).str.to_lowercase().str.extract_all(r"[a-z0-9]+").explode()
    return sorted(set(words.drop_nulls().to_list()))


def fast_config(checkpoint: Path, *, protocol: str = "temporal") -> object:
    """A TrainConfig that runs in seconds: frozen tiny encoder, small sequential and ranker budgets."""
    from recsys.config import from_dict
    from recsys.pipeline.train import TrainConfig

    return from_dict(
        TrainConfig,
        {
            "protocol": protocol,
            "finetune": False,
            "evaluate_validation": False,
            "encoder": {"checkpoint": str(checkpoint), "max_tokens": 32},
            "model": {
                "label_protocol": protocol,
                "candidates": {
                    "per_source": 30,
                    "total": 60,
                    "als": {"factors": 16, "iterations": 5},
                    "sequential": {
                        "hidden": 16,
                        "layers": 1,
                        "max_len": 10,
                        "max_epochs": 2,
                        "time_budget_s": 10.0,
                    },
                },
                "ranker": {"search": [[15, 0.1]], "max_rounds": 50, "min_data_in_leaf": 5},
            },
        },
    )
