"""Shared fixtures: a real ``mlflow server`` process on a free loopback port, and one model trained in it.

The server (and ``trained``, the registered model the serving tests share) is started once per test
session and stopped by its process id at the end. The process
helpers live in tools/processes.py (``make demo`` uses them too); they are re-exported here because
test modules import ``free_port`` and friends from this file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tools.processes import free_port, running_mlflow_server, stop_process, wait_for_http

if TYPE_CHECKING:
    from model.train import TrainResult

__all__ = [
    "REPO_ROOT",
    "SERVING_MODEL_NAME",
    "free_port",
    "mlflow_server",
    "stop_process",
    "trained",
    "wait_for_http",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real MLflow tracking server (SQLite backend, local artifact folder)."""
    root = tmp_path_factory.mktemp("mlflow")
    with running_mlflow_server(root, free_port(), log_path=root / "server.log", timeout=120) as url:
        yield url


SERVING_MODEL_NAME = "serving-tests-model"


@pytest.fixture(scope="session")
def trained(mlflow_server: str) -> TrainResult:
    """One model trained and registered in the session's MLflow server, for the bento and service tests."""
    from model.train import TrainConfig, train_and_register

    return train_and_register(
        TrainConfig(
            data_path=REPO_ROOT / "data" / "train.csv",
            tracking_uri=mlflow_server,
            experiment_name="serving-tests",
            model_name=SERVING_MODEL_NAME,
        )
    )


FAKE_KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: aks
  cluster: {server: "https://aks.example.invalid:443"}
contexts:
- name: aks
  context: {cluster: aks, user: deployer}
current-context: aks
users:
- name: deployer
  user: {token: not-a-real-token}
"""


class FakeKubectl:
    """Controls the stand-in kubectl (tests/fakes/kubectl.py) that the tunnel finds on PATH."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
        self._monkeypatch = monkeypatch
        self.log = log

    def serve(self, service: str, url: str) -> None:
        """Make ``service`` (``ns/name:port``) forward to the server at ``url`` (http://host:port)."""
        self._monkeypatch.setenv("FAKE_KUBECTL_SERVICES", f"{service}={url.split('://', 1)[1]}")

    def mode(self, mode: str) -> None:
        self._monkeypatch.setenv("FAKE_KUBECTL_MODE", mode)

    def calls(self) -> list[list[str]]:
        import json

        if not self.log.exists():
            return []
        return [json.loads(line)["argv"] for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKubectl:
    """A ``kubectl`` on PATH that validates port-forward arguments and forwards to a real server."""
    import sys

    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "kubectl"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{REPO_ROOT / "tests" / "fakes" / "kubectl.py"}" "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("KUBECTL", raising=False)
    log = tmp_path / "kubectl-calls.jsonl"
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(log))
    monkeypatch.delenv("FAKE_KUBECTL_MODE", raising=False)
    return FakeKubectl(monkeypatch, log)
