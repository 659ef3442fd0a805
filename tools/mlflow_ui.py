"""Open a stack's MLflow UI on the caller's machine: a port-forward over the AKS API server until Ctrl-C.

    make mlflow-ui STACK=dev                  # or: python -m tools.mlflow_ui --stack dev [--port 5000]

Reads the stack's outputs with ``pulumi stack output --json --show-secrets`` (``kubeconfig``,
``mlflowService``, ``mlflowAdminUsername``), opens the tunnel (infra/tunnel.py) authorized by your
Entra identity and AKS RBAC (``az login`` first), prints the URL and the login, and closes the tunnel
on exit. The same without this tool:

    pulumi stack output kubeconfig --show-secrets -s dev > /tmp/kubeconfig && chmod 600 /tmp/kubeconfig
    kubectl --kubeconfig /tmp/kubeconfig -n mlflow port-forward --address 127.0.0.1 svc/mlflow 5000:5000

Exit status: 0 closed by Ctrl-C, 1 the tunnel failed, 2 the stack outputs are unusable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from infra.tunnel import ServiceAddress, TunnelError, service_tunnel

DEFAULT_SERVICE = "mlflow/mlflow:5000"


def stack_outputs(stack: str) -> dict[str, Any]:
    """``pulumi stack output --json --show-secrets`` of ``stack``; ValueError naming the problem."""
    try:
        done = subprocess.run(
            ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise ValueError("the pulumi CLI is not on PATH: install it, then `pulumi login`") from None
    if done.returncode != 0:
        raise ValueError(f"`pulumi stack output -s {stack}` failed: {done.stderr.strip()[-400:]}")
    outputs = json.loads(done.stdout or "{}")
    if not isinstance(outputs, dict):
        raise ValueError(f"`pulumi stack output -s {stack}` did not return an object")
    return outputs


def serve_ui(
    outputs: Mapping[str, Any],
    *,
    stack: str,
    port: int | None,
    wait: Callable[[], None],
    log: Callable[[str], None] = print,
) -> None:
    """Open the tunnel from the stack's outputs, report the URL, ``wait()``, close it."""
    kubeconfig = outputs.get("kubeconfig")
    if not isinstance(kubeconfig, str) or not kubeconfig:
        raise ValueError(f"stack {stack} has no 'kubeconfig' output: run `pulumi up -s {stack}` first")
    service = ServiceAddress.parse(str(outputs.get("mlflowService") or DEFAULT_SERVICE))
    with service_tunnel(kubeconfig, service, local_port=port) as url:
        log(f"MLflow of stack {stack}: {url}  (user {outputs.get('mlflowAdminUsername', 'admin')!r})")
        log(f"password: pulumi stack output mlflowAdminPassword --show-secrets -s {stack}")
        log("Ctrl-C closes the tunnel.")
        wait()


def _until_interrupted() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mlflow_ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="the stack whose MLflow to open (dev)")
    parser.add_argument("--port", type=int, default=None, help="local port (default: a free one)")
    args = parser.parse_args(argv)
    try:
        outputs = stack_outputs(args.stack)
        serve_ui(outputs, stack=args.stack, port=args.port, wait=_until_interrupted)
    except ValueError as exc:
        print(f"mlflow-ui: {exc}", file=sys.stderr)
        return 2
    except TunnelError as exc:
        print(f"mlflow-ui: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
