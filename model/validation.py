"""Request validation for the serving API: check a batch of JSON rows against the model's input schema.

Pure functions, no BentoML or MLflow imports: ``model.service`` builds a ``RowSchema`` from the MLflow
model signature and calls ``validate_batch`` while the request is parsed, so a bad request is
answered 400 on its own. Every problem is reported with the row index and feature name and what to
send instead.

``validate_batch`` gives a ``Batch``: one numpy array per feature, typed as the signature says
(``COLUMN_DTYPES``), what the model is called on. Its fast path checks the value types of a whole
column at once and converts it in one numpy call (when every feature is a double, the whole request
in one call: a (rows, features) matrix whose columns are the feature arrays, ``ColumnTable``, handed
as is to whatever wants a block of them, ``block``); anything it does not take as is (a missing or
extra feature, a wrong type, a non-finite number, an integer out of range, a float in an integer
column...) goes through ``validate_rows``, the per-value check that names every problem, so the
answer to a bad request does not depend on the path.

A request's rows come in one of two forms: ``rows``, one object of feature: value per row
(``validate_batch``), or the column form of pandas' "split" orient, ``columns`` (the feature names,
once, in any order) and ``data`` (one array of values per row, in that order; ``validate_columns``),
which spells each name once instead of once per row and so parses in about a third of the time.
Both give the same Batch and name a bad value by row and feature (``rows[i].name``,
``data[i].name``); ``request_batch`` says which form a request used, or why it used neither.

Per signature type: ``double``/``float`` take JSON numbers (integers are converted: MLflow's schema
enforcement would reject int64 for a double column), ``long``/``integer`` whole numbers in range,
``boolean`` JSON true/false, ``string`` JSON strings (and, when the model lists the feature's
categories, one of them). Null, NaN and infinities are refused everywhere.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

DEFAULT_MAX_ROWS = 1000
MAX_REPORTED_PROBLEMS = 10  # a message lists at most this many problems, then "... and N more"

_FLOAT_TYPES = frozenset({"double", "float"})
_INT_BOUNDS = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}  # int64, int32
_INT_TYPES = frozenset(_INT_BOUNDS)
_OTHER_TYPES = frozenset({"boolean", "string"})
Value = float | int | bool | str
# The dtype each signature type becomes in the arrays handed to the model.
COLUMN_DTYPES: dict[str, type] = {
    "double": np.float64,
    "float": np.float32,
    "long": np.int64,
    "integer": np.int32,
    "boolean": np.bool_,
    "string": np.object_,
}
_NUMBER_TYPES = frozenset({int, float})  # exact types: bool (an int subclass) is not a number here


# The request body's fields: where a batch's rows come in ("rows", or "data" in the column form),
# and the column form's feature names.
RowsField = Literal["rows", "data"]
BodyField = Literal["rows", "columns", "data"]


class RequestValidationError(ValueError):
    """A request the model cannot score; the message names every problem found (row, feature, fix),
    ``field`` the body's field they are in."""

    def __init__(self, problems: Sequence[str], *, field: BodyField) -> None:
        self.problems = tuple(problems)
        self.field = field
        shown = list(self.problems[:MAX_REPORTED_PROBLEMS])
        if len(self.problems) > MAX_REPORTED_PROBLEMS:
            shown.append(f"... and {len(self.problems) - MAX_REPORTED_PROBLEMS} more problems")
        super().__init__("; ".join(shown))


@dataclass(frozen=True)
class RowSchema:
    """The model's input columns in signature order: ``(name, mlflow type)`` pairs, and a row limit."""

    columns: tuple[tuple[str, str], ...]
    max_rows: int = DEFAULT_MAX_ROWS
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # string feature -> allowed

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("the model signature has no input columns: log the model with a signature")
        unsupported = [
            f"{name} ({kind})"
            for name, kind in self.columns
            if kind not in _FLOAT_TYPES | _INT_TYPES | _OTHER_TYPES
        ]
        if unsupported:
            raise ValueError(
                f"model signature columns of types this service does not serve: {', '.join(unsupported)}; "
                "declare the features as double, long, boolean or string in the model spec"
            )
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {self.max_rows}")
        repeated = _repeated(self.names)
        if repeated:
            raise ValueError(
                f"the model signature names input column(s) {_quoted(repeated)} more than once: "
                "give each feature one name in the model spec and retrain"
            )

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @functools.cached_property
    def all_double(self) -> bool:
        """Every feature is a double: a request is one float64 matrix (``ColumnTable``)."""
        return all(kind == "double" for _, kind in self.columns)


