"""Every stack file runs under Pulumi's mocks; the declared resources have the required posture and wiring."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import roles
from infra.promotion import PromotionError
from infra.settings import ConfigError
from model import container
from model.fingerprint import training_fingerprint
from model.spec import load_spec
from tools.stack_mocks import (
    DEFAULT_ORGANIZATION,
    DYNAMIC_TYPE,
    KUBELET_OBJECT_ID,
    ROOT,
    STACK_REFERENCE_TYPE,
    Resource,
    StackRun,
    run_stack,
    source_outputs,
)

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
IMAGE = "docker:index/image:Image"
ROLE = "azure-native:authorization:RoleAssignment"
SERVING_NS = "model-serving"
DIGEST_TAIL = "@sha256:"


@cache
def stack(name: str, preview: bool = False) -> StackRun:
    return run_stack(name, preview=preview)


def deployment(run: StackRun, namespace: str) -> Resource:
    found = [d for d in run.of_type(DEPLOYMENT) if d.inputs["metadata"]["namespace"] == namespace]
    assert len(found) == 1, [d.name for d in run.of_type(DEPLOYMENT)]
    return found[0]


def pod(resource: Resource) -> dict[str, Any]:
    return resource.inputs["spec"]["template"]["spec"]


def role(run: StackRun, guid: str) -> list[Resource]:
    return [r for r in run.of_type(ROLE) if r.inputs["roleDefinitionId"].endswith(f"/roleDefinitions/{guid}")]


def error_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


@pytest.mark.parametrize("name", ["dev", "staging", "prod", "local"])
def test_every_resource_is_a_child_of_a_component(name: str) -> None:
    run = stack(name)
    components = {r.urn for r in run.resources if not r.custom}
    for r in run.resources:
        if r.custom and r.type != DYNAMIC_TYPE:
            assert r.parent in components, f"{r.type} {r.name} has parent {r.parent}"
    for r in run.resources:
        if r.type.startswith("kubernetes:") and r.custom:
            assert r.provider and "pulumi:providers:kubernetes" in r.provider, (
                f"{r.name} not on the stack's cluster"
            )


@pytest.mark.parametrize("name", ["dev", "staging", "prod", "local"])
def test_serving_deployment_is_hardened_and_pinned(name: str) -> None:
    run = stack(name)
    d = deployment(run, SERVING_NS)
    spec = d.inputs["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    template = spec["template"]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(container.SERVICE_PORT)
    p = pod(d)
    assert p["automountServiceAccountToken"] is False
    assert p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["runAsUser"] == container.RUN_AS_USER
    assert p["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    [c] = p["containers"]
    assert c["image"] == run.outputs["imageRef"] and DIGEST_TAIL in c["image"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == set(container.WRITABLE_PATHS)
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(
        c["resources"]["limits"]
    )
    assert c["readinessProbe"]["httpGet"]["path"] == container.READINESS_PATH
    assert c["livenessProbe"]["httpGet"]["path"] == container.LIVENESS_PATH
    assert c["startupProbe"]["httpGet"]["port"] == container.SERVICE_PORT
    assert {e["name"]: e["value"] for e in c["env"]} == container.RUNTIME_ENV


@pytest.mark.parametrize("name", ["dev", "staging", "prod", "local"])
def test_serving_has_service_hpa_pdb_and_default_deny(name: str) -> None:
    run = stack(name)

    def in_ns(type_: str) -> list[Resource]:
        return [r for r in run.of_type(type_) if r.inputs["metadata"].get("namespace") == SERVING_NS]

    [service] = in_ns("kubernetes:core/v1:Service")
    assert service.inputs["spec"]["type"] == "ClusterIP"
    [hpa] = in_ns("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert (
        hpa.inputs["spec"]["scaleTargetRef"]["name"] == deployment(run, SERVING_NS).inputs["metadata"]["name"]
    )
    [pdb] = in_ns("kubernetes:policy/v1:PodDisruptionBudget")
    # maxUnavailable 1 whatever the replica count: a drain (AKS auto-upgrade) can always evict a pod.
    assert pdb.inputs["spec"] == {
        "selector": {"matchLabels": deployment(run, SERVING_NS).inputs["spec"]["selector"]["matchLabels"]},
        "maxUnavailable": 1,
    }
    policies = {
        p.inputs["metadata"]["name"]: p.inputs["spec"]
        for p in in_ns("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    }
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert policies["allow-model-port"]["ingress"][0]["ports"][0]["port"] == container.SERVICE_PORT
    [account] = in_ns("kubernetes:core/v1:ServiceAccount")
    assert account.inputs["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_aks_posture(name: str) -> None:
    run = stack(name)
    aks = run.one("azure-native:containerservice:ManagedCluster").inputs
    assert aks["identity"] == {"type": "SystemAssigned"}
    assert aks["disableLocalAccounts"] is True
    assert aks["aadProfile"] == {"managed": True, "enableAzureRBAC": True}
    assert aks["oidcIssuerProfile"]["enabled"] and aks["securityProfile"]["workloadIdentity"]["enabled"]
    assert (aks["networkProfile"]["networkPlugin"], aks["networkProfile"]["networkPluginMode"]) == (
        "azure",
        "overlay",
    )
    assert aks["networkProfile"]["networkPolicy"] == "cilium"
    assert "kubernetesVersion" not in aks
    assert aks["autoUpgradeProfile"]["upgradeChannel"] == "stable"
    system, user = aks["agentPoolProfiles"]
    assert system["mode"] == "System" and system["nodeTaints"] == ["CriticalAddonsOnly=true:NoSchedule"]
    assert (
        user["mode"] == "User" and user["enableAutoScaling"] is True and user["minCount"] <= user["maxCount"]
    )
    [admin] = role(run, roles.AKS_RBAC_CLUSTER_ADMIN)
    assert admin.inputs["scope"] == run.one("azure-native:containerservice:ManagedCluster").id


def test_dev_registry_has_admin_off_and_kubelet_acrpull() -> None:
    run = stack("dev")
    acr = run.one("azure-native:containerregistry:Registry")
    assert acr.inputs["adminUserEnabled"] is False and acr.inputs["sku"] == {"name": "Basic"}
    [pull] = role(run, roles.ACR_PULL)
    assert pull.inputs["principalId"] == KUBELET_OBJECT_ID
    assert pull.inputs["principalType"] == "ServicePrincipal"
    assert pull.inputs["scope"] == acr.id == run.outputs["registryId"]
    assert pull.inputs["roleDefinitionId"].startswith("/subscriptions/00000000-0000-0000-0000-000000000001/")


def test_dev_tracking_uses_private_postgres_keyless_blob_and_workload_identity() -> None:
    run = stack("dev")
    account = run.one("azure-native:storage:StorageAccount").inputs
    assert (account["allowBlobPublicAccess"], account["allowSharedKeyAccess"]) == (False, False)
    assert account["minimumTlsVersion"] == "TLS1_2"
    pg = run.one("azure-native:dbforpostgresql:Server")
    assert pg.inputs["network"]["publicNetworkAccess"] == "Disabled"
    assert "administratorLoginPassword" in pg.secret_paths
    identity = run.one("azure-native:managedidentity:UserAssignedIdentity")
    federated = run.one("azure-native:managedidentity:FederatedIdentityCredential").inputs
    aks = run.one("azure-native:containerservice:ManagedCluster")
    assert federated["issuer"] == aks.outputs["oidcIssuerProfile"]["issuerURL"]
    assert federated["subject"] == "system:serviceaccount:mlflow:mlflow"
    assert federated["audiences"] == ["api://AzureADTokenExchange"]
    [blob] = role(run, roles.STORAGE_BLOB_DATA_CONTRIBUTOR)
    assert blob.inputs["principalId"] == identity.outputs["principalId"]
    assert blob.inputs["scope"] == run.one("azure-native:storage:BlobContainer").id
    [sa] = [
        r
        for r in run.of_type("kubernetes:core/v1:ServiceAccount")
        if r.inputs["metadata"]["namespace"] == "mlflow"
    ]
    assert (
        sa.inputs["metadata"]["annotations"]["azure.workload.identity/client-id"]
        == identity.outputs["clientId"]
    )
    mlflow = deployment(run, "mlflow")
    assert mlflow.inputs["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    args = pod(mlflow)["containers"][0]["args"]
    assert args[args.index("--artifacts-destination") + 1].startswith("wasbs://mlflow-artifacts@")


@pytest.mark.parametrize("name", ["dev", "staging", "prod", "local"])
def test_mlflow_server_has_auth_on_and_secrets_only_by_reference(name: str) -> None:
    run = stack(name)
    mlflow = deployment(run, "mlflow")
    [c] = pod(mlflow)["containers"]
    assert c["args"][c["args"].index("--app-name") + 1] == "basic-auth"
    assert c["args"][c["args"].index("--host") + 1] == "0.0.0.0" and "--allowed-hosts" in c["args"]
    assert c["image"] == run.outputs["mlflowImageRef"] and DIGEST_TAIL in c["image"]
    env = {e["name"]: e for e in c["env"]}
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert (
            "value" not in env[key] and env[key]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-credentials"
        )
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    secret = run.one("kubernetes:core/v1:Secret")
    assert "stringData" in secret.secret_paths  # built from Pulumi secrets, stored encrypted in state
    assert {"mlflowAdminPassword", "kubeconfig"} <= run.secret_outputs


def test_dev_trained_model_feeds_image_feeds_deployment() -> None:
    run = stack("dev")
    config = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    model = run.one(DYNAMIC_TYPE)
    # The stack names the spec; the program fingerprints it exactly as model.train does.
    spec = load_spec(ROOT / config["ml-delivery:modelSpec"])
    assert model.inputs["spec_path"] == str((ROOT / config["ml-delivery:modelSpec"]).resolve())
    assert model.inputs["fingerprint"] == training_fingerprint(spec)
    assert model.inputs["task"] == "binary" and run.outputs["task"] == "binary"
    assert model.inputs["gate"] == spec.gate.as_dict()
    assert spec.gate.as_dict() == {
        "accuracy": {"min": 0.9},
        "f1": {"min": 0.9},
        "roc_auc": {"min": 0.95},
        "log_loss": {"max": 0.35},
        "champion_margin": 0.01,
    }
    assert "tracking_password" in model.secret_paths
    assert model.inputs["tracking_uri"] == "http://ml-delivery-dev-mlflow.westeurope.cloudapp.azure.com:5000"
    # the export callback ran once, with the trained model's outputs
    assert run.exports == [
        {
            "model_uri": model.outputs["model_uri"],
            "fingerprint": model.outputs["model_fingerprint"],
            "tracking_uri": model.inputs["tracking_uri"],
            "base_image": "python:3.11-slim",
        }
    ]
    image = next(
        i for i in run.of_type(IMAGE) if i.inputs["imageName"].split("/")[-1].startswith("cancer-classifier:")
    )
    version = model.outputs["model_fingerprint"][:32]
    assert image.inputs["imageName"].endswith(f"/cancer-classifier:{version}")
    assert image.inputs["build"]["context"] == f".build/images/{version}"
    assert image.inputs["buildOnPreview"] is False and image.inputs["skipPush"] is False
    assert pod(deployment(run, SERVING_NS))["containers"][0]["image"] == image.outputs["repoDigest"]
    assert run.outputs["imageRef"] == image.outputs["repoDigest"]
    assert run.outputs["modelVersion"] == model.outputs["version"]
    assert run.outputs["fingerprint"] == model.outputs["model_fingerprint"]


def test_kubeconfig_output_is_secret_and_non_interactive() -> None:
    run = stack("dev")
    assert "kubeconfig" in run.secret_outputs
    user = yaml.safe_load(run.outputs["kubeconfig"])["users"][0]["user"]["exec"]
    assert user["args"][:3] == ["get-token", "--login", "azurecli"]


@pytest.mark.parametrize(("name", "source"), [("staging", "dev"), ("prod", "staging")])
def test_promoting_stacks_deploy_the_source_digest_without_training_or_building(
    name: str, source: str
) -> None:
    run = stack(name)
    assert run.of_type(DYNAMIC_TYPE) == [] and run.of_type(IMAGE) == []
    assert run.of_type("azure-native:containerregistry:Registry") == []
    assert run.exports == []
    ref = run.one(STACK_REFERENCE_TYPE)
    assert ref.id == f"{DEFAULT_ORGANIZATION}/ml-delivery/{source}"
    expected = source_outputs(source)
    assert pod(deployment(run, SERVING_NS))["containers"][0]["image"] == expected["imageRef"]
    [pull] = role(run, roles.ACR_PULL)
    assert pull.inputs["scope"] == expected["registryId"] and pull.inputs["principalId"] == KUBELET_OBJECT_ID
    assert run.outputs["registryId"] == expected["registryId"]  # so the next stage can promote from here
    assert run.outputs["promotedFrom"] == f"{DEFAULT_ORGANIZATION}/ml-delivery/{source}"


def test_a_promote_from_outside_the_organization_finds_no_stack() -> None:
    with pytest.raises(Exception) as info:
        run_stack("staging", organization="another-org")
    assert any(
        f"{DEFAULT_ORGANIZATION}/ml-delivery/dev" in str(e) and "organization 'another-org'" in str(e)
        for e in error_chain(info.value)
    ), error_chain(info.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"imageRef": None}, "no output imageRef"),
        ({"imageRef": "mlregistry.azurecr.io/cancer-classifier:latest"}, "not pinned by digest"),
        (
            {"metrics": {"accuracy": 0.8, "f1": 0.99, "roc_auc": 0.99, "log_loss": 0.1}},
            "fails the staging gate",
        ),
    ],
)
def test_staging_refuses_a_missing_malformed_or_failing_source(change: dict, expected: str) -> None:
    outputs = {k: v for k, v in {**source_outputs("dev"), **change}.items() if v is not None}
    with pytest.raises(Exception) as info:
        run_stack("staging", stack_outputs={"dev": outputs})
    errors = [e for e in error_chain(info.value) if isinstance(e, PromotionError)]
    assert errors, f"no PromotionError in {error_chain(info.value)}"
    assert expected in str(errors[0]) and f"{DEFAULT_ORGANIZATION}/ml-delivery/dev" in str(errors[0])


def test_first_preview_trains_nothing_exports_nothing_and_pushes_nothing() -> None:
    run = stack("dev", preview=True)
    model = run.one(DYNAMIC_TYPE)
    assert model.inputs["fingerprint"] == stack("dev").one(DYNAMIC_TYPE).inputs["fingerprint"]
    assert "run_id" not in model.outputs  # nothing trained: outputs unknown
    assert run.exports == []  # the bento export callback never ran
    assert {"imageRef", "modelVersion", "runId"} <= run.unknown_outputs
    for image in run.of_type(IMAGE):
        assert image.inputs["buildOnPreview"] is False
    [c] = pod(deployment(run, SERVING_NS))["containers"]  # the pod spec is known; its image is not
    assert not isinstance(c["image"], str), f"the image should be unknown in preview, got {c['image']}"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert stack("dev").exports, "the same program outside preview does run the export callback"


def test_preview_of_an_existing_stack_exports_the_registered_model_and_trains_nothing() -> None:
    """A preview of a stack that was up: the TrainedModel's prior outputs are known, so the bento is
    exported (read from MLflow; docker needs the context digest for `--expect-no-changes`), but the
    model's inputs are the same as in `up` (no diff, no training) and the image never builds on preview."""
    up = stack("dev")
    run = run_stack("dev", preview=True, existing=True)
    model = run.one(DYNAMIC_TYPE)
    assert model.inputs == up.one(DYNAMIC_TYPE).inputs
    assert [e["model_uri"] for e in run.exports] == [model.outputs["model_uri"]]
    assert run.exports == up.exports
    [image] = [
        i
        for i in run.of_type(IMAGE)
        if i.inputs["imageName"].startswith(up.outputs["registryLoginServer"] + "/cancer")
    ]
    assert image.inputs["buildOnPreview"] is False
    assert image.inputs["build"]["context"] == f".build/images/{model.outputs['model_fingerprint'][:32]}"


