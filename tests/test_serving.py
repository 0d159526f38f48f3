"""End-to-end tests of the BentoML service: a real ``recsys serve`` subprocess on a free port, a tiny
real bundle trained on a slice of the bundled MovieLens data, and plain HTTP.

One server serves the whole module (start-up and training are the expensive parts); tests that
write events use their own fresh user ids so they do not disturb each other.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from id_examples import id_values, validate_accepts
from serving_fixtures import ADMIN_TOKEN, recsys_server, run_cli, tiny_home

from benchmarks.harness.process import Server
from recsys.data import schema as S

pytestmark = pytest.mark.slow

SOURCES = {"als", "itemknn", "cooccurrence", "text", "sequential", "popularity"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tiny_home(tmp_path_factory.mktemp("serving-home"))


@pytest.fixture(scope="module")
def server(home: Any) -> Iterator[Server]:
    with recsys_server(home.path, home.store_url) as running_server:
        yield running_server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def post(client: httpx.Client, route: str, body: Any) -> httpx.Response:
    return client.post(route, json=body)


def recommend(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = post(client, "/recommend", body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def ids(answer: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def new_user() -> str:
    return f"test-user-{uuid.uuid4().hex[:10]}"


# --- BentoML's own endpoints and the model --------------------------------------------------------


def test_probes_metrics_and_openapi(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    recommend(client, user_id="1")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'endpoint="/recommend"' in metrics.text  # Prometheus counters of our own routes
    spec = client.get("/docs.json").json()
    for route in ("/recommend", "/recommend/batch", "/similar_items", "/explain", "/events", "/model"):
        assert route in spec["paths"], route
    body = spec["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body  # the pydantic request model is documented


def test_request_path_does_not_load_torch(client: httpx.Client, server: Server, home: Any) -> None:
    """Embeddings were computed offline: no worker of the running server has torch or transformers."""
    import psutil

    user = home.users[0]
    recommend(client, user_id=user, context_item_ids=[home.cold_items[0]])
    post(client, "/similar_items", {"item_id": home.cold_items[0]})
    post(client, "/explain", {"user_id": user, "item_id": home.users_item})
    post(client, "/events", {"user_id": new_user(), "item_id": home.users_item})
    root = psutil.Process(server.process.pid)
    for process in [root, *root.children(recursive=True)]:
        libraries = {m.path for m in process.memory_maps()}
        assert not [p for p in libraries if "torch" in p or "transformers" in p], process.cmdline()


def _imports_torch(statement: str) -> bool:
    code = f"import sys\n{statement}\nprint('torch' in sys.modules or 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1] == "True"


def test_every_source_loads_for_serving_without_torch() -> None:
    """What ``TwoStage.load`` imports for each source (the sequential model answers through NumPy)."""
    statement = (
        "import serving.service, recsys.pipeline.recommender\n"
        "from recsys.candidates.registry import SOURCES\n"
        "for s in SOURCES.values(): (s.loader or s.generator)()"
    )
    assert not _imports_torch(statement)


def test_model_endpoint_describes_the_served_bundle(client: httpx.Client, home: Any) -> None:
    info = client.get("/model").json()
    assert info["version"] == home.version
    assert info["tag"] == f"recsys-bundle:{home.version}"
    assert info["created_at"] == home.metadata["created_at"]
    assert info["data_fingerprint"] == home.metadata["data_fingerprint"]
    assert info["metrics"] == home.metadata["metrics"]


# --- /recommend -------------------------------------------------------------------------------------


def test_known_user_gets_n_unseen_items_with_titles_and_sources(client: httpx.Client, home: Any) -> None:
    user = home.users[0]
    answer = recommend(client, user_id=user, n=7)
    assert answer["user_id"] == user and answer["model_version"] == home.version
    assert len(answer["items"]) == 7
    assert len(set(ids(answer))) == 7
    assert not set(ids(answer)) & home.seen[user]
    for item in answer["items"]:
        assert item["title"] == home.titles[item["item_id"]]
        assert item["sources"] and set(item["sources"]) <= SOURCES
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)
    # Personalised: two users with different histories get different lists.
    assert ids(recommend(client, user_id=home.users[1], n=7)) != ids(answer)


def test_exclude_seen_false_returns_seen_items_that_score_high(client: httpx.Client, home: Any) -> None:
    """A user whose history is the most popular items: "buy again" (``exclude_seen: false``) brings
    some back, on /recommend and /recommend/batch, and the ``exclude`` filter still bars them."""
    user = new_user()
    counts = home.interactions.group_by(S.ITEM_ID).len().sort(["len", S.ITEM_ID], descending=[True, False])
    popular = counts.head(5)[S.ITEM_ID].to_list()
    for item in popular:
        response = post(client, "/events", {"user_id": user, "item_id": item})
        assert response.status_code == 200, response.text
    again = ids(recommend(client, user_id=user, n=20, exclude_seen=False))
    assert len(again) == 20 and set(again) & set(popular), again
    assert not set(ids(recommend(client, user_id=user, n=20))) & set(popular)
    batch = post(client, "/recommend/batch", {"user_ids": [user], "n": 20, "exclude_seen": False})
    assert batch.status_code == 200, batch.text
    assert [item["item_id"] for item in batch.json()["results"][0]["items"]] == again
    barred = [i for i in again if i in popular]
    filtered = recommend(client, user_id=user, n=20, exclude_seen=False, filters={"exclude_item_ids": barred})
    assert not set(ids(filtered)) & set(barred)


def test_unknown_user_without_context_gets_recent_popularity(client: httpx.Client, home: Any) -> None:
    answer = recommend(client, user_id=new_user(), n=10)
    assert len(answer["items"]) == 10
    assert all("popularity" in item["sources"] for item in answer["items"])
    # The popular items are popular: each is among the 50 most interacted-with items of the data.
    assert set(ids(answer)) <= home.top_items(50)
    assert ids(recommend(client, user_id=new_user(), n=10)) == ids(answer)  # same for every stranger


def test_unknown_user_with_context_gets_neighbours_of_the_context(client: httpx.Client, home: Any) -> None:
    context = home.seen[home.users[3]]
    context_ids = sorted(context)[:3]
    answer = recommend(client, user_id=new_user(), n=10, context_item_ids=context_ids)
    assert len(answer["items"]) == 10
    assert not set(ids(answer)) & set(context_ids)  # the session's items count as seen
    assert any(set(item["sources"]) - {"popularity"} for item in answer["items"])
    assert ids(answer) != ids(recommend(client, user_id=new_user(), n=10))
    # Unknown context ids are ignored, not an error.
    fallback = recommend(client, user_id=new_user(), n=10, context_item_ids=["no-such-item"])
    assert len(fallback["items"]) == 10


def test_new_items_are_reachable_through_text(client: httpx.Client, home: Any) -> None:
    cold = home.cold_items[0]
    similar = post(client, "/similar_items", {"item_id": cold, "n": 10})
    assert similar.status_code == 200, similar.text
    assert len(similar.json()["items"]) == 10
    assert all("text" in item["sources"] for item in similar.json()["items"])
    # ...and the other way round: a session on its text neighbours can surface the cold item.
    neighbour = similar.json()["items"][0]["item_id"]
    reached = set()
    for item in recommend(client, user_id=new_user(), n=200, context_item_ids=[neighbour])["items"]:
        if item["item_id"] in home.cold_items:
            assert "text" in item["sources"]
            reached.add(item["item_id"])
    assert reached, "no never-interacted item was recommended through text similarity"


def test_filters(client: httpx.Client, home: Any) -> None:
    user = home.users[4]
    category = "Comedy"
    answer = recommend(client, user_id=user, n=20, filters={"categories": [category]})
    assert answer["items"] and all(home.categories[i] == category for i in ids(answer))

    plain = recommend(client, user_id=user, n=10)
    banned = ids(plain)[:3]
    answer = recommend(client, user_id=user, n=10, filters={"exclude_item_ids": banned})
    assert not set(ids(answer)) & set(banned)

    answer = recommend(client, user_id=user, n=20, filters={"price_min": 10.0, "price_max": 20.0})
    assert answer["items"] and all(10.0 <= home.prices[i] <= 20.0 for i in ids(answer))


def test_batch_matches_single_requests(client: httpx.Client, home: Any) -> None:
    users = [*home.users[:3], new_user()]
    response = post(client, "/recommend/batch", {"user_ids": users, "n": 5})
    assert response.status_code == 200, response.text
    batch = response.json()
    assert [r["user_id"] for r in batch["results"]] == users
    for result in batch["results"]:
        single = recommend(client, user_id=result["user_id"], n=5)
        assert [i["item_id"] for i in result["items"]] == ids(single)


def test_similar_items_and_unknown_item(client: httpx.Client, home: Any) -> None:
    item = home.top_items(1).pop()
    response = post(client, "/similar_items", {"item_id": item, "n": 5})
    assert response.status_code == 200, response.text
    similar = ids(response.json())
    assert len(similar) == 5 and item not in similar
    missing = post(client, "/similar_items", {"item_id": "no-such-item", "n": 5})
    assert missing.status_code == 404
    assert "no-such-item" in missing.json()["error"] and missing.json()["detail"][0]["loc"] == ["item_id"]


def test_explain(client: httpx.Client, home: Any) -> None:
    user = home.users[0]
    item = ids(recommend(client, user_id=user, n=1))[0]
    response = post(client, "/explain", {"user_id": user, "item_id": item, "top": 4})
    assert response.status_code == 200, response.text
    contributions = response.json()["contributions"]
    assert 1 <= len(contributions) <= 4
    sizes = [abs(c["contribution"]) for c in contributions]
    assert sizes == sorted(sizes, reverse=True)
    assert all(isinstance(c["feature"], str) and c["feature"] for c in contributions)
    missing = post(client, "/explain", {"user_id": user, "item_id": "no-such-item"})
    assert missing.status_code == 404 and "no-such-item" in missing.json()["error"]


def test_events_change_the_next_recommendation(client: httpx.Client, home: Any) -> None:
    user = new_user()
    before = recommend(client, user_id=user, n=10)
    viewed = home.users_item  # an item with co-interactions, so it has neighbours
    response = post(client, "/events", {"user_id": user, "item_id": viewed, "event": "rating"})
    assert response.status_code == 200, response.text
    assert response.json()["n_events"] == 1
    after = recommend(client, user_id=user, n=10)
    assert viewed not in ids(after)  # excluded as seen
    assert ids(after) != ids(before)
    assert any(set(item["sources"]) - {"popularity"} for item in after["items"])  # its neighbours came up

    # A known user: the top item, once interacted with, is excluded next time.
    known = home.users[5]
    top = ids(recommend(client, user_id=known, n=5))[0]
    event = {"user_id": known, "item_id": top, "event": "rating", "timestamp": int(time.time())}
    response = post(client, "/events", event)
    assert response.status_code == 200, response.text
    assert top not in ids(recommend(client, user_id=known, n=5))


# --- bad input: every bad request is a 4xx naming the field ------------------------------------------

BAD_REQUESTS = [
    ("/recommend", {"n": 5}, 400, "user_id"),
    ("/recommend", {"user_id": ""}, 400, "user_id"),
    ("/recommend", {"user_id": "   "}, 400, "user_id"),
    ("/recommend", {"user_id": 17}, 400, "user_id"),
    ("/recommend", {"user_id": "1", "n": 0}, 400, "n"),
    ("/recommend", {"user_id": "1", "n": 501}, 400, "n"),
    ("/recommend", {"user_id": "1", "n": "10"}, 400, "n"),
    ("/recommend", {"user_id": "1", "n": 2.5}, 400, "n"),
    ("/recommend", {"user_id": "1", "exclude_seen": "yes"}, 400, "exclude_seen"),
    (
        "/recommend",
        {"user_id": "1", "filters": {"categories": ["No Such Genre"]}},
        400,
        "filters.categories[0]",
    ),
    ("/recommend", {"user_id": "1", "filters": {"categories": []}}, 400, "filters.categories"),
    ("/recommend", {"user_id": "1", "filters": {"categories": [""]}}, 400, "filters.categories[0]"),
    ("/recommend", {"user_id": "1", "filters": {"price_min": -1}}, 400, "filters.price_min"),
    ("/recommend", {"user_id": "1", "filters": {"price_min": 5, "price_max": 1}}, 400, "price_max"),
    ("/recommend", {"user_id": "1", "filters": {"colour": "red"}}, 400, "filters.colour"),
    ("/recommend", {"user_id": "1", "context_item_ids": ["x"] * 101}, 400, "context_item_ids"),
    ("/recommend", {"user_id": "1", "context_item_ids": "1"}, 400, "context_item_ids"),
    ("/recommend", {"user_id": "1", "filters": {"exclude_item_ids": ["x"] * 1001}}, 400, "exclude_item_ids"),
    ("/recommend", {"user_id": "1", "typo_field": 1}, 400, "typo_field"),
    ("/recommend", {"user_id": "x" * 257}, 400, "user_id"),
    ("/recommend/batch", {"user_ids": []}, 400, "user_ids"),
    ("/recommend/batch", {"user_ids": ["u"] * 1001}, 400, "user_ids"),
    ("/recommend/batch", {"user_ids": ["ok", ""]}, 400, "user_ids[1]"),
    ("/similar_items", {"item_id": ""}, 400, "item_id"),
    ("/similar_items", {"item_id": "1", "n": 0}, 400, "n"),
    ("/explain", {"user_id": "1"}, 400, "item_id"),
    ("/explain", {"user_id": "1", "item_id": "1", "top": 0}, 400, "top"),
    ("/events", {"user_id": "1"}, 400, "item_id"),
    ("/events", {"user_id": "1", "item_id": "1", "timestamp": -5}, 400, "timestamp"),
    ("/events", {"user_id": "1", "item_id": "1", "timestamp": "yesterday"}, 400, "timestamp"),
    ("/events", {"user_id": "1", "item_id": "1", "event": ""}, 400, "event"),
    # the id rule of the data contract (recsys.data.schema.id_problem): padded, control characters
    ("/recommend", {"user_id": " A1"}, 400, "user_id"),
    ("/recommend/batch", {"user_ids": ["ok", "A1 "]}, 400, "user_ids[1]"),
    ("/similar_items", {"item_id": "line\nbreak"}, 400, "item_id"),
    ("/events", {"user_id": "u", "item_id": "a\x1fb"}, 400, "item_id"),  # the stores' separator
    ("/explain", {"user_id": "\u3000u", "item_id": "1"}, 400, "user_id"),
]


@pytest.mark.parametrize(("route", "body", "status", "field"), BAD_REQUESTS)
def test_bad_request_is_4xx_naming_the_field(
    client: httpx.Client, route: str, body: Any, status: int, field: str
) -> None:
    response = post(client, route, body)
    assert response.status_code == status, response.text
    assert field in response.json()["error"], response.text


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=id_values)
def test_invalid_ids_are_the_same_for_validate_and_the_api(client: httpx.Client, value: str) -> None:
    """One id rule: the server takes an id exactly when ``recsys validate`` does, and a refused id
    is a 400 naming the field, never a 500."""
    response = post(client, "/similar_items", {"item_id": value, "n": 1})
    assert response.status_code in (200, 400, 404), response.text
    assert (response.status_code != 400) == validate_accepts(value), (repr(value), response.text)
    if response.status_code == 400:
        assert "item_id" in response.json()["error"], response.text


@pytest.mark.parametrize(
    ("content", "headers", "status", "words"),
    [
        (b'{"user_id": "1", ', {"Content-Type": "application/json"}, 400, "Invalid JSON"),
        (b"", {"Content-Type": "application/json"}, 400, "user_id"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "object"),
        (b'"user"', {"Content-Type": "application/json"}, 400, "object"),
        (b"user_id=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
        (b"--x\r\ngarbage", {"Content-Type": "multipart/form-data; boundary=x"}, 415, "Content-Type"),
        (b"\x80\x04K\x01.", {"Content-Type": "application/vnd.bentoml+pickle"}, 415, "Content-Type"),
        (b'{"user_id": "' + b"x" * (2 << 20) + b'"}', {"Content-Type": "application/json"}, 413, "body"),
    ],
)
def test_malformed_bodies_are_4xx(
    client: httpx.Client, content: bytes, headers: dict[str, str], status: int, words: str
) -> None:
    response = client.post("/recommend", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_admin_reload_needs_the_token(client: httpx.Client, home: Any) -> None:
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.json() == {"previous": home.tag, "current": home.tag, "swapped": False}


def test_schemathesis_finds_no_server_error_and_every_answer_matches_the_spec(
    server: Server, tmp_path: Path
) -> None:
    """Property-based fuzzing of every operation of the service's own OpenAPI spec, bounded and
    deterministic for CI: no 5xx, and every answer's status, content type, headers and body are the
    documented ones (the errors fuzzing cannot provoke: tests/test_openapi.py)."""
    checks = (
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance"
    )
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/docs.json",
        "--checks", checks,
        "--max-examples", "30",
        "--generation-deterministic",
        "--workers", "1",
        "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
        "--no-color",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "generated" in done.stdout


# --- CLI ----------------------------------------------------------------------------------------------


def test_models_cli(home: Any) -> None:
    listed = run_cli(home.path, "models", "list")
    assert listed.returncode == 0, listed.stderr
    assert home.tag in listed.stdout and "*" in listed.stdout
    current = run_cli(home.path, "models", "current")
    assert current.returncode == 0 and current.stdout.strip() == home.tag
    rollback = run_cli(home.path, "models", "rollback")  # only one version: nothing to roll back to
    assert rollback.returncode == 1 and "no earlier version" in rollback.stderr


def test_serve_refuses_unknown_model_and_empty_store(home: Any, tmp_path: Path) -> None:
    unknown = run_cli(home.path, "serve", "--model", "no-such-version")
    assert unknown.returncode == 2 and "not found" in unknown.stderr
    empty = run_cli(tmp_path, "serve")
    assert empty.returncode == 2 and "recsys train" in empty.stderr


def test_seen_fixture_is_consistent(home: Any) -> None:
    """Guards the oracle itself: the tiny data has users with histories and cold items."""
    assert len(home.users) >= 6 and all(home.seen[u] for u in home.users)
    assert home.cold_items and not set(home.cold_items) & set().union(*home.seen.values())
    assert isinstance(home.items, pl.DataFrame) and S.PRICE in home.items.columns
