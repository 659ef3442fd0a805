"""The container registry this stack's images live in, and who may push to and pull from it.

``Registry``: an Azure Container Registry with the admin user disabled, one per Azure stack (staging
and prod import promoted digests into their own). The cluster's kubelet gets AcrPull on it only;
the deployers from config (``deployerPrincipals``) get AcrPush only where the run pushes (a building
stack), and in a promoting stack Container Registry Data Importer and Data Reader instead (ARM
``importImage`` into it, and pull to verify the imported digest): nothing pushes there, so no push
right is granted. Pushes authenticate with a short-lived token the program obtains after those
grants exist (``infra.acr_token``): no ``az acr login``, no stored secret. ``LocalRegistry``: an
existing registry (``registryServer``, e.g. localhost:5001 for kind) with optional
``registryUsername``/``registryPassword``.
"""

from __future__ import annotations

import pulumi
from pulumi_azure_native import containerregistry

from infra import roles
from infra.acr_token import PushCredentials, push_credentials
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
    pull_grant: pulumi.Resource
    push_grants: list[pulumi.CustomResource]
    import_grants: list[pulumi.CustomResource]
    credentials: PushCredentials | None

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        resource_group_name: pulumi.Input[str],
        kubelet_object_id: pulumi.Input[str],
        push_repositories: tuple[str, ...] = (),
        imports: bool = False,
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
            # it holds every image this environment ran: destroy stops before deleting it
            opts=pulumi.ResourceOptions(parent=self, protect=settings.protect_stateful),
        )
        self.pull_grant = grant_acr_pull(
            f"{name}-kubelet-acrpull", kubelet_object_id=kubelet_object_id, registry_id=acr.id, parent=self
        )
        deployers = settings.cluster.deployers
        # least privilege: no push right where nothing is pushed
        self.push_grants = (
            roles.grant_deployers(
                name, "acrpush", role_guid=roles.ACR_PUSH, principals=deployers, scope=acr.id, parent=self
            )
            if push_repositories
            else []
        )
        # A promoting stack imports digests into this registry (ARM importImage on it).
        self.import_grants = (
            roles.grant_deployers(
                name,
                "importer",
                role_guid=roles.ACR_IMPORTER,
                principals=deployers,
                scope=acr.id,
                parent=self,
            )
            if imports
            else []
        )
        self.credentials = (
            push_credentials(acr.login_server, push_repositories, grants=self.push_grants, parent=self)
            if push_repositories
            else None
        )
        self.registry_id = acr.id
        self.login_server = acr.login_server
        self.register_outputs({"registryId": acr.id, "loginServer": acr.login_server})


class LocalRegistry(pulumi.ComponentResource):
    """An existing registry reachable from the local cluster; nothing is created."""

    registry_id: pulumi.Output[str]
    login_server: pulumi.Output[str]
    credentials: PushCredentials | None

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ml-delivery:infra:LocalRegistry", name, None, opts)
        server = settings.registry.server or "localhost:5001"
        self.registry_id = pulumi.Output.from_input(server)
        self.login_server = pulumi.Output.from_input(server)
        r = settings.registry
        self.credentials = (
            PushCredentials(r.username, pulumi.Output.secret(r.password))
            if r.username is not None and r.password is not None
            else None
        )
        self.register_outputs({"registryId": self.registry_id, "loginServer": self.login_server})
