"""The CrossGuard policies of the ml-delivery stacks, importable without starting a policy pack.

Each rule is a pure ``check_*(props, config[, stack]) -> list[str]`` over the resource's input
properties as the engine sends them (camelCase; Kubernetes objects as manifest fields), returning one
message per problem that names the field and says what to change. ``POLICIES`` wraps them into
``ResourceValidationPolicy`` objects; ``policy/__main__.py`` hands those to ``PolicyPack``, which
starts a gRPC server and blocks, so nothing here constructs it.

This file imports no sibling module: the engine runs the pack with ``policy/`` as its working
directory, where ``policy.*`` imports would not resolve.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from itertools import pairwise
from typing import Any

import pulumi
from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

PACK_NAME = "ml-delivery-policies"

# Where the pod spec lives inside each workload kind that runs containers.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:core/v1:Pod": ("spec",),
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
SERVICE_TYPE = "kubernetes:core/v1:Service"
CONFIG_MAP_TYPE = "kubernetes:core/v1:ConfigMap"
ACR_TYPE = "azure-native:containerregistry:Registry"
AKS_TYPE = "azure-native:containerservice:ManagedCluster"
STORAGE_ACCOUNT_TYPE = "azure-native:storage:StorageAccount"
BLOB_CONTAINER_TYPE = "azure-native:storage:BlobContainer"
POSTGRES_SERVER_TYPE = "azure-native:dbforpostgresql:Server"
POSTGRES_FIREWALL_TYPE = "azure-native:dbforpostgresql:FirewallRule"
DOCKER_IMAGE_TYPE = "docker:index/image:Image"
ROLE_ASSIGNMENT_TYPE = "azure-native:authorization:RoleAssignment"
K8S_PROVIDER_TYPE = "pulumi:providers:kubernetes"
DCR_TYPE = "azure-native:monitor:DataCollectionRule"
DCRA_TYPE = "azure-native:monitor:DataCollectionRuleAssociation"
DEPLOYMENT_TYPE = "kubernetes:apps/v1:Deployment"
NETWORK_POLICY_TYPE = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
PROMETHEUS_STREAM = "Microsoft-PrometheusMetrics"
# Who scrapes annotated pods on AKS managed Prometheus: the addon's collector pods.
SCRAPER_NAMESPACE = "kube-system"
SCRAPER_POD_LABELS = {"rsName": "ama-metrics"}
# Azure Kubernetes Service RBAC Cluster Admin (a built-in role: the same GUID in every tenant).
AKS_RBAC_CLUSTER_ADMIN_ROLE = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"
ARM_PRINCIPAL_TYPES = frozenset({"User", "Group", "ServicePrincipal", "ForeignGroup", "Device"})

DIGEST_REF = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
SECURE_TLS_VERSIONS = frozenset({"TLS1_2", "TLS1_3"})
OPEN_RANGES = frozenset({"0.0.0.0/0", "::/0"})
# pulumi.get_stack() before the runtime is configured (pulumi.runtime.settings default)
UNCONFIGURED_STACK = "stack"
# Words of an environment variable name (split on "_") that mark its value as a secret.
SECRET_NAME_WORDS = frozenset(
    {"PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "CREDENTIALS", "APIKEY"}
)
SECRET_NAME_PAIRS = frozenset(
    {
        ("API", "KEY"),
        ("ACCESS", "KEY"),
        ("ACCOUNT", "KEY"),
        ("PRIVATE", "KEY"),
        ("STORAGE", "KEY"),
        ("CONNECTION", "STRING"),
        ("SAS", "TOKEN"),
    }
)
# scheme://user:password@host, unless the password is a Kubernetes $(VAR) reference.
CREDENTIAL_URI = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(?!\$\([A-Za-z0-9_]+\)@)[^@\s/]+@", re.I)
CREDENTIAL_MARKERS = re.compile(r"AccountKey=|SharedAccessSignature=|[?&]sig=|--password[= ](?!\$\()\S", re.I)

Props = Mapping[str, Any]
Config = Mapping[str, Any]


# ---------------------------------------------------------------- helpers over engine-shaped props


def _get(props: Any, *path: str) -> Any:
    """The value at ``path`` inside nested mappings, or None where any step is missing."""
    current = props
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return None
        current = current[key]
    return current


def _items(value: Any) -> list[Any]:
    """A list-like property as a list (the engine sends a Sequence proxy); None or a scalar -> []."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return []


def _label(props: Props, kind: str) -> str:
    """``Kind 'namespace/name'`` for messages, from the manifest's metadata."""
    name = _get(props, "metadata", "name") or "<unnamed>"
    namespace = _get(props, "metadata", "namespace")
    return f"{kind} '{namespace}/{name}'" if namespace else f"{kind} '{name}'"


def _kind(resource_type: str) -> str:
    return resource_type.rsplit(":", 1)[-1]


