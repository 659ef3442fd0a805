"""A short-lived tunnel from the deploying machine to a ClusterIP Service, over the AKS API server.

MLflow is never public in an Azure stack. Training, re-gating, the bento export and the record of
what each environment serves reach it with ``kubectl port-forward``, which the API server authorizes
against the caller's Entra identity and AKS RBAC (``pods/portforward`` create in the namespace).
``service_tunnel`` opens one for the length of a ``with`` block:

* the kubeconfig (a secret stack output) goes to a temporary 0600 file, removed afterwards;
* ``kubectl --kubeconfig F --namespace NS port-forward --address 127.0.0.1
  --pod-running-timeout 60s service/NAME LOCAL:PORT`` on a free loopback port;
* it waits, bounded, until the Service answers ``ready_path`` (MLflow: ``/health``, which its
  basic-auth app leaves open), yields ``http://127.0.0.1:LOCAL`` and stops kubectl by its pid.

Failures raise ``TunnelError`` naming the cause: kubectl missing, the forward refused (RBAC), the
forward exiting, or not ready in time. ``ServiceAddress`` is the ``<namespace>/<service>:<port>``
text a stack exports (``mlflowService``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import requests

from tools.processes import LOOPBACK, free_port, stop_process

DEFAULT_READY_TIMEOUT = 120.0
POD_RUNNING_TIMEOUT = "60s"
KUBECTL_ENV = "KUBECTL"  # another kubectl binary (path or name), else "kubectl" on PATH
_SERVICE_RE = re.compile(r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?)/([a-z0-9]([a-z0-9-]*[a-z0-9])?):(\d{1,5})$")
# What kubectl prints when AKS RBAC (or Kubernetes RBAC) refuses the caller.
# Whole words, so that a port number or an address containing 403 is no refusal.
_REFUSED_RE = re.compile(r"\b(forbidden|unauthorized|403|401)\b", re.IGNORECASE)


class TunnelError(RuntimeError):
    """The tunnel could not be opened; the message names the cause and the fix."""


class TunnelRefused(TunnelError):
    """The API server refused the caller the port-forward (an RBAC decision, not a fault)."""


class ServiceAddress(NamedTuple):
    """A Service in the cluster: namespace, name and port."""

    namespace: str
    name: str
    port: int

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> ServiceAddress:
        """``<namespace>/<service>:<port>`` (the ``mlflowService`` stack output)."""
        match = _SERVICE_RE.match(text.strip())
        if match is None or not 0 < int(match.group(5)) < 65536:
            raise ValueError(
                f"{text!r} is not a Service address: "
                "write <namespace>/<service>:<port>, e.g. mlflow/mlflow:5000"
            )
        return cls(match.group(1), match.group(3), int(match.group(5)))


def port_forward_command(
    kubectl: str, kubeconfig: Path, service: ServiceAddress, local_port: int
) -> list[str]:
    """The kubectl invocation (flags as ``kubectl port-forward --help`` documents them)."""
    return [
        kubectl,
        "--kubeconfig", str(kubeconfig),
        "--namespace", service.namespace,
        "port-forward",
        "--address", LOOPBACK,
        "--pod-running-timeout", POD_RUNNING_TIMEOUT,
        f"service/{service.name}",
        f"{local_port}:{service.port}",
    ]  # fmt: skip


def _kubectl() -> str:
    wanted = os.environ.get(KUBECTL_ENV) or "kubectl"
    found = shutil.which(wanted)
    if found is None:
        raise TunnelError(
            f"kubectl ({wanted!r}) is not on PATH: the tunnel to MLflow needs it (and kubelogin for AKS). "
            "Install both with `az aks install-cli`, or set KUBECTL to the binary."
        )
    return found


def _failure(service: ServiceAddress, returncode: int, output: str) -> TunnelError:
    detail = output.strip()[-600:] or "(no output)"
    if _REFUSED_RE.search(output):
        return TunnelRefused(
            f"the API server refused the port-forward to {service}: {detail}. The identity running this "
            f"needs a role allowing pods/portforward create in namespace {service.namespace!r} (the "
            "deployer's Azure Kubernetes Service RBAC Cluster Admin does; AKS RBAC Reader does not); "
            "check `az account show` and the kubeconfig."
        )
    return TunnelError(f"kubectl port-forward to {service} exited with {returncode}: {detail}")


@contextmanager
def service_tunnel(
    kubeconfig: str,
    service: ServiceAddress,
    *,
    ready_path: str = "/health",
    timeout: float = DEFAULT_READY_TIMEOUT,
    local_port: int | None = None,
) -> Iterator[str]:
    """Forward a 127.0.0.1 port (``local_port``, else a free one) to ``service`` until the block exits;
    yield the local base URL."""
    if not kubeconfig.strip():
        raise TunnelError(f"no kubeconfig to reach {service}: pass the stack output 'kubeconfig'")
    kubectl = _kubectl()
    with tempfile.TemporaryDirectory(prefix="ml-delivery-tunnel-") as folder:
        config_path = Path(folder) / "kubeconfig"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(kubeconfig)
        log_path = Path(folder) / "kubectl.log"
        port = local_port or free_port()
        url = f"http://{LOOPBACK}:{port}"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                port_forward_command(kubectl, config_path, service, port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_ready(proc, url + ready_path, service, timeout, log_path)
            yield url
        finally:
            stop_process(proc, timeout=10)


def _wait_ready(
    proc: subprocess.Popen[bytes], ready_url: str, service: ServiceAddress, timeout: float, log_path: Path
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        code = proc.poll()
        if code is not None:
            raise _failure(service, code, log_path.read_text(errors="replace"))
        try:
            response = requests.get(ready_url, timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            output = log_path.read_text(errors="replace").strip()[-600:]
            raise TunnelError(
                f"the port-forward to {service} did not answer {ready_url} within {timeout:.0f}s "
                f"(last: {last}; kubectl: {output or 'no output'}). Check that the pod is running: "
                f"`kubectl -n {service.namespace} get pods`."
            )
        time.sleep(0.5)


@contextmanager
def tracking_endpoint(*, tracking_uri: str = "", service: str = "", kubeconfig: str = "") -> Iterator[str]:
    """Where MLflow answers for the block: a tunnel to ``service`` when set, else ``tracking_uri`` as is.

    Azure stacks pass ``service`` (``<namespace>/<service>:<port>``) and the cluster's kubeconfig; a
    local stack passes its node-port URL.
    """
    if service:
        with service_tunnel(kubeconfig, ServiceAddress.parse(service)) as url:
            yield url
    elif tracking_uri:
        yield tracking_uri.rstrip("/")
    else:
        raise TunnelError("no route to MLflow: neither a Service to tunnel to nor a tracking URI was given")
