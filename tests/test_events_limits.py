"""The limits on what ``/events`` takes: the optional write token, the ``Authorization: Bearer``
parsing shared with the admin API, and the bound on future timestamps (the bound on what a user's
state grows to is in test_store_bounds.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serving_fixtures import ADMIN_TOKEN, server_env, tiny_home

from benchmarks.harness.process import free_port, recsys_serve_command, running
from serving.http import bearer_token
from serving.runtime import Settings

EVENTS_TOKEN = "test-events-token"


# --- Authorization: Bearer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Bearer\tabc", "abc"),
        ("abc", None),  # a bare token has no scheme
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer a b", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_settings_read_the_events_token_and_skew() -> None:
    settings = Settings.from_env({"RECSYS_EVENTS_TOKEN": "t", "RECSYS_EVENTS_MAX_SKEW_S": "60"})
    assert settings.events_token == "t" and settings.events_max_skew_s == 60
    assert Settings.from_env({}).events_token is None and Settings.from_env({}).events_max_skew_s == 300
    with pytest.raises(ValueError, match="RECSYS_EVENTS_MAX_SKEW_S"):
        Settings.from_env({"RECSYS_EVENTS_MAX_SKEW_S": "-1"})


# --- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tiny_home(tmp_path_factory.mktemp("events-limits-home"))


def _client(home: Any, **extra: str) -> Iterator[httpx.Client]:
    port = free_port()
    env = server_env(home.path, home.store_url, **extra)
    with (
        running(recsys_serve_command(port=port), port=port, env=env, log_dir=home.path) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def open_client(home: Any) -> Iterator[httpx.Client]:
    """A server with the defaults: no events token, 300 s of allowed skew."""
    yield from _client(home)


@pytest.fixture(scope="module")
def token_client(home: Any) -> Iterator[httpx.Client]:
    yield from _client(home, RECSYS_EVENTS_TOKEN=EVENTS_TOKEN, RECSYS_EVENTS_MAX_SKEW_S="60")


def event(**extra: Any) -> dict[str, Any]:
    return {"user_id": f"limits-{uuid.uuid4().hex[:8]}", "item_id": "1", "event": "view", **extra}


@pytest.mark.slow
def test_events_are_open_without_a_token(open_client: httpx.Client) -> None:
    assert open_client.post("/events", json=event()).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        (EVENTS_TOKEN, 401),  # bare token: refused
        ("Bearer wrong", 401),
        (f"Basic {EVENTS_TOKEN}", 401),
        (f"Bearer {ADMIN_TOKEN}", 401),  # the admin token is not the write token
        (f"Bearer {EVENTS_TOKEN}", 200),
        (f"bearer {EVENTS_TOKEN}", 200),
        (f"BEARER   {EVENTS_TOKEN}", 200),  # (surrounding whitespace: h11 strips it; see the unit test)
    ],
)
def test_events_token(token_client: httpx.Client, header: str | None, status: int) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = token_client.post("/events", json=event(), headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert "authorization" in response.json()["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("header", "status"),
    [
        (f"bearer {ADMIN_TOKEN}", 200),
        (f"BEARER \t{ADMIN_TOKEN}", 200),
        (ADMIN_TOKEN, 401),  # bare token: refused
        (f"Bearer {ADMIN_TOKEN}x", 401),
    ],
)
def test_admin_bearer_parsing(open_client: httpx.Client, header: str, status: int) -> None:
    response = open_client.post("/admin/reload", headers={"Authorization": header})
    assert response.status_code == status, response.text


@pytest.mark.slow
def test_future_timestamps_beyond_the_skew_are_refused(
    open_client: httpx.Client, token_client: httpx.Client
) -> None:
    now = int(time.time())
    assert open_client.post("/events", json=event(timestamp=now + 120)).status_code == 200
    assert open_client.post("/events", json=event(timestamp=now - 10**6)).status_code == 200  # backfill
    refused = open_client.post("/events", json=event(timestamp=now + 3600))
    assert refused.status_code == 400, refused.text
    assert "timestamp: " in refused.json()["error"], refused.text
    assert refused.json()["detail"][0]["loc"] == ["timestamp"]

    auth = {"Authorization": f"Bearer {EVENTS_TOKEN}"}  # this server allows 60 s
    response = token_client.post("/events", json=event(timestamp=now + 120), headers=auth)
    assert response.status_code == 400, response.text
