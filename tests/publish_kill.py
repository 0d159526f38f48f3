"""Publish a bundle and SIGKILL this process at one point of the publish (tests/test_publish_atomic.py).

    python tests/publish_kill.py POINT BUNDLE STORE_URL

with ``BENTOML_HOME`` set. POINT is where the process dies:

- ``copy``: while BentoML copies the bundle into the model store (three files copied);
- ``load``: during the online store's load (the users copied, the items not yet);
- ``pointer``: after the load, as the current pointer is about to move;
- ``after``: right after the pointer moved;
- ``none``: nowhere (prints the published version).

The step functions are wrapped here, in the doomed process only: production code has no hooks.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from feature_store.redis_store import RedisStore
from feature_store.sqlite_store import SQLiteStore
from recsys.pipeline import registry
from recsys.pipeline.train import publish_bundle  # where `recsys train` and the fixtures call it


def die(*_: Any, **__: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point == "copy":
        copytree, copied = shutil.copytree, []

        def copy_file(src: str, dst: str, **kwargs: Any) -> Any:
            copied.append(src)
            if len(copied) == 3:
                die()
            return shutil.copy2(src, dst, **kwargs)

        def copy_tree(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if args:  # copytree's own recursion, which passes our copy_function on
                return copytree(src, dst, *args, **kwargs)
            return copytree(src, dst, **{**kwargs, "copy_function": copy_file})

        shutil.copytree = copy_tree  # type: ignore[assignment]  # what BentoML's save calls
    elif point == "load":
        SQLiteStore._write_items = die  # type: ignore[method-assign]
        RedisStore._write_items = die  # type: ignore[method-assign]
    elif point in ("pointer", "after"):
        set_current = registry.set_current

        def move(tag: str, **kwargs: Any) -> None:
            if point == "after":
                set_current(tag, **kwargs)
            die()

        registry.set_current = move  # type: ignore[assignment]
    elif point != "none":
        raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
    point, bundle, store_url = sys.argv[1:4]
    arm(point)
    print(publish_bundle(Path(bundle), store_url=store_url).version)
