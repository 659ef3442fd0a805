"""model.service over HTTP: a real ``bentoml serve`` of the exported bento, checked against MLflow pyfunc.

One server per module, started from the build context ``model.bento.export_build_context`` writes
(the folder the image is built from) with the environment the image's Dockerfile sets, stopped by
pid. The request validator (model.validation) is also tested on its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from model.bento import BuildContext, export_build_context
from model.container import LIVENESS_PATH, MAX_ROWS_ENV, METRICS_PATH, MODEL_TAG_ENV, READINESS_PATH
from model.fingerprint import SERVING_SOURCES
from model.predictor import (
    ArrayPredictor,
    FramePredictor,
    KernelPredictor,
    array_predictor,
    predictor_for,
    probe_columns,
)
from model.request_guard import Message, RequestGuard, RequestTimeout
from model.train import TrainResult, load_heldout
from model.validation import (
    COLUMN_DTYPES,
    Batch,
    ColumnTable,
    RequestValidationError,
    RowSchema,
    block,
    overflow_problem,
    request_batch,
    validate_batch,
    validate_columns,
    validate_rows,
)
from tests.conftest import REPO_ROOT, SERVING_MODEL_NAME
from tests.test_data import DEFAULT, FEATURES
from tools.processes import bentoml_serve_command, free_port, running

MODEL_NAME = SERVING_MODEL_NAME
MAX_ROWS = 50
CLASS_NAMES = [DEFAULT.class_name(value) for value in (0, 1)]  # ["malignant", "benign"]

# ---- the validator on its own ----------------------------------------------------------------------

SCHEMA = RowSchema(columns=(("a", "double"), ("b", "double"), ("n", "long")), max_rows=3)


def test_validate_rows_converts_integers_for_float_features() -> None:
    rows = validate_rows([{"a": 1, "b": 2.5, "n": 3}, {"a": 1001, "b": 0, "n": 4.0}], SCHEMA)
    assert rows == [{"a": 1.0, "b": 2.5, "n": 3}, {"a": 1001.0, "b": 0.0, "n": 4}]
    assert [type(v) for v in rows[1].values()] == [float, float, int]


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ([], ["'rows' is empty"]),
        ({"a": 1}, ["'rows' must be a JSON array", "an object"]),
        ([{"a": 1, "b": 2, "n": 3}] * 4, ["has 4 rows", "limit of 3"]),
        ([[1, 2, 3]], ["rows[0] must be an object", "an array"]),
        ([{"a": 1, "b": 2, "n": 3}, {"a": 1, "n": 3}], ["rows[1] is missing feature(s) 'b'"]),
        ([{"a": 1, "b": 2, "n": 3, "zz": 1}], ["rows[0] has unknown feature(s) 'zz'"]),
        ([{"a": "1.5", "b": 2, "n": 3}], ["rows[0].a must be a number, got the string '1.5'"]),
        ([{"a": True, "b": 2, "n": 3}], ["rows[0].a must be a number, got the boolean true"]),
        ([{"a": None, "b": 2, "n": 3}], ["rows[0].a must be a number, got null"]),
        ([{"a": math.nan, "b": 2, "n": 3}], ["rows[0].a must be a finite number, got nan"]),
        ([{"a": 1, "b": -math.inf, "n": 3}], ["rows[0].b must be a finite number, got -inf"]),
        ([{"a": 1, "b": 10**400, "n": 3}], ["rows[0].b is out of range"]),
        ([{"a": 1, "b": 2, "n": 3.5}], ["rows[0].n must be a whole number"]),
        ([{"a": 1, "b": 2, "n": 2**63}], ["rows[0].n is out of range for a long"]),
    ],
)
@pytest.mark.parametrize("validate", [validate_rows, validate_batch])
def test_validate_rows_names_the_problem(rows: Any, fragments: list[str], validate: Any) -> None:
    with pytest.raises(RequestValidationError) as info:
        validate(rows, SCHEMA)
    for fragment in fragments:
        assert fragment in str(info.value)


MIXED = RowSchema(
    columns=(
        ("x", "double"),
        ("n", "long"),
        ("i", "integer"),
        ("f", "float"),
        ("ok", "boolean"),
        ("plan", "string"),
    ),
    categories={"plan": ("basic", "premium")},
)


MIXED_ROWS = [
    [{"x": 1.5, "n": 3, "i": -2, "f": 0.25, "ok": True, "plan": "basic"}],
    # ints in a float column, a whole float in an integer column: the per-value path types them
    [{"x": 2, "n": 4.0, "i": 7, "f": 1, "ok": False, "plan": "premium"}] * 3,
    [{"x": 1e300, "n": 2**62, "i": 2**31 - 1, "f": -1.0, "ok": True, "plan": "basic"}],
]


@pytest.mark.parametrize("rows", MIXED_ROWS)
def test_validate_batch_gives_the_typed_columns_of_validate_rows(rows: list[dict[str, Any]]) -> None:
    batch = validate_batch(rows, MIXED)
    clean = validate_rows(rows, MIXED)
    assert batch.size == len(rows) and list(batch.columns) == list(MIXED.names)
    for name, kind in MIXED.columns:
        column = batch.columns[name]
        assert column.dtype == np.dtype(COLUMN_DTYPES[kind]), name
        assert column.tolist() == pd.Series([row[name] for row in clean]).astype(column.dtype).tolist()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"i": 2**31}, "rows[0].i is out of range for a integer"),
        ({"plan": "gold"}, "rows[0].plan must be one of"),
        ({"ok": 1}, "rows[0].ok must be true or false"),
        ({"n": 1.5}, "rows[0].n must be a whole number"),
        ({"x": float("nan")}, "rows[0].x must be a finite number"),
    ],
)
def test_validate_batch_sends_every_doubtful_value_to_the_per_value_check(
    change: dict[str, Any], fragment: str
) -> None:
    row = {"x": 1.5, "n": 3, "i": -2, "f": 0.25, "ok": True, "plan": "basic"}
    with pytest.raises(RequestValidationError, match=re.escape(fragment)):
        validate_batch([row, {**row, **change}][1:], MIXED)


DOUBLES = RowSchema(columns=(("a", "double"), ("b", "double")), max_rows=3)


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ([{"a": "1.5", "b": 2}], "rows[0].a must be a number, got the string '1.5'"),
        ([{"a": 1, "b": True}], "rows[0].b must be a number, got the boolean true"),
        ([{"a": None, "b": 2}], "rows[0].a must be a number, got null"),
        ([{"a": 1, "b": 2}, {"a": math.nan, "b": 2}], "rows[1].a must be a finite number, got nan"),
        ([{"a": 1, "b": math.inf}], "rows[0].b must be a finite number, got inf"),
        ([{"a": 1, "b": 10**400}], "rows[0].b is out of range"),
        ([{"a": 1, "c": 2}], "rows[0] is missing feature(s) 'b'"),
        ([{"a": [1], "b": 2}], "rows[0].a must be a number"),
    ],
)
def test_an_all_double_request_takes_the_one_matrix_path_or_the_per_value_check(
    rows: list[dict[str, Any]], fragment: str
) -> None:
    with pytest.raises(RequestValidationError, match=re.escape(fragment)):
        validate_batch(rows, DOUBLES)
    good = [{"a": 1, "b": 2.5}, {"b": -0.0, "a": 1e300}]  # ints and any key order are fine
    columns = validate_batch(good, DOUBLES).columns
    assert isinstance(columns, ColumnTable)
    assert columns.matrix.dtype == np.float64 and columns.matrix.tolist() == [[1.0, 2.5], [1e300, -0.0]]
    assert columns["b"].tolist() == [2.5, -0.0] and np.shares_memory(columns["b"], columns.matrix)
    assert block(columns, ("a", "b")) is columns.matrix
    assert block(columns, ("b", "a")).tolist() == [[2.5, 1.0], [-0.0, 1e300]]  # another order: a stack
    per_column = validate_batch(good, RowSchema(columns=(("a", "double"), ("b", "float")))).columns
    assert not isinstance(per_column, ColumnTable)  # not all doubles: one array per column
    assert block(per_column, ("a", "b")).tolist() == columns.matrix.tolist()


# ---- the column form: {"columns": [...], "data": [[...], ...]} --------------------------------------


def as_columns(rows: list[dict[str, Any]], order: tuple[str, ...]) -> tuple[list[str], list[list[Any]]]:
    """``rows`` in the column form, features in ``order``."""
    return list(order), [[row[name] for name in order] for row in rows]


@pytest.mark.parametrize("rows", MIXED_ROWS)
@pytest.mark.parametrize("reverse", [False, True])
def test_the_column_form_gives_the_batch_of_the_row_form(rows: list[dict[str, Any]], reverse: bool) -> None:
    order = tuple(reversed(MIXED.names)) if reverse else MIXED.names
    batch = validate_columns(*as_columns(rows, order), MIXED)
    expected = validate_batch(rows, MIXED)
    assert batch.size == expected.size and batch.field == "data"
    assert list(batch.columns) == list(MIXED.names)  # signature order, whatever order was sent
    for name in MIXED.names:
        assert batch.columns[name].dtype == expected.columns[name].dtype, name
        assert batch.columns[name].tolist() == expected.columns[name].tolist(), name


def test_an_all_double_column_request_is_one_matrix_in_signature_order() -> None:
    columns = validate_columns(["b", "a"], [[2.5, 1], [-0.0, 1e300]], DOUBLES).columns
    assert isinstance(columns, ColumnTable) and not columns.matrix.flags.writeable
    assert columns.matrix.flags.c_contiguous  # as the row form's: the same summation order
    assert columns.matrix.tolist() == [[1.0, 2.5], [1e300, -0.0]]
    assert block(columns, ("a", "b")) is columns.matrix


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"a": "1.5"}, "data[1].a must be a number, got the string '1.5'"),
        ({"a": True}, "data[1].a must be a number, got the boolean true"),
        ({"a": None}, "data[1].a must be a number, got null"),
        ({"a": math.nan}, "data[1].a must be a finite number, got nan"),
        ({"b": -math.inf}, "data[1].b must be a finite number, got -inf"),
        ({"b": 10**400}, "data[1].b is out of range"),
        ({"n": 3.5}, "data[1].n must be a whole number"),
        ({"n": 2**63}, "data[1].n is out of range for a long"),
    ],
)
def test_the_column_form_names_a_bad_value_by_row_and_feature(change: dict[str, Any], fragment: str) -> None:
    good = {"a": 1, "b": 2, "n": 3}
    with pytest.raises(RequestValidationError, match=re.escape(fragment)):
        validate_columns(*as_columns([good, {**good, **change}], ("n", "b", "a")), SCHEMA)


@pytest.mark.parametrize(
    ("columns", "data", "fragments"),
    [
        ("a,b,n", [[1, 2, 3]], ["'columns' must be an array of feature names", "the string"]),
        (["a", "b", 3], [[1, 2, 3]], ["'columns' must be an array of feature names"]),
        (["a", "b", "n", "a"], [[1, 2, 3, 1]], ["'columns' names feature(s) 'a' more than once"]),
        (["a", "n"], [[1, 3]], ["'columns' is missing feature(s) 'b': send all 3"]),
        (["a", "b", "n", "zz"], [[1, 2, 3, 4]], ["'columns' has unknown feature(s) 'zz'"]),
        (["a", "b", "n"], {"a": 1}, ["'data' must be a JSON array of rows", "an object"]),
        (["a", "b", "n"], [], ["'data' is empty"]),
        (["a", "b", "n"], [[1, 2, 3]] * 4, ["'data' has 4 rows", "limit of 3"]),
        (["a", "b", "n"], [[1, 2, 3], [1, 2]], ["data[1] must be an array of 3 values", "an array of 2"]),
        (["a", "b", "n"], [{"a": 1, "b": 2, "n": 3}], ["data[0] must be an array of 3 values", "an object"]),
    ],
)
def test_the_column_form_names_a_bad_shape(columns: Any, data: Any, fragments: list[str]) -> None:
    with pytest.raises(RequestValidationError) as info:
        validate_columns(columns, data, SCHEMA)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_a_signature_that_names_a_feature_twice_is_refused_at_start() -> None:
    """Column names are matched to features by name: a repeated one would be ambiguous (and the
    column form's signature-order shortcut would accept what the name check refuses)."""
    with pytest.raises(ValueError, match=r"names input column\(s\) 'a' more than once"):
        RowSchema(columns=(("a", "double"), ("b", "double"), ("a", "double")))


def test_a_request_sends_its_rows_in_one_form() -> None:
    rows = validate_batch([{"a": 1, "b": 2, "n": 3}], SCHEMA)
    assert request_batch(rows, None, None, SCHEMA) is rows
    split = request_batch(None, ["a", "b", "n"], [[1, 2, 3]], SCHEMA)
    assert split.field == "data" and split.columns["n"].tolist() == [3]
    for columns, data, given in [
        (["a"], [[1]], "both 'rows' and 'columns'/'data'"),
        (None, None, "no rows"),
        (["a", "b", "n"], None, "'columns' without 'data'"),
        (None, [[1, 2, 3]], "'data' without 'columns'"),
    ]:
        with pytest.raises(RequestValidationError) as info:
            request_batch(rows if given.startswith("both") else None, columns, data, SCHEMA)
        assert given in str(info.value) and "'columns' (the feature names) with 'data'" in str(info.value)


def test_an_overflow_is_named_in_the_form_the_rows_came_in() -> None:
    for batch, where in [
        (validate_batch([{"a": 1, "b": 1e308, "n": 3}], SCHEMA), "rows[0].b"),
        (validate_columns(["n", "b", "a"], [[3, 1, 1], [3, 1e308, 1]], SCHEMA), "data[1].b"),
    ]:
        assert isinstance(batch, Batch)
        assert str(overflow_problem(batch)).startswith(f"{where} = 1e+308 is too large")


def _churn_like_pipeline() -> Any:
    """A pipeline as model.train builds one for numeric, boolean and string features."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=200),
            "n": rng.integers(0, 50, size=200),
            "i": rng.integers(-5, 5, size=200).astype(np.int32),
            "f": rng.normal(size=200).astype(np.float32),
            "ok": rng.random(200) > 0.5,
            "plan": rng.choice(["basic", "premium"], size=200),
        }
    )
    target = (frame["x"] + (frame["plan"] == "premium") + frame["ok"] > 1).astype(int)
    preprocess = ColumnTransformer(
        [
            ("numeric", StandardScaler(), ["x", "n", "i", "f"]),
            ("boolean", "passthrough", ["ok"]),
            ("categorical", OneHotEncoder(categories=[["basic", "premium"]], sparse_output=False), ["plan"]),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("estimator", LogisticRegression())]).fit(
        frame, target
    ), frame


def test_the_array_and_kernel_paths_answer_exactly_as_the_pipeline_on_a_frame() -> None:
    pipeline, frame = _churn_like_pipeline()
    predictor, how = predictor_for(pipeline, MIXED)
    assert isinstance(predictor, KernelPredictor), how
    assert predictor.steps == ("StandardScaler", "LogisticRegression")  # the one-hot part stays sklearn's
    assert "numpy kernels for StandardScaler, LogisticRegression" in how
    array = array_predictor(pipeline, MIXED)
    assert isinstance(array, ArrayPredictor)
    rows = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in frame.to_dict("records")
    ]
    columns = validate_batch(rows[:100], MIXED).columns
    for served in (predictor, array):
        np.testing.assert_array_equal(served.predict(columns), pipeline.predict(frame.head(100)))
        np.testing.assert_allclose(
            served.predict_proba(columns), pipeline.predict_proba(frame.head(100)), rtol=0, atol=1e-12
        )


def test_a_step_that_works_in_place_leaves_the_request_columns_as_they_were() -> None:
    """The all-double matrix goes to the model's steps as is: read-only, so that a scaler with
    copy=False (run by scikit-learn: its kernel never writes in place) copies it instead of
    changing what monitoring then counts."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    frame = pd.DataFrame(probe_columns(DOUBLES)) * 10 + 5
    pipeline = Pipeline(
        [("preprocess", ColumnTransformer([("n", StandardScaler(copy=False), ["a", "b"])])),
         ("estimator", LogisticRegression())]
    ).fit(frame, (frame["a"] > frame["a"].median()).astype(int))  # fmt: skip
    rows = frame.to_dict("records")
    schema = RowSchema(columns=DOUBLES.columns)
    columns = validate_batch(rows, schema).columns
    assert isinstance(columns, ColumnTable) and not columns.matrix.flags.writeable
    array = array_predictor(pipeline, schema)
    assert isinstance(array, ArrayPredictor)
    np.testing.assert_array_equal(array.predict(columns), pipeline.predict(frame.copy()))
    assert columns.matrix.tolist() == frame.to_numpy().tolist()  # unscaled still


def test_kernels_that_answer_otherwise_on_the_probes_leave_the_array_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from model import kernels

    pipeline, _ = _churn_like_pipeline()
    real = kernels.LinearKernel.predict_proba
    monkeypatch.setattr(kernels.LinearKernel, "predict_proba", lambda self, x: real(self, x) + 1e-9)
    predictor, how = predictor_for(pipeline, MIXED)
    assert type(predictor) is ArrayPredictor, how  # not its KernelPredictor subclass
    assert "numpy kernels differ on probe rows: predict_proba gave other values" in how


def test_a_pipeline_the_array_path_cannot_take_keeps_the_frame_path() -> None:
    from sklearn.linear_model import LinearRegression

    frame = pd.DataFrame(probe_columns(SCHEMA))
    model = LinearRegression().fit(frame, frame["a"] * 2)
    predictor, how = predictor_for(model, SCHEMA)
    assert isinstance(predictor, FramePredictor) and "not a Pipeline" in how
    np.testing.assert_allclose(predictor.predict(probe_columns(SCHEMA)), model.predict(frame))


# ---- the request guard on its own ------------------------------------------------------------------


def _through_guard(
    headers: list[tuple[bytes, bytes]], chunks: list[bytes], path: str = "/predict"
) -> tuple[int, bytes]:
    """Status and body the guard (limit 10 bytes) answers; the inner app echoes the body it read."""

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(RequestGuard(echo, max_bytes=10, json_paths=("/predict",))(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


JSON = (b"content-type", b"application/json")


def _through_timeout(app: Any, timeout: float) -> tuple[list[Message], int]:
    """The messages ``RequestTimeout(app)`` sends, and the timers left in the loop afterwards."""
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> int:
        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
        await RequestTimeout(app, timeout)(scope, receive, send)
        loop: Any = asyncio.get_running_loop()
        return sum(1 for handle in loop._scheduled if not handle.cancelled())

    return sent, asyncio.run(run())


def test_timeout_answers_and_leaves_no_timer_behind() -> None:
    async def quick(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent, live_timers = _through_timeout(quick, timeout=60)
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"ok"
    assert live_timers == 0  # BentoML's own left one per request for 60 s


def test_timeout_answers_504_to_a_request_with_no_answer_in_time() -> None:
    async def stuck(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(30)

    sent, _ = _through_timeout(stuck, timeout=0.05)
    assert sent[0]["status"] == 504 and b"in 0.05 seconds" in sent[1]["body"]


def test_guard_refuses_a_declared_length_over_the_limit_unread() -> None:
    status, body = _through_guard([JSON, (b"content-length", b"11")], [b"x" * 11])
    assert status == 413 and b"over the limit of 10 bytes" in body


def test_guard_counts_a_chunked_body_and_hands_on_one_within_the_limit() -> None:
    chunked = (b"transfer-encoding", b"chunked")
    assert _through_guard([JSON, chunked], [b"x" * 6, b"y" * 5])[0] == 413
    assert _through_guard([JSON, chunked], [b"x" * 6, b"y" * 4]) == (200, b"xxxxxxyyyy")
    assert _through_guard([JSON, (b"content-length", b"3")], [b"abc"]) == (200, b"abc")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ((b"content-type", b"text/plain"), b"Content-Type 'text/plain' is not accepted"),
        ((b"content-type", b"application/json; charset=latin-1"), b"charset 'latin-1'"),
        ((b"content-encoding", b"gzip"), b"send the JSON body uncompressed"),
    ],
)
def test_guard_refuses_api_bodies_that_are_not_plain_json(
    header: tuple[bytes, bytes], fragment: bytes
) -> None:
    status, body = _through_guard([header, (b"content-length", b"2")], [b"{}"])
    assert status == 415 and fragment in body
    assert _through_guard([header, (b"content-length", b"2")], [b"{}"], path="/metrics")[0] == 200


TYPED = RowSchema(
    columns=(("plan", "string"), ("autopay", "boolean"), ("n", "long")),
    categories={"plan": ("basic", "premium")},
)


def test_validate_rows_takes_strings_in_their_categories_and_json_booleans() -> None:
    rows = validate_rows([{"plan": "basic", "autopay": False, "n": 2}], TYPED)
    assert rows == [{"plan": "basic", "autopay": False, "n": 2}]


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        (
            {"plan": "gold", "autopay": True, "n": 1},
            "rows[0].plan must be one of 'basic', 'premium', got 'gold'",
        ),
        ({"plan": 3, "autopay": True, "n": 1}, "rows[0].plan must be a string, got a number"),
        ({"plan": "basic", "autopay": 1, "n": 1}, "rows[0].autopay must be true or false, got a number"),
        (
            {"plan": "basic", "autopay": "yes", "n": 1},
            "rows[0].autopay must be true or false, got the string",
        ),
    ],
)
def test_validate_rows_names_typed_problems(row: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RequestValidationError, match=re.escape(fragment)):
        validate_rows([row], TYPED)


def test_validate_rows_reports_every_problem_up_to_a_limit() -> None:
    schema = RowSchema(columns=(("a", "double"),), max_rows=100)
    with pytest.raises(RequestValidationError) as info:
        validate_rows([{"a": "x"}] * 12, schema)
    assert len(info.value.problems) == 12
    assert "rows[9].a" in str(info.value) and "rows[10].a" not in str(info.value)
    assert "and 2 more problems" in str(info.value)


def test_row_schema_refuses_unservable_signatures() -> None:
    with pytest.raises(ValueError, match="no input columns"):
        RowSchema(columns=())
    with pytest.raises(ValueError, match=r"when \(datetime\)"):
        RowSchema(columns=(("when", "datetime"),))
    with pytest.raises(ValueError, match="max_rows"):
        RowSchema(columns=(("a", "double"),), max_rows=0)


def test_max_rows_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.service import max_rows_from_env

    monkeypatch.delenv(MAX_ROWS_ENV, raising=False)
    assert max_rows_from_env() == 1000
    monkeypatch.setenv(MAX_ROWS_ENV, "7")
    assert max_rows_from_env() == 7
    for bad in ("0", "-3", "many"):
        monkeypatch.setenv(MAX_ROWS_ENV, bad)
        with pytest.raises(ValueError, match=f"{MAX_ROWS_ENV}='{bad}' is not a positive whole number"):
            max_rows_from_env()


def test_quiet_refusals_makes_a_refusal_one_warning_line_and_leaves_other_records() -> None:
    import logging

    from model.refusals import QuietRefusals, bad_request
    from model.validation import RequestValidationError

    refusal = bad_request(RequestValidationError(["data[0].b must be a number"], field="data"))
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/predict", "POST"),
                               (type(refusal), refusal, None))  # fmt: skip
    assert QuietRefusals().filter(record)
    assert (record.levelno, record.exc_info) == (logging.WARNING, None)
    assert record.getMessage() == "Refused POST /predict (400): data: Value error, data[0].b must be a number"
    fault = RuntimeError("a bug")
    other = logging.LogRecord("x", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/predict", "POST"),
                              (RuntimeError, fault, None))  # fmt: skip
    assert QuietRefusals().filter(other) and other.levelno == logging.ERROR and other.exc_info


