"""Azure built-in role ids and one helper to grant a role to a principal on a scope.

The GUIDs are Azure's built-in role definition names (the same in every tenant).
"""

from __future__ import annotations

import pulumi
from pulumi_azure_native import authorization

ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"


def role_definition_id(subscription_id: str, role_guid: str) -> str:
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"


def grant(
    name: str,
    *,
    role_guid: str,
    principal_id: pulumi.Input[str],
    scope: pulumi.Input[str],
    parent: pulumi.Resource,
    principal_type: str = "ServicePrincipal",
) -> authorization.RoleAssignment:
    """A RoleAssignment of ``role_guid`` to ``principal_id`` on ``scope`` (a child of ``parent``)."""
    subscription_id = authorization.get_client_config_output(
        opts=pulumi.InvokeOutputOptions(parent=parent)
    ).subscription_id
    return authorization.RoleAssignment(
        name,
        principal_id=principal_id,
        principal_type=principal_type,
        role_definition_id=subscription_id.apply(lambda sub: role_definition_id(sub, role_guid)),
        scope=scope,
        opts=pulumi.ResourceOptions(parent=parent),
    )