class ColumnTable(dict[str, np.ndarray]):
    """Feature arrays that are the columns of one (rows, features) float64 ``matrix``, in ``names`` order."""

    def __init__(self, names: tuple[str, ...], matrix: np.ndarray) -> None:
        # Read-only: the model's steps get this matrix itself, and a step that works in place (a
        # scaler with copy=False) must not change what monitoring then counts.
        matrix.flags.writeable = False
        super().__init__((name, matrix[:, j]) for j, name in enumerate(names))
        self.names = names
        self.matrix = matrix


def block(columns: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """The (rows, len(names)) array of ``columns[name]`` side by side: a ColumnTable's own matrix
    when it holds exactly these columns in this order, else a new stack."""
    if isinstance(columns, ColumnTable) and tuple(names) == columns.names:
        return columns.matrix
    return np.column_stack([columns[name] for name in names])


@dataclass(frozen=True)
class Batch:
    """A validated request: one array per feature (signature order, ``COLUMN_DTYPES``), ``size`` rows."""

    columns: dict[str, np.ndarray]
    size: int
    field: RowsField = "rows"  # the body's field the rows came in


def validate_batch(rows: object, schema: RowSchema) -> Batch:
    """``rows`` checked against ``schema`` and converted to typed columns, or RequestValidationError."""
    _check_count(rows, schema)
    assert isinstance(rows, list)
    columns = _fast_columns(rows, schema)
    if columns is None:
        columns = _checked_columns(rows, schema, "rows")
    return Batch(columns, len(rows))


_DATA_ROW = "an array of values in the order of 'columns'"  # one row of the column form
_ROWS_OR_COLUMNS = (
    "send the rows either as 'rows' (an array of objects, feature: value) or as 'columns' (the "
    f"feature names) with 'data' (an array of rows, each {_DATA_ROW})"
)


def request_batch(rows: Batch | None, columns: object, data: object, schema: RowSchema) -> Batch:
    """The validated batch of a request in either form: ``rows`` as ``validate_batch`` gave it
    while the body was parsed, or ``columns`` and ``data`` checked here; RequestValidationError for
    a body with both forms, or neither (a valid ``rows`` was checked before the body's other fields
    were looked at: a body with both forms and bad rows is told about its rows first)."""
    if rows is not None:
        if columns is not None or data is not None:
            raise RequestValidationError(
                [f"the body has both 'rows' and 'columns'/'data': {_ROWS_OR_COLUMNS}"], field="rows"
            )
        return rows
    if columns is None or data is None:
        given: dict[tuple[bool, bool], tuple[str, BodyField]] = {
            (False, True): ("'columns' without 'data'", "data"),
            (True, False): ("'data' without 'columns'", "columns"),
        }
        what, where = given.get((columns is None, data is None), ("no rows", "rows"))
        raise RequestValidationError([f"the body has {what}: {_ROWS_OR_COLUMNS}"], field=where)
    return validate_columns(columns, data, schema)


def validate_columns(columns: object, data: object, schema: RowSchema, *, numbers: bool = False) -> Batch:
    """The column form of a request (``columns``: the feature names; ``data``: per row, the values
    in that order) checked against ``schema`` and converted like ``validate_batch``. ``numbers``:
    the caller has already checked that every value is a float (``model.column_path``)."""
    order = _checked_names(columns, schema)
    _check_count(data, schema, "data")
    assert isinstance(data, list)
    width = len(order)
    shape_problems = [
        f"data[{index}] must be an array of {width} values in the order of 'columns', got "
        + (f"an array of {len(values)}" if isinstance(values, list) else _json_type(values))
        for index, values in enumerate(data)
        if type(values) is not list or len(values) != width
    ]
    if shape_problems:
        raise RequestValidationError(shape_problems, field="data")
    typed = _fast_table(data, order, schema, numbers=numbers)
    if typed is None:
        typed = _checked_columns([dict(zip(order, values, strict=True)) for values in data], schema, "data")
    return Batch(typed, len(data), "data")


def _checked_names(columns: object, schema: RowSchema) -> tuple[str, ...]:
    if isinstance(columns, list) and tuple(columns) == schema.names:  # the signature's order, as sent most
        return schema.names
    if not isinstance(columns, list) or not all(isinstance(name, str) for name in columns):
        raise RequestValidationError(
            [f"'columns' must be an array of feature names (strings), got {_json_type(columns)}"],
            field="columns",
        )
    repeated = _repeated(columns)
    problems = (
        [f"'columns' names feature(s) {_quoted(repeated)} more than once: name each once"] if repeated else []
    )
    problems += _name_problems("'columns'", columns, schema)
    if problems:
        raise RequestValidationError(problems, field="columns")
    return tuple(columns)


def _checked_columns(rows: list[Any], schema: RowSchema, field: RowsField) -> dict[str, np.ndarray]:
    """The typed columns of ``rows`` after the per-value check, which raises, naming every problem
    (as ``field[i].feature``), unless the rows are fine."""
    clean = validate_rows(rows, schema, field)
    return {
        name: np.array([row[name] for row in clean], dtype=COLUMN_DTYPES[kind])
        for name, kind in schema.columns
    }


def _fast_columns(rows: list[Any], schema: RowSchema) -> dict[str, np.ndarray] | None:
    """The typed columns when every row is plainly valid; None sends the request to validate_rows."""
    names = schema.names
    width = len(names)
    if not all(type(row) is dict and len(row) == width for row in rows):
        return None
    pick = operator.itemgetter(*names)
    try:
        table = [pick(row) for row in rows] if width > 1 else [(pick(row),) for row in rows]
    except KeyError:
        return None
    return _fast_table(table, names, schema)


def _fast_table(
    table: Sequence[Sequence[object]], order: tuple[str, ...], schema: RowSchema, *, numbers: bool = False
) -> dict[str, np.ndarray] | None:
    """The typed columns (signature order) of ``table``, rows of values in ``order``, when every
    value is plainly valid; None sends the request to the per-value check."""
    names = schema.names
    if schema.all_double:
        matrix = _double_matrix(table, numbers=numbers)
        if matrix is None:
            return None
        if order != names:
            position = {name: j for j, name in enumerate(order)}
            # C order as the row form's matrix: the model's arithmetic then sums in the same order.
            matrix = np.ascontiguousarray(matrix[:, [position[name] for name in names]])
        return ColumnTable(names, matrix)
    values = dict(zip(order, zip(*table, strict=True), strict=True))
    columns: dict[str, np.ndarray] = {}
    for name, kind in schema.columns:
        column = _fast_column(values[name], kind, schema.categories.get(name))
        if column is None:
            return None
        columns[name] = column
    return columns


def _double_matrix(table: Sequence[Sequence[object]], *, numbers: bool = False) -> np.ndarray | None:
    """The rows of ``table`` as one float64 matrix when every value is a finite JSON number, else None
    (``numbers``: the values are known to be floats)."""
    if not numbers and not set(map(type, itertools.chain.from_iterable(table))) <= _NUMBER_TYPES:
        return None
    try:
        matrix = np.array(table, dtype=np.float64)  # OverflowError for an int beyond a double
    except OverflowError:
        return None
    return matrix if np.isfinite(matrix).all() else None


def _fast_column(
    values: tuple[object, ...], kind: str, categories: Sequence[str] | None
) -> np.ndarray | None:
    types = set(map(type, values))
    try:
        if kind in _FLOAT_TYPES:
            if not types <= _NUMBER_TYPES:
                return None
            column = np.array(values, dtype=np.float64)  # OverflowError for an int beyond a double
            if not np.isfinite(column).all():
                return None
            return column if kind == "double" else column.astype(np.float32)
        if kind in _INT_TYPES:
            if types != {int}:
                return None
            column = np.array(values, dtype=np.int64)  # OverflowError beyond int64
            low, high = _INT_BOUNDS[kind]
            if kind == "integer" and (column.min() < low or column.max() > high):
                return None
            return column.astype(COLUMN_DTYPES[kind], copy=False)
    except OverflowError:
        return None
    if kind == "boolean":
        return np.array(values, dtype=np.bool_) if types == {bool} else None
    if types != {str} or (categories is not None and not set(values).issubset(categories)):
        return None
    return np.array(values, dtype=np.object_)


def validate_rows(rows: object, schema: RowSchema, field: RowsField = "rows") -> list[dict[str, Value]]:
    """Return ``rows`` with every value checked and typed for the model, or raise RequestValidationError
    naming each problem as ``field[index].feature``: ``field`` is the body field the rows came in
    (``Batch.field``; for the column form, the rows are its ``data`` zipped with ``columns``)."""
    _check_count(rows, schema, field)
    assert isinstance(rows, list)
    problems: list[str] = []
    clean: list[dict[str, Value]] = []
    for index, row in enumerate(rows):
        typed, row_problems = _validate_row(f"{field}[{index}]", row, schema)
        problems.extend(row_problems)
        clean.append(typed)
    if problems:
        raise RequestValidationError(problems, field=field)
    return clean


_ROW_FORMS: dict[RowsField, str] = {
    "rows": "objects (feature: value)",
    "data": f"rows, each {_DATA_ROW}",
}


def _check_count(rows: object, schema: RowSchema, field: RowsField = "rows") -> None:
    if not isinstance(rows, list):
        raise RequestValidationError(
            [f"'{field}' must be a JSON array of {_ROW_FORMS[field]}, got {_json_type(rows)}"], field=field
        )
    if not rows:
        raise RequestValidationError([f"'{field}' is empty: send at least one row"], field=field)
    if len(rows) > schema.max_rows:
        raise RequestValidationError(
            [
                f"'{field}' has {len(rows)} rows, more than the limit of {schema.max_rows} per request: "
                f"split the batch into requests of at most {schema.max_rows} rows"
            ],
            field=field,
        )


def _validate_row(where: str, row: object, schema: RowSchema) -> tuple[dict[str, Value], list[str]]:
    if not isinstance(row, Mapping):
        return {}, [f"{where} must be an object of feature: value, got {_json_type(row)}"]
    problems = _name_problems(where, row, schema)
    typed: dict[str, Value] = {}
    for name, kind in schema.columns:
        if name not in row:
            continue
        value, problem = _typed_value(row[name], kind, schema.categories.get(name))
        if problem:
            problems.append(f"{where}.{name} {problem}")
        else:
            typed[name] = value
    return typed, problems


def _name_problems(where: str, names: Iterable[Any], schema: RowSchema) -> list[str]:
    """The signature features missing from ``names`` (a row's keys, or 'columns') and those it
    has beyond them."""
    given = set(names)
    missing = [name for name in schema.names if name not in given]
    known = set(schema.names)
    extra = [str(name) for name in dict.fromkeys(names) if name not in known]
    problems = []
    if missing:
        problems.append(f"{where} is missing feature(s) {_quoted(missing)}: send all {len(schema.names)}")
    if extra:
        problems.append(
            f"{where} has unknown feature(s) {_quoted(extra)}: the model takes only its "
            f"{len(schema.names)} signature features (e.g. {_quoted(schema.names[:3])})"
        )
    return problems


def _typed_value(
    value: object, kind: str, categories: Sequence[str] | None = None
) -> tuple[Value, str | None]:
    if kind == "boolean":
        if isinstance(value, bool):
            return value, None
        return False, f"must be true or false, got {_json_type(value)}"
    if kind == "string":
        if not isinstance(value, str):
            return "", f"must be a string, got {_json_type(value)}"
        if categories is not None and value not in categories:
            return "", f"must be one of {_quoted(list(categories), 10)}, got {_short(value)}"
        return value, None
    # bool is an int subclass in Python; JSON true/false is not a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0, f"must be a number, got {_json_type(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return 0, f"must be a finite number, got {value}"
    if kind in _FLOAT_TYPES:
        try:
            return float(value), None
        except OverflowError:  # an integer beyond the range of a double
            return 0, f"is out of range for a {kind}: {_short(value)}"
    if isinstance(value, float) and not value.is_integer():
        return 0, f"must be a whole number for a {kind} feature, got {value}"
    low, high = _INT_BOUNDS[kind]
    if not low <= value <= high:
        return 0, f"is out of range for a {kind} ({low}..{high}): {_short(value)}"
    return int(value), None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _repeated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def _quoted(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{name}'" for name in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def overflow_problem(batch: Batch) -> RequestValidationError:
    """The 400 for a batch whose numbers are finite but overflow the model's arithmetic (a scaler's
    ``(x - mean) / std`` turns 1e308 into inf, which scikit-learn refuses): it names the row and
    feature of the largest magnitude, the likeliest culprit."""
    best: tuple[float, int, str] | None = None
    for name, column in batch.columns.items():
        if column.size == 0 or column.dtype.kind not in "fiu":
            continue
        magnitudes = np.abs(column.astype(np.float64))
        index = int(np.argmax(magnitudes))
        if best is None or magnitudes[index] > best[0]:
            best = (float(magnitudes[index]), index, name)
    if best is None:
        return RequestValidationError(["the model could not compute with these values"], field=batch.field)
    _, index, name = best
    value = batch.columns[name][index].item()
    return RequestValidationError(
        [
            f"{batch.field}[{index}].{name} = {value!r} is too large for the model to compute with (its "
            "arithmetic overflows to infinity): send values in the range the feature is measured in"
        ],
        field=batch.field,
    )