# ---- a real server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context(
    trained: TrainResult, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> BuildContext:
    work = tmp_path_factory.mktemp("service")
    return export_build_context(
        trained.model_uri, trained.fingerprint, work / "context", tracking_uri=mlflow_server,
        bentoml_home=work / "bentoml",
    )  # fmt: skip


@pytest.fixture(scope="module")
def serve_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served bento's BENTOML_HOME and working folder; its log is ``serve.log`` there."""
    return tmp_path_factory.mktemp("serve-home")


@pytest.fixture(scope="module")
def server(context: BuildContext, serve_home: Path) -> Iterator[str]:
    """Base URL of ``bentoml serve <exported context>`` on a free loopback port."""
    home = serve_home
    url = f"http://127.0.0.1:{(port := free_port())}"
    env = {
        MODEL_TAG_ENV: context.model_tag,  # what the image's Dockerfile sets
        MAX_ROWS_ENV: str(MAX_ROWS),
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    with running(
        bentoml_serve_command(context.path, port), ready_url=f"{url}{READINESS_PATH}",
        log_path=home / "serve.log", timeout=300, env=env, cwd=home,
    ):  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def heldout(trained: TrainResult, mlflow_server: str) -> pd.DataFrame:
    return load_heldout(trained.run_id, tracking_uri=mlflow_server)


@pytest.fixture(scope="module")
def pyfunc_predictions(trained: TrainResult, mlflow_server: str, heldout: pd.DataFrame) -> list[str]:
    """The model's own predictions as the class names the API answers."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(trained.model_uri)
    return [CLASS_NAMES[int(v)] for v in model.predict(heldout[list(FEATURES)])]


def as_rows(frame: pd.DataFrame) -> list[dict[str, float]]:
    return [{name: float(row[name]) for name in FEATURES} for _, row in frame.iterrows()]


def post(url: str, path: str, body: Any) -> requests.Response:
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(f"{url}{path}", data=data, headers={"Content-Type": "application/json"}, timeout=120)


@pytest.mark.servers
def test_predictions_over_http_equal_mlflow_pyfunc(
    server: str, heldout: pd.DataFrame, pyfunc_predictions: list[str]
) -> None:
    rows = as_rows(heldout)
    assert len(rows) > MAX_ROWS  # the held-out set is sent in chunks below the limit
    got: list[str] = []
    for start in range(0, len(rows), MAX_ROWS):
        response = post(server, "/predict", {"rows": rows[start : start + MAX_ROWS]})
        assert response.status_code == 200, response.text
        got.extend(response.json())
    assert got == pyfunc_predictions
    assert set(got) == {"malignant", "benign"}


@pytest.mark.servers
@pytest.mark.parametrize("path", ["/predict", "/predict_proba"])
def test_the_column_form_answers_as_the_row_form(server: str, heldout: pd.DataFrame, path: str) -> None:
    rows = as_rows(heldout)[:MAX_ROWS]
    order = tuple(reversed(FEATURES))  # any column order
    by_rows = post(server, path, {"rows": rows})  # BentoML's request path
    by_columns = post(server, path, {"columns": list(order), "data": [[r[n] for n in order] for r in rows]})
    assert by_columns.status_code == 200, by_columns.text
    assert by_columns.json() == by_rows.json()
    # The column form of numbers is answered by model.column_path: the same answer, byte for byte,
    # with the same headers (the prediction id, BentoML's server header) but the date.
    assert by_columns.content == by_rows.content
    undated = [
        {k.lower(): v for k, v in r.headers.items() if k.lower() != "date"} for r in (by_rows, by_columns)
    ]
    assert undated[0] == undated[1] and undated[1]["server"].startswith("BentoML Service/"), undated
    bad: list[list[object]] = [[r[n] for n in order] for r in rows[:2]]
    bad[1][order.index("mean_radius")] = "x"
    response = post(server, path, {"columns": list(order), "data": bad})
    assert response.status_code == 400 and "data[1].mean_radius must be a number" in response.text


@pytest.mark.servers
def test_a_request_answered_by_the_column_path_is_counted_by_bentomls_metrics(
    server: str, heldout: pd.DataFrame
) -> None:
    def answered() -> float:
        text = requests.get(f"{server}{METRICS_PATH}", timeout=30).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("bentoml_service_request_total{")
            and 'endpoint="/predict_proba"' in line
            and 'http_response_code="200"' in line
        )

    rows = as_rows(heldout)[:5]
    before = answered()
    for _ in range(3):
        response = post(
            server,
            "/predict_proba",
            {"columns": list(FEATURES), "data": [[r[n] for n in FEATURES] for r in rows]},
        )
        assert response.status_code == 200, response.text
    assert answered() == before + 3


ANY_ID = "1." + "0" * 24  # a well-formed prediction id that no answer has


def _problems(response: requests.Response) -> list[tuple[list[Any], str]]:
    """A 400's (loc, msg) pairs; asserts the one shape every refused prediction request has."""
    assert response.status_code == 400, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"].endswith("validation error for Input"), body
    assert all(d["type"] in ("value_error", "list_type", "string_type") for d in body["detail"]), body
    return [(d["loc"], d["msg"]) for d in body["detail"]]


@pytest.mark.servers
@pytest.mark.parametrize(
    ("body", "loc", "fragment"),
    [
        ({"rows": [{"mean_radius": 1}]}, ["rows"], "rows[0] is missing feature(s)"),
        ({"rows": []}, ["rows"], "'rows' is empty"),
        ({"rows": [{n: 1e308 for n in FEATURES}]}, ["rows"], "is too large for the model"),
        ({"columns": list(FEATURES), "data": [[1.0]]}, ["data"], "data[0] must be an array of 30 values"),
        ({"columns": list(FEATURES), "data": []}, ["data"], "'data' is empty"),
        ({"columns": [*FEATURES, "x"], "data": [[1.0]]}, ["columns"], "'columns'"),
        ({"columns": list(FEATURES), "data": [[1e308] * len(FEATURES)]}, ["data"], "is too large"),
        ({"columns": list(FEATURES)}, ["data"], "the body has 'columns' without 'data'"),
        ({"data": [[1.0]]}, ["columns"], "the body has 'data' without 'columns'"),
        ({}, ["rows"], "the body has no rows"),
        ({"rows": [{n: 1.0 for n in FEATURES}], "data": [[1.0]]}, ["rows"], "the body has both"),
        ({"columns": "mean_radius", "data": [[1.0]]}, ["columns"], "Input should be a valid array"),
        ({"columns": list(FEATURES), "data": [[1.0] * len(FEATURES)] * (MAX_ROWS + 1)}, ["data"], "has"),
        ({"columns": list(FEATURES), "data": [["x"] * len(FEATURES)]}, ["data"], "data[0].mean_radius"),
    ],
)
def test_every_refused_request_has_one_shape_naming_its_field(
    server: str, body: dict[str, Any], loc: list[Any], fragment: str
) -> None:
    """Both body forms, whether refused while BentoML parses the body or by the API method: one
    pydantic-style detail per problem, located at the body's field."""
    [(where, message)] = _problems(post(server, "/predict", body))
    assert where == loc and fragment in message, (where, message)


@pytest.mark.servers
@pytest.mark.parametrize(
    ("body", "loc", "fragment"),
    [
        (("x", ["benign"], ["benign"]), "prediction_id", "is not a prediction id"),
        ((ANY_ID, [], []), "predictions", "predictions is empty"),
        ((ANY_ID, ["benign"], []), "actuals", "actuals has 0 values"),
        ((ANY_ID, ["x"], ["x"]), "predictions", "expected a class name"),
        ((ANY_ID, ["benign"], ["benign"]), "predictions", "are not the answers of prediction_id"),
    ],
)  # fmt: skip
def test_refused_feedback_has_the_same_shape(
    server: str, body: tuple[str, list[str], list[str]], loc: str, fragment: str
) -> None:
    prediction_id, predictions, actuals = body
    sent = {"prediction_id": prediction_id, "predictions": predictions, "actuals": actuals}
    [(where, message)] = _problems(post(server, "/feedback", sent))
    assert where == [loc] and fragment in message, (where, message)


@pytest.mark.servers
def test_a_refused_request_is_one_warning_line_in_the_log_not_an_error_with_a_traceback(
    server: str, serve_home: Path
) -> None:
    log = serve_home / "serve.log"
    before = log.read_text()
    marker = "marker_feature_" + str(os.getpid())
    _problems(post(server, "/predict", {"rows": [{marker: 1.0}]}))  # refused while parsed
    _problems(post(server, "/predict", {"columns": [marker], "data": [[1.0]]}))  # refused by the method
    deadline = time.monotonic() + 30
    while (added := log.read_text()[len(before) :]).count("Refused POST /predict (400)") < 2:
        assert time.monotonic() < deadline, added
        time.sleep(0.2)
    assert "Traceback" not in added and "ERROR" not in added and "Exception on" not in added, added
    assert "rows: Value error, rows[0] is missing feature(s)" in added
    assert "columns: Value error, 'columns' is missing feature(s)" in added


@pytest.mark.servers
def test_the_served_document_describes_both_forms_and_their_optional_fields(server: str) -> None:
    document = requests.get(f"{server}/docs.json", timeout=30).json()
    schema = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    fields = schema["properties"]
    assert set(fields) == {"rows", "columns", "data"} and not schema.get("required")
    for name in fields:
        assert fields[name]["nullable"] is True and fields[name]["type"] == "array", fields[name]
        assert fields[name]["description"], name
    assert fields["columns"]["items"] == {"type": "string"}
    assert "either 'rows', or 'columns' with 'data'" in fields["rows"]["description"]


@pytest.mark.servers
def test_concurrent_single_rows_are_answered_in_order(
    server: str, heldout: pd.DataFrame, pyfunc_predictions: list[str]
) -> None:
    rows = as_rows(heldout)[:40]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda row: post(server, "/predict", {"rows": [row]}), rows))
    assert [r.status_code for r in responses] == [200] * len(rows)
    assert [r.json()[0] for r in responses] == pyfunc_predictions[:40]


