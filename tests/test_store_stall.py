"""A stalled Redis (its process stopped with SIGSTOP: connections open, no reply) must not stall
the service: reads give up within the client's timeout and say which store failed, ``/livez``
keeps answering, ``/readyz`` and the endpoints that read the store say 503 with the reason, and
everything answers again once Redis does.

Against a real ``redis-server`` of its own (stopping the session's shared one would stall other
tests) and a real ``recsys serve`` over HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from redis_server import start_redis
from serving_fixtures import recsys_server, tiny_home

from feature_store.record import StoreUnavailable
from feature_store.redis_store import RedisStore

TIMEOUT = 0.5  # the served store's socket timeout, set in its URL
WORST = 3.0  # seconds a stalled read may take: (1 + retries) x TIMEOUT, backoff, reconnect, slack


@pytest.fixture(scope="module")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, url = start_redis(tmp_path_factory.mktemp("stall-redis"))
    yield proc, url
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=10)


@contextmanager
def stalled(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Redis stops answering (the kernel still accepts connections) until the block ends."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def test_a_stalled_redis_read_fails_fast_naming_the_store(
    redis_process: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, url = redis_process
    store = RedisStore(url, prefix="stall-unit", timeout=0.3, retries=1)
    store.apply_event("u", "a", "view", 1)
    with stalled(proc):
        for call in (lambda: store.get_records(["u"]), store.version, lambda: store.get_items(["a"])):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"feature store \(redis\) timed out after 0.3 s"):
                call()
            assert time.monotonic() - start < 2.0
        with pytest.raises(StoreUnavailable, match=r"\(redis\) timed out"):
            store.apply_event("u", "b", "view", 2)
    # the event that timed out may still run when Redis resumes, but never twice
    assert store.get_records(["u"])[0]["n_events"] in (1, 2)
    store.close()


def test_the_timeouts_in_the_url_win() -> None:
    store = RedisStore("redis://127.0.0.1:1/0?socket_timeout=0.25&db=0", timeout=5.0)
    assert store.timeout == 0.25
    with pytest.raises(StoreUnavailable, match=r"online feature store \(redis\) is unreachable"):
        store.get_records(["u"])  # nothing listens on port 1
    store.close()


@pytest.fixture(scope="module")
def served(
    redis_process: tuple[subprocess.Popen[bytes], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, Any]]:
    _, url = redis_process
    home = tiny_home(tmp_path_factory.mktemp("stall-home"), store_url=url)
    with (
        recsys_server(home.path, f"{url}?socket_timeout={TIMEOUT}") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield client, home


def timed(client: httpx.Client, method: str, route: str, body: Any = None) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = client.request(method, route, json=body)
    return response, time.monotonic() - start


@pytest.mark.slow
def test_a_stalled_store_is_503_and_livez_keeps_answering(
    redis_process: tuple[subprocess.Popen[bytes], str], served: tuple[httpx.Client, Any]
) -> None:
    proc, _ = redis_process
    client, home = served
    user = home.users[0]
    assert client.get("/readyz").status_code == 200
    assert client.post("/recommend", json={"user_id": user}).status_code == 200

    with stalled(proc), ThreadPoolExecutor(8) as pool:
        # several /recommend reads wait on the stalled store at once; the event loop must not
        stuck = [pool.submit(timed, client, "POST", "/recommend", {"user_id": user}) for _ in range(6)]
        time.sleep(0.2)
        livez, seconds = timed(client, "GET", "/livez")
        assert livez.status_code == 200 and seconds < 1.0, seconds
        for future in stuck:
            response, seconds = future.result()
            assert response.status_code == 503, response.text
            assert "online feature store (redis) timed out" in response.json()["error"]
            assert seconds < WORST, seconds
        readyz, seconds = timed(client, "GET", "/readyz")
        assert readyz.status_code == 503 and seconds < WORST, (readyz.status_code, seconds)
        assert "online feature store (redis) timed out" in readyz.text
        for route, body in (
            ("/recommend/batch", {"user_ids": [user]}),
            ("/explain", {"user_id": user, "item_id": home.users_item}),
            ("/events", {"user_id": "stall-user", "item_id": home.users_item, "event": "view"}),
        ):
            response, seconds = timed(client, "POST", route, body)
            assert response.status_code == 503 and seconds < WORST, (route, response.text, seconds)
            assert "online feature store (redis)" in response.json()["error"], route

    deadline = time.monotonic() + 10
    while client.post("/recommend", json={"user_id": user}).status_code != 200:
        assert time.monotonic() < deadline, "the service did not recover once Redis answered again"
        time.sleep(0.1)
    assert client.get("/readyz").status_code == 200