def test_local_stack_needs_no_azure() -> None:
    run = stack("local")
    assert not [r for r in run.resources if r.type.startswith("azure-native:")]
    assert "kubernetes:core/v1:PersistentVolumeClaim" in {r.type for r in run.resources}
    assert run.outputs["imageRef"].startswith("localhost:5001/cancer-classifier@sha256:")
    args = pod(deployment(run, "mlflow"))["containers"][0]["args"]
    assert args[args.index("--artifacts-destination") + 1] == "/mlflow/artifacts"


def test_a_bad_stack_file_value_stops_the_program_with_its_key(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "__main__.py").symlink_to(ROOT / "__main__.py")
    (tmp_path / "model.yaml").symlink_to(ROOT / "model.yaml")  # the project's model spec (modelSpec)
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "Pulumi.broken.yaml").write_text("config:\n  ml-delivery:acrSku: Gold\n")
    with pytest.raises(Exception) as info:
        run_stack("broken", root=tmp_path)
    errors = [e for e in error_chain(info.value) if isinstance(e, ConfigError)]
    assert errors and "Pulumi.broken.yaml" in str(errors[0]) and "'ml-delivery:acrSku'" in str(errors[0])


ROLLBACK_REF = "mlregistry.azurecr.io/cancer-classifier@sha256:" + "ab" * 32
LINEAGE_OUTPUTS = {"modelVersion", "metrics", "fingerprint", "modelUri", "runId", "inputFingerprint"}