def pod_spec(resource_type: str, props: Props) -> tuple[str, Any]:
    """The dotted path to the pod spec of a workload and the pod spec itself (None if absent)."""
    path = POD_SPEC_PATHS[resource_type]
    return ".".join(path), _get(props, *path)


def containers(resource_type: str, props: Props, *, include_init: bool = True) -> Iterator[tuple[str, Any]]:
    """(field path, container) for every container of a workload, init containers first."""
    spec_path, spec = pod_spec(resource_type, props)
    groups = ("initContainers", "containers") if include_init else ("containers",)
    for group in groups:
        for index, container in enumerate(_items(_get(spec, group))):
            name = _get(container, "name") or f"#{index}"
            yield f"{spec_path}.{group}[{index}] ('{name}')", container


def _missing_pod_spec(resource_type: str, props: Props) -> list[str]:
    spec_path, spec = pod_spec(resource_type, props)
    if not _items(_get(spec, "containers")):
        return [
            f"{_label(props, _kind(resource_type))}: {spec_path}.containers is missing or empty, so its "
            "containers cannot be checked. Declare the pod template's containers."
        ]
    return []


# ---------------------------------------------------------------- Kubernetes workloads


def check_image_digest(resource_type: str, props: Props) -> list[str]:
    """Every container image is referenced as ``repository@sha256:<digest>``, never by a tag alone."""
    label = _label(props, _kind(resource_type))
    problems = _missing_pod_spec(resource_type, props)
    for path, container in containers(resource_type, props):
        image = _get(container, "image")
        if not isinstance(image, str) or not image:
            problems.append(
                f"{label}: {path}.image is missing. Set it to an image pinned by digest "
                "(repository@sha256:<64 hex>)."
            )
        elif not DIGEST_REF.match(image):
            problems.append(
                f"{label}: {path}.image '{image}' is not pinned by digest. Reference it as "
                "repository@sha256:<digest> (the digest the build pushed, e.g. docker.Image.repo_digest) "
                "instead of a mutable tag."
            )
    return problems


def check_container_security(resource_type: str, props: Props) -> list[str]:
    """Non-root, read-only root filesystem, no privilege escalation, all capabilities dropped."""
    label = _label(props, _kind(resource_type))
    spec_path, spec = pod_spec(resource_type, props)
    pod_context = _get(spec, "securityContext")
    problems = _missing_pod_spec(resource_type, props)
    for path, container in containers(resource_type, props):
        context = _get(container, "securityContext")
        run_as_non_root = _get(context, "runAsNonRoot")
        if run_as_non_root is None:
            run_as_non_root = _get(pod_context, "runAsNonRoot")
        if run_as_non_root is not True:
            problems.append(
                f"{label}: {path}.securityContext.runAsNonRoot is not true (nor is "
                f"{spec_path}.securityContext.runAsNonRoot). Set runAsNonRoot: true and a non-zero runAsUser."
            )
        run_as_user = _get(context, "runAsUser")
        if run_as_user is None:
            run_as_user = _get(pod_context, "runAsUser")
        if run_as_user == 0:
            problems.append(
                f"{label}: {path} runs as uid 0 (securityContext.runAsUser: 0). Set a non-zero runAsUser."
            )
        if _get(context, "readOnlyRootFilesystem") is not True:
            problems.append(
                f"{label}: {path}.securityContext.readOnlyRootFilesystem is not true. Set it to true and "
                "mount emptyDir volumes on the paths the process writes to."
            )
        if _get(context, "allowPrivilegeEscalation") is not False:
            problems.append(
                f"{label}: {path}.securityContext.allowPrivilegeEscalation is not false. Set it to false."
            )
        if _get(context, "privileged") is True:
            problems.append(f"{label}: {path}.securityContext.privileged is true. Remove it.")
        dropped = {str(cap).upper() for cap in _items(_get(context, "capabilities", "drop"))}
        if "ALL" not in dropped:
            problems.append(
                f'{label}: {path}.securityContext.capabilities.drop does not contain "ALL". '
                'Set capabilities: {drop: ["ALL"]} and add back only what the process needs.'
            )
    return problems


def check_container_resources(resource_type: str, props: Props) -> list[str]:
    """Every container requests and limits both cpu and memory."""
    label = _label(props, _kind(resource_type))
    problems = _missing_pod_spec(resource_type, props)
    for path, container in containers(resource_type, props):
        for bound in ("requests", "limits"):
            values = _get(container, "resources", bound)
            missing = [res for res in ("cpu", "memory") if _get(values, res) in (None, "")]
            if missing:
                problems.append(
                    f"{label}: {path}.resources.{bound} lacks {' and '.join(missing)}. "
                    f"Set resources.{bound}.cpu and resources.{bound}.memory."
                )
    return problems