@pytest.mark.servers
def test_predict_proba_matches_the_model(
    server: str,
    trained: TrainResult,
    mlflow_server: str,
    heldout: pd.DataFrame,
    pyfunc_predictions: list[str],
) -> None:
    import mlflow

    rows = as_rows(heldout)[:MAX_ROWS]
    response = post(server, "/predict_proba", {"rows": rows})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert all(list(row) == CLASS_NAMES for row in answer)  # class names, in the model's class order
    proba = np.asarray([list(row.values()) for row in answer])
    assert proba.shape == (len(rows), 2)
    mlflow.set_tracking_uri(mlflow_server)
    expected = (
        mlflow.pyfunc.load_model(trained.model_uri)
        .get_raw_model()
        .predict_proba(heldout[list(FEATURES)][:MAX_ROWS])
    )
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-12)
    assert [CLASS_NAMES[i] for i in proba.argmax(axis=1)] == pyfunc_predictions[:MAX_ROWS]


@pytest.mark.servers
def test_integer_json_numbers_are_accepted_for_float_features(server: str, heldout: pd.DataFrame) -> None:
    row = as_rows(heldout)[0]
    as_ints = {name: round(value) if name == "mean_area" else value for name, value in row.items()}
    as_floats = {**as_ints, "mean_area": float(as_ints["mean_area"])}
    assert isinstance(as_ints["mean_area"], int)
    ints, floats = (
        post(server, "/predict", {"rows": [as_ints]}),
        post(server, "/predict", {"rows": [as_floats]}),
    )
    assert ints.status_code == 200, ints.text
    assert ints.json() == floats.json()


