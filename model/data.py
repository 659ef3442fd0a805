"""Load the training CSV and validate it against the expected schema before anything is trained.

Every problem raises a ``DataValidationError`` whose message names the file, the column and the rule
that failed, and says what to do. Missing values are rejected rather than imputed: the data set is
small and clean, the serving schema has no notion of "missing", and silently filling a gap in a
medical feature would hide an upstream bug.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from model.params import DEFAULT_MIN_ROWS_PER_CLASS

# The 30 breast-cancer features of sklearn.datasets.load_breast_cancer, snake_case, in its order.
FEATURES: tuple[str, ...] = (
    "mean_radius",
    "mean_texture",
    "mean_perimeter",
    "mean_area",
    "mean_smoothness",
    "mean_compactness",
    "mean_concavity",
    "mean_concave_points",
    "mean_symmetry",
    "mean_fractal_dimension",
    "radius_error",
    "texture_error",
    "perimeter_error",
    "area_error",
    "smoothness_error",
    "compactness_error",
    "concavity_error",
    "concave_points_error",
    "symmetry_error",
    "fractal_dimension_error",
    "worst_radius",
    "worst_texture",
    "worst_perimeter",
    "worst_area",
    "worst_smoothness",
    "worst_compactness",
    "worst_concavity",
    "worst_concave_points",
    "worst_symmetry",
    "worst_fractal_dimension",
)
TARGET = "target"  # 0 = malignant, 1 = benign
TARGET_VALUES = frozenset({0, 1})
_MAX_LISTED = 5  # how many offending rows/values a message quotes


class DataValidationError(ValueError):
    """Training data that cannot be used; the message says where, which rule, and what to do."""

    def __init__(self, file: str | Path, column: str | None, rule: str, problem: str, fix: str) -> None:
        self.file = str(file)
        self.column = column
        self.rule = rule
        where = f"column '{column}'" if column else "whole file"
        super().__init__(f"{self.file}: {where}: rule '{rule}' failed: {problem}. Fix: {fix}")


def load_dataset(path: str | Path, *, min_rows_per_class: int = DEFAULT_MIN_ROWS_PER_CLASS) -> pd.DataFrame:
    """Read ``path`` and return the validated frame: FEATURES as float64 then TARGET as int64."""
    path = Path(path)
    frame = _read_csv(path)
    return validate_frame(frame, source=path, min_rows_per_class=min_rows_per_class)


def validate_frame(
    frame: pd.DataFrame, *, source: str | Path, min_rows_per_class: int = DEFAULT_MIN_ROWS_PER_CLASS
) -> pd.DataFrame:
    """Check ``frame`` against the schema; ``source`` names it in errors. Returns a clean copy."""
    if min_rows_per_class < 1:
        raise ValueError(f"min_rows_per_class must be >= 1, got {min_rows_per_class}")
    _check_columns(frame, source)
    if frame.empty:
        raise DataValidationError(
            source,
            None,
            "not-empty",
            "the file has a header but no data rows",
            "regenerate it with `python data/make_dataset.py` or point --data-path at a file with rows",
        )
    for column in (*FEATURES, TARGET):
        _check_not_all_missing(frame, column, source)
        _check_numeric(frame, column, source)
    for column in FEATURES:
        _check_finite(frame, column, source)
    target = _check_target(frame, source)
    _check_class_counts(target, min_rows_per_class, source)
    clean = frame.loc[:, list(FEATURES)].astype("float64")
    clean[TARGET] = target
    return clean.reset_index(drop=True)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataValidationError(
            path,
            None,
            "file-exists",
            "no such file",
            "check the path, or create the data set with `python data/make_dataset.py`",
        )
    if not path.is_file():
        raise DataValidationError(
            path, None, "is-file", "the path is a directory", "pass the CSV file itself"
        )
    head = path.read_bytes()[:8192]
    if not head.strip():
        raise DataValidationError(
            path,
            None,
            "not-empty",
            "the file is empty",
            f"write a CSV with a header row ({', '.join(FEATURES[:2])}, ..., {TARGET}) and data rows",
        )
    if b"\x00" in head:
        raise DataValidationError(
            path,
            None,
            "is-csv",
            "the file is binary, not CSV text",
            "export the data as comma-separated UTF-8 text with a header row",
        )
    try:
        header = next(csv.reader([head.split(b"\n", 1)[0].decode("utf-8")]))
        frame = pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, csv.Error) as exc:
        raise DataValidationError(
            path,
            None,
            "is-csv",
            f"the file cannot be parsed as CSV ({exc})",
            "export the data as comma-separated UTF-8 text with a header row",
        ) from exc
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataValidationError(
            path,
            duplicates[0],
            "unique-columns",
            f"duplicate column names {duplicates}",
            "keep one column per name",
        )
    return frame


def _check_columns(frame: pd.DataFrame, source: str | Path) -> None:
    present = [str(name) for name in frame.columns]
    expected = [*FEATURES, TARGET]
    missing = [name for name in expected if name not in present]
    unexpected = [name for name in present if name not in expected]
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"missing columns {missing}")
    if unexpected:
        parts.append(f"unexpected columns {unexpected}")
    raise DataValidationError(
        source,
        (missing or unexpected)[0],
        "expected-columns",
        "; ".join(parts),
        f"the header must hold exactly the {len(FEATURES)} features of model.data.FEATURES plus "
        f"'{TARGET}' (any order); rename or drop columns accordingly",
    )


def _check_not_all_missing(frame: pd.DataFrame, column: str, source: str | Path) -> None:
    if frame[column].isna().all():
        raise DataValidationError(
            source,
            column,
            "not-all-missing",
            "every value is empty/NaN",
            "fill the column with measured values or regenerate the file",
        )


def _check_numeric(frame: pd.DataFrame, column: str, source: str | Path) -> None:
    series = frame[column]
    if ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series):
        return
    coerced = pd.to_numeric(series, errors="coerce")
    bad = series[coerced.isna() & series.notna()]
    examples = ", ".join(f"line {_line(i)}: {v!r}" for i, v in bad.head(_MAX_LISTED).items())
    raise DataValidationError(
        source,
        column,
        "numeric",
        f"values are not numbers (dtype {series.dtype}; e.g. {examples or 'booleans'})",
        "label each row 0 (malignant) or 1 (benign)"
        if column == TARGET
        else "write plain decimal numbers (use '.' as the decimal point, no units or text)",
    )


def _check_finite(frame: pd.DataFrame, column: str, source: str | Path) -> None:
    values = frame[column].to_numpy(dtype="float64")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        lines = ", ".join(str(_line(int(i))) for i in bad[:_MAX_LISTED])
        raise DataValidationError(
            source,
            column,
            "finite",
            f"{bad.size} missing/NaN/inf value(s), first on CSV line(s) {lines}",
            "fill in or drop those rows; missing values are not imputed",
        )


def _check_target(frame: pd.DataFrame, source: str | Path) -> pd.Series:
    values = frame[TARGET]
    bad = values[~values.map(lambda v: _is_label(v))]
    if not bad.empty:
        examples = ", ".join(f"line {_line(i)}: {v!r}" for i, v in bad.head(_MAX_LISTED).items())
        raise DataValidationError(
            source,
            TARGET,
            "target-in-{0,1}",
            f"{len(bad)} value(s) outside {{0, 1}} ({examples})",
            "label each row 0 (malignant) or 1 (benign)",
        )
    return values.astype("int64")


def _is_label(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and (
        not math.isnan(float(value)) and float(value) in TARGET_VALUES
    )


def _check_class_counts(target: pd.Series, min_rows: int, source: str | Path) -> None:
    counts = {label: int((target == label).sum()) for label in sorted(TARGET_VALUES)}
    short = {label: n for label, n in counts.items() if n < min_rows}
    if short:
        raise DataValidationError(
            source,
            TARGET,
            "min-rows-per-class",
            f"class counts {counts}; class(es) {sorted(short)} have fewer than {min_rows} rows",
            "add rows of the rare class, or lower the minimum (--min-rows-per-class) knowingly",
        )


def _line(index: object) -> int:
    """CSV line number of a 0-based row index (line 1 is the header)."""
    return int(index) + 2  # type: ignore[call-overload]
