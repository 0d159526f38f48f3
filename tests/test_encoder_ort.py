"""``recsys.encoder.ort``: the encoder on ONNX Runtime gives torch's vectors, or falls back to torch.

onnxruntime and onnx are hard dependencies: a broken install fails these tests, it does not skip them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_toys import fixture_tiny_bert as fixture_tiny_bert  # the fixture `tiny_bert`
from encoder_toys import toy_items

from recsys.encoder import ort
from recsys.encoder.config import EncoderConfig, item_texts
from recsys.encoder.embed import embed_items
from recsys.encoder.model import load_encoder


def test_onnx_runtime_gives_the_torch_vectors_and_caches_its_graph(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for pooling in ("mean", "cls"):
        encoder = load_encoder(tiny_bert, config=EncoderConfig(pooling=pooling))
        fast = ort.onnx_encoder(encoder, tmp_path / "onnx")
        assert fast.runtime == "onnx" and encoder.runtime == "torch"
        assert fast.fingerprint == encoder.fingerprint  # same vectors: the embedding cache is shared
        texts = [*item_texts(toy_items(), encoder.config).to_list(), "w1 " * 40]  # long: truncated
        np.testing.assert_allclose(fast.encode(texts, batch_size=7), encoder.encode(texts), atol=1e-5)
    assert len(list((tmp_path / "onnx").glob("*-fp32.onnx"))) == 2  # one graph per fingerprint
    # the second call loads the cached graph: exporting again would fail here
    monkeypatch.setattr(ort, "export", lambda *a, **k: pytest.fail("exported twice"))
    assert ort.onnx_encoder(encoder, tmp_path / "onnx").runtime == "onnx"
    # a corrupt cached graph is rebuilt, not fatal
    monkeypatch.undo()
    for graph in (tmp_path / "onnx").glob("*.onnx"):
        graph.write_bytes(b"not a graph")
    again = ort.onnx_encoder(encoder, tmp_path / "onnx")
    np.testing.assert_allclose(again.encode(texts), encoder.encode(texts), atol=1e-5)


def test_onnx_int8_has_its_own_fingerprint(tiny_bert: Path, tmp_path: Path) -> None:
    encoder = load_encoder(tiny_bert)
    int8 = ort.onnx_encoder(encoder, tmp_path, precision="int8")
    assert int8.fingerprint == f"{encoder.fingerprint}:ort-int8"
    texts = item_texts(toy_items(), encoder.config).to_list()
    exact, approx = encoder.encode(texts), int8.encode(texts)
    assert np.min(np.sum(exact * approx, axis=1)) > 0.95 and not np.array_equal(exact, approx)
    np.testing.assert_allclose(np.linalg.norm(approx, axis=1), 1.0, atol=1e-5)


def test_embedding_falls_back_to_torch_without_onnx(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    items = toy_items()
    reference = load_encoder(tiny_bert, config=EncoderConfig(runtime="torch"))
    expected = reference.encode(item_texts(items, reference.config).to_list())
    np.testing.assert_array_equal(embed_items(items, encoder=reference), expected)  # torch: no export

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operator")

    breakages = [
        (sys.modules, "onnxruntime", None, "not installed"),  # `import onnxruntime` raises ImportError
        (vars(torch.onnx), "export", broken, "unsupported operator"),
        (ort.MIN_COSINE, "fp32", 1.5, "differs from torch"),  # no graph is that close to torch
    ]
    for target, name, replacement, message in breakages:
        with monkeypatch.context() as patch:
            patch.setitem(target, name, replacement)
            caplog.clear()
            with caplog.at_level("WARNING", logger="recsys.encoder.embed"):
                vectors = embed_items(items, encoder=load_encoder(tiny_bert), onnx_dir=tmp_path / name)
            np.testing.assert_allclose(vectors, expected, atol=1e-6)
            assert "embedding with torch" in caplog.text and message in caplog.text
            strict = load_encoder(tiny_bert, config=EncoderConfig(runtime="onnx"))
            with pytest.raises(ort.OnnxUnavailable, match=message):
                embed_items(items, encoder=strict, onnx_dir=tmp_path / name)
        assert not list(tmp_path.glob(f"{name}/*.onnx"))  # nothing half-written is left behind
    with pytest.raises(ValueError, match="runtime must be"):
        EncoderConfig(runtime="tensorrt")  # type: ignore[arg-type]


@pytest.mark.slow
def test_packaged_minilm_on_onnx_runtime_equals_torch(tmp_path: Path) -> None:
    """The default path of `recsys embed`: the fused ONNX graph of the real checkpoint."""
    encoder = load_encoder()
    fast = ort.onnx_encoder(encoder, tmp_path)
    texts = ["cordless power drill 18V", "borosilicate glass lab beaker, 250 ml " * 30, "x"]
    exact, onnx = encoder.encode(texts), fast.encode(texts)
    assert onnx.shape == (3, 384) and fast.runtime == "onnx"
    np.testing.assert_allclose(onnx, exact, atol=1e-5)
