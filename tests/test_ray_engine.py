"""The Ray engine against the local one, on a local Ray instance (2 CPUs, a capped object store).

One module-scoped Ray instance serves every test; it is shut down at the end, and the test checks
that none of its processes is left. Each stage is compared with the local engine's: the same
embeddings (within 1e-5), the same feature snapshot, the same fine-tuned encoder on one worker, a
ranker whose test NDCG@10 is within 0.005 of the local run's (on one worker, and on two where LightGBM's
data-parallel trees can be the serial ones), and the nightly job end to end.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from pipeline_helpers import fast_config, save_tiny_bert, vocabulary
from polars.testing import assert_frame_equal

ray = pytest.importorskip("ray")

from feature_store.definitions import FeatureConfig  # noqa: E402
from recsys.data import schema as S  # noqa: E402
from recsys.data.dataset import Dataset  # noqa: E402
from recsys.data.loading import bundled_paths, load_dataset  # noqa: E402
from recsys.encoder.config import EncoderConfig, HeadConfig, LayersConfig, ProjectionConfig  # noqa: E402
from recsys.encoder.model import load_encoder  # noqa: E402
from recsys.pipeline.engine import LocalEngine  # noqa: E402
from recsys.pipeline.ray_engine import RayEngine  # noqa: E402
from recsys.pipeline.ray_train import ray_fit_ranker  # noqa: E402
from recsys.pipeline.train import TrainConfig  # noqa: E402
from recsys.pipeline.two_stage import TwoStage  # noqa: E402
from recsys.ranking.ranker import LambdaRanker  # noqa: E402

OBJECT_STORE = 256 * 2**20  # the machine's memory is shared: Ray's default is 30% of it


@pytest.fixture(scope="module")
def cluster() -> object:
    """A local Ray instance for the module; afterwards, no Ray process of it is left (children of
    this process that other tests' fixtures started before it, such as servers, are not Ray's)."""
    import psutil

    def children() -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True) if p.is_running()]

    before = {p.pid for p in children()}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    deadline = time.monotonic() + 20
    while (left := [p for p in children() if p.pid not in before]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray left processes behind: {[p.name() for p in left]}"


def first_users(n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The first ``n`` users of the bundled MovieLens sample and the items they rated."""
    dataset = load_dataset(*bundled_paths())
    interactions = dataset.interactions.drop(S.USER_IDX, S.ITEM_IDX)
    users = interactions.get_column(S.USER_ID).unique(maintain_order=True).head(n)
    interactions = interactions.filter(pl.col(S.USER_ID).is_in(users.implode()))
    items = dataset.items.filter(pl.col(S.ITEM_ID).is_in(interactions.get_column(S.ITEM_ID).implode()))
    return items, interactions


@pytest.fixture(scope="module")
def tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    return first_users(120)


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory, tables: tuple[pl.DataFrame, pl.DataFrame]) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"), vocabulary(tables[0]))


@pytest.fixture(scope="module")
def engine(cluster: object) -> RayEngine:
    return RayEngine(workers=2, partitions=4)


