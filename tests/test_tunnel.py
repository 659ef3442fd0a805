"""infra.tunnel against a stand-in kubectl (tests/fakes/kubectl.py) forwarding to a real ``mlflow server``.

The stand-in checks the invocation as kubectl would (flags, 0600 kubeconfig, Service form), so a
wrong flag fails here. Covered: the forward reaches MLflow and is closed after the block; kubectl
missing, the API server refusing the forward (RBAC), an unknown Service and a pod that never
answers each raise a TunnelError naming the cause, and the temporary kubeconfig is gone afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from infra.tunnel import ServiceAddress, TunnelError, TunnelRefused, service_tunnel
from tests.conftest import FAKE_KUBECONFIG, FakeKubectl

pytestmark = pytest.mark.servers

MLFLOW = ServiceAddress("mlflow", "mlflow", 5000)


def test_service_address_round_trips_and_rejects_other_text() -> None:
    assert ServiceAddress.parse("mlflow/mlflow:5000") == MLFLOW
    assert str(MLFLOW) == "mlflow/mlflow:5000"
    for bad in ("mlflow:5000", "mlflow/mlflow", "Mlflow/mlflow:5000", "mlflow/mlflow:0", "a/b:99999"):
        with pytest.raises(ValueError, match="<namespace>/<service>:<port>"):
            ServiceAddress.parse(bad)


def test_the_tunnel_reaches_mlflow_through_kubectl_and_closes_after(
    mlflow_server: str, fake_kubectl: FakeKubectl
) -> None:
    fake_kubectl.serve("mlflow/mlflow:5000", mlflow_server)
    with service_tunnel(FAKE_KUBECONFIG, MLFLOW, timeout=60) as url:
        assert url.startswith("http://127.0.0.1:") and url != mlflow_server
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
        experiments = requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert experiments.status_code == 200
        [argv] = fake_kubectl.calls()
        config = Path(argv[argv.index("--kubeconfig") + 1])
        assert config.read_text() == FAKE_KUBECONFIG
    assert not config.exists()  # the temporary kubeconfig is removed with the tunnel
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=5)  # kubectl was stopped
    assert argv[argv.index("port-forward") :][-2:] == ["service/mlflow", f"{url.rsplit(':', 1)[1]}:5000"]
    assert argv[argv.index("--address") + 1] == "127.0.0.1"


def test_missing_kubectl_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with (
        pytest.raises(TunnelError, match=r"kubectl .* is not on PATH.*az aks install-cli"),
        service_tunnel(FAKE_KUBECONFIG, MLFLOW),
    ):
        pass


def test_an_rbac_refusal_says_which_right_is_missing(mlflow_server: str, fake_kubectl: FakeKubectl) -> None:
    fake_kubectl.serve("mlflow/mlflow:5000", mlflow_server)
    fake_kubectl.mode("forbidden")
    with (
        pytest.raises(TunnelRefused, match=r"refused the port-forward.*pods/portforward.*'mlflow'"),
        service_tunnel(FAKE_KUBECONFIG, MLFLOW, timeout=60),
    ):
        pass


def test_an_unknown_service_reports_kubectls_error(mlflow_server: str, fake_kubectl: FakeKubectl) -> None:
    fake_kubectl.serve("mlflow/mlflow:5000", mlflow_server)
    other = ServiceAddress("mlflow", "other", 5000)
    with (
        pytest.raises(TunnelError, match=r'exited with 1.*services "other" not found') as info,
        service_tunnel(FAKE_KUBECONFIG, other, timeout=60),
    ):
        pass
    assert not isinstance(info.value, TunnelRefused)


def test_a_forward_that_never_answers_fails_in_bounded_time(
    mlflow_server: str, fake_kubectl: FakeKubectl
) -> None:
    fake_kubectl.serve("mlflow/mlflow:5000", mlflow_server)
    fake_kubectl.mode("hang")
    with (
        pytest.raises(TunnelError, match=r"did not answer .*/health within 3s"),
        service_tunnel(FAKE_KUBECONFIG, MLFLOW, timeout=3),
    ):
        pass


def test_an_empty_kubeconfig_is_refused_before_kubectl_runs(fake_kubectl: FakeKubectl) -> None:
    with pytest.raises(TunnelError, match="no kubeconfig"), service_tunnel("", MLFLOW):
        pass
    assert fake_kubectl.calls() == []


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["port-forward", "--adress", "127.0.0.1", "service/mlflow", "1:2"], "unknown flag: --adress"),
        (["port-forward", "--address", "loopback", "service/mlflow", "1:2"], "not a valid IP"),
        (["port-forward", "service/mlflow"], "list of ports are required"),
    ],
)
def test_the_stand_in_rejects_what_kubectl_rejects(
    fake_kubectl: FakeKubectl, tmp_path: Path, argv: list[str], error: str
) -> None:
    import subprocess

    config = tmp_path / "config"
    config.write_text(FAKE_KUBECONFIG)
    config.chmod(0o600)
    done = subprocess.run(["kubectl", "--kubeconfig", str(config), *argv], capture_output=True, text=True)
    assert done.returncode == 1 and error in done.stderr


def test_the_ui_tool_opens_the_tunnel_from_stack_outputs(
    mlflow_server: str, fake_kubectl: FakeKubectl
) -> None:
    from tools.mlflow_ui import serve_ui

    fake_kubectl.serve("mlflow/mlflow:5000", mlflow_server)
    lines: list[str] = []
    seen: list[int] = []

    def wait() -> None:
        url = lines[0].split(": ", 1)[1].split()[0]
        seen.append(requests.get(f"{url}/health", timeout=10).status_code)

    outputs = {
        "kubeconfig": FAKE_KUBECONFIG,
        "mlflowService": "mlflow/mlflow:5000",
        "mlflowAdminUsername": "admin",
    }
    serve_ui(outputs, stack="dev", port=None, wait=wait, log=lines.append)
    assert seen == [200] and "'admin'" in lines[0] and "mlflowAdminPassword" in lines[1]
    with pytest.raises(ValueError, match="no 'kubeconfig' output"):
        serve_ui({}, stack="dev", port=None, wait=wait, log=lines.append)
