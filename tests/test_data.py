"""data/train.csv, the example data sets and model.data: the committed files are reproducible, the
schema comes from the spec (or is inferred and frozen), and each rule rejects bad input with a
message naming the file, the column, the rule and the fix."""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.data import DataValidationError, load_dataset
from model.spec import Feature, load_spec
from tests.conftest import EXAMPLE_SPECS, REPO_ROOT

DATA = REPO_ROOT / "data" / "train.csv"
DEFAULT = load_spec(EXAMPLE_SPECS["default"])
TARGET = DEFAULT.target
FEATURES: tuple[str, ...] = tuple(c for c in pd.read_csv(DATA, nrows=0).columns if c != TARGET)
# The default spec with its 30 features listed: the columns are then checked against the spec.
LISTED = replace(DEFAULT, features=tuple(Feature(name, "double") for name in FEATURES))


def _load_module(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dataset_is_byte_identical_to_a_rerun_of_its_script(tmp_path: Path) -> None:
    module = _load_module(REPO_ROOT / "data" / "make_dataset.py")
    out = tmp_path / "train.csv"
    assert module.main([str(out)]) == 0
    assert out.read_bytes() == DATA.read_bytes()


def test_committed_example_datasets_are_byte_identical_to_a_rerun_of_their_script(tmp_path: Path) -> None:
    module = _load_module(REPO_ROOT / "examples" / "make_datasets.py")
    assert module.main([str(tmp_path)]) == 0
    for rel in module.DATASETS:
        assert (tmp_path / rel).read_bytes() == (REPO_ROOT / "examples" / rel).read_bytes(), rel


def test_committed_dataset_loads_with_the_inferred_schema() -> None:
    dataset = load_dataset(DEFAULT)
    frame = dataset.frame
    assert list(frame.columns) == [*FEATURES, TARGET]
    assert len(frame) == 569 and len(FEATURES) == 30
    assert frame[TARGET].value_counts().to_dict() == {1: 357, 0: 212}
    assert all(frame[name].dtype == np.float64 for name in FEATURES)
    assert {f.type for f in dataset.features} == {"double"}
    assert frame[TARGET].dtype == np.int64
    assert dataset.classes == (0, 1)


def test_declared_feature_types_and_string_categories_are_enforced_and_typed() -> None:
    churn = load_spec(EXAMPLE_SPECS["churn"])
    dataset = load_dataset(churn)
    dtypes = {name: str(dtype) for name, dtype in dataset.frame.dtypes.items()}
    assert dtypes == {
        "plan": "object", "region": "object", "tenure_months": "int64", "autopay": "bool",
        "monthly_spend": "float64", "churned": "object",
    }  # fmt: skip
    assert dataset.classes == ("no", "yes")


def test_a_string_feature_without_categories_takes_them_from_the_file() -> None:
    """Declared ``region: string`` (no categories): the file's distinct values, as inference does."""
    churn = load_spec(EXAMPLE_SPECS["churn"])
    features = tuple(Feature(f.name, f.type) if f.name == "region" else f for f in churn.features or ())
    dataset = load_dataset(replace(churn, features=features))
    region = next(f for f in dataset.features if f.name == "region")
    assert region.categories == tuple(sorted(set(pd.read_csv(churn.data)["region"])))
    assert region.categories == ("east", "north", "south", "west")


def test_regression_and_multiclass_targets() -> None:
    diabetes = load_dataset(load_spec(EXAMPLE_SPECS["diabetes"]))
    assert diabetes.classes is None and diabetes.frame["progression"].dtype == np.float64
    wine = load_dataset(load_spec(EXAMPLE_SPECS["wine"]))
    assert wine.classes == (0, 1, 2) and len(wine.features) == 13


def test_columns_in_another_order_are_accepted_and_reordered(tmp_path: Path) -> None:
    frame = pd.read_csv(DATA)
    path = tmp_path / "shuffled.csv"
    frame[[TARGET, *reversed(FEATURES)]].to_csv(path, index=False)
    assert list(load_dataset(LISTED, path).frame.columns) == [*FEATURES, TARGET]


def _base() -> pd.DataFrame:
    return pd.read_csv(DATA).head(120).copy()


def _with(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        edit(_base()).to_csv(path, index=False)
        return path

    return write


def _set(column: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    return edit


def _raw(text: bytes) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_bytes(text)
        return path

    return write


def _few_malignant(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame[frame[TARGET] == 0].head(3), frame[frame[TARGET] == 1]])


# (case id, writer, expected column or None, expected rule, words the message must contain)
BAD_CASES = [
    (
        "missing-column",
        _with(lambda f: f.drop(columns=["mean_area"])),
        "mean_area",
        "expected-columns",
        ["missing columns ['mean_area']"],
    ),
    (
        "extra-column",
        _with(lambda f: f.assign(patient_id=1)),
        "patient_id",
        "expected-columns",
        ["unexpected columns ['patient_id']"],
    ),
    ("non-numeric", _with(_set("worst_area", 7, "12 mm")), "worst_area", "numeric", ["line 9", "'12 mm'"]),
    ("bad-target", _with(_set(TARGET, 3, 2)), TARGET, "target-in-classes", ["line 5", "[0, 1]"]),
    ("text-target", _with(_set(TARGET, 0, "benign")), TARGET, "target-in-classes", ["'benign'", "[0, 1]"]),
    ("fraction-target", _with(_set(TARGET, 2, 0.5)), TARGET, "class-labels", ["line 4", "regression"]),
    ("no-target", _with(lambda f: f.drop(columns=[TARGET])), TARGET, "target-column", ["target"]),
    ("empty-header", _raw(b"mean_radius,,target\n1,2,0\n"), None, "named-columns", ["[2]"]),
    ("empty-file", _raw(b""), None, "not-empty", ["empty"]),
    (
        "header-only",
        _raw((",".join([*FEATURES, TARGET]) + "\n").encode()),
        None,
        "not-empty",
        ["no data rows"],
    ),
    (
        "all-nan-column",
        _with(lambda f: f.assign(mean_texture=np.nan)),
        "mean_texture",
        "not-all-missing",
        ["every value"],
    ),
    ("nan-in-feature", _with(_set("mean_radius", 10, np.nan)), "mean_radius", "finite", ["line(s) 12"]),
    ("inf-in-feature", _with(_set("mean_radius", 4, np.inf)), "mean_radius", "finite", ["line(s) 6"]),
    ("too-few-per-class", _with(_few_malignant), TARGET, "min-rows-per-class", ["[0]", "fewer than 20"]),
    ("binary-file", _raw(b"PAR1\x00\x01\x02garbage"), None, "is-csv", ["binary"]),
    ("not-utf8", _raw(b"mean_radius,target\n1,0\n" + b"\xff\xfe\n"), None, "is-csv", ["UTF-8"]),
    (
        "duplicate-column",
        _raw((",".join([*FEATURES, "mean_area", TARGET]) + "\n").encode()),
        "mean_area",
        "unique-columns",
        ["duplicate"],
    ),
]


@pytest.mark.parametrize(
    ("case", "writer", "column", "rule", "words"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_data_names_file_column_rule_and_fix(
    tmp_path: Path, case: str, writer: Callable[[Path], Path], column: str | None, rule: str, words: list[str]
) -> None:
    path = writer(tmp_path / f"{case}.csv")
    with pytest.raises(DataValidationError) as caught:
        load_dataset(LISTED, path)
    err = caught.value
    message = str(err)
    assert (err.column, err.rule) == (column, rule)
    assert str(path) in message
    assert f"rule '{rule}'" in message
    assert "Fix:" in message
    if column:
        assert f"column '{column}'" in message
    for word in words:
        assert word in message


def _churn(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        edit(pd.read_csv(EXAMPLE_SPECS["churn"].parent / "churn.csv")).to_csv(path, index=False)
        return path

    return write


# Typed-feature rules, on the churn spec (string categories, long, boolean, string labels).
TYPED_CASES = [
    ("unknown-category", _churn(_set("plan", 4, "gold")), "plan", "in-categories", ["'gold'", "basic"]),
    ("empty-category", _churn(_set("region", 1, " ")), "region", "non-empty-string", ["line 3"]),
    ("missing-string", _churn(_set("region", 6, np.nan)), "region", "no-missing", ["line(s) 8"]),
    ("fractional-long", _churn(_set("tenure_months", 0, 2.5)), "tenure_months", "whole-number", ["2.5"]),
    ("bad-boolean", _churn(_set("autopay", 9, "maybe")), "autopay", "boolean", ["'maybe'", "true/false"]),
    ("unknown-label", _churn(_set("churned", 5, "perhaps")), "churned", "target-in-classes", ["'perhaps'"]),
    ("one-class", _churn(lambda f: f.assign(churned="no")), "churned", "min-rows-per-class", ["'yes': 0"]),
]


@pytest.mark.parametrize(
    ("case", "writer", "column", "rule", "words"), TYPED_CASES, ids=[c[0] for c in TYPED_CASES]
)
def test_typed_features_name_file_column_rule_and_fix(
    tmp_path: Path, case: str, writer: Callable[[Path], Path], column: str, rule: str, words: list[str]
) -> None:
    path = writer(tmp_path / f"{case}.csv")
    with pytest.raises(DataValidationError) as caught:
        load_dataset(load_spec(EXAMPLE_SPECS["churn"]), path)
    assert (caught.value.column, caught.value.rule) == (column, rule)
    assert "Fix:" in str(caught.value) and str(path) in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_a_regression_target_must_be_finite_numbers(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE_SPECS["diabetes"])
    frame = pd.read_csv(spec.data)
    frame.loc[3, "progression"] = np.inf
    frame.to_csv(path := tmp_path / "inf.csv", index=False)
    with pytest.raises(DataValidationError, match=r"column 'progression': rule 'finite'.*line\(s\) 5"):
        load_dataset(spec, path)


def test_missing_file_and_directory_get_the_same_quality_of_error(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"nope\.csv: whole file: rule 'file-exists'.*data:"):
        load_dataset(DEFAULT, tmp_path / "nope.csv")
    with pytest.raises(DataValidationError, match="rule 'is-file'"):
        load_dataset(DEFAULT, tmp_path)


def test_min_rows_per_class_is_configurable(tmp_path: Path) -> None:
    path = _with(_few_malignant)(tmp_path / "few.csv")
    relaxed = replace(DEFAULT, min_rows_per_class=3)
    assert len(load_dataset(relaxed, path).frame) == 3 + int((_base()[TARGET] == 1).sum())


def test_integral_float_targets_are_accepted_as_labels(tmp_path: Path) -> None:
    path = _with(lambda f: f.assign(target=f[TARGET].astype(float)))(tmp_path / "float_target.csv")
    assert load_dataset(DEFAULT, path).frame[TARGET].dtype == np.int64


def test_inferred_types_follow_the_values() -> None:
    from model.data import infer_features

    frame = pd.DataFrame({"a": [1.5, 2.0], "b": [1, 2], "c": [True, False], "d": ["x", "y"], "t": [0, 1]})
    assert infer_features(frame, "t") == (
        Feature("a", "double"),
        Feature("b", "long"),
        Feature("c", "boolean"),
        Feature("d", "string", ("x", "y")),
    )
