"""The Kubernetes cluster the stack deploys to, and the Kubernetes provider that talks to it.

``AksCluster``: resource group + VNet + AKS (system pool tainted CriticalAddonsOnly, autoscaling
user pool, SystemAssigned identity, OIDC issuer + workload identity, Azure CNI overlay with Cilium
network policy, managed Azure AD with Azure RBAC, local accounts disabled, auto-upgrade). Its
kubeconfig (a secret) uses kubelogin; ``kubeloginMode`` picks a non-interactive login for CI.
``LocalCluster``: an existing kubeconfig context (kind, minikube, Docker Desktop); no Azure at all.
"""

from __future__ import annotations

import base64
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml
from pulumi_azure_native import authorization, containerservice, resources

from infra import roles
from infra.network import AKS_DNS_SERVICE_IP, AKS_POD_CIDR, AKS_SERVICE_CIDR, Network
from infra.settings import Settings

SYSTEM_POOL_TAINT = "CriticalAddonsOnly=true:NoSchedule"
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
    network: Network

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
        }
        aad_profile: Any = {
            "managed": True,
            "enable_azure_rbac": True,
            "admin_group_object_ids": list(cfg.admin_group_object_ids) or None,
        }
        pools: Any = [
            {
                **pool_common,
                "name": "system",
                "mode": "System",
                "vm_size": cfg.system_vm_size,
                "count": cfg.system_node_count,
                "node_taints": [SYSTEM_POOL_TAINT],
            },
            {
                **pool_common,
                "name": "user",
                "mode": "User",
                "vm_size": cfg.user_vm_size,
                "enable_auto_scaling": True,
                "min_count": cfg.user_min_count,
                "max_count": cfg.user_max_count,
                "count": max(cfg.user_min_count, 1),
            },
        ]
        aks = containerservice.ManagedCluster(  # type: ignore[call-overload]  # plain dicts for TypedDict args
            f"{name}-aks",
            resource_group_name=group.name,
            location=settings.location,
            dns_prefix=f"{settings.project}-{settings.stack}",
            kubernetes_version=cfg.kubernetes_version,  # None: AKS picks its default version
            identity={"type": "SystemAssigned"},
            agent_pool_profiles=pools,
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
                # the autoscaler owns the user pool's node count after creation
                ignore_changes=["agentPoolProfiles[1].count"],
            ),
        )
        # The cluster's identity manages load balancers and routes in the BYO node subnet.
        roles.grant(
            f"{name}-subnet-network-contributor",
            role_guid=roles.NETWORK_CONTRIBUTOR,
            principal_id=aks.identity.apply(lambda i: i.principal_id if i else ""),
            scope=self.network.node_subnet_id,
            parent=self,
        )
        # Local accounts are off, so whoever runs `pulumi up` needs an Azure RBAC role on the cluster.
        deployer = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))
        roles.grant(
            f"{name}-deployer-cluster-admin",
            role_guid=roles.AKS_RBAC_CLUSTER_ADMIN,
            principal_id=deployer.object_id,
            scope=aks.id,
            parent=self,
            principal_type=cfg.deployer_principal_type,
        )
        credentials = containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=group.name,
            resource_name=aks.name,
            opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[aks]),
        )
        mode = cfg.kubelogin_mode
        self.kubeconfig = pulumi.Output.secret(credentials.apply(lambda r: decode_user_kubeconfig(r, mode)))
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig, opts=child)
        self.resource_group_name = group.name
        self.cluster_id = aks.id
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
