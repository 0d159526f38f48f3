"""End to end: the two-stage model and the training job on a small real slice (bundled MovieLens)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pipeline_helpers import fast_config, save_tiny_bert, vocabulary

from recsys.config import from_dict
from recsys.data import schema as S
from recsys.data.dataset import Dataset, Histories
from recsys.data.loading import bundled_paths, load_dataset
from recsys.data.splits import make_split
from recsys.encoder.config import HeadConfig, ProjectionConfig
from recsys.pipeline.recommender import Filters, Recommender
from recsys.pipeline.train import TrainConfig, train_bundle
from recsys.pipeline.two_stage import SIMILAR_SOURCES, TwoStage, TwoStageConfig

ARTIFACT_SUFFIXES = {".json", ".parquet", ".npy", ".txt", ".safetensors", ".yaml"}


@pytest.fixture(scope="module")
def tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    """The first 80 users of the bundled MovieLens sample and the items they rated."""
    dataset = load_dataset(*bundled_paths())
    interactions = dataset.interactions.drop(S.USER_IDX, S.ITEM_IDX)
    users = interactions.get_column(S.USER_ID).unique(maintain_order=True).head(80)
    interactions = interactions.filter(pl.col(S.USER_ID).is_in(users.implode()))
    items = dataset.items.filter(pl.col(S.ITEM_ID).is_in(interactions.get_column(S.ITEM_ID).implode()))
    return items, interactions


@pytest.fixture(scope="module")
def config(
    tmp_path_factory: pytest.TempPathFactory, tables: tuple[pl.DataFrame, pl.DataFrame]
) -> TrainConfig:
    checkpoint = save_tiny_bert(tmp_path_factory.mktemp("bert"), vocabulary(tables[0]))
    config = fast_config(checkpoint)
    assert isinstance(config, TrainConfig)
    # fine-tuning as `recsys train` does by default (a projection head), on a small budget
    training = HeadConfig(head=ProjectionConfig(max_epochs=3), validation_pairs=200)
    return replace(config, finetune=True, encoder_training=training)


@pytest.fixture(scope="module")
def bundle(
    tmp_path_factory: pytest.TempPathFactory, tables: tuple[pl.DataFrame, pl.DataFrame], config: TrainConfig
) -> Path:
    return train_bundle(*tables, config=config, out_dir=tmp_path_factory.mktemp("bundles"))


def test_bundle_is_self_describing_and_pickle_free(bundle: Path, config: TrainConfig) -> None:
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["version"] == bundle.name
    assert from_dict(TwoStageConfig, meta["config"]["model"]) == config.model  # the config round-trips
    for key in ("created_at", "data_fingerprint", "config", "metrics", "library_versions", "encoder"):
        assert key in meta
    assert meta["encoder"]["finetuned"] is True and (bundle / "encoder" / "head.safetensors").is_file()
    assert 0.0 <= meta["metrics"]["test"]["ndcg@10"] <= 1.0
    ranker_files = sorted((bundle / "model" / "ranker").glob("model_*.txt"))
    assert ranker_files and all(path.read_text().startswith("tree") for path in ranker_files)
    files = [p for p in bundle.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= ARTIFACT_SUFFIXES, {p.suffix for p in files} - ARTIFACT_SUFFIXES
    for path in files:
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)  # raises if an object array (pickle) were stored


def test_fit_save_load_gives_identical_scores(
    tmp_path: Path, tables: tuple[pl.DataFrame, pl.DataFrame], config: TrainConfig
) -> None:
    dataset = Dataset.from_tables(*tables)
    split = make_split(dataset.to_interactions(), "temporal")
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(dataset.n_items, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    model = TwoStage(config.model, items=dataset.items, item_embeddings=embeddings).fit(split.test.train)
    histories = split.test.train.histories(split.test.users)
    ids, scores = model.recommend(histories, 20)
    model.save(tmp_path / "model")
    loaded = TwoStage.load(tmp_path / "model")
    assert loaded.config == model.config and loaded.report_ == model.report_
    again_ids, again_scores = loaded.recommend(histories, 20)
    np.testing.assert_array_equal(ids, again_ids)
    np.testing.assert_array_equal(scores, again_scores)
    # never a history item, every list full (the catalogue is large enough)
    history = histories.to_csr(dataset.n_items).toarray()
    assert not np.any(history[np.arange(len(ids))[:, None], ids] > 0)
    assert np.all(ids >= 0)
    # ranker ordering: scores are non-increasing along each list
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_recommender_answers_like_the_model(bundle: Path, tables: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, interactions = tables
    recommender = Recommender.load(bundle)
    model = recommender.model
    user = interactions.get_column(S.USER_ID)[0]
    history = interactions.filter(pl.col(S.USER_ID) == user).sort(S.TIMESTAMP).get_column(S.ITEM_ID).to_list()
    recs = recommender.recommend(history, n=10)
    assert len(recs) == 10 and not {r.item_id for r in recs} & set(history)
    assert all(r.sources for r in recs) and all(r.title for r in recs)
    # the same history through the offline path gives the same top 10 (fast path == Polars path)
    rows = [recommender._row_of[i] for i in history]
    offline_ids, offline_scores = model.recommend(Histories.from_lists([rows]), 10)
    assert [r.item_id for r in recs] == [str(recommender._ids[i]) for i in offline_ids[0]]
    np.testing.assert_allclose([r.score for r in recs], offline_scores[0], rtol=1e-5, atol=1e-6)


def test_recommender_fallbacks_and_filters(bundle: Path, tables: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    items, interactions = tables
    recommender = Recommender.load(bundle)
    cold = recommender.recommend([], n=5)
    assert [r.sources for r in cold] == [("popularity",)] * 5
    # recent popularity: every event decays with a 7-day half-life from the last event of the data
    age = pl.col(S.TIMESTAMP).max() - pl.col(S.TIMESTAMP)
    popular = (
        interactions.with_columns((2.0 ** (-age / (7 * 86_400))).alias("w"))
        .group_by(S.ITEM_ID)
        .agg(pl.col("w").sum())
        .sort("w", descending=True)
        .get_column(S.ITEM_ID)
    )
    assert cold[0].item_id == popular[0]
    context = popular[3]
    session = recommender.recommend([], n=5, context_item_ids=[context])
    assert context not in {r.item_id for r in session}
    assert any(s != "popularity" for r in session for s in r.sources)
    category = next(iter(sorted(recommender.categories())))
    filtered = recommender.recommend([], n=5, filters=Filters(categories=(category,)))
    allowed = set(items.filter(pl.col(S.CATEGORY) == category).get_column(S.ITEM_ID).to_list())
    assert filtered and {r.item_id for r in filtered} <= allowed
    excluded = recommender.recommend([], n=3, filters=Filters(exclude_item_ids=(cold[0].item_id,)))
    assert cold[0].item_id not in {r.item_id for r in excluded}
    assert recommender.similar_items(context, n=5)
    with pytest.raises(KeyError):
        recommender.similar_items("no-such-item", n=5)
    contributions = recommender.explain([context], popular[0], top=3)
    assert len(contributions) == 3 and all(isinstance(v, float) for _, v in contributions)


def test_a_batch_answers_as_one_user_at_a_time(
    bundle: Path, tables: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    interactions = tables[1]
    recommender = Recommender.load(bundle)
    users = interactions.get_column(S.USER_ID).unique(maintain_order=True).to_list()[:12]
    histories = [
        interactions.filter(pl.col(S.USER_ID) == u).sort(S.TIMESTAMP).get_column(S.ITEM_ID).to_list()
        for u in users
    ]
    histories += [[], ["no-such-item"], histories[0][-2:]]  # unknown users and a short session
    category = sorted(recommender.categories())[0]
    for options in [
        {},
        {"exclude_seen": False},
        {"filters": Filters(categories=(category,), price_max=50.0)},
    ]:
        batch = recommender.recommend_batch(histories, n=7, **options)  # type: ignore[arg-type]
        assert batch == [recommender.recommend(h, n=7, **options) for h in histories]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 histories but 2 user records"):
        recommender.recommend_batch(histories[:3], n=2, user_features=[None, None])


def _similar_reference(model: TwoStage, item: int, n: int) -> list[tuple[int, float, tuple[str, ...]]]:
    """The merged neighbours by a plain loop: each item's best rank over the sources, then more
    sources first, then the order in which the sources (in ``SIMILAR_SOURCES`` order) list them."""
    assert model.generators_ is not None
    merged: dict[int, tuple[int, list[str]]] = {}
    for name in SIMILAR_SOURCES:
        if name in model.generators_:
            ids, _ = model.generators_[name].similar_items(np.array([item]), n)
            for rank, i in enumerate(ids[0].tolist()):
                if i >= 0:
                    best, sources = merged.get(i, (rank, []))
                    merged[i] = (min(best, rank), [*sources, name])
    order = sorted(merged.items(), key=lambda kv: (kv[1][0], -len(kv[1][1])))[:n]
    return [(i, 1.0 / (1.0 + rank), tuple(sources)) for i, (rank, sources) in order]


def test_similar_items_are_one_merged_list(bundle: Path) -> None:
    """The model, the ``Recommender`` (and so the service) give the same neighbours: the sources'
    lists merged as the plain reference merges them."""
    recommender = Recommender.load(bundle)
    model = recommender.model
    item_ids = model.items.get_column(S.ITEM_ID).to_list()
    # one query at a time, as the reference asks: in this tiny model many items share one ALS
    # direction (cosine 1.0 within float noise), so a batch may order those ties otherwise
    for item in range(0, len(item_ids), 7):
        expected = _similar_reference(model, item, 10)
        ids, scores = model.similar_items(np.array([item]), 10)
        found = [(i, s) for i, s in zip(ids[0].tolist(), scores[0].tolist(), strict=True) if i >= 0]
        assert found == [(i, s) for i, s, _ in expected]
        got = recommender.similar_items(item_ids[item], n=10)
        assert [(r.item_id, r.score, r.sources) for r in got] == [
            (item_ids[i], s, sources) for i, s, sources in expected
        ]


def test_a_bundle_written_before_the_sequential_config_was_shared_still_loads(
    bundle: Path, tmp_path: Path
) -> None:
    """Older bundles name the sequential source's text flag ``text_init`` and list fewer of its keys."""
    old = tmp_path / "model"
    shutil.copytree(bundle / "model", old)
    meta = json.loads((old / "two_stage.json").read_text())
    sequential = meta["config"]["candidates"]["sequential"]
    kept = ("hidden", "layers", "max_len", "max_epochs", "patience", "time_budget_s", "seed")
    meta["config"]["candidates"]["sequential"] = {k: sequential[k] for k in kept} | {"text_init": True}
    (old / "two_stage.json").write_text(json.dumps(meta))
    loaded, current = TwoStage.load(old), TwoStage.load(bundle / "model")
    assert loaded.config == current.config
    histories = Histories.from_lists([[0, 1, 2], [5]])
    for a, b in zip(loaded.recommend(histories, 5), current.recommend(histories, 5), strict=True):
        np.testing.assert_array_equal(a, b)


