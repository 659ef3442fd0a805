"""Settings parsing and the pure helpers of infra/: defaults, clear errors for bad values."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest
import yaml

from infra.cluster import decode_user_kubeconfig, rewrite_kubeconfig
from infra.network import subnet_prefixes
from infra.promotion import PromotionError, validate_source
from infra.settings import ConfigError, parse_settings
from infra.tracking import allowed_hosts, auth_config_ini, training_route
from model.spec import load_spec
from tools.stack_mocks import aks_user_kubeconfig, source_outputs

DEPLOYER = {"objectId": "11111111-2222-3333-4444-555555555555", "principalType": "ServicePrincipal"}
BASE = {"deployerPrincipals": json.dumps([DEPLOYER])}
DEFAULT_GATE = load_spec("model.yaml").gate


def settings(stack: str = "dev", **values: object):
    raw = {**BASE, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}}
    return parse_settings(raw.get, project="ml-delivery", stack=stack)


def config_error(stack: str = "dev", **values: object) -> str:
    with pytest.raises(ConfigError) as info:
        settings(stack, **values)
    return str(info.value)


def test_defaults_are_a_working_azure_training_stack() -> None:
    s = settings()
    assert (s.mode, s.location, s.promote_from) == ("azure", "westeurope", None)
    assert s.cluster.kubernetes_version is None  # AKS picks its version unless pinned
    assert s.registry.sku == "Basic" and s.tracking.image is None
    assert s.gate == DEFAULT_GATE  # the spec's gate, no override
    assert (s.training.spec_path, s.training.spec.name) == ("model.yaml", "cancer-classifier")
    assert (s.tracking.model_name, s.tracking.experiment_name) == ("cancer-classifier", "cancer-classifier")
    assert s.serving.service_type == "ClusterIP"


@pytest.mark.parametrize(
    ("values", "key", "hint"),
    [
        ({"mode": "cloud"}, "ml-delivery:mode", "azure, local"),
        ({"acrSku": "Gold"}, "ml-delivery:acrSku", "Basic, Standard, Premium"),
        ({"servingMinReplicas": "two"}, "ml-delivery:servingMinReplicas", "whole number"),
        ({"servingMinReplicas": 3, "servingMaxReplicas": 2}, "ml-delivery:servingMaxReplicas", "Raise"),
        ({"servingCpuLimit": "lots"}, "ml-delivery:servingCpuLimit", "500m or 1Gi"),
        ({"gate": {"accuracy": {"max": 0.9}}}, "ml-delivery:gate.accuracy.max", "accuracy: {min: ...}"),
        ({"gate": {"rmse": {"max": 9}}}, "ml-delivery:gate.rmse", "accuracy, f1, roc_auc, log_loss"),
        ({"gate": {"accuracy": {"min": "high"}}}, "ml-delivery:gate.accuracy.min", "finite number"),
        ({"modelSpec": "no-such.yaml"}, "ml-delivery:modelSpec", "no such file"),
        ({"promoteFrom": "dev"}, "ml-delivery:promoteFrom", "organization/ml-delivery/dev"),
        ({"promoteFrom": "o/p/dev"}, "ml-delivery:promoteFrom", "another stack"),
        # MLflow is never public in an Azure stack: the old exposure keys say what replaced them.
        ({"mlflowAllowedCidrs": ["203.0.113.0/24"]}, "ml-delivery:mlflowAllowedCidrs", "make mlflow-ui"),
        ({"mlflowDnsLabel": "ml-delivery-dev-mlflow"}, "ml-delivery:mlflowDnsLabel", "config rm"),
        ({"mlflowServiceType": "LoadBalancer"}, "ml-delivery:mlflowServiceType", "Use one of: ClusterIP."),
        ({"mlflowServiceType": "NodePort"}, "ml-delivery:mlflowServiceType", "Use one of: ClusterIP."),
        ({"trackingUri": "http://127.0.0.1:5000"}, "ml-delivery:trackingUri", "only for mode: local"),
        ({"protectStatefulResources": "yes"}, "ml-delivery:protectStatefulResources", "true or false"),
        ({"postgresBackupRetentionDays": 3}, "ml-delivery:postgresBackupRetentionDays", "7..35"),
        ({"blobSoftDeleteDays": 0}, "ml-delivery:blobSoftDeleteDays", "1..365"),
        ({"vnetCidr": "10.20.1.0/16"}, "ml-delivery:vnetCidr", "host bits set"),
        ({"vnetCidr": "10.20.0.0/33"}, "ml-delivery:vnetCidr", "10.20.0.0/16"),
        ({"vnetCidr": "10.20.0.0/24"}, "ml-delivery:vnetCidr", "/21 or larger"),
        ({"vnetCidr": "fd00:10::/48"}, "ml-delivery:vnetCidr", "IPv4"),
        (
            {"vnetCidr": "10.0.0.0/8"},
            "ml-delivery:vnetCidr",
            "overlaps the cluster's service CIDR 10.0.0.0/16",
        ),
        (
            {"vnetCidr": "192.168.16.0/20"},
            "ml-delivery:vnetCidr",
            "overlaps the cluster's pod CIDR 192.168.0.0/16",
        ),
        ({"mlflowImage": "ghcr.io/mlflow/mlflow:latest"}, "ml-delivery:mlflowImage", "sha256"),
        ({"kubernetesVersion": "latest"}, "ml-delivery:kubernetesVersion", "1.33"),
        ({"kubeloginMode": "password"}, "ml-delivery:kubeloginMode", "workloadidentity"),
        ({"registryServer": "localhost:5001"}, "ml-delivery:registryServer", "mode: local"),
        ({"modelParams": {"C": 2}}, "ml-delivery:modelParams", "model spec as `params"),
        ({"dataPath": "data/train.csv"}, "ml-delivery:dataPath", "model spec as `data`"),
        (
            {"imageRefOverride": "acr.azurecr.io/cancer-classifier:v1"},
            "ml-delivery:imageRefOverride",
            "sha256",
        ),
    ],
)
def test_a_bad_value_names_the_key_the_stack_file_and_the_fix(values: dict, key: str, hint: str) -> None:
    message = config_error("dev", **values)
    assert "Pulumi.dev.yaml" in message
    assert f"'{key}'" in message
    assert hint in message


def test_cidrs_outside_the_cluster_ranges_are_accepted() -> None:
    s = settings(vnetCidr="172.16.0.0/16")
    assert s.cluster.vnet_cidr == "172.16.0.0/16"


def test_stateful_resources_are_protected_by_default_on_azure_only() -> None:
    assert settings().protect_stateful and settings("prod").protect_stateful
    assert not settings(protectStatefulResources="false").protect_stateful
    assert not settings("local", mode="local").protect_stateful
    t = settings().tracking
    assert (t.service_type, t.postgres_backup_retention_days, t.blob_soft_delete_days) == (
        "ClusterIP",
        14,
        14,
    )


def test_a_local_clusterip_mlflow_needs_a_tracking_uri() -> None:
    message = config_error("local", mode="local", mlflowServiceType="ClusterIP")
    assert "'ml-delivery:trackingUri'" in message and "port-forward" in message


def test_kubernetes_version_can_be_pinned_and_gate_overrides_apply() -> None:
    s = settings(kubernetesVersion="1.33", gate={"accuracy": {"min": 0.95}, "log_loss": {"max": 0.2}})
    assert s.cluster.kubernetes_version == "1.33"
    bounds = {b.metric: b.value for b in s.gate.bounds}
    assert (bounds["accuracy"], bounds["log_loss"], bounds["f1"]) == (0.95, 0.2, 0.9)  # f1 from the spec
    wine = settings(modelSpec="examples/wine/model.yaml", gate={"f1_macro": {"min": 0.95}})
    assert (wine.gate.task, wine.tracking.model_name) == ("multiclass", "wine-cultivar")


def test_promoting_stack_needs_no_training_route_to_mlflow() -> None:
    s = settings("staging", promoteFrom="organization/ml-delivery/dev", mlflowServiceType="ClusterIP")
    assert s.promotes and s.promote_from == "organization/ml-delivery/dev"


def test_azure_trains_through_the_tunnel_and_local_through_its_node_port() -> None:
    assert training_route(settings()) == ("", "mlflow/mlflow:5000")
    local = settings("local", mode="local")
    assert training_route(local) == ("http://127.0.0.1:30500", "")
    forwarded = settings(
        "local", mode="local", mlflowServiceType="ClusterIP", trackingUri="http://127.0.0.1:5000/"
    )
    assert training_route(forwarded) == ("http://127.0.0.1:5000", "")
    assert "127.0.0.1:5000" in allowed_hosts(forwarded)


def test_allowed_hosts_cover_in_cluster_and_tunnel_names_and_nothing_public() -> None:
    hosts = allowed_hosts(settings(mlflowAllowedHosts=["mlflow.example.com"]))
    assert "mlflow.mlflow.svc.cluster.local:5000" in hosts and "127.0.0.1:*" in hosts
    assert not any("cloudapp.azure.com" in h for h in hosts)
    assert hosts[-1] == "mlflow.example.com" and len(hosts) == len(set(hosts))


def test_auth_config_refuses_interpolation_characters() -> None:
    assert "database_uri = sqlite:////mlflow/auth.db" in auth_config_ini("sqlite:////mlflow/auth.db")
    with pytest.raises(ValueError, match="interpolation"):
        auth_config_ini("postgresql://u:p%40ss@h/db")


@pytest.mark.parametrize("mode", ["azurecli", "workloadidentity", "spn", "msi"])
def test_kubeconfig_login_is_non_interactive(mode: str) -> None:
    doc = yaml.safe_load(rewrite_kubeconfig(aks_user_kubeconfig("https://aks:443"), mode))
    args = doc["users"][0]["user"]["exec"]["args"]
    assert args[:3] == ["get-token", "--login", mode]
    assert "devicecode" not in args and "--client-id" not in args
    assert args[args.index("--server-id") + 1] == "6dae42f8-4368-4678-94ff-3960e28e3630"


def test_kubeconfig_from_the_credentials_invoke_is_decoded() -> None:
    entry = SimpleNamespace(value=base64.b64encode(aks_user_kubeconfig("https://aks:443").encode()).decode())
    text = decode_user_kubeconfig(SimpleNamespace(kubeconfigs=[entry]), "devicecode")
    assert "--client-id" in text and "https://aks:443" in text

    with pytest.raises(ValueError, match="no user kubeconfig"):
        decode_user_kubeconfig(SimpleNamespace(kubeconfigs=[]), "azurecli")


def test_subnets_are_carved_without_overlap() -> None:
    assert subnet_prefixes("10.20.0.0/16") == ("10.20.0.0/22", "10.20.4.0/24")
    with pytest.raises(ValueError, match="too small"):
        subnet_prefixes("10.20.0.0/24")


def test_validate_source_accepts_well_formed_outputs() -> None:
    outputs = source_outputs("dev")
    promoted = validate_source(outputs, "o/p/dev", "staging", DEFAULT_GATE)
    assert promoted.image_ref == outputs["imageRef"]
    assert promoted.registry_id == outputs["registryId"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"imageRef": None}, "no output imageRef"),
        ({"imageRef": "reg.io/cancer-classifier:latest"}, "not pinned by digest"),
        ({"registryId": "registry"}, "not an Azure Container Registry resource id"),
        ({"fingerprint": "abc"}, "not a sha256"),
        ({"metrics": {"accuracy": 0.99}}, "metrics.f1 is missing"),
        (
            {"metrics": {"accuracy": 0.5, "f1": 0.99, "roc_auc": 0.99, "log_loss": 0.1}},
            "accuracy=0.5000 < 0.9000 (threshold): short by 0.4000",
        ),
        ({"task": "regression"}, "output task is 'regression' but this stack's model spec is a binary model"),
    ],
)
def test_validate_source_refuses_bad_outputs(change: dict, expected: str) -> None:
    outputs = {**source_outputs("dev"), **change}
    with pytest.raises(PromotionError) as info:
        validate_source(outputs, "o/p/dev", "staging", DEFAULT_GATE)
    assert expected in str(info.value) and "o/p/dev" in str(info.value)


def test_a_regression_spec_is_promoted_over_its_own_metric_table() -> None:
    gate = load_spec("examples/diabetes/model.yaml").gate
    outputs = {
        **source_outputs("dev"),
        "task": "regression",
        "metrics": {"rmse": 50.0, "mae": 40.0, "r2": 0.5},
    }
    assert validate_source(outputs, "o/p/dev", "staging", gate).metrics == {
        "rmse": 50.0,
        "mae": 40.0,
        "r2": 0.5,
    }
    worse = {**outputs, "metrics": {"rmse": 70.0, "mae": 40.0, "r2": 0.5}}
    with pytest.raises(PromotionError, match=r"rmse=70\.0000 > 60\.0000"):
        validate_source(worse, "o/p/dev", "staging", gate)


def test_image_ref_override_is_optional_and_kept_verbatim() -> None:
    ref = "localhost:5001/cancer-classifier@sha256:" + "0f" * 32
    assert settings().image_ref_override is None
    assert settings(imageRefOverride=ref).image_ref_override == ref


# ---------------------------------------------------------------- cluster posture and deployers


@pytest.mark.parametrize(
    ("values", "key", "hint"),
    [
        ({"deployerPrincipals": []}, "ml-delivery:deployerPrincipals", "principalType: ServicePrincipal"),
        ({"deployerPrincipals": [{"objectId": "me"}]}, "ml-delivery:deployerPrincipals", "objectId: <guid>"),
        (
            {"deployerPrincipals": [{"objectId": "not-a-guid", "principalType": "User"}]},
            "ml-delivery:deployerPrincipals.objectId",
            "<guid>",
        ),
        (
            {"deployerPrincipals": [{**DEPLOYER, "principalType": "Robot"}]},
            "ml-delivery:deployerPrincipals.principalType",
            "User, Group, ServicePrincipal",
        ),
        ({"aksTier": "Gold"}, "ml-delivery:aksTier", "Free, Standard, Premium"),
        ({"availabilityZones": ["4"]}, "ml-delivery:availabilityZones", "'1', '2', '3'"),
        ({"availabilityZones": ["1", "1"]}, "ml-delivery:availabilityZones", "once each"),
        (
            {"maintenanceWindow": {"dayOfWeek": "Someday"}},
            "ml-delivery:maintenanceWindow.dayOfWeek",
            "Sunday",
        ),
        ({"maintenanceWindow": {"startTime": "2am"}}, "ml-delivery:maintenanceWindow.startTime", "02:00"),
        (
            {"maintenanceWindow": {"durationHours": 2}},
            "ml-delivery:maintenanceWindow.durationHours",
            "4 to 24",
        ),
        ({"maintenanceWindow": {"utcOffset": "CET"}}, "ml-delivery:maintenanceWindow.utcOffset", "+01:00"),
        ({"maintenanceWindow": {"day": "Monday"}}, "ml-delivery:maintenanceWindow", "dayOfWeek"),
        (
            {"apiServerAuthorizedIpRanges": ["0.0.0.0/0"]},
            "ml-delivery:apiServerAuthorizedIpRanges",
            "your ranges",
        ),
        (
            {"apiServerAuthorizedIpRanges": ["10.1.2.3/8"]},
            "ml-delivery:apiServerAuthorizedIpRanges",
            "host bits",
        ),
        (
            {"privateCluster": "true", "apiServerAuthorizedIpRanges": ["203.0.113.0/24"]},
            "ml-delivery:apiServerAuthorizedIpRanges",
            "Remove one",
        ),
        ({"privateCluster": "maybe"}, "ml-delivery:privateCluster", "true or false"),
    ],
)
def test_a_bad_cluster_value_names_the_key_the_stack_file_and_the_fix(
    values: dict, key: str, hint: str
) -> None:
    message = config_error("prod", **values)
    assert "Pulumi.prod.yaml" in message and f"'{key}'" in message and hint in message


def test_cluster_posture_defaults_are_safe_and_configurable() -> None:
    d = settings().cluster
    assert (d.tier, d.availability_zones, d.private_cluster, d.api_authorized_ranges) == (
        "Free",
        (),
        False,
        (),
    )
    assert (d.maintenance.day_of_week, d.maintenance.duration_hours) == ("Sunday", 4)
    assert [(p.object_id, p.principal_type) for p in d.deployers] == [
        (DEPLOYER["objectId"], "ServicePrincipal")
    ]
    c = settings(
        aksTier="Standard",
        availabilityZones=["1", "2", "3"],
        maintenanceWindow={
            "dayOfWeek": "Saturday",
            "startTime": "23:30",
            "durationHours": 6,
            "utcOffset": "+01:00",
        },
        privateCluster="true",
    ).cluster
    assert (c.tier, c.availability_zones, c.private_cluster) == ("Standard", ("1", "2", "3"), True)
    assert (c.maintenance.start_time, c.maintenance.utc_offset) == ("23:30", "+01:00")


def test_a_local_stack_needs_no_deployer_principals() -> None:
    s = parse_settings({"mode": "local"}.get, project="ml-delivery", stack="local")
    assert s.cluster.deployers == ()
