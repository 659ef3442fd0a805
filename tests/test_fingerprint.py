"""model.fingerprint: the training fingerprint moves exactly when a retrain could change the model;
the build identity moves when the serving code or base image change too. Deterministic."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from model.fingerprint import (
    BUILD_SOURCES,
    MODEL_DIR,
    build_identity,
    canonical_json,
    local_estimator_file,
    local_estimator_sources,
    training_code_files,
    training_fingerprint,
)
from model.pins import MODEL_ROOTS, SERVING_ROOTS, estimator_distribution, model_roots, pinned_closure
from model.spec import ModelSpec, load_spec
from tests.conftest import EXAMPLE_SPECS, REPO_ROOT

PACKAGES = ["numpy==2.0.0", "scikit-learn==1.9.1"]


@pytest.fixture
def spec(tmp_path: Path) -> ModelSpec:
    """The default spec on a private copy of its data, safe to edit."""
    data = tmp_path / "train.csv"
    shutil.copyfile(REPO_ROOT / "data" / "train.csv", data)
    return load_spec(EXAMPLE_SPECS["default"]).with_data(data)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    code = tmp_path / "model"
    (code / "sub").mkdir(parents=True)
    (code / "train.py").write_text("A = 1\n")
    (code / "sub" / "b.py").write_text("B = 2\n")
    (code / "service.py").write_text("SERVING = 1\n")
    return code


def fp(spec: ModelSpec, code: Path, packages: list[str] = PACKAGES) -> str:
    return training_fingerprint(spec, code_dir=code, packages=packages)


def test_same_inputs_same_hex_digest(spec: ModelSpec, code: Path) -> None:
    first = fp(spec, code)
    assert first == fp(spec, code) and len(first) == 64
    assert fp(spec, code, list(reversed(PACKAGES))) == first  # pins are sorted


def test_spec_training_keys_change_it_but_name_gate_and_data_path_do_not(spec: ModelSpec, code: Path) -> None:
    before = fp(spec, code)
    assert fp(replace(spec, params={"C": 0.5, "max_iter": 1000}), code) != before
    assert fp(replace(spec, seed=1), code) != before
    assert fp(replace(spec, estimator="sklearn.svm.SVC"), code) != before
    assert fp(replace(spec, numeric_scaling="none"), code) != before
    assert fp(replace(spec, min_rows_per_class=5), code) != before
    assert fp(replace(spec, name="renamed"), code) == before  # the name is its own retrain key
    assert fp(spec.with_gate(spec.gate.with_overrides({"accuracy": {"min": 0.5}})), code) == before
    moved = spec.data.parent / "moved.csv"
    shutil.copyfile(spec.data, moved)
    assert fp(spec.with_data(moved), code) == before  # same bytes elsewhere


def test_one_data_byte_changes_it(spec: ModelSpec, code: Path) -> None:
    before = fp(spec, code)
    raw = bytearray(spec.data.read_bytes())
    raw[-2] = ord("0") if raw[-2] != ord("0") else ord("1")
    spec.data.write_bytes(bytes(raw))
    assert fp(spec, code) != before


def test_model_packages_change_it(spec: ModelSpec, code: Path) -> None:
    assert fp(spec, code, ["numpy==2.0.1", "scikit-learn==1.9.1"]) != fp(spec, code)


def test_training_code_changes_it_serving_code_does_not(spec: ModelSpec, code: Path) -> None:
    before = fp(spec, code)
    (code / "service.py").write_text("SERVING = 2\n")
    (code / "notes.md").write_text("docs")
    assert fp(spec, code) == before
    (code / "sub" / "b.py").write_text("B = 3\n")
    assert fp(spec, code) != before


def test_the_real_training_code_excludes_exactly_the_serving_modules() -> None:
    names = {rel for rel, _ in training_code_files(MODEL_DIR)}
    assert {"train.py", "data.py", "spec.py", "gate.py", "metric_rules.py", "fingerprint.py"} <= names
    assert names.isdisjoint({"service.py", "validation.py", "container.py", "bento.py"})


def test_the_requirements_lock_and_infra_code_are_not_inputs(spec: ModelSpec) -> None:
    """A Pulumi package bump or an infra edit must not retrain: only the model's own pins count."""
    roots = model_roots(spec)
    assert roots == MODEL_ROOTS  # LogisticRegression is scikit-learn, already a root
    closure = {line.split("==")[0] for line in pinned_closure(roots)}
    assert not {name for name in closure if name.startswith("pulumi")}
    assert "bentoml" not in closure


