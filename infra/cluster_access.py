"""ClusterAccess: wait, bounded, until the AKS API server lets the deployer administer the cluster.

With local accounts off, the deployer reaches Kubernetes only through its Azure RBAC role
assignment (Azure Kubernetes Service RBAC Cluster Admin), which takes up to minutes to propagate,
and not to every API server instance at once: until then Kubernetes calls get 403, and a first
"yes" may be followed by another "no". This dynamic resource runs ``kubectl auth can-i create
namespaces --all-namespaces`` (a SelfSubjectAccessReview; kubelogin supplies the Entra token) with
the stack's kubeconfig in a 0600 temporary file, every ``interval`` seconds, until it answers
``yes`` ``confirmations`` times in a row, for at most ``timeout_seconds``, printing progress. A
"no" (or a 403) is waited out; any other answer (kubectl or kubelogin missing, a failed login, an
API server that cannot be reached from where ``pulumi up`` runs) stops at once with kubectl's
message. The Kubernetes provider depends on it (and on the grants and the user node pool), so no
Kubernetes object is sent before access works and a node can run it.

``diff`` changes only when the grants change (their ids): a later ``up`` does not wait again, and
the kubeconfig (a secret input) never causes a change. Preview never calls create.
"""

from __future__ import annotations

import enum
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
CONFIRMATIONS = 3  # consecutive "yes" answers, POLL_SECONDS apart, before access counts as granted
KUBECTL_TIMEOUT_SECONDS = 120.0
CAN_I = ("auth", "can-i", "create", "namespaces", "--all-namespaces")
_REACH_HINT = (
    "the API server must be reachable from where `pulumi up` runs: with apiServerAuthorizedIpRanges "
    "set, its address must be in them; a privateCluster is reachable only from its VNet (or a peered one)"
)


class ClusterAccessError(RuntimeError):
    """The API server never allowed the deployer in time, or could not be asked; the message says why."""


class Verdict(enum.Enum):
    ALLOWED = "allowed"  # "yes"
    DENIED = "denied"  # "no", or 403 Forbidden: the grant has not propagated yet
    BROKEN = "broken"  # anything else: no answer from the authorizer at all


def classify(returncode: int, stdout: str, stderr: str) -> tuple[Verdict, str]:
    """(verdict, the line that says so) of one ``kubectl auth can-i`` run.

    kubectl prints ``yes`` (exit 0) or ``no`` / ``no - <reason>`` (exit 1) on stdout when the
    API server answered the SelfSubjectAccessReview; errors go to stderr.
    """
    out = stdout.strip().splitlines()
    first = out[0].strip() if out else ""
    lines = (stdout.strip() or stderr.strip()).splitlines()
    text = lines[-1].strip() if lines else f"exit {returncode}"
    if returncode == 0 and first == "yes":
        return Verdict.ALLOWED, first
    if first == "no" or first.startswith("no "):
        return Verdict.DENIED, first
    if "forbidden" in f"{stdout}\n{stderr}".lower():
        err = stderr.strip().splitlines()
        return Verdict.DENIED, err[-1].strip() if err else text
    err = stderr.strip().splitlines()
    return Verdict.BROKEN, (err[-1].strip() if err else text)


def can_i(kubeconfig: str, kubectl: str = "kubectl") -> tuple[Verdict, str]:
    """(verdict, kubectl's answer) for the deployer with ``kubeconfig`` (written 0600, then removed)."""
    fd, path = tempfile.mkstemp(prefix="kubeconfig-", suffix=".yaml")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(kubeconfig)
        try:
            result = subprocess.run(
                [kubectl, *CAN_I, "--kubeconfig", path],
                capture_output=True,
                text=True,
                timeout=KUBECTL_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Verdict.BROKEN, (
                f"kubectl gave no answer in {KUBECTL_TIMEOUT_SECONDS:.0f}s (an interactive kubelogin "
                "login waiting for a person, or an API server that does not answer)"
            )
        except OSError as err:
            return Verdict.BROKEN, f"kubectl ({kubectl!r}) did not run: {err}"
    finally:
        os.unlink(path)
    return classify(result.returncode, result.stdout, result.stderr)


def wait_for_access(
    props: dict[str, Any],
    *,
    check: Callable[[str], tuple[Verdict, str]] = can_i,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Ask until ``confirmations`` consecutive "yes"; a "no" is waited out, anything else fails now."""
    timeout = float(props.get("timeout_seconds") or ACCESS_WAIT_SECONDS)
    interval = float(props.get("interval_seconds") or POLL_SECONDS)
    needed = max(int(props.get("confirmations") or CONFIRMATIONS), 1)
    deadline = clock() + timeout
    attempt = 0
    streak = 0
    while True:
        attempt += 1
        verdict, answer = check(str(props["kubeconfig"]))
        if verdict is Verdict.BROKEN:
            raise ClusterAccessError(
                f"kubectl could not ask the AKS API server whether the deployer may administer it: {answer}. "
                "Check that kubectl and kubelogin are installed, that kubeloginMode matches how this "
                f"identity is logged in (azurecli: `az login`), and that {_REACH_HINT}; then run `pulumi up` "
                "again."
            )
        streak = streak + 1 if verdict is Verdict.ALLOWED else 0
        if streak >= needed:
            return {"allowed": True, "attempts": attempt}
        # a streak under way finishes even past the deadline (at most needed - 1 more intervals)
        if streak == 0 and clock() >= deadline:
            raise ClusterAccessError(
                f"the AKS API server still refuses the deployer after {timeout:.0f}s ({answer}). Check that "
                "the identity running `pulumi up` is in deployerPrincipals (its Azure Kubernetes Service "
                f"RBAC Cluster Admin grant), and that {_REACH_HINT}; then run `pulumi up` again."
            )
        state = f"allowed {streak}/{needed}" if streak else answer
        print(f"waiting for AKS RBAC to allow the deployer (attempt {attempt}): {state}", file=sys.stderr)
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
    """Exists once the API server has answered the deployer "allowed" ``CONFIRMATIONS`` times in a row."""

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
                "confirmations": CONFIRMATIONS,
                "allowed": None,
                "attempts": None,
            },
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["kubeconfig"])
            ),
        )
