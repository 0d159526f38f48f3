"""Batch embedding of a catalogue, with a cache keyed by (model fingerprint, text hash).

Re-running on a catalogue where a few items changed embeds only those items: every other vector
comes from the cache. Embeddings are written as Parquet (``item_id`` plus a fixed-size float32
list column) and read back without torch, which is what the serving path does.

Encoding runs on ONNX Runtime when it is installed and the checkpoint exports to a graph that
gives the torch vectors (``EncoderConfig.runtime``, see :mod:`recsys.encoder.ort`), else on torch.

This module imports torch only inside :func:`embed_items`, when an encoder has to be loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import schema as S
from recsys.data.io import atomic_path
from recsys.encoder.config import EncoderConfig, item_texts

if TYPE_CHECKING:
    from recsys.encoder.model import ItemEncoder

log = logging.getLogger(__name__)

EMBEDDING = "embedding"
TEXT_HASH = "text_hash"
FINGERPRINT_KEY = b"recsys.encoder_fingerprint"

# encode(trunk, texts): (len(texts), dim) trunk vectors of texts that the cache does not hold; the
# default encodes in this process, the Ray engine on an actor pool (``recsys.pipeline.ray_engine``)
Encode = Callable[["ItemEncoder", list[str]], np.ndarray]


def text_hashes(texts: list[str]) -> list[str]:
    """A stable content hash per text (blake2b-128). Polars' own hash is not stable across versions."""
    return [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts]


class EmbeddingCache:
    """Embeddings by text hash, one Parquet file per model fingerprint under ``directory``.

    >>> import tempfile
    >>> cache = EmbeddingCache(tempfile.mkdtemp())
    >>> cache.put("fp", ["h1"], np.ones((1, 2), np.float32))
    >>> found, vectors = cache.get("fp", ["h0", "h1"])
    >>> found.tolist(), vectors[1].tolist()
    ([False, True], [1.0, 1.0])
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _file(self, fingerprint: str) -> Path:
        return self.directory / f"{fingerprint.replace(':', '-')}.parquet"

    def _read(self, fingerprint: str) -> pl.DataFrame | None:
        path = self._file(fingerprint)
        if not path.is_file():
            return None
        try:
            return pl.read_parquet(path)
        except pl.exceptions.PolarsError as exc:  # a corrupt cache must not stop embedding
            raise ValueError(f"{path}: unreadable embedding cache ({exc}); delete it to rebuild") from exc

    def get(self, fingerprint: str, hashes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, (len(hashes), dim) vectors or None); rows not found are zeros."""
        cached = self._read(fingerprint)
        if cached is None or cached.height == 0:
            return np.zeros(len(hashes), dtype=bool), None
        dim = cached.schema[EMBEDDING].size  # type: ignore[attr-defined]
        wanted = pl.DataFrame({TEXT_HASH: hashes}).with_row_index("_row")
        hit = wanted.join(cached, on=TEXT_HASH, how="inner")
        found = np.zeros(len(hashes), dtype=bool)
        vectors = np.zeros((len(hashes), dim), dtype=np.float32)
        rows = hit.get_column("_row").to_numpy()
        found[rows] = True
        if len(rows):
            vectors[rows] = hit.get_column(EMBEDDING).to_numpy()
        return found, vectors

    def put(self, fingerprint: str, hashes: list[str], vectors: np.ndarray) -> None:
        """Add vectors (replacing any with the same hash) and rewrite the file atomically."""
        if not hashes:
            return
        new = pl.DataFrame(
            {TEXT_HASH: hashes, EMBEDDING: vectors.astype(np.float32)},
            schema={TEXT_HASH: pl.String, EMBEDDING: pl.Array(pl.Float32, vectors.shape[1])},
        )
        old = self._read(fingerprint)
        if old is not None:
            new = pl.concat([old.filter(~pl.col(TEXT_HASH).is_in(hashes)), new])
        with atomic_path(self._file(fingerprint)) as tmp:
            new.write_parquet(tmp, compression="zstd")


