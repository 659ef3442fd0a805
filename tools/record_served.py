"""Record in the registry of record (dev's MLflow) which model version an environment now serves.

Run by the deploy flow after staging's or prod's ``pulumi up``, under dev's deploy identity (the
``dev`` environment), so no environment holds a credential for another's MLflow:

    pulumi stack output --json --show-secrets -s dev > dev.json
    pulumi stack output --json --show-secrets -s prod > prod.json
    python -m tools.record_served --registry-outputs dev.json --served-outputs prod.json --environment prod

It opens the tunnel to dev's MLflow (infra/tunnel.py) with dev's ``kubeconfig`` output, logs in
with dev's ``mlflowAdminUsername``/``mlflowAdminPassword``, checks that the served version
(``modelVersion`` of the promoted stack) carries the promoted stack's ``fingerprint`` as its
``fingerprint`` tag, and points the environment's aliases at it: ``staging`` for staging;
``production`` and ``champion`` for prod (``champion`` is what dev's gate compares candidates with,
so it means "the version prod serves").

Exit status: 0 recorded, 1 refused or mismatched (the tunnel or MLflow refused, the version is
missing or its fingerprint differs), 2 bad arguments or output files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.training import tracking_env
from infra.tunnel import ServiceAddress, TunnelError, service_tunnel
from model.registry import CHAMPION_ALIAS, FINGERPRINT_TAG

ALIASES = {"staging": ("staging",), "prod": ("production", CHAMPION_ALIAS)}
REGISTRY_KEYS = (
    "kubeconfig",
    "mlflowService",
    "mlflowModelName",
    "mlflowAdminUsername",
    "mlflowAdminPassword",
)
SERVED_KEYS = ("modelVersion", "fingerprint")


class BadInput(ValueError):
    """An argument or an outputs file is unusable (exit 2)."""


class Refused(RuntimeError):
    """The registry refused, or the served version does not match (exit 1)."""


@dataclass(frozen=True)
class Registry:
    """How to reach and log in to the registry of record (from dev's stack outputs)."""

    kubeconfig: str
    service: ServiceAddress
    model_name: str
    username: str
    password: str


@dataclass(frozen=True)
class Served:
    """What the promoted stack serves."""

    version: str
    fingerprint: str


def read_outputs(path: Path, required: Sequence[str], role: str) -> dict[str, Any]:
    """A ``pulumi stack output --json --show-secrets`` file holding ``required`` keys as strings."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BadInput(f"{role} {path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"{role} {path}: not JSON ({exc}); write `pulumi stack output --json --show-secrets`"
        ) from None
    if not isinstance(data, dict):
        raise BadInput(f"{role} {path}: not a JSON object of stack outputs")
    missing = [key for key in required if not isinstance(data.get(key), str) or not data[key]]
    # Only the keys this file must supply matter: the promoted stack's outputs are read without
    # --show-secrets (its kubeconfig then reads "[secret]"), dev's with them.
    masked = [key for key in required if data.get(key) == "[secret]"]
    if masked:
        raise BadInput(
            f"{role} {path}: output(s) {', '.join(masked)} are masked; "
            "run `pulumi stack output --json --show-secrets`"
        )
    if missing:
        hint = ""
        if role == "--served-outputs" and "modelVersion" in missing and data.get("imageRefOverride"):
            hint = " (a rollback by imageRefOverride has no model lineage: nothing to record)"
        raise BadInput(f"{role} {path}: lacks output(s) {', '.join(missing)}{hint}")
    return data


def registry_from(outputs: Mapping[str, Any], path: Path) -> Registry:
    try:
        service = ServiceAddress.parse(outputs["mlflowService"])
    except ValueError as exc:
        raise BadInput(f"--registry-outputs {path}: mlflowService: {exc}") from None
    return Registry(
        kubeconfig=outputs["kubeconfig"],
        service=service,
        model_name=outputs["mlflowModelName"],
        username=outputs["mlflowAdminUsername"],
        password=outputs["mlflowAdminPassword"],
    )


def record(registry: Registry, served: Served, environment: str, *, timeout: float = 120) -> list[str]:
    """Check the served version's fingerprint in the registry, then set the environment's aliases."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    aliases = list(ALIASES[environment])
    try:
        with (
            service_tunnel(registry.kubeconfig, registry.service, timeout=timeout) as url,
            tracking_env(registry.username, registry.password),
        ):
            client = MlflowClient(url)
            try:
                version = client.get_model_version(registry.model_name, served.version)
            except MlflowException as exc:
                raise Refused(
                    f"{registry.model_name} version {served.version} is not in the registry: {exc.message}"
                ) from None
            logged = version.tags.get(FINGERPRINT_TAG)
            if logged != served.fingerprint:
                raise Refused(
                    f"{registry.model_name} version {served.version} has fingerprint {logged!r}, but "
                    f"{environment} serves {served.fingerprint!r}: the promoted stack does not serve "
                    "that version; nothing was recorded"
                )
            for alias in aliases:
                client.set_registered_model_alias(registry.model_name, alias, served.version)
    except TunnelError as exc:
        raise Refused(f"cannot reach the registry of record: {exc}") from exc
    except MlflowException as exc:
        raise Refused(f"the registry refused: {exc.message}") from exc
    return aliases


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.record_served", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--registry-outputs", type=Path, required=True, help="dev's stack outputs (JSON)")
    parser.add_argument(
        "--served-outputs", type=Path, required=True, help="the promoted stack's outputs (JSON)"
    )
    parser.add_argument("--environment", required=True, choices=sorted(ALIASES), help="the promoted stack")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the tunnel")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for bad arguments, 0 for --help
        return int(exc.code or 0)
    try:
        registry = registry_from(
            read_outputs(args.registry_outputs, REGISTRY_KEYS, "--registry-outputs"), args.registry_outputs
        )
        served_outputs = read_outputs(args.served_outputs, SERVED_KEYS, "--served-outputs")
    except BadInput as exc:
        print(f"record_served: {exc}", file=sys.stderr)
        return 2
    served = Served(served_outputs["modelVersion"], served_outputs["fingerprint"])
    try:
        aliases = record(registry, served, args.environment, timeout=args.timeout)
    except Refused as exc:
        print(f"record_served: FAILED: {exc}", file=sys.stderr)
        return 1
    print(
        f"record_served: {registry.model_name} version {served.version} is now "
        f"{', '.join(repr(a) for a in aliases)} in the registry of record"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
