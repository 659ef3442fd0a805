"""The Kubernetes cluster the stack deploys to, and the Kubernetes provider that talks to it.

``AksCluster``: resource group + VNet + AKS (SKU tier and availability zones from config, system
pool tainted CriticalAddonsOnly inside the cluster, the autoscaling user pool as its own
``AgentPool`` so pool changes never update the cluster (named from a hash of its immutable settings:
a change of VM size or zones replaces it create-before-delete under a new name, the old pool
draining only once the new one runs), SystemAssigned identity, OIDC issuer +
workload identity, the managed Prometheus addon (its data collection: infra/monitoring.py), Azure
CNI overlay with Cilium network policy, managed Entra ID with Azure RBAC, local accounts disabled,
auto-upgrade inside a weekly ``maintenanceWindow``, optional API server authorized ranges or private
cluster). The deployers from config (``deployerPrincipals``) get Azure
Kubernetes Service RBAC Cluster Admin; the kubeconfig (a secret, exec format) uses kubelogin
(``kubeloginMode`` picks a non-interactive login for CI); the Kubernetes provider depends on the
grants and on ``ClusterAccess``, which waits until the API server allows the deployer and the user
pool (the only pool workloads can schedule on) exists. The maintenance configurations are written
after the user pool, one at a time: AKS refuses an operation while another runs on the cluster.
The cluster ignores ``agentPoolProfiles`` after creation (ARM lists the separate user pool there
too); changing the system pool means adding a new system AgentPool and removing the old one.
``LocalCluster``: an existing kubeconfig context (kind, minikube, Docker Desktop); no Azure at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml
from pulumi_azure_native import containerservice, resources

from infra import roles
from infra.cluster_access import ClusterAccess
from infra.network import AKS_DNS_SERVICE_IP, AKS_POD_CIDR, AKS_SERVICE_CIDR, Network
from infra.settings import ClusterSettings, MaintenanceWindow, Settings

SYSTEM_POOL_TAINT = "CriticalAddonsOnly=true:NoSchedule"
USER_POOL_PREFIX = "user"
# AKS pool names: lowercase letters and digits, starting with a letter, at most 12 for Linux.
POOL_NAME_MAX = 12
# AKS reads these two names only: cluster auto-upgrades and node OS upgrades.
MAINTENANCE_CONFIGS = ("aksManagedAutoUpgradeSchedule", "aksManagedNodeOSUpgradeSchedule")
# kubelogin flags that identify the app/tenant; only the interactive modes need the client id.
_KEEP_FLAGS = ("--server-id", "--environment", "--tenant-id")


def rewrite_kubeconfig(kubeconfig: str, login_mode: str) -> str:
    """Set every kubelogin exec user of an AKS kubeconfig to ``kubelogin get-token --login <mode>``.

    AKS hands out kubeconfigs with ``--login devicecode``, which waits for a person; ``azurecli``
    (after ``az login``), ``workloadidentity`` (CI with OIDC), ``spn`` and ``msi`` do not.
    """
    doc = yaml.safe_load(kubeconfig)
    if not isinstance(doc, dict):
        raise ValueError("the cluster's kubeconfig is not a YAML mapping")
    for entry in doc.get("users") or []:
        exec_ = (entry.get("user") or {}).get("exec")
        if not exec_ or not str(exec_.get("command", "")).endswith("kubelogin"):
            continue
        args: list[str] = list(exec_.get("args") or [])
        flags = dict(zip(args[1::2], args[2::2], strict=False)) if args[:1] == ["get-token"] else {}
        keep = (*_KEEP_FLAGS, "--client-id") if login_mode in ("devicecode", "interactive") else _KEEP_FLAGS
        new_args = ["get-token", "--login", login_mode]
        for flag in keep:
            if flag in flags:
                new_args += [flag, flags[flag]]
        exec_["args"] = new_args
    return yaml.safe_dump(doc, sort_keys=False)


def user_pool_name(vm_size: str, zones: Sequence[str] | None, os_type: str) -> str:
    """``user`` + 4 hex of the settings AKS cannot change in place (VM size, zones, OS).

    azure-native replaces an AgentPool when these change; a new name lets the replacement be
    created before the old pool is deleted (the same name would be the same ARM id). The hash
    covers the values exactly as sent, so any change the provider sees gives a new name.
    """
    settings = json.dumps([os_type, vm_size, list(zones) if zones else None])
    return USER_POOL_PREFIX + hashlib.sha256(settings.encode()).hexdigest()[:4]


def maintenance_window(window: MaintenanceWindow) -> dict[str, Any]:
    """A weekly MaintenanceWindow (containerservice 2025-09-01 schema)."""
    return {
        "schedule": {"weekly": {"day_of_week": window.day_of_week, "interval_weeks": 1}},
        "duration_hours": window.duration_hours,
        "start_time": window.start_time,
        "utc_offset": window.utc_offset,
    }


def api_server_access(cfg: ClusterSettings) -> dict[str, Any] | None:
    """Private cluster, or public with authorized ranges, or None (public, Entra-authenticated)."""
    if cfg.private_cluster:
        return {"enable_private_cluster": True}
    if cfg.api_authorized_ranges:
        return {"authorized_ip_ranges": list(cfg.api_authorized_ranges)}
    return None


def decode_user_kubeconfig(result: Any, login_mode: str) -> str:
    """The first kubeconfig of a listManagedClusterUserCredentials result, decoded and rewritten."""
    kubeconfigs = result.kubeconfigs or []
    if not kubeconfigs:
        raise ValueError("AKS returned no user kubeconfig (listManagedClusterUserCredentials was empty)")
    return rewrite_kubeconfig(base64.b64decode(kubeconfigs[0].value).decode(), login_mode)


class AksCluster(pulumi.ComponentResource):
    """Resource group, network and AKS cluster, plus a Kubernetes provider for it."""

    resource_group_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    oidc_issuer_url: pulumi.Output[str]
    kubelet_object_id: pulumi.Output[str]
    cluster_id: pulumi.Output[str]
    cluster_name: pulumi.Output[str]
    network: Network
    admin_grants: list[pulumi.CustomResource]
    user_pool: containerservice.AgentPool
    access: ClusterAccess

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ml-delivery:infra:AksCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg = settings.cluster
        tags = dict(settings.tags)
        group = resources.ResourceGroup(f"{name}-rg", location=settings.location, tags=tags, opts=child)
        self.network = Network(
            f"{name}-net",
            resource_group_name=group.name,
            location=settings.location,
            vnet_cidr=cfg.vnet_cidr,
            tags=tags,
            opts=child,
        )
        pool_common: Any = {
            "os_type": "Linux",
            "type": "VirtualMachineScaleSets",
            "vnet_subnet_id": self.network.node_subnet_id,
            "orchestrator_version": cfg.kubernetes_version,
            "availability_zones": list(cfg.availability_zones) or None,
        }
        aad_profile: Any = {
            "managed": True,
            "enable_azure_rbac": True,
            "admin_group_object_ids": list(cfg.admin_group_object_ids) or None,
        }
        system_pool: Any = {
            **pool_common,
            "name": "system",
            "mode": "System",
            "vm_size": cfg.system_vm_size,
            "count": cfg.system_node_count,
            "node_taints": [SYSTEM_POOL_TAINT],
        }
        aks = containerservice.ManagedCluster(  # type: ignore[call-overload]  # plain dicts for TypedDict args
            f"{name}-aks",
            resource_group_name=group.name,
            location=settings.location,
            dns_prefix=f"{settings.project}-{settings.stack}",
            kubernetes_version=cfg.kubernetes_version,  # None: AKS picks its default version
            sku={"name": "Base", "tier": cfg.tier},
            identity={"type": "SystemAssigned"},
            agent_pool_profiles=[system_pool],
            api_server_access_profile=api_server_access(cfg),
            network_profile={
                "network_plugin": "azure",
                "network_plugin_mode": "overlay",
                "network_dataplane": "cilium",
                "network_policy": "cilium",
                "pod_cidr": AKS_POD_CIDR,
                "service_cidr": AKS_SERVICE_CIDR,
                "dns_service_ip": AKS_DNS_SERVICE_IP,
                "load_balancer_sku": "standard",
            },
            oidc_issuer_profile={"enabled": True},
            security_profile={"workload_identity": {"enabled": True}},
            # Managed Prometheus addon (ama-metrics); where it sends is infra/monitoring.py's DCR association.
            azure_monitor_profile={"metrics": {"enabled": True}},
            aad_profile=aad_profile,
            enable_rbac=True,
            disable_local_accounts=True,
            auto_upgrade_profile={
                "upgrade_channel": cfg.upgrade_channel,
                "node_os_upgrade_channel": cfg.node_os_upgrade_channel,
            },
            tags=tags,
            opts=pulumi.ResourceOptions(
                parent=self,
                # The user pool is its own AgentPool below (its changes never touch the cluster), and
                # ARM lists it in agentPoolProfiles too: the cluster must not try to remove it.
                ignore_changes=["agentPoolProfiles"],
            ),
        )
        user_pool = containerservice.AgentPool(
            f"{name}-user-pool",
            resource_group_name=group.name,
            resource_name_=aks.name,
            agent_pool_name=user_pool_name(
                cfg.user_vm_size, pool_common["availability_zones"], pool_common["os_type"]
            ),
            **{k: v for k, v in pool_common.items() if v is not None},
            mode="User",
            vm_size=cfg.user_vm_size,
            enable_auto_scaling=True,
            min_count=cfg.user_min_count,
            max_count=cfg.user_max_count,
            count=max(cfg.user_min_count, 1),
            # the autoscaler owns the node count after creation
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["count"]),
        )
        # One operation at a time on the cluster: after the user pool, then one after the other.
        previous: pulumi.Resource = user_pool
        for config_name in MAINTENANCE_CONFIGS:
            previous = containerservice.MaintenanceConfiguration(  # type: ignore[call-overload]
                f"{name}-{config_name}",
                resource_group_name=group.name,
                resource_name_=aks.name,
                config_name=config_name,
                maintenance_window=maintenance_window(cfg.maintenance),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous]),
            )
        # The cluster's identity manages load balancers and routes in the BYO node subnet.
        roles.grant(
            f"{name}-subnet-network-contributor",
            role_guid=roles.NETWORK_CONTRIBUTOR,
            principal_id=aks.identity.apply(lambda i: i.principal_id if i else ""),
            scope=self.network.node_subnet_id,
            parent=self,
        )
        # Local accounts are off: the deployers from config (never whoever runs preview) administer it.
        admin_grants = list(
            roles.grant_deployers(
                name,
                "cluster-admin",
                role_guid=roles.AKS_RBAC_CLUSTER_ADMIN,
                principals=cfg.deployers,
                scope=aks.id,
                parent=self,
            )
        )
        credentials = containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=group.name,
            resource_name=aks.name,
            format="exec",  # kubelogin exec plugin (the legacy 'azure' auth-provider is gone from kubectl)
            opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[aks]),
        )
        mode = cfg.kubelogin_mode
        self.kubeconfig = pulumi.Output.secret(credentials.apply(lambda r: decode_user_kubeconfig(r, mode)))
        access = ClusterAccess(
            f"{name}-access",
            kubeconfig=self.kubeconfig,
            grant_ids=[grant.id for grant in admin_grants],
            # the system pool is tainted CriticalAddonsOnly: workloads wait for the user pool's nodes
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*admin_grants, user_pool]),
        )
        self.admin_grants = admin_grants
        self.user_pool = user_pool
        self.access = access
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*admin_grants, access]),
        )
        self.resource_group_name = group.name
        self.cluster_id = aks.id
        self.cluster_name = aks.name
        self.oidc_issuer_url = aks.oidc_issuer_profile.apply(lambda p: p.issuer_url if p else "")
        self.kubelet_object_id = aks.identity_profile.apply(
            lambda p: p["kubeletidentity"].object_id if p and "kubeletidentity" in p else ""
        )
        self.register_outputs(
            {
                "clusterId": aks.id,
                "kubeconfig": self.kubeconfig,
                "oidcIssuerUrl": self.oidc_issuer_url,
                "kubeletObjectId": self.kubelet_object_id,
            }
        )


class LocalCluster(pulumi.ComponentResource):
    """An existing cluster from a kubeconfig context; nothing is created."""

    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ml-delivery:infra:LocalCluster", name, None, opts)
        # The provider accepts a kubeconfig path or its contents; a path keeps the file out of state.
        self.kubeconfig = pulumi.Output.secret(settings.local.kubeconfig_path)
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            context=settings.local.kube_context,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"kubeconfig": self.kubeconfig})
