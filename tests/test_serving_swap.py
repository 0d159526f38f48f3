"""End-to-end tests of the service's life cycle over real HTTP: readiness before any model exists,
hot swap to a newly published version under concurrent load with zero failed requests, model and
features switching together, following ``recsys models rollback``, and ``bentoml build`` of the
packaged service.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import polars as pl
import pytest
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from serving_fixtures import (
    ADMIN_TOKEN,
    incompatible_copy,
    publish,
    recsys_server,
    run_cli,
    server_env,
    tiny_bundle,
    tiny_home,
)
from test_publish_atomic import MARK, release

from benchmarks.harness.process import bentoml_serve_command, free_port, running

pytestmark = pytest.mark.slow


def wait_for_version(client: httpx.Client, version: str, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.get("/model")
        if info.status_code == 200 and info.json()["version"] == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"the service did not switch to {version} in {timeout} s")


def test_not_ready_until_a_model_is_published(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store_url = f"sqlite:///{home / 'online.db'}"
    port = free_port()
    command = bentoml_serve_command("serving.service:Recsys", port=port)  # recsys serve would refuse
    with (
        running(
            command, port=port, env=server_env(home, store_url), ready_path="/livez", log_dir=tmp_path
        ) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 503
        response = client.post("/recommend", json={"user_id": "1"})
        assert response.status_code == 503 and "no model loaded" in response.json()["error"]
        assert client.get("/model").status_code == 503
        assert client.post("/recommend", json={"user_id": ""}).status_code == 400  # validation first

        version = publish(home, tiny_bundle(), store_url=store_url)
        server.wait_until("/readyz", timeout=60)
        answer = client.post("/recommend", json={"user_id": "1", "n": 3})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == version and len(answer.json()["items"]) == 3


def test_hot_swap_and_rollback_under_load_drop_no_request(tmp_path: Path) -> None:
    """Also: each version is served with its own features (release 1's mark one user's event count)."""
    home = tiny_home(tmp_path / "home")
    v1 = home.version
    v2_bundle = release(tmp_path / "releases", 1)
    marked = str(pl.read_parquet(v2_bundle / "features" / "user_states.parquet").get_column("user_id")[0])
    results: dict[int, list[tuple[int, str]]] = defaultdict(list)  # thread -> (status, version)
    failures: list[str] = []
    stop = threading.Event()

    def hammer(worker: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                user = home.users[i % len(home.users)] if i % 5 else f"stranger-{worker}-{i}"
                i += 1
                try:
                    response = client.post("/recommend", json={"user_id": user, "n": 10})
                except httpx.HTTPError as err:
                    failures.append(f"{type(err).__name__}: {err}")
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                    continue
                body = response.json()
                if len(body["items"]) != 10:
                    failures.append(f"short answer {body}")
                results[worker].append((response.status_code, body["model_version"]))

    def events_of_marked(client: httpx.Client) -> int:
        """The marked user's event count in the features the server reads, after one more event."""
        response = client.post("/events", json={"user_id": marked, "item_id": home.users_item})
        assert response.status_code == 200, response.text
        return int(response.json()["n_events"])

    with recsys_server(home.path, home.store_url) as server, httpx.Client(base_url=server.url) as client:
        before = events_of_marked(client)
        threads = [threading.Thread(target=hammer, args=(k, server.url)) for k in range(6)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            v2 = publish(home.path, v2_bundle, store_url=home.store_url)  # as `recsys train` ends
            wait_for_version(client, v2)
            assert events_of_marked(client) == before + 1 + MARK  # v2's features, and every event
            time.sleep(1.0)
            rollback = run_cli(home.path, "models", "rollback", "--store", home.store_url)
            assert rollback.returncode == 0, rollback.stderr
            assert v1 in rollback.stdout
            wait_for_version(client, v1)
            assert events_of_marked(client) == before + 2  # v1's own features again
            time.sleep(1.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        current = run_cli(home.path, "models", "current")
        assert current.stdout.strip() == f"recsys-bundle:{v1}"

    assert not failures, failures[:5]
    total = sum(len(r) for r in results.values())
    assert total > 50, f"only {total} requests completed"
    for worker, answers in results.items():
        versions = [v for _, v in answers]
        assert set(versions) <= {v1, v2}
        # Each caller sees v1, then v2, then v1 again: one switch each way, never back and forth.
        switches = [b for a, b in itertools.pairwise(versions) if a != b]
        assert switches == [v2, v1], f"caller {worker}: versions switched as {switches}"


def test_a_broken_version_is_never_swapped_in(tmp_path: Path) -> None:
    """A published version that loads but cannot answer is refused; the working one keeps serving."""
    home = tiny_home(tmp_path / "home")
    broken = incompatible_copy(tiny_bundle(), tmp_path / "broken", f"{home.version}-broken")
    with (
        recsys_server(home.path, home.store_url) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        broken_version = publish(home.path, broken, store_url=home.store_url)
        assert run_cli(home.path, "models", "current").stdout.strip().endswith(broken_version)
        deadline = time.monotonic() + 30
        while "model (re)load failed" not in server.log() and time.monotonic() < deadline:
            response = client.post("/recommend", json={"user_id": home.users[0], "n": 5})
            assert response.status_code == 200 and response.json()["model_version"] == home.version
            time.sleep(0.1)
        assert "number of features" in server.log()
        assert client.get("/model").json()["version"] == home.version
        assert client.get("/readyz").status_code == 200
        reload = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert reload.status_code == 503 and "still serving the previous model" in reload.json()["error"]


def test_redis_online_store(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    """``recsys serve --store redis://...``: histories come from Redis and events land there."""
    known = tiny_home(tmp_path / "home", store_url=redis_url)
    user = known.users[0]
    with (
        recsys_server(known.path, redis_url, "--store", redis_url) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        answer = client.post("/recommend", json={"user_id": user, "n": 10}).json()
        items = [i["item_id"] for i in answer["items"]]
        assert len(items) == 10 and not set(items) & known.seen[user]
        assert any(set(i["sources"]) - {"popularity"} for i in answer["items"])  # personalised
        stranger = f"redis-user-{time.monotonic_ns()}"
        event = client.post("/events", json={"user_id": stranger, "item_id": known.users_item})
        assert event.status_code == 200 and event.json()["n_events"] == 1
        after = client.post("/recommend", json={"user_id": stranger, "n": 10}).json()
        assert known.users_item not in [i["item_id"] for i in after["items"]]


def test_bentoml_build_packages_the_service(tmp_path: Path) -> None:
    home = tiny_home(tmp_path / "home")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "BENTOML_HOME": str(home.path), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "serving/bentofile.yaml", "-o", "tag", "."],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("recsys:")
    bento = home.path / "bentos" / "recsys" / tag.split(":")[1]
    manifest = (bento / "bento.yaml").read_text()
    assert f"recsys-bundle:{home.version}" in manifest  # the bundle travels with the Bento
    for route in ("/recommend", "/recommend/batch", "/similar_items", "/explain", "/events"):
        assert f"route: {route}\n" in manifest
    assert (bento / "src" / "serving" / "service.py").is_file()
    assert not any(
        "torch" in line for line in (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    )
