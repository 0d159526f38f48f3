"""ASGI middleware that turns every malformed request to the JSON API into a clear 4xx.

BentoML already answers a body that fails the pydantic model with 400 and the list of errors. This
guard adds what happens before that, and makes the message readable:

- a body that is not JSON by its ``Content-Type`` (forms, multipart, pickle) gets 415, instead of
  reaching BentoML's form parser, which can fail with a 500 on a malformed multipart body;
- a body over ``max_body`` bytes gets 413, whether or not it declares a ``Content-Length``;
- BentoML's 400 validation responses get an ``error`` that names every offending field
  (``"n: Input should be less than or equal to 500"``), keeping the structured ``detail`` list.

Every answer of its own is a ``schemas.Error``. It also completes the OpenAPI spec BentoML serves
(``/docs.json``, by ``schemas.openapi``), so that the spec documents these answers too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from serving import schemas as api

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_ROUTES = tuple(api.ROUTES)
MAX_BODY = api.MAX_BODY
SPEC_PATH = "/docs.json"


def _loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def field_message(body: dict[str, Any]) -> str:
    """One line naming each field of a pydantic-style error body.

    >>> field_message({"detail": [{"loc": ["filters", "categories", 0], "msg": "Input should be a string"},
    ...                           {"loc": [], "msg": "Invalid JSON"}]})
    'invalid request: filters.categories[0]: Input should be a string; body: Invalid JSON'
    """
    parts = [f"{_loc(d.get('loc') or []) or 'body'}: {d.get('msg', '')}" for d in body.get("detail") or []]
    return "invalid request: " + "; ".join(parts) if parts else str(body.get("error", "invalid request"))


def _name_fields(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        body["error"] = field_message(body)
    return body


async def _reply(send: Send, status: int, error: str, loc: list[str | int]) -> None:
    detail = [api.ErrorDetail(loc=loc, msg=error, type="invalid")]
    body = api.Error(error=error, detail=detail).model_dump_json().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app: ASGIApp, *, routes: Iterable[str] = API_ROUTES, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == SPEC_PATH:
            await self.app(scope, receive, _RewriteJSON(send, status=200, rewrite=api.openapi))
            return
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if media not in (b"application/json", b""):
            await _reply(
                send,
                415,
                f"unsupported Content-Type {media.decode('latin-1')!r}: send application/json",
                ["header", "content-type"],
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _reply(send, 413, f"request body over {self.max_body} bytes", ["body"])
            return

        # Read the body here (bounded) and replay it, so an endless chunked body cannot get through.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _reply(send, 413, f"request body over {self.max_body} bytes", ["body"])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, _RewriteJSON(send, status=400, rewrite=_name_fields))


class _RewriteJSON:
    """Buffers a JSON response of one status and sends ``rewrite`` of it; passes others through."""

    def __init__(self, send: Send, *, status: int, rewrite: Callable[[Any], Any]) -> None:
        self.send = send
        self.status = status
        self.rewrite = rewrite
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] == self.status:
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(self.chunks)
            with contextlib.suppress(ValueError):  # not JSON: sent as it came
                body = json.dumps(self.rewrite(json.loads(body))).encode()
            headers = [(k, v) for k, v in self.start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await self.send({**self.start, "headers": headers})
            await self.send({"type": "http.response.body", "body": body})
            return
        await self.send(message)
