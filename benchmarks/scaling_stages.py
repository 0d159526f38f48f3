"""One size of ``benchmarks.scaling``, run in a child process: every stage timed, its peak RSS sampled.

:func:`run_point` generates a synthetic shop (``benchmarks.synthetic``) and runs the training
pipeline's stages one after the other, in the order ``TwoStage.fit`` and ``recsys train`` run them:

``ingest`` (read and validate the Parquet, encode) -> ``ranker_rows`` (the label windows: every
source fitted before each window, the candidates featurised) -> ``ranker_train`` -> ``source_<name>``
(each served source refitted on all the data) -> ``features`` (the served item features and the
feature-store snapshot) -> ``bundle_write`` -> ``publish`` (the bundle into a BentoML home of its
own, its features into the SQLite online store) -> ``source_sequential`` (timed, not served: the
nightly default serves it, but it would stop the larger points before their bundle).

The order is ``TwoStage.fit``'s on purpose: fitting the served sources before the ranker rows gave
another model on the same data (``tests/test_scaling.py`` caught it), so some fit draws from a
shared random state rather than its own seed.

The item embeddings are the generator's clustered ones, not BERT's (``benchmarks.scaling`` times
BERT on an axis of its own), so that a million items cost seconds, not hours.

**What a stage's memory figure is.** A thread samples the child's RSS every 20 ms. A stage's
``peak_rss_mb`` is the highest sample while it ran: the whole process, so it includes the data and
what earlier stages still hold; ``rss_start_mb`` is the RSS when it started, and the difference is
what the stage itself added at its peak. A spike shorter than 20 ms can be missed.

**Guards.** Before each stage the parent's prediction of its time (``predicted``, from smaller sizes)
is checked against ``stage_budget_s``; a stage predicted over it is not run (``status``
"skipped-predicted"), nor is anything that needs it. A stage still running after ``stage_budget_s``
("stopped-time", ``seconds_at_least``), or RSS over ``memory_limit_mb`` ("stopped-memory"), ends the
child at once; the parent kills a child over the point's budget. Every finished stage is written to
``out`` as it ends, so a stopped child keeps them; the sources outside the bundle run last.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

MB = 2**20
# stages that need an earlier one: skipping that one skips them too
NEEDS = {
    "ranker_train": "ranker_rows",
    "features": "ranker_train",
    "bundle_write": "features",
    "publish": "bundle_write",
}


@dataclass(frozen=True)
class Point:
    """One size of the design: events, catalogue, and the sources the served pipeline uses."""

    interactions: int
    items: int
    sources: tuple[str, ...] = ("als", "itemknn", "cooccurrence", "text", "popularity")
    standalone: tuple[str, ...] = ("sequential",)  # fitted and timed, not part of the served bundle
    seed: int = 0
    # a ``[model]`` table laid over the data's defaults (the quick mode's one-booster ranker)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"i{self.interactions}_m{self.items}"


@dataclass(frozen=True)
class Guards:
    stage_budget_s: float
    memory_limit_mb: float
    predicted: dict[str, float] = field(default_factory=dict)  # stage -> seconds, from smaller sizes
    skip: tuple[str, ...] = ()  # stages not run (``--skip-stages``)


class RssSampler:
    """The process's RSS every ``interval`` s in a daemon thread; ``peak`` since :meth:`reset`.

    Over ``limit_mb`` it calls ``on_limit`` (which ends the process)."""

    def __init__(self, *, interval: float, limit_mb: float, on_limit: Callable[[float], None]) -> None:
        import psutil

        self._process = psutil.Process()
        self.interval, self.limit_mb, self.on_limit = interval, limit_mb, on_limit
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return int(self._process.memory_info().rss)

    def reset(self) -> int:
        self.peak = self.now()
        return self.peak

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self.now()
            self.peak = max(self.peak, rss)
            if rss > self.limit_mb * MB:
                self.on_limit(rss / MB)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Recorder:
    """Each stage's figures, written to ``out`` (JSON) after every stage."""

    def __init__(self, point: Point, guards: Guards, out: Path) -> None:
        self.point, self.guards, self.out = point, guards, out
        self.stages: dict[str, dict[str, Any]] = {}
        self.facts: dict[str, Any] = {"point": asdict(point)}
        self.current: str | None = None
        self.sampler = RssSampler(interval=0.02, limit_mb=guards.memory_limit_mb, on_limit=self._over_memory)

    def _over_memory(self, rss_mb: float) -> None:
        if self.current is not None:
            self.stages[self.current] = {"status": "stopped-memory", "peak_rss_mb": rss_mb}
            self.flush()
        os._exit(3)  # now: the next allocation might take the machine's memory

    def _over_time(self, name: str) -> None:
        self.stages[name] = {"status": "stopped-time", "seconds_at_least": self.guards.stage_budget_s}
        self.flush()
        os._exit(4)  # the stages after it are lost: the standalone sources run last for that reason

    def flush(self) -> None:
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": self.stages, "facts": self.facts}, indent=1))
        tmp.replace(self.out)

    def runnable(self, stage: str) -> bool:
        """False (and recorded why) when the stage is predicted over budget or needs a skipped one."""
        needed = NEEDS.get(stage)
        if needed is not None and self.stages.get(needed, {}).get("status") != "measured":
            self.stages[stage] = {"status": f"skipped-needs-{needed}"}
            self.flush()
            return False
        if stage in self.guards.skip:
            self.stages[stage] = {"status": "skipped-by-option"}
            self.flush()
            return False
        predicted = self.guards.predicted.get(stage)
        if predicted is not None and predicted > self.guards.stage_budget_s:
            self.stages[stage] = {"status": "skipped-predicted", "predicted_s": predicted}
            self.flush()
            return False
        return True

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        self.stages[name] = {"status": "running", "started_utc": _utc()}
        self.flush()  # a killed child leaves "running": the parent reads it as stopped there
        start_rss = self.sampler.reset()
        start = time.perf_counter()
        timer = threading.Timer(self.guards.stage_budget_s, self._over_time, args=(name,))
        timer.daemon = True
        timer.start()
        yield
        timer.cancel()
        seconds = time.perf_counter() - start
        self.stages[name] = {
            "status": "measured",
            "seconds": seconds,
            "peak_rss_mb": max(self.sampler.peak, self.sampler.now()) / MB,
            "rss_start_mb": start_rss / MB,
        }
        self.current = None
        self.flush()


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_point(point: Point, guards: Guards, work: Path, out: Path) -> None:
    """Generate the shop of ``point`` under ``work`` and run every stage (module docstring).

    Long by design: the stages in the order the pipeline runs them, each a few calls.
    """
    os.environ["BENTOML_HOME"] = str(work / "bentoml")  # the point's own model store and online store
    os.environ.pop("RECSYS_ONLINE_STORE_URL", None)
    from benchmarks.synthetic import ShopSpec, clustered_embeddings, generate
    from recsys.data.dataset import Dataset
    from recsys.data.loading import load_dataset
    from recsys.pipeline.defaults import pipeline_config_for
    from recsys.pipeline.two_stage import TwoStage
    from recsys.ranking.ranker import LambdaRanker

    record = Recorder(point, guards, out)
    with record.stage("generate"):
        shop = generate(ShopSpec(n_items=point.items, n_interactions=point.interactions, seed=point.seed))
        items_path, interactions_path = shop.write(work / "data")
        embeddings = clustered_embeddings(shop)
    users = shop.interactions.get_column("user_id").n_unique()
    record.facts |= {"users": users, "vocabulary": shop.vocabulary_source, "embeddings": "synthetic 384-d"}
    del shop
    with record.stage("ingest"):
        dataset: Dataset = load_dataset(items_path, interactions_path)
        data = dataset.to_interactions()
    overrides = point.model | {"candidates": {"sources": list(point.sources)}}
    config = pipeline_config_for(data, overrides=overrides)
    model = TwoStage(config, items=dataset.items, item_embeddings=embeddings)
    rows = None
    if record.runnable("ranker_rows"):
        with record.stage("ranker_rows"):
            rows = model.ranker_rows(data)
        record.facts |= {"ranker_rows": len(rows.labels), "ranker_rows_all": rows.report["candidate_rows"],
                         "ranker_features": len(rows.feature_names)}  # fmt: skip
    ranker = None
    if record.runnable("ranker_train") and rows is not None:
        with record.stage("ranker_train"):
            ranker = LambdaRanker(config.ranker).fit(*rows.training_set(), feature_names=rows.feature_names)
    generators = {}
    for name in point.sources:  # after the ranker, as in ``TwoStage.fit`` (the order matters: below)
        if record.runnable(f"source_{name}"):
            with record.stage(f"source_{name}"):
                generators[name] = model.fit_source(name, data)
    if len(generators) < len(point.sources):  # the bundle needs every served source
        record.stages["features"] = {"status": "skipped-needs-every-source"}
    if "features" not in record.stages and record.runnable("features") and ranker is not None:
        _bundle_stages(record, model, rows, ranker, generators, dataset, data, work / "bundle")
    for name in point.standalone:  # last: a stage over its time ends the child
        if record.runnable(f"source_{name}"):
            with record.stage(f"source_{name}"):
                model.fit_source(name, data)
    record.sampler.close()
    record.flush()


