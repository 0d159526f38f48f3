"""Request and response models of the HTTP API. They are the OpenAPI spec the service publishes.

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

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

MAX_N = 500
MAX_LIST = 1000  # exclude lists, batch users
MAX_CONTEXT = 100
MAX_ID_LENGTH = 256

# An id is any non-blank string of bounded length: catalogue ids are opaque to the service.
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"\S")]
Category = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"\S")]
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]
N = Annotated[int, Field(ge=1, le=MAX_N, description=f"How many items to return (1..{MAX_N}).")]


class _Strict(BaseModel):
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
    user_ids: list[Id] = Field(min_length=1, max_length=MAX_LIST, description="Users to recommend for.")
    n: N = 10
    exclude_seen: bool = True
    filters: Filters | None = None


class SimilarItemsRequest(_Strict):
    item_id: Id
    n: N = 10


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


class Item(BaseModel):
    item_id: str
    score: float
    title: str
    sources: list[str] = Field(description="Candidate sources that produced the item (e.g. als, popular).")


class RecommendResponse(BaseModel):
    user_id: str
    model_version: str
    items: list[Item]


class UserItems(BaseModel):
    user_id: str
    items: list[Item]


class BatchRecommendResponse(BaseModel):
    model_version: str
    results: list[UserItems]


class SimilarItemsResponse(BaseModel):
    item_id: str
    model_version: str
    items: list[Item]


class Contribution(BaseModel):
    feature: str
    contribution: float


class ExplainResponse(BaseModel):
    user_id: str
    item_id: str
    model_version: str
    contributions: list[Contribution]


class EventResponse(BaseModel):
    user_id: str
    item_id: str
    event: str | None
    timestamp: int
    n_events: int = Field(description="The user's event count after this event.")


class ModelInfo(BaseModel):
    tag: str
    version: str
    created_at: str
    data_fingerprint: str | None
    metrics: dict[str, Any]
    loaded_at: str


class ReloadResponse(BaseModel):
    previous: str | None
    current: str
    swapped: bool


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Error(BaseModel):
    """The body of every 4xx: ``error`` summarises, ``detail`` names each offending field."""

    error: str
    detail: list[ErrorDetail] = Field(default_factory=list)
