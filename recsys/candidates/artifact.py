"""Model folders without pickle: ``config.json`` (format tag, config, sizes) beside ``.npy`` arrays.

Folders are written atomically (a crash leaves the previous version) and read with
``allow_pickle=False``; a wrong format tag or a missing array is an error naming the file.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp()) / "model"
>>> write_folder(folder, {"format": "demo/1", "n_items": 2}, {"scores": np.array([0.5, 1.0])})
>>> meta, arrays = read_folder(folder, "demo/1", ("scores",))
>>> meta["n_items"], arrays["scores"].tolist()
(2, [0.5, 1.0])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.io import atomic_path


def write_folder(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` as ``config.json`` and each array as ``NAME.npy`` into the folder ``path``."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def read_meta(path: str | Path, fmt: str, *, name: str = "config.json") -> dict[str, Any]:
    """The JSON metadata ``name`` of the saved folder ``path``, after checking its format tag."""
    meta_path = Path(path) / name
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{meta_path}: not a saved model folder ({name} missing)") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}: invalid JSON: {exc}") from exc
    if meta.get("format") != fmt:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {fmt!r}")
    return meta


def read_arrays(path: str | Path, names: Sequence[str], *, mapped: bool = False) -> dict[str, np.ndarray]:
    """The arrays ``NAME.npy`` of the folder ``path`` (no pickle); a missing one is named.

    ``mapped`` maps them read-only instead of reading them (saved folders never change): a request
    reads only the rows it gathers, the OS keeps the rest on disk, and the workers of one machine
    share the pages. For catalogue-sized arrays (a million 384-d embeddings: 1.5 GB).
    """
    arrays = {}
    for name in names:
        file = Path(path) / f"{name}.npy"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: array missing from the saved model")
        arrays[name] = np.load(file, allow_pickle=False, mmap_mode="r" if mapped else None)
    return arrays


def read_folder(
    path: str | Path, fmt: str, names: Sequence[str], *, mapped: bool = False
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a folder written by :func:`write_folder`, checking its format tag and arrays
    (``mapped``: see :func:`read_arrays`)."""
    return read_meta(path, fmt), read_arrays(path, names, mapped=mapped)
