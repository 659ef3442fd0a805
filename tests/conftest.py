"""Shared fixtures: a real ``mlflow server`` process on a free loopback port, models trained in it
from the shipped specs, and (per example) its exported bento served by a real ``bentoml serve``.

Everything here is session-scoped and started once: the server, ``trained`` (the default spec's
model, which the bento and service tests share) and ``served_example`` (train + export + serve of
one shipped example, cached per example). Every process is stopped by its id at the end. The process
helpers live in tools/processes.py (``make demo`` uses them too); they are re-exported here because
test modules import ``free_port`` and friends from this file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tools.processes import (
    bentoml_serve_command,
    free_port,
    running,
    running_mlflow_server,
    stop_process,
    wait_for_http,
)

if TYPE_CHECKING:
    from model.bento import BuildContext
    from model.spec import ModelSpec
    from model.train import TrainResult

__all__ = [
    "EXAMPLE_SPECS",
    "REPO_ROOT",
    "SERVING_MODEL_NAME",
    "ServedExample",
    "free_port",
    "mlflow_server",
    "served_example",
    "stop_process",
    "trained",
    "wait_for_http",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
# Every shipped spec; the default first.
EXAMPLE_SPECS: dict[str, Path] = {
    "default": REPO_ROOT / "model.yaml",
    "wine": REPO_ROOT / "examples" / "wine" / "model.yaml",
    "diabetes": REPO_ROOT / "examples" / "diabetes" / "model.yaml",
    "churn": REPO_ROOT / "examples" / "churn" / "model.yaml",
}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real MLflow tracking server (SQLite backend, local artifact folder)."""
    root = tmp_path_factory.mktemp("mlflow")
    with running_mlflow_server(root, free_port(), log_path=root / "server.log", timeout=120) as url:
        yield url


SERVING_MODEL_NAME = "serving-tests-model"


@pytest.fixture(scope="session")
def trained(mlflow_server: str) -> TrainResult:
    """The default spec's model trained and registered in the session's MLflow server, for the bento
    and service tests."""
    from model.spec import load_spec
    from model.train import TrainConfig, train_and_register

    return train_and_register(
        TrainConfig(
            spec=load_spec(EXAMPLE_SPECS["default"]),
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


@dataclass(frozen=True)
class ServedExample:
    """A shipped spec trained, gated, exported (parity checked) and served over HTTP."""

    spec: ModelSpec
    result: TrainResult
    context: BuildContext
    url: str


@pytest.fixture(scope="session")
def served_example(
    mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], ServedExample]]:
    """``served_example(key)``: the example of EXAMPLE_SPECS trained, built and served (once each)."""
    from model.bento import export_build_context
    from model.container import MODEL_TAG_ENV, READINESS_PATH
    from model.spec import load_spec
    from model.train import TrainConfig, train_and_register

    cache: dict[str, ServedExample] = {}
    with ExitStack() as servers:

        def get(key: str) -> ServedExample:
            if key not in cache:
                spec = load_spec(EXAMPLE_SPECS[key])
                work = tmp_path_factory.mktemp(f"example-{key}")
                result = train_and_register(
                    TrainConfig(spec=spec, tracking_uri=mlflow_server, experiment_name=f"examples-{key}")
                )
                context = export_build_context(
                    result.model_uri,
                    result.fingerprint,
                    work / "context",
                    tracking_uri=mlflow_server,
                    bentoml_home=work / "bentoml",
                )
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                env = {
                    MODEL_TAG_ENV: context.model_tag,
                    "BENTOML_HOME": str(work / "serve-home"),
                    "BENTOML_DO_NOT_TRACK": "True",
                }
                servers.enter_context(
                    running(
                        bentoml_serve_command(context.path, port),
                        ready_url=f"{url}{READINESS_PATH}",
                        log_path=work / "serve.log",
                        timeout=300,
                        env=env,
                        cwd=work,
                    )
                )
                cache[key] = ServedExample(spec, result, context, url)
            return cache[key]

        yield get
