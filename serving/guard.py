"""ASGI middleware that turns every malformed request to the JSON API into a clear 4xx.

BentoML already answers a body that fails the pydantic model with 400 and the list of errors. This
guard adds what happens before that, and makes the message readable:

- a body that is not JSON by its ``Content-Type`` (forms, multipart, pickle) gets 415, instead of
  reaching BentoML's form parser, which can fail with a 500 on a malformed multipart body;
- a body over ``max_body`` bytes gets 413, whether or not it declares a ``Content-Length``;
- BentoML's 400 validation responses get an ``error`` that names every offending field
  (``"n: Input should be less than or equal to 500"``), keeping the structured ``detail`` list.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_ROUTES = ("/recommend", "/recommend/batch", "/similar_items", "/explain", "/events")
MAX_BODY = 1 << 20  # 1 MiB: far above the largest valid request (1000 ids of 256 characters)


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


async def _reply(send: Send, status: int, error: str, loc: list[str]) -> None:
    body = json.dumps({"error": error, "detail": [{"loc": loc, "msg": error, "type": "invalid"}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app: ASGIApp, *, routes: Iterable[str] = API_ROUTES, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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

        await self.app(scope, replay, _RewriteValidation(send))


class _RewriteValidation:
    """Buffers a 400 response and rewrites its ``error`` to name the fields; passes others through."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] == 400:
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(self.chunks)
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("detail"), list) and "detail" in data:
                data["error"] = field_message(data)
                body = json.dumps(data).encode()
            headers = [(k, v) for k, v in self.start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await self.send({**self.start, "headers": headers})
            await self.send({"type": "http.response.body", "body": body})
            return
        await self.send(message)
