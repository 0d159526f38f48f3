"""``recsys.encoder.layers``: fine-tuning the transformer itself (all layers, the top ones, LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_toys import fixture_tiny_bert as fixture_tiny_bert  # the fixture `tiny_bert`
from encoder_toys import group_margin, tiny_layers_config, toy_interactions, toy_items

from recsys.encoder.config import EncoderConfig, LoraConfig, item_texts
from recsys.encoder.embed import embed_items
from recsys.encoder.finetune import finetune
from recsys.encoder.layers import TopLayers
from recsys.encoder.model import load_encoder


def test_finetune_loss_decreases_and_artifact_reloads(tiny_bert: Path, tmp_path: Path) -> None:
    config = tiny_layers_config()
    encoder = EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16)
    # twice: a second run with the same seed and data is the same run
    result, again = (
        finetune(toy_items(), toy_interactions(), config, out=tmp_path / name, encoder=encoder)
        for name in ("ft", "ft2")
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == result.steps > 20
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert result.best_recall >= result.baseline_recall
    meta = json.loads((tmp_path / "ft" / "recsys_encoder.json").read_text())
    assert meta["data_fingerprint"] == result.data_fingerprint and meta["lora"] is False
    assert meta["finetune"]["method"] == "layers" and meta["finetune"]["lr"] == config.lr
    assert again.fingerprint == result.fingerprint and again.data_fingerprint == result.data_fingerprint
    reloaded = load_encoder(tmp_path / "ft")
    assert reloaded.fingerprint == result.fingerprint != load_encoder(tiny_bert).fingerprint


def test_finetune_pulls_cobought_items_together(tiny_bert: Path, tmp_path: Path) -> None:
    items, data = toy_items(), toy_interactions()
    before = load_encoder(tiny_bert, config=EncoderConfig(max_tokens=16))
    result = finetune(
        items,
        data,
        tiny_layers_config(),
        out=tmp_path / "ft",
        encoder=EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16),
    )
    after = load_encoder(result.path)
    assert result.improved and result.best_recall > result.baseline_recall
    margins = [group_margin(embed_items(items, encoder=encoder)) for encoder in (before, after)]
    assert margins[1] > margins[0] + 0.05, margins


def test_lora_trains_and_saves_only_adapters(tiny_bert: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    result = finetune(
        toy_items(),
        toy_interactions(),
        tiny_layers_config(lora=LoraConfig(r=4), lr=1e-2, epochs=4),
        out=tmp_path / "lora",
        encoder=EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16),
    )
    folder = tmp_path / "lora"
    assert not (folder / "model.safetensors").exists()
    adapters = load_file(str(folder / "adapter_model.safetensors"))
    assert adapters and all("lora_" in name for name in adapters)
    base, tuned = load_encoder(tiny_bert), load_encoder(folder)
    assert tuned.fingerprint == result.fingerprint != base.fingerprint
    base_state, tuned_state = base.model.state_dict(), tuned.model.state_dict()
    changed = {k for k in base_state if not torch.equal(base_state[k], tuned_state[k])}
    # only the LoRA target Linear weights move (merged adapters); embeddings, norms, biases do not
    assert changed and all(k.endswith(".weight") and "LayerNorm" not in k for k in changed)
    assert not any("embeddings" in k for k in changed)


def test_top_layers_on_cached_states_match_the_full_forward(tiny_bert: Path) -> None:
    encoder = load_encoder(tiny_bert)
    ids = encoder.tokenize(item_texts(toy_items(), encoder.config).to_list())
    top = TopLayers(encoder, 1)
    top.cache_lower(ids, batch_size=7)
    with torch.inference_mode():
        fast = top.embed(list(range(len(ids)))).numpy()
        full = encoder.embed_batch(ids).numpy()
    np.testing.assert_allclose(fast, full, atol=2e-5)
    with pytest.raises(ValueError, match="train_layers must be in"):
        TopLayers(encoder, 3)


def test_finetuning_top_layers_leaves_the_rest_untouched(tiny_bert: Path, tmp_path: Path) -> None:
    result = finetune(
        toy_items(),
        toy_interactions(),
        tiny_layers_config(train_layers=1),
        out=tmp_path / "top",
        encoder=EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16),
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    base, tuned = load_encoder(tiny_bert).model.state_dict(), load_encoder(result.path).model.state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed), changed


def test_lower_states_are_cached_on_disk_and_shared(tiny_bert: Path, tmp_path: Path) -> None:
    encoder = load_encoder(tiny_bert)
    ids = encoder.tokenize(item_texts(toy_items(), encoder.config).to_list())
    first = TopLayers(encoder, 1)
    first.cache_lower(ids, batch_size=5, cache_dir=tmp_path / "states")
    files = sorted(p.name for p in (tmp_path / "states").iterdir())
    assert len(files) == 2 and all(f.startswith("lower-") and f.endswith(".npy") for f in files), files
    again = TopLayers(encoder, 1)
    again.cache_lower(ids, cache_dir=tmp_path / "states")  # read back, not recomputed
    assert len(again.states) == len(ids)
    assert all(torch.equal(a, b) for a, b in zip(first.states, again.states, strict=True))
    other = TopLayers(encoder, 1)
    other.cache_lower(ids[:-1], cache_dir=tmp_path / "states")  # other texts: other files
    assert len(list((tmp_path / "states").iterdir())) == 4
    # every item through the top layer only equals the full forward pass
    np.testing.assert_allclose(
        again.embed_all(batch_size=4),
        encoder.encode(item_texts(toy_items(), encoder.config).to_list()),
        atol=2e-5,
    )
    # a model whose lower layer differs cannot borrow the cache
    changed = load_encoder(tiny_bert)
    with torch.no_grad():
        changed.model.encoder.layer[0].output.dense.bias.add_(0.1)
    borrower = TopLayers(changed, 1)
    with pytest.raises(ValueError, match="lower layers differ"):
        borrower.share_lower(first)
    same = TopLayers(load_encoder(tiny_bert), 1)
    same.share_lower(first)
    assert same.states is first.states
