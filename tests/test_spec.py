"""model.spec, model.metric_rules and model.gate: pure rules, no servers. Every shipped spec loads;
every bad key is named with its file and a fix; the gate reads the metric table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model.gate import Bound, GateConfigError, evaluate_gate, parse_gate
from model.metric_rules import BY_NAME, METRICS, TASKS, metric_names, rule_for
from model.spec import SpecError, load_spec
from tests.conftest import EXAMPLE_SPECS, REPO_ROOT


@pytest.mark.parametrize("key", list(EXAMPLE_SPECS))
def test_every_shipped_spec_loads_and_its_data_exists(key: str) -> None:
    spec = load_spec(EXAMPLE_SPECS[key])
    assert spec.data.is_file()
    assert spec.task in TASKS
    assert {b.metric for b in spec.gate.bounds} <= set(metric_names(spec.task))


def test_derived_names_are_sanitised_for_each_system() -> None:
    spec = load_spec(EXAMPLE_SPECS["default"])
    assert (spec.registered_model_name, spec.image_repository, spec.bento_name, spec.label_value) == (
        "cancer-classifier", "cancer-classifier", "cancer_classifier", "cancer-classifier",
    )  # fmt: skip
    from dataclasses import replace

    odd = replace(spec, name="My.Model_V2-")
    assert odd.image_repository == "my-model-v2"
    assert re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", replace(spec, name="A..b__c--d").image_repository)
    assert odd.bento_name == "my_model_v2"
    assert odd.label_value == "My.Model_V2"


def write(tmp_path: Path, **changes: object) -> Path:
    raw = yaml.safe_load(EXAMPLE_SPECS["default"].read_text())
    raw["data"] = str(REPO_ROOT / "data" / "train.csv")
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BAD_SPECS = [
    ({"colour": "red"}, "colour", "is not a spec key"),
    ({"name": None}, "name", "is required"),
    ({"name": "has space"}, "name", "letters, digits"),
    ({"task": "ranking"}, "task", "binary, multiclass, regression"),
    ({"estimator": "not a path"}, "estimator", "package.module.Class"),
    ({"params": [1, 2]}, "params", "keyword names"),
    ({"features": {"a": "complex"}}, "features.a", "double, long, boolean, string"),
    ({"features": {"target": "double"}}, "features.target", "is the target column"),
    ({"features": {"a": {"type": "double", "categories": ["x"]}}}, "features.a.categories", "string"),
    ({"classes": [0, 1, 2]}, "classes", "binary model has 2 classes"),
    ({"classes": [True, False]}, "classes.True", "quote yes/no"),
    ({"preprocessing": {"numeric": "minmax"}}, "preprocessing.numeric", "standard, none"),
    ({"split": {"test_size": 1.5}}, "split.test_size", "(0, 1)"),
    ({"split": {"seed": -1}}, "split.seed", ">= 0"),
    ({"min_rows_per_class": 0}, "min_rows_per_class", ">= 1"),
    ({"serialization": "pickle"}, "serialization", "skops, cloudpickle"),
    ({"gate": {"rmse": {"max": 3}}}, "gate.rmse", "accuracy, f1, roc_auc, log_loss"),
    ({"gate": {"accuracy": {"max": 0.9}}}, "gate.accuracy.max", "accuracy: {min: ...}"),
    ({"gate": {"accuracy": {"min": "high"}}}, "gate.accuracy.min", "finite number"),
    ({"gate": {"champion_margin": 0.1}}, "gate", "bound at least one"),
]


@pytest.mark.parametrize(("changes", "key", "fix"), BAD_SPECS, ids=[b[1] for b in BAD_SPECS])
def test_a_bad_key_names_the_file_the_key_and_the_fix(
    tmp_path: Path, changes: dict[str, object], key: str, fix: str
) -> None:
    path = write(tmp_path, **changes)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: key '{key}':"), message
    assert "Fix:" in message and fix in message, message


def test_a_missing_or_unparsable_spec_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")
    (bad := tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid UTF-8 YAML"):
        load_spec(bad)


def test_the_metric_table_covers_every_task_with_one_direction_each() -> None:
    for task in TASKS:
        assert metric_names(task), task
    assert metric_names("regression") == ("rmse", "mae", "r2")
    assert len(BY_NAME) == len(METRICS)
    assert rule_for("rmse", "regression").bound_kind == "max"
    assert rule_for("r2", "regression").bound_kind == "min"
    with pytest.raises(ValueError, match="the binary metrics are accuracy, f1, roc_auc, log_loss"):
        rule_for("rmse", "binary")


def test_metrics_module_computes_every_metric_of_the_table() -> None:
    import numpy as np

    from model.metrics import compute_metrics

    y = np.array([0, 1, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.6, 0.4], [0.7, 0.3]])
    binary = compute_metrics("binary", y, proba.argmax(axis=1), proba, (0, 1))
    assert set(binary) == set(metric_names("binary")) and binary["accuracy"] == pytest.approx(0.8)
    values = np.array([1.0, 2.0, 3.0])
    regression = compute_metrics("regression", values, values + 1.0)
    assert regression["rmse"] == pytest.approx(1.0) and regression["mae"] == pytest.approx(1.0)


def test_gate_rules_are_pure_and_directional() -> None:
    gate = parse_gate(
        {"accuracy": {"min": 0.9}, "f1": {"min": 0.9}, "roc_auc": {"min": 0.95}, "log_loss": {"max": 0.35}},
        "binary",
    )
    metrics = {"accuracy": 0.95, "f1": 0.96, "roc_auc": 0.99, "log_loss": 0.12}
    assert evaluate_gate(metrics, gate) == []
    lossy = evaluate_gate({**metrics, "log_loss": 0.5}, gate.with_overrides({"log_loss": {"max": 0.3}}))
    assert [(f.metric, f.rule, round(f.shortfall, 6)) for f in lossy] == [("log_loss", "threshold", 0.2)]
    champion = {"accuracy": 0.97, "f1": 0.96, "roc_auc": 0.99, "log_loss": 0.05}
    vs = evaluate_gate(metrics, gate, champion)
    assert {(f.metric, f.rule) for f in vs} == {("accuracy", "champion"), ("log_loss", "champion")}
    assert evaluate_gate(metrics, gate.with_overrides({"champion_margin": 0.1}), champion) == []
    with pytest.raises(ValueError, match="missing"):
        evaluate_gate({"accuracy": 1.0}, gate)
    regression = parse_gate({"rmse": {"max": 60}, "r2": {"min": 0.4}}, "regression")
    assert regression.bounds == (Bound("rmse", "max", 60.0), Bound("r2", "min", 0.4))
    failed = evaluate_gate({"rmse": 61.0, "r2": 0.5, "mae": 1.0}, regression)
    assert [f.describe() for f in failed] == ["rmse=61.0000 > 60.0000 (threshold): over by 1.0000"]
    with pytest.raises(GateConfigError, match=r"gate\.champion_margin: -1\.0 is negative"):
        parse_gate({"r2": {"min": 0.1}, "champion_margin": -1}, "regression")


def test_importing_the_spec_pulls_in_no_ml_library() -> None:
    """The Pulumi program reads specs and fingerprints at program time: no mlflow/sklearn/pandas."""
    code = (
        "import sys, model.spec, model.gate, model.fingerprint, model.pins;"
        "from model.fingerprint import training_fingerprint; from model.spec import load_spec;"
        "training_fingerprint(load_spec());"
        "heavy = [m for m in ('mlflow', 'sklearn', 'pandas', 'numpy', 'bentoml') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