def check_container_probes(resource_type: str, props: Props) -> list[str]:
    """Every long-running container has a readiness and a liveness probe (init containers exempt)."""
    label = _label(props, _kind(resource_type))
    problems = _missing_pod_spec(resource_type, props)
    for path, container in containers(resource_type, props, include_init=False):
        for probe in ("readinessProbe", "livenessProbe"):
            if not isinstance(_get(container, probe), Mapping):
                problems.append(
                    f"{label}: {path}.{probe} is missing. Add an httpGet/tcpSocket/exec {probe} so "
                    "Kubernetes knows when the container is ready and when to restart it."
                )
    return problems


def is_secret_name(name: str) -> bool:
    """Whether an environment variable or ConfigMap key name says it holds a secret."""
    words = [word for word in re.split(r"[^A-Z0-9]+", name.upper()) if word]
    if any(word in SECRET_NAME_WORDS for word in words):
        return True
    return any(pair in SECRET_NAME_PAIRS for pair in pairwise(words))


def looks_like_credential(value: str) -> bool:
    """Whether a plain string embeds a credential (user:password@ URI, storage key, SAS signature)."""
    return bool(CREDENTIAL_URI.search(value) or CREDENTIAL_MARKERS.search(value))


def check_plaintext_secrets(resource_type: str, props: Props) -> list[str]:
    """No secret passed as a plain env value, argument or ConfigMap entry: use a Secret reference."""
    label = _label(props, _kind(resource_type))
    problems: list[str] = []
    if resource_type == CONFIG_MAP_TYPE:
        data = _get(props, "data")
        for key in sorted(data) if isinstance(data, Mapping) else []:
            value = data[key]
            if is_secret_name(key) or (isinstance(value, str) and looks_like_credential(value)):
                problems.append(
                    f"{label}: data.{key} holds a secret in a ConfigMap. Move it to a Kubernetes Secret "
                    "(from a Pulumi secret) and reference it with secretKeyRef or a secret volume."
                )
        return problems
    for path, container in containers(resource_type, props):
        for index, env in enumerate(_items(_get(container, "env"))):
            name = str(_get(env, "name") or f"#{index}")
            value = _get(env, "value")
            if value is None:
                continue
            if is_secret_name(name) or (isinstance(value, str) and looks_like_credential(value)):
                problems.append(
                    f"{label}: {path}.env[{index}] '{name}' passes a secret as a plain value. Put it in a "
                    "Kubernetes Secret (from a Pulumi secret) and use valueFrom.secretKeyRef."
                )
        for field in ("command", "args"):
            for index, arg in enumerate(_items(_get(container, field))):
                if isinstance(arg, str) and looks_like_credential(arg):
                    problems.append(
                        f"{label}: {path}.{field}[{index}] embeds a credential. Pass it through an env "
                        "var from valueFrom.secretKeyRef and reference it as $(VAR) in the argument."
                    )
    return problems


def check_load_balancer(props: Props, config: Config) -> list[str]:
    """No Service of type LoadBalancer unless allowed in the policy config, and then source-restricted."""
    if _get(props, "spec", "type") != "LoadBalancer":
        return []
    name = _get(props, "metadata", "name") or ""
    namespace = _get(props, "metadata", "namespace") or ""
    label = _label(props, "Service")
    patterns = [str(entry) for entry in _items(config.get("allowedServices"))]
    if not any(fnmatchcase(name, p) or fnmatchcase(f"{namespace}/{name}", p) for p in patterns):
        return [
            f"{label}: spec.type is LoadBalancer, which exposes it outside the cluster, and it is not "
            "allowed in policy config. Use type ClusterIP (behind an ingress), or add "
            f"'{namespace + '/' if namespace else ''}{name}' to no-unapproved-load-balancer.allowedServices "
            "in the stack's policy pack config (policy/config.<stack>.json)."
        ]
    ranges = [str(cidr) for cidr in _items(_get(props, "spec", "loadBalancerSourceRanges"))]
    if not ranges or OPEN_RANGES.intersection(ranges):
        return [
            f"{label}: an allowed LoadBalancer must limit who connects, but spec.loadBalancerSourceRanges "
            f"is {ranges or 'empty'}. List only the client CIDRs that need access."
        ]
    return []


# ---------------------------------------------------------------- Azure resources


def check_acr_admin_user(props: Props) -> list[str]:
    """The registry's admin user stays disabled (Azure's default when the property is absent)."""
    if _get(props, "adminUserEnabled") is True:
        return [
            "Container registry: adminUserEnabled is true; the admin user is a shared, non-auditable "
            "credential. Set adminUserEnabled: false and grant AcrPull/AcrPush roles to identities."
        ]
    return []


