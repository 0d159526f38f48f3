"""``recsys.encoder.embed``: batch embedding with a (model, text) cache, Parquet out, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from encoder_toys import fixture_tiny_bert as fixture_tiny_bert  # the fixture `tiny_bert`
from encoder_toys import toy_items

from recsys.data import schema as S
from recsys.encoder.config import EncoderConfig, item_texts
from recsys.encoder.embed import embed_items, read_embeddings, write_embeddings
from recsys.encoder.model import ItemEncoder, load_encoder


def test_cache_reembeds_only_new_or_changed_items(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = load_encoder(tiny_bert)
    seen: list[str] = []
    original = ItemEncoder.encode

    def counting(self: ItemEncoder, texts: list[str], **kwargs: object) -> np.ndarray:
        seen.extend(texts)
        return original(self, texts, **kwargs)  # type: ignore[arg-type]

    # on the class: embed_items encodes with an ONNX Runtime copy of the encoder when it can
    monkeypatch.setattr(ItemEncoder, "encode", counting)
    items = toy_items()
    first = embed_items(items, encoder=encoder, cache_dir=tmp_path / "cache")
    assert len(seen) == items.height
    seen.clear()
    again = embed_items(items, encoder=encoder, cache_dir=tmp_path / "cache")
    assert seen == [] and np.array_equal(first, again)
    changed = items.with_columns(
        pl.when(pl.col(S.ITEM_ID) == "i3").then(pl.lit("w9 g0")).otherwise(pl.col(S.TITLE)).alias(S.TITLE)
    )
    extra = pl.DataFrame({S.ITEM_ID: ["new"], S.TITLE: ["w1 w2"], S.DESCRIPTION: [None]}, schema=items.schema)
    updated = embed_items(pl.concat([changed, extra]), encoder=encoder, cache_dir=tmp_path / "cache")
    assert sorted(seen) == sorted(item_texts(pl.concat([changed[3], extra]), encoder.config).to_list())
    unchanged = np.arange(items.height) != 3
    np.testing.assert_array_equal(updated[: items.height][unchanged], first[unchanged])
    assert not np.allclose(updated[3], first[3])
    # another model never reads this model's cache
    other = load_encoder(tiny_bert, config=EncoderConfig(max_tokens=9))
    assert other.fingerprint != encoder.fingerprint


def test_embeddings_parquet_round_trip(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    vectors = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    write_embeddings(["a", "b", "c"], vectors, tmp_path / "e.parquet", fingerprint="abc")
    ids, back, fingerprint = read_embeddings(tmp_path / "e.parquet")
    assert ids.to_list() == ["a", "b", "c"] and fingerprint == "abc"
    np.testing.assert_array_equal(back, vectors)
    schema = pq.read_schema(tmp_path / "e.parquet")
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[4]"
    with pytest.raises(ValueError, match="n_items=2"):
        write_embeddings(["a", "b"], vectors, tmp_path / "bad.parquet", fingerprint="abc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet"]  # nothing half-written


def test_embed_cli(tiny_bert: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsys.cli import app

    items = toy_items()
    items.write_parquet(tmp_path / "items.parquet")
    runner = CliRunner()
    args = [
        "embed",
        "--items",
        str(tmp_path / "items.parquet"),
        "--out",
        str(tmp_path / "emb.parquet"),
        "--model",
        str(tiny_bert),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ids, vectors, fingerprint = read_embeddings(tmp_path / "emb.parquet")
    assert ids.to_list() == items[S.ITEM_ID].to_list() and vectors.shape == (items.height, 32)
    assert fingerprint == load_encoder(tiny_bert).fingerprint
    np.testing.assert_allclose(vectors, embed_items(items, encoder=tiny_bert), atol=1e-6)
    items.drop(S.TITLE).write_parquet(tmp_path / "bad.parquet")
    bad = runner.invoke(app, [*args[:2], str(tmp_path / "bad.parquet"), *args[3:]])
    assert bad.exit_code == 2 and "title" in bad.output
    missing = runner.invoke(app, [*args[:5], "--model", str(tmp_path / "no-model")])
    assert missing.exit_code == 2 and "not found" in missing.output
    int8 = runner.invoke(app, [*args, "--int8", "--runtime", "torch"])
    assert int8.exit_code == 0 and "torch int8" in int8.output, int8.output
    assert read_embeddings(tmp_path / "emb.parquet")[2] == f"{fingerprint}:int8"
    int8 = runner.invoke(app, [*args, "--int8"])
    assert int8.exit_code == 0 and "onnx int8" in int8.output, int8.output
    assert read_embeddings(tmp_path / "emb.parquet")[2] == f"{fingerprint}:ort-int8"
    bad_runtime = runner.invoke(app, [*args, "--runtime", "tvm"])
    assert bad_runtime.exit_code == 2 and "runtime must be" in bad_runtime.output
