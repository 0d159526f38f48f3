"""``recsys.encoder.head``: the default fine-tuning method, a projection head on the frozen vectors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from encoder_toys import fixture_tiny_bert as fixture_tiny_bert  # the fixture `tiny_bert`
from encoder_toys import group_margin, tiny_head_config, toy_interactions, toy_items

from recsys.encoder.config import EncoderConfig, item_texts
from recsys.encoder.embed import embed_items
from recsys.encoder.finetune import finetune
from recsys.encoder.model import EncoderLoadError, ItemEncoder, load_encoder


def test_head_finetune_pulls_cobought_items_together_and_reloads(tiny_bert: Path, tmp_path: Path) -> None:
    """The default method: a projection head on the frozen vectors, saved without BERT's weights."""
    from safetensors.numpy import load_file

    items, data = toy_items(), toy_interactions()
    encoder_config = EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16)
    result = finetune(
        items,
        data,
        tiny_head_config(),
        out=tmp_path / "head",
        encoder=encoder_config,
        embedding_cache=tmp_path / "c",
    )
    folder = tmp_path / "head"
    assert not (folder / "model.safetensors").exists()
    assert set(load_file(str(folder / "head.safetensors"))) == {"up.weight", "down.weight"}
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 30 and np.mean(losses[-3:]) < 0.8 * losses[0], losses
    assert result.improved and result.best_recall > result.baseline_recall

    base, tuned = load_encoder(tiny_bert, config=encoder_config), load_encoder(folder)
    assert tuned.fingerprint == result.fingerprint != base.fingerprint
    assert tuned.trunk_fingerprint == base.fingerprint  # the trunk's cached vectors are reused
    frozen = embed_items(items, encoder=base)
    # the torch path, the default runtime of embed_items (ONNX Runtime) and the head applied to the
    # frozen vectors all agree
    texts = item_texts(items, encoder_config).to_list()
    via_torch = tuned.encode(texts)
    np.testing.assert_allclose(embed_items(items, encoder=tuned), via_torch, atol=1e-5)
    np.testing.assert_allclose(tuned.project(frozen), via_torch, atol=1e-5)
    assert np.allclose(np.linalg.norm(via_torch, axis=1), 1.0, atol=1e-5)
    assert group_margin(via_torch) > group_margin(frozen) + 0.05
    # int8 keeps the head and gets its own fingerprint
    int8 = load_encoder(folder, config=dataclasses.replace(tuned.config, quantize=True))
    assert int8.head is not None and int8.fingerprint not in (tuned.fingerprint, base.fingerprint)


def test_head_encoder_embeds_from_the_trunk_cache(tiny_bert: Path, tmp_path: Path) -> None:
    """Retraining the head re-embeds nothing: the cache holds the trunk's vectors."""
    encoder_config = EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16)
    finetune(
        toy_items(),
        toy_interactions(),
        tiny_head_config(),
        out=tmp_path / "head",
        encoder=encoder_config,
        embedding_cache=tmp_path / "cache",
    )
    tuned = load_encoder(tmp_path / "head")
    calls: list[int] = []
    original = ItemEncoder.encode
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            ItemEncoder,
            "encode",
            lambda self, texts, **kw: calls.append(len(texts)) or original(self, texts, **kw),
        )
        cached = embed_items(toy_items(), encoder=tuned, cache_dir=tmp_path / "cache")
    assert calls == []  # finetune embedded the catalogue with the trunk; only the head ran now
    np.testing.assert_allclose(cached, embed_items(toy_items(), encoder=tuned), atol=1e-5)


