"""HTTP plumbing of the service: a ``RequestError`` becomes its JSON error response, and bearer
tokens are read one way for every endpoint that needs one (admin, and ``/events`` when
``$RECSYS_EVENTS_TOKEN`` is set)."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec

import bentoml
from starlette.responses import JSONResponse

from serving import schemas as api

P = ParamSpec("P")


class RequestError(Exception):
    """A request the service cannot answer: becomes a 4xx (or 503) ``schemas.Error`` response."""

    def __init__(self, status: int, message: str, *, loc: Sequence[str | int] = (), kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.loc = list(loc)
        self.kind = kind or "invalid"

    def response(self) -> JSONResponse:
        detail = [api.ErrorDetail(loc=self.loc, msg=self.message, type=self.kind)] if self.loc else []
        where = ".".join(map(str, self.loc))
        error = f"{where}: {self.message}" if where else self.message
        return JSONResponse(api.Error(error=error, detail=detail).model_dump(), status_code=self.status)


def answers(
    func: Callable[P, Awaitable[Any]],
) -> Callable[P, Awaitable[Any]]:
    """Turn a ``RequestError`` raised by an endpoint into its JSON error response."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            return await func(*args, **kwargs)
        except RequestError as err:
            context = kwargs.get("ctx")
            if isinstance(context, bentoml.Context):  # BentoML sets the status from it, not the response
                context.response.status_code = err.status
            return err.response()

    return wrapper


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``.

    The scheme is case-insensitive (RFC 7235) and whitespace around the parts is tolerated; a bare
    token, another scheme or anything after the token is no bearer token.

    >>> bearer_token("Bearer abc"), bearer_token("  bearer   abc "), bearer_token("BEARER abc")
    ('abc', 'abc', 'abc')
    >>> bearer_token("abc"), bearer_token("Basic abc"), bearer_token("Bearer"), bearer_token(None)
    (None, None, None, None)
    """
    parts = (authorization or "").split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def check_token(authorization: str | None, token: str, *, name: str) -> None:
    """401 unless the header carries ``token`` as a bearer token (compared in constant time)."""
    given = bearer_token(authorization)
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        raise RequestError(
            401, f"missing or wrong {name} token", loc=["header", "authorization"], kind="unauthorized"
        )


def check_admin(authorization: str | None, token: str | None, *, action: str) -> None:
    """403 when no admin token is configured (``action`` is then disabled), 401 unless it was given."""
    if token is None:
        raise RequestError(403, f"admin {action} is disabled: set RECSYS_ADMIN_TOKEN", kind="forbidden")
    check_token(authorization, token, name="admin")
