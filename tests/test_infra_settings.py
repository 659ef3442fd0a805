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
from infra.tracking import allowed_hosts, auth_config_ini, training_tracking_uri
from model.spec import load_spec
from tools.stack_mocks import aks_user_kubeconfig, source_outputs

BASE = {"mlflowAllowedCidrs": json.dumps(["203.0.113.0/24"])}
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
        ({"mlflowAllowedCidrs": []}, "ml-delivery:mlflowAllowedCidrs", "pulumi config set"),
        ({"mlflowAllowedCidrs": ["everyone"]}, "ml-delivery:mlflowAllowedCidrs", "203.0.113.0/24"),
        ({"mlflowAllowedCidrs": ["203.0.113.7/24"]}, "ml-delivery:mlflowAllowedCidrs", "host bits set"),
        ({"mlflowAllowedCidrs": ["300.0.113.0/24"]}, "ml-delivery:mlflowAllowedCidrs", "not a CIDR"),
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
        ({"mlflowServiceType": "ClusterIP"}, "ml-delivery:trackingUri", "port-forward"),
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
    s = settings(vnetCidr="172.16.0.0/16", mlflowAllowedCidrs=["198.51.100.0/24", "2001:db8::/32"])
    assert s.cluster.vnet_cidr == "172.16.0.0/16"
    assert s.tracking.allowed_cidrs == ("198.51.100.0/24", "2001:db8::/32")


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


def test_training_uri_follows_the_exposure() -> None:
    assert (
        training_tracking_uri(settings())
        == "http://ml-delivery-dev-mlflow.westeurope.cloudapp.azure.com:5000"
    )
    local = settings("local", mode="local")
    assert training_tracking_uri(local) == "http://127.0.0.1:30500"
    forwarded = settings(mlflowServiceType="ClusterIP", trackingUri="http://127.0.0.1:5000/")
    assert training_tracking_uri(forwarded) == "http://127.0.0.1:5000"
    assert "127.0.0.1:5000" in allowed_hosts(forwarded)


def test_allowed_hosts_cover_in_cluster_and_public_names() -> None:
    hosts = allowed_hosts(settings(mlflowAllowedHosts=["mlflow.example.com"]))
    assert "mlflow.mlflow.svc.cluster.local:5000" in hosts
    assert "ml-delivery-dev-mlflow.westeurope.cloudapp.azure.com:5000" in hosts
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
        ({"mlflowImageRef": "ghcr.io/mlflow/mlflow:v3"}, "mlflowImageRef"),
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
