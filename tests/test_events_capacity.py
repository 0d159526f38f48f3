"""``/events`` never waits behind scoring, and one ``/recommend/batch`` asks for bounded work.

Against a real ``recsys serve`` of the tiny bundle over HTTP: two clients send the largest batch the
schema allows back to back while events arrive; every event must be answered long before a batch
is. The timing bound is loose on purpose (a shared 2-core machine); the figure that matters, the
p99 under load, is measured by ``benchmarks/events_under_load.py`` (docs/RESULTS.md, Serving).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serving_fixtures import recsys_server, tiny_home

from benchmarks.harness.process import Server
from serving.schemas import MAX_BATCH_ITEMS, MAX_BATCH_USERS, MAX_LIST, MAX_N

pytestmark = pytest.mark.slow

EVENT_SECONDS = 2.0  # an event waited a whole batch before (tens of seconds at the old limits)
BATCH_CLIENTS = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any]]:
    """A real server of the tiny bundle, and the facts about its data."""
    home = tiny_home(tmp_path_factory.mktemp("capacity-home"))
    with recsys_server(home.path, home.store_url) as server:
        yield server, home


def largest_batch(home: Any) -> dict[str, Any]:
    """The most work one batch may ask for: ``MAX_BATCH_USERS`` known users (scored by the ranker, not
    answered from popularity) at the largest ``n`` the item budget leaves them."""
    known = sorted(home.seen)
    users = [known[i % len(known)] for i in range(MAX_BATCH_USERS)]
    return {"user_ids": users, "n": MAX_BATCH_ITEMS // MAX_BATCH_USERS}


def test_batches_over_the_budget_are_400_naming_the_field_and_the_limit(served: tuple[Server, Any]) -> None:
    server, home = served
    body = largest_batch(home)
    overs = [
        # the largest batch the schema allowed before the budget: tens of seconds of scoring
        (
            {"user_ids": sorted(home.seen)[:1] * MAX_LIST, "n": MAX_N},
            "user_ids",
            f"at most {MAX_BATCH_USERS}",
        ),
        ({**body, "user_ids": [*body["user_ids"], "one-more"]}, "user_ids", f"at most {MAX_BATCH_USERS}"),
        ({**body, "n": body["n"] + 1}, "n", f"over the {MAX_BATCH_ITEMS:,} one batch may ask for"),
    ]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for over, field, limit in overs:
            response = client.post("/recommend/batch", json=over)
            assert response.status_code == 400, response.text[:300]
            error = response.json()["error"]
            assert error.startswith(f"invalid request: {field}:") and limit in error, error
        assert client.post("/recommend/batch", json=body).status_code == 200


def test_events_answer_while_the_largest_batches_run(served: tuple[Server, Any]) -> None:
    server, home = served
    body = largest_batch(home)
    stop = threading.Event()
    batches: list[tuple[int, float]] = []  # (status, seconds)

    def send_batches() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while not stop.is_set():
                start = time.perf_counter()
                status = client.post("/recommend/batch", json=body).status_code
                batches.append((status, time.perf_counter() - start))

    clients = [threading.Thread(target=send_batches, daemon=True) for _ in range(BATCH_CLIENTS)]
    for thread in clients:
        thread.start()
    events: list[float] = []
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            time.sleep(1.0)  # both batches in flight
            user = f"capacity-{uuid.uuid4().hex[:8]}"
            for k in range(10):
                start = time.perf_counter()
                response = client.post("/events", json={"user_id": user, "item_id": home.users_item})
                events.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text
                assert events[-1] < EVENT_SECONDS, f"event {k} took {events[-1]:.2f} s behind the batches"
                assert response.json()["n_events"] == k + 1
                time.sleep(0.2)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=300)

    assert len(batches) >= BATCH_CLIENTS and all(status == 200 for status, _ in batches), batches
    # and no event queued behind a batch: the slowest is faster than a typical batch
    assert max(events) < statistics.median(s for _, s in batches), (events, batches)
