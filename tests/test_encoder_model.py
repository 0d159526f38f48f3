"""``recsys.encoder.model``: loading a checkpoint, the fast encode path, saving and reloading.

All but one test use a tiny randomly initialised BERT written to a temporary folder; one loads the
real packaged checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_toys import fixture_tiny_bert as fixture_tiny_bert  # the fixture `tiny_bert`
from encoder_toys import toy_items

from recsys.encoder.config import EncoderConfig, item_texts
from recsys.encoder.model import EncoderLoadError, load_encoder, save_encoder


def test_fast_encode_matches_one_by_one_reference(tiny_bert: Path) -> None:
    """Sorting by length and padding per batch must not change any vector (reference: batch of 1)."""
    encoder = load_encoder(tiny_bert)
    texts = item_texts(toy_items(), encoder.config).to_list()
    fast = encoder.encode(texts, batch_size=7)
    with torch.inference_mode():
        reference = np.stack([encoder.embed_batch(encoder.tokenize([t])).numpy()[0] for t in texts])
    np.testing.assert_allclose(fast, reference, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert fast.shape == (len(texts), 32) and fast.dtype == np.float32


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderLoadError, match="not found"):
        load_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderLoadError, match="cannot load"):
        load_encoder(tmp_path / "empty")


def test_save_and_reload_give_identical_embeddings(tiny_bert: Path, tmp_path: Path) -> None:
    encoder = load_encoder(tiny_bert, config=EncoderConfig(max_tokens=24, pooling="mean"))
    save_encoder(encoder, tmp_path / "saved", meta={"note": "test"})
    reloaded = load_encoder(tmp_path / "saved")
    texts = item_texts(toy_items(), encoder.config).to_list()
    np.testing.assert_array_equal(encoder.encode(texts), reloaded.encode(texts))
    assert reloaded.fingerprint == encoder.fingerprint
    assert reloaded.config.max_tokens == 24  # the saved EncoderConfig travels with the weights
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    assert not list((tmp_path / "saved").glob("*.bin")) and not list((tmp_path / "saved").glob("*.pkl"))


def test_packaged_minilm_gives_normalised_384_dim_embeddings() -> None:
    encoder = load_encoder()
    texts = ["cordless power drill 18V", "electric drill with battery", "borosilicate glass lab beaker"]
    emb = encoder.encode(texts)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2  # a real sentence encoder, not random weights
