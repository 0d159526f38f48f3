# mypy: disallow-untyped-decorators=False
"""The BentoML service: top-N recommendations for e-commerce backends over HTTP.

Start it with ``recsys serve`` (or ``bentoml serve serving.service:Recsys``). It serves the current
``recsys-bundle`` version of the BentoML model store (``$BENTOML_HOME``), or ``$RECSYS_MODEL_TAG``,
and follows the registry's current pointer, swapping models without dropping a request
(``serving.runtime``). User histories come from the online feature store
(``$RECSYS_ONLINE_STORE_URL``, SQLite in the BentoML home by default, or ``redis://...``), from its
version named after the served bundle, so a swap changes model and features together.

The service is thin: it validates requests (``serving.schemas``), reads the user's record from the
online store and calls the loaded ``recsys.pipeline.recommender.Recommender``. It imports neither
torch nor transformers: item embeddings were computed offline and live in the bundle.

Endpoints: ``POST /recommend``, ``/recommend/batch``, ``/similar_items``, ``/explain``, ``/events``
(``Authorization: Bearer $RECSYS_EVENTS_TOKEN`` when that is set; timestamps at most
``$RECSYS_EVENTS_MAX_SKEW_S``, default 300, seconds ahead of the server's clock); ``GET /model``;
``POST /admin/reload`` and ``/admin/switch`` (``Authorization: Bearer $RECSYS_ADMIN_TOKEN``); the
inspector page at ``/ui`` with the JSON it reads (``serving.inspector``); and BentoML's
``/livez``, ``/readyz`` (503 until a model is loaded, or while the online store does not answer),
``/metrics`` and ``/docs.json`` (OpenAPI). Every bad request gets a 4xx whose ``error`` names the
offending field (``serving.guard``); a store that does not answer in time gets a 503 naming it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio.to_thread
import bentoml
from fastapi import FastAPI, Header
from starlette.exceptions import HTTPException
from starlette.responses import Response

from serving import inspector
from serving import schemas as api
from serving.guard import API_ROUTES, RequestGuard
from serving.http import RequestError, answers, check_admin, check_token
from serving.runtime import (
    ENV_EVENTS_MAX_SKEW,
    ENV_WORKERS,
    Loaded,
    ModelHolder,
    Settings,
    bundle_loader,
    default_store_url,
    die_with_parent,
    server_pid,
)

if TYPE_CHECKING:
    from feature_store.online import OnlineStore
    from recsys.pipeline.recommender import Recommendation

logger = logging.getLogger("recsys.serving")
STORE_READERS = 16  # /recommend store reads in flight per worker, each bounded by the store's timeout
EVENT_WRITERS = 4  # /events store writes in flight per worker: a pool of their own, never behind scoring
T = TypeVar("T")


class _QuietClientErrors(logging.Filter):
    """BentoML logs a traceback for every request body that fails validation; those are client
    errors, already answered with a 400 and visible in the access log, so drop them."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        return not (record.exc_info and isinstance(record.exc_info[1], ValidationError))


logging.getLogger("bentoml._internal.server.http_app").addFilter(_QuietClientErrors())


def _items(recommendations: Sequence[Recommendation]) -> list[api.Item]:
    return [
        api.Item.model_construct(
            item_id=r.item_id, score=float(r.score), title=r.title, sources=list(r.sources)
        )
        for r in recommendations
        if math.isfinite(r.score)
    ]


@contextmanager
def _store_answers() -> Iterator[None]:
    """A store that does not answer in time (``StoreUnavailable``) is a 503 naming it, not a 500."""
    from feature_store.record import StoreUnavailable  # lazy: the arbiter process imports this module too

    try:
        yield
    except StoreUnavailable as err:
        raise RequestError(503, str(err), kind="unavailable") from err


admin = FastAPI(title="recsys admin", docs_url=None, redoc_url=None, openapi_url=None)
admin.include_router(inspector.router)  # the page at /ui and the read-only JSON it reads


