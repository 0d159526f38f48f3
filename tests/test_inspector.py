"""The inspector's JSON (``serving.inspector``) and ``/similar_items``' ``source``, against a real
``recsys serve`` with the tiny bundle published twice, checked against the data and the bundle loaded
in this process. The page itself is tested in a browser (``test_ui_browser.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serving_fixtures import (
    ADMIN_TOKEN,
    TINY_SOURCES,
    Home,
    recsys_client,
    run_cli,
    tiny_bundle,
    two_version_home,
)

from recsys.data import schema as S
from recsys.pipeline.recommender import Recommender

pytestmark = pytest.mark.slow

SECOND = "v-inspector-second"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """The tiny bundle published, then a copy of it as a second version (now current)."""
    mktemp = tmp_path_factory.mktemp
    return two_version_home(mktemp("inspector-home"), mktemp("inspector-copy"), second=SECOND)


@pytest.fixture(scope="module")
def api(home: Home) -> Iterator[httpx.Client]:
    with recsys_client(home) as client:
        yield client


@pytest.fixture(scope="module")
def recommender() -> Recommender:
    return Recommender.load(tiny_bundle())


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] and isinstance(body["detail"], list)
    return body


def test_items_are_the_catalogues_fields(api: httpx.Client, home: Home) -> None:
    wanted = [home.users_item, home.cold_items[0], "not-in-the-catalogue"]
    answer = api.get("/items", params={"item_id": wanted})
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert [i["item_id"] for i in items] == wanted
    catalogue = home.items.filter(home.items[S.ITEM_ID].is_in(wanted[:2]))
    for item in items[:2]:
        (row,) = catalogue.filter(catalogue[S.ITEM_ID] == item["item_id"]).to_dicts()
        assert item["known"] is True
        assert {k: item[k] for k in ("title", "description", "category", "price")} == {
            k: row[k] for k in (S.TITLE, S.DESCRIPTION, S.CATEGORY, S.PRICE)
        }
    assert items[2] == {"item_id": wanted[2], "known": False} | dict.fromkeys(
        ("title", "description", "category", "price")
    )


def test_items_name_the_bad_parameter(api: httpx.Client) -> None:
    assert error(api.get("/items"), 400)["detail"][0]["loc"] == ["query", "item_id"]
    assert error(api.get("/items", params={"item_id": ["a", " padded"]}), 400)["detail"][0]["loc"] == [
        "query",
        "item_id",
        1,
    ]
    assert "at most 100" in error(api.get("/items", params={"item_id": ["a"] * 101}), 400)["error"]
    assert error(api.get("/history", params={"user_id": ["a", "b"]}), 400)["detail"][0]["loc"] == [
        "query",
        "user_id",
    ]


def test_history_is_the_users_state_in_the_store(api: httpx.Client, home: Home) -> None:
    user = home.users[0]
    events = home.interactions.filter(home.interactions[S.USER_ID] == user)
    answer = api.get("/history", params={"user_id": user}).json()
    assert answer["known"] is True and answer["n_events"] == events.height
    assert set(answer["seen_item_ids"]) == home.seen[user]
    assert answer["last_ts"] == events[S.TIMESTAMP].max()
    recent = [i["item_id"] for i in answer["recent"]]
    assert 0 < len(recent) <= 20 and len(set(recent)) == len(recent) and set(recent) <= home.seen[user]
    latest = events.filter(events[S.TIMESTAMP] == events[S.TIMESTAMP].max())[S.ITEM_ID].to_list()
    assert recent[0] in latest  # newest first
    assert all(i["title"] == home.titles[i["item_id"]] for i in answer["recent"])

    nobody = api.get("/history", params={"user_id": "nobody-at-all"}).json()
    assert nobody["known"] is False and nobody["recent"] == [] and nobody["seen_item_ids"] == []


def test_model_details_are_the_bundles(api: httpx.Client, home: Home, recommender: Recommender) -> None:
    details = api.get("/model/details").json()
    assert details["n_items"] == home.items.height
    assert details["categories"] == sorted({c for c in home.categories.values() if c is not None})
    assert details["similar_sources"] == [
        s for s in ("text", "cooccurrence", "als", "itemknn") if s in TINY_SOURCES
    ]
    importance = {f["feature"]: f["importance"] for f in details["feature_importance"]}
    assert list(importance) == list(recommender.feature_importance())
    assert importance == pytest.approx(recommender.feature_importance())
    values = list(importance.values())
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("source", ["text", "cooccurrence", "als", "itemknn"])
def test_similar_items_of_one_source(
    api: httpx.Client, home: Home, recommender: Recommender, source: str
) -> None:
    item = home.users_item
    answer = api.post("/similar_items", json={"item_id": item, "n": 8, "source": source})
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    expected = recommender.similar_items(item, n=8, source=source)
    assert [i["item_id"] for i in items] == [r.item_id for r in expected] != []
    assert [i["score"] for i in items] == pytest.approx([r.score for r in expected])
    assert all(i["sources"] == [source] for i in items) and item not in {i["item_id"] for i in items}


def test_text_neighbours_are_the_nearest_by_cosine(recommender: Recommender, home: Home) -> None:
    """A known answer for one source: the text neighbours are the catalogue's nearest embeddings."""
    import numpy as np

    embeddings = np.load(tiny_bundle() / "model" / "item_embeddings.npy", allow_pickle=False)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    ids = home.items[S.ITEM_ID].to_list()  # the bundle's item order: the catalogue's
    row = ids.index(home.users_item)
    cosine = unit @ unit[row]
    cosine[row] = -np.inf
    found = recommender.similar_items(home.users_item, n=5, source="text")
    assert [r.score for r in found] == pytest.approx(np.sort(cosine)[::-1][:5].tolist(), abs=1e-5)
    assert all(cosine[ids.index(r.item_id)] == pytest.approx(r.score, abs=1e-5) for r in found)
    with pytest.raises(ValueError, match="no item-to-item source 'sequential'"):
        recommender.similar_items(home.users_item, n=5, source="sequential")


