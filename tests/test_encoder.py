"""The BERT item encoder: loading, pooling, fine-tuning, batch embedding, cache, CLI.

All but one test use a tiny randomly initialised BERT written to a temporary folder; one loads the
real packaged checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)  # tiny models: more threads only add contention on a shared 2-core machine

from pipeline_helpers import save_tiny_bert  # noqa: E402

from recsys.data import schema as S  # noqa: E402
from recsys.data.dataset import Interactions  # noqa: E402
from recsys.encoder.config import EncoderConfig, FinetuneConfig, item_texts  # noqa: E402
from recsys.encoder.embed import embed_items, read_embeddings, write_embeddings  # noqa: E402
from recsys.encoder.finetune import cooccurrence_pairs, finetune, info_nce  # noqa: E402
from recsys.encoder.model import EncoderLoadError, load_encoder, save_encoder  # noqa: E402

N_GROUPS, GROUP_SIZE = 8, 5
WORDS = [f"w{i}" for i in range(N_GROUPS * GROUP_SIZE)] + [f"g{g}" for g in range(N_GROUPS)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT and a word-level vocabulary, saved like a hub checkpoint."""
    folder = save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), WORDS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer("w1 g0")["input_ids"] == [2, 7 + WORDS.index("w1"), 7 + WORDS.index("g0"), 3]
    return folder


def toy_items() -> pl.DataFrame:
    """Item i belongs to group i // GROUP_SIZE; the title names the item and its group."""
    n = N_GROUPS * GROUP_SIZE
    return pl.DataFrame(
        {
            S.ITEM_ID: [f"i{i}" for i in range(n)],
            S.TITLE: [f"w{i} g{i // GROUP_SIZE}" for i in range(n)],
            S.DESCRIPTION: [None if i % 3 else f"w{(i + 1) % n}" for i in range(n)],
        }
    )