def _bundle_stages(
    record: Recorder, model: Any, rows: Any, ranker: Any, generators: dict[str, Any],
    dataset: Any, data: Any, bundle: Path,
) -> None:  # fmt: skip
    """``features``, ``bundle_write`` and ``publish``: what ``TwoStage.fit`` and ``train_bundle`` do
    after the fits, with the fitted parts above (``tests/test_scaling.py`` holds it equal to them)."""
    from feature_store.offline import write_snapshot
    from recsys.pipeline import registry
    from recsys.pipeline.publish import publish_bundle
    from recsys.pipeline.train import data_fingerprint

    with record.stage("features"):
        snapshot = model.item_snapshot(data)
        write_snapshot(bundle / "features", interactions=dataset.interactions, items=dataset.items,
                       cutoff=snapshot.now, config=snapshot.config)  # fmt: skip
    model.ranker_, model.generators_, model.snapshot_ = ranker, generators, snapshot
    model.feature_names_ = rows.feature_names
    model.report_ = dict(rows.report, fit_seconds=rows.fit_seconds)
    with record.stage("bundle_write"):
        model.save(bundle / "model")
        meta = {
            "version": registry.new_version(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "data_fingerprint": data_fingerprint(dataset.items, dataset.interactions),
            "dataset": dataset.summary(),
            "note": "benchmarks.scaling: fitted, not evaluated",
        }
        (bundle / "metadata.json").write_text(json.dumps(meta, indent=2))
    record.facts["bundle_mb"] = folder_bytes(bundle) / MB
    with record.stage("publish"):
        publish_bundle(bundle)
    record.facts["published"] = True


def embed_point(n_items: int, out: Path, *, seed: int = 0) -> None:
    """BERT embedding (``recsys.encoder.embed.embed_items``, no cache) of a synthetic catalogue of
    ``n_items``: the ``embedding`` stage's own axis."""
    from benchmarks.synthetic import ShopSpec, generate
    from recsys.encoder.config import EncoderConfig
    from recsys.encoder.embed import embed_items
    from recsys.encoder.model import load_encoder

    record = Recorder(Point(interactions=n_items, items=n_items), Guards(1e9, 1e9), out)
    shop = generate(ShopSpec(n_items=n_items, n_interactions=n_items, seed=seed))
    encoder = load_encoder("", config=EncoderConfig())  # "": the packaged default
    with record.stage("embedding"):
        vectors = embed_items(shop.items, encoder=encoder)
    record.facts |= {"items": n_items, "dim": int(vectors.shape[1]), "vocabulary": shop.vocabulary_source,
                     "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
                     "finite": bool(np.isfinite(vectors).all())}  # fmt: skip
    record.sampler.close()
    record.flush()
