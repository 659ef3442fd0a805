"""model.fingerprint: deterministic, and sensitive to exactly the inputs that can change the model."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from model.fingerprint import MODEL_DIR, canonical_json, compute_fingerprint
from tests.conftest import REPO_ROOT

PARAMS: dict[str, object] = {"C": 1.0, "max_iter": 100, "test_size": 0.25, "random_state": 42}


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """A private copy of the data, code and lock, safe to edit."""
    data = tmp_path / "train.csv"
    shutil.copyfile(REPO_ROOT / "data" / "train.csv", data)
    reqs = tmp_path / "requirements.txt"
    shutil.copyfile(REPO_ROOT / "requirements.txt", reqs)
    code = tmp_path / "model"
    (code / "sub").mkdir(parents=True)
    (code / "a.py").write_text("A = 1\n")
    (code / "sub" / "b.py").write_text("B = 2\n")
    return {"data_path": data, "requirements_path": reqs, "code_dir": code}


def fp(inputs: dict[str, Path], params: dict[str, object] = PARAMS) -> str:
    return compute_fingerprint(params=params, **inputs)


def test_same_inputs_same_hex_digest(inputs: dict[str, Path]) -> None:
    first = fp(inputs)
    assert first == fp(inputs)
    assert len(first) == 64 and int(first, 16) >= 0


def test_param_key_order_does_not_matter_but_values_do(inputs: dict[str, Path]) -> None:
    assert fp(inputs, dict(reversed(PARAMS.items()))) == fp(inputs)
    assert fp(inputs, {**PARAMS, "C": 0.5}) != fp(inputs)
    assert fp(inputs, {**PARAMS, "extra": None}) != fp(inputs)


def test_one_data_byte_changes_it(inputs: dict[str, Path]) -> None:
    before = fp(inputs)
    raw = bytearray(inputs["data_path"].read_bytes())
    raw[-2] = ord("0") if raw[-2] != ord("0") else ord("1")
    inputs["data_path"].write_bytes(bytes(raw))
    assert fp(inputs) != before


def test_requirements_lock_changes_it(inputs: dict[str, Path]) -> None:
    before = fp(inputs)
    with inputs["requirements_path"].open("a") as handle:
        handle.write("six==1.17.0\n")
    assert fp(inputs) != before


def test_python_code_changes_it_other_files_do_not(inputs: dict[str, Path]) -> None:
    code = inputs["code_dir"]
    before = fp(inputs)
    (code / "notes.md").write_text("not code\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00\x01")
    assert fp(inputs) == before
    (code / "sub" / "b.py").write_text("B = 3\n")
    edited = fp(inputs)
    assert edited != before
    (code / "c.py").write_text("")
    assert fp(inputs) != edited


def test_moving_a_file_changes_it(inputs: dict[str, Path]) -> None:
    code = inputs["code_dir"]
    before = fp(inputs)
    (code / "sub" / "b.py").rename(code / "b.py")
    assert fp(inputs) != before


def test_bytes_cannot_slide_across_a_file_boundary(inputs: dict[str, Path]) -> None:
    """Without the length prefixes, a.py holding b.py's label and bytes would hash like the two files."""
    code = inputs["code_dir"]
    two_files = fp(inputs)
    (code / "sub" / "b.py").unlink()
    (code / "a.py").write_bytes(b"A = 1\ncode:sub/b.py\0B = 2\n")
    assert fp(inputs) != two_files


def test_bytes_cannot_slide_from_the_data_into_the_code(inputs: dict[str, Path]) -> None:
    """The data file absorbing the first code file's label and bytes must change the digest."""
    code = inputs["code_dir"]
    before = fp(inputs)
    data = inputs["data_path"]
    data.write_bytes(data.read_bytes() + b"code:a.py\0" + (code / "a.py").read_bytes())
    (code / "a.py").unlink()
    assert fp(inputs) != before


# The format, spelled out for a tiny fixed input: each part is "<label>\0<byte length>\0<bytes>". A change
# of format changes every fingerprint (so every stack retrains): this test makes that a deliberate act.
TINY_EXPECTED = "e3411c39866cc7e5134c8f9fdd4289e3eb064bebc2ed9e8332fae646b9714fbf"


def test_a_tiny_fixed_input_has_a_fixed_digest(tmp_path: Path) -> None:
    data, reqs, code = tmp_path / "d.csv", tmp_path / "r.txt", tmp_path / "code"
    data.write_bytes(b"x,target\n1,0\n")
    reqs.write_bytes(b"numpy==2.0.0\n")
    (code / "pkg").mkdir(parents=True)
    (code / "z.py").write_bytes(b"Z = 1\n")
    (code / "pkg" / "m.py").write_bytes(b"")
    stream = (
        b"data\x0013\x00x,target\n1,0\n"
        b"code:pkg/m.py\x000\x00"
        b"code:z.py\x006\x00Z = 1\n"
        b'params\x0015\x00{"C":1.0,"n":2}'
        b"requirements\x0013\x00numpy==2.0.0\n"
    )
    got = compute_fingerprint(data, {"n": 2, "C": 1.0}, reqs, code)
    assert got == hashlib.sha256(stream).hexdigest()
    assert got == TINY_EXPECTED


def test_the_default_code_dir_is_the_model_package(tmp_path: Path) -> None:
    args = (REPO_ROOT / "data" / "train.csv", PARAMS, REPO_ROOT / "requirements.txt")
    copy = tmp_path / "model"
    shutil.copytree(MODEL_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert MODEL_DIR == REPO_ROOT / "model"
    assert compute_fingerprint(*args) == compute_fingerprint(*args, code_dir=copy)
    (copy / "fingerprint.py").write_text((copy / "fingerprint.py").read_text() + "# edited\n")
    assert compute_fingerprint(*args) != compute_fingerprint(*args, code_dir=copy)


def test_unserialisable_or_non_finite_params_are_refused(inputs: dict[str, Path]) -> None:
    with pytest.raises(TypeError, match="JSON-serialisable"):
        fp(inputs, {"C": object()})
    with pytest.raises(ValueError, match="finite"):
        fp(inputs, {"C": float("nan")})
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_missing_inputs_are_named(inputs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data file .*missing\.csv"):
        compute_fingerprint(tmp_path / "missing.csv", PARAMS, inputs["requirements_path"], inputs["code_dir"])
    with pytest.raises(FileNotFoundError, match="requirements lock"):
        compute_fingerprint(inputs["data_path"], PARAMS, tmp_path / "nope.txt", inputs["code_dir"])
    with pytest.raises(NotADirectoryError, match="code directory"):
        compute_fingerprint(inputs["data_path"], PARAMS, inputs["requirements_path"], tmp_path / "nocode")
