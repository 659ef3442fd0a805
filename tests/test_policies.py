"""Unit tests of each CrossGuard policy on compliant, non-compliant and missing-property inputs.

Each policy is called the way the analyzer calls it: ResourceValidationArgs whose props went through
the SDK's unknown-checking proxy (Mappings and Sequences, not dicts and lists), with a collecting
report_violation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import pytest
from pulumi.runtime import settings as pulumi_settings
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from model import container as contract
from policy import policies
from policy.policies import POLICIES

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"mlacr.azurecr.io/cancer-classifier@{DIGEST}"
BY_NAME = {policy.name: policy for policy in POLICIES}


def collect(sink: list[str], message: str, _urn: str | None = None) -> None:
    """A report_violation, as the analyzer's, that keeps the messages."""
    sink.append(message)


def collect_at(sink: list[tuple[str, str | None]], message: str, urn: str | None = None) -> None:
    """A report_violation, as the analyzer's, that keeps the messages and the URNs they name."""
    sink.append((message, urn))


def run_policy(
    name: str,
    resource_type: str,
    props: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Violations one policy reports for one resource, as the analyzer would collect them."""
    found: list[str] = []
    args = ResourceValidationArgs(
        resource_type,
        unknown_checking_proxy(copy.deepcopy(dict(props))),
        f"urn:pulumi:dev::ml-delivery::{resource_type}::r",
        "r",
        PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None),
        None,
        dict(config) if config is not None else None,
    )
    BY_NAME[name].validate(args, partial(collect, found))
    return found


def good_container(name: str = "server") -> dict[str, Any]:
    return {
        "name": name,
        "image": IMAGE,
        "ports": [{"containerPort": contract.SERVICE_PORT}],
        "env": [
            {"name": "BENTOML_HOME", "value": contract.RUNTIME_ENV["BENTOML_HOME"]},
            {
                "name": "MLFLOW_TRACKING_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "mlflow-auth", "key": "password"}},
            },
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": contract.RUN_AS_USER,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "readinessProbe": {"httpGet": {"path": contract.READINESS_PATH, "port": contract.SERVICE_PORT}},
        "livenessProbe": {"httpGet": {"path": contract.LIVENESS_PATH, "port": contract.SERVICE_PORT}},
    }


def pod(**spec: Any) -> dict[str, Any]:
    return {"securityContext": {"runAsNonRoot": True}, "containers": [good_container()], **spec}


def workload(resource_type: str, pod_spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """A compliant object of ``resource_type`` whose pod spec is ``pod_spec``."""
    spec = pod_spec if pod_spec is not None else pod()
    body: dict[str, Any] = {"spec": spec}
    for key in reversed(policies.POD_SPEC_PATHS[resource_type][:-1]):
        body = {key: body}
    return {"metadata": {"name": "serving", "namespace": "ml"}, **body}


def first_container(resource_type: str, props: dict[str, Any]) -> dict[str, Any]:
    return next(c for _, c in policies.containers(resource_type, props, include_init=False))


DEPLOYMENT = "kubernetes:apps/v1:Deployment"
WORKLOAD_POLICIES = [
    "images-pinned-by-digest",
    "containers-hardened",
    "containers-resources-set",
    "containers-probed",
    "no-plaintext-secrets",
]


# ---------------------------------------------------------------- the pack as a whole


def test_pack_policies_are_mandatory_named_and_described() -> None:
    names = [policy.name for policy in POLICIES]
    assert len(names) == len(set(names)), "policy names must be unique within the pack"
    for policy in POLICIES:
        assert policy.enforcement_level == EnforcementLevel.MANDATORY, policy.name
        assert policy.description.endswith("."), policy.name


@pytest.mark.parametrize("resource_type", sorted(policies.POD_SPEC_PATHS))
@pytest.mark.parametrize("name", WORKLOAD_POLICIES)
def test_compliant_workload_of_every_kind_passes(name: str, resource_type: str) -> None:
    assert run_policy(name, resource_type, workload(resource_type)) == []


@pytest.mark.parametrize("name", WORKLOAD_POLICIES)
def test_workload_without_containers_is_reported_not_skipped(name: str) -> None:
    props = workload(DEPLOYMENT, {"securityContext": {"runAsNonRoot": True}})
    if name == "no-plaintext-secrets":
        assert run_policy(name, DEPLOYMENT, props) == []  # nothing to leak
        return
    [message] = run_policy(name, DEPLOYMENT, props)
    assert "spec.template.spec.containers is missing or empty" in message


@pytest.mark.parametrize("name", WORKLOAD_POLICIES)
def test_policies_ignore_other_resource_types(name: str) -> None:
    assert run_policy(name, "kubernetes:core/v1:Namespace", {"metadata": {"name": "ml"}}) == []


def test_unknown_value_raises_like_the_engine_expects() -> None:
    props = workload(DEPLOYMENT)
    first_container(DEPLOYMENT, props)["image"] = UNKNOWN_STRING_VALUE
    with pytest.raises(UnknownValueError):
        run_policy("images-pinned-by-digest", DEPLOYMENT, props)


# ---------------------------------------------------------------- images-pinned-by-digest


@pytest.mark.parametrize(
    "image",
    [
        "mlacr.azurecr.io/cancer-classifier:latest",
        "mlacr.azurecr.io/cancer-classifier",
        "mlacr.azurecr.io/cancer-classifier@sha256:abc",  # truncated digest
        "mlacr.azurecr.io/cancer-classifier@sha512:" + "ab" * 64,
    ],
)
def test_image_without_full_sha256_digest_is_rejected(image: str) -> None:
    props = workload(DEPLOYMENT)
    first_container(DEPLOYMENT, props)["image"] = image
    [message] = run_policy("images-pinned-by-digest", DEPLOYMENT, props)
    assert image in message and "containers[0] ('server').image" in message
    assert "repository@sha256:<digest>" in message


def test_tag_plus_digest_is_accepted_and_init_containers_are_checked() -> None:
    props = workload(DEPLOYMENT, pod(initContainers=[{**good_container("init"), "image": "busybox:1.36"}]))
    first_container(DEPLOYMENT, props)["image"] = f"mlacr.azurecr.io/cancer-classifier:abc123@{DIGEST}"
    [message] = run_policy("images-pinned-by-digest", DEPLOYMENT, props)
    assert "initContainers[0] ('init').image 'busybox:1.36'" in message


def test_missing_image_is_reported() -> None:
    props = workload(DEPLOYMENT)
    del first_container(DEPLOYMENT, props)["image"]
    [message] = run_policy("images-pinned-by-digest", DEPLOYMENT, props)
    assert ".image is missing" in message


# ---------------------------------------------------------------- containers-hardened


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("runAsNonRoot", False, "runAsNonRoot is not true"),
        ("runAsUser", 0, "runs as uid 0"),
        ("readOnlyRootFilesystem", False, "readOnlyRootFilesystem is not true"),
        ("allowPrivilegeEscalation", True, "allowPrivilegeEscalation is not false"),
        ("privileged", True, "privileged is true"),
        ("capabilities", {"drop": ["NET_RAW"]}, 'drop does not contain "ALL"'),
    ],
)
def test_each_weak_security_setting_is_named(field: str, value: Any, expected: str) -> None:
    props = workload(DEPLOYMENT)
    first_container(DEPLOYMENT, props)["securityContext"][field] = value
    [message] = run_policy("containers-hardened", DEPLOYMENT, props)
    assert expected in message and "Deployment 'ml/serving'" in message


def test_missing_security_context_reports_every_rule_unless_pod_level_covers_it() -> None:
    props = workload(DEPLOYMENT)
    del first_container(DEPLOYMENT, props)["securityContext"]
    messages = run_policy("containers-hardened", DEPLOYMENT, props)
    # runAsNonRoot is inherited from the pod's securityContext; the other three are container-only.
    assert len(messages) == 3
    props["spec"]["template"]["spec"].pop("securityContext")
    assert len(run_policy("containers-hardened", DEPLOYMENT, props)) == 4


def test_pod_level_run_as_user_zero_is_caught() -> None:
    props = workload(DEPLOYMENT, pod(securityContext={"runAsNonRoot": True, "runAsUser": 0}))
    del first_container(DEPLOYMENT, props)["securityContext"]["runAsUser"]
    assert any("uid 0" in m for m in run_policy("containers-hardened", DEPLOYMENT, props))


def test_capability_drop_is_case_insensitive() -> None:
    props = workload(DEPLOYMENT)
    first_container(DEPLOYMENT, props)["securityContext"]["capabilities"] = {"drop": ["all"]}
    assert run_policy("containers-hardened", DEPLOYMENT, props) == []


# ---------------------------------------------------------------- containers-resources-set


def test_missing_limits_and_partial_requests_are_named() -> None:
    props = workload(DEPLOYMENT)
    first_container(DEPLOYMENT, props)["resources"] = {"requests": {"cpu": "100m"}}
    messages = run_policy("containers-resources-set", DEPLOYMENT, props)
    assert len(messages) == 2
    assert "resources.requests lacks memory" in messages[0]
    assert "resources.limits lacks cpu and memory" in messages[1]


def test_no_resources_at_all_is_reported_for_init_containers_too() -> None:
    init = good_container("migrate")
    del init["resources"]
    props = workload(DEPLOYMENT, pod(initContainers=[init]))
    messages = run_policy("containers-resources-set", DEPLOYMENT, props)
    assert len(messages) == 2 and all("initContainers[0] ('migrate')" in m for m in messages)


# ---------------------------------------------------------------- containers-probed


def test_missing_probes_are_reported_and_init_containers_are_exempt() -> None:
    init = good_container("migrate")
    del init["readinessProbe"], init["livenessProbe"]
    props = workload(DEPLOYMENT, pod(initContainers=[init]))
    del first_container(DEPLOYMENT, props)["livenessProbe"]
    [message] = run_policy("containers-probed", DEPLOYMENT, props)
    assert "containers[0] ('server').livenessProbe is missing" in message


# ---------------------------------------------------------------- no-plaintext-secrets


@pytest.mark.parametrize(
    ("env_name", "value"),
    [
        ("MLFLOW_TRACKING_PASSWORD", "hunter2"),
        ("AZURE_STORAGE_ACCOUNT_KEY", "c2VjcmV0"),
        ("DB_CONNECTION_STRING", "Server=x"),
        ("BACKEND_STORE_URI", "postgresql://mlflow:hunter2@db.example:5432/mlflow"),
        ("ARTIFACTS", "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0"),
        ("BLOB_URL", "https://a.blob.core.windows.net/c?sv=2024&sig=abc"),
    ],
)
def test_plaintext_secret_env_is_rejected(env_name: str, value: str) -> None:
    props = workload(DEPLOYMENT)
    first_container(DEPLOYMENT, props)["env"].append({"name": env_name, "value": value})
    [message] = run_policy("no-plaintext-secrets", DEPLOYMENT, props)
    assert f"env[2] '{env_name}'" in message and "secretKeyRef" in message


@pytest.mark.parametrize(
    ("env_name", "value"),
    [
        ("TOKENIZERS_PARALLELISM", "false"),
        ("MLFLOW_TRACKING_USERNAME", "admin"),
        ("BACKEND_STORE_URI", "postgresql://mlflow:$(DB_PASSWORD)@db.example:5432/mlflow"),
        ("MLFLOW_TRACKING_URI", "http://mlflow.ml.svc:5000"),
        ("SECRET_NAME", None),  # valueFrom only: no plain value at all
    ],
)
def test_non_secret_or_referenced_env_is_accepted(env_name: str, value: str | None) -> None:
    props = workload(DEPLOYMENT)
    entry: dict[str, Any] = {"name": env_name}
    if value is None:
        entry["valueFrom"] = {"secretKeyRef": {"name": "s", "key": "k"}}
    else:
        entry["value"] = value
    first_container(DEPLOYMENT, props)["env"].append(entry)
    assert run_policy("no-plaintext-secrets", DEPLOYMENT, props) == []


def test_credentials_in_args_and_config_maps_are_rejected() -> None:
    props = workload(DEPLOYMENT)
    first_container(DEPLOYMENT, props)["args"] = [
        "--backend-store-uri",
        "postgresql://mlflow:hunter2@db:5432/mlflow",
        "--password=hunter2",
        "--password=$(DB_PASSWORD)",
    ]
    messages = run_policy("no-plaintext-secrets", DEPLOYMENT, props)
    assert [m.split(".args")[1][:4] for m in messages] == ["[1] ", "[2] "]

    config_map = {"metadata": {"name": "mlflow"}, "data": {"DB_PASSWORD": "x", "PORT": "5000"}}
    [message] = run_policy("no-plaintext-secrets", policies.CONFIG_MAP_TYPE, config_map)
    assert "data.DB_PASSWORD" in message
    assert run_policy("no-plaintext-secrets", policies.CONFIG_MAP_TYPE, {"metadata": {"name": "e"}}) == []


# ---------------------------------------------------------------- no-unapproved-load-balancer


def service(service_type: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"port": 80, "targetPort": contract.SERVICE_PORT}]}
    if service_type:
        spec["type"] = service_type
    return {"metadata": {"name": "serving", "namespace": "ml"}, "spec": spec}


@pytest.mark.parametrize("service_type", ["ClusterIP", None])
def test_cluster_ip_or_default_service_passes(service_type: str | None) -> None:
    assert run_policy("no-unapproved-load-balancer", policies.SERVICE_TYPE, service(service_type)) == []


def test_load_balancer_needs_an_explicit_allow_in_config() -> None:
    lb = service("LoadBalancer")
    lb["spec"]["loadBalancerSourceRanges"] = ["203.0.113.0/24"]
    [message] = run_policy("no-unapproved-load-balancer", policies.SERVICE_TYPE, lb)
    assert "'ml/serving'" in message and "allowedServices" in message
    for allowed in (["ml/serving"], ["serving"], ["ml/*"]):
        config = {"allowedServices": allowed}
        assert run_policy("no-unapproved-load-balancer", policies.SERVICE_TYPE, lb, config) == []
    other = {"allowedServices": ["other/serving"]}
    assert len(run_policy("no-unapproved-load-balancer", policies.SERVICE_TYPE, lb, other)) == 1


@pytest.mark.parametrize("ranges", [None, [], ["10.0.0.0/8", "0.0.0.0/0"]])
def test_allowed_load_balancer_must_limit_source_ranges(ranges: list[str] | None) -> None:
    lb = service("LoadBalancer")
    if ranges is not None:
        lb["spec"]["loadBalancerSourceRanges"] = ranges
    config = {"allowedServices": ["ml/serving"]}
    [message] = run_policy("no-unapproved-load-balancer", policies.SERVICE_TYPE, lb, config)
    assert "spec.loadBalancerSourceRanges" in message


# ---------------------------------------------------------------- acr-admin-user-disabled


@pytest.mark.parametrize(
    ("props", "count"), [({"adminUserEnabled": False}, 0), ({}, 0), ({"adminUserEnabled": True}, 1)]
)
def test_acr_admin_user(props: dict[str, Any], count: int) -> None:
    # Absent means Azure's default (disabled), so only an explicit true is a violation.
    messages = run_policy("acr-admin-user-disabled", policies.ACR_TYPE, {"sku": {"name": "Basic"}, **props})
    assert len(messages) == count
    if count:
        assert "adminUserEnabled: false" in messages[0]


# ---------------------------------------------------------------- aks-azure-rbac


def analyzing(monkeypatch: pytest.MonkeyPatch, stack: str) -> None:
    """The analyzer's view of ``stack``: Pulumi's runtime configured for it and PULUMI_STACK set."""
    monkeypatch.setattr(pulumi_settings.SETTINGS, "stack", stack)
    monkeypatch.setenv("PULUMI_STACK", stack)


def test_the_stack_comes_from_the_pulumi_runtime_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pulumi_settings.SETTINGS, "stack", "prod")
    monkeypatch.setenv("PULUMI_STACK", "local")
    assert policies.current_stack() == "prod"
    assert len(run_policy("aks-azure-rbac", policies.AKS_TYPE, {})) == 3  # not waived as "local"


def test_the_stack_falls_back_to_pulumi_stack_when_the_runtime_is_unconfigured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pulumi_settings.SETTINGS, "stack", policies.UNCONFIGURED_STACK)
    monkeypatch.setenv("PULUMI_STACK", "local")
    assert policies.current_stack() == "local"
    monkeypatch.delenv("PULUMI_STACK")
    assert policies.current_stack() == ""


GOOD_AKS = {
    "enableRBAC": True,
    "aadProfile": {"managed": True, "enableAzureRBAC": True},
    "disableLocalAccounts": True,
}


def test_aks_compliant_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    analyzing(monkeypatch, "prod")
    assert run_policy("aks-azure-rbac", policies.AKS_TYPE, GOOD_AKS) == []


def test_aks_with_local_accounts_and_no_azure_rbac_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    analyzing(monkeypatch, "prod")
    bad = {"enableRBAC": False, "aadProfile": {"managed": True}, "disableLocalAccounts": False}
    messages = run_policy("aks-azure-rbac", policies.AKS_TYPE, bad)
    assert [m.split(":")[1].split()[0] for m in messages] == [
        "enableRBAC",
        "aadProfile.enableAzureRBAC",
        "disableLocalAccounts",
    ]


def test_aks_missing_properties_are_violations(monkeypatch: pytest.MonkeyPatch) -> None:
    analyzing(monkeypatch, "dev")
    messages = run_policy("aks-azure-rbac", policies.AKS_TYPE, {"dnsPrefix": "ml"})
    assert len(messages) == 3  # aadProfile.managed, aadProfile.enableAzureRBAC, disableLocalAccounts


def test_aks_rules_are_waived_only_for_configured_local_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    analyzing(monkeypatch, "local")
    assert run_policy("aks-azure-rbac", policies.AKS_TYPE, {}) == []  # default localStacks: ["local"]
    assert len(run_policy("aks-azure-rbac", policies.AKS_TYPE, {}, {"localStacks": []})) == 3
    analyzing(monkeypatch, "laptop")
    assert run_policy("aks-azure-rbac", policies.AKS_TYPE, {}, {"localStacks": ["laptop"]}) == []


# ---------------------------------------------------------------- storage-private-tls12


def test_storage_account_compliant_passes() -> None:
    props = {"allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_2", "enableHttpsTrafficOnly": True}
    assert run_policy("storage-private-tls12", policies.STORAGE_ACCOUNT_TYPE, props) == []


def test_storage_account_public_and_old_tls_is_rejected() -> None:
    props = {"allowBlobPublicAccess": True, "minimumTlsVersion": "TLS1_0", "enableHttpsTrafficOnly": False}
    messages = run_policy("storage-private-tls12", policies.STORAGE_ACCOUNT_TYPE, props)
    assert len(messages) == 3
    assert "minimumTlsVersion is TLS1_0" in messages[1] and '"TLS1_2"' in messages[1]


def test_storage_account_missing_properties_are_violations() -> None:
    messages = run_policy("storage-private-tls12", policies.STORAGE_ACCOUNT_TYPE, {"kind": "StorageV2"})
    assert len(messages) == 2
    assert "allowBlobPublicAccess is not false" in messages[0] and "not set" in messages[1]


@pytest.mark.parametrize(("access", "count"), [(None, 0), ("None", 0), ("Blob", 1), ("Container", 1)])
def test_blob_container_public_access(access: str | None, count: int) -> None:
    props: dict[str, Any] = {"containerName": "mlflow"}
    if access is not None:
        props["publicAccess"] = access
    assert len(run_policy("storage-private-tls12", policies.BLOB_CONTAINER_TYPE, props)) == count


# ---------------------------------------------------------------- postgres-no-public-access


@pytest.mark.parametrize(
    "network",
    [
        {"publicNetworkAccess": "Disabled"},
        {"delegatedSubnetResourceId": "/subscriptions/s/resourceGroups/g/providers/.../subnets/db"},
    ],
)
def test_private_postgres_passes(network: dict[str, str]) -> None:
    props = {"version": "16", "network": network}
    assert run_policy("postgres-no-public-access", policies.POSTGRES_SERVER_TYPE, props) == []


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"network": {"publicNetworkAccess": "Enabled"}}, "publicNetworkAccess is Enabled"),
        ({"version": "16"}, "not set (Enabled by default)"),
    ],
)
def test_public_or_unspecified_postgres_is_rejected(props: dict[str, Any], expected: str) -> None:
    [message] = run_policy("postgres-no-public-access", policies.POSTGRES_SERVER_TYPE, props)
    assert expected in message and '"Disabled"' in message


def test_postgres_firewall_rules_are_rejected() -> None:
    rule = {"firewallRuleName": "all", "startIpAddress": "0.0.0.0", "endIpAddress": "255.255.255.255"}
    [message] = run_policy("postgres-no-public-access", policies.POSTGRES_FIREWALL_TYPE, rule)
    assert "'all' (0.0.0.0-255.255.255.255)" in message


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("DB_PASSWORD", True),
        ("api-key", True),
        ("GITHUB_TOKEN", True),
        ("TOKENIZERS_PARALLELISM", False),
        ("KEYCLOAK_URL", False),
        ("SORT_KEY", False),
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert policies.is_secret_name(name) is secret


# ---------------------------------------------------------------- mlflow-not-exposed


def mlflow_service(
    service_type: str | None, namespace: str = "mlflow", name: str = "mlflow"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": "mlflow"}, "ports": [{"port": 5000}]}
    if service_type is not None:
        spec["type"] = service_type
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_an_azure_stack_mlflow_service_reachable_from_outside_is_rejected(
    monkeypatch: pytest.MonkeyPatch, stack: str, service_type: str
) -> None:
    analyzing(monkeypatch, stack)
    [message] = run_policy("mlflow-not-exposed", policies.SERVICE_TYPE, mlflow_service(service_type))
    assert f"spec.type is {service_type}" in message and "ClusterIP" in message and "port-forward" in message


@pytest.mark.parametrize("service_type", [None, "ClusterIP"])
def test_a_clusterip_mlflow_service_passes(monkeypatch: pytest.MonkeyPatch, service_type: str | None) -> None:
    analyzing(monkeypatch, "dev")
    assert run_policy("mlflow-not-exposed", policies.SERVICE_TYPE, mlflow_service(service_type)) == []


def test_the_mlflow_rule_spares_local_stacks_and_other_services(monkeypatch: pytest.MonkeyPatch) -> None:
    analyzing(monkeypatch, "local")
    assert run_policy("mlflow-not-exposed", policies.SERVICE_TYPE, mlflow_service("NodePort")) == []
    analyzing(monkeypatch, "dev")
    other = mlflow_service("NodePort", namespace="model-serving", name="model-server")
    assert run_policy("mlflow-not-exposed", policies.SERVICE_TYPE, other) == []
    moved = {"mlflowServices": ["tracking/*"]}
    found = run_policy(
        "mlflow-not-exposed", policies.SERVICE_TYPE, mlflow_service("LoadBalancer", "tracking", "x"), moved
    )
    assert len(found) == 1


# ---------------------------------------------------------------- stateful-resources-protected


def run_with_protect(resource_type: str, protect: bool) -> list[str]:
    """The protection rule as the analyzer runs it: ``protect`` arrives in ResourceValidationArgs.opts."""
    found: list[str] = []
    args = ResourceValidationArgs(
        resource_type,
        unknown_checking_proxy({}),
        f"urn:pulumi:prod::ml-delivery::{resource_type}::r",
        "r",
        PolicyResourceOptions(protect, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None),
        None,
        None,
    )
    BY_NAME["stateful-resources-protected"].validate(args, partial(collect, found))
    return found


@pytest.mark.parametrize("resource_type", policies.STATEFUL_TYPES)
@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_stateful_resources_must_be_protected_in_staging_and_prod(
    monkeypatch: pytest.MonkeyPatch, stack: str, resource_type: str
) -> None:
    analyzing(monkeypatch, stack)
    [message] = run_with_protect(resource_type, protect=False)
    assert resource_type in message and "protect=True" in message and stack in message
    assert run_with_protect(resource_type, protect=True) == []


def test_protection_is_not_required_elsewhere_or_of_other_types(monkeypatch: pytest.MonkeyPatch) -> None:
    analyzing(monkeypatch, "local")
    assert run_with_protect(policies.STATEFUL_TYPES[0], protect=False) == []
    analyzing(monkeypatch, "prod")
    assert run_with_protect("azure-native:network:PrivateEndpoint", protect=False) == []


# ---------------------------------------------------------------- pushed-images-have-registry-credentials

ACR = "registrydev.azurecr.io"


def image_props(registry: dict[str, Any]) -> dict[str, Any]:
    return {
        "imageName": f"{registry.get('server', ACR)}/cancer-classifier:v1",
        "build": {"context": ".build/images/v1"},
        "registry": registry,
        "skipPush": False,
    }


@pytest.mark.parametrize(
    "registry",
    [
        {"server": ACR, "username": "00000000-0000-0000-0000-000000000000", "password": "token"},
        # a preview: the token is unknown, its presence is what counts
        {"server": ACR, "username": "00000000-0000-0000-0000-000000000000", "password": UNKNOWN_STRING_VALUE},
        {"server": "localhost:5001"},  # the local registry needs none (credentialFreeRegistries)
    ],
)
def test_pushed_image_with_credentials_passes(registry: dict[str, Any]) -> None:
    assert (
        run_policy(
            "pushed-images-have-registry-credentials", policies.DOCKER_IMAGE_TYPE, image_props(registry)
        )
        == []
    )


@pytest.mark.parametrize(
    ("registry", "missing"),
    [({"server": ACR}, "username/password"), ({"server": ACR, "username": "u"}, "password"), ({}, "server")],
)
def test_pushed_image_without_credentials_is_rejected(registry: dict[str, Any], missing: str) -> None:
    props = {**image_props(registry), "imageName": f"{ACR}/cancer-classifier:v1"}
    [message] = run_policy("pushed-images-have-registry-credentials", policies.DOCKER_IMAGE_TYPE, props)
    assert f"registry.{missing}" in message and "docker login" in message


def test_an_image_that_is_not_pushed_needs_no_credentials() -> None:
    props = {**image_props({"server": ACR}), "skipPush": True}
    assert run_policy("pushed-images-have-registry-credentials", policies.DOCKER_IMAGE_TYPE, props) == []


# ---------------------------------------------------------------- role-assignments-have-principal-type


@pytest.mark.parametrize(
    ("kind", "count"), [("ServicePrincipal", 0), ("User", 0), ("Group", 0), (None, 1), ("Robot", 1)]
)
def test_role_assignment_principal_type(kind: str | None, count: int) -> None:
    props: dict[str, Any] = {"principalId": "p", "roleDefinitionId": "/x", "scope": "/subscriptions/s"}
    if kind is not None:
        props["principalType"] = kind
    messages = run_policy("role-assignments-have-principal-type", policies.ROLE_ASSIGNMENT_TYPE, props)
    assert len(messages) == count
    if count:
        assert "principalType" in messages[0] and "ServicePrincipal" in messages[0]


# ---------------------------------------------------------------- k8s-provider-after-cluster-grant

ROLE_DEFINITIONS = "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions"
ADMIN_ROLE = f"{ROLE_DEFINITIONS}/{policies.AKS_RBAC_CLUSTER_ADMIN_ROLE}"
OTHER_ROLE = (
    "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/4d97b98b-1d4f-4787-a291-c67834d212e7"
)


def stack_resources(provider_depends_on: list[str], grants: dict[str, str]) -> list[PolicyResource]:
    """An AKS cluster, role assignments ``{name: roleDefinitionId}``, a Kubernetes provider."""

    def resource(type_: str, name: str, props: dict[str, Any]) -> PolicyResource:
        options = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)
        urn = f"urn:pulumi:dev::ml-delivery::{type_}::{name}"
        return PolicyResource(type_, unknown_checking_proxy(props), urn, name, options, None, None, [], {})

    cluster = resource(policies.AKS_TYPE, "aks", {"disableLocalAccounts": True})
    assignments = {
        n: resource(policies.ROLE_ASSIGNMENT_TYPE, n, {"roleDefinitionId": r}) for n, r in grants.items()
    }
    provider = resource(policies.K8S_PROVIDER_TYPE, "k8s", {})
    provider.dependencies = [cluster] + [assignments[n] for n in provider_depends_on]
    return [cluster, *assignments.values(), provider]


def run_stack_policy(resources: list[PolicyResource]) -> list[tuple[str, str | None]]:
    [policy] = [p for p in policies.STACK_POLICIES if p.name == "k8s-provider-after-cluster-grant"]
    found: list[tuple[str, str | None]] = []
    policy.validate(StackValidationArgs(resources, {}), partial(collect_at, found))
    return found


def test_k8s_provider_that_depends_on_the_cluster_grant_passes() -> None:
    resources = stack_resources(["admin"], {"admin": ADMIN_ROLE, "subnet": OTHER_ROLE})
    assert run_stack_policy(resources) == []


def test_k8s_provider_that_races_the_cluster_grant_is_rejected() -> None:
    resources = stack_resources(["subnet"], {"admin": ADMIN_ROLE, "subnet": OTHER_ROLE})
    [(message, urn)] = run_stack_policy(resources)
    assert "does not depend on the deployer's AKS RBAC Cluster Admin grant" in message
    assert urn == resources[-1].urn


def test_an_aks_stack_without_a_cluster_grant_is_rejected() -> None:
    [(message, _)] = run_stack_policy(stack_resources([], {"subnet": OTHER_ROLE}))
    assert "no AKS RBAC Cluster Admin role assignment" in message


def test_a_stack_without_aks_has_no_grant_to_wait_for() -> None:
    resources = [r for r in stack_resources([], {}) if r.resource_type != policies.AKS_TYPE]
    assert run_stack_policy(resources) == []


# ---------------------------------------------------------------- managed Prometheus on AKS


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
@pytest.mark.parametrize("profile", [None, {}, {"metrics": {"enabled": False}}])
def test_an_azure_cluster_without_the_prometheus_addon_is_rejected(
    monkeypatch: pytest.MonkeyPatch, stack: str, profile: dict[str, Any] | None
) -> None:
    analyzing(monkeypatch, stack)
    props: dict[str, Any] = {} if profile is None else {"azureMonitorProfile": profile}
    [message] = run_policy("aks-managed-prometheus", policies.AKS_TYPE, props)
    assert "azureMonitorProfile.metrics.enabled is not true" in message


def test_the_prometheus_addon_passes_and_local_stacks_are_exempt(monkeypatch: pytest.MonkeyPatch) -> None:
    analyzing(monkeypatch, "dev")
    on = {"azureMonitorProfile": {"metrics": {"enabled": True}}}
    assert run_policy("aks-managed-prometheus", policies.AKS_TYPE, on) == []
    analyzing(monkeypatch, "local")
    assert run_policy("aks-managed-prometheus", policies.AKS_TYPE, {}) == []


def policy_resource(
    type_: str, name: str, props: dict[str, Any], depends: Sequence[PolicyResource] = ()
) -> PolicyResource:
    options = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)
    urn = f"urn:pulumi:dev::ml-delivery::{type_}::{name}"
    resource = PolicyResource(type_, unknown_checking_proxy(props), urn, name, options, None, None, [], {})
    resource.dependencies = list(depends)
    return resource


def run_named_stack_policy(name: str, resources: list[PolicyResource]) -> list[tuple[str, str | None]]:
    [policy] = [p for p in policies.STACK_POLICIES if p.name == name]
    found: list[tuple[str, str | None]] = []
    policy.validate(StackValidationArgs(resources, {}), partial(collect_at, found))
    return found


PROMETHEUS_DCR = {
    "dataSources": {"prometheusForwarder": [{"name": "p", "streams": ["Microsoft-PrometheusMetrics"]}]},
    "destinations": {"monitoringAccounts": [{"accountResourceId": "/ws", "name": "a"}]},
}
ADDON_ON = {"azureMonitorProfile": {"metrics": {"enabled": True}}}


def collection(
    dcr_props: dict[str, Any], *, to_cluster: bool = True, to_rule: bool = True
) -> list[PolicyResource]:
    cluster = policy_resource(policies.AKS_TYPE, "aks", ADDON_ON)
    rule = policy_resource(policies.DCR_TYPE, "dcr", dcr_props)
    depends = [cluster] * to_cluster + [rule] * to_rule
    association = policy_resource(policies.DCRA_TYPE, "dcra", {"dataCollectionRuleId": "/dcr"}, depends)
    return [cluster, rule, association]


def test_a_cluster_associated_with_a_prometheus_rule_passes() -> None:
    assert run_named_stack_policy("aks-metrics-collected", collection(PROMETHEUS_DCR)) == []


@pytest.mark.parametrize(
    ("dcr", "kwargs"),
    [
        (PROMETHEUS_DCR, {"to_cluster": False}),
        (PROMETHEUS_DCR, {"to_rule": False}),
        ({**PROMETHEUS_DCR, "destinations": {"monitoringAccounts": []}}, {}),
        ({**PROMETHEUS_DCR, "dataSources": {"syslog": [{"name": "s", "streams": ["Microsoft-Syslog"]}]}}, {}),
    ],
)
def test_a_cluster_whose_metrics_go_nowhere_is_rejected(dcr: dict[str, Any], kwargs: dict[str, bool]) -> None:
    resources = collection(dcr, **kwargs)
    [(message, urn)] = run_named_stack_policy("aks-metrics-collected", resources)
    assert "no data collection rule association ties it" in message and urn == resources[0].urn


def test_a_cluster_without_the_addon_is_left_to_the_addon_rule() -> None:
    cluster = policy_resource(policies.AKS_TYPE, "aks", {})
    assert run_named_stack_policy("aks-metrics-collected", [cluster]) == []


SCRAPED_LABELS = {"app": "model-server", "model-version": "3"}


def scraped_deployment() -> dict[str, Any]:
    return {
        "metadata": {"name": "model-server", "namespace": "model-serving"},
        "spec": {
            "template": {
                "metadata": {
                    "labels": SCRAPED_LABELS,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "3000"},
                }
            }
        },
    }


def network_policy(
    ingress: list[dict[str, Any]], *, namespace: str = "model-serving", app: str = "model-server"
) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


SCRAPER_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"rsName": "ama-metrics"}},
}
PORT_3000 = [{"protocol": "TCP", "port": 3000}]


def scrape_stack(*policies_: dict[str, Any]) -> list[PolicyResource]:
    return [
        policy_resource(policies.AKS_TYPE, "aks", ADDON_ON),
        policy_resource(policies.DEPLOYMENT_TYPE, "model-server", scraped_deployment()),
        policy_resource(
            policies.NETWORK_POLICY_TYPE,
            "deny",
            {
                "metadata": {"name": "deny", "namespace": "model-serving"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            },
        ),
        *(policy_resource(policies.NETWORK_POLICY_TYPE, f"p{i}", p) for i, p in enumerate(policies_)),
    ]


@pytest.mark.parametrize(
    "ingress",
    [
        [{"from": [SCRAPER_PEER], "ports": PORT_3000}],  # the collector only (infra/monitoring.py)
        [{"ports": PORT_3000}],  # the model port from anywhere
        [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 3000}]}],  # every namespace
    ],
)
def test_scraped_pods_that_admit_the_collector_pass(ingress: list[dict[str, Any]]) -> None:
    assert (
        run_named_stack_policy("scraped-pods-admit-the-collector", scrape_stack(network_policy(ingress)))
        == []
    )


@pytest.mark.parametrize(
    "policy",
    [
        None,  # default deny only
        network_policy([{"from": [SCRAPER_PEER], "ports": [{"protocol": "TCP", "port": 8080}]}]),
        network_policy([{"from": [{"podSelector": {"matchLabels": {"rsName": "ama-metrics"}}}]}]),  # own ns
        network_policy([{"from": [{**SCRAPER_PEER, "podSelector": {"matchLabels": {"app": "ingress"}}}]}]),
        network_policy([{"from": [SCRAPER_PEER]}], namespace="other"),
        network_policy([{"from": [SCRAPER_PEER]}], app="mlflow"),
    ],
)
def test_scraped_pods_closed_to_the_collector_are_rejected(policy: dict[str, Any] | None) -> None:
    resources = scrape_stack(*([policy] if policy else []))
    [(message, urn)] = run_named_stack_policy("scraped-pods-admit-the-collector", resources)
    assert "admits the managed Prometheus collector" in message and "port 3000" in message
    assert urn == resources[1].urn


def test_scrape_admission_is_judged_on_aks_stacks_and_annotated_pods_only() -> None:
    without_aks = [r for r in scrape_stack() if r.resource_type != policies.AKS_TYPE]
    assert run_named_stack_policy("scraped-pods-admit-the-collector", without_aks) == []
    unannotated = scraped_deployment()
    del unannotated["spec"]["template"]["metadata"]["annotations"]
    resources = [
        policy_resource(policies.AKS_TYPE, "aks", ADDON_ON),
        policy_resource(policies.DEPLOYMENT_TYPE, "d", unannotated),
    ]
    assert run_named_stack_policy("scraped-pods-admit-the-collector", resources) == []