def check_aks_access(props: Props, config: Config, stack: str) -> list[str]:
    """Entra ID with Azure RBAC, Kubernetes RBAC on, local accounts off (outside local stacks)."""
    local_stacks = {str(name) for name in _items(config.get("localStacks", ["local"]))}
    if stack and stack in local_stacks:
        return []
    problems: list[str] = []
    if _get(props, "enableRBAC") is False:
        problems.append("AKS cluster: enableRBAC is false. Set enableRBAC: true.")
    if _get(props, "aadProfile", "managed") is not True:
        problems.append("AKS cluster: aadProfile.managed is not true. Set aadProfile: {managed: true, ...}.")
    if _get(props, "aadProfile", "enableAzureRBAC") is not True:
        problems.append(
            "AKS cluster: aadProfile.enableAzureRBAC is not true. Set aadProfile.enableAzureRBAC: true "
            "so Kubernetes access is granted with Azure role assignments."
        )
    if _get(props, "disableLocalAccounts") is not True:
        problems.append(
            "AKS cluster: disableLocalAccounts is not true, so a static admin kubeconfig exists. Set "
            "disableLocalAccounts: true (stacks named in aks-azure-rbac.localStacks are exempt)."
        )
    return problems


def check_image_registry_credentials(props: Props, config: Config) -> list[str]:
    """A pushed image names its registry with a username and a password (a token obtained by the
    program: the registry may not exist before the update, so no prior login can be relied on).
    Only the presence of the password is checked; its value is unknown in a preview."""
    if _get(props, "skipPush") is True:
        return []
    registry = _get(props, "registry")
    keys = set(registry) if isinstance(registry, Mapping) else set()  # iterating reads no value
    if "server" in keys:
        server = registry["server"]
        exempt = [str(p) for p in _items(config.get("credentialFreeRegistries", []))]
        if isinstance(server, str) and any(fnmatchcase(server, pattern) for pattern in exempt):
            return []
    missing = [key for key in ("server", "username", "password") if key not in keys]
    if missing:
        return [
            f"Image: registry.{'/'.join(missing)} missing, so the push relies on a `docker login` made "
            "before the update. Pass the registry's server, username and a (secret) token "
            "(infra/acr_token.py), or list a local registry in credentialFreeRegistries."
        ]
    return []


def check_role_assignment_principal_type(props: Props) -> list[str]:
    """Every role assignment names its principal type (else ARM looks the principal up in Entra ID,
    which fails for an identity created moments earlier, and a wrong guess is rejected)."""
    kind = _get(props, "principalType")
    if kind not in ARM_PRINCIPAL_TYPES:
        return [
            f"Role assignment: principalType is {kind!r}. Set it to one of "
            f"{', '.join(sorted(ARM_PRINCIPAL_TYPES))} (a managed identity is ServicePrincipal)."
        ]
    return []


def _prop(resource: Any, key: str) -> Any:
    """A top-level property of a stack-policy resource; None if unknown (a preview of a create)."""
    try:
        return _get(resource.props, key)
    except UnknownValueError:
        return None


def _is_cluster_admin_grant(resource: Any) -> bool:
    if resource.resource_type != ROLE_ASSIGNMENT_TYPE:
        return False
    role = _prop(resource, "roleDefinitionId")
    return isinstance(role, str) and role.lower().endswith(f"/roledefinitions/{AKS_RBAC_CLUSTER_ADMIN_ROLE}")


def check_k8s_provider_after_cluster_grant(resources: Sequence[Any]) -> list[tuple[str, str | None]]:
    """In a stack with an AKS cluster, every Kubernetes provider depends on every AKS RBAC Cluster
    Admin grant (with local accounts off, Kubernetes calls get 403 until the grant exists and has
    propagated). (message, urn) per offending provider."""
    if not any(r.resource_type == AKS_TYPE for r in resources):
        return []
    grants = {r.urn for r in resources if _is_cluster_admin_grant(r)}
    problems: list[tuple[str, str | None]] = []
    for provider in (r for r in resources if r.resource_type == K8S_PROVIDER_TYPE):
        depends = {d.urn for d in provider.dependencies}
        if not grants:
            problems.append(
                (
                    f"Kubernetes provider '{provider.name}': the stack has an AKS cluster but no AKS RBAC "
                    "Cluster Admin role assignment, so the deployer cannot reach the cluster. Grant it to "
                    "the deployerPrincipals and make the provider depend on the grant.",
                    provider.urn,
                )
            )
        elif not grants <= depends:
            problems.append(
                (
                    f"Kubernetes provider '{provider.name}' does not depend on the deployer's AKS RBAC "
                    "Cluster Admin grant, so its first call can get 403. Add the grant (and the access "
                    "wait, infra/cluster_access.py) to the provider's depends_on.",
                    provider.urn,
                )
            )
    return problems


def check_aks_managed_prometheus(props: Props, config: Config, stack: str) -> list[str]:
    """Azure stacks run the managed Prometheus addon (else nothing scrapes the model's metrics)."""
    if _stack_in(stack, config, "localStacks", ["local"]):
        return []
    if _get(props, "azureMonitorProfile", "metrics", "enabled") is not True:
        return [
            "AKS cluster: azureMonitorProfile.metrics.enabled is not true, so no managed Prometheus "
            "collects the served model's metrics and no alert rule sees them. Set azureMonitorProfile: "
            "{metrics: {enabled: true}} and associate a Prometheus data collection rule "
            "(infra/monitoring.py)."
        ]
    return []


