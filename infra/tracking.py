"""The MLflow tracking server of a stack, with authentication on and no secret in plain sight.

Azure: PostgreSQL Flexible Server (private, in a delegated subnet; generated password) as the
backend and auth store; a Storage Account (no public blob access, TLS 1.2, no shared keys) with a
Blob container for artifacts, reached through workload identity (user-assigned identity + federated
credential for the ``mlflow`` ServiceAccount + Storage Blob Data Contributor on the container).
Local: SQLite and artifacts on a PersistentVolumeClaim.
Both: a hardened Deployment running ``mlflow server --app-name basic-auth`` whose credentials come
from a Kubernetes Secret built from Pulumi secrets, a Service and a NetworkPolicy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import podsecurity
from infra.image import require_digest_ref
from infra.network import subnet_prefixes
from infra.settings import ConfigError, Settings

NAMESPACE = "mlflow"
APP = "mlflow"
PORT = 5000
POSTGRES_PORT = 5432
HTTPS_PORT = 443
UID = 10001  # >= 10000, no clash with host accounts (checkov CKV_K8S_40); = the image USER
POSTGRES_ADMIN = "mlflowadmin"
CREDENTIALS_SECRET = "mlflow-credentials"
AUTH_CONFIG_DIR = "/etc/mlflow-auth"
AUTH_CONFIG_FILE = "basic_auth.ini"
LOCAL_DATA_DIR = "/mlflow"
IN_CLUSTER_HOST = f"{APP}.{NAMESPACE}.svc.cluster.local"
IN_CLUSTER_URL = f"http://{IN_CLUSTER_HOST}:{PORT}"


def secret(value: pulumi.Output[str]) -> pulumi.Output[str]:
    """``value`` marked secret (typed: mypy cannot infer Output.secret's type from an Output)."""
    return cast(pulumi.Output[str], pulumi.Output.secret(value))


def public_hostname(settings: Settings) -> str | None:
    """The LoadBalancer's Azure DNS name (known before the IP), or None when not exposed that way."""
    t = settings.tracking
    if settings.is_local or t.service_type != "LoadBalancer" or not t.dns_label:
        return None
    return f"{t.dns_label}.{settings.location}.cloudapp.azure.com"


def training_tracking_uri(settings: Settings) -> str:
    """How the deploying machine (where TrainedModel trains) reaches this stack's MLflow."""
    t = settings.tracking
    if t.tracking_uri:
        return t.tracking_uri.rstrip("/")
    host = public_hostname(settings)
    if host:
        return f"http://{host}:{PORT}"
    if settings.is_local and t.service_type == "NodePort":
        return f"http://127.0.0.1:{t.node_port}"
    raise ConfigError(
        f"Pulumi.{settings.stack}.yaml: config key '{settings.project}:trackingUri' is unset and "
        f"mlflowServiceType {t.service_type} gives this machine no route to MLflow. Set trackingUri "
        "(e.g. http://127.0.0.1:5000 with `kubectl -n mlflow port-forward svc/mlflow 5000`)."
    )


def allowed_hosts(settings: Settings) -> list[str]:
    """Host headers MLflow accepts (it binds 0.0.0.0, so it must be told; patterns allowed)."""
    hosts = [f"{IN_CLUSTER_HOST}:{PORT}", IN_CLUSTER_HOST, f"{APP}.{NAMESPACE}:{PORT}", f"{APP}:{PORT}"]
    hosts += ["localhost:*", "127.0.0.1:*"]
    public = public_hostname(settings)
    if public:
        hosts += [f"{public}:{PORT}", public]
    if settings.tracking.tracking_uri:
        hosts.append(settings.tracking.tracking_uri.split("://", 1)[1].split("/", 1)[0])
    hosts += list(settings.tracking.extra_allowed_hosts)
    return list(dict.fromkeys(hosts))


def auth_config_ini(database_uri: str) -> str:
    """MLflow basic-auth config; the admin user/password come from env (MLFLOW_AUTH_ADMIN_*)."""
    if "%" in database_uri:
        raise ValueError("the auth database URI must not contain '%' (configparser interpolation)")
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def server_args(settings: Settings, artifacts_destination: str) -> list[str]:
    """Arguments of `mlflow server` (the container command is `mlflow`)."""
    return [
        "server",
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--app-name", "basic-auth",
        "--allowed-hosts", ",".join(allowed_hosts(settings)),
        "--artifacts-destination", artifacts_destination,
        "--serve-artifacts",
        "--workers", "2",
    ]  # fmt: skip


@dataclass(frozen=True)
class _Stores:
    """Where MLflow keeps its data: secret URIs plus what the pod needs to reach them."""

    backend_uri: pulumi.Output[str]
    auth_db_uri: pulumi.Output[str]
    artifacts_destination: pulumi.Input[str]
    workload_identity_client_id: pulumi.Output[str] | None
    data_claim: pulumi.Resource | None


class TrackingServer(pulumi.ComponentResource):
    """MLflow server with its stores; exposes in-cluster and training URLs and the admin login."""

    url: pulumi.Output[str]
    training_uri: pulumi.Output[str]
    admin_username: pulumi.Output[str]
    admin_password: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        provider: k8s.Provider,
        image: pulumi.Input[str],
        resource_group_name: pulumi.Input[str] | None = None,
        vnet_id: pulumi.Input[str] | None = None,
        postgres_subnet_id: pulumi.Input[str] | None = None,
        oidc_issuer_url: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("ml-delivery:infra:TrackingServer", name, None, opts)
        self._name = name
        self._settings = settings
        child = pulumi.ResourceOptions(parent=self)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)

        # RandomPassword.result is a secret in the engine; Output.secret makes that explicit here.
        admin_password = secret(
            settings.tracking.admin_password
            or random.RandomPassword(f"{name}-admin-password", length=32, special=False, opts=child).result
        )
        flask_secret = secret(
            random.RandomPassword(f"{name}-flask-secret", length=48, special=False, opts=child).result
        )

        namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata={"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": settings.project}},
            opts=k8s_opts,
        )
        ns_opts = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[namespace])
        if settings.is_local:
            stores = self._local_stores(ns_opts)
        else:
            if (
                resource_group_name is None
                or vnet_id is None
                or postgres_subnet_id is None
                or oidc_issuer_url is None
            ):
                raise ValueError(
                    "TrackingServer on Azure needs the resource group, VNet, subnet and OIDC issuer"
                )
            stores = self._azure_stores(resource_group_name, vnet_id, postgres_subnet_id, oidc_issuer_url)

        sa_annotations = (
            {"azure.workload.identity/client-id": stores.workload_identity_client_id}
            if stores.workload_identity_client_id is not None
            else {}
        )
        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata={"name": APP, "namespace": NAMESPACE, "annotations": sa_annotations},
            automount_service_account_token=False,
            opts=ns_opts,
        )
        credentials = k8s.core.v1.Secret(
            f"{name}-credentials",
            metadata={"name": CREDENTIALS_SECRET, "namespace": NAMESPACE},
            type="Opaque",
            string_data={
                "admin-username": settings.tracking.admin_username,
                "admin-password": admin_password,
                "flask-secret-key": flask_secret,
                "backend-store-uri": stores.backend_uri,
                AUTH_CONFIG_FILE: stores.auth_db_uri.apply(auth_config_ini),
            },
            opts=ns_opts,
        )
        deployment = self._deployment(image, stores, account, credentials, ns_opts)
        service = self._service(ns_opts)
        self._network_policy(ns_opts)

        self.url = pulumi.Output.from_input(IN_CLUSTER_URL)
        # Only a training stack needs a route from this machine to MLflow.
        self.training_uri = pulumi.Output.from_input(
            "" if settings.promotes else training_tracking_uri(settings)
        )
        self.admin_username = pulumi.Output.from_input(settings.tracking.admin_username)
        self.admin_password = pulumi.Output.secret(admin_password)
        self.ready = pulumi.Output.all(deployment.id, service.id).apply(lambda _: True)
        self.register_outputs(
            {"url": self.url, "trainingUri": self.training_uri, "adminPassword": self.admin_password}
        )

    def _local_stores(self, ns_opts: pulumi.ResourceOptions) -> _Stores:
        claim = k8s.core.v1.PersistentVolumeClaim(
            f"{self._name}-data",
            metadata={"name": "mlflow-data", "namespace": NAMESPACE},
            spec={"access_modes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
            opts=ns_opts,
        )
        return _Stores(
            backend_uri=pulumi.Output.secret(f"sqlite:///{LOCAL_DATA_DIR}/mlflow.db"),
            auth_db_uri=pulumi.Output.secret(f"sqlite:///{LOCAL_DATA_DIR}/auth.db"),
            artifacts_destination=f"{LOCAL_DATA_DIR}/artifacts",
            workload_identity_client_id=None,
            data_claim=claim,
        )

    def _azure_stores(
        self,
        resource_group_name: pulumi.Input[str],
        vnet_id: pulumi.Input[str],
        postgres_subnet_id: pulumi.Input[str],
        oidc_issuer_url: pulumi.Input[str],
    ) -> _Stores:
        from pulumi_azure_native import dbforpostgresql, managedidentity, privatedns, storage

        from infra import roles

        name, s = self._name, self._settings
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(s.tags)
        db_password = random.RandomPassword(f"{name}-postgres-password", length=40, special=False, opts=child)
        zone = privatedns.PrivateZone(
            f"{name}-pg-dns",
            resource_group_name=resource_group_name,
            location="global",
            private_zone_name=f"{s.project}-{s.stack}.private.postgres.database.azure.com",
            tags=tags,
            opts=child,
        )
        link = privatedns.VirtualNetworkLink(
            f"{name}-pg-dns-link",
            resource_group_name=resource_group_name,
            private_zone_name=zone.name,
            location="global",
            virtual_network={"id": vnet_id},
            registration_enabled=False,
            opts=child,
        )
        server = dbforpostgresql.Server(
            f"{name}-pg",
            resource_group_name=resource_group_name,
            location=s.location,
            version=s.tracking.postgres_version,
            sku={"name": s.tracking.postgres_sku, "tier": s.tracking.postgres_tier},
            storage={"storage_size_gb": s.tracking.postgres_storage_gb},
            administrator_login=POSTGRES_ADMIN,
            administrator_login_password=secret(db_password.result),
            network={
                "public_network_access": "Disabled",
                "delegated_subnet_resource_id": postgres_subnet_id,
                "private_dns_zone_arm_resource_id": zone.id,
            },
            backup={"backup_retention_days": 7, "geo_redundant_backup": "Disabled"},
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[link]),
        )
        for db in ("mlflow", "mlflow_auth"):
            dbforpostgresql.Database(
                f"{name}-db-{db}",
                resource_group_name=resource_group_name,
                server_name=server.name,
                database_name=db,
                charset="UTF8",
                opts=child,
            )

        def pg_uri(database: str) -> pulumi.Output[str]:
            return pulumi.Output.secret(
                pulumi.Output.format(
                    "postgresql://{0}:{1}@{2}:5432/{3}?sslmode=require",
                    POSTGRES_ADMIN, db_password.result, server.fully_qualified_domain_name, database,
                )
            )  # fmt: skip

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
            tags=tags,
            opts=child,
        )
        container = storage.BlobContainer(
            f"{name}-artifacts",
            resource_group_name=resource_group_name,
            account_name=account.name,
            container_name="mlflow-artifacts",
            public_access=storage.PublicAccess.NONE,
            opts=child,
        )
        identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity",
            resource_group_name=resource_group_name,
            location=s.location,
            tags=tags,
            opts=child,
        )
        managedidentity.FederatedIdentityCredential(
            f"{name}-federated",
            resource_group_name=resource_group_name,
            resource_name_=identity.name,
            issuer=oidc_issuer_url,
            subject=f"system:serviceaccount:{NAMESPACE}:{APP}",
            audiences=["api://AzureADTokenExchange"],
            opts=child,
        )
        roles.grant(
            f"{name}-blob-contributor",
            role_guid=roles.STORAGE_BLOB_DATA_CONTRIBUTOR,
            principal_id=identity.principal_id,
            scope=container.id,
            parent=self,
        )
        return _Stores(
            backend_uri=pg_uri("mlflow"),
            auth_db_uri=pg_uri("mlflow_auth"),
            artifacts_destination=pulumi.Output.format(
                "wasbs://{0}@{1}.blob.core.windows.net/", container.name, account.name
            ),
            workload_identity_client_id=identity.client_id,
            data_claim=None,
        )

    def _deployment(
        self,
        image: pulumi.Input[str],
        stores: _Stores,
        account: k8s.core.v1.ServiceAccount,
        credentials: k8s.core.v1.Secret,
        ns_opts: pulumi.ResourceOptions,
    ) -> k8s.apps.v1.Deployment:
        s = self._settings
        labels = {"app": APP}
        pod_labels = dict(labels)
        if stores.workload_identity_client_id is not None:
            pod_labels["azure.workload.identity/use"] = "true"
        volumes, mounts = podsecurity.empty_dir_volumes(("/tmp",))
        volumes.append(
            {
                "name": "auth-config",
                "secret": {
                    "secret_name": CREDENTIALS_SECRET,
                    "items": [{"key": AUTH_CONFIG_FILE, "path": AUTH_CONFIG_FILE}],
                },
            }
        )
        mounts.append({"name": "auth-config", "mount_path": AUTH_CONFIG_DIR, "read_only": True})
        depends: list[pulumi.Resource] = [credentials]
        if stores.data_claim is not None:
            depends.append(stores.data_claim)
            volumes.append({"name": "data", "persistent_volume_claim": {"claim_name": "mlflow-data"}})
            mounts.append({"name": "data", "mount_path": LOCAL_DATA_DIR})
        env = [
            podsecurity.secret_env("MLFLOW_BACKEND_STORE_URI", CREDENTIALS_SECRET, "backend-store-uri"),
            podsecurity.secret_env("MLFLOW_AUTH_ADMIN_USERNAME", CREDENTIALS_SECRET, "admin-username"),
            podsecurity.secret_env("MLFLOW_AUTH_ADMIN_PASSWORD", CREDENTIALS_SECRET, "admin-password"),
            podsecurity.secret_env("MLFLOW_FLASK_SERVER_SECRET_KEY", CREDENTIALS_SECRET, "flask-secret-key"),
            {"name": "MLFLOW_AUTH_CONFIG_PATH", "value": f"{AUTH_CONFIG_DIR}/{AUTH_CONFIG_FILE}"},
            {"name": "HOME", "value": "/tmp"},
        ]
        probe = {"http_get": {"path": "/health", "port": PORT}}
        metadata: Any = {"name": APP, "namespace": NAMESPACE, "labels": labels}
        spec: Any = {
            "replicas": 1,
            # one writer: SQLite on an RWO volume locally; a single auth bootstrap on Azure
            "strategy": {"type": "Recreate"},
            "selector": {"match_labels": labels},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "service_account_name": account.metadata.apply(lambda m: m.name),
                    "automount_service_account_token": False,
                    "security_context": podsecurity.pod_security_context(UID, UID),
                    "containers": [
                        {
                            "name": APP,
                            "image": pulumi.Output.from_input(image).apply(
                                lambda ref: require_digest_ref(ref, "MLflow Deployment image")
                            ),
                            "image_pull_policy": "IfNotPresent",
                            "command": ["mlflow"],
                            "args": pulumi.Output.from_input(stores.artifacts_destination).apply(
                                lambda dest: server_args(s, dest)
                            ),
                            "ports": [{"name": "http", "container_port": PORT}],
                            "env": env,
                            "volume_mounts": mounts,
                            "security_context": podsecurity.container_security_context(),
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "512Mi"},
                                "limits": {"cpu": "1", "memory": "1Gi"},
                            },
                            "startup_probe": {**probe, "period_seconds": 5, "failure_threshold": 60},
                            "readiness_probe": {**probe, "period_seconds": 10},
                            "liveness_probe": {**probe, "period_seconds": 20, "failure_threshold": 3},
                        }
                    ],
                    "volumes": volumes,
                },
            },
        }
        return k8s.apps.v1.Deployment(
            f"{self._name}-deployment",
            metadata=metadata,
            spec=spec,
            opts=pulumi.ResourceOptions.merge(ns_opts, pulumi.ResourceOptions(depends_on=depends)),
        )

    def _service(self, ns_opts: pulumi.ResourceOptions) -> k8s.core.v1.Service:
        t = self._settings.tracking
        annotations: dict[str, str] = {}
        spec: Any = {
            "type": t.service_type,
            "selector": {"app": APP},
            "ports": [{"name": "http", "port": PORT, "target_port": PORT}],
        }
        if t.service_type == "LoadBalancer":
            spec["load_balancer_source_ranges"] = list(t.allowed_cidrs)
            spec["external_traffic_policy"] = "Local"
            if t.dns_label and not self._settings.is_local:
                annotations["service.beta.kubernetes.io/azure-dns-label-name"] = t.dns_label
        if t.service_type == "NodePort":
            spec["ports"][0]["node_port"] = t.node_port
        metadata: Any = {"name": APP, "namespace": NAMESPACE, "annotations": annotations}
        return k8s.core.v1.Service(
            f"{self._name}-service",
            metadata=metadata,
            spec=spec,
            opts=ns_opts,
        )

    def _network_policy(self, ns_opts: pulumi.ResourceOptions) -> None:
        spec: Any = network_policy_spec(self._settings)  # plain dicts for the SDK's TypedDicts
        k8s.networking.v1.NetworkPolicy(
            f"{self._name}-netpol",
            metadata={"name": APP, "namespace": NAMESPACE},
            spec=spec,
            opts=ns_opts,
        )


