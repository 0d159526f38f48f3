"""The OpenAPI spec the service publishes (``/docs.json``) describes every answer it gives.

Schemathesis fuzzes the spec against a serving server (``tests/test_serving.py``), but fuzzing only
sends what the spec allows: it never sends a form, a body over the limit, or hits a server with no
model. Here a real ``bentoml serve`` with nothing published and an online store that does not answer
gives each of those answers on purpose, and schemathesis' own response checks hold each one to the
spec: the status is documented, and the body has the documented content type and schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving_fixtures import ADMIN_TOKEN

from benchmarks.harness.process import Server, bentoml_serve_command, free_port, running
from serving.guard import API_ROUTES, MAX_BODY

pytestmark = pytest.mark.slow

CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
VALID = {
    "/recommend": {"user_id": "u1"},
    "/recommend/batch": {"user_ids": ["u1"]},
    "/similar_items": {"item_id": "i1"},
    "/explain": {"user_id": "u1", "item_id": "i1"},
    "/events": {"user_id": "u1", "item_id": "i1"},
}
ERROR = {"$ref": "#/components/schemas/Error"}


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with no model published and an online store nobody listens on (port 1)."""
    home = tmp_path_factory.mktemp("bare-home")
    port = free_port()
    env = {
        "BENTOML_HOME": str(home),
        "RECSYS_ONLINE_STORE_URL": "redis://127.0.0.1:1/0?socket_timeout=0.5",
        "RECSYS_ADMIN_TOKEN": ADMIN_TOKEN,
        "HF_HUB_OFFLINE": "1",
    }
    command = bentoml_serve_command("serving.service:Recsys", port=port)
    with running(command, port=port, env=env, ready_path="/livez", log_dir=home) as server:
        yield server


@pytest.fixture(scope="module")
def spec(bare: Server) -> dict[str, Any]:
    return dict(httpx.get(f"{bare.url}/docs.json", timeout=30).json())


@pytest.fixture(scope="module")
def schema(bare: Server) -> Any:
    return schemathesis.openapi.from_url(f"{bare.url}/docs.json")


def conforms(schema: Any, method: str, route: str, response: httpx.Response) -> None:
    """Schemathesis' response checks on one answer (they look at the response, not the request)."""
    schema[route][method].Case().validate_response(response, checks=CONFORMANCE)


def test_every_route_documents_its_errors(spec: dict[str, Any]) -> None:
    documented = [(route, "post", ("400", "413", "415", "503")) for route in API_ROUTES] + [
        ("/model", "get", ("503",)),
        ("/admin/reload", "post", ("401", "403", "503")),
    ]
    for route, method, statuses in documented:
        responses = spec["paths"][route][method]["responses"]
        for status in statuses:
            assert responses[status]["content"]["application/json"]["schema"] == ERROR, (route, status)
    for route in API_ROUTES:
        operation = spec["paths"][route]["post"]
        assert operation["requestBody"]["required"] is True, route
        assert ("404" in operation["responses"]) == (route in ("/similar_items", "/explain")), route
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


def test_fields_that_can_be_null_are_declared_nullable(spec: dict[str, Any]) -> None:
    def field(route: str, part: str, name: str) -> dict[str, Any]:
        operation = spec["paths"][route]["post"]
        body = operation["requestBody"] if part == "request" else operation["responses"]["200"]
        return dict(body["content"]["application/json"]["schema"]["properties"][name])

    assert field("/events", "request", "event")["nullable"] is True
    assert field("/events", "request", "timestamp")["nullable"] is True
    assert field("/events", "response", "event")["nullable"] is True
    assert field("/recommend", "request", "filters")["nullable"] is True
    schemas = spec["components"]["schemas"]
    assert schemas["Filters"]["properties"]["price_min"]["nullable"] is True
    assert schemas["ModelInfo"]["properties"]["data_fingerprint"]["nullable"] is True
    assert schemas["ReloadResponse"]["properties"]["previous"]["nullable"] is True


@pytest.mark.parametrize("route", API_ROUTES)
def test_every_error_answer_matches_the_spec(bare: Server, schema: Any, route: str) -> None:
    json_type = {"Content-Type": "application/json"}
    answers = [
        (415, httpx.post(bare.url + route, content=b"a=1", headers={"Content-Type": "text/plain"})),
        (413, httpx.post(bare.url + route, content=b"[" + b" " * MAX_BODY + b"]", headers=json_type)),
        (400, httpx.post(bare.url + route, content=b'{"user_id": ', headers=json_type)),
        (400, httpx.post(bare.url + route, json={**VALID[route], "typo": 1})),
        (503, httpx.post(bare.url + route, json=VALID[route], timeout=30)),  # no model, or no store
    ]
    for status, response in answers:
        assert response.status_code == status, (route, response.text)
        conforms(schema, "POST", route, response)


def test_admin_and_probe_errors_match_the_spec(bare: Server, schema: Any) -> None:
    model = httpx.get(f"{bare.url}/model")
    assert model.status_code == 503, model.text
    conforms(schema, "GET", "/model", model)
    for token, status in (("wrong", 401), (ADMIN_TOKEN, 503)):  # nothing is published to load
        reload = httpx.post(f"{bare.url}/admin/reload", headers={"Authorization": f"Bearer {token}"})
        assert reload.status_code == status, reload.text
        conforms(schema, "POST", "/admin/reload", reload)
    for route in ("/items?item_id=i1", "/history?user_id=u1", "/model/details"):  # the inspector's JSON
        answer = httpx.get(f"{bare.url}{route}", timeout=30)
        assert answer.status_code == 503, (route, answer.text)
        conforms(schema, "GET", route.split("?")[0], answer)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for body, status in (({"version": "v1"}, 404), ({"version": 1}, 400)):  # nothing is published
        switch = httpx.post(f"{bare.url}/admin/switch", json=body, headers=admin)
        assert switch.status_code == status, switch.text
        conforms(schema, "POST", "/admin/switch", switch)
    readyz = httpx.get(f"{bare.url}/readyz")
    assert readyz.status_code == 503, readyz.text
    conforms(schema, "GET", "/readyz", readyz)
