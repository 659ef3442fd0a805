"""The TrainedModel dynamic provider, called directly, training for real against a real ``mlflow server``.

The fingerprint the program declares is the one training logs. Same inputs -> no change, nothing
trains; a new gate -> an update that re-gates the registered version without training; new data or
params -> an update that trains a new version; a failed gate or bad params -> a clear TrainingError.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from infra.training import OUTPUT_KEYS, TrainedModelProvider, TrainingError, input_fingerprint
from model.spec import SpecError, load_spec
from tests.conftest import FAKE_KUBECONFIG, REPO_ROOT, FakeKubectl
from tools.stack_mocks import DYNAMIC_TYPE, run_stack

pytestmark = pytest.mark.servers

PARAMS: dict[str, Any] = {"C": 1.0, "max_iter": 1000}
# As the Pulumi engine delivers them: every number a float.
GATE: dict[str, Any] = {
    "accuracy": {"min": 0.9}, "f1": {"min": 0.9}, "roc_auc": {"min": 0.95}, "log_loss": {"max": 0.35},
    "champion_margin": 0.01,
}  # fmt: skip


def with_bound(metric: str, kind: str, value: float, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(gate or GATE), metric: {kind: value}}


def write_spec(data: Path, params: dict[str, Any]) -> Path:
    """The default spec on ``data`` with ``params``, written next to the data (one file per params)."""
    raw = yaml.safe_load((REPO_ROOT / "model.yaml").read_text())
    raw.update(data=str(data), params=params)
    path = data.parent / f"spec-{abs(hash(repr(sorted(params.items()))))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def props(mlflow_server: str, data: Path, **overrides: Any) -> dict[str, Any]:
    """The resource's inputs as the Pulumi engine hands them to the provider."""
    spec_path = write_spec(data, overrides.pop("params", PARAMS))
    base: dict[str, Any] = {
        "spec_path": str(spec_path),
        "task": "binary",
        "gate": GATE,
        "tracking_uri": mlflow_server,
        "tracking_service": "",
        "kubeconfig": "",
        "tracking_username": "admin",
        "tracking_password": "not-checked-by-this-server",
        "experiment_name": "infra-provider-tests",
        "model_name": f"infra-{uuid.uuid4().hex[:8]}",
    }
    base.update(overrides)
    try:
        base["fingerprint"] = input_fingerprint(load_spec(spec_path))
    except SpecError:
        base["fingerprint"] = "0" * 64  # the program refuses such a spec before; the provider must too
    return base


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    shutil.copy(REPO_ROOT / "data" / "train.csv", path)
    return path


def versions(mlflow_server: str, name: str) -> list[str]:
    client = MlflowClient(mlflow_server)
    return sorted(v.version for v in client.search_model_versions(f"name='{name}'"))


def runs_with(mlflow_server: str, experiment: str, fingerprint: str) -> list[str]:
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.fingerprint = '{fingerprint}'")
    return sorted(r.info.run_id for r in found)


def test_the_fingerprint_the_program_declares_is_the_one_training_logs(
    mlflow_server: str, fake_kubectl: FakeKubectl
) -> None:
    # The inputs exactly as __main__.py declares them for Pulumi.dev.yaml, MLflow reached as on Azure:
    # through a port-forward to mlflow/mlflow:5000 (here a stand-in kubectl).
    declared = run_stack("dev").one(DYNAMIC_TYPE, "model").inputs  # the TrainedModel
    assert declared["spec_path"] == str(REPO_ROOT / "model.yaml") and declared["task"] == "binary"
    assert (declared["tracking_uri"], declared["tracking_service"]) == ("", "mlflow/mlflow:5000")
    fake_kubectl.serve(declared["tracking_service"], mlflow_server)
    news = {
        **declared,
        "kubeconfig": FAKE_KUBECONFIG,
        "tracking_username": "admin",
        "tracking_password": "not-checked-by-this-server",
        "experiment_name": "infra-provider-tests",
        "model_name": f"infra-{uuid.uuid4().hex[:8]}",
    }
    outs = TrainedModelProvider().create(news).outs or {}
    assert len(fake_kubectl.calls()) == 1  # one tunnel for the training call
    assert "kubeconfig" not in outs and "tracking_password" not in outs  # secrets stay inputs
    assert outs["reused"] is False  # a fresh model name: this really trained
    assert outs["model_fingerprint"] == declared["fingerprint"] == outs["fingerprint"]
    client = MlflowClient(mlflow_server)
    assert client.get_run(outs["run_id"]).data.tags["fingerprint"] == declared["fingerprint"]
    version = client.get_model_version(news["model_name"], outs["version"])
    assert version.tags["fingerprint"] == declared["fingerprint"]