def _tcp(port: int) -> dict[str, Any]:
    return {"protocol": "TCP", "port": port}


def network_policy_spec(settings: Settings) -> dict[str, Any]:
    """Ingress and egress of the MLflow pod: only what the stack's exposure and stores need.

    Ingress: LoadBalancer -> only from ``mlflowAllowedCidrs`` (the Service keeps client IPs with
    externalTrafficPolicy Local); NodePort (local) -> any source, as kube-proxy SNATs node-port
    traffic to the node's address; ClusterIP -> nothing: ``kubectl port-forward`` enters the pod's
    network namespace through the kubelet, which network policies do not filter, and no workload
    in the cluster calls MLflow. Egress: DNS to kube-dns; on Azure also PostgreSQL in its subnet
    and HTTPS to anywhere, because Blob Storage and the Entra ID token endpoint are public Azure
    addresses that change and a NetworkPolicy cannot name hosts (narrow it with a Blob private
    endpoint and Cilium FQDN rules).
    """
    t = settings.tracking
    ingress: list[dict[str, Any]]
    if t.service_type == "LoadBalancer":
        ingress = [{"from": [{"ip_block": {"cidr": c}} for c in t.allowed_cidrs], "ports": [_tcp(PORT)]}]
    elif t.service_type == "NodePort":
        ingress = [{"ports": [_tcp(PORT)]}]
    else:
        ingress = []
    dns = {
        "to": [
            {
                "namespace_selector": {"match_labels": {"kubernetes.io/metadata.name": "kube-system"}},
                "pod_selector": {"match_labels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, _tcp(53)],
    }
    egress: list[dict[str, Any]] = [dns]
    if not settings.is_local:
        postgres_subnet = subnet_prefixes(settings.cluster.vnet_cidr)[1]
        egress.append({"to": [{"ip_block": {"cidr": postgres_subnet}}], "ports": [_tcp(POSTGRES_PORT)]})
        egress.append({"to": [{"ip_block": {"cidr": "0.0.0.0/0"}}], "ports": [_tcp(HTTPS_PORT)]})
    return {
        "pod_selector": {"match_labels": {"app": APP}},
        "policy_types": ["Ingress", "Egress"],
        "ingress": ingress,
        "egress": egress,
    }