@admin.get(
    "/model",
    response_model=api.ModelInfo,
    responses={503: {"model": api.Error, "description": "No model loaded yet."}},
    summary="The model version being served: tag, created_at, metrics and data fingerprint.",
)
async def model_info() -> Any:
    service: Recsys = bentoml.get_current_service()
    try:
        loaded = service.loaded()
    except RequestError as err:
        return err.response()
    return api.ModelInfo(
        tag=loaded.tag,
        version=loaded.version,
        created_at=str(loaded.metadata.get("created_at") or loaded.created_at),
        data_fingerprint=loaded.metadata.get("data_fingerprint"),
        metrics=dict(loaded.metadata.get("metrics") or {}),
        loaded_at=loaded.loaded_at,
    )


@admin.post(
    "/admin/reload",
    response_model=api.ReloadResponse,
    responses={
        401: {"model": api.Error, "description": "Missing or wrong admin token."},
        403: {"model": api.Error, "description": "Reload is disabled (no RECSYS_ADMIN_TOKEN set)."},
        503: {"model": api.Error, "description": "No model could be loaded."},
    },
    summary="Load the registry's current version now and swap to it atomically (admin token required).",
)
async def admin_reload(authorization: str | None = Header(default=None)) -> Any:
    service: Recsys = bentoml.get_current_service()
    try:
        check_admin(authorization, service.settings.admin_token, action="reload")
        try:
            previous, current, swapped = await anyio.to_thread.run_sync(service.models.refresh)
        except Exception as exc:
            raise RequestError(503, f"reload failed, still serving the previous model: {exc}") from exc
    except RequestError as err:
        return err.response()
    return api.ReloadResponse(previous=previous, current=current, swapped=swapped)