def test_embeddings_match_the_local_engine_and_the_cache_is_honoured(
    engine: RayEngine, tables: tuple[pl.DataFrame, pl.DataFrame], bert: Path, tmp_path: Path
) -> None:
    from recsys.encoder.embed import EmbeddingCache, text_hashes

    items = tables[0]
    config = EncoderConfig(checkpoint=str(bert), max_tokens=32)
    encoder = load_encoder(bert, config=config)
    local = LocalEngine().embed(items, encoder=encoder, checkpoint=bert, cache_dir=tmp_path / "local")
    on_ray = engine.embed(items, encoder=encoder, checkpoint=bert, cache_dir=tmp_path / "ray")
    assert on_ray.shape == local.shape == (items.height, encoder.dim)
    np.testing.assert_allclose(on_ray, local, atol=1e-5)
    # a changed title: only its text goes to the actors, every other vector comes from the cache
    changed = items.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit("a brand new title"))
        .otherwise(pl.col(S.TITLE))
        .alias(S.TITLE)
    )
    sent: list[str] = []
    encode = engine._encode

    def counting(texts: list[str], **where: object) -> np.ndarray:
        sent.extend(texts)
        return encode(texts, **where)  # type: ignore[arg-type]

    engine._encode = counting  # type: ignore[method-assign]
    try:
        again = engine.embed(changed, encoder=encoder, checkpoint=bert, cache_dir=tmp_path / "ray")
    finally:
        del engine._encode
    assert len(sent) == 1 and "a brand new title" in sent[0]
    np.testing.assert_allclose(again[1:], local[1:], atol=1e-5)
    found, _ = EmbeddingCache(tmp_path / "ray").get(encoder.with_head(None).fingerprint, text_hashes(sent))
    assert found.all()


def test_feature_snapshot_is_the_local_one(
    engine: RayEngine, tables: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path
) -> None:
    items, interactions = tables
    cutoff = int(interactions.get_column(S.TIMESTAMP).max()) + 1
    # a few catalogue items nobody rated: they are in no partition of the events
    items = pl.concat([items, items.head(3).with_columns((pl.col(S.ITEM_ID) + "-unrated").alias(S.ITEM_ID))])
    config = FeatureConfig(time_unit="seconds", windows=(1, 7, 30))
    snapshots = {
        name: e.write_snapshot(
            tmp_path / name,
            interactions=interactions,
            items=items,
            cutoff=cutoff,
            config=config,
            events_through=7,
        )
        for name, e in (("local", LocalEngine()), ("ray", engine))
    }
    for table in ("user_states", "user_features", "item_features", "items"):
        ray_table = pl.read_parquet(snapshots["ray"].path / f"{table}.parquet")
        assert_frame_equal(ray_table, pl.read_parquet(snapshots["local"].path / f"{table}.parquet"))
    manifests = [json.loads((s.path / "manifest.json").read_text()) for s in snapshots.values()]
    local_manifest, ray_manifest = (m | {"created": None} for m in manifests)
    assert ray_manifest == local_manifest


def test_finetuning_on_one_worker_is_the_local_run_and_layers_train_on_two(
    engine: RayEngine, tables: tuple[pl.DataFrame, pl.DataFrame], bert: Path, tmp_path: Path
) -> None:
    items, interactions = tables
    data = Dataset.from_tables(items, interactions).to_interactions()
    encoder = EncoderConfig(checkpoint=str(bert), max_tokens=16)
    head = HeadConfig(head=ProjectionConfig(max_epochs=2), validation_pairs=100)
    local = LocalEngine().finetune(
        items, data, head, out=tmp_path / "local", encoder=encoder, embedding_cache=None
    )
    one = RayEngine(workers=1).finetune(
        items, data, head, out=tmp_path / "ray", encoder=encoder, embedding_cache=None
    )
    assert one.fingerprint == local.fingerprint and one.history == local.history
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        p.name for p in (tmp_path / "local").iterdir()
    )
    layers = LayersConfig(epochs=1, batch_size=16, max_steps=4, eval_every=2, validation_pairs=100)
    two = engine.finetune(items, data, layers, out=tmp_path / "layers", encoder=encoder, embedding_cache=None)
    assert two.steps == 4 and load_encoder(tmp_path / "layers").fingerprint == two.fingerprint


