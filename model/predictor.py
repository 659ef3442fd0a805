"""The served scikit-learn pipeline, called on validated column arrays (``model.validation.Batch``).

``model.train`` fits ``Pipeline([("preprocess", ColumnTransformer(by column name)), ..., estimator])``.
Fed a pandas frame, every call pays the frame's construction, pandas indexing per transformer and
scikit-learn's feature-name checks: about 0.6 ms for one row, several times the arithmetic itself.
``predictor_for`` turns the fitted ColumnTransformer into its parts (a fitted transformer and the
names of its columns), applies each to a 2-D array cut from the batch's columns and stacks the
results in the same order, then runs the rest of the pipeline: the same fitted objects, the same
arithmetic, no frame. On top of it, ``KernelPredictor`` swaps every fitted step that has a numpy form
(``model.kernels``: a standard scaler, a linear model) for that form, which skips scikit-learn's
per-call input validation (most of a small request's model time). Each is used only after it
answered exactly as the pipeline on a frame did on probe rows built from the schema, with no
warning; the kernel form first, then the array form, and any other pipeline, or a difference, keeps
the frame path (``FramePredictor``), which is what MLflow's pyfunc calls.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from model.validation import COLUMN_DTYPES, RowSchema, block

logger = logging.getLogger(__name__)

Columns = Mapping[str, np.ndarray]
PROBE_ROWS = 12
_PROBE_NUMBERS = (0.0, 1.0, -1.5, 2.75, 10.0, -0.25, 100.0, 0.5, 3.0, -7.0, 0.125, 42.0)


class Predictor(Protocol):
    def predict(self, columns: Columns) -> np.ndarray: ...

    def predict_proba(self, columns: Columns) -> np.ndarray: ...


@dataclass(frozen=True)
class FramePredictor:
    """The pipeline on a pandas frame of the columns, as MLflow's pyfunc calls it."""

    pipeline: Any
    names: tuple[str, ...]

    def _frame(self, columns: Columns) -> Any:
        import pandas as pd

        return pd.DataFrame({name: columns[name] for name in self.names}, copy=False)

    def predict(self, columns: Columns) -> np.ndarray:
        return np.asarray(self.pipeline.predict(self._frame(columns)))

    def predict_proba(self, columns: Columns) -> np.ndarray:
        return np.asarray(self.pipeline.predict_proba(self._frame(columns)))


@dataclass(frozen=True)
class ArrayPredictor:
    """The fitted ColumnTransformer's parts on numpy blocks, then the rest of the pipeline."""

    parts: tuple[tuple[Any, tuple[str, ...]], ...]  # (fitted transformer or None = passthrough, columns)
    rest: Any  # the estimator, or a sub-pipeline ending in it

    def transform(self, columns: Columns) -> np.ndarray:
        blocks = []
        for transformer, names in self.parts:
            part = block(columns, names)
            blocks.append(part if transformer is None else transformer.transform(part))
        return blocks[0] if len(blocks) == 1 else np.hstack(blocks)

    def predict(self, columns: Columns) -> np.ndarray:
        return np.asarray(self.rest.predict(self.transform(columns)))

    def predict_proba(self, columns: Columns) -> np.ndarray:
        return np.asarray(self.rest.predict_proba(self.transform(columns)))


@dataclass(frozen=True)
class KernelPredictor(ArrayPredictor):
    """An ArrayPredictor whose fitted steps that have one run as their numpy kernel."""

    steps: tuple[str, ...] = ()  # the classes that run as kernels


def kernel_predictor(array: ArrayPredictor) -> KernelPredictor | None:
    """``array`` with its kernels (``model.kernels.kernel_for``), or None when no step has one."""
    from model.kernels import kernel_for

    steps: list[str] = []

    def swapped(fitted: Any) -> Any:
        kernel = None if fitted is None else kernel_for(fitted)
        if kernel is None:
            return fitted
        steps.append(type(fitted).__name__)
        return kernel

    parts = tuple((swapped(transformer), names) for transformer, names in array.parts)
    rest = swapped(array.rest)
    return KernelPredictor(parts, rest, tuple(steps)) if steps else None


