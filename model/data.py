"""Load a model spec's training CSV and validate it before anything is trained: ``load_dataset``.

The expected columns are the spec's ``features`` plus its ``target``, or, when the spec lists no
features, every column but the target with its type inferred from the file (``infer_features``);
a ``string`` feature without ``categories`` takes the file's distinct values. Either way the
result's ``features`` are what the MLflow signature and the served schema freeze. Rules:
readable UTF-8 CSV text separated by commas, unique and non-empty header names, (inferred features)
no numeric column with a stray non-number, the expected columns, at least one row,
per feature type (``double``/``long`` finite numbers, ``long`` whole, ``boolean`` true/false or
0/1, ``string`` non-empty and in its categories), no missing value anywhere (nothing is imputed:
the serving schema has no notion of "missing"), and per task target values (classes as listed in
the spec, 2 for binary, 3+ for multiclass, at least ``min_rows_per_class`` rows each; finite numbers
for regression). Every problem raises a ``DataValidationError`` naming the file, the column, the
rule and the fix.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from model.spec import Feature, ModelSpec

_MAX_LISTED = 5  # how many offending rows/values a message quotes


class DataValidationError(ValueError):
    """Training data that cannot be used; the message says where, which rule, and what to do."""

    def __init__(self, file: str | Path, column: str | None, rule: str, problem: str, fix: str) -> None:
        self.file = str(file)
        self.column = column
        self.rule = rule
        where = f"column '{column}'" if column else "whole file"
        super().__init__(f"{self.file}: {where}: rule '{rule}' failed: {problem}. Fix: {fix}")


@dataclass(frozen=True)
class Dataset:
    """The validated frame (features in order, typed, then the target), its features and classes."""

    frame: pd.DataFrame
    features: tuple[Feature, ...]
    target: str
    classes: tuple[int | str, ...] | None  # sorted target values of a classifier, else None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def load_dataset(spec: ModelSpec, path: str | Path | None = None) -> Dataset:
    """Read ``path`` (default: the spec's ``data``) and validate it against ``spec``."""
    path = Path(path) if path is not None else spec.data
    return validate_frame(_read_csv(path, spec), spec, source=path)


def validate_frame(frame: pd.DataFrame, spec: ModelSpec, *, source: str | Path) -> Dataset:
    """Check ``frame`` against ``spec``; ``source`` names it in errors. Returns a clean copy."""
    target = spec.target
    if target not in [str(c) for c in frame.columns]:
        raise DataValidationError(
            source,
            target,
            "target-column",
            f"no column '{target}' (the spec's target) among {_listed([str(c) for c in frame.columns])}",
            f"add it, or set `target:` in {spec.path.name}",
        )
    if spec.features is None:
        _check_inferred_numbers(frame, target, source)
    features = spec.features if spec.features is not None else infer_features(frame, target)
    _check_columns(frame, [f.name for f in features], target, source, spec)
    if frame.empty:
        raise DataValidationError(
            source,
            None,
            "not-empty",
            "the file has a header but no data rows",
            "point the spec's `data:` (or --data-path) at a file with rows",
        )
    clean = pd.DataFrame(index=frame.index)
    typed: list[Feature] = []
    for feature in features:
        _check_not_all_missing(frame, feature.name, source)
        clean[feature.name] = _typed_feature(frame[feature.name], feature, source)
        if feature.type == "string" and feature.categories is None:
            # A string feature declared without categories takes them from the file, as inferred ones do.
            feature = replace(feature, categories=tuple(sorted(set(clean[feature.name]))))
        typed.append(feature)
    if spec.is_classifier:
        clean[target], classes = _check_classes(frame[target], spec, source)
    else:
        _check_not_all_missing(frame, target, source)
        clean[target] = _numbers(frame[target], target, source, whole=False)
        classes = None
    return Dataset(clean.reset_index(drop=True), tuple(typed), target, classes)


def infer_features(frame: pd.DataFrame, target: str) -> tuple[Feature, ...]:
    """Every column but ``target``, typed from its values: bool -> boolean, whole numbers -> long,
    other numbers -> double, anything else -> string with its sorted distinct values as categories."""
    out = []
    for name in (str(c) for c in frame.columns if str(c) != target):
        series = frame[name]
        if ptypes.is_bool_dtype(series):
            out.append(Feature(name, "boolean"))
        elif ptypes.is_integer_dtype(series):
            out.append(Feature(name, "long"))
        elif ptypes.is_numeric_dtype(series):
            out.append(Feature(name, "double"))
        else:
            values = sorted({str(v) for v in series.dropna()})
            out.append(Feature(name, "string", tuple(values) or None))
    return tuple(out)


def _read_csv(path: Path, spec: ModelSpec) -> pd.DataFrame:
    fix_path = f"check `data:` in {spec.path} (relative to its folder) or --data-path"
    if not path.exists():
        raise DataValidationError(path, None, "file-exists", "no such file", fix_path)
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
            f"write a CSV with a header row (the features and '{spec.target}') and data rows",
        )
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataValidationError(
            path,
            None,
            "is-csv",
            "the file is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8",
            "save it again as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`) or export it as CSV UTF-8",
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
        path.read_bytes().decode("utf-8")
        header = next(csv.reader([head.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")]))
        frame = pd.read_csv(path, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, csv.Error) as exc:
        raise DataValidationError(
            path,
            None,
            "is-csv",
            f"the file cannot be parsed as UTF-8 CSV ({exc})",
            "export the data as comma-separated UTF-8 text with a header row",
        ) from exc
    if len(header) == 1 and (delimiter := _other_delimiter(header[0])):
        raise DataValidationError(
            path,
            None,
            "comma-separated",
            f"the header is a single column ({header[0][:60]!r}...): the file looks {delimiter!r}-separated",
            "export it comma-separated (',' between columns, '.' as the decimal point)",
        )
    empty = [i + 1 for i, name in enumerate(header) if not name.strip()]
    if empty:
        raise DataValidationError(
            path,
            None,
            "named-columns",
            f"header column(s) {empty} have no name",
            "give every column a name (or delete the unnamed ones)",
        )
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


def _other_delimiter(header: str) -> str | None:
    return next((d for d in (";", "\t", "|") if d in header), None)


def _check_inferred_numbers(frame: pd.DataFrame, target: str, source: str | Path) -> None:
    """A text column whose values are mostly numbers has a typo, not categories: name the odd values.

    Without ``features:`` a column's type is inferred from the file, and one stray value ("12 mm",
    "1e400") would otherwise turn a numeric column into a categorical one without a word."""
    for name in (str(c) for c in frame.columns if str(c) != target):
        series = frame[name]
        if ptypes.is_numeric_dtype(series) or ptypes.is_bool_dtype(series):
            continue
        present = series.dropna()
        finite = present.map(_is_finite_number)
        if len(present) and finite.sum() * 2 >= len(present) and not finite.all():
            raise DataValidationError(
                source,
                name,
                "numeric",
                f"{int(finite.sum())} of {len(present)} values are numbers but "
                f"{int((~finite).sum())} are not finite numbers ({_examples(present[~finite])})",
                "fix those values (plain decimal numbers, '.' as the decimal point), or declare the "
                "column `type: string` under `features:` in the spec if it really is text",
            )


def _is_finite_number(value: object) -> bool:
    try:
        return bool(np.isfinite(float(str(value))))
    except ValueError:
        return False


def _check_columns(
    frame: pd.DataFrame, features: list[str], target: str, source: str | Path, spec: ModelSpec
) -> None:
    present = [str(name) for name in frame.columns]
    expected = [*features, target]
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
        f"the header must hold exactly the {len(features)} features of `features:` in {spec.path.name} "
        f"plus '{target}' (any order); rename or drop columns, or change the spec",
    )


def _check_not_all_missing(frame: pd.DataFrame, column: str, source: str | Path) -> None:
    if frame[column].isna().all():
        raise DataValidationError(
            source,
            column,
            "not-all-missing",
            "every value is empty/NaN",
            "fill the column with measured values or drop it",
        )


def _typed_feature(series: pd.Series, feature: Feature, source: str | Path) -> pd.Series:
    if feature.type in ("double", "long"):
        return _numbers(series, feature.name, source, whole=feature.type == "long")
    _check_no_missing(series, feature.name, source)
    if feature.type == "boolean":
        if ptypes.is_bool_dtype(series):
            return series.astype("bool")
        mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
        as_text = series.map(lambda v: str(v).strip().lower())
        bad = series[~as_text.isin(list(mapping))]
        if not bad.empty:
            raise DataValidationError(
                source,
                feature.name,
                "boolean",
                f"values are not booleans ({_examples(bad)})",
                "write true/false (or 1/0)",
            )
        return as_text.map(mapping).astype("bool")
    text = series.astype(str)
    blank = series[text.str.strip() == ""]
    if not blank.empty:
        raise DataValidationError(
            source,
            feature.name,
            "non-empty-string",
            f"empty strings ({_examples(blank)})",
            "fill in a category",
        )
    if feature.categories is not None:
        bad = series[~text.isin(list(feature.categories))]
        if not bad.empty:
            raise DataValidationError(
                source,
                feature.name,
                "in-categories",
                f"values outside the categories {list(feature.categories)} ({_examples(bad)})",
                "fix the values, or add them to the feature's `categories:` in the spec",
            )
    return text.astype(object)


def _check_no_missing(series: pd.Series, column: str, source: str | Path) -> None:
    bad = np.flatnonzero(series.isna().to_numpy())
    if bad.size:
        lines = ", ".join(str(int(i) + 2) for i in bad[:_MAX_LISTED])
        raise DataValidationError(
            source,
            column,
            "no-missing",
            f"{bad.size} missing value(s), first on CSV line(s) {lines}",
            "fill in or drop those rows; missing values are not imputed",
        )


def _numbers(series: pd.Series, column: str, source: str | Path, *, whole: bool) -> pd.Series:
    if not ptypes.is_numeric_dtype(series) or ptypes.is_bool_dtype(series):
        coerced = pd.to_numeric(series, errors="coerce")
        bad = series[coerced.isna() & series.notna()]
        raise DataValidationError(
            source,
            column,
            "numeric",
            f"values are not numbers (dtype {series.dtype}; e.g. {_examples(bad) or 'booleans'})",
            "write plain decimal numbers (use '.' as the decimal point, no units or text)",
        )
    values = series.to_numpy(dtype="float64")
    bad_rows = np.flatnonzero(~np.isfinite(values))
    if bad_rows.size:
        lines = ", ".join(str(int(i) + 2) for i in bad_rows[:_MAX_LISTED])
        raise DataValidationError(
            source,
            column,
            "finite",
            f"{bad_rows.size} missing/NaN/inf value(s), first on CSV line(s) {lines}",
            "fill in or drop those rows; missing values are not imputed",
        )
    if whole:
        fractional = series[values != np.round(values)]
        if not fractional.empty:
            raise DataValidationError(
                source,
                column,
                "whole-number",
                f"values are not whole numbers ({_examples(fractional)})",
                "declare the feature `double`, or fix the values",
            )
        return pd.Series(values.astype("int64"), index=series.index)
    return pd.Series(values, index=series.index)


def _check_classes(
    series: pd.Series, spec: ModelSpec, source: str | Path
) -> tuple[pd.Series, tuple[int | str, ...]]:
    target = spec.target
    _check_no_missing(series, target, source)
    labels: pd.Series
    if ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series):
        values = series.to_numpy(dtype="float64")
        fractional = series[values != np.round(values)]
        if not fractional.empty:
            raise DataValidationError(
                source,
                target,
                "class-labels",
                f"class labels are not whole numbers ({_examples(fractional)})",
                f"label each row with one class; a numeric target is task: regression in {spec.path.name}",
            )
        labels = pd.Series(values.astype("int64"), index=series.index)
    else:
        labels = series.astype(str)
    if spec.classes is not None:
        allowed = [c.value for c in spec.classes]
        known = {str(v) for v in allowed}
        bad = labels[~labels.map(lambda v: str(v) in known)]
        if not bad.empty:
            raise DataValidationError(
                source,
                target,
                "target-in-classes",
                f"{len(bad)} value(s) outside the classes {allowed} ({_examples(bad)})",
                f"label each row with one of {allowed}, or fix `classes:` in {spec.path.name}",
            )
        if ptypes.is_integer_dtype(labels) and not all(isinstance(v, int) for v in allowed):
            raise DataValidationError(
                source,
                target,
                "target-in-classes",
                f"the file's labels are numbers but `classes:` lists {allowed}",
                "list the numeric class values in `classes:` (e.g. {0: no, 1: yes})",
            )
        classes: tuple[int | str, ...] = (
            tuple(sorted(allowed, key=str))
            if not ptypes.is_integer_dtype(labels)
            else tuple(sorted(int(v) for v in allowed))
        )
    else:
        classes = tuple(sorted(labels.unique().tolist()))
    wanted = "exactly 2" if spec.task == "binary" else "at least 3"
    if (spec.task == "binary" and len(classes) != 2) or (spec.task == "multiclass" and len(classes) < 3):
        raise DataValidationError(
            source,
            target,
            "class-count",
            f"a {spec.task} target needs {wanted} classes, found {list(classes)}",
            "fix the labels, or set the task that matches them (binary/multiclass) in the spec",
        )
    counts = {value: int((labels == value).sum()) for value in classes}
    short = {value: n for value, n in counts.items() if n < spec.min_rows_per_class}
    if short:
        raise DataValidationError(
            source,
            target,
            "min-rows-per-class",
            f"class counts {counts}; class(es) {sorted(short, key=str)} have fewer than "
            f"{spec.min_rows_per_class} rows",
            "add rows of the rare class, or lower `min_rows_per_class` in the spec knowingly",
        )
    return labels, classes


def _examples(bad: pd.Series) -> str:
    return ", ".join(f"line {int(i) + 2}: {v!r}" for i, v in bad.head(_MAX_LISTED).items())


def _listed(names: list[str], limit: int = 8) -> str:
    return str(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def request_rows(frame: pd.DataFrame, features: tuple[Feature, ...]) -> list[dict[str, Any]]:
    """Rows of ``frame`` as the JSON the serving API takes: each feature as its type's JSON value."""
    cast: dict[str, type] = {"double": float, "long": int, "boolean": bool, "string": str}
    return [{f.name: cast[f.type](row[f.name]) for f in features} for _, row in frame.iterrows()]