def test_ranker_ndcg_on_ray_against_the_local_run(cluster: object, tmp_path: Path) -> None:
    """The pipeline fitted once; its ranker refitted on Ray Train's LightGBM trainer from the same
    rows ranks the same candidates, over 400 test users (one user's hit at the top moves NDCG@10 by
    0.0025), within 0.005 NDCG@10 of the local ranker: on one worker with the pipeline's settings,
    and on two workers, each training on its whole user groups, with ``min_data_in_leaf = 1`` (where
    the two workers grew the local trees in 4 of 7 fits compared, and the gaps measured were within
    0.0039). With the pipeline's 5 they differ more (gaps up to 0.011): LightGBM's data-parallel
    learner checks it against leaf counts estimated from the hessians (docs/studies/ray_ranker_gap.md)."""
    from recsys.evaluation.metrics import ranking_metrics
    from recsys.evaluation.protocol import item_information
    from recsys.ranking.ranker import fit_ranker

    tables = first_users(400)
    bert = save_tiny_bert(tmp_path / "bert", vocabulary(tables[0]))
    config = fast_config(bert, protocol="leave-last-out")  # each user's last event is a label
    assert isinstance(config, TrainConfig)
    config = config.for_data(tables[1])
    assert config.model is not None
    pipeline = replace(config.model, ranker=replace(config.model.ranker, bags=2))  # 4 LightGBM trainings
    assert pipeline.ranker.min_data_in_leaf > 1  # the one-worker fit runs the setting two workers cannot
    dataset = Dataset.from_tables(*tables)
    task = config.split(dataset.to_interactions()).test
    encoder = load_encoder(bert, config=config.encoder)
    embeddings = LocalEngine().embed(dataset.items, encoder=encoder, checkpoint=bert, cache_dir=None)
    rows: list[Any] = []

    def local(*args: Any) -> LambdaRanker:
        rows.append(args)
        return fit_ranker(*args)

    model = TwoStage(pipeline, items=dataset.items, item_embeddings=embeddings, fit_ranker=local)
    model.fit(task.train)
    ranker_config, *arrays = rows[0]
    exact = replace(ranker_config, min_data_in_leaf=1)
    one = ray_fit_ranker(workers=1, use_gpu=False)(ranker_config, *arrays)
    two = ray_fit_ranker(workers=2, use_gpu=False)(exact, *arrays)
    assert [r.report_["workers"] if r.report_ else None for r in (one, two)] == [1, 2]

    def ndcg(ranker: LambdaRanker) -> float:
        model.ranker_ = ranker
        ids, _ = model.recommend(task.train.histories(task.users), 10)
        metrics = ranking_metrics(ids, task.targets, ks=[10], information=item_information(task.train))
        return float(metrics["ndcg@10"])

    local_one, local_two = fit_ranker(ranker_config, *arrays), fit_ranker(exact, *arrays)
    ndcgs = [ndcg(r) for r in (local_one, one, local_two, two)]
    print("NDCG@10 local, Ray 1 worker; local, Ray 2 workers (min_data_in_leaf 1):", ndcgs)  # -rP
    assert abs(ndcgs[1] - ndcgs[0]) <= 0.005, ndcgs
    assert abs(ndcgs[3] - ndcgs[2]) <= 0.005, ndcgs


def test_nightly_job_runs_on_ray(cluster: object, bert: Path, tmp_path: Path) -> None:
    """``recsys retrain`` with ``engine = "ray"``, connected to the module's instance by its address."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_retrain import drop, last_summary, retrain, shop_events, shop_items, write_config

    words_bert = save_tiny_bert(
        tmp_path / "bert", ["garden", "kitchen", "camping", "office", "tool", "model"]
    )
    config = write_config(tmp_path, words_bert)
    text = config.read_text().replace("[train]\n", f'[train]\nengine = "ray"\nray_address = "{cluster}"\n')
    config.write_text(text)
    drop(tmp_path, "items.parquet", shop_items())
    drop(tmp_path, "events-0.parquet", shop_events(days=range(10)))
    run = retrain(tmp_path, config)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = last_summary(tmp_path)
    assert summary["outcome"] == "published"
    bundle = Path(summary["bundle"])
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["config"]["engine"] == "ray"
    assert (bundle / "features" / "manifest.json").is_file() and list(
        (bundle / "model" / "ranker").glob("*.txt")
    )