def test_dev_rollback_deploys_the_override_without_training_or_building() -> None:
    run = run_stack("dev", config={"imageRefOverride": ROLLBACK_REF})
    assert run.of_type(DYNAMIC_TYPE) == [] and run.exports == []
    serving_images = [i for i in run.of_type(IMAGE) if "/cancer-classifier:" in i.inputs["imageName"]]
    assert serving_images == []
    serving = deployment(run, SERVING_NS)
    assert pod(serving)["containers"][0]["image"] == ROLLBACK_REF
    assert serving.inputs["spec"]["template"]["metadata"]["labels"]["model-version"] == "rollback"
    assert run.outputs["imageRef"] == run.outputs["imageRefOverride"] == ROLLBACK_REF
    assert not LINEAGE_OUTPUTS & set(run.outputs), "a rollback's model lineage is unknown"
    assert run.outputs["registryId"] == run.one("azure-native:containerregistry:Registry").id
    assert "imageRefOverride" not in stack("dev").outputs


@pytest.mark.parametrize("source", [None, {"imageRef": None, "metrics": None}])
def test_prod_rollback_deploys_the_override_whatever_the_source_model(source: dict | None) -> None:
    outputs = None
    if source is not None:  # a source whose model is missing or broken must not block a rollback
        outputs = {
            "staging": {k: v for k, v in {**source_outputs("staging"), **source}.items() if v is not None}
        }
    run = run_stack("prod", config={"imageRefOverride": ROLLBACK_REF}, stack_outputs=outputs)
    assert pod(deployment(run, SERVING_NS))["containers"][0]["image"] == ROLLBACK_REF
    assert run.outputs["imageRef"] == run.outputs["imageRefOverride"] == ROLLBACK_REF
    assert not LINEAGE_OUTPUTS & set(run.outputs) and "promotedFrom" not in run.outputs
    expected = source_outputs("staging")
    [pull] = role(run, roles.ACR_PULL)  # the kubelet still pulls from the source's registry
    assert pull.inputs["scope"] == expected["registryId"] == run.outputs["registryId"]
    assert run.outputs["mlflowImageRef"] == expected["mlflowImageRef"]
    assert run.of_type(DYNAMIC_TYPE) == [] and run.of_type(IMAGE) == []


