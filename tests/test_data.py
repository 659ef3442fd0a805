"""data/train.csv and model.data: the committed data set is reproducible, and each schema rule
rejects bad input with a message naming the file, the column and the rule."""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.data import FEATURES, TARGET, DataValidationError, load_dataset
from tests.conftest import REPO_ROOT

DATA = REPO_ROOT / "data" / "train.csv"


def _make_dataset_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("make_dataset", REPO_ROOT / "data" / "make_dataset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dataset_is_byte_identical_to_a_rerun_of_its_script(tmp_path: Path) -> None:
    module = _make_dataset_module()
    out = tmp_path / "train.csv"
    assert module.main([str(out)]) == 0
    assert out.read_bytes() == DATA.read_bytes()


def test_committed_dataset_loads_with_the_expected_schema() -> None:
    frame = load_dataset(DATA)
    assert list(frame.columns) == [*FEATURES, TARGET]
    assert len(frame) == 569
    assert frame[TARGET].value_counts().to_dict() == {1: 357, 0: 212}
    assert all(frame[name].dtype == np.float64 for name in FEATURES)
    assert frame[TARGET].dtype == np.int64


def test_columns_in_another_order_are_accepted_and_reordered(tmp_path: Path) -> None:
    frame = pd.read_csv(DATA)
    path = tmp_path / "shuffled.csv"
    frame[[TARGET, *reversed(FEATURES)]].to_csv(path, index=False)
    assert list(load_dataset(path).columns) == [*FEATURES, TARGET]


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
    ("bad-target", _with(_set(TARGET, 3, 2)), TARGET, "target-in-{0,1}", ["line 5", "0 (malignant)"]),
    ("text-target", _with(_set(TARGET, 0, "benign")), TARGET, "numeric", ["'benign'", "0 (malignant)"]),
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
        load_dataset(path)
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


def test_missing_file_and_directory_get_the_same_quality_of_error(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"nope\.csv: whole file: rule 'file-exists'.*make_dataset"):
        load_dataset(tmp_path / "nope.csv")
    with pytest.raises(DataValidationError, match="rule 'is-file'"):
        load_dataset(tmp_path)


def test_min_rows_per_class_is_configurable(tmp_path: Path) -> None:
    path = _with(_few_malignant)(tmp_path / "few.csv")
    assert len(load_dataset(path, min_rows_per_class=3)) == 3 + int((_base()[TARGET] == 1).sum())
    with pytest.raises(ValueError, match="min_rows_per_class"):
        load_dataset(path, min_rows_per_class=0)


def test_integral_float_targets_are_accepted_as_labels(tmp_path: Path) -> None:
    path = _with(lambda f: f.assign(target=f[TARGET].astype(float)))(tmp_path / "float_target.csv")
    assert load_dataset(path)[TARGET].dtype == np.int64
