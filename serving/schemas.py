"""Request and response models of the HTTP API. They are the OpenAPI spec the service publishes
(``/docs.json``), completed by ``openapi`` where BentoML's generated spec falls short.

Every request model is strict (``"10"`` is not a number, ``1`` is not a string) and forbids unknown
fields, so a typo in a field name is a 400 naming that field rather than a silently ignored option.
Lists are bounded so that one request cannot ask for unbounded work.

>>> RecommendRequest.model_validate({"user_id": "u1"}).n
10
>>> from pydantic import ValidationError
>>> try:
...     RecommendRequest.model_validate({"user_id": "u1", "n": 0})
... except ValidationError as err:
...     print(err.errors()[0]["loc"], err.errors()[0]["type"])
('n',) greater_than_equal
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from recsys.data import schema as S

REF = "#/components/schemas/{model}"

MAX_N = 500
MAX_LIST = 1000  # exclude lists
# What one /recommend/batch may ask for, so that no batch holds a scoring thread for long: scoring
# costs about 5-6 ms per user and the JSON about 15 us per item (demo bundle, in process, 2 busy
# cores; 1000 users took 5-7 s). The largest batch, 250 users at n=100, took 1.9-2.6 s alone, and
# 2.6-3.2 s (median; 5.7 s at most) with two clients sending it back to back through the server,
# against its 30 s timeout (benchmarks/events_under_load.py; docs/RESULTS.md, Serving).
MAX_BATCH_USERS = 250
MAX_BATCH_ITEMS = 25_000  # users x n
MAX_CONTEXT = 100
MAX_ID_LENGTH = S.ID_MAX_LENGTH
MAX_BODY = 1 << 20  # bytes, 1 MiB: far above the largest valid request (1000 ids of 256 characters)


def _id_rule(value: str) -> str:
    problem = S.id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# Ids are opaque to the service, but follow the one rule of the data contract (schema.id_problem):
# 1..256 characters, no control character, no surrounding whitespace. A file id that passes
# ``recsys validate`` is accepted here, and nothing else is. The pattern documents it in the spec.
Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(_id_rule),
    Field(json_schema_extra={"pattern": S.ID_PATTERN}),
]
Category = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"\S")]
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]
N = Annotated[int, Field(ge=1, le=MAX_N, description=f"How many items to return (1..{MAX_N}).")]


def _nullable(schema: dict[str, Any]) -> None:
    """Write each ``X | None`` field the OpenAPI 3.0 way (the version BentoML declares): ``X`` with
    ``nullable: true``. Pydantic writes ``anyOf: [X, {"type": "null"}]``, and BentoML keeps only the
    first branch of a request or response field's ``anyOf``, so the null would silently vanish."""
    null = {"type": "null"}
    for field in schema.get("properties", {}).values():
        branches = field.get("anyOf", [])
        if len(branches) == 2 and null in branches:
            del field["anyOf"]
            (inner,) = [branch for branch in branches if branch != null]
            field.update({"allOf": [inner]} if "$ref" in inner else inner)  # no siblings beside a $ref
            field["nullable"] = True


class _Model(BaseModel):
    model_config = ConfigDict(json_schema_extra=_nullable)


class _Strict(_Model):
    model_config = ConfigDict(strict=True, extra="forbid")


class Filters(_Strict):
    """Business rules applied to the candidates before ranking."""

    categories: list[Category] | None = Field(
        None, min_length=1, max_length=100, description="Only items in one of these categories."
    )
    exclude_item_ids: list[Id] = Field(
        default_factory=list, max_length=MAX_LIST, description="Never return these items."
    )
    price_min: Price | None = Field(None, description="Only items with price >= price_min.")
    price_max: Price | None = Field(None, description="Only items with price <= price_max.")

    @model_validator(mode="after")
    def _price_range(self) -> Self:
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError(f"price_min ({self.price_min}) is greater than price_max ({self.price_max})")
        return self


class RecommendRequest(_Strict):
    user_id: Id = Field(description="The user; unknown users get popularity or context-based results.")
    n: N = 10
    exclude_seen: bool = Field(True, description="Leave out items the user has interacted with.")
    filters: Filters | None = None
    context_item_ids: list[Id] = Field(
        default_factory=list,
        max_length=MAX_CONTEXT,
        description="The current session (e.g. the product page being viewed), oldest first.",
    )


class BatchRecommendRequest(_Strict):
    """Top-N for many users: at most ``MAX_BATCH_USERS`` users, and ``len(user_ids) * n`` at most
    ``MAX_BATCH_ITEMS``.

    >>> from pydantic import ValidationError
    >>> try:
    ...     BatchRecommendRequest.model_validate({"user_ids": ["u"] * 200, "n": 500})
    ... except ValidationError as err:
    ...     print(err.errors()[0]["loc"])
    ...     for part in err.errors()[0]["msg"].split(": "):
    ...         print(part)
    ('n',)
    Value error, 200 user_ids x n=500 = 100,000 items is over the 25,000 one batch may ask for
    split the users into batches of at most 50 at n=500
    """

    user_ids: list[Id] = Field(
        min_length=1, max_length=MAX_BATCH_USERS, description="Users to recommend for (split larger lists)."
    )
    n: N = Field(10, validate_default=True)
    exclude_seen: bool = True
    filters: Filters | None = None

    @field_validator("n")
    @classmethod
    def _within_budget(cls, n: int, info: ValidationInfo) -> int:
        users = len(info.data.get("user_ids") or ())  # absent when user_ids itself was invalid
        if users * n > MAX_BATCH_ITEMS:
            raise ValueError(
                f"{users} user_ids x n={n} = {users * n:,} items is over the {MAX_BATCH_ITEMS:,} one batch "
                f"may ask for: split the users into batches of at most {MAX_BATCH_ITEMS // n} at n={n}"
            )
        return n