def test_promoting_from_a_rolled_back_source_is_refused_with_the_way_out() -> None:
    rolled_back = {
        "imageRef": ROLLBACK_REF,
        "imageRefOverride": ROLLBACK_REF,
        "registryId": source_outputs("dev")["registryId"],
        "mlflowImageRef": source_outputs("dev")["mlflowImageRef"],
    }
    with pytest.raises(Exception) as info:
        run_stack("staging", stack_outputs={"dev": rolled_back})
    errors = [e for e in error_chain(info.value) if isinstance(e, PromotionError)]
    assert errors, f"no PromotionError in {error_chain(info.value)}"
    message = str(errors[0])
    assert "runs a rollback" in message and ROLLBACK_REF in message
    assert "pulumi config set imageRefOverride" in message


@pytest.mark.parametrize("name", ["dev", "prod"])
@pytest.mark.parametrize(
    "bad",
    [
        "mlregistry.azurecr.io/cancer-classifier:latest",
        "cancer-classifier@sha256:" + "ab" * 32,
        "mlregistry.azurecr.io/cancer-classifier@sha256:" + "ab" * 31,
    ],
)
def test_a_bad_image_ref_override_names_the_key_and_the_stack_file(name: str, bad: str) -> None:
    with pytest.raises(Exception) as info:
        run_stack(name, config={"imageRefOverride": bad})
    errors = [e for e in error_chain(info.value) if isinstance(e, ConfigError)]
    assert errors, f"no ConfigError in {error_chain(info.value)}"
    message = str(errors[0])
    assert f"Pulumi.{name}.yaml" in message and "'ml-delivery:imageRefOverride'" in message
    assert "@sha256:<64 hex>" in message


