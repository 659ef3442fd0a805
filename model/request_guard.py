"""ASGI middlewares of the serving API. ``RequestGuard`` refuses, before anything parses the body,
bodies over a byte limit (413) and POSTs to the API that are not uncompressed UTF-8 JSON (415).
``RequestTimeout`` answers 504 to a request with no answer under way after ``timeout`` seconds.

A declared ``Content-Length`` over the limit is refused without reading a byte. A chunked body
(no ``Content-Length``) is read here up to the limit: one byte more and it is refused, else it is
handed on whole. Starlette's ``Request.body()`` (what BentoML's JSON parsing awaits) has no limit of
its own, so without this a 60 MB body is read and parsed in full before the row limit rejects it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_MEDIA_TYPE = "application/json"


class RequestGuard:
    """Wraps ``app``: bodies over ``max_bytes`` get 413; POSTs to ``json_paths`` must be JSON (415)."""

    def __init__(self, app: ASGIApp, max_bytes: int, json_paths: tuple[str, ...] = ()) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes
        self.json_paths = frozenset(json_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        if scope.get("method") == "POST" and scope.get("path") in self.json_paths:
            problem = media_type_problem(headers.get(b"content-type"), headers.get(b"content-encoding"))
            if problem:
                await refuse(send, 415, problem)
                return
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await refuse(send, 413, self._too_large(f"{int(length)} bytes"))
                return
            await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:  # no body at all
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await refuse(send, 413, self._too_large(f"more than {self.max_bytes} bytes (chunked)"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _too_large(self, size: str) -> str:
        return (
            f"request body of {size} is over the limit of {self.max_bytes} bytes: "
            "split the rows into smaller requests"
        )


def media_type_problem(content_type: bytes | None, content_encoding: bytes | None) -> str | None:
    """Why a body with these headers is not JSON the API can read, or None (no Content-Type is JSON)."""
    if content_encoding is not None and content_encoding.strip().lower() not in (b"", b"identity"):
        return (
            f"Content-Encoding {content_encoding.decode('latin-1')!r} is not accepted: "
            "send the JSON body uncompressed"
        )
    if content_type is None:
        return None
    media, _, params = content_type.decode("latin-1").partition(";")
    if media.strip().lower() != JSON_MEDIA_TYPE:
        return f"Content-Type {media.strip()!r} is not accepted: send {JSON_MEDIA_TYPE} (a JSON object)"
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"charset {value.strip()!r} is not accepted: send the JSON body as UTF-8"
    return None


async def refuse(send: Send, status: int, message: str) -> None:
    """Answer ``status`` with ``{"error": message}`` and close the connection (the body is unread)."""
    await _send_json(send, status, {"error": message}, close=True)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


class RequestTimeout:
    """Wraps ``app``: a request that has not started its answer ``timeout`` seconds after it came in
    gets 504. BentoML's own ``traffic.timeout`` middleware (bentoml 1.4, ``TimeoutMiddleware``), which
    ``model.service`` replaces with this one, never cancels its timer: every request leaves a timer,
    a future and a context in the event loop for ``timeout`` seconds (60 s of requests: ~300k
    objects at 1,000 requests/s), and each full garbage collection scanned them all, a stall of
    tens of milliseconds that grew with the load. This one cancels the timer when the request ends.
    Same signature and answer as BentoML's."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, started)

        async def answer(message: Message) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, answer))
        task.add_done_callback(lambda _: _settle(started))
        try:
            await started
        except TimeoutError:
            if task.cancel():
                await _send_json(
                    send, 504, {"error": f"Not able to process the request in {self.timeout} seconds"}
                )
                return
        finally:
            timer.cancel()
        await task


def _settle(started: asyncio.Future[None]) -> None:
    """The app ended (maybe without an answer): nothing more to wait for."""
    if not started.done():
        started.set_result(None)


def _expire(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_exception(TimeoutError())


async def _send_json(send: Send, status: int, payload: object, close: bool = False) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", JSON_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + ([(b"connection", b"close")] if close else []),
        }
    )
    await send({"type": "http.response.body", "body": body})