@bentoml.service(
    name="recsys",
    workers=int(os.environ.get(ENV_WORKERS, "1")),
    traffic={"timeout": 30},
    metrics={"enabled": True},
)
@bentoml.asgi_app(admin, path="/")
class Recsys:
    """Personalised top-N recommendations, similar items, explanations and event ingestion."""

    def __init__(self) -> None:
        from feature_store.online import open_store

        die_with_parent(parent_pid=server_pid())  # BentoML runs __init__ in the worker's main thread
        self.settings = Settings.from_env()
        self.store: OnlineStore = open_store(self.settings.store_url or default_store_url())
        self.models = ModelHolder(
            pinned_tag=self.settings.model_tag,
            poll_seconds=self.settings.poll_seconds,
            store=self.store,
            load=bundle_loader(self.settings),
        )
        self.models.start()
        self._limiter = anyio.CapacityLimiter(self.settings.threads)
        self._store_reads = anyio.CapacityLimiter(STORE_READERS)
        self._event_writes = anyio.CapacityLimiter(EVENT_WRITERS)

    def __is_ready__(self) -> bool:
        """Ready once a model is loaded, and while the online store answers.

        BentoML calls this in a thread, and its own 503 says only that it returned False, so a
        store that does not answer raises the 503 itself, with the reason.
        """
        if self.models.current is None:
            return False
        from feature_store.record import StoreUnavailable  # lazy, as in _store_answers

        try:
            self.store.version()
        except StoreUnavailable as err:
            raise HTTPException(status_code=503, detail=f"not ready: {err}") from err
        return True

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.models.stop()
        self.store.close()

    # --- helpers ------------------------------------------------------------------------------------

    def loaded(self) -> Loaded:
        loaded = self.models.current
        if loaded is None:
            reason = self.models.last_error or "loading"
            raise RequestError(503, f"no model loaded yet ({reason})", kind="unavailable")
        return loaded

    def _users(
        self, user_ids: Sequence[str], version: str | None
    ) -> tuple[list[list[str]], list[dict[str, Any]]]:
        """Each user's history and record from the online store's ``version`` (the served bundle's:
        its features), as plain records, not Arrow rows: the same states, several times cheaper per
        request. Blocking: call it off the event loop."""
        from feature_store.record import history  # lazy, as in _store_answers

        with _store_answers():
            records = self.store.get_records(list(user_ids), version=version)
        return [history(r) for r in records], records

    @staticmethod
    def _filters(loaded: Loaded, filters: api.Filters | None) -> Any:
        from recsys.pipeline.recommender import Filters

        if filters is None:
            return None
        if filters.categories is not None:
            known = loaded.recommender.categories()
            for i, category in enumerate(filters.categories):
                if category not in known:
                    raise RequestError(
                        400,
                        f"unknown category {category!r} (the model knows {len(known)} categories)",
                        loc=["filters", "categories", i],
                        kind="unknown_category",
                    )
        return Filters(
            categories=tuple(filters.categories) if filters.categories is not None else None,
            exclude_item_ids=tuple(filters.exclude_item_ids),
            price_min=filters.price_min,
            price_max=filters.price_max,
        )

    # --- endpoints ----------------------------------------------------------------------------------
    # Validation runs on the event loop. A single user's /recommend is scored there too: it takes a
    # few milliseconds, and handing the scoring to a thread cost more than blocking the loop for that
    # long (server CPU per request at concurrency 16: 19.9-20.5 ms with the hand-off, 15.8-16.1 ms
    # without, as the loop and the scoring threads fought over the GIL; docs/studies/serving_threads.md).
    # Its online-store read is not: it is one key and mostly waiting, but a stalled store would
    # block the loop, and /livez and /readyz with it, for the store's whole timeout, so it waits in a
    # thread of its own pool. Batches, explanations and similar items run in a small scoring pool, so
    # /livez, /readyz and /metrics answer at once even while a large batch is being scored; a batch
    # also builds and serialises its response there, not on the loop. Events write in a pool of their
    # own: an event never queues behind scoring (benchmarks/events_under_load.py).

    async def _run(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(func, limiter=self._limiter)

    async def _read(
        self, user_ids: Sequence[str], version: str
    ) -> tuple[list[list[str]], list[dict[str, Any]]]:
        """``_users`` off the event loop."""
        return await anyio.to_thread.run_sync(self._users, user_ids, version, limiter=self._store_reads)

    @bentoml.api(route="/recommend", input_spec=api.RecommendRequest, output_spec=api.RecommendResponse)
    @answers
    async def recommend(self, **fields: Any) -> api.RecommendResponse | Response:
        """Top-N items for one user. Unknown users get recent popularity, or the neighbours of
        ``context_item_ids`` when given; each item lists the candidate sources that produced it."""
        request = api.RecommendRequest.model_construct(**fields)
        loaded = self.loaded()
        filters = self._filters(loaded, request.filters)

        (history,), (record,) = await self._read([request.user_id], loaded.version)
        recommendations = loaded.recommender.recommend(
            history,
            n=request.n,
            exclude_seen=request.exclude_seen,
            filters=filters,
            context_item_ids=request.context_item_ids,
            user_features=record,
        )
        items = _items(recommendations)
        return api.RecommendResponse.model_construct(
            user_id=request.user_id, model_version=loaded.version, items=items
        )

    @bentoml.api(
        route="/recommend/batch", input_spec=api.BatchRecommendRequest, output_spec=api.BatchRecommendResponse
    )
    @answers
    async def recommend_batch(self, **fields: Any) -> api.BatchRecommendResponse | Response:
        """Top-N items for many users in one call (e-mail and push campaigns)."""
        request = api.BatchRecommendRequest.model_construct(**fields)
        loaded = self.loaded()
        filters = self._filters(loaded, request.filters)

        def run() -> Response:
            histories, records = self._users(request.user_ids, loaded.version)
            results = loaded.recommender.recommend_batch(  # one call: every user scored in blocks
                histories,
                n=request.n,
                exclude_seen=request.exclude_seen,
                filters=filters,
                user_features=records,
            )
            # The JSON is written here, in the scoring thread, and user by user: one model_dump_json
            # of the whole answer holds the GIL until it returns (up to MAX_BATCH_ITEMS items), and
            # the loop and /events would wait that long; between two users' parts they get the GIL.
            parts = [
                api.UserItems.model_construct(user_id=u, items=_items(r)).model_dump_json()
                for u, r in zip(request.user_ids, results, strict=True)
            ]
            version = json.dumps(loaded.version, ensure_ascii=False)
            body = f'{{"model_version":{version},"results":[{",".join(parts)}]}}'  # BatchRecommendResponse
            return Response(body, media_type="application/json")

        return await self._run(run)

    @bentoml.api(
        route="/similar_items", input_spec=api.SimilarItemsRequest, output_spec=api.SimilarItemsResponse
    )
    @answers
    async def similar_items(self, **fields: Any) -> api.SimilarItemsResponse | Response:
        """Items similar to one item: the neighbours of the text, co-occurrence, ALS and item-kNN sources,
        merged (``TwoStage.neighbours``), or one ``source``'s alone. Unknown item: 404."""
        request = api.SimilarItemsRequest.model_construct(**fields)
        loaded = self.loaded()
        if not loaded.recommender.has_item(request.item_id):
            raise RequestError(404, f"unknown item {request.item_id!r}", loc=["item_id"], kind="not_found")
        sources = loaded.recommender.similar_sources()
        if request.source is not None and request.source not in sources:
            known = ", ".join(sources) or "none"
            raise RequestError(
                400, f"no item-to-item source {request.source!r} (this model has: {known})", loc=["source"]
            )
        similar = await self._run(
            lambda: loaded.recommender.similar_items(request.item_id, n=request.n, source=request.source)
        )
        return api.SimilarItemsResponse.model_construct(
            item_id=request.item_id, model_version=loaded.version, items=_items(similar)
        )

    @bentoml.api(route="/explain", input_spec=api.ExplainRequest, output_spec=api.ExplainResponse)
    @answers
    async def explain(self, **fields: Any) -> api.ExplainResponse | Response:
        """The ranker's top contributing features for one (user, item) pair. Unknown item: 404."""
        request = api.ExplainRequest.model_construct(**fields)
        loaded = self.loaded()
        if not loaded.recommender.has_item(request.item_id):
            raise RequestError(404, f"unknown item {request.item_id!r}", loc=["item_id"], kind="not_found")

        def run() -> list[tuple[str, float]]:
            (history,), (record,) = self._users([request.user_id], loaded.version)
            return loaded.recommender.explain(history, request.item_id, top=request.top, user_features=record)

        contributions = await self._run(run)
        return api.ExplainResponse.model_construct(
            user_id=request.user_id,
            item_id=request.item_id,
            model_version=loaded.version,
            contributions=[
                api.Contribution.model_construct(feature=name, contribution=float(value))
                for name, value in contributions
            ],
        )

    def _check_event(self, request: api.EventRequest, authorization: str | None, now: float) -> None:
        if self.settings.events_token is not None:
            check_token(authorization, self.settings.events_token, name="events")
        skew = self.settings.events_max_skew_s
        if request.timestamp is not None and request.timestamp > now + skew:
            raise RequestError(
                400,
                f"{request.timestamp} is more than {skew:g} s ahead of the server's clock ({int(now)}); "
                f"the bound is {ENV_EVENTS_MAX_SKEW}",
                loc=["timestamp"],
                kind="future_timestamp",
            )

    @bentoml.api(route="/events", input_spec=api.EventRequest, output_spec=api.EventResponse)
    @answers
    async def events(self, ctx: bentoml.Context, **fields: Any) -> api.EventResponse | Response:
        """Record one user event in the online store; the user's next ``/recommend`` reflects it.
        Items the served model does not know yet (new catalogue items) are recorded too."""
        request = api.EventRequest.model_construct(**fields)
        now = time.time()
        self._check_event(request, ctx.request.headers.get("authorization"), now)
        timestamp = int(now) if request.timestamp is None else request.timestamp

        def run() -> dict[str, Any]:
            with _store_answers():
                self.store.apply_event(request.user_id, request.item_id, request.event, timestamp)
            loaded = self.models.current  # the event reached every version; report the served one's
            return self._users([request.user_id], loaded.version if loaded else None)[1][0]

        record = await anyio.to_thread.run_sync(run, limiter=self._event_writes)
        return api.EventResponse.model_construct(
            user_id=request.user_id,
            item_id=request.item_id,
            event=request.event,
            timestamp=timestamp,
            n_events=int(record.get("n_events") or 0),
        )


cast(Any, Recsys).add_asgi_middleware(RequestGuard, routes=API_ROUTES)  # the decorator made it a Service