def mlflow_network_policy(run: StackRun) -> dict[str, Any]:
    [policy] = [
        p
        for p in run.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if p.inputs["metadata"]["namespace"] == "mlflow"
    ]
    spec: dict[str, Any] = policy.inputs["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    return spec


def egress_ports(spec: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    return {int(p["port"]): rule.get("to", []) for rule in spec["egress"] for p in rule["ports"]}


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_mlflow_on_azure_accepts_only_its_allowed_sources_and_reaches_only_its_stores(name: str) -> None:
    run = stack(name)
    spec = mlflow_network_policy(run)
    if name == "dev":  # LoadBalancer: only from mlflowAllowedCidrs, on MLflow's port
        assert spec["ingress"] == [
            {"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 5000}]}
        ]
    else:  # ClusterIP: nothing in the cluster calls MLflow (port-forward is not filtered)
        assert spec.get("ingress", []) == []
    egress = egress_ports(spec)
    assert sorted(egress) == [53, 443, 5432]
    dns_peer = egress[53][0]
    assert dns_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    [postgres_subnet] = [s for s in run.of_type("azure-native:network:Subnet") if "postgres" in s.name]
    assert egress[5432] == [{"ipBlock": {"cidr": postgres_subnet.inputs["addressPrefix"]}}]
    assert egress[443] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]


def test_local_mlflow_stays_reachable_on_its_node_port_and_reaches_only_dns() -> None:
    spec = mlflow_network_policy(stack("local"))
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 5000}]}]
    assert sorted(egress_ports(spec)) == [53]


def test_another_model_spec_names_the_model_image_and_labels_and_gates_its_own_metrics() -> None:
    run = run_stack(
        "dev", config={"modelSpec": "examples/wine/model.yaml", "gate": {"f1_macro": {"min": 0.95}}}
    )
    model = run.one(DYNAMIC_TYPE)
    spec = load_spec(ROOT / "examples" / "wine" / "model.yaml")
    assert (model.inputs["task"], model.inputs["model_name"], run.outputs["task"]) == (
        "multiclass", "wine-cultivar", "multiclass",
    )  # fmt: skip
    assert model.inputs["fingerprint"] == training_fingerprint(spec)
    assert model.inputs["gate"]["f1_macro"] == {"min": 0.95} and model.inputs["gate"]["accuracy"] == {
        "min": 0.9
    }
    images = [i.inputs["imageName"] for i in run.of_type(IMAGE)]
    assert any("/wine-cultivar:" in name for name in images), images
    labels = deployment(run, SERVING_NS).inputs["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "wine-cultivar"
