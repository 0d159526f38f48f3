"""The Ray engine's stages at one size of ``benchmarks.scaling --engine ray``, in a child process of
its own that starts a local Ray instance (``num_cpus=2``, as the equivalence tests do) and stops it.

The child regenerates the point's shop from its seed (the same data as the local child's) and builds,
untimed, what the Ray stages start from; then it times the stages the Ray engine
(``recsys.pipeline.ray_engine``) runs, each named ``<stage>@ray`` beside the local stage it replaces:

* ``features@ray``: the served item snapshot and the feature-store snapshot, written by
  ``RayEngine.write_snapshot`` (the local ``features`` stage, with Ray Data computing the tables);
* ``ranker_train@ray``: the ranker on Ray Train's LightGBM trainer (``RayEngine.fit_ranker``), from
  the ranker rows of the local ``ranker_rows`` stage (built here untimed);
* on the embedding axis (:func:`ray_embed_point`), ``embedding@ray`` (the actor pool, no cache) and
  ``finetune@ray`` (the projection head on Ray Train's ``TorchTrainer``), with the local
  ``finetune`` timed in the same child before Ray starts, from the same cache of trunk vectors.

Figures mean what ``benchmarks.scaling_stages`` says they mean. The RSS is the driver's only: Ray's
workers and actors are other processes, so a ``@ray`` stage's ``peak_rss_mb`` leaves out what they
hold (``facts.ray_memory_note`` says so in the results).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.scaling_stages import Guards, Point, Recorder

SUFFIX = "@ray"
# the stages the Ray engine runs at a point, and on the embedding axis
POINT_STAGES = ["features", "ranker_train"]
EMBED_STAGES = ["embedding", "finetune"]
OBJECT_STORE_MB = 512  # the machine's memory is shared: Ray's default is 30% of it
MEMORY_NOTE = "peak_rss_mb of a @ray stage is the driver's; Ray's workers are other processes"


def start_ray(record: Recorder) -> Any:
    """A local Ray instance on two CPUs, its object store capped; the ids of its processes go into
    ``record`` (``ray_pids``), for :func:`stop_leftovers` after a child that was stopped."""
    import psutil
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=OBJECT_STORE_MB * 2**20)  # fmt: skip
    record.facts["ray_pids"] = [p.pid for p in psutil.Process().children(recursive=True)]
    record.flush()
    return ray


def stop_leftovers(pids: list[int]) -> list[int]:
    """End the processes of a Ray instance whose driver was stopped (a child over its budget ends
    without ``ray.shutdown``, and Ray's agents outlive it); the ids of those still running."""
    import psutil

    left = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            ours = process.name().startswith(("ray", "gcs", "python"))  # not a process that took its id
            if ours and process.status() != psutil.STATUS_ZOMBIE:
                process.kill()
                left.append(pid)
        except psutil.NoSuchProcess:
            continue
    return left


def ray_point(point: Point, guards: Guards, work: Path, out: Path, workers: int | None) -> None:
    """The Ray engine's stages at ``point`` (module docstring); ``workers``: the engine's (None: its
    default, one per two CPUs)."""
    os.environ["BENTOML_HOME"] = str(work / "bentoml")
    from benchmarks.synthetic import ShopSpec, clustered_embeddings, generate
    from recsys.data.loading import load_dataset
    from recsys.pipeline.defaults import pipeline_config_for
    from recsys.pipeline.ray_engine import RayEngine
    from recsys.pipeline.two_stage import TwoStage

    record = Recorder(point, guards, out)
    shop = generate(ShopSpec(n_items=point.items, n_interactions=point.interactions, seed=point.seed))
    items_path, interactions_path = shop.write(work / "data")
    embeddings = clustered_embeddings(shop)
    del shop
    dataset = load_dataset(items_path, interactions_path)
    data = dataset.to_interactions()
    overrides = point.model | {"candidates": {"sources": list(point.sources)}}
    config = pipeline_config_for(data, overrides=overrides)
    model = TwoStage(config, items=dataset.items, item_embeddings=embeddings)
    rows = model.ranker_rows(data)  # untimed: the local ranker_rows stage, which Ray does not run
    ray = start_ray(record)
    try:
        engine = RayEngine(workers=workers)
        record.facts |= {"ray_workers": engine.workers, "ray_memory_note": MEMORY_NOTE}
        if record.runnable(f"features{SUFFIX}"):
            with record.stage(f"features{SUFFIX}"):
                snapshot = model.item_snapshot(data)
                engine.write_snapshot(
                    work / "features",
                    interactions=dataset.interactions,
                    items=dataset.items,
                    cutoff=snapshot.now,
                    config=snapshot.config,
                )
        if record.runnable(f"ranker_train{SUFFIX}") and engine.fit_ranker is not None:
            with record.stage(f"ranker_train{SUFFIX}"):
                engine.fit_ranker(config.ranker, *rows.training_set(), rows.feature_names)
    finally:
        ray.shutdown()
        record.sampler.close()
        record.flush()


def ray_embed_point(n_items: int, out: Path, workers: int | None, *, seed: int = 0) -> None:
    """The embedding axis on Ray at ``n_items`` (module docstring): ``finetune`` locally, then Ray's
    ``embedding@ray`` and ``finetune@ray``; the default encoder and fine-tuning settings."""
    from benchmarks.synthetic import ShopSpec, generate
    from recsys.data.dataset import Dataset
    from recsys.encoder.config import EncoderConfig, HeadConfig
    from recsys.encoder.embed import embed_items
    from recsys.encoder.model import load_encoder
    from recsys.pipeline.engine import LocalEngine
    from recsys.pipeline.ray_engine import RayEngine

    # twenty events an item, as at the pipeline points: the head needs co-occurring pairs to train on
    record = Recorder(Point(interactions=20 * n_items, items=n_items), Guards(1e9, 1e9), out)
    shop = generate(ShopSpec(n_items=n_items, n_interactions=20 * n_items, seed=seed))
    encoder_config = EncoderConfig()
    encoder = load_encoder("", config=encoder_config)  # "": the packaged default
    train = Dataset.from_tables(shop.items, shop.interactions).to_interactions()
    with tempfile.TemporaryDirectory(prefix="recsys-scaling-ray-") as tmp:
        cache = Path(tmp) / "cache"
        embed_items(shop.items, encoder=encoder, cache_dir=cache)  # untimed: the trunk vectors both tune on
        tune = {"encoder": encoder_config, "embedding_cache": cache}
        with record.stage("finetune"):
            LocalEngine().finetune(shop.items, train, HeadConfig(), out=Path(tmp) / "local", **tune)
        ray = start_ray(record)
        try:
            engine = RayEngine(workers=workers)
            record.facts |= {"items": n_items, "ray_workers": engine.workers, "ray_memory_note": MEMORY_NOTE}
            with record.stage(f"embedding{SUFFIX}"):
                engine.embed(shop.items, encoder=encoder, checkpoint="", cache_dir=None)
            with record.stage(f"finetune{SUFFIX}"):
                engine.finetune(shop.items, train, HeadConfig(), out=Path(tmp) / "ray", **tune)
        finally:
            ray.shutdown()
            record.sampler.close()
            record.flush()