def _row(heldout: pd.DataFrame, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(as_rows(heldout)[0])
    for name, value in changes.items():
        if value is ...:
            del row[name]
        else:
            row[name] = value
    return row


BAD_REQUESTS: dict[str, tuple[Any, list[str]]] = {
    "missing feature": ({"rows": ["GOOD", {"drop": "mean_texture"}]}, ["rows[1]", "missing", "mean_texture"]),
    "extra feature": ({"rows": [{"add": ("colour", 3)}]}, ["rows[0]", "unknown feature", "colour"]),
    "string value": ({"rows": [{"set": ("worst_area", "big")}]}, ["rows[0].worst_area", "must be a number"]),
    "boolean value": ({"rows": [{"set": ("mean_radius", True)}]}, ["rows[0].mean_radius", "boolean"]),
    "null value": ({"rows": [{"set": ("mean_radius", None)}]}, ["rows[0].mean_radius", "null"]),
    "empty batch": ({"rows": []}, ["'rows' is empty"]),
    "oversized batch": (
        {"rows": ["GOOD"] * (MAX_ROWS + 1)},
        [f"{MAX_ROWS + 1} rows", f"limit of {MAX_ROWS}"],
    ),
    "row not an object": ({"rows": [[1.0, 2.0]]}, ["rows[0] must be an object"]),
    # BentoML's pydantic model (rows: list) answers before model.validation sees the value.
    "rows not an array": ({"rows": {"mean_radius": 1}}, ['"loc":["rows"]', "Input should be a valid array"]),
    "no rows field": ({"features": []}, ["body has no rows", "'columns' (the feature names) with 'data'"]),
    "both forms": ({"rows": ["GOOD"], "columns": ["mean_radius"]}, ["both 'rows' and 'columns'/'data'"]),
    "columns without data": ({"columns": ["mean_radius"]}, ["'columns' without 'data'"]),
}


def _materialize(body: Any, heldout: pd.DataFrame) -> Any:
    if not isinstance(body.get("rows"), list):
        return body
    rows: list[Any] = []
    for spec in body["rows"]:
        if spec == "GOOD":
            rows.append(_row(heldout))
        elif isinstance(spec, dict) and "drop" in spec:
            rows.append(_row(heldout, **{spec["drop"]: ...}))
        elif isinstance(spec, dict) and ("add" in spec or "set" in spec):
            name, value = spec.get("add") or spec["set"]
            rows.append(_row(heldout, **{name: value}))
        else:
            rows.append(spec)
    return {**body, "rows": rows}


@pytest.mark.servers
@pytest.mark.parametrize("path", ["/predict", "/predict_proba"])
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_naming_the_problem(
    server: str, heldout: pd.DataFrame, path: str, case: str
) -> None:
    body, fragments = BAD_REQUESTS[case]
    response = post(server, path, _materialize(body, heldout))
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    for fragment in fragments:
        assert fragment in response.text, response.text


@pytest.mark.servers
@pytest.mark.parametrize(
    ("literal", "fragment"), [("NaN", "got nan"), ("Infinity", "got inf"), ("-Infinity", "got -inf")]
)
def test_non_finite_numbers_get_a_4xx(
    server: str, heldout: pd.DataFrame, literal: str, fragment: str
) -> None:
    body = json.dumps({"rows": [_row(heldout, mean_radius="PLACEHOLDER")]}).replace('"PLACEHOLDER"', literal)
    response = post(server, "/predict", body)
    assert response.status_code == 400, (response.status_code, response.text)
    assert "rows[0].mean_radius must be a finite number" in response.text, response.text
    assert fragment in response.text


@pytest.mark.servers
def test_a_body_over_the_limit_is_refused_before_it_is_read(server: str) -> None:
    from model.container import DEFAULT_MAX_BODY_BYTES

    big = b"[" * (DEFAULT_MAX_BODY_BYTES + 1)
    declared = requests.post(
        f"{server}/predict", data=big, headers={"Content-Type": "application/json"}, timeout=120
    )
    assert declared.status_code == 413 and "over the limit" in declared.text
    chunked = requests.post(
        f"{server}/predict",
        data=iter([big[:1_000_000]] * 5),
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert chunked.status_code == 413 and "(chunked)" in chunked.text


@pytest.mark.servers
@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b'{"rows": []}', {"Content-Type": "text/plain"}, 415, "send application/json"),
        (b'{"rows": []}', {"Content-Type": "application/x-www-form-urlencoded"}, 415, "not accepted"),
        (
            b'{"rows": [{"a": "\xff"}]}',
            {"Content-Type": "application/json"},
            400,
            "JSON",
        ),
        (
            b'{"rows": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            {"Content-Type": "application/json"},
            400,
            "recursion",
        ),
        (b'{"rows": [{"mean_radius": 1e999}]}', {"Content-Type": "application/json"}, 400, "rows[0]"),
    ],
)
def test_bodies_that_are_not_json_rows_get_a_4xx(
    server: str, body: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    response = requests.post(f"{server}/predict", data=body, headers=headers, timeout=120)
    assert response.status_code == status, response.text
    assert fragment in response.text


@pytest.mark.servers
def test_malformed_json_gets_a_4xx(server: str) -> None:
    response = post(server, "/predict", '{"rows": [')
    assert 400 <= response.status_code < 500, response.text
    assert "JSON" in response.text


@pytest.mark.servers
def test_bad_requests_do_not_fail_good_ones_batched_with_them(server: str, heldout: pd.DataFrame) -> None:
    good, bad = {"rows": [_row(heldout)]}, {"rows": [_row(heldout, mean_radius="x")]}
    bodies = [good if i % 2 else bad for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda body: post(server, "/predict", body).status_code, bodies))
    assert codes == [200 if i % 2 else 400 for i in range(24)]


