"""Where the pipeline's heavy stages run: in this process (``engine = "local"``) or on Ray.

An engine offers the stages that grow with the data, each with the local function's inputs and
outputs, so both engines write the same artifacts and the same bundle:

* ``embed``: the catalogue's embeddings through the embedding cache (``recsys.encoder.embed``);
* ``finetune``: the encoder's fine-tuning, the head or the layers (``recsys.encoder.finetune``);
* ``fit_ranker``: the LightGBM ranker's fit (``None``: the two-stage model's own, here);
* ``write_snapshot``: the feature-store snapshot (``feature_store.offline.write_snapshot``).

The candidate sources are fitted here on both engines: ALS on implicit (its GPU solver where one
is present), the rest are sparse counts that fit one machine long after the data stops doing so.
The local engine imports no Ray; ``open_engine("ray", ...)`` imports ``recsys.pipeline.ray_engine``,
which needs the ``ray`` extra (``pip install recsys[ray]``).

>>> check_ray_address("ray://head:10001"), check_ray_address("10.0.0.5:6379")
('ray://head:10001', '10.0.0.5:6379')
>>> check_ray_address("http://head:8265")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: ray_address must be "" (a local Ray instance), ... got 'http://head:8265'
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from feature_store.definitions import FeatureConfig
    from feature_store.offline import Snapshot
    from recsys.data.dataset import Interactions
    from recsys.encoder.config import EncoderConfig, FinetuneConfig
    from recsys.encoder.finetune import FinetuneResult
    from recsys.encoder.model import ItemEncoder
    from recsys.ranking.ranker import FitRanker

EngineName = Literal["local", "ray"]
_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")


def check_ray_address(address: str) -> str:
    """``address`` when Ray can connect to it (module docstring), else a ``ValueError`` naming the forms."""
    if address in ("", "auto") or _ADDRESS.fullmatch(address):
        return address
    raise ValueError(
        'ray_address must be "" (a local Ray instance), "auto" (the cluster this machine belongs to), '
        f'"ray://HOST:PORT" (Ray Client) or "HOST:PORT" (the head\'s GCS), got {address!r}'
    )


class Engine(Protocol):
    """The stages an engine runs (module docstring)."""

    name: str
    fit_ranker: FitRanker | None

    def embed(
        self, items: pl.DataFrame, *, encoder: ItemEncoder, checkpoint: str | Path, cache_dir: Path | None
    ) -> np.ndarray: ...

    def finetune(
        self,
        items: pl.DataFrame,
        train: Interactions,
        config: FinetuneConfig,
        *,
        out: Path,
        encoder: EncoderConfig,
        embedding_cache: Path | None,
    ) -> FinetuneResult: ...

    def write_snapshot(
        self,
        folder: Path,
        *,
        interactions: pl.DataFrame,
        items: pl.DataFrame,
        cutoff: int,
        config: FeatureConfig,
        events_through: int | None = None,
    ) -> Snapshot: ...


class LocalEngine:
    """Every stage in this process: the library's own functions."""

    name = "local"
    fit_ranker: FitRanker | None = None  # the two-stage model's own

    def __init__(self, *, progress: bool = False) -> None:
        self.progress = progress

    def embed(
        self, items: pl.DataFrame, *, encoder: ItemEncoder, checkpoint: str | Path, cache_dir: Path | None
    ) -> np.ndarray:
        from recsys.encoder.embed import embed_items

        return embed_items(items, encoder=encoder, cache_dir=cache_dir, progress=self.progress)

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
        from recsys.encoder.finetune import finetune

        return finetune(
            items,
            train,
            config,
            out=out,
            encoder=encoder,
            embedding_cache=embedding_cache,
            progress=self.progress,
        )

    def write_snapshot(self, folder: Path, **tables: Any) -> Snapshot:
        from feature_store.offline import write_snapshot

        return write_snapshot(folder, **tables)


@contextmanager
def open_engine(name: EngineName, *, ray_address: str = "", progress: bool = False) -> Iterator[Engine]:
    """The engine ``name``; a Ray engine connects to ``ray_address`` (or starts a local instance) and
    disconnects, stopping what it started, on leaving."""
    if name == "local":
        yield LocalEngine(progress=progress)
        return
    try:
        from recsys.pipeline.ray_engine import RayEngine
    except ImportError as exc:
        raise ImportError(f'engine = "ray" needs Ray: pip install "recsys[ray]" ({exc})') from exc
    with RayEngine.connect(check_ray_address(ray_address)) as engine:
        yield engine