def test_a_source_the_model_lacks_is_a_400_naming_it(api: httpx.Client, home: Home) -> None:
    for source in ("sequential", "popularity", "made-up"):
        body = error(api.post("/similar_items", json={"item_id": home.users_item, "source": source}), 400)
        assert body["detail"][0]["loc"] == ["source"] and "text, cooccurrence" in body["error"]


def test_the_page_and_its_files_are_served_with_a_same_origin_policy(api: httpx.Client) -> None:
    for path, kind in (("/ui", "text/html"), ("/ui/ui.js", "text/javascript"), ("/ui/ui.css", "text/css")):
        answer = api.get(path)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind), path
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert "connect-src 'self'" in answer.headers["content-security-policy"]
    assert "http" not in api.get("/ui").text.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert api.get("/ui/inspector.py").status_code == 404  # only the page's own files
    assert api.get("/ui/index.htm").status_code == 404


def test_the_spec_documents_the_inspector_routes_and_source(api: httpx.Client) -> None:
    spec = api.get("/docs.json").json()
    for route, method in (
        ("/items", "get"),
        ("/history", "get"),
        ("/model/details", "get"),
        ("/model/versions", "get"),
        ("/admin/switch", "post"),
    ):
        assert method in spec["paths"][route], route
    similar = spec["paths"]["/similar_items"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "one item-to-item source" in similar["properties"]["source"]["description"].lower()
    switch = spec["paths"]["/admin/switch"]["post"]
    assert {"400", "401", "403", "404", "409", "503"} <= set(switch["responses"])
    assert switch["requestBody"]["content"]["application/json"]["schema"]["required"] == ["version"]


def test_admin_switch_needs_the_token_and_moves_every_reader(api: httpx.Client, home: Home) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    versions = api.get("/model/versions").json()
    assert [v["version"] for v in versions["versions"]] == [SECOND, home.version]
    assert [v["current"] for v in versions["versions"]] == [True, False]
    assert all(v["features_loaded"] for v in versions["versions"]) and versions["pinned"] is False

    error(api.post("/admin/switch", json={"version": home.version}), 401)
    error(
        api.post("/admin/switch", json={"version": home.version}, headers={"Authorization": "Bearer no"}), 401
    )
    assert api.get("/model").json()["version"] == SECOND  # nothing moved
    assert error(api.post("/admin/switch", json={"versio": "x"}, headers=admin), 400)["detail"]
    assert error(api.post("/admin/switch", content=b"{", headers=admin), 400)["error"]
    assert error(api.post("/admin/switch", json={"version": "v-none"}, headers=admin), 404)["detail"][0][
        "loc"
    ] == ["version"]

    switched = api.post("/admin/switch", json={"version": home.version}, headers=admin)
    assert switched.status_code == 200, switched.text
    assert switched.json() == {"previous": f"recsys-bundle:{SECOND}", "current": home.tag, "swapped": True}
    assert api.get("/model").json()["version"] == home.version
    assert run_cli(home.path, "models", "current").stdout.count(home.version) >= 1  # the registry moved
    assert [v["current"] for v in api.get("/model/versions").json()["versions"]] == [False, True]

    back = api.post("/admin/switch", json={"version": SECOND}, headers=admin)
    assert back.status_code == 200 and back.json()["current"] == f"recsys-bundle:{SECOND}", back.text
    again = api.post("/admin/switch", json={"version": SECOND}, headers=admin).json()
    assert again["swapped"] is False
