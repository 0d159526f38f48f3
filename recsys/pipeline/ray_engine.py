"""The Ray engine (``engine = "ray"``): batch embedding and feature computation on Ray Data, the
encoder's fine-tuning and the ranker on Ray Train (``recsys.pipeline.ray_train``).

* **Embedding**: the texts that the embedding cache does not hold go through ``map_batches`` over an
  actor pool, one encoder per actor (a GPU per actor where the cluster has GPUs); the driver reads and
  writes the cache and applies the projection head, as ``recsys.encoder.embed.embed_items`` does.
* **Features**: the interactions are written as Parquet partitioned by a hash of the user (for the
  user states) and of the item (for the item features); Ray Data reads each partition set and
  computes each partition's rows with ``feature_store.compute``, which needs nothing outside the
  partition: a user's state reads only their events, an item's features only its own. The snapshot
  is written by ``feature_store.offline.write_tables`` in the local engine's order, so it is the
  same snapshot.

Importing this module imports Ray (the ``ray`` extra).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import ray
import ray.data

from feature_store import compute as C
from feature_store import definitions as D
from feature_store.definitions import FeatureConfig
from feature_store.offline import Snapshot, write_tables
from recsys.data import schema as S
from recsys.data.dataset import Interactions
from recsys.encoder.config import EncoderConfig, FinetuneConfig
from recsys.encoder.finetune import FinetuneResult
from recsys.encoder.model import ItemEncoder
from recsys.ranking.ranker import FitRanker

ROW, PART = "_row", "_part"
EMBED_BATCH = 256  # texts per map_batches call: one forward pass batch of an actor


class RayEngine:
    """The heavy stages on the Ray cluster this process is connected to (``recsys.pipeline.engine``).

    Parameters
    ----------
    workers
        Ray Train workers and embedding actors: one per GPU where the cluster has GPUs, else one per
        two CPUs (each LightGBM or torch worker runs two threads), at least one.
    partitions
        Hash partitions of the interactions for the feature computation.
    """

    name = "ray"

    def __init__(self, *, workers: int | None = None, partitions: int = 8) -> None:
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self.workers = workers or max(1, self.gpus or int(resources.get("CPU", 1)) // 2)
        self.partitions = partitions
        from recsys.pipeline.ray_train import ray_fit_ranker

        self.fit_ranker: FitRanker | None = ray_fit_ranker(workers=self.workers, use_gpu=False)

    @classmethod
    @contextmanager
    def connect(cls, address: str, **options: Any) -> Iterator[RayEngine]:
        """An engine on the cluster at ``address`` ("" starts a local instance, stopped on leaving);
        a process already connected to Ray (``ray.init`` before) keeps its connection."""
        started = not ray.is_initialized()
        if started:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
        try:
            yield cls(**options)
        finally:
            if started:
                ray.shutdown()

    # --- embedding ---------------------------------------------------------------------------------
    def embed(
        self, items: pl.DataFrame, *, encoder: ItemEncoder, checkpoint: str | Path, cache_dir: Path | None
    ) -> np.ndarray:
        """``embed_items`` with the uncached texts encoded by the actor pool; ``checkpoint`` is where
        ``encoder`` was loaded from (each actor loads it again)."""
        from recsys.encoder.embed import embed_items

        def encode(trunk: ItemEncoder, texts: list[str]) -> np.ndarray:
            return self._encode(texts, checkpoint=checkpoint, config=encoder.config, trunk=trunk.fingerprint)

        return embed_items(items, encoder=encoder, cache_dir=cache_dir, encode=encode)

    def _encode(
        self, texts: list[str], *, checkpoint: str | Path, config: EncoderConfig, trunk: str
    ) -> np.ndarray:
        frame = pa.table({ROW: np.arange(len(texts)), "text": texts})
        out = ray.data.from_arrow(frame).map_batches(
            _EncodeActor,
            fn_constructor_kwargs={"checkpoint": str(checkpoint), "config": config, "fingerprint": trunk},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.workers),
            num_gpus=1 if self.gpus else 0,
            batch_size=EMBED_BATCH,
            batch_format="pyarrow",
        )
        table = pl.from_arrow(pa.concat_tables(ray.get(out.to_arrow_refs())))
        assert isinstance(table, pl.DataFrame)
        table = table.sort(ROW)
        return np.stack(table.get_column("vector").to_list()).astype(np.float32)

    # --- fine-tuning -------------------------------------------------------------------------------
    def finetune(
        self,
        items: pl.DataFrame,
        train: Interactions,
        config: FinetuneConfig,
        *,
        out: Path,
        encoder: EncoderConfig,
        embedding_cache: Path | None,
    ) -> FinetuneResult:
        """``finetune`` on Ray Train's ``TorchTrainer`` (``recsys.pipeline.ray_train.ray_finetune``)."""
        from recsys.pipeline.ray_train import ray_finetune

        return ray_finetune(
            items,
            train,
            config,
            out=out,
            encoder=encoder,
            embedding_cache=embedding_cache,
            workers=self.workers,
            use_gpu=self.gpus > 0,
        )

    # --- features ----------------------------------------------------------------------------------
    def write_snapshot(
        self,
        folder: Path,
        *,
        interactions: pl.DataFrame,
        items: pl.DataFrame,
        cutoff: int,
        config: FeatureConfig,
        events_through: int | None = None,
    ) -> Snapshot:
        """``feature_store.offline.write_snapshot``, the tables computed per partition on Ray Data."""
        events = interactions.with_row_index(ROW)
        with tempfile.TemporaryDirectory(prefix="recsys-ray-features-") as tmp:
            items_ref = ray.put(items)
            common: dict[str, Any] = {"items": items_ref, "cutoff": cutoff, "config": config}
            by_user = _partitioned(events, S.USER_ID, Path(tmp) / "by_user", self.partitions)
            states = _collect(
                ray.data.read_parquet(str(by_user))
                .groupby(PART, num_partitions=self.partitions)
                .map_groups(partial(_user_states, **common), batch_format="pyarrow")
            )
            by_item = _partitioned(events, S.ITEM_ID, Path(tmp) / "by_item", self.partitions)
            item_feats = _collect(
                ray.data.read_parquet(str(by_item))
                .groupby(PART, num_partitions=self.partitions)
                .map_groups(partial(_item_features, **common), batch_format="pyarrow")
            )
        users = events.group_by(pl.col(S.USER_ID).cast(pl.String)).agg(pl.col(ROW).min())
        states = states.join(users, on=S.USER_ID).sort(ROW).drop(ROW)  # first-seen order, as local
        # items without events are in no partition: their features come from the catalogue alone
        missing = items.select(pl.col(S.ITEM_ID).cast(pl.String)).join(item_feats, on=S.ITEM_ID, how="anti")
        if missing.height:
            keys = missing.with_columns(pl.lit(cutoff, dtype=pl.Int64).alias(D.NOW))
            rest = C.item_features(interactions.clear(), items, keys, config=config).drop(D.NOW)
            item_feats = pl.concat([item_feats, rest])
        item_feats = item_feats.sort(D.ITEM_IDX_COL)  # catalogue order, as local
        return write_tables(
            folder,
            states=states.with_columns(pl.lit(cutoff, dtype=pl.Int64).alias(D.NOW)),
            item_features=item_feats,
            items=items,
            cutoff=cutoff,
            config=config,
            events_through=events_through,
        )


