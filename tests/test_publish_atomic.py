"""Publishing is atomic: a publish killed (SIGKILL) at any point leaves the previous model and its
features serving, or, once the pointer moved, the new ones; never one model with the other's
features. The next publish removes what the killed one left. A failed publish leaves nothing
current that was not, and a rollback brings back a model with its own features.

Real BentoML homes and real stores (SQLite, and a real redis-server); every publish and every check
runs in a fresh process, as an operator's would. Each release's features carry a mark (one user has
``k * MARK`` more events in release ``k``), so a reader can tell whose features it reads; the events
acknowledged in between (all older than every snapshot's cutoff) must be in whatever is served.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from serving_fixtures import copy_as_version, run_cli, run_python, tiny_bundle

from feature_store.online import OnlineStore, open_store
from feature_store.redis_store import RedisStore
from feature_store.sqlite_store import SQLiteStore
from recsys.data import schema as S

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("publish_kill.py")
MARK = 1000


def release(folder: Path, k: int) -> Path:
    """The tiny bundle as version ``<its version>-r<k>``, with its features marked."""
    bundle = tiny_bundle()
    out = copy_as_version(bundle, folder / f"r{k}", f"{bundle.name}-r{k}")
    path = out / "features" / "user_states.parquet"
    states = pl.read_parquet(path)
    user = states.get_column(S.USER_ID)[0]
    mark = (
        pl.when(pl.col(S.USER_ID) == user).then(pl.col("n_events") + k * MARK).otherwise(pl.col("n_events"))
    )
    states.with_columns(mark).write_parquet(path)
    return out


class World:
    """A BentoML home, its online store, and what every check expects."""

    def __init__(self, home: Path, store_url: str, releases: Path) -> None:
        self.home, self.store_url, self.releases = home, store_url, releases
        states = pl.read_parquet(tiny_bundle() / "features" / "user_states.parquet")
        self.user = str(states.get_column(S.USER_ID)[0])
        self.base = int(states.get_column("n_events")[0])
        self.item = str(states.get_column("seen")[0][0])
        self.sent = 0
        self.store: OnlineStore = open_store(store_url)

    def version(self, k: int) -> str:
        return f"{tiny_bundle().name}-r{k}"

    def send(self) -> None:
        """One acknowledged event, older than every snapshot's cutoff (a late one)."""
        self.store.apply_event(self.user, self.item, "view", 1 + self.sent)
        self.sent += 1

    def publish(
        self, k: int, point: str = "none", *, bundle: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Publish release ``k`` (or ``bundle``) in a process of its own that dies at ``point``."""
        env = {**os.environ, "BENTOML_HOME": str(self.home)}
        bundle = bundle or release(self.releases, k)
        command = [sys.executable, str(DRIVER), point, str(bundle), self.store_url]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    def served(self) -> dict[str, Any]:
        """From a fresh process: the current version, and what its reader reads for the marked user."""
        code = (
            "import json; from feature_store.online import open_store; from recsys.pipeline import registry; "
            f"current = registry.current(); store = open_store({self.store_url!r}); "
            f"(record,) = store.get_records([{self.user!r}], version=current.version); "
            "print(json.dumps({'current': current.version, 'n_events': record['n_events'], "
            "'versions': store.versions()}))"
        )
        return dict(json.loads(run_python(self.home, code).strip().splitlines()[-1]))

    def assert_serving(self, k: int) -> None:
        """Release ``k`` is current, and its reader reads release ``k``'s features and every event."""
        served = self.served()
        assert served["current"] == self.version(k), served
        assert served["n_events"] == self.base + k * MARK + self.sent, (served, k, self.sent)


@pytest.fixture(params=["sqlite", "redis"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    url = (
        f"sqlite:///{tmp_path / 'online.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("redis_url")
    )
    made = World(tmp_path / "home", url, tmp_path / "releases")
    yield made
    made.store.close()


def test_a_publish_killed_at_any_point_leaves_old_or_new_serving_and_the_next_one_cleans_up(
    world: World,
) -> None:
    first = world.publish(0)
    assert first.returncode == 0, first.stderr[-3000:]
    world.send()
    world.assert_serving(0)
    for k, point, serving in ((1, "copy", 0), (2, "load", 0), (3, "pointer", 0), (4, "after", 4)):
        killed = world.publish(k, point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        world.assert_serving(serving)
        world.send()  # accepted between the runs, while leftovers of the killed one are there
        world.assert_serving(serving)
    last = world.publish(5)
    assert last.returncode == 0, last.stderr[-3000:]
    world.assert_serving(5)

    # the runs killed before their switch left nothing behind; the kept features are current + previous
    models = world.home / "models" / "recsys-bundle"
    assert sorted(p.name for p in models.iterdir() if p.is_dir()) == [world.version(k) for k in (0, 4, 5)]
    assert not (world.home / "recsys" / "recsys-bundle.publishing").exists()
    assert not [p for p in world.home.rglob("bentoml-model-*")]
    assert world.store.versions() == [world.version(4), world.version(5)]
    if isinstance(world.store, SQLiteStore):
        assert len(world.store.tables()) == 4  # users and items of two versions
    else:
        assert isinstance(world.store, RedisStore)
        ids = {key.split(":")[1] for key in world.store.key_names() if key.split(":")[1].isdigit()}
        assert len(ids) == 2, ids
    listing = run_cli(world.home, "models", "list")
    assert listing.returncode == 0, listing.stderr

    # rolling back: to 4 (its features are kept), then to 0 (dropped: loaded again from its bundle)
    for k in (4, 0):
        world.send()
        rollback = run_cli(world.home, "models", "rollback", "--store", world.store_url)
        assert rollback.returncode == 0, rollback.stderr
        assert f"recsys-bundle:{world.version(k)} is current again" in rollback.stdout
        world.assert_serving(k)


def test_a_failed_publish_leaves_the_previous_model_current_and_nothing_behind(
    world: World, tmp_path: Path
) -> None:
    assert world.publish(0).returncode == 0
    world.send()
    broken = release(tmp_path, 1)
    (broken / "features" / "items.parquet").unlink()  # the online store's load fails on it
    failed = world.publish(1, bundle=broken)
    world.assert_serving(0)
    assert failed.returncode == 1
    assert "failed while loading its features into the online store" in failed.stderr
    assert f"recsys-bundle:{world.version(0)} is still current" in failed.stderr
    models = world.home / "models" / "recsys-bundle"
    assert sorted(p.name for p in models.iterdir() if p.is_dir()) == [world.version(0)]
    assert world.store.versions() == [world.version(0)]


def test_the_service_never_swaps_in_a_model_whose_features_the_store_does_not_hold(world: World) -> None:
    assert world.publish(0).returncode == 0
    world.store.retain([])  # as if the features were dropped under a pinned or lagging server
    code = (
        "from feature_store.online import open_store; from serving.runtime import ModelHolder; "
        f"holder = ModelHolder(store=open_store({world.store_url!r}));\n"
        "try:\n    holder.refresh()\nexcept RuntimeError as err:\n    print(err)\n"
        "assert holder.current is None"
    )
    said = " ".join(run_python(world.home, code).split())
    assert f"holds no features for recsys-bundle:{world.version(0)}" in said, said
