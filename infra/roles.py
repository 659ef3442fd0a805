"""Azure built-in role ids and one helper to grant a role to a principal on a scope.

The GUIDs are Azure's built-in role definition names (the same in every tenant). A role definition
id is built from the subscription of the scope it is assigned on (a scope is an ARM id that starts
with ``/subscriptions/<id>``), so a grant on another subscription's resource stays correct.
Every assignment names its ``principalType``: without it ARM looks the principal up in Entra ID,
which fails (PrincipalNotFound) for an identity created seconds earlier.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pulumi
from pulumi_azure_native import authorization

if TYPE_CHECKING:
    from infra.settings import Principal

ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
ACR_PUSH = "8311e382-0749-4cb8-b61a-304f252e45ec"
# Container Registry Data Importer and Data Reader: registries/importImage/action + pull/read + read.
ACR_IMPORTER = "577a9874-89fd-4f24-9dbd-b5034d0ad23a"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"

PRINCIPAL_TYPES = ("User", "Group", "ServicePrincipal")
_SUBSCRIPTION_RE = re.compile(r"^/subscriptions/([^/]+)(/|$)", re.IGNORECASE)


def subscription_of(scope: str) -> str:
    """The subscription id an ARM scope lives in; a clear error for anything else."""
    match = _SUBSCRIPTION_RE.match(scope)
    if not match:
        raise ValueError(f"role assignment scope {scope!r} is not an ARM id under /subscriptions/<id>")
    return match.group(1)


def role_definition_id(subscription_id: str, role_guid: str) -> str:
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"


def role_definition_for_scope(scope: str, role_guid: str) -> str:
    """The built-in role's definition id in the subscription of ``scope``."""
    return role_definition_id(subscription_of(scope), role_guid)


def grant(
    name: str,
    *,
    role_guid: str,
    principal_id: pulumi.Input[str],
    scope: pulumi.Input[str],
    parent: pulumi.Resource,
    principal_type: str = "ServicePrincipal",
    depends_on: list[pulumi.Resource] | None = None,
) -> authorization.RoleAssignment:
    """A RoleAssignment of ``role_guid`` to ``principal_id`` on ``scope`` (a child of ``parent``)."""
    if principal_type not in PRINCIPAL_TYPES:
        raise ValueError(f"principal_type {principal_type!r} is not one of {', '.join(PRINCIPAL_TYPES)}")
    return authorization.RoleAssignment(
        name,
        principal_id=principal_id,
        principal_type=principal_type,
        role_definition_id=pulumi.Output.from_input(scope).apply(
            lambda s: role_definition_for_scope(s, role_guid)
        ),
        scope=scope,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=depends_on or []),
    )


def grant_deployers(
    prefix: str,
    what: str,
    *,
    role_guid: str,
    principals: Sequence[Principal],
    scope: pulumi.Input[str],
    parent: pulumi.Resource,
) -> list[pulumi.CustomResource]:
    """``role_guid`` on ``scope`` for each deployer from config, named ``<prefix>-deployer-<i>-<what>``."""
    return [
        grant(
            f"{prefix}-deployer-{i}-{what}",
            role_guid=role_guid,
            principal_id=principal.object_id,
            scope=scope,
            parent=parent,
            principal_type=principal.principal_type,
        )
        for i, principal in enumerate(principals)
    ]
