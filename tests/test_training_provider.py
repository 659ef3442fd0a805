"""The TrainedModel dynamic provider, called directly, training for real against a real ``mlflow server``.

Same fingerprint -> diff reports no changes and nothing trains; changed data -> diff reports a change
and update registers a new version; a failed gate or bad params -> a clear TrainingError.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from infra.settings import GateSettings
from infra.training import TrainedModelProvider, TrainingError, input_fingerprint
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.servers

# As the Pulumi engine delivers them: every number a float (max_iter must reach sklearn as an int).
PARAMS: dict[str, Any] = {"C": 1.0, "max_iter": 1000.0, "random_state": 42.0}


def props(mlflow_server: str, data: Path, **overrides: Any) -> dict[str, Any]:
    """The resource's inputs as the Pulumi engine hands them to the provider."""
    base: dict[str, Any] = {
        "data_path": str(data),
        "requirements_path": str(REPO_ROOT / "requirements.txt"),
        "params": dict(PARAMS),
        "gate": GateSettings().as_dict(),
        "tracking_uri": mlflow_server,
        "tracking_username": "admin",
        "tracking_password": "not-checked-by-this-server",
        "experiment_name": "infra-provider-tests",
        "model_name": f"infra-{uuid.uuid4().hex[:8]}",
    }
    base.update(overrides)
    base["fingerprint"] = input_fingerprint(base["data_path"], base["params"], base["requirements_path"])
    return base


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    shutil.copy(REPO_ROOT / "data" / "train.csv", path)
    return path


def versions(mlflow_server: str, name: str) -> list[str]:
    client = MlflowClient(mlflow_server)
    return sorted(v.version for v in client.search_model_versions(f"name='{name}'"))


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
    assert outs["metrics"]["accuracy"] >= GateSettings().min_accuracy
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
    impossible = {**GateSettings().as_dict(), "min_accuracy": 1.0, "max_log_loss": 0.0}
    news = props(mlflow_server, data, gate=impossible)
    with pytest.raises(TrainingError) as info:
        TrainedModelProvider().create(news)
    message = str(info.value)
    assert "quality gate failed" in message and "accuracy" in message and "Nothing was built" in message
    client = MlflowClient(mlflow_server)
    model = client.get_registered_model(news["model_name"])
    assert not model.aliases  # no 'candidate' for a version that failed


def test_bad_model_params_name_the_stack_key(mlflow_server: str, data: Path) -> None:
    news = props(mlflow_server, data, params={"C": -1.0})
    with pytest.raises(TrainingError, match="modelParams"):
        TrainedModelProvider().create(news)
    news = props(mlflow_server, data, params={"learning_rate": 0.1})
    with pytest.raises(TrainingError, match="modelParams"):
        TrainedModelProvider().create(news)
