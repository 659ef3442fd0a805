"""ClusterAccess: wait, bounded, until the AKS API server lets the deployer administer the cluster.

With local accounts off, the deployer reaches Kubernetes only through its Azure RBAC role
assignment (Azure Kubernetes Service RBAC Cluster Admin), which takes up to minutes to propagate:
until then every Kubernetes call gets 403. This dynamic resource runs ``kubectl auth can-i create
namespaces --all-namespaces`` (a SelfSubjectAccessReview; kubelogin supplies the Entra token) with
the stack's kubeconfig in a 0600 temporary file, every ``interval`` seconds until it answers
``yes``, for at most ``timeout_seconds``, printing progress. The Kubernetes provider depends on it
(and on the grants), so no Kubernetes object is sent before access works.

``diff`` changes only when the grants change (their ids): a later ``up`` does not wait again, and
the kubeconfig (a secret input) never causes a change. Preview never calls create.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

ACCESS_WAIT_SECONDS = 600.0
POLL_SECONDS = 15.0
CAN_I = ("auth", "can-i", "create", "namespaces", "--all-namespaces")


class ClusterAccessError(RuntimeError):
    """The API server never allowed the deployer in time; the message says what to check."""


def can_i(kubeconfig: str, kubectl: str = "kubectl") -> tuple[bool, str]:
    """(allowed, kubectl's answer) for the deployer with ``kubeconfig`` (written 0600, then removed)."""
    fd, path = tempfile.mkstemp(prefix="kubeconfig-", suffix=".yaml")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(kubeconfig)
        result = subprocess.run(
            [kubectl, *CAN_I, "--kubeconfig", path],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.unlink(path)
    answer = (result.stdout.strip() or result.stderr.strip()).splitlines()
    text = answer[-1] if answer else f"exit {result.returncode}"
    return result.returncode == 0 and result.stdout.strip() == "yes", text


def wait_for_access(
    props: dict[str, Any],
    *,
    check: Callable[[str], tuple[bool, str]] = can_i,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    timeout = float(props.get("timeout_seconds") or ACCESS_WAIT_SECONDS)
    interval = float(props.get("interval_seconds") or POLL_SECONDS)
    deadline = clock() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            allowed, answer = check(str(props["kubeconfig"]))
        except (OSError, subprocess.TimeoutExpired) as err:
            allowed, answer = False, str(err)
        if allowed:
            return {"allowed": True, "attempts": attempt}
        if clock() >= deadline:
            raise ClusterAccessError(
                f"the AKS API server still refuses the deployer after {timeout:.0f}s ({answer}). Check that "
                "the identity running `pulumi up` is in deployerPrincipals, that kubectl and kubelogin are "
                "installed, and that kubeloginMode matches how it is logged in; then run `pulumi up` again."
            )
        print(f"waiting for AKS RBAC to allow the deployer (attempt {attempt}): {answer}", file=sys.stderr)
        sleep(interval)


class ClusterAccessProvider(ResourceProvider):
    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = sorted(olds.get("grant_ids") or []) != sorted(news.get("grant_ids") or [])
        return DiffResult(changes=changed, replaces=[], stables=["allowed"], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_="cluster-access", outs={**props, **wait_for_access(props)})

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, **wait_for_access(news)})


class ClusterAccess(pulumi.dynamic.Resource):
    """Exists once the API server answers the deployer with "allowed"."""

    allowed: pulumi.Output[bool]

    def __init__(
        self,
        name: str,
        *,
        kubeconfig: pulumi.Input[str],
        grant_ids: Sequence[pulumi.Input[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            ClusterAccessProvider(),
            name,
            {
                "kubeconfig": pulumi.Output.secret(kubeconfig),
                "grant_ids": list(grant_ids),
                "timeout_seconds": ACCESS_WAIT_SECONDS,
                "interval_seconds": POLL_SECONDS,
                "allowed": None,
                "attempts": None,
            },
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["kubeconfig"])
            ),
        )