def toy_interactions(n_users: int = 120, seed: int = 0) -> Interactions:
    """Each user buys 4 items of one group, so co-occurring items are always in the same group."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(n_users):
        group = user % N_GROUPS
        chosen = rng.choice(GROUP_SIZE, size=4, replace=False) + group * GROUP_SIZE
        users += [user] * 4
        items += chosen.tolist()
    return Interactions.from_arrays(
        np.array(users), np.array(items), n_users=n_users, n_items=N_GROUPS * GROUP_SIZE
    )


def tiny_finetune_config(**overrides: object) -> FinetuneConfig:
    options: dict[str, object] = dict(
        method="layers",
        lr=3e-3,
        temperature=0.1,
        epochs=15,
        window=3,
        batch_size=16,
        max_tokens=16,
        validation_pairs=30,
        eval_every=10,
        patience=100,
        progress=False,
        warmup_ratio=0.1,
    )
    options.update(overrides)
    return FinetuneConfig(**options)  # type: ignore[arg-type]


# --- text template ------------------------------------------------------------------------------


def test_template_drops_missing_parts_and_rejects_unknown_fields() -> None:
    items = pl.DataFrame(
        {
            S.ITEM_ID: ["a", "b"],
            S.TITLE: ["Drill ", "Tape"],
            S.CATEGORY: ["Tools", "  "],
            S.BRAND: [None, "3M"],
        }
    )
    texts = item_texts(items, EncoderConfig()).to_list()
    assert texts == ["Drill. Category: Tools", "Tape. Brand: 3M"]
    with pytest.raises(ValueError, match="unknown field"):
        EncoderConfig(template=("{title}", "{colour}"))
    with pytest.raises(ValueError, match="max_tokens"):
        EncoderConfig(max_tokens=4)


# --- encoding -----------------------------------------------------------------------------------


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


# --- fine-tuning --------------------------------------------------------------------------------


def test_info_nce_masks_duplicate_partners() -> None:
    """A batch where two anchors share a partner: the duplicate must not count as a negative."""
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]), dim=-1)
    anchors, positives = e[[0, 1]], e[[2, 2]]
    loss = info_nce(anchors, positives, torch.tensor([0, 1]), torch.tensor([2, 2]), 0.1)
    # each row has only its own column left: the loss is exactly zero
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_pairs_come_from_windows_of_one_user() -> None:
    data = Interactions.from_arrays([0, 0, 0, 1], [1, 2, 3, 4], n_users=2, n_items=5)
    pairs, counts = cooccurrence_pairs(data, window=2)
    assert pairs.tolist() == [[1, 2], [1, 3], [2, 3]] and counts.tolist() == [1, 1, 1]


def test_finetune_loss_decreases_and_artifact_reloads(tiny_bert: Path, tmp_path: Path) -> None:
    config = tiny_finetune_config()
    result = finetune(
        toy_items(),
        toy_interactions(),
        config,
        out=tmp_path / "ft",
        encoder=EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16),
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == result.steps > 20
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert result.best_recall >= result.baseline_recall
    meta = json.loads((tmp_path / "ft" / "recsys_encoder.json").read_text())
    assert meta["data_fingerprint"] == result.data_fingerprint and meta["lora"] is False
    # a second run with the same seed and data is the same run
    again = finetune(
        toy_items(),
        toy_interactions(),
        config,
        out=tmp_path / "ft2",
        encoder=EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16),
    )
    assert again.fingerprint == result.fingerprint and again.data_fingerprint == result.data_fingerprint
    reloaded = load_encoder(tmp_path / "ft")
    assert reloaded.fingerprint == result.fingerprint != load_encoder(tiny_bert).fingerprint


def test_finetune_pulls_cobought_items_together(tiny_bert: Path, tmp_path: Path) -> None:
    items, data = toy_items(), toy_interactions()
    before = load_encoder(tiny_bert, config=EncoderConfig(max_tokens=16))
    result = finetune(
        items,
        data,
        tiny_finetune_config(),
        out=tmp_path / "ft",
        encoder=EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16),
    )
    after = load_encoder(result.path)
    group = np.arange(N_GROUPS * GROUP_SIZE) // GROUP_SIZE
    same = group[:, None] == group[None, :]
    np.fill_diagonal(same, False)

    def margin(encoder: object) -> float:
        emb = embed_items(items, encoder=encoder)  # type: ignore[arg-type]
        sim = emb @ emb.T
        return float(sim[same].mean() - sim[~same & ~np.eye(len(sim), dtype=bool)].mean())

    assert result.improved and result.best_recall > result.baseline_recall
    assert margin(after) > margin(before) + 0.05


def test_lora_trains_and_saves_only_adapters(tiny_bert: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    result = finetune(
        toy_items(),
        toy_interactions(),
        tiny_finetune_config(lora=True, lora_r=4, lr=1e-2, epochs=4),
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


def tiny_head_config(**overrides: object) -> FinetuneConfig:
    from recsys.encoder.config import HeadConfig

    head = HeadConfig(hidden=32, lr=1e-2, batch_size=16, max_epochs=30)
    options: dict[str, object] = dict(window=3, temperature=0.1, validation_pairs=30, patience=100)
    options.update(overrides)
    return FinetuneConfig(method="head", head=head, progress=False, **options)  # type: ignore[arg-type]


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
    group = np.arange(N_GROUPS * GROUP_SIZE) // GROUP_SIZE
    same = group[:, None] == group[None, :]
    np.fill_diagonal(same, False)

    def margin(emb: np.ndarray) -> float:
        sim = emb @ emb.T
        return float(sim[same].mean() - sim[~same & ~np.eye(len(sim), dtype=bool)].mean())

    frozen = embed_items(items, encoder=base)
    # the torch path, the default runtime of embed_items (ONNX Runtime where installed) and the head
    # applied to the frozen vectors all agree
    texts = item_texts(items, encoder_config).to_list()
    via_torch = tuned.encode(texts)
    np.testing.assert_allclose(embed_items(items, encoder=tuned), via_torch, atol=1e-5)
    np.testing.assert_allclose(tuned.project(frozen), via_torch, atol=1e-5)
    assert np.allclose(np.linalg.norm(via_torch, axis=1), 1.0, atol=1e-5)
    assert margin(via_torch) > margin(frozen) + 0.05
    # int8 keeps the head and gets its own fingerprint
    int8 = load_encoder(folder, config=dataclasses.replace(tuned.config, quantize=True))
    assert int8.head is not None and int8.fingerprint not in (tuned.fingerprint, base.fingerprint)


def test_head_encoder_embeds_from_the_trunk_cache(tiny_bert: Path, tmp_path: Path) -> None:
    """Retraining the head re-embeds nothing: the cache holds the trunk's vectors."""
    from recsys.encoder.model import ItemEncoder

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
    finetune(
        toy_items(),
        toy_interactions(),
        tiny_head_config(max_grad_norm=1.0),
        out=tmp_path / "h",
        encoder=encoder_config,
    )
    meta_path = tmp_path / "h" / "recsys_encoder.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "base_fingerprint": "0" * 64}))
    with pytest.raises(EncoderLoadError, match="trained on a base model with fingerprint 000000000000"):
        load_encoder(tmp_path / "h")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(EncoderLoadError, match="trained with max_tokens=16, asked for max_tokens=32"):
        load_encoder(tmp_path / "h", config=dataclasses.replace(encoder_config, max_tokens=32))
    (tmp_path / "h" / "head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"head\.safetensors: cannot load a projection head"):
        load_encoder(tmp_path / "h")


def test_finetune_refuses_mismatched_catalogue(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="items has 3 rows"):
        finetune(toy_items().head(3), toy_interactions(), tiny_finetune_config(), out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --- batch embedding and cache ------------------------------------------------------------------


def test_cache_reembeds_only_new_or_changed_items(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.encoder.model import ItemEncoder

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


def test_onnx_runtime_gives_the_torch_vectors_and_caches_its_graph(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from recsys.encoder import ort

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
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from recsys.encoder.ort import onnx_encoder

    encoder = load_encoder(tiny_bert)
    int8 = onnx_encoder(encoder, tmp_path, precision="int8")
    assert int8.fingerprint == f"{encoder.fingerprint}:ort-int8"
    texts = item_texts(toy_items(), encoder.config).to_list()
    exact, approx = encoder.encode(texts), int8.encode(texts)
    assert np.min(np.sum(exact * approx, axis=1)) > 0.95 and not np.array_equal(exact, approx)
    np.testing.assert_allclose(np.linalg.norm(approx, axis=1), 1.0, atol=1e-5)


def test_embedding_falls_back_to_torch_without_onnx(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from recsys.encoder import ort

    items = toy_items()
    reference = load_encoder(tiny_bert, config=EncoderConfig(runtime="torch"))
    expected = reference.encode(item_texts(items, reference.config).to_list())
    np.testing.assert_array_equal(embed_items(items, encoder=reference), expected)  # torch: no export

    def missing() -> None:
        raise ort.OnnxUnavailable("onnxruntime is not installed")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operator")

    def wrong(*args: object, **kwargs: object) -> float:
        return 0.5  # the graph's vectors disagree with torch's

    breakages = [(ort, "_import_ort", missing, "not installed")]
    if _has_onnx():
        breakages += [(torch.onnx, "export", broken, "unsupported operator")]
        breakages += [(ort, "_min_cosine", wrong, "differs from torch")]
    for target, name, replacement, message in breakages:
        with monkeypatch.context() as patch:
            patch.setattr(target, name, replacement)
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


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


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


def test_finetune_cli_writes_an_encoder_that_evaluate_uses(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from recsys.cli import app

    monkeypatch.chdir(tmp_path)  # `recsys evaluate` keeps its embedding cache under ./artifacts
    data = toy_interactions()
    toy_items().write_parquet("items.parquet")
    pl.DataFrame(
        {
            S.USER_ID: [f"u{u}" for u in data.users.tolist()],
            S.ITEM_ID: [f"i{i}" for i in data.items.tolist()],
            S.TIMESTAMP: np.arange(len(data.users), dtype=np.int64),
        }
    ).write_parquet("events.parquet")
    settings = (
        f"[encoder]\ncheckpoint = {json.dumps(str(tiny_bert))}\nmax_tokens = 16\n"
        "[encoder_training]\nwindow = 3\ntemperature = 0.1\nvalidation_pairs = {held_out}\nprogress = false\n"
        "[encoder_training.head]\nhidden = 32\nlr = 0.01\nbatch_size = 16\nmax_epochs = 10\n"
    )
    data_args = ["--items", "items.parquet", "--interactions", "events.parquet"]

    def finetune_cli(out: str, held_out: int) -> Any:
        Path("config.toml").write_text(settings.replace("{held_out}", str(held_out)))
        args = ["finetune", *data_args, "--out", out, "--config", "config.toml", "--cache-dir", "cache"]
        return CliRunner().invoke(app, args)

    result = finetune_cli("encoder", held_out=20)
    assert result.exit_code == 0, result.output
    assert Path("encoder/head.safetensors").is_file() and "held-out pair R@10" in result.output
    meta = json.loads(Path("encoder/recsys_encoder.json").read_text())
    assert meta["train_pairs"] + meta["held_out_pairs"] < 80  # the validation task's events only
    again = finetune_cli("encoder", held_out=20)
    assert again.exit_code == 2 and "already exists" in again.output  # never overwrites
    evaluate = [
        "evaluate",
        *data_args,
        "--models",
        "text",
        "--encoder",
        "encoder",
        "--k",
        "5",
        "--json",
        "e.json",
    ]
    evaluated = CliRunner().invoke(app, evaluate)
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(Path("e.json").read_text())["models"]["text"]["recall@5"] >= 0.0
    short = finetune_cli("other", held_out=500)  # more held-out pairs than the data has
    assert short.exit_code == 2 and "co-occurrence pairs" in short.output and not Path("other").exists()


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
    if _has_onnx():
        int8 = runner.invoke(app, [*args, "--int8"])
        assert int8.exit_code == 0 and "onnx int8" in int8.output, int8.output
        assert read_embeddings(tmp_path / "emb.parquet")[2] == f"{fingerprint}:ort-int8"
    bad_runtime = runner.invoke(app, [*args, "--runtime", "tvm"])
    assert bad_runtime.exit_code == 2 and "runtime must be" in bad_runtime.output


# --- the real packaged checkpoint ---------------------------------------------------------------


def test_packaged_minilm_gives_normalised_384_dim_embeddings() -> None:
    encoder = load_encoder()
    texts = ["cordless power drill 18V", "electric drill with battery", "borosilicate glass lab beaker"]
    emb = encoder.encode(texts)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2  # a real sentence encoder, not random weights


@pytest.mark.slow
def test_packaged_minilm_on_onnx_runtime_equals_torch(tmp_path: Path) -> None:
    """The default path of `recsys embed`: the fused ONNX graph of the real checkpoint."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from recsys.encoder.ort import onnx_encoder

    encoder = load_encoder()
    fast = onnx_encoder(encoder, tmp_path)
    texts = ["cordless power drill 18V", "borosilicate glass lab beaker, 250 ml " * 30, "x"]
    exact, onnx = encoder.encode(texts), fast.encode(texts)
    assert onnx.shape == (3, 384) and fast.runtime == "onnx"
    np.testing.assert_allclose(onnx, exact, atol=1e-5)


def test_top_layers_on_cached_states_match_the_full_forward(tiny_bert: Path) -> None:
    from recsys.encoder.finetune import TopLayers

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
        tiny_finetune_config(train_layers=1),
        out=tmp_path / "top",
        encoder=EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16),
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    base, tuned = load_encoder(tiny_bert).model.state_dict(), load_encoder(result.path).model.state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed), changed


def test_lower_states_are_cached_on_disk_and_shared(tiny_bert: Path, tmp_path: Path) -> None:
    from recsys.encoder.finetune import TopLayers

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


def test_finetune_records_where_its_time_goes(tiny_bert: Path, tmp_path: Path) -> None:
    result = finetune(
        toy_items(),
        toy_interactions(),
        tiny_finetune_config(train_layers=1, epochs=2),
        out=tmp_path / "timed",
        encoder=EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16),
        state_cache=tmp_path / "states",
    )
    meta = json.loads((result.path / "recsys_encoder.json").read_text())
    timings = meta["timings"]
    assert set(timings) == {"pairs", "load", "tokenize", "lower_cache", "steps", "evaluate"}, timings
    assert all(v >= 0 for v in timings.values())
    assert sum(timings.values()) <= meta["wall_seconds"] + 1e-6
    assert meta["seconds_per_step"] == pytest.approx(timings["steps"] / result.steps)
    assert len(list((tmp_path / "states").iterdir())) == 2
