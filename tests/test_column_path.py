"""model.column_path: which bodies it answers (exactly the batch validate_columns gives), and that
every other request reaches BentoML's path with its body unchanged."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from model.column_path import ColumnBody, ColumnPath, column_batch
from model.validation import ColumnTable, RowSchema, validate_columns

DOUBLES = RowSchema(columns=(("a", "double"), ("b", "double")), max_rows=3)
MIXED = RowSchema(columns=(("a", "double"), ("n", "long")), max_rows=3)


def _body(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


@pytest.mark.parametrize(
    "body",
    [
        {"columns": ["a", "b"], "data": [[1, 2.5], [-0.0, 1e300]]},  # ints are numbers too
        {"columns": ["b", "a"], "data": [[2.5, 1], [1e300, -0.0]]},  # any column order
        {"data": [[1.5, 2.0]], "columns": ["a", "b"], "rows": None, "index": [0]},  # as BentoML's model
    ],
)
def test_a_column_form_of_finite_numbers_is_the_batch_validate_columns_gives(body: dict[str, Any]) -> None:
    batch = column_batch(_body(body), DOUBLES)
    assert batch is not None
    expected = validate_columns(body["columns"], body["data"], DOUBLES)
    assert isinstance(batch.columns, ColumnTable) and batch.field == "data" and batch.size == expected.size
    assert batch.columns.matrix.tolist() == expected.columns.matrix.tolist()  # type: ignore[attr-defined]
    assert np.signbit(batch.columns.matrix).tolist() == np.signbit(expected.columns.matrix).tolist()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "body",
    [
        {"rows": [{"a": 1, "b": 2}]},  # the row form
        {"rows": [{"a": 1, "b": 2}], "columns": ["a", "b"], "data": [[1, 2]]},  # both forms: a 400
        {"columns": ["a", "b"], "data": [[1, True]]},  # a boolean
        {"columns": ["a", "b"], "data": [[1, "2"]]},  # a string, even of a number
        {"columns": ["a", "b"], "data": [[1, None]]},  # null
        b'{"columns": ["a", "b"], "data": [[1, 1e400]]}',  # infinite once parsed
        b'{"columns": ["a", "b"], "data": [[1, NaN]]}',  # NaN, which pydantic parses: not finite
        b'{"columns": ["a", "b"], "data": [[1, 1' + b"0" * 400 + b"]]}",  # a whole number beyond a double
        {"columns": ["a", "b"], "data": [[1, 2, 3]]},  # a row of another width
        {"columns": ["a", "c"], "data": [[1, 2]]},  # an unknown feature
        {"columns": ["a", "a"], "data": [[1, 2]]},  # a feature twice
        {"columns": ["a", "b"], "data": [[1, 2]] * 4},  # over max_rows
        {"columns": ["a", "b"], "data": []},  # no rows
        {"columns": ["a", "b"]},  # no data
        b'{"columns": ["a", "b"], "data": [[1, 2]]',  # cut short
        {"data": [[1, 2]], "cols": ["a", "b"]},  # no "columns"
    ],
)
def test_any_other_body_is_left_to_bentomls_path(body: Any) -> None:
    assert column_batch(_body(body), DOUBLES) is None


def test_a_model_with_features_other_than_doubles_is_left_to_bentomls_path() -> None:
    """Its whole numbers would be floats once parsed as strict floats: never taken."""
    assert column_batch(_body({"columns": ["a", "n"], "data": [[1.5, 2]]}), MIXED) is None
    assert ColumnBody.model_validate_json(b'{"columns": ["a"], "data": [[2]]}').data == [[2.0]]


class _Served:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.seen: list[tuple[str, bytes]] = []

    def column_answer(self, method: str, body: bytes) -> Any:
        self.seen.append((method, body))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def _answer_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-by", b"column path")]})
    await send({"type": "http.response.body", "body": b"answered"})


def _through(
    served: _Served | None,
    *,
    method: str = "POST",
    path: str = "/predict",
    chunks: tuple[bytes, ...] = (b"{}",),
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """What the client is sent, and the bodies BentoML's path (the inner app) read."""
    inner_bodies: list[bytes] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        inner_bodies.append(body)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"bentoml"})

    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    middleware = ColumnPath(inner, {"/predict": "predict", "/predict_proba": "predict_proba"}, lambda: served)
    asyncio.run(middleware({"type": "http", "method": method, "path": path, "headers": []}, receive, send))
    return sent, inner_bodies


def test_a_body_the_instance_answers_never_reaches_bentomls_path() -> None:
    served = _Served(_answer_app)
    sent, inner = _through(served, path="/predict_proba", chunks=(b'{"colu', b'mns": 1}'))
    assert served.seen == [("predict_proba", b'{"columns": 1}')]  # the chunks, whole
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"answered" and inner == []


@pytest.mark.parametrize("answer", [None, ValueError("a refusal or a bug: BentoML's path answers it")])
def test_a_body_it_does_not_answer_reaches_bentomls_path_unchanged(answer: Any) -> None:
    served = _Served(answer)
    sent, inner = _through(served, chunks=(b'{"rows": ', b"[]}"))
    assert inner == [b'{"rows": []}'] and sent[0]["status"] == 201 and sent[1]["body"] == b"bentoml"


def test_other_paths_methods_and_a_worker_without_its_instance_go_straight_on() -> None:
    served = _Served(_answer_app)
    for kwargs in ({"path": "/feedback"}, {"method": "GET"}):
        sent, inner = _through(served, **kwargs)  # type: ignore[arg-type]
        assert inner == [b"{}"] and sent[0]["status"] == 201
    assert served.seen == []  # not even asked
    sent, inner = _through(None)
    assert inner == [b"{}"] and sent[0]["status"] == 201


def test_a_client_gone_mid_body_is_handed_to_bentomls_path_with_what_came() -> None:
    """BentoML's path counts and logs a request whose client went away; it must see the disconnect."""
    seen: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())

    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"colu', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        raise AssertionError(f"nothing is sent here: {message}")

    served = _Served(_answer_app)
    middleware = ColumnPath(inner, {"/predict": "predict"}, lambda: served)
    asyncio.run(
        middleware({"type": "http", "method": "POST", "path": "/predict", "headers": []}, receive, send)
    )
    assert seen == [
        {"type": "http.request", "body": b'{"colu', "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert served.seen == []
