"""The column form of a prediction for an all-double model, answered before BentoML's request handling.

A 100-row request spends more of a worker's time in BentoML's request path than in the model:
its parse of the body into the API's input model, then a scan of the 3,000 values' Python types,
``api_endpoint`` and its routing, context and exception layers (benchmarks/results/levers.md,
round 5). ``ColumnPath``, an ASGI middleware inside ``model.request_guard.RequestGuard`` (so
after the 413 and 415 checks) and inside BentoML's metrics and timeout middleware (so the request
is counted and timed as any other), takes the bodies it can answer exactly as the API would:

- a POST to ``/predict`` or ``/predict_proba`` whose body is the column form (``columns`` and
  ``data``, no ``rows``; other fields are ignored, as BentoML's input model ignores them),
- every value a JSON number, checked by pydantic-core while it parses (``ColumnBody``: strict
  floats), for a model whose features are all doubles,
- and the request valid: right names, widths and row count, every value finite.

It answers through the API's own answer (``model.service._Served.column_answer``, the same code the
BentoML method calls, monitoring and the prediction id included) with the same headers as long as
BentoML adds none but ``server`` to an API answer: true with the API paths untraced
(``model.service``'s ``tracing.excluded_urls``), no ``http.response.trace_id`` and no CORS (it sits
outside BentoML's CORS, context and exception middleware). Every
other body, and any request on which that answer raises, goes on to BentoML unchanged, the body
replayed, so refusals, their 400s and their log lines come from the one path that makes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import bentoml
from pydantic import BaseModel, ConfigDict, StrictFloat, ValidationError

from model.request_guard import ASGIApp, Message, Receive, Scope, Send, _replay
from model.validation import Batch, RequestValidationError, RowSchema, validate_columns

logger = logging.getLogger(__name__)
COLUMNS_KEY = b'"columns"'  # a body without it cannot be the column form: not parsed here


class ColumnBody(BaseModel):
    """The column form with only numbers in ``data``; ``rows`` must be absent or null."""

    model_config = ConfigDict(extra="ignore")

    rows: None = None
    columns: list[str]
    data: list[list[StrictFloat]]


def column_batch(body: bytes, schema: RowSchema) -> Batch | None:
    """The validated batch of a column-form body of finite numbers for an all-double ``schema``;
    None for any other body (BentoML's path answers it, a refusal included)."""
    if not schema.all_double or COLUMNS_KEY not in body:
        return None
    try:
        parsed = ColumnBody.model_validate_json(body)
        return validate_columns(parsed.columns, parsed.data, schema, numbers=True)
    except (ValidationError, RequestValidationError):
        return None


class Answering(Protocol):
    """What ``ColumnPath`` needs of the served instance (``model.service._Served``)."""

    def column_answer(self, method: str, body: bytes) -> Callable[[Scope, Receive, Send], Any] | None: ...


def _current_service() -> Answering | None:
    try:
        return cast(Answering, bentoml.get_current_service())
    except bentoml.exceptions.BentoMLException:  # before the worker has made its instance
        return None


def _replay_until(body: bytes, last: Message) -> Receive:
    """A receive that gives the part of the body read, then ``last`` (the disconnect), then ``last``."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return last
        sent = True
        return {"type": "http.request", "body": body, "more_body": True}

    return replayed


class ColumnPath:
    """Wraps ``app``: POSTs to ``methods``' paths (path -> API name) that the served instance answers
    in the column form are answered here; every other request goes on to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        methods: Mapping[str, str],
        served: Callable[[], Answering | None] = _current_service,
    ) -> None:
        self.app = app
        self.methods = dict(methods)
        self.served = served
        self._instance: Answering | None = None  # the worker's, once it has one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = self.methods.get(scope.get("path", "")) if scope["type"] == "http" else None
        if method is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: BentoML's path sees it so
                await self.app(scope, _replay_until(b"".join(chunks), message), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if self._instance is None:
            self._instance = self.served()
        served = self._instance
        try:
            answer = served.column_answer(method, body) if served is not None else None
        except ValidationError:  # a refusal (model.refusals): BentoML's path makes its 400
            answer = None
        except Exception:  # a bug: BentoML's path answers it, and logs it as it does
            logger.exception("column path: answering %s failed; BentoML's request path answers it", method)
            answer = None
        if answer is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await answer(scope, receive, send)