def _streams_prometheus(rule: Any) -> bool:
    """A data collection rule forwarding Prometheus metrics to a workspace (unknown in a preview: yes)."""
    try:
        sources = _items(_get(rule.props, "dataSources", "prometheusForwarder"))
        accounts = _items(_get(rule.props, "destinations", "monitoringAccounts"))
        streams = {str(s) for source in sources for s in _items(_get(source, "streams"))}
    except UnknownValueError:
        return True
    return PROMETHEUS_STREAM in streams and bool(accounts)


def check_aks_metrics_collected(resources: Sequence[Any]) -> list[tuple[str, str | None]]:
    """Every AKS cluster has a data collection rule association that depends on it and on a data
    collection rule forwarding Prometheus metrics to an Azure Monitor workspace: the addon alone
    sends nothing. Checked by dependency, so it holds in a preview where ids are unknown."""
    rules = {r.urn for r in resources if r.resource_type == DCR_TYPE and _streams_prometheus(r)}
    associations = [r for r in resources if r.resource_type == DCRA_TYPE]
    problems: list[tuple[str, str | None]] = []
    for cluster in (r for r in resources if r.resource_type == AKS_TYPE):
        if _prop(cluster, "azureMonitorProfile") is None:
            continue  # aks-managed-prometheus reports the addon itself
        linked = [a for a in associations if cluster.urn in {d.urn for d in a.dependencies}]
        if not any(rules & {d.urn for d in a.dependencies} for a in linked):
            problems.append(
                (
                    f"AKS cluster '{cluster.name}' runs the managed Prometheus addon but no data collection "
                    "rule association ties it to a data collection rule with a prometheusForwarder "
                    f"({PROMETHEUS_STREAM}) and a monitoringAccounts destination, so its metrics go "
                    "nowhere. Declare the rule and the association (resourceUri: the cluster's id), as "
                    "infra/monitoring.py does.",
                    cluster.urn,
                )
            )
    return problems


def _selects(selector: Any, labels: Mapping[str, Any]) -> bool:
    """Whether a label selector's matchLabels all hold in ``labels`` (matchExpressions: not judged, no)."""
    if not isinstance(selector, Mapping):
        return False
    if _items(_get(selector, "matchExpressions")):
        return False
    wanted = _get(selector, "matchLabels") or {}
    return isinstance(wanted, Mapping) and all(labels.get(k) == v for k, v in wanted.items())


def _admits_scraper(peer: Any) -> bool:
    namespaces, pods = _get(peer, "namespaceSelector"), _get(peer, "podSelector")
    if namespaces is None or _get(peer, "ipBlock") is not None:
        return False  # a podSelector alone means pods of the policy's own namespace
    scraper_ns = {"kubernetes.io/metadata.name": SCRAPER_NAMESPACE}
    return _selects(namespaces, scraper_ns) and (pods is None or _selects(pods, SCRAPER_POD_LABELS))


def _rule_admits(rule: Any, port: int) -> bool:
    ports = _items(_get(rule, "ports"))
    port_ok = not ports or any(
        _get(p, "port") in (port, str(port)) and _get(p, "protocol") in (None, "TCP") for p in ports
    )
    peers = _items(_get(rule, "from"))
    return port_ok and (not peers or any(_admits_scraper(peer) for peer in peers))


def check_scraped_pods_admitted(resources: Sequence[Any]) -> list[tuple[str, str | None]]:
    """In an AKS stack, every Deployment whose pods ask to be scraped (prometheus.io/scrape) has a
    NetworkPolicy in its namespace admitting the managed Prometheus collector (kube-system, label
    rsName=ama-metrics) to the prometheus.io/port: under a default-deny policy the scrape times out."""
    if not any(r.resource_type == AKS_TYPE for r in resources):
        return []
    policies = [r for r in resources if r.resource_type == NETWORK_POLICY_TYPE]
    problems: list[tuple[str, str | None]] = []
    for deployment in (r for r in resources if r.resource_type == DEPLOYMENT_TYPE):
        try:
            template = _get(deployment.props, "spec", "template", "metadata")
            namespace = _get(deployment.props, "metadata", "namespace")
            annotations = _get(template, "annotations") or {}
            labels = dict(_get(template, "labels") or {})
            if _get(annotations, "prometheus.io/scrape") != "true":
                continue
            port = int(str(_get(annotations, "prometheus.io/port") or 80))
        except (UnknownValueError, ValueError):
            continue
        admitted = False
        for policy in policies:
            try:
                if _get(policy.props, "metadata", "namespace") != namespace:
                    continue
                spec = _get(policy.props, "spec")
                if "Ingress" not in [str(t) for t in _items(_get(spec, "policyTypes"))] and not _items(
                    _get(spec, "ingress")
                ):
                    continue
                if _selects(_get(spec, "podSelector"), labels) and any(
                    _rule_admits(rule, port) for rule in _items(_get(spec, "ingress"))
                ):
                    admitted = True
            except UnknownValueError:
                admitted = True  # not judged in a preview that cannot see the policy yet
        if not admitted:
            problems.append(
                (
                    f"Deployment '{namespace}/{deployment.name}': its pods carry prometheus.io/scrape but no "
                    f"NetworkPolicy in namespace '{namespace}' admits the managed Prometheus collector "
                    f"({SCRAPER_NAMESPACE} pods labelled rsName=ama-metrics) to port {port}, so no metric "
                    "of it reaches the workspace. Add an ingress rule from namespaceSelector "
                    "kubernetes.io/metadata.name: kube-system + podSelector rsName: ama-metrics on that "
                    "port.",
                    deployment.urn,
                )
            )
    return problems


