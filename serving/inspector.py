# mypy: disallow-untyped-decorators=False
"""The recommendation inspector: the page at ``/ui``, and the JSON it reads beyond the main API.

The page (``serving/ui/``: ``index.html``, ``ui.css``, ``ui.js``) is static: plain JavaScript calling
this service's own endpoints, nothing from anywhere else (its Content-Security-Policy allows only
this origin). Besides ``/recommend``, ``/similar_items``, ``/explain``, ``/events`` and ``/model`` it
reads, all read-only:

- ``GET /items?item_id=A&item_id=B``: the catalogue fields of items (title, description, category, price);
- ``GET /history?user_id=U``: a user's state in the online store: recent items, newest first, with
  their catalogue fields, event counts, the last event's time and every item seen;
- ``GET /model/details``: the served model's catalogue size, categories, item-to-item sources and
  ranker feature importance;
- ``GET /model/versions``: every published version, which one is current and which have their
  features in the online store;

and, with the admin token (as ``POST /admin/reload``), ``POST /admin/switch`` makes a published
version current with its features (``recsys.pipeline.publish.switch``); every worker follows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread
import bentoml
from fastapi import APIRouter, Header, Query, Request
from pydantic import Field, ValidationError
from starlette.responses import FileResponse, Response

from recsys.data import schema as S
from serving import schemas as api
from serving.guard import field_message
from serving.http import RequestError, check_admin
from serving.runtime import Loaded, ModelHolder, Settings, default_store_url

if TYPE_CHECKING:
    from feature_store.online import OnlineStore

UI_DIR = Path(__file__).parent / "ui"
ASSETS = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
# Only this origin: no CDN, no inline script, nothing sent anywhere else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
MAX_ITEMS = api.MAX_CONTEXT  # item ids one GET /items may ask for

router = APIRouter()


class ItemDetails(api._Model):
    item_id: str
    known: bool = Field(description="Whether the served model's catalogue has the item.")
    title: str | None
    description: str | None
    category: str | None
    price: float | None


class ItemsResponse(api._Model):
    model_version: str
    items: list[ItemDetails]


class HistoryResponse(api._Model):
    user_id: str
    model_version: str
    known: bool = Field(description="Whether the online store has any event of the user.")
    n_events: int
    last_ts: int | None = Field(description="The last event's time: Unix seconds, or an order index.")
    events: dict[str, int] = Field(description="Event counts by type.")
    recent: list[ItemDetails] = Field(description="The last items the store keeps, newest first.")
    seen_item_ids: list[str] = Field(description="Every item the user has interacted with (bounded).")


class FeatureImportance(api._Model):
    feature: str
    importance: float


class ModelDetails(api._Model):
    version: str
    n_items: int
    categories: list[str]
    similar_sources: list[str] = Field(description="What /similar_items takes as `source`.")
    importance_type: str
    feature_importance: list[FeatureImportance] = Field(description="Largest first.")


class VersionInfo(api._Model):
    tag: str
    version: str
    created_at: str
    data_fingerprint: str | None
    metrics: dict[str, Any]
    current: bool = Field(description="The registry's current version: what every worker follows.")
    served: bool = Field(description="The version the worker that answered serves.")
    features_loaded: bool = Field(description="Its features are in the online store: switching is one step.")


class VersionsResponse(api._Model):
    pinned: bool = Field(description="The server serves one tag (--model) and never switches.")
    versions: list[VersionInfo] = Field(description="Newest first.")


class SwitchRequest(api._Strict):
    version: api.Id = Field(description="A published version (as in GET /model/versions).")


class _Service(Protocol):
    settings: Settings
    store: OnlineStore
    models: ModelHolder

    def loaded(self) -> Loaded: ...


def _service() -> _Service:
    service: _Service = bentoml.get_current_service()
    return service


def _checked_ids(values: list[str] | None, *, name: str, limit: int) -> list[str]:
    if not values:
        raise RequestError(400, "required", loc=["query", name])
    if len(values) > limit:
        raise RequestError(400, f"at most {limit} per request, got {len(values)}", loc=["query", name])
    for i, value in enumerate(values):
        problem = S.id_problem(value)
        if problem is not None:
            raise RequestError(400, problem, loc=["query", name, i])
    return values


def _details(loaded: Loaded, item_ids: list[str]) -> list[ItemDetails]:
    recommender = loaded.recommender
    known = [i for i in item_ids if recommender.has_item(i)]
    described = dict(zip(known, recommender.describe(known), strict=True))
    unknown = {"title": None, "description": None, "category": None, "price": None}
    return [
        ItemDetails(known=True, **described[i])
        if i in described
        else ItemDetails(item_id=i, known=False, **unknown)
        for i in item_ids
    ]


# --- the page ---------------------------------------------------------------------------------------


@router.get("/ui", include_in_schema=False)
@router.get("/ui/", include_in_schema=False)
async def page() -> Response:
    return FileResponse(UI_DIR / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in ASSETS:
        return RequestError(404, f"no such file {name!r}", loc=["path"], kind="not_found").response()
    return FileResponse(UI_DIR / name, media_type=ASSETS[name], headers=HEADERS)


# --- read-only JSON ---------------------------------------------------------------------------------

NOT_LOADED: dict[int | str, dict[str, Any]] = {
    503: {"model": api.Error, "description": "No model loaded yet, or the store did not answer."}
}
BAD: dict[int | str, dict[str, Any]] = {
    400: {"model": api.Error, "description": "A missing or malformed query parameter, named."}
}


@router.get(
    "/items",
    response_model=ItemsResponse,
    responses={**BAD, **NOT_LOADED},
    summary=f"Catalogue fields of up to {MAX_ITEMS} items (repeat item_id); unknown items say known: false.",
)
async def items(item_id: list[str] | None = Query(default=None)) -> Any:
    try:
        item_ids = _checked_ids(item_id, name="item_id", limit=MAX_ITEMS)
        loaded = _service().loaded()
    except RequestError as err:
        return err.response()
    return ItemsResponse(model_version=loaded.version, items=_details(loaded, item_ids))


@router.get(
    "/history",
    response_model=HistoryResponse,
    responses={**BAD, **NOT_LOADED},
    summary="A user's state in the online store: recent items (newest first), event counts, items seen.",
)
async def history(user_id: list[str] | None = Query(default=None)) -> Any:
    from feature_store import definitions as D
    from feature_store.record import StoreUnavailable

    service = _service()
    try:
        (user,) = _checked_ids(user_id, name="user_id", limit=1)
        loaded = service.loaded()
        try:
            (record,) = await anyio.to_thread.run_sync(
                lambda: service.store.get_records([user], version=loaded.version)
            )
        except StoreUnavailable as err:
            raise RequestError(503, str(err), kind="unavailable") from err
    except RequestError as err:
        return err.response()
    record = record or {}
    recent = list(dict.fromkeys(reversed(record.get(D.LAST_ITEMS) or [])))  # newest first, once each
    return HistoryResponse(
        user_id=user,
        model_version=loaded.version,
        known=bool(record.get(D.N_EVENTS)),
        n_events=int(record.get(D.N_EVENTS) or 0),
        last_ts=record.get(D.LAST_TS),
        events=dict(record.get(D.EVENTS) or {}),
        recent=_details(loaded, recent),
        seen_item_ids=list(record.get(D.SEEN) or []),
    )


@router.get(
    "/model/details",
    response_model=ModelDetails,
    responses=NOT_LOADED,
    summary="The served model's catalogue size, categories, item-to-item sources and feature importance.",
)
async def model_details() -> Any:
    try:
        loaded = _service().loaded()
    except RequestError as err:
        return err.response()
    recommender = loaded.recommender
    return ModelDetails(
        version=loaded.version,
        n_items=recommender.n_items(),
        categories=sorted(recommender.categories()),
        similar_sources=list(recommender.similar_sources()),
        importance_type="gain",
        feature_importance=[
            FeatureImportance(feature=name, importance=value)
            for name, value in recommender.feature_importance().items()
        ],
    )


@router.get(
    "/model/versions",
    response_model=VersionsResponse,
    summary="Every published version, newest first: which is current, served, and has its features loaded.",
)
async def model_versions() -> Any:
    from recsys.pipeline import registry

    service = _service()

    def listed() -> tuple[list[registry.ModelVersion], str | None, list[str]]:
        versions = registry.list_versions()
        try:
            current = registry.current().tag if versions else None
        except registry.RegistryError:  # the pointer names a version deleted by hand
            current = None
        return versions, current, service.store.versions()

    versions, current, loaded_features = await anyio.to_thread.run_sync(listed)
    served = service.models.current.tag if service.models.current else None
    return VersionsResponse(
        pinned=service.models.pinned_tag is not None,
        versions=[
            VersionInfo(
                tag=v.tag,
                version=v.version,
                created_at=str(v.metadata.get("created_at") or v.created_at),
                data_fingerprint=v.metadata.get("data_fingerprint"),
                metrics=dict(v.metadata.get("metrics") or {}),
                current=v.tag == current,
                served=v.tag == served,
                features_loaded=v.version in loaded_features,
            )
            for v in reversed(versions)
        ],
    )


# --- admin ------------------------------------------------------------------------------------------


def _parse_switch(body: bytes) -> SwitchRequest:
    try:
        return SwitchRequest.model_validate_json(body or b"{}")
    except ValidationError as err:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in err.errors()]
        loc = detail[0]["loc"] if detail else ["body"]
        raise RequestError(400, field_message({"detail": detail}), loc=loc or ["body"]) from err


@router.post(
    "/admin/switch",
    response_model=api.ReloadResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SwitchRequest.model_json_schema()}},
        }
    },
    responses={
        400: {"model": api.Error, "description": "The body is not a SwitchRequest."},
        401: {"model": api.Error, "description": "Missing or wrong admin token."},
        403: {"model": api.Error, "description": "Admin actions are disabled (no RECSYS_ADMIN_TOKEN set)."},
        404: {"model": api.Error, "description": "No such published version."},
        409: {"model": api.Error, "description": "The server is pinned to one tag (--model)."},
        503: {"model": api.Error, "description": "Its features or the model could not be loaded."},
    },
    summary="Make a published version current, with its features, and swap to it (admin token required).",
)
async def admin_switch(request: Request, authorization: str | None = Header(default=None)) -> Any:
    from recsys.pipeline import publish, registry

    service = _service()
    try:
        check_admin(authorization, service.settings.admin_token, action="switch")
        wanted = _parse_switch(await request.body())
        if service.models.pinned_tag is not None:
            raise RequestError(
                409, f"this server serves {service.models.pinned_tag} only (--model)", kind="conflict"
            )
        tag = f"{registry.MODEL_NAME}:{wanted.version}"

        def run() -> tuple[str | None, str, bool]:
            if wanted.version not in {
                v.version for v in registry.list_versions()
            }:  # any string: no tag parse
                raise RequestError(
                    404, f"no published version {wanted.version!r}", loc=["version"], kind="not_found"
                )
            try:
                publish.switch(tag, store_url=service.settings.store_url or default_store_url())
            except registry.RegistryError as exc:  # deleted meanwhile
                raise RequestError(404, str(exc), loc=["version"], kind="not_found") from exc
            except publish.PublishError as exc:
                raise RequestError(503, str(exc), kind="unavailable") from exc
            try:
                return service.models.refresh()
            except Exception as exc:
                raise RequestError(503, f"{tag} is current but did not load here: {exc}") from exc

        previous, current, swapped = await anyio.to_thread.run_sync(run)
    except RequestError as err:
        return err.response()
    return api.ReloadResponse(previous=previous, current=current, swapped=swapped)