class _EncodeActor:
    """One encoder per actor: the trunk of the checkpoint, on the runtime its config asks for."""

    def __init__(self, *, checkpoint: str, config: EncoderConfig, fingerprint: str) -> None:
        from recsys.encoder.embed import with_runtime
        from recsys.encoder.model import load_encoder

        trunk = load_encoder(checkpoint, config=config).with_head(None)
        if trunk.fingerprint != fingerprint:  # the driver's cache is keyed by this fingerprint
            raise ValueError(
                f"{checkpoint}: the actor's encoder {trunk.fingerprint} is not the driver's {fingerprint}"
            )
        with tempfile.TemporaryDirectory() as onnx_dir:
            self.trunk = with_runtime(trunk, onnx_dir=onnx_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.trunk.encode(batch.column("text").to_pylist())  # (batch, dim)
        return pa.table({ROW: batch.column(ROW), "vector": list(np.asarray(vectors, dtype=np.float32))})


def _partitioned(events: pl.DataFrame, key: str, folder: Path, partitions: int) -> Path:
    """``events`` as one Parquet file per hash partition of ``key`` (every row of a key in one file)."""
    folder.mkdir(parents=True)
    digest = pl.col(key).cast(pl.String).hash(seed=0) % partitions
    tagged = events.with_columns(digest.cast(pl.Int64).alias(PART))
    for (part,), frame in tagged.partition_by(PART, as_dict=True).items():
        frame.write_parquet(folder / f"part-{part}.parquet")
    return folder


def _collect(dataset: ray.data.Dataset) -> pl.DataFrame:
    tables = ray.get(dataset.to_arrow_refs())
    frame = pl.from_arrow(pa.concat_tables(tables, promote_options="default"))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _events_of(group: pa.Table) -> pl.DataFrame:
    """A partition's events in their original order (``user_states`` breaks time ties by it)."""
    frame = pl.from_arrow(group)
    assert isinstance(frame, pl.DataFrame)
    return frame.sort(ROW).drop(PART)


def _user_states(group: pa.Table, *, items: Any, cutoff: int, config: FeatureConfig) -> pa.Table:
    events = _events_of(group)
    keys = events.select(
        pl.col(S.USER_ID).cast(pl.String).unique(), pl.lit(cutoff, dtype=pl.Int64).alias(D.NOW)
    )
    states = C.user_states(events.drop(ROW), _resolved(items), keys, config=config).drop(D.NOW)
    return states.to_arrow()


def _item_features(group: pa.Table, *, items: Any, cutoff: int, config: FeatureConfig) -> pa.Table:
    events = _events_of(group)
    keys = events.select(
        pl.col(S.ITEM_ID).cast(pl.String).unique(), pl.lit(cutoff, dtype=pl.Int64).alias(D.NOW)
    )
    return C.item_features(events.drop(ROW), _resolved(items), keys, config=config).drop(D.NOW).to_arrow()


def _resolved(items: Any) -> pl.DataFrame:
    """The items table of a task's arguments (an object reference, or the table where Ray resolved it)."""
    return items if isinstance(items, pl.DataFrame) else ray.get(items)