def test_head_checkpoint_checks_its_base_and_its_file(tiny_bert: Path, tmp_path: Path) -> None:
    encoder_config = EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16)
    result = finetune(
        toy_items(),
        toy_interactions(),
        tiny_head_config(max_grad_norm=1.0),
        out=tmp_path / "h",
        encoder=encoder_config,
    )
    meta_path = tmp_path / "h" / "recsys_encoder.json"
    meta = json.loads(meta_path.read_text())
    # a folder written before the fine-tuning config was split into methods held one flat table
    flat = {"method": "head", "head": meta["finetune"]["head"], "lr": 2e-5, "lora": False, "progress": True}
    meta_path.write_text(json.dumps({**meta, "finetune": flat}))
    assert load_encoder(tmp_path / "h").fingerprint == result.fingerprint
    meta_path.write_text(json.dumps({**meta, "base_fingerprint": "0" * 64}))
    with pytest.raises(EncoderLoadError, match="trained on a base model with fingerprint 000000000000"):
        load_encoder(tmp_path / "h")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(EncoderLoadError, match="trained with max_tokens=16, asked for max_tokens=32"):
        load_encoder(tmp_path / "h", config=dataclasses.replace(encoder_config, max_tokens=32))
    (tmp_path / "h" / "head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"head\.safetensors: cannot load a projection head"):
        load_encoder(tmp_path / "h")


def test_head_training_runs_on_its_own_thread_count_and_restores_torch_s() -> None:
    """``[encoder_training.head] threads``: the loop runs on that many intra-op threads (seen from
    inside it), learns as on the default, and leaves torch's own setting as it found it."""
    import torch

    from recsys.encoder.config import ProjectionConfig
    from recsys.encoder.head import train_head

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs, held_out = rng.integers(0, 40, size=(64, 2)), rng.integers(0, 40, size=(10, 2))
    before = torch.get_num_threads()
    seen: list[int] = []
    head = ProjectionConfig(hidden=8, lr=1e-2, batch_size=16, max_epochs=3, threads=1)
    run = train_head(
        vectors,
        pairs,
        held_out,
        tiny_head_config(head=head),
        on_step=lambda _: seen.append(torch.get_num_threads()),
    )
    assert set(seen) == {1} and run.steps == 3 * 4
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        ProjectionConfig(threads=-1)


def test_a_warm_start_begins_at_the_earlier_head_and_keeps_its_last_epoch(
    tiny_bert: Path, tmp_path: Path
) -> None:
    """``head.start``: the nightly job's warm start. It begins where the earlier head ended (same
    held-out recall before any update), trains exactly ``max_epochs`` and keeps the last weights (its
    held-out pairs were the earlier head's training pairs), and refuses a head of another base."""
    from safetensors.numpy import load_file

    items, data = toy_items(), toy_interactions()
    encoder_config = EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16)
    earlier = finetune(items, data, tiny_head_config(), out=tmp_path / "earlier", encoder=encoder_config)
    before = load_file(str(tmp_path / "earlier" / "head.safetensors"))
    head = dataclasses.replace(tiny_head_config().head, start=str(tmp_path / "earlier"), max_epochs=2)
    warm = finetune(items, data, tiny_head_config(head=head), out=tmp_path / "warm", encoder=encoder_config)
    assert warm.baseline_recall == pytest.approx(earlier.best_recall)
    epochs = [h for h in warm.history if "loss" in h]
    assert len(epochs) == 2 and warm.best_step == warm.steps and warm.best_recall == epochs[-1]["recall@10"]
    after = load_file(str(tmp_path / "warm" / "head.safetensors"))
    assert all(not np.array_equal(before[k], after[k]) for k in before)  # it trained on
    assert json.loads((tmp_path / "warm" / "recsys_encoder.json").read_text())["head"]["start"] == head.start

    other = EncoderConfig(checkpoint=str(tiny_bert), max_tokens=32)  # another base fingerprint
    with pytest.raises(ValueError, match="trained on another base encoder"):
        finetune(items, data, tiny_head_config(head=head), out=tmp_path / "bad", encoder=other)
    cold = dataclasses.replace(head, start=str(tiny_bert))
    with pytest.raises(ValueError, match="not an encoder folder with a projection head"):
        finetune(items, data, tiny_head_config(head=cold), out=tmp_path / "bad", encoder=encoder_config)