def test_a_gate_change_regates_without_training_and_a_param_change_trains(
    mlflow_server: str, data: Path
) -> None:
    provider = TrainedModelProvider()
    news = props(mlflow_server, data, gate={**GATE, "log_loss": {"max": 1}, "champion_margin": 0})  # ints
    name, experiment = news["model_name"], news["experiment_name"]
    created = provider.create(news)
    outs = created.outs or {}
    assert outs["gate"] == news["gate"]
    runs = runs_with(mlflow_server, experiment, news["fingerprint"])  # other tests share the data
    assert outs["run_id"] in runs

    # The engine hands back numbers as floats: an equal gate is no change.
    as_floats = props(
        mlflow_server, data, model_name=name, gate={**GATE, "log_loss": {"max": 1.0}, "champion_margin": 0.0}
    )
    assert provider.diff(created.id, outs, as_floats).changes is False

    # A looser threshold: an update, every output stable, and the update re-gates version 1 without a run.
    looser = props(
        mlflow_server, data, model_name=name, gate=with_bound("accuracy", "min", 0.8, news["gate"])
    )
    diff = provider.diff(created.id, outs, looser)
    assert diff.changes is True and diff.replaces == [] and set(diff.stables or []) == set(OUTPUT_KEYS)
    regated = provider.update(created.id, outs, looser).outs or {}
    assert regated["reused"] is True and regated["gate"]["accuracy"] == {"min": 0.8}
    assert {k: regated[k] for k in OUTPUT_KEYS} == {k: outs[k] for k in OUTPUT_KEYS}
    assert versions(mlflow_server, name) == ["1"]
    assert runs_with(mlflow_server, experiment, news["fingerprint"]) == runs

    # A threshold the model misses: an update that fails naming the metric, still without training.
    strict = props(
        mlflow_server, data, model_name=name, gate=with_bound("roc_auc", "min", 0.99999, news["gate"])
    )
    assert provider.diff(created.id, regated, strict).changes is True
    with pytest.raises(TrainingError, match="roc_auc"):
        provider.update(created.id, regated, strict)
    assert versions(mlflow_server, name) == ["1"]
    assert runs_with(mlflow_server, experiment, news["fingerprint"]) == runs

    # A param change is a new fingerprint: an update that trains version 2.
    retrain = props(mlflow_server, data, model_name=name, params={**PARAMS, "C": 0.5})
    assert retrain["fingerprint"] != news["fingerprint"]
    diff = provider.diff(created.id, regated, retrain)
    assert diff.changes is True and diff.stables == ["model_name"]
    trained = provider.update(created.id, regated, retrain).outs or {}
    assert (trained["version"], trained["reused"]) == ("2", False)
    assert trained["model_fingerprint"] == retrain["fingerprint"]
    assert versions(mlflow_server, name) == ["1", "2"]


def test_a_version_that_failed_its_gate_is_regated_not_retrained(mlflow_server: str, data: Path) -> None:
    provider = TrainedModelProvider()
    impossible = props(mlflow_server, data, gate=with_bound("accuracy", "min", 1.0))
    name, experiment, fingerprint = (impossible[k] for k in ("model_name", "experiment_name", "fingerprint"))
    before = set(runs_with(mlflow_server, experiment, fingerprint))
    with pytest.raises(TrainingError, match="accuracy"):
        provider.create(impossible)  # the engine keeps no state: the next up creates again
    client = MlflowClient(mlflow_server)
    assert client.get_model_version(name, "1").tags["gate"] == "failed"
    runs = sorted(set(runs_with(mlflow_server, experiment, fingerprint)) - before)
    assert len(runs) == 1

    fixed = props(mlflow_server, data, model_name=name)  # the gate relaxed in the stack file
    outs = provider.create(fixed).outs or {}
    assert (outs["version"], outs["reused"], outs["run_id"]) == ("1", True, runs[0])
    assert versions(mlflow_server, name) == ["1"]
    assert sorted(set(runs_with(mlflow_server, experiment, fingerprint)) - before) == runs
    assert client.get_model_version(name, "1").tags["gate"] == "passed"
    assert client.get_registered_model(name).aliases == {"candidate": "1"}