class SimilarItemsRequest(_Strict):
    item_id: Id
    n: N = 10
    source: Id | None = Field(
        None,
        description="One item-to-item source alone (text, cooccurrence, als or itemknn: those the model "
        "has), in its own order and with its own scores; omitted: all of them merged.",
    )


class ExplainRequest(_Strict):
    user_id: Id
    item_id: Id
    top: int = Field(5, ge=1, le=50, description="How many features to return, largest |contribution| first.")


class EventRequest(_Strict):
    user_id: Id
    item_id: Id
    event: Id | None = Field(None, description="Event type (e.g. view, cart, purchase); the model's types.")
    timestamp: int | None = Field(
        None,
        ge=0,
        le=2**53,
        description="Unix seconds; the server's clock when omitted. At most RECSYS_EVENTS_MAX_SKEW_S "
        "(default 300) seconds ahead of the server's clock, else 400.",
    )


class Item(_Model):
    item_id: str
    score: float
    title: str
    sources: list[str] = Field(description="Candidate sources that produced the item (e.g. als, popular).")


class RecommendResponse(_Model):
    user_id: str
    model_version: str
    items: list[Item]


class UserItems(_Model):
    user_id: str
    items: list[Item]


class BatchRecommendResponse(_Model):
    model_version: str
    results: list[UserItems]


class SimilarItemsResponse(_Model):
    item_id: str
    model_version: str
    items: list[Item]


class Contribution(_Model):
    feature: str
    contribution: float


class ExplainResponse(_Model):
    user_id: str
    item_id: str
    model_version: str
    contributions: list[Contribution]


class EventResponse(_Model):
    user_id: str
    item_id: str
    event: str | None
    timestamp: int
    n_events: int = Field(description="The user's event count after this event.")


class ModelInfo(_Model):
    tag: str
    version: str
    created_at: str
    data_fingerprint: str | None
    metrics: dict[str, Any]
    loaded_at: str


class ReloadResponse(_Model):
    previous: str | None
    current: str
    swapped: bool


class ErrorDetail(_Model):
    """One offending part of the request. Validation errors also carry pydantic's ``url``."""

    loc: list[str | int] = Field(description="Where: field names and list indices, or the header.")
    msg: str
    type: str


class Error(_Model):
    """The body of every 4xx and 503: ``error`` summarises, ``detail`` names each offending field."""

    error: str
    detail: list[ErrorDetail]


# --- the OpenAPI spec ---------------------------------------------------------------------------------

UNKNOWN_ITEM = "The item is not in the served model's catalogue."
# What every JSON route may answer besides 200 (and BentoML's own 500), each with an ``Error`` body.
ERRORS = {
    400: "The body is not JSON, or breaks the request model: `detail` names each offending field.",
    413: f"The body is over {MAX_BODY} bytes.",
    415: "The Content-Type is not application/json.",
    503: "No model is loaded yet, or the online feature store did not answer in time.",
}
# The JSON routes (``@bentoml.api``), each with the errors it answers beyond ``ERRORS``.
ROUTES: dict[str, dict[int, str]] = {
    "/recommend": {},
    "/recommend/batch": {},
    "/similar_items": {404: UNKNOWN_ITEM},
    "/explain": {404: UNKNOWN_ITEM},
    "/events": {401: "RECSYS_EVENTS_TOKEN is set and the request has no `Authorization: Bearer` with it."},
}


def openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Complete BentoML's generated spec (the JSON of ``/docs.json``) so that it matches the answers.

    BentoML gives a ``@bentoml.api`` route no way to declare its responses or a required body: it
    documents each with one fixed 400/404/500 whose ``detail`` is a string (here it is a list), and
    knows nothing of the guard's 413 and 415 or of the 503. So, in this one place, every JSON route
    gets a required body and the ``ERRORS`` (plus its own, ``ROUTES``) with the ``Error`` schema,
    and ``/readyz`` its plain-text 503.

    >>> spec = {"paths": {route: {"post": {"requestBody": {}, "responses": {"200": {}, "400": {}}}}
    ...                   for route in ROUTES} | {"/readyz": {"get": {"responses": {"200": {}}}}}}
    >>> explain = openapi(spec)["paths"]["/explain"]["post"]
    >>> explain["requestBody"]["required"], sorted(explain["responses"])
    (True, ['200', '400', '404', '413', '415', '503'])
    >>> explain["responses"]["404"]["content"]["application/json"]["schema"]
    {'$ref': '#/components/schemas/Error'}
    """
    error = Error.model_json_schema(ref_template=REF)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(error.pop("$defs"), Error=error)
    for name in ("InvalidArgument", "NotFound"):  # BentoML's 400 and 404 bodies, replaced below
        schemas.pop(name, None)
    for route, own in ROUTES.items():
        operation = spec["paths"][route]["post"]
        operation["requestBody"]["required"] = True
        responses = {"200": operation["responses"]["200"]}
        for status, description in sorted({**ERRORS, **own}.items()):
            content = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}
            responses[str(status)] = {"description": description, "content": content}
        if "500" in operation["responses"]:
            responses["500"] = operation["responses"]["500"]
        operation["responses"] = responses
    spec["paths"]["/readyz"]["get"]["responses"]["503"] = {
        "description": "Not ready: no model loaded yet, or the online feature store does not answer.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return spec
