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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

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


class ExplainRequest(_Strict):
    user_id: Id
    item_id: Id
    top: int = Field(5, ge=1, le=50, description="How many features to return, largest |contribution| first.")


class EventRequest(_Strict):
    user_id: Id
    item_id: Id
    event: Id | None = Field(None, description="Event type (e.g. view, cart, purchase); the model's types.")
    timestamp: int | None = Field(
        None, ge=0, le=2**53, description="Unix seconds; the server's clock when omitted."
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