def check_storage(resource_type: str, props: Props) -> list[str]:
    """Storage accounts: no public blob access, TLS 1.2+, HTTPS only; blob containers: private."""
    if resource_type == BLOB_CONTAINER_TYPE:
        access = _get(props, "publicAccess")
        if access not in (None, "None"):
            return [
                f"Blob container '{_get(props, 'containerName') or '<unnamed>'}': publicAccess is "
                f"'{access}'. Remove it or set publicAccess: None."
            ]
        return []
    problems: list[str] = []
    if _get(props, "allowBlobPublicAccess") is not False:
        problems.append(
            "Storage account: allowBlobPublicAccess is not false (older API versions default to true). "
            "Set allowBlobPublicAccess: false."
        )
    tls = _get(props, "minimumTlsVersion")
    if tls not in SECURE_TLS_VERSIONS:
        problems.append(
            f"Storage account: minimumTlsVersion is {tls or 'not set (TLS1_0 on older API versions)'}. "
            'Set minimumTlsVersion: "TLS1_2".'
        )
    if _get(props, "enableHttpsTrafficOnly") is False:
        problems.append("Storage account: enableHttpsTrafficOnly is false. Set it to true.")
    return problems


def check_postgres(resource_type: str, props: Props) -> list[str]:
    """PostgreSQL Flexible Server reachable only privately (VNet integration or private endpoint)."""
    if resource_type == POSTGRES_FIREWALL_TYPE:
        return [
            f"PostgreSQL firewall rule '{_get(props, 'firewallRuleName') or '<unnamed>'}' "
            f"({_get(props, 'startIpAddress')}-{_get(props, 'endIpAddress')}) opens the server to public "
            "networks. Remove it; reach the server through VNet integration or a private endpoint."
        ]
    if _get(props, "network", "delegatedSubnetResourceId"):
        return []  # VNet-integrated servers have no public endpoint.
    access = _get(props, "network", "publicNetworkAccess")
    if access != "Disabled":
        return [
            f"PostgreSQL server: network.publicNetworkAccess is {access or 'not set (Enabled by default)'}. "
            'Set network: {publicNetworkAccess: "Disabled"} with a private endpoint, or set '
            "network.delegatedSubnetResourceId for VNet integration."
        ]
    return []


# ---------------------------------------------------------------- deployability: MLflow, stateful data


def _stack_in(stack: str, config: Config, key: str, default: Sequence[str]) -> bool:
    return bool(stack) and stack in {str(name) for name in _items(config.get(key, list(default)))}


def check_mlflow_not_exposed(props: Props, config: Config, stack: str) -> list[str]:
    """An Azure stack's MLflow Service is ClusterIP: reached only by port-forward over the API server."""
    if _stack_in(stack, config, "localStacks", ["local"]):
        return []
    name = _get(props, "metadata", "name") or ""
    namespace = _get(props, "metadata", "namespace") or ""
    patterns = [str(entry) for entry in _items(config.get("mlflowServices", ["mlflow/mlflow"]))]
    if not any(fnmatchcase(f"{namespace}/{name}", p) for p in patterns):
        return []
    kind = _get(props, "spec", "type") or "ClusterIP"
    if kind in ("LoadBalancer", "NodePort"):
        return [
            f"MLflow Service '{namespace}/{name}': spec.type is {kind}, which reaches it from outside the "
            "cluster. Use ClusterIP; the deploying machine and people reach MLflow with `kubectl "
            "port-forward` over the AKS API server (infra/tunnel.py, `make mlflow-ui`)."
        ]
    return []


# What holds data, including what sits inside a protected server or account: `pulumi destroy
# --exclude-protected` (or `--skip-preview`) deletes unprotected dependents before the protected parent.
STATEFUL_TYPES = (
    "azure-native:dbforpostgresql:Server",
    "azure-native:dbforpostgresql:Database",
    "azure-native:storage:StorageAccount",
    "azure-native:storage:BlobContainer",
    ACR_TYPE,
)


# dev holds the registry of record (MLflow's PostgreSQL and artifact store); staging/prod their registries.
PROTECTED_STACKS = ("dev", "staging", "prod")