def test_the_estimators_distribution_joins_the_model_roots() -> None:
    assert estimator_distribution("sklearn.ensemble.RandomForestClassifier") == "scikit-learn"
    assert estimator_distribution("examples.churn.factory:gradient_boosting") is None
    churn = load_spec(EXAMPLE_SPECS["churn"])
    assert local_estimator_file(churn.estimator) == REPO_ROOT / "examples" / "churn" / "factory.py"
    assert "packaging" in model_roots(replace(churn, packages=("packaging",)))


def test_a_local_factory_and_the_helpers_beside_it_are_covered(
    spec: ModelSpec, code: Path, tmp_path: Path
) -> None:
    # A copy of the churn factory's package in a private root: the test never edits tracked files.
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "examples" / "churn", root / "examples" / "churn")
    (root / "examples" / "churn" / "helpers.py").write_text("N = 10\n")
    (root / "elsewhere.py").write_text("X = 1\n")
    churn = load_spec(EXAMPLE_SPECS["churn"])

    def churn_fp() -> str:
        return training_fingerprint(churn, code_dir=code, packages=PACKAGES, root=root)

    before = churn_fp()
    factory = root / "examples" / "churn" / "factory.py"
    factory.write_bytes(factory.read_bytes() + b"\n# a comment\n")
    assert churn_fp() != before
    after_factory = churn_fp()
    (root / "examples" / "churn" / "helpers.py").write_text("N = 500\n")  # a helper the factory may import
    assert churn_fp() != after_factory
    after_helper = churn_fp()
    (root / "elsewhere.py").write_text("X = 2\n")  # code outside the factory's folder
    assert churn_fp() == after_helper
    assert training_fingerprint(churn, code_dir=code, packages=PACKAGES) != after_helper  # the real root


def test_a_factory_at_the_root_covers_only_its_own_file(tmp_path: Path) -> None:
    (tmp_path / "fac.py").write_text("def make(): ...\n")
    (tmp_path / "other.py").write_text("X = 1\n")
    assert local_estimator_sources("fac:make", tmp_path) == [tmp_path / "fac.py"]
    assert local_estimator_sources("sklearn.svm.SVC", tmp_path) == []


def test_build_identity_covers_fingerprint_serving_code_and_base_image(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for rel in BUILD_SOURCES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    one, two = "a" * 64, "b" * 64
    base = build_identity(one, "python:3.11-slim", root=root)
    assert base == build_identity(one, "python:3.11-slim", root=root)
    assert build_identity(two, "python:3.11-slim", root=root) != base
    assert build_identity(one, "python:3.12-slim", root=root) != base
    (root / "model" / "service.py").write_text("# changed\n")
    assert build_identity(one, "python:3.11-slim", root=root) != base
    with pytest.raises(ValueError, match="not a training fingerprint"):
        build_identity("short", "python:3.11-slim", root=root)


def test_unserialisable_or_non_finite_values_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        canonical_json({"C": float("nan")})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        canonical_json({"C": object()})


def test_missing_inputs_are_named(spec: ModelSpec, code: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data file .*nope\.csv \(key 'data' of"):
        fp(spec.with_data(tmp_path / "nope.csv"), code)
    with pytest.raises(NotADirectoryError, match="code directory"):
        fp(spec, tmp_path / "no-code")


def test_build_identity_covers_the_serving_packages_the_training_fingerprint_does_not(
    spec: ModelSpec, code: Path, tmp_path: Path
) -> None:
    # A BentoML (or uvicorn, ...) bump changes what the image installs: a new bento version and tag,
    # never a stale bento reused or a tag rebuilt with other content; the model is not retrained.
    root = tmp_path / "repo"
    for rel in BUILD_SOURCES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    trained = fp(spec, code)
    old = build_identity(trained, "python:3.11-slim", root=root, serving_packages=["bentoml==1.4.40"])
    new = build_identity(trained, "python:3.11-slim", root=root, serving_packages=["bentoml==1.4.41"])
    assert old != new and fp(spec, code) == trained
    default = build_identity(trained, "python:3.11-slim", root=root)
    assert default == build_identity(
        trained, "python:3.11-slim", root=root, serving_packages=pinned_closure(SERVING_ROOTS)
    )