def test_publish_then_load_from_the_model_store(tmp_path: Path, bundle: Path) -> None:
    """Publishing copies the bundle into the BentoML store (in a subprocess: BENTOML_HOME binds at import)."""
    code = (
        "import sys; from pathlib import Path; from recsys.pipeline.train import publish_bundle; "
        "from recsys.pipeline import registry; v = publish_bundle(Path(sys.argv[1])); "
        "print(v.tag, v.path, registry.current().tag)"
    )
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(bundle)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    tag, path, current = out[-3:]
    assert tag == current == f"recsys-bundle:{bundle.name}"
    history = ["1", "3", "6"]
    published = Recommender.load(Path(path)).recommend(history, n=5)
    assert published == Recommender.load(bundle).recommend(history, n=5)
    assert (tmp_path / "home" / "recsys" / "online.db").exists()


def toml_text(data: dict[str, object], prefix: str = "") -> str:
    """A config dict (``recsys.config.to_dict``) as TOML: JSON scalars and arrays are TOML too."""
    scalars = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict) and v is not None]
    tables = [toml_text(v, f"{prefix}{k}.") for k, v in data.items() if isinstance(v, dict)]
    return "\n".join(([f"[{prefix[:-1]}]"] if prefix else []) + scalars + ["", *tables])