def check_stateful_protected(resource_type: str, protected: bool, config: Config, stack: str) -> list[str]:
    """In the listed stacks, the resources holding data cannot be deleted by `pulumi destroy`.

    pulumi-policy exposes ``protect`` in ``ResourceValidationArgs.opts`` (not ``retainOnDelete``), so
    ``protect`` is what this rule can see and what the program sets.
    """
    if protected or not _stack_in(stack, config, "protectedStacks", list(PROTECTED_STACKS)):
        return []
    return [
        f"{resource_type} holds data but is not protected in stack '{stack}': `pulumi destroy` would "
        "delete it. Set ResourceOptions(protect=True) (stack config protectStatefulResources: true)."
    ]


# ---------------------------------------------------------------- edges: config, stack, policies


def current_stack() -> str:
    """The stack under analysis: ``pulumi.get_stack()``, which the analyzer configures from the
    engine before each analysis; else PULUMI_STACK (the runtime is not configured, e.g. in tests)."""
    stack = pulumi.get_stack()
    if stack and stack != UNCONFIGURED_STACK:
        return stack
    return os.environ.get("PULUMI_STACK", "")


def _with_defaults(schema: PolicyConfigSchema | None, config: Config) -> dict[str, Any]:
    """Config values the user set, over the schema's defaults."""
    merged: dict[str, Any] = {}
    for key, spec in (schema.properties if schema else {}).items():
        if "default" in spec:
            merged[key] = spec["default"]
    merged.update(config or {})
    return merged


Check = Callable[[ResourceValidationArgs, Config], list[str]]


def _policy(
    name: str,
    description: str,
    types: Sequence[str],
    check: Check,
    *,
    schema: PolicyConfigSchema | None = None,
    severity: Severity = Severity.HIGH,
) -> ResourceValidationPolicy:
    """A mandatory resource policy that runs ``check`` on resources of ``types`` only."""
    wanted = frozenset(types)

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type not in wanted:
            return
        for message in check(args, _with_defaults(schema, args.get_config())):
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=schema,
        severity=severity,
    )


WORKLOAD_TYPES = tuple(POD_SPEC_PATHS)


def _string_list(default: list[str], description: str) -> dict[str, Any]:
    """A policy config property holding a list of strings."""
    return {"type": "array", "items": {"type": "string"}, "default": default, "description": description}


LOAD_BALANCER_SCHEMA = PolicyConfigSchema(
    properties={
        "allowedServices": _string_list(
            [],
            "Services allowed to be of type LoadBalancer: 'name' or 'namespace/name', "
            "shell-style wildcards allowed (e.g. 'mlflow/*').",
        )
    }
)
IMAGE_CREDENTIALS_SCHEMA = PolicyConfigSchema(
    properties={
        "credentialFreeRegistries": _string_list(
            ["localhost:*", "127.0.0.1:*"],
            "Registries (server patterns, shell-style wildcards) pushed to without "
            "credentials: a laptop cluster's local registry.",
        )
    }
)
AKS_SCHEMA = PolicyConfigSchema(
    properties={
        "localStacks": _string_list(
            ["local"],
            "Stacks (laptop clusters) exempt from the AKS access rules.",
        )
    }
)

MLFLOW_EXPOSURE_SCHEMA = PolicyConfigSchema(
    properties={
        "mlflowServices": _string_list(
            ["mlflow/mlflow"],
            "MLflow Services as 'namespace/name' (shell-style wildcards allowed).",
        ),
        "localStacks": _string_list(
            ["local"],
            "Stacks (laptop clusters) where MLflow may be a NodePort.",
        ),
    }
)
PROTECTION_SCHEMA = PolicyConfigSchema(
    properties={
        "protectedStacks": _string_list(
            list(PROTECTED_STACKS),
            "Stacks whose PostgreSQL servers and databases, storage accounts and blob "
            "containers, and registries are protected.",
        )
    }
)