@pytest.mark.servers
def test_health_and_metrics_endpoints(server: str) -> None:
    assert requests.get(f"{server}{READINESS_PATH}", timeout=30).status_code == 200
    assert requests.get(f"{server}{LIVENESS_PATH}", timeout=30).status_code == 200
    post(server, "/predict", {"rows": []})  # at least one request counted
    metrics = requests.get(f"{server}{METRICS_PATH}", timeout=30)
    assert metrics.status_code == 200
    assert "bentoml_service_request_total" in metrics.text
    assert 'endpoint="/predict"' in metrics.text


def test_service_module_points_at_the_model_tag_from_the_environment(tmp_path: Path) -> None:
    """A fresh interpreter (the module reads the env var at import) with SERVING_MODEL_TAG set."""
    probe = (
        "import json, model.service as s\n"
        "print(json.dumps({'file': s.__file__, 'served': str(s.SERVED_MODEL.tag),"
        " 'bento_model': s.Classifier.inner.bento_model is s.SERVED_MODEL,"
        " 'models': [str(m.tag) for m in s.Classifier.models],"
        " 'names': [s.Classifier.name, s.Regressor.name],"
        " 'apis': [sorted(s.Classifier.apis), sorted(s.Regressor.apis)],"
        " 'bound': [sorted(__import__('model.api_callers', fromlist=['x']).api_methods(c.inner))"
        " for c in (s.Classifier, s.Regressor)],"
        " 'binds': 'bind_api_callers(self)' in __import__('inspect').getsource(s._Served.__init__),"
        " 'timeout_middleware': [m.cls.__qualname__ for m in __import__('bentoml._internal.server.base_app',"
        " fromlist=['x']).BaseAppFactory.middlewares.fget(__import__('types').SimpleNamespace("
        "timeout=60, max_concurrency=None))],"
        " 'shutdown_hooks': [n for n in dir(s.Classifier.inner)"
        " if getattr(getattr(s.Classifier.inner, n), '__bentoml_shutdown_hook__', False)],"
        " 'model_files': sorted(m.__file__ for n, m in __import__('sys').modules.items()"
        " if n == 'model' or n.startswith('model.'))}))"
    )
    tag = "env_chosen_model:0123abcd"
    env = {**os.environ, MODEL_TAG_ENV: tag, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).parent == REPO_ROOT / "model"
    assert seen["served"] == tag
    assert seen["bento_model"] is True
    assert seen["models"] == [tag]
    assert seen["names"] == ["env_chosen_model", "env_chosen_model"]  # the service is named after the model
    assert seen["apis"] == [["feedback", "predict", "predict_proba"], ["feedback", "predict"]]
    assert seen["bound"] == seen["apis"]  # model.api_callers binds exactly BentoML's APIs
    assert seen["binds"] is True  # ... in each worker's instance
    # BentoML makes its traffic.timeout middleware from the class model.service put in its place.
    assert seen["timeout_middleware"] == ["RequestTimeout"]
    assert seen["shutdown_hooks"] == ["write_pending_counts"]  # BentoML's lifespan shutdown runs it
    # Every module of ours the service imports is one the bento carries (and the build identity covers).
    assert [Path(f).relative_to(REPO_ROOT).as_posix() for f in seen["model_files"]] == sorted(SERVING_SOURCES)