def test_create_then_same_fingerprint_no_change_then_changed_data_updates(
    mlflow_server: str, data: Path
) -> None:
    provider = TrainedModelProvider()
    news = props(mlflow_server, data)
    created = provider.create(news)
    outs = created.outs or {}
    name = news["model_name"]
    assert created.id == f"{name}/1"
    assert outs["model_uri"] == f"models:/{name}/1" and outs["version"] == "1"
    assert outs["fingerprint"] == news["fingerprint"]
    assert len(outs["model_fingerprint"]) == 64
    assert {"accuracy", "f1", "roc_auc", "log_loss"} <= set(outs["metrics"])
    assert outs["metrics"]["accuracy"] >= GATE["accuracy"]["min"]
    assert outs["task"] == "binary"
    assert MlflowClient(mlflow_server).get_run(outs["run_id"]).info.status == "FINISHED"
    assert "tracking_password" not in outs  # credentials are inputs only

    # Unchanged inputs (a re-read of the same file): no changes, so the engine never calls update.
    same = props(mlflow_server, data, model_name=name)
    assert same["fingerprint"] == news["fingerprint"]
    diff = provider.diff(created.id, outs, same)
    assert diff.changes is False and diff.replaces == []
    assert versions(mlflow_server, name) == ["1"]

    # Changed data: drop the last 40 rows -> new fingerprint -> change -> update trains version 2.
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:-40]))
    changed = props(mlflow_server, data, model_name=name)
    assert changed["fingerprint"] != news["fingerprint"]
    diff = provider.diff(created.id, outs, changed)
    assert diff.changes is True and diff.replaces == []
    updated = provider.update(created.id, outs, changed).outs or {}
    assert updated["version"] == "2" and updated["model_uri"] == f"models:/{name}/2"
    assert updated["run_id"] != outs["run_id"]
    assert updated["fingerprint"] == changed["fingerprint"]
    assert updated["model_fingerprint"] != outs["model_fingerprint"]
    assert versions(mlflow_server, name) == ["1", "2"]


def test_a_failed_gate_is_a_clear_error_and_nothing_is_aliased(mlflow_server: str, data: Path) -> None:
    impossible = with_bound("log_loss", "max", 0.0, with_bound("accuracy", "min", 1.0))
    news = props(mlflow_server, data, gate=impossible)
    with pytest.raises(TrainingError) as info:
        TrainedModelProvider().create(news)
    message = str(info.value)
    assert "quality gate failed" in message and "accuracy" in message and "Nothing was built" in message
    client = MlflowClient(mlflow_server)
    model = client.get_registered_model(news["model_name"])
    assert not model.aliases  # no 'candidate' for a version that failed


def test_bad_params_or_gate_name_the_spec_or_stack_key(mlflow_server: str, data: Path) -> None:
    news = props(mlflow_server, data, params={"learning_rate": 0.1})
    with pytest.raises(TrainingError, match=r"key 'params'.*LogisticRegression refused them"):
        TrainedModelProvider().create(news)
    news = props(mlflow_server, data, gate=with_bound("rmse", "max", 3.0))
    with pytest.raises(TrainingError, match=r"gate\.rmse.*modelSpec.*'gate'"):
        TrainedModelProvider().create(news)


def test_how_mlflow_is_reached_takes_no_part_in_diff(mlflow_server: str, data: Path) -> None:
    """A rotated kubeconfig or another route to MLflow alone must not train or re-gate."""
    provider = TrainedModelProvider()
    news = props(mlflow_server, data)
    outs = provider.create(news).outs or {}
    moved = {**news, "tracking_uri": "", "tracking_service": "mlflow/mlflow:5000", "kubeconfig": "rotated"}
    assert provider.diff("id", outs, moved).changes is False


def test_a_refused_tunnel_is_a_training_error_naming_the_missing_right(
    mlflow_server: str, data: Path, fake_kubectl: FakeKubectl
) -> None:
    fake_kubectl.serve("mlflow/mlflow:5000", mlflow_server)
    fake_kubectl.mode("forbidden")
    news = props(
        mlflow_server,
        data,
        tracking_uri="",
        tracking_service="mlflow/mlflow:5000",
        kubeconfig=FAKE_KUBECONFIG,
    )
    with pytest.raises(TrainingError, match=r"cannot reach MLflow to train.*pods/portforward"):
        TrainedModelProvider().create(news)
    assert versions(mlflow_server, news["model_name"]) == []