def embed_items(
    items: pl.DataFrame,
    *,
    encoder: ItemEncoder | EncoderConfig | str | Path,
    cache_dir: str | Path | None = None,
    onnx_dir: str | Path | None = None,
    progress: bool = False,
    encode: Encode | None = None,
) -> np.ndarray:
    """(n_items, dim) float32 L2-normalised embeddings, in the row order of ``items``.

    ``encoder`` is a loaded :class:`~recsys.encoder.model.ItemEncoder`, an ``EncoderConfig``, or a
    checkpoint (path or cached hub name; '' is the packaged default). Identical texts are embedded
    once; with ``cache_dir`` only texts not embedded before by the same model are encoded. The cache
    holds the trunk's vectors (BERT and pooling), so an encoder with a projection head reuses them
    and only the cheap head runs again when the head is retrained.
    The exported ONNX graph is kept in ``onnx_dir`` (default ``cache_dir/onnx``; without either it
    is exported to a temporary folder for this call). ``encode`` encodes the texts the cache does
    not hold with the trunk (default: here, on the runtime of the config).
    """
    from recsys.encoder.model import ItemEncoder, load_encoder

    if S.ITEM_ID not in items.columns:
        raise ValueError(f"items table has no {S.ITEM_ID!r} column")
    if isinstance(encoder, EncoderConfig):
        encoder = load_encoder(config=encoder)
    elif not isinstance(encoder, ItemEncoder):
        encoder = load_encoder(encoder)
    if onnx_dir is None and cache_dir is not None:
        onnx_dir = Path(cache_dir) / "onnx"
    if encoder.config.quantize:  # int8 vectors (and fingerprint) depend on the runtime: choose it now
        encoder = with_runtime(encoder, onnx_dir=onnx_dir)
    trunk = encoder.with_head(None)
    texts = item_texts(items, encoder.config).to_list()
    hashes = text_hashes(texts)
    # unique texts only: identical items (variants, duplicates) cost one forward pass
    unique_hashes, first, inverse = np.unique(np.array(hashes), return_index=True, return_inverse=True)
    unique_list = unique_hashes.tolist()
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    if cache is not None:
        found, vectors = cache.get(trunk.fingerprint, unique_list)
    else:
        found, vectors = np.zeros(len(unique_list), dtype=bool), None
    if vectors is None:
        vectors = np.zeros((len(unique_list), encoder.dim), dtype=np.float32)
    missing = np.flatnonzero(~found)
    if len(missing):
        wanted = [texts[i] for i in first[missing]]
        if encode is None:
            vectors[missing] = with_runtime(trunk, onnx_dir=onnx_dir).encode(wanted, progress=progress)
        else:
            vectors[missing] = encode(trunk, wanted)
        if cache is not None:
            cache.put(trunk.fingerprint, [unique_list[i] for i in missing], vectors[missing])
    return np.ascontiguousarray(encoder.project(vectors)[inverse.ravel()])


def with_runtime(encoder: ItemEncoder, *, onnx_dir: str | Path | None) -> ItemEncoder:
    """``encoder`` on the runtime its config asks for: ONNX Runtime if it can, torch otherwise.

    ``runtime="auto"`` falls back to torch (with a logged warning) when onnxruntime is missing or the
    model does not export to a graph equal to torch; ``"onnx"`` raises instead. A quantized encoder
    gets ONNX Runtime's int8 graph (fingerprint ``...:ort-int8``), or keeps torch's int8 layers.
    """
    from recsys.encoder.ort import OnnxUnavailable, onnx_encoder

    if encoder.session is not None or encoder.config.runtime == "torch":
        return encoder
    with contextlib.ExitStack() as stack:
        directory = onnx_dir if onnx_dir is not None else stack.enter_context(tempfile.TemporaryDirectory())
        try:
            return onnx_encoder(encoder, directory)  # the session holds the graph in memory
        except OnnxUnavailable as exc:
            if encoder.config.runtime == "onnx":
                raise
            log.warning("ONNX Runtime not used (%s); embedding with torch", exc)
            return encoder


def write_embeddings(
    item_ids: pl.Series | list[str] | np.ndarray,
    embeddings: np.ndarray,
    path: str | Path,
    *,
    fingerprint: str,
) -> Path:
    """Write ``item_id`` + fixed-size float32 ``embedding`` as Parquet, atomically.

    The encoder fingerprint is stored in the file's schema metadata, so a bundle can tell which model
    produced the vectors.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    ids = pa.array(list(item_ids) if not isinstance(item_ids, pl.Series) else item_ids.to_list(), pa.string())
    if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
        raise ValueError(f"embeddings must be (n_items={len(ids)}, dim), got {embeddings.shape}")
    dim = embeddings.shape[1]
    values = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel(), pa.float32()), dim)
    meta = {FINGERPRINT_KEY: fingerprint.encode(), b"recsys.dim": str(dim).encode()}
    table = pa.table({S.ITEM_ID: ids, EMBEDDING: values}).replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def read_embeddings(path: str | Path) -> tuple[pl.Series, np.ndarray, str]:
    """(item ids, (n, dim) float32 embeddings, encoder fingerprint) from a file of ``write_embeddings``."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{path}: cannot read embeddings: {exc}") from exc
    for column in (S.ITEM_ID, EMBEDDING):
        if column not in table.column_names:
            raise ValueError(f"{path}: missing column {column!r}")
    column = table.column(EMBEDDING).combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise ValueError(f"{path}: column {EMBEDDING!r} must be a fixed-size list, got {column.type}")
    dim = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    meta = table.schema.metadata or {}
    ids = pl.Series(S.ITEM_ID, table.column(S.ITEM_ID).to_pylist(), dtype=pl.String)
    return ids, vectors, meta.get(FINGERPRINT_KEY, b"").decode()