def test_recsys_train_whose_publish_fails_leaves_the_previous_model_current(
    tmp_path: Path, bundle: Path, tables: tuple[pl.DataFrame, pl.DataFrame], config: TrainConfig
) -> None:
    """The fit succeeds, publishing fails (the online store's file was damaged): exit 1 with the
    reason, and the model published before stays current, with no trace of the new one."""
    from recsys.config import to_dict

    home = tmp_path / "home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    publish = "import sys; from pathlib import Path; from recsys.pipeline.train import publish_bundle; "
    publish += "print(publish_bundle(Path(sys.argv[1])).tag)"
    before = subprocess.run(
        [sys.executable, "-c", publish, str(bundle)], env=env, capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    for frame, name in zip(tables, ("items", "interactions"), strict=True):
        frame.write_parquet(tmp_path / f"{name}.parquet")
    quick = replace(config.model, candidates=replace(config.model.candidates, sources=("als", "popularity")))
    (tmp_path / "train.toml").write_text(toml_text(to_dict(replace(config, model=quick))))
    store = home / "recsys" / "online.db"  # the default store, which the first publish loaded
    for leftover in store.parent.glob("online.db-*"):
        leftover.unlink()
    store.write_text("not a database")
    cli = [sys.executable, "-c", "from recsys.cli import main; main()"]
    train = [
        *("train", "--items", str(tmp_path / "items.parquet")),
        *("--interactions", str(tmp_path / "interactions.parquet")),
        *("--config", str(tmp_path / "train.toml"), "--no-finetune", "--out", str(tmp_path / "bundles")),
    ]
    done = subprocess.run([*cli, *train], env=env, capture_output=True, text=True, timeout=600)
    current = subprocess.run([*cli, "models", "current"], env=env, capture_output=True, text=True)
    assert current.stdout.strip() == before
    message = " ".join(done.stderr.split())  # rich wraps long lines
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Not published: publishing" in message and "file is not a database" in message, message
    assert f"{before} is still current" in message
    assert [p.name for p in (home / "models" / "recsys-bundle").iterdir() if p.is_dir()] == [bundle.name]
