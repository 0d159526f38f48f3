"""Helpers for the end-to-end serving tests: one tiny real bundle, BentoML homes, a real server.

BentoML fixes its model-store location when it is first imported, so everything that touches a
BentoML home (publishing, ``recsys models``) runs in a subprocess with ``BENTOML_HOME`` set, exactly as
a user would run it. The server is ``recsys serve`` on a free port, talked to over HTTP.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from benchmarks.harness.process import Server, free_port, recsys_serve_command, running
from recsys.data import schema as S
from recsys.data.loading import bundled_paths

ADMIN_TOKEN = "test-admin-token"
N_USERS = 60  # users of the bundled MovieLens slice the tiny bundle is trained on (the lightest raters)
N_COLD_ITEMS = 40  # catalogue items nobody interacted with: reachable only through text


def tiny_tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    """A slice of the bundled MovieLens data: ``N_USERS`` users, the items they rated, plus
    ``N_COLD_ITEMS`` never-rated items, and a synthetic ``price`` so price filters can be tested."""
    items_path, interactions_path = bundled_paths()
    interactions = pl.read_parquet(interactions_path)
    counts = interactions.group_by(S.USER_ID).len().sort(["len", S.USER_ID])
    users = counts.get_column(S.USER_ID).head(N_USERS)
    interactions = interactions.filter(pl.col(S.USER_ID).is_in(users.implode()))
    items = pl.read_parquet(items_path)
    rated = interactions.get_column(S.ITEM_ID).unique()
    cold = items.filter(~pl.col(S.ITEM_ID).is_in(rated.implode())).head(N_COLD_ITEMS)
    items = pl.concat([items.filter(pl.col(S.ITEM_ID).is_in(rated.implode())), cold])
    items = items.with_columns((pl.col(S.ITEM_ID).cast(pl.Int64) % 50 + 0.99).alias(S.PRICE))
    return items, interactions


def run_python(home: Path, code: str) -> str:
    """Run ``code`` in a fresh interpreter with ``BENTOML_HOME=home``; return its stdout."""
    env = {**os.environ, "BENTOML_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"subprocess failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``recsys ARGS`` with ``BENTOML_HOME=home``."""
    env = {**os.environ, "BENTOML_HOME": str(home)}
    command = [sys.executable, "-c", "from recsys.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def publish(home: Path, bundle: Path, *, store_url: str | None = None) -> str:
    """Publish ``bundle`` into ``home`` as ``recsys train`` does (making it current and loading its
    feature snapshot into the online store); return its version."""
    code = (
        "from pathlib import Path; from recsys.pipeline.train import publish_bundle; "
        f"print(publish_bundle(Path({str(bundle)!r}), store_url={store_url!r}).version)"
    )
    return run_python(home, code).strip().splitlines()[-1]


def copy_as_version(bundle: Path, out: Path, version: str) -> Path:
    """The same bundle under another version (its ``metadata.json`` says which): a second release."""
    shutil.copytree(bundle, out)
    meta_path = out / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = version
    meta_path.write_text(json.dumps(meta))
    return out


def incompatible_copy(bundle: Path, out: Path, version: str) -> Path:
    """A release whose ranker expects two features fewer than this code computes: it loads, but
    fails on every request (what a bundle written by an incompatible version does)."""
    import re

    copy_as_version(bundle, out, version)
    for path in (out / "model" / "ranker").glob("model_*.txt"):  # every booster of the bag
        text = path.read_text()
        n = int(re.search(r"^max_feature_idx=(\d+)$", text, flags=re.M).group(1))  # type: ignore[union-attr]
        text = text.replace(f"max_feature_idx={n}", f"max_feature_idx={n - 2}", 1)
        for key in ("feature_names", "feature_infos"):
            line = re.search(rf"^{key}=(.*)$", text, flags=re.M).group(1)  # type: ignore[union-attr]
            text = text.replace(f"{key}={line}", f"{key}=" + " ".join(line.split()[:-2]), 1)
        path.write_text(text)
    return out


def server_env(home: Path, store_url: str, **extra: str) -> dict[str, str]:
    return {
        "BENTOML_HOME": str(home),
        "RECSYS_ONLINE_STORE_URL": store_url,
        "RECSYS_ADMIN_TOKEN": ADMIN_TOKEN,
        "RECSYS_POLL_SECONDS": "0.2",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


@contextmanager
def recsys_server(home: Path, store_url: str, *options: str) -> Iterator[Server]:
    port = free_port()
    with running(
        recsys_serve_command(port=port, options=options),
        port=port,
        env=server_env(home, store_url),
        log_dir=home,
    ) as server:
        yield server


# The served sources of the demo, less the sequential model (minutes of torch training; see
# test_serving.py::test_every_served_source_loads_without_torch for why it matters when serving).
TINY_SOURCES = ("als", "itemknn", "cooccurrence", "text", "popularity")


@functools.cache
def tiny_bundle() -> Path:
    """ONE tiny real bundle per test session, trained by ``recsys.pipeline.train.train_bundle`` on
    ``tiny_tables()`` with the frozen packaged encoder (cached across modules).

    ``RECSYS_TEST_BUNDLE=/path/to/bundle`` reuses a bundle trained that way earlier (local runs).
    """
    prebuilt = os.environ.get("RECSYS_TEST_BUNDLE")
    if prebuilt:
        return Path(prebuilt)
    from recsys.candidates.als import ALSConfig
    from recsys.encoder.config import EncoderConfig
    from recsys.pipeline.train import TrainConfig, train_bundle
    from recsys.pipeline.two_stage import CandidatesConfig, TwoStageConfig
    from recsys.ranking.ranker import RankerConfig

    config = TrainConfig(
        finetune=False,
        evaluate_validation=False,
        encoder=EncoderConfig(max_tokens=48),
        model=TwoStageConfig(
            ranker=RankerConfig(num_threads=1, max_rounds=100, min_data_in_leaf=10, search=((15, 0.1),)),
            candidates=CandidatesConfig(
                sources=TINY_SOURCES, per_source=50, total=100, als=ALSConfig(factors=16, iterations=8)
            ),
        ),
    )
    items, interactions = tiny_tables()
    out = Path(tempfile.mkdtemp(prefix="recsys-tiny-bundle-"))
    return train_bundle(items, interactions, config=config, out_dir=out)


@dataclass(frozen=True)
class Home:
    """A BentoML home with the tiny bundle published and its users in the online store, plus the
    facts about the data that the tests check answers against."""

    path: Path
    store_url: str
    version: str
    metadata: dict[str, Any]
    items: pl.DataFrame
    interactions: pl.DataFrame
    users: list[str]
    seen: dict[str, set[str]]
    cold_items: list[str]
    users_item: str  # a much co-interacted item

    @property
    def tag(self) -> str:
        return f"recsys-bundle:{self.version}"

    @functools.cached_property
    def titles(self) -> dict[str, str]:
        return dict(zip(self.items[S.ITEM_ID].to_list(), self.items[S.TITLE].to_list(), strict=True))

    @functools.cached_property
    def categories(self) -> dict[str, str | None]:
        return dict(zip(self.items[S.ITEM_ID].to_list(), self.items[S.CATEGORY].to_list(), strict=True))

    @functools.cached_property
    def prices(self) -> dict[str, float]:
        return dict(zip(self.items[S.ITEM_ID].to_list(), self.items[S.PRICE].to_list(), strict=True))

    def top_items(self, k: int) -> set[str]:
        """The ``k`` most interacted-with items overall, the ``k`` most in the last quarter of time, and
        the ``k`` most popular with events decaying by a 7-day half-life (the pipeline's popularity)."""
        events = self.interactions
        recent = events.filter(pl.col(S.TIMESTAMP) >= events[S.TIMESTAMP].quantile(0.75))
        top: set[str] = set()
        for frame in (events, recent):
            counts = frame.group_by(S.ITEM_ID).len().sort(["len", S.ITEM_ID], descending=[True, False])
            top |= set(counts.head(k)[S.ITEM_ID].to_list())
        decayed = (
            events.with_columns(
                (2.0 ** (-(pl.col(S.TIMESTAMP).max() - pl.col(S.TIMESTAMP)) / (7 * 86_400))).alias("w")
            )
            .group_by(S.ITEM_ID)
            .agg(pl.col("w").sum())
            .sort(["w", S.ITEM_ID], descending=[True, False])
        )
        return top | set(decayed.head(k)[S.ITEM_ID].to_list())


def tiny_home(path: Path, *, store_url: str | None = None) -> Home:
    """Publish the tiny bundle into a fresh BentoML home at ``path``, with its users' states in the
    online store (``store_url``, default SQLite ``path/online.db``), as ``recsys train`` does."""
    path.mkdir(parents=True, exist_ok=True)
    bundle = tiny_bundle()
    store_url = store_url or f"sqlite:///{path / 'online.db'}"
    version = publish(path, bundle, store_url=store_url)
    metadata = json.loads((bundle / "metadata.json").read_text())
    items, interactions = tiny_tables()
    seen = {
        str(user): set(group[S.ITEM_ID].to_list())
        for (user,), group in interactions.group_by(S.USER_ID, maintain_order=True)
    }
    rated = set(interactions[S.ITEM_ID].to_list())
    counts = interactions.group_by(S.ITEM_ID).len().sort(["len", S.ITEM_ID], descending=[True, False])
    return Home(
        path=path,
        store_url=store_url,
        version=version,
        metadata=metadata,
        items=items,
        interactions=interactions,
        users=list(seen)[:20],
        seen=seen,
        cold_items=[i for i in items[S.ITEM_ID].to_list() if i not in rated],
        users_item=str(counts[S.ITEM_ID][0]),
    )


def two_version_home(path: Path, copy_dir: Path, *, second: str) -> Home:
    """``tiny_home`` at ``path``, then the same bundle published again as version ``second`` (copied
    into ``copy_dir``), which becomes current: an earlier version to switch or roll back to."""
    first = tiny_home(path)
    publish(
        first.path, copy_as_version(tiny_bundle(), copy_dir / "bundle", second), store_url=first.store_url
    )
    return first


@contextmanager
def recsys_client(home: Home) -> Iterator[httpx.Client]:
    """``recsys_server`` serving ``home``, and an HTTP client of it (its ``base_url`` is the server's)."""
    with (
        recsys_server(home.path, home.store_url) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield client