POLICIES: list[ResourceValidationPolicy] = [
    _policy(
        "images-pinned-by-digest",
        "Every container image is referenced by digest (repository@sha256:...), never by a mutable tag.",
        WORKLOAD_TYPES,
        lambda args, _cfg: check_image_digest(args.resource_type, args.props),
        severity=Severity.CRITICAL,
    ),
    _policy(
        "containers-hardened",
        "Every container runs as non-root with a read-only root filesystem, no privilege escalation "
        "and all capabilities dropped.",
        WORKLOAD_TYPES,
        lambda args, _cfg: check_container_security(args.resource_type, args.props),
    ),
    _policy(
        "containers-resources-set",
        "Every container sets cpu and memory requests and limits.",
        WORKLOAD_TYPES,
        lambda args, _cfg: check_container_resources(args.resource_type, args.props),
        severity=Severity.MEDIUM,
    ),
    _policy(
        "containers-probed",
        "Every long-running container has readiness and liveness probes.",
        WORKLOAD_TYPES,
        lambda args, _cfg: check_container_probes(args.resource_type, args.props),
        severity=Severity.MEDIUM,
    ),
    _policy(
        "no-plaintext-secrets",
        "Secrets are not passed as plain env values, arguments or ConfigMap entries.",
        (*WORKLOAD_TYPES, CONFIG_MAP_TYPE),
        lambda args, _cfg: check_plaintext_secrets(args.resource_type, args.props),
        severity=Severity.CRITICAL,
    ),
    _policy(
        "no-unapproved-load-balancer",
        "No Service of type LoadBalancer unless allowed by name in the policy config and limited "
        "to listed source ranges.",
        (SERVICE_TYPE,),
        lambda args, cfg: check_load_balancer(args.props, cfg),
        schema=LOAD_BALANCER_SCHEMA,
    ),
    _policy(
        "aks-managed-prometheus",
        "AKS runs the managed Prometheus addon (azureMonitorProfile.metrics.enabled), except in local "
        "stacks.",
        (AKS_TYPE,),
        lambda args, cfg: check_aks_managed_prometheus(args.props, cfg, current_stack()),
        schema=AKS_SCHEMA,
    ),
    _policy(
        "acr-admin-user-disabled",
        "Azure Container Registry has its admin user disabled.",
        (ACR_TYPE,),
        lambda args, _cfg: check_acr_admin_user(args.props),
    ),
    _policy(
        "aks-azure-rbac",
        "AKS uses Entra ID with Azure RBAC and has local accounts disabled (except in local stacks).",
        (AKS_TYPE,),
        lambda args, cfg: check_aks_access(args.props, cfg, current_stack()),
        schema=AKS_SCHEMA,
    ),
    _policy(
        "pushed-images-have-registry-credentials",
        "Every pushed image carries registry credentials (server, username, secret token).",
        (DOCKER_IMAGE_TYPE,),
        lambda args, cfg: check_image_registry_credentials(args.props, cfg),
        schema=IMAGE_CREDENTIALS_SCHEMA,
    ),
    _policy(
        "role-assignments-have-principal-type",
        "Every Azure role assignment names its principalType.",
        (ROLE_ASSIGNMENT_TYPE,),
        lambda args, _cfg: check_role_assignment_principal_type(args.props),
    ),
    _policy(
        "storage-private-tls12",
        "Storage accounts forbid public blob access and require TLS 1.2+; blob containers are private.",
        (STORAGE_ACCOUNT_TYPE, BLOB_CONTAINER_TYPE),
        lambda args, _cfg: check_storage(args.resource_type, args.props),
    ),
    _policy(
        "postgres-no-public-access",
        "PostgreSQL Flexible Server has no public network access and no firewall openings.",
        (POSTGRES_SERVER_TYPE, POSTGRES_FIREWALL_TYPE),
        lambda args, _cfg: check_postgres(args.resource_type, args.props),
        severity=Severity.CRITICAL,
    ),
    _policy(
        "mlflow-not-exposed",
        "In an Azure stack the MLflow Service is ClusterIP, never LoadBalancer or NodePort.",
        (SERVICE_TYPE,),
        lambda args, cfg: check_mlflow_not_exposed(args.props, cfg, current_stack()),
        schema=MLFLOW_EXPOSURE_SCHEMA,
    ),
    _policy(
        "stateful-resources-protected",
        "PostgreSQL servers, storage accounts and container registries are protected in staging and prod.",
        STATEFUL_TYPES,
        lambda args, cfg: check_stateful_protected(
            args.resource_type, bool(args.opts.protect), cfg, current_stack()
        ),
        schema=PROTECTION_SCHEMA,
    ),
]


def _validate_k8s_provider(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    for message, urn in check_k8s_provider_after_cluster_grant(args.resources):
        report_violation(message, urn)


def _validate_metrics_collected(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    for message, urn in check_aks_metrics_collected(args.resources):
        report_violation(message, urn)


def _validate_scrape_admitted(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    for message, urn in check_scraped_pods_admitted(args.resources):
        report_violation(message, urn)


STACK_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(
        name="k8s-provider-after-cluster-grant",
        description="The Kubernetes provider of an AKS stack depends on the deployer's AKS RBAC "
        "Cluster Admin grant.",
        validate=_validate_k8s_provider,
        enforcement_level=EnforcementLevel.MANDATORY,
        severity=Severity.HIGH,
    ),
    StackValidationPolicy(
        name="aks-metrics-collected",
        description="An AKS cluster with managed Prometheus has a data collection rule association to a "
        "Prometheus data collection rule.",
        validate=_validate_metrics_collected,
        enforcement_level=EnforcementLevel.MANDATORY,
        severity=Severity.HIGH,
    ),
    StackValidationPolicy(
        name="scraped-pods-admit-the-collector",
        description="In an AKS stack, pods annotated prometheus.io/scrape admit the managed Prometheus "
        "collector through their namespace's network policies.",
        validate=_validate_scrape_admitted,
        enforcement_level=EnforcementLevel.MANDATORY,
        severity=Severity.MEDIUM,
    ),
]
