"""The MLflow tracking server's Kubernetes workload, with authentication on and no secret in plain sight.

One MLflow exists: dev's, the registry of record (staging and prod build none). Its stores are in
infra/tracking_stores.py on Azure; locally SQLite and artifacts on a PersistentVolumeClaim. Here: a
hardened Deployment running ``mlflow server --app-name basic-auth`` (credentials from a Kubernetes
Secret built from Pulumi secrets), its Service, its NetworkPolicy, and on Azure two init containers
(infra/mlflow_prepare.py): the database role MLflow logs in as (the only place the PostgreSQL admin
secret is mounted) and a bounded wait until the workload identity can reach the artifact container.

Exposure: on Azure the Service is ClusterIP, never public. The deploying machine and people reach it
through ``kubectl port-forward`` over the AKS API server (infra/tunnel.py, ``make mlflow-ui``),
authorized by their Entra identity and AKS RBAC. Locally a NodePort on the laptop cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import podsecurity
from infra.image import require_digest_ref
from infra.network import subnet_prefixes
from infra.settings import ConfigError, Settings
from infra.tracking_stores import (
    APP_ROLE,
    DATABASES,
    POSTGRES_ADMIN,
    AzureTrackingStores,
    IdentityBinding,
    secret,
)
from infra.tunnel import ServiceAddress

NAMESPACE = "mlflow"
APP = "mlflow"
PORT = 5000
POSTGRES_PORT = 5432
HTTPS_PORT = 443
UID = 10001  # >= 10000, no clash with host accounts (checkov CKV_K8S_40); = the image USER
CREDENTIALS_SECRET = "mlflow-credentials"
DB_ADMIN_SECRET = "mlflow-db-admin"  # mounted by the db-role init container only
PREPARE_CONFIG = "mlflow-prepare"
PREPARE_DIR = "/opt/mlflow-prepare"
PREPARE_SCRIPT = Path(__file__).with_name("mlflow_prepare.py")
ROLLOUT_TIMEOUT = "20m"  # the wait-blob init step tolerates up to 15 min of identity/role propagation
AUTH_CONFIG_DIR = "/etc/mlflow-auth"
AUTH_CONFIG_FILE = "basic_auth.ini"
LOCAL_DATA_DIR = "/mlflow"
IN_CLUSTER_HOST = f"{APP}.{NAMESPACE}.svc.cluster.local"
IN_CLUSTER_URL = f"http://{IN_CLUSTER_HOST}:{PORT}"
SERVICE = ServiceAddress(NAMESPACE, APP, PORT)


def training_route(settings: Settings) -> tuple[str, str]:
    """(tracking URI, Service to tunnel to) by which the deploying machine reaches this stack's MLflow.

    Azure: no URI, the tunnel to ``mlflow/mlflow:5000`` (infra/tunnel.py). Local: the node port on
    127.0.0.1 (or ``trackingUri``), no tunnel.
    """
    t = settings.tracking
    if not settings.is_local:
        return "", str(SERVICE)
    if t.tracking_uri:
        return t.tracking_uri.rstrip("/"), ""
    if t.service_type == "NodePort":
        return f"http://127.0.0.1:{t.node_port}", ""
    raise ConfigError(
        f"Pulumi.{settings.stack}.yaml: config key '{settings.project}:trackingUri' is unset and "
        f"mlflowServiceType {t.service_type} gives the machine running `pulumi up` no route to MLflow. "
        "Set trackingUri (e.g. http://127.0.0.1:5000 with `kubectl -n mlflow port-forward svc/mlflow 5000`)."
    )


def allowed_hosts(settings: Settings) -> list[str]:
    """Host headers MLflow accepts (it binds 0.0.0.0, so it must be told; patterns allowed).

    The tunnel and ``make mlflow-ui`` arrive as 127.0.0.1:<local port>.
    """
    hosts = [f"{IN_CLUSTER_HOST}:{PORT}", IN_CLUSTER_HOST, f"{APP}.{NAMESPACE}:{PORT}", f"{APP}:{PORT}"]
    hosts += ["localhost:*", "127.0.0.1:*"]
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
    data_claim: pulumi.Resource | None = None
    azure: AzureTrackingStores | None = None


class TrackingServer(pulumi.ComponentResource):
    """MLflow with its stores; exposes the in-cluster URL, the Service, the training route, the login."""

    url: pulumi.Output[str]
    service: pulumi.Output[str]
    training_uri: pulumi.Output[str]
    training_service: pulumi.Output[str]
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
        endpoint_subnet_id: pulumi.Input[str] | None = None,
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
            given = (resource_group_name, vnet_id, postgres_subnet_id, endpoint_subnet_id, oidc_issuer_url)
            if any(value is None for value in given):
                raise ValueError(
                    "TrackingServer on Azure needs the resource group, VNet, PostgreSQL and endpoint "
                    "subnets and the OIDC issuer"
                )
            azure = AzureTrackingStores(
                name,
                settings,
                resource_group_name=cast(pulumi.Input[str], resource_group_name),
                vnet_id=cast(pulumi.Input[str], vnet_id),
                postgres_subnet_id=cast(pulumi.Input[str], postgres_subnet_id),
                endpoint_subnet_id=cast(pulumi.Input[str], endpoint_subnet_id),
                oidc_issuer_url=cast(pulumi.Input[str], oidc_issuer_url),
                binding=IdentityBinding(NAMESPACE, APP),
                opts=child,
            )
            stores = _Stores(
                backend_uri=azure.database_uri(DATABASES[0]),
                auth_db_uri=azure.database_uri(DATABASES[1]),
                artifacts_destination=azure.artifacts_destination,
                azure=azure,
            )

        sa_annotations = (
            {"azure.workload.identity/client-id": stores.azure.client_id} if stores.azure is not None else {}
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
        depends: list[pulumi.Resource] = [credentials]
        if stores.azure is not None:
            depends += self._prepare_objects(stores.azure, ns_opts)
        deployment = self._deployment(image, stores, account, depends, ns_opts)
        service = self._service(ns_opts)
        self._network_policy(ns_opts)

        self.url = pulumi.Output.from_input(IN_CLUSTER_URL)
        self.service = pulumi.Output.from_input(str(SERVICE))
        # Only a training stack needs a route from the machine running `pulumi up` to MLflow.
        uri, tunnel_to = ("", "") if settings.promotes else training_route(settings)
        self.training_uri = pulumi.Output.from_input(uri)
        self.training_service = pulumi.Output.from_input(tunnel_to)
        self.admin_username = pulumi.Output.from_input(settings.tracking.admin_username)
        self.admin_password = pulumi.Output.secret(admin_password)
        self.ready = pulumi.Output.all(deployment.id, service.id).apply(lambda _: True)
        self.register_outputs(
            {"url": self.url, "service": self.service, "adminPassword": self.admin_password}
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
            data_claim=claim,
        )

    def _prepare_objects(
        self, azure: AzureTrackingStores, ns_opts: pulumi.ResourceOptions
    ) -> list[pulumi.Resource]:
        """The init steps' script and the PostgreSQL admin Secret (mounted by the db-role step only)."""
        script = k8s.core.v1.ConfigMap(
            f"{self._name}-prepare",
            metadata={"name": PREPARE_CONFIG, "namespace": NAMESPACE},
            data={PREPARE_SCRIPT.name: PREPARE_SCRIPT.read_text()},
            opts=ns_opts,
        )
        admin = k8s.core.v1.Secret(
            f"{self._name}-db-admin",
            metadata={"name": DB_ADMIN_SECRET, "namespace": NAMESPACE},
            type="Opaque",
            string_data={
                "admin-user": POSTGRES_ADMIN,
                "admin-password": azure.admin_password,
                "app-password": azure.app_password,
            },
            opts=ns_opts,
        )
        # The pod must not start before its grants exist: the first artifact write needs them.
        return [script, admin, *azure.ready]

    def _init_containers(
        self, image: pulumi.Output[str], azure: AzureTrackingStores, tmp_mount: dict[str, Any]
    ) -> list[Any]:
        """db-role (admin secret), then wait-blob (workload identity), both from the MLflow image.

        ``tmp_mount`` is the server container's own /tmp emptyDir mount (read-only root filesystem).
        """
        base = {
            "image": image,
            "image_pull_policy": "IfNotPresent",
            "command": ["python", f"{PREPARE_DIR}/{PREPARE_SCRIPT.name}"],
            "security_context": podsecurity.container_security_context(),
            "resources": {
                "requests": {"cpu": "50m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "volume_mounts": [
                {"name": "prepare", "mount_path": PREPARE_DIR, "read_only": True},
                tmp_mount,
            ],
        }
        return [
            {
                **base,
                "name": "db-role",
                "args": ["db-role"],
                "env": [
                    {"name": "PGHOST", "value": azure.postgres_host},
                    podsecurity.secret_env("PGADMIN_USER", DB_ADMIN_SECRET, "admin-user"),
                    podsecurity.secret_env("PGADMIN_PASSWORD", DB_ADMIN_SECRET, "admin-password"),
                    podsecurity.secret_env("PREPARE_ROLE_PASSWORD", DB_ADMIN_SECRET, "app-password"),
                    {"name": "PREPARE_ROLE", "value": APP_ROLE},
                    {"name": "PREPARE_DATABASES", "value": ",".join(DATABASES)},
                    {"name": "HOME", "value": "/tmp"},
                ],
            },
            {
                **base,
                "name": "wait-blob",
                "args": ["wait-blob"],
                "env": [
                    {"name": "PREPARE_CONTAINER_URL", "value": azure.container_url},
                    {"name": "PREPARE_TIMEOUT_SECONDS", "value": "900"},
                    {"name": "HOME", "value": "/tmp"},
                ],
            },
        ]

    def _deployment(
        self,
        image: pulumi.Input[str],
        stores: _Stores,
        account: k8s.core.v1.ServiceAccount,
        depends: list[pulumi.Resource],
        ns_opts: pulumi.ResourceOptions,
    ) -> k8s.apps.v1.Deployment:
        s = self._settings
        labels = {"app": APP}
        pod_labels = dict(labels)
        if stores.azure is not None:
            pod_labels["azure.workload.identity/use"] = "true"
        volumes, mounts = podsecurity.empty_dir_volumes(("/tmp",))
        [tmp_mount] = mounts
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
        if stores.data_claim is not None:
            depends = [*depends, stores.data_claim]
            volumes.append({"name": "data", "persistent_volume_claim": {"claim_name": "mlflow-data"}})
            mounts.append({"name": "data", "mount_path": LOCAL_DATA_DIR})
        pinned = pulumi.Output.from_input(image).apply(
            lambda ref: require_digest_ref(ref, "MLflow Deployment image")
        )
        init_containers: list[Any] = []
        if stores.azure is not None:
            volumes.append({"name": "prepare", "config_map": {"name": PREPARE_CONFIG}})
            init_containers = self._init_containers(pinned, stores.azure, tmp_mount)
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
        pod_spec: Any = {
            "service_account_name": account.metadata.apply(lambda m: m.name),
            # workload identity projects its own token; the Kubernetes API token is not needed
            "automount_service_account_token": False,
            "security_context": podsecurity.pod_security_context(UID, UID),
            "containers": [
                {
                    "name": APP,
                    "image": pinned,
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
        }
        template_metadata: Any = {"labels": pod_labels}
        if init_containers:
            pod_spec["init_containers"] = init_containers
            # The webhook projects the identity token into every container; the db-role step needs none.
            template_metadata["annotations"] = {"azure.workload.identity/skip-containers": "db-role"}
        spec: Any = {
            "replicas": 1,
            # one writer: SQLite on an RWO volume locally; a single auth bootstrap on Azure
            "strategy": {"type": "Recreate"},
            # the init steps may wait minutes for grants to propagate: report no stall before the
            # rollout's own timeout (ROLLOUT_TIMEOUT)
            "progress_deadline_seconds": 1200,
            "selector": {"match_labels": labels},
            "template": {"metadata": template_metadata, "spec": pod_spec},
        }
        return k8s.apps.v1.Deployment(
            f"{self._name}-deployment",
            metadata=metadata,
            spec=spec,
            opts=pulumi.ResourceOptions.merge(
                ns_opts,
                pulumi.ResourceOptions(
                    depends_on=depends,
                    custom_timeouts=pulumi.CustomTimeouts(create=ROLLOUT_TIMEOUT, update=ROLLOUT_TIMEOUT),
                ),
            ),
        )

    def _service(self, ns_opts: pulumi.ResourceOptions) -> k8s.core.v1.Service:
        t = self._settings.tracking
        if not self._settings.is_local and t.service_type != "ClusterIP":
            raise ConfigError(
                f"MLflow on Azure is ClusterIP only, not {t.service_type}"
            )  # settings refuse it first
        spec: Any = {
            "type": t.service_type,
            "selector": {"app": APP},
            "ports": [{"name": "http", "port": PORT, "target_port": PORT}],
        }
        if t.service_type == "NodePort":
            spec["ports"][0]["node_port"] = t.node_port
        return k8s.core.v1.Service(
            f"{self._name}-service",
            metadata={"name": APP, "namespace": NAMESPACE},
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

    Ingress: NodePort (local) -> any source, as kube-proxy SNATs node-port traffic to the node's
    address; ClusterIP (every Azure stack) -> nothing: ``kubectl port-forward`` enters the pod's
    network namespace through the kubelet, which network policies do not filter, and no workload in
    the cluster calls MLflow. Egress: DNS to kube-dns; on Azure also PostgreSQL in its subnet, and
    HTTPS to anywhere for the Entra ID token endpoint (a public address that changes; a
    NetworkPolicy cannot name hosts). Blob Storage is a private endpoint in the node subnet.
    """
    t = settings.tracking
    ingress: list[dict[str, Any]] = [{"ports": [_tcp(PORT)]}] if t.service_type == "NodePort" else []
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
