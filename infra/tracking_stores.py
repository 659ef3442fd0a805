"""The Azure stores of dev's MLflow (the registry of record): PostgreSQL, Blob Storage and the identity.

* PostgreSQL Flexible Server, private in its delegated subnet (private DNS zone linked to the VNet),
  backups kept ``postgresBackupRetentionDays``; the databases ``mlflow`` and ``mlflow_auth``. MLflow
  connects as its own login role (``APP_ROLE``, created in-cluster by infra/mlflow_prepare.py);
  the generated admin password reaches only that init step.
* A Storage Account with public network access off, no shared keys and no public blobs, reached
  through a private endpoint in the node subnet (zone ``privatelink.blob.core.windows.net``
  linked to the VNet); blob and container soft delete plus versioning, so a deleted or
  overwritten artifact can be restored for ``blobSoftDeleteDays``. MLflow serves artifacts itself
  (``--artifacts-destination``): clients, the deploying machine included, never need Blob access.
* A user-assigned identity with a federated credential for the ``mlflow`` ServiceAccount and
  Storage Blob Data Contributor on the container (workload identity, no key).

With ``protectStatefulResources`` (default on in every Azure stack) the server and the account are
``protect``-ed: ``pulumi destroy`` stops before deleting them (or the resource group holding them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pulumi
import pulumi_random as random

from infra.settings import Settings

POSTGRES_ADMIN = "mlflowadmin"
APP_ROLE = "mlflow_app"
DATABASES = ("mlflow", "mlflow_auth")
ARTIFACT_CONTAINER = "mlflow-artifacts"
BLOB_PRIVATE_ZONE = "privatelink.blob.core.windows.net"


def secret(value: pulumi.Input[str]) -> pulumi.Output[str]:
    """``value`` marked secret (typed: mypy cannot infer Output.secret's type from an Output)."""
    return cast(pulumi.Output[str], pulumi.Output.secret(value))


@dataclass(frozen=True)
class IdentityBinding:
    """Which ServiceAccount the federated credential trusts."""

    namespace: str
    service_account: str

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


class AzureTrackingStores(pulumi.ComponentResource):
    """PostgreSQL + Blob Storage + workload identity for one MLflow server."""

    postgres_host: pulumi.Output[str]
    admin_password: pulumi.Output[str]
    app_password: pulumi.Output[str]
    container_url: pulumi.Output[str]
    artifacts_destination: pulumi.Output[str]
    client_id: pulumi.Output[str]
    ready: list[pulumi.Resource]  # what MLflow's first artifact write waits for (grants, DNS, endpoint)

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        resource_group_name: pulumi.Input[str],
        vnet_id: pulumi.Input[str],
        postgres_subnet_id: pulumi.Input[str],
        endpoint_subnet_id: pulumi.Input[str],
        oidc_issuer_url: pulumi.Input[str],
        binding: IdentityBinding,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("ml-delivery:infra:AzureTrackingStores", name, None, opts)
        from pulumi_azure_native import dbforpostgresql, managedidentity, network, privatedns, storage

        from infra import roles

        s, t = settings, settings.tracking
        child = pulumi.ResourceOptions(parent=self)
        stateful = pulumi.ResourceOptions(parent=self, protect=s.protect_stateful)
        tags = dict(s.tags)

        def private_zone(
            key: str, zone_name: str
        ) -> tuple[privatedns.PrivateZone, privatedns.VirtualNetworkLink]:
            zone = privatedns.PrivateZone(
                f"{name}-{key}-dns",
                resource_group_name=resource_group_name,
                location="global",
                private_zone_name=zone_name,
                tags=tags,
                opts=child,
            )
            link = privatedns.VirtualNetworkLink(
                f"{name}-{key}-dns-link",
                resource_group_name=resource_group_name,
                private_zone_name=zone.name,
                location="global",
                virtual_network={"id": vnet_id},
                registration_enabled=False,
                opts=child,
            )
            return zone, link

        admin_password = random.RandomPassword(
            f"{name}-postgres-password", length=40, special=False, opts=child
        )
        app_password = random.RandomPassword(f"{name}-app-password", length=40, special=False, opts=child)
        pg_zone, pg_link = private_zone("pg", f"{s.project}-{s.stack}.private.postgres.database.azure.com")
        server = dbforpostgresql.Server(
            f"{name}-pg",
            resource_group_name=resource_group_name,
            location=s.location,
            version=t.postgres_version,
            sku={"name": t.postgres_sku, "tier": t.postgres_tier},
            storage={"storage_size_gb": t.postgres_storage_gb},
            administrator_login=POSTGRES_ADMIN,
            administrator_login_password=secret(admin_password.result),
            network={
                "public_network_access": "Disabled",
                "delegated_subnet_resource_id": postgres_subnet_id,
                "private_dns_zone_arm_resource_id": pg_zone.id,
            },
            backup={
                "backup_retention_days": t.postgres_backup_retention_days,
                "geo_redundant_backup": "Disabled",
            },
            tags=tags,
            opts=pulumi.ResourceOptions.merge(stateful, pulumi.ResourceOptions(depends_on=[pg_link])),
        )
        databases = [
            dbforpostgresql.Database(
                f"{name}-db-{db}",
                resource_group_name=resource_group_name,
                server_name=server.name,
                database_name=db,
                charset="UTF8",
                # protected too: `destroy --exclude-protected` or `--skip-preview` deletes unprotected
                # dependents of a protected server before reaching it
                opts=stateful,
            )
            for db in DATABASES
        ]

        account = storage.StorageAccount(
            "mlflowart",  # alphanumeric only; Pulumi adds a random suffix
            resource_group_name=resource_group_name,
            location=s.location,
            kind="StorageV2",
            sku={"name": "Standard_LRS"},
            allow_blob_public_access=False,
            allow_shared_key_access=False,
            enable_https_traffic_only=True,
            minimum_tls_version="TLS1_2",
            public_network_access="Disabled",  # reached only through the private endpoint below
            tags=tags,
            opts=stateful,
        )
        retention: Any = {"enabled": True, "days": t.blob_soft_delete_days}
        blob_service = storage.BlobServiceProperties(
            f"{name}-blob-service",
            resource_group_name=resource_group_name,
            account_name=account.name,
            blob_services_name="default",
            delete_retention_policy=retention,
            container_delete_retention_policy=retention,
            is_versioning_enabled=True,
            opts=child,
        )
        container = storage.BlobContainer(
            f"{name}-artifacts",
            resource_group_name=resource_group_name,
            account_name=account.name,
            container_name=ARTIFACT_CONTAINER,
            public_access=storage.PublicAccess.NONE,
            opts=pulumi.ResourceOptions.merge(stateful, pulumi.ResourceOptions(depends_on=[blob_service])),
        )
        blob_zone, blob_link = private_zone("blob", BLOB_PRIVATE_ZONE)
        endpoint = network.PrivateEndpoint(
            f"{name}-blob-endpoint",
            resource_group_name=resource_group_name,
            location=s.location,
            subnet={"id": endpoint_subnet_id},
            private_link_service_connections=[
                {"name": "blob", "private_link_service_id": account.id, "group_ids": ["blob"]}
            ],
            tags=tags,
            opts=child,
        )
        zone_group = network.PrivateDnsZoneGroup(
            f"{name}-blob-endpoint-dns",
            resource_group_name=resource_group_name,
            private_endpoint_name=endpoint.name,
            private_dns_zone_group_name="default",
            private_dns_zone_configs=[{"name": "blob", "private_dns_zone_id": blob_zone.id}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[blob_link]),
        )

        identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity",
            resource_group_name=resource_group_name,
            location=s.location,
            tags=tags,
            opts=child,
        )
        federated = managedidentity.FederatedIdentityCredential(
            f"{name}-federated",
            resource_group_name=resource_group_name,
            resource_name_=identity.name,
            issuer=oidc_issuer_url,
            subject=binding.subject,
            audiences=["api://AzureADTokenExchange"],
            opts=child,
        )
        grant = roles.grant(
            f"{name}-blob-contributor",
            role_guid=roles.STORAGE_BLOB_DATA_CONTRIBUTOR,
            principal_id=identity.principal_id,
            scope=container.id,
            parent=self,
        )

        self.postgres_host = server.fully_qualified_domain_name
        self.admin_password = secret(admin_password.result)
        self.app_password = secret(app_password.result)
        self.container_url = pulumi.Output.format(
            "https://{0}.blob.core.windows.net/{1}", account.name, container.name
        )
        self.artifacts_destination = pulumi.Output.format(
            "wasbs://{0}@{1}.blob.core.windows.net/", container.name, account.name
        )
        self.client_id = identity.client_id
        self.ready = [*databases, federated, grant, zone_group]
        self.register_outputs({"postgresHost": self.postgres_host, "containerUrl": self.container_url})

    def database_uri(self, database: str) -> pulumi.Output[str]:
        """``postgresql://`` URI of one of MLflow's databases as the app role (a secret)."""
        return secret(
            pulumi.Output.format(
                "postgresql://{0}:{1}@{2}:5432/{3}?sslmode=require",
                APP_ROLE, self.app_password, self.postgres_host, database,
            )
        )  # fmt: skip
