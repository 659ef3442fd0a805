"""The container registry the serving image is pushed to, and who may pull from it.

``Registry``: an Azure Container Registry with the admin user disabled. Pushing needs no stored
secret: the deployer runs ``az acr login --name <registry>`` first (CI: after azure/login with
OIDC), and pulumi_docker uses the Docker credential store. ``LocalRegistry``: an existing registry
(``registryServer``, e.g. localhost:5001 for kind). ``grant_acr_pull`` gives a kubelet identity
AcrPull on a registry (this stack's or a promotion source's).
"""

from __future__ import annotations

import pulumi
from pulumi_azure_native import containerregistry

from infra import roles
from infra.settings import Settings


def grant_acr_pull(
    name: str,
    *,
    kubelet_object_id: pulumi.Input[str],
    registry_id: pulumi.Input[str],
    parent: pulumi.Resource,
) -> pulumi.Resource:
    """AcrPull for a cluster's kubelet identity, scoped to one registry."""
    return roles.grant(
        name, role_guid=roles.ACR_PULL, principal_id=kubelet_object_id, scope=registry_id, parent=parent
    )


class Registry(pulumi.ComponentResource):
    """ACR (admin user off, SKU from config) with AcrPull for the cluster's kubelet."""

    registry_id: pulumi.Output[str]
    login_server: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        resource_group_name: pulumi.Input[str],
        kubelet_object_id: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("ml-delivery:infra:Registry", name, None, opts)
        acr = containerregistry.Registry(
            # ACR names are alphanumeric only; Pulumi appends a random suffix to this one.
            name.replace("-", ""),
            resource_group_name=resource_group_name,
            location=settings.location,
            sku={"name": settings.registry.sku},
            admin_user_enabled=False,
            anonymous_pull_enabled=False,
            tags=dict(settings.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        grant_acr_pull(
            f"{name}-kubelet-acrpull", kubelet_object_id=kubelet_object_id, registry_id=acr.id, parent=self
        )
        self.registry_id = acr.id
        self.login_server = acr.login_server
        self.register_outputs({"registryId": acr.id, "loginServer": acr.login_server})


class LocalRegistry(pulumi.ComponentResource):
    """An existing registry reachable from the local cluster; nothing is created."""

    registry_id: pulumi.Output[str]
    login_server: pulumi.Output[str]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ml-delivery:infra:LocalRegistry", name, None, opts)
        server = settings.registry.server or "localhost:5001"
        self.registry_id = pulumi.Output.from_input(server)
        self.login_server = pulumi.Output.from_input(server)
        self.register_outputs({"registryId": self.registry_id, "loginServer": self.login_server})