def array_predictor(pipeline: Any, schema: RowSchema) -> ArrayPredictor | str:
    """The pipeline's ArrayPredictor, or why it has none (then the frame path serves it)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) < 2:
        return f"{type(pipeline).__name__} is not a Pipeline of a ColumnTransformer and an estimator"
    preprocess = pipeline.steps[0][1]
    if not isinstance(preprocess, ColumnTransformer):
        return f"its first step is a {type(preprocess).__name__}, not a ColumnTransformer"
    known = set(schema.names)
    parts: list[tuple[Any, tuple[str, ...]]] = []
    for name, transformer, selection in preprocess.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        names = (selection,) if isinstance(selection, str) else tuple(selection)
        if not names:
            continue
        if not all(isinstance(c, str) and c in known for c in names):
            return f"its part {name!r} selects columns {names!r} that are not signature names"
        if isinstance(transformer, str):
            if transformer != "passthrough":
                return f"its part {name!r} is {transformer!r}"
            parts.append((None, names))
            continue
        own = copy.deepcopy(transformer)
        if hasattr(own, "feature_names_in_"):  # fitted on a frame; we hand it the same columns in order
            del own.feature_names_in_
        parts.append((own, names))
    if not parts:
        return "its ColumnTransformer uses no column"
    rest = pipeline.steps[-1][1] if len(pipeline.steps) == 2 else pipeline[1:]
    return ArrayPredictor(tuple(parts), rest)


def predictor_for(pipeline: Any, schema: RowSchema) -> tuple[Predictor, str]:
    """The fastest predictor that answers as ``pipeline`` on a frame does, and a line saying which."""
    frame = FramePredictor(pipeline, schema.names)
    fast = array_predictor(pipeline, schema)
    if isinstance(fast, str):
        return frame, f"pandas frame path: {fast}"
    probes = probe_columns(schema)
    difference = first_difference(frame, fast, pipeline, probes)
    if difference:
        return frame, f"pandas frame path: the array path differs on probe rows ({difference})"
    how = f"array path: {len(fast.parts)} ColumnTransformer part(s) on numpy blocks"
    kernels = kernel_predictor(fast)
    if kernels is None:
        return fast, how
    difference = first_difference(frame, kernels, pipeline, probes)
    if difference:
        return fast, f"{how} (numpy kernels differ on probe rows: {difference})"
    return kernels, f"{how}, numpy kernels for {', '.join(kernels.steps)}"


def first_difference(frame: Predictor, fast: Predictor, pipeline: Any, columns: Columns) -> str | None:
    """Where ``fast`` does not answer exactly as ``frame`` (or warns), or None when it does."""
    methods = ["predict"] + (["predict_proba"] if hasattr(pipeline, "predict_proba") else [])
    for method in methods:
        expected = getattr(frame, method)(columns)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                got = getattr(fast, method)(columns)
            except Exception as exc:  # any failure means: keep the frame path
                return f"{method} raised {type(exc).__name__}: {exc}"
        if caught:
            return f"{method} warned: {caught[0].message}"
        if got.shape != expected.shape or not _equal(got, expected):
            return f"{method} gave other values"
    return None


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        return bool(np.allclose(a, b, rtol=1e-12, atol=1e-12))
    return bool(np.array_equal(a, b))


def probe_columns(schema: RowSchema) -> dict[str, np.ndarray]:
    """PROBE_ROWS rows that every feature type of ``schema`` accepts, varied per column."""
    columns: dict[str, np.ndarray] = {}
    for j, (name, kind) in enumerate(schema.columns):
        picks = [(i + j) % len(_PROBE_NUMBERS) for i in range(PROBE_ROWS)]
        values: list[Any]
        if kind == "boolean":
            values = [p % 2 == 0 for p in picks]
        elif kind == "string":
            choices = schema.categories.get(name) or ("probe",)
            values = [choices[p % len(choices)] for p in picks]
        elif kind in ("long", "integer"):
            values = [int(_PROBE_NUMBERS[p]) for p in picks]
        else:
            values = [_PROBE_NUMBERS[p] for p in picks]
        columns[name] = np.array(values, dtype=COLUMN_DTYPES[kind])
    return columns
