"""tools.record_served against a real ``mlflow server`` reached through the stand-in kubectl.

The served version's fingerprint must match before any alias moves; staging gets ``staging``, prod
gets ``production`` and ``champion`` (what dev's gate compares with); bad files exit 2, a mismatch
or a refused tunnel exits 1 and changes nothing.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from model import registry
from tests.conftest import FAKE_KUBECONFIG, FakeKubectl
from tools.record_served import main

pytestmark = pytest.mark.servers

FINGERPRINT = "ab" * 32


@pytest.fixture
def model(mlflow_server: str) -> tuple[str, str]:
    """A registered model with one version tagged with FINGERPRINT: (name, version)."""
    client = MlflowClient(mlflow_server)
    name = f"record-{uuid.uuid4().hex[:8]}"
    experiment = client.get_experiment_by_name("record-served") or client.get_experiment(
        client.create_experiment("record-served")
    )
    run = client.create_run(experiment.experiment_id)
    client.create_registered_model(name)
    mv = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags={registry.FINGERPRINT_TAG: FINGERPRINT},
    )
    return name, str(mv.version)


def write(path: Path, outputs: dict[str, Any]) -> Path:
    path.write_text(json.dumps(outputs))
    return path


def files(tmp_path: Path, name: str, version: str, fingerprint: str = FINGERPRINT) -> list[str]:
    dev = write(
        tmp_path / "dev.json",
        {
            "kubeconfig": FAKE_KUBECONFIG,
            "mlflowService": "mlflow/mlflow:5000",
            "mlflowModelName": name,
            "mlflowAdminUsername": "admin",
            "mlflowAdminPassword": "not-checked-by-this-server",
        },
    )
    # as the promoted job hands it over: `pulumi stack output --json` WITHOUT --show-secrets
    served = write(
        tmp_path / "served.json",
        {
            "modelVersion": version,
            "fingerprint": fingerprint,
            "imageRef": "registrystg.azurecr.io/cancer-classifier@sha256:" + "cd" * 32,
            "endpoint": "http://model-server.model-serving.svc.cluster.local",
            "task": "binary",
            "kubeconfig": "[secret]",
        },
    )
    return ["--registry-outputs", str(dev), "--served-outputs", str(served)]


def aliases(mlflow_server: str, name: str) -> dict[str, str]:
    return dict(MlflowClient(mlflow_server).get_registered_model(name).aliases)


def test_staging_then_prod_are_recorded_as_aliases_through_the_tunnel(
    mlflow_server: str, fake_kubectl: FakeKubectl, model: tuple[str, str], tmp_path: Path
) -> None:
    name, version = model
    fake_kubectl.serve("mlflow/mlflow:5000", mlflow_server)
    assert main([*files(tmp_path, name, version), "--environment", "staging"]) == 0
    assert aliases(mlflow_server, name) == {"staging": version}
    assert main([*files(tmp_path, name, version), "--environment", "prod"]) == 0
    assert aliases(mlflow_server, name) == {"staging": version, "production": version, "champion": version}
    assert len(fake_kubectl.calls()) == 2  # one tunnel per record, closed after


def test_a_fingerprint_mismatch_changes_nothing(
    mlflow_server: str,
    fake_kubectl: FakeKubectl,
    model: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, version = model
    fake_kubectl.serve("mlflow/mlflow:5000", mlflow_server)
    assert main([*files(tmp_path, name, version, "cd" * 32), "--environment", "prod"]) == 1
    assert "has fingerprint" in capsys.readouterr().err
    assert aliases(mlflow_server, name) == {}
    assert main([*files(tmp_path, name, "99"), "--environment", "prod"]) == 1
    assert "not in the registry" in capsys.readouterr().err


def test_a_refused_tunnel_exits_1_naming_the_right(
    mlflow_server: str,
    fake_kubectl: FakeKubectl,
    model: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, version = model
    fake_kubectl.serve("mlflow/mlflow:5000", mlflow_server)
    fake_kubectl.mode("forbidden")
    assert main([*files(tmp_path, name, version), "--environment", "staging"]) == 1
    assert "pods/portforward" in capsys.readouterr().err
    assert aliases(mlflow_server, name) == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d, s: d.write_text("{not json"), "not JSON"),
        (lambda d, s: d.write_text(json.dumps({"kubeconfig": "x"})), "lacks output(s) mlflowService"),
        (lambda d, s: s.write_text(json.dumps({"imageRefOverride": "x"})), "rollback"),
        (
            lambda d, s: d.write_text(json.dumps({**json.loads(d.read_text()), "kubeconfig": "[secret]"})),
            "masked",
        ),
        (
            lambda d, s: d.write_text(json.dumps({**json.loads(d.read_text()), "mlflowService": "x"})),
            "mlflowService",
        ),
        (lambda d, s: s.unlink(), "cannot read"),
    ],
)
def test_bad_files_exit_2_with_the_file_and_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, message: str
) -> None:
    args = files(tmp_path, "m", "1")
    change(tmp_path / "dev.json", tmp_path / "served.json")
    assert main([*args, "--environment", "prod"]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_environment_exits_2(tmp_path: Path) -> None:
    assert main([*files(tmp_path, "m", "1"), "--environment", "dev"]) == 2
