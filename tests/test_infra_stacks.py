"""Every stack file runs under Pulumi's mocks; the declared resources have the required posture and wiring."""

from __future__ import annotations

import json
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import roles, serving
from infra.cluster import MAINTENANCE_CONFIGS, POOL_NAME_MAX, user_pool_name
from infra.promotion import PromotionError
from infra.settings import ConfigError
from model import container
from model.fingerprint import training_fingerprint
from model.spec import load_spec
from tools.stack_mocks import (
    CONFIGURED_DEPLOYERS,
    DEFAULT_ORGANIZATION,
    DEPLOYER_OBJECT_ID,
    DYNAMIC_TYPE,
    KUBELET_OBJECT_ID,
    ROOT,
    STACK_REFERENCE_TYPE,
    TENANT_ID,
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


def trained_model(run: StackRun) -> Resource:
    """The TrainedModel (the other dynamic resources are ClusterAccess and ImportedImage)."""
    [model] = [r for r in run.of_type(DYNAMIC_TYPE) if "model_name" in r.inputs]
    return model


def dynamic(run: StackRun, key: str) -> list[Resource]:
    """The dynamic resources that have input ``key`` (grant_ids: ClusterAccess; source_ref: ImportedImage)."""
    return [r for r in run.of_type(DYNAMIC_TYPE) if key in r.inputs]


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
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == set(container.WRITABLE_PATHS)
    # The prediction id key: a read-only file from the stack's Secret, never an env value.
    [key_mount] = [m for m in c["volumeMounts"] if m.get("readOnly")]
    assert key_mount["mountPath"] == container.FEEDBACK_KEY_DIR
    [key_volume] = [v for v in p["volumes"] if v["name"] == key_mount["name"]]
    assert key_volume["secret"]["secretName"] == serving.FEEDBACK_KEY_SECRET
    assert (
        container.FEEDBACK_KEY_DIR + "/" + key_volume["secret"]["items"][0]["path"]
        == container.FEEDBACK_KEY_FILE
    )
    [key_secret] = [
        r
        for r in run.of_type("kubernetes:core/v1:Secret")
        if r.inputs["metadata"]["name"] == serving.FEEDBACK_KEY_SECRET
    ]
    assert key_secret.inputs["metadata"]["namespace"] == SERVING_NS
    assert len(key_secret.inputs["stringData"][key_volume["secret"]["items"][0]["key"]]) == 48
    assert any(path.startswith("stringData") for path in key_secret.secret_paths)  # a secret in state
    assert key_secret.urn in d.depends_on  # the Secret exists before the pods that mount it
    assert "ml-delivery/feedback-key-uid" in template["metadata"]["annotations"]  # a new key rolls them
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(
        c["resources"]["limits"]
    )
    assert c["readinessProbe"]["httpGet"]["path"] == container.READINESS_PATH
    assert c["livenessProbe"]["httpGet"]["path"] == container.LIVENESS_PATH
    assert c["startupProbe"]["httpGet"]["port"] == container.SERVICE_PORT
    workers = str(serving.workers_for_cpu_limit(c["resources"]["limits"]["cpu"]))
    assert {e["name"]: e["value"] for e in c["env"]} == {
        **container.RUNTIME_ENV,
        container.WORKERS_ENV: workers,
        container.FEEDBACK_KEY_FILE_ENV: container.FEEDBACK_KEY_FILE,
    }


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
    [system] = aks["agentPoolProfiles"]  # the user pool is its own AgentPool
    assert system["mode"] == "System" and system["nodeTaints"] == ["CriticalAddonsOnly=true:NoSchedule"]
    user = run.one("azure-native:containerservice:AgentPool").inputs
    assert re.fullmatch(r"user[0-9a-f]{4}", user["agentPoolName"]) and user["resourceName"] == aks_name(run)
    assert (
        user["mode"] == "User" and user["enableAutoScaling"] is True and user["minCount"] <= user["maxCount"]
    )
    assert user["vnetSubnetID"] == system["vnetSubnetID"]
    windows = run.of_type("azure-native:containerservice:MaintenanceConfiguration")
    assert sorted(w.inputs["configName"] for w in windows) == [
        "aksManagedAutoUpgradeSchedule",
        "aksManagedNodeOSUpgradeSchedule",
    ]
    for window in windows:
        mw = window.inputs["maintenanceWindow"]
        assert mw["schedule"]["weekly"]["intervalWeeks"] == 1 and mw["durationHours"] >= 4
    prod = name == "prod"
    assert aks["sku"] == {"name": "Base", "tier": "Standard" if prod else "Free"}
    zones = ["1", "2", "3"] if prod else None
    assert system.get("availabilityZones") == zones and user.get("availabilityZones") == zones
    assert "apiServerAccessProfile" not in aks  # public API server, Entra-authenticated (no config set)
    [admin] = role(run, roles.AKS_RBAC_CLUSTER_ADMIN)
    assert admin.inputs["scope"] == run.one("azure-native:containerservice:ManagedCluster").id


def aks_name(run: StackRun) -> str:
    return str(run.one("azure-native:containerservice:ManagedCluster").outputs["name"])


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


def test_dev_mlflow_storage_is_private_recoverable_and_protected() -> None:
    run = stack("dev")
    account = run.one("azure-native:storage:StorageAccount")
    assert account.inputs["publicNetworkAccess"] == "Disabled"
    server = run.one("azure-native:dbforpostgresql:Server")
    assert account.protect and server.protect  # `pulumi destroy -s dev` stops before deleting them
    assert server.inputs["backup"]["backupRetentionDays"] == 14
    blob_service = run.one("azure-native:storage:BlobServiceProperties").inputs
    assert blob_service["blobServicesName"] == "default" and blob_service["isVersioningEnabled"] is True
    for policy in ("deleteRetentionPolicy", "containerDeleteRetentionPolicy"):
        assert blob_service[policy] == {"enabled": True, "days": 14}
    endpoint = run.one("azure-native:network:PrivateEndpoint")
    [connection] = endpoint.inputs["privateLinkServiceConnections"]
    assert connection["groupIds"] == ["blob"] and connection["privateLinkServiceId"] == account.id
    nodes = next(s for s in run.of_type("azure-native:network:Subnet") if "postgres" not in s.name)
    assert endpoint.inputs["subnet"] == {"id": nodes.id}
    zones = {z.inputs["privateZoneName"]: z for z in run.of_type("azure-native:privatedns:PrivateZone")}
    blob_zone = zones["privatelink.blob.core.windows.net"]
    group = run.one("azure-native:network:PrivateDnsZoneGroup").inputs
    assert group["privateDnsZoneConfigs"] == [{"name": "blob", "privateDnsZoneId": blob_zone.id}]
    links = [lk.inputs["privateZoneName"] for lk in run.of_type("azure-native:privatedns:VirtualNetworkLink")]
    assert blob_zone.outputs.get("name", blob_zone.inputs["privateZoneName"]) in links


def test_unprotected_when_the_stack_says_so() -> None:
    run = run_stack("dev", config={"protectStatefulResources": False})
    assert not run.one("azure-native:storage:StorageAccount").protect
    assert not run.one("azure-native:dbforpostgresql:Server").protect


def test_mlflow_logs_in_as_its_own_role_and_only_an_init_step_sees_the_admin_secret() -> None:
    run = stack("dev")
    spec = pod(deployment(run, "mlflow"))
    [server] = spec["containers"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in server["env"] if "valueFrom" in e}
    assert refs == {"mlflow-credentials"}
    assert "mlflow-db-admin" not in json.dumps(server)
    init = {c["name"]: c for c in spec["initContainers"]}
    assert list(init) == ["db-role", "wait-blob"]
    assert init["db-role"]["image"] == server["image"]
    admin_refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in init["db-role"]["env"] if "valueFrom" in e}
    assert admin_refs == {"mlflow-db-admin"}
    assert "mlflow-db-admin" not in json.dumps(init["wait-blob"])
    credentials = next(
        r
        for r in run.of_type("kubernetes:core/v1:Secret")
        if r.inputs["metadata"]["name"] == "mlflow-credentials"
    )
    backend = credentials.inputs["stringData"]["backend-store-uri"]
    assert backend.startswith("postgresql://mlflow_app:") and "mlflowadmin" not in backend


def test_the_mlflow_pod_waits_for_its_grants() -> None:
    run = stack("dev")
    mlflow = deployment(run, "mlflow")
    needed = [
        *role(run, roles.STORAGE_BLOB_DATA_CONTRIBUTOR),
        run.one("azure-native:managedidentity:FederatedIdentityCredential"),
        run.one("azure-native:network:PrivateDnsZoneGroup"),
        *run.of_type("azure-native:dbforpostgresql:Database"),
    ]
    assert {r.urn for r in needed} <= set(mlflow.depends_on)


@pytest.mark.parametrize("name", ["dev", "local"])
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
    secret = next(
        r
        for r in run.of_type("kubernetes:core/v1:Secret")
        if r.inputs["metadata"]["name"] == "mlflow-credentials"
    )
    assert "stringData" in secret.secret_paths  # built from Pulumi secrets, stored encrypted in state
    assert {"mlflowAdminPassword", "kubeconfig"} <= run.secret_outputs


def test_dev_trained_model_feeds_image_feeds_deployment() -> None:
    run = stack("dev")
    config = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    model = run.one(DYNAMIC_TYPE, "model")
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
    # MLflow is reached through the tunnel: no URL, the Service, and the kubeconfig as a secret
    assert (model.inputs["tracking_uri"], model.inputs["tracking_service"]) == ("", "mlflow/mlflow:5000")
    assert "kubeconfig" in model.secret_paths and model.inputs["kubeconfig"] == run.outputs["kubeconfig"]
    # the export callback ran once, with the trained model's outputs, through the tunnel
    assert run.exports == [
        {
            "model_uri": model.outputs["model_uri"],
            "fingerprint": model.outputs["model_fingerprint"],
            "tracking_uri": "tunnel://mlflow/mlflow:5000",
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
    assert run.of_type(IMAGE) == [] and run.exports == [] and run.exchanges == []
    assert not [r for r in run.of_type(DYNAMIC_TYPE) if "model_name" in r.inputs]  # no training
    ref = run.one(STACK_REFERENCE_TYPE)
    assert ref.id == f"{DEFAULT_ORGANIZATION}/ml-delivery/{source}"
    expected = source_outputs(source)
    # its own registry: the kubelet pulls from it only, and the source digest is imported into it
    acr = run.one("azure-native:containerregistry:Registry")
    assert acr.inputs["adminUserEnabled"] is False
    [pull] = role(run, roles.ACR_PULL)
    assert pull.inputs["scope"] == acr.id and pull.inputs["principalId"] == KUBELET_OBJECT_ID
    [imported] = dynamic(run, "source_ref")
    assert imported.inputs["source_ref"] == expected["imageRef"]
    assert imported.inputs["source_registry_id"] == expected["registryId"]
    assert imported.inputs["target_registry_id"] == acr.id
    # no ARM token in the state: the import obtains its own when it runs
    assert "arm_token" not in imported.inputs and "arm_token" not in imported.outputs
    assert "azure-native:authorization:getClientToken" not in run.invokes
    assert imported.inputs["tenant_id"] == TENANT_ID and "tenant_id" not in imported.secret_paths
    # least privilege: nothing is pushed here, so the deployers get the importer role (import + pull), no push
    assert role(run, roles.ACR_PUSH) == []
    importers = role(run, roles.ACR_IMPORTER)
    assert [g.inputs["scope"] for g in importers] == [acr.id]  # importImage on its own registry only
    assert [g.inputs["principalId"] for g in importers] == [d["objectId"] for d in configured_deployers(name)]
    assert {g.urn for g in importers} <= set(imported.depends_on)
    digest = expected["imageRef"].split("@", 1)[1]
    own_ref = f"{acr.outputs['loginServer']}/cancer-classifier@{digest}"
    assert pod(deployment(run, SERVING_NS))["containers"][0]["image"] == own_ref
    assert run.outputs["imageRef"] == own_ref and run.outputs["sourceImageRef"] == expected["imageRef"]
    assert run.outputs["registryId"] == acr.id  # so the next stage can promote (import) from here
    assert run.outputs["promotedFrom"] == f"{DEFAULT_ORGANIZATION}/ml-delivery/{source}"
    # the registry of record is dev's MLflow: nothing of MLflow runs here
    assert not [r for r in run.resources if "mlflow" in r.name.lower()]
    assert not {"mlflowUrl", "mlflowImageRef", "mlflowAdminPassword"} & set(run.outputs)


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


def refusing_tunnel(**_: str) -> Any:
    from infra.tunnel import TunnelRefused

    raise TunnelRefused("the API server refused the port-forward to mlflow/mlflow:5000: forbidden")


def test_a_preview_whose_identity_may_not_port_forward_skips_the_export_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PR preview under the read-only identity: the bento is not exported, the image shows as unknown."""
    import tools.stack_mocks

    monkeypatch.setattr(tools.stack_mocks, "_stand_in_tunnel", refusing_tunnel)
    run = run_stack("dev", preview=True, existing=True)
    assert run.exports == []
    assert "imageRef" in run.unknown_outputs
    assert run.one(DYNAMIC_TYPE, "model").outputs["model_uri"]  # the model itself is known (existing stack)


def test_an_up_whose_identity_may_not_port_forward_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.stack_mocks

    monkeypatch.setattr(tools.stack_mocks, "_stand_in_tunnel", refusing_tunnel)
    with pytest.raises(Exception, match="refused the port-forward"):
        run_stack("dev")


def test_first_preview_trains_nothing_exports_nothing_and_pushes_nothing() -> None:
    run = stack("dev", preview=True)
    model = trained_model(run)
    assert model.inputs["fingerprint"] == trained_model(stack("dev")).inputs["fingerprint"]
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
    model = trained_model(run)
    assert model.inputs == trained_model(up).inputs
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
    (tmp_path / "Pulumi.broken.yaml").write_text(
        "config:\n  ml-delivery:acrSku: Gold\n  ml-delivery:deployerPrincipals:\n"
        "    - {objectId: 11111111-2222-3333-4444-555555555555, principalType: User}\n"
    )
    with pytest.raises(Exception) as info:
        run_stack("broken", root=tmp_path)
    errors = [e for e in error_chain(info.value) if isinstance(e, ConfigError)]
    assert errors and "Pulumi.broken.yaml" in str(errors[0]) and "'ml-delivery:acrSku'" in str(errors[0])


ROLLBACK_REF = "mlregistry.azurecr.io/cancer-classifier@sha256:" + "ab" * 32
LINEAGE_OUTPUTS = {"modelVersion", "metrics", "fingerprint", "modelUri", "runId", "inputFingerprint"}


# dev's registry under the mocks (Azure names it registry<suffix>.azurecr.io)
DEV_ROLLBACK_REF = "registrydev.azurecr.io/cancer-classifier@sha256:" + "ab" * 32


def test_dev_rollback_deploys_the_override_without_training_or_building() -> None:
    run = run_stack("dev", config={"imageRefOverride": DEV_ROLLBACK_REF})
    assert (
        run.one("azure-native:containerregistry:Registry").outputs["loginServer"] == "registrydev.azurecr.io"
    )
    assert not [r for r in run.of_type(DYNAMIC_TYPE) if "model_name" in r.inputs] and run.exports == []
    serving_images = [i for i in run.of_type(IMAGE) if "/cancer-classifier:" in i.inputs["imageName"]]
    assert serving_images == []
    serving = deployment(run, SERVING_NS)
    assert pod(serving)["containers"][0]["image"] == DEV_ROLLBACK_REF
    assert serving.inputs["spec"]["template"]["metadata"]["labels"]["model-version"] == "rollback"
    assert run.outputs["imageRef"] == run.outputs["imageRefOverride"] == DEV_ROLLBACK_REF
    assert not LINEAGE_OUTPUTS & set(run.outputs), "a rollback's model lineage is unknown"
    assert run.outputs["registryId"] == run.one("azure-native:containerregistry:Registry").id
    assert "imageRefOverride" not in stack("dev").outputs


def test_a_dev_rollback_to_another_registry_is_refused_with_the_fix() -> None:
    with pytest.raises(Exception) as info:
        run_stack("dev", config={"imageRefOverride": ROLLBACK_REF})
    errors = [e for e in error_chain(info.value) if isinstance(e, ConfigError)]
    assert errors, f"no ConfigError in {error_chain(info.value)}"
    message = str(errors[0])
    assert "Pulumi.dev.yaml" in message and "'ml-delivery:imageRefOverride'" in message
    assert "registrydev.azurecr.io" in message and "earlier imageRef output of this stack" in message


@pytest.mark.parametrize("source", [None, {"imageRef": None, "metrics": None}])
def test_prod_rollback_deploys_the_override_whatever_the_source_model(source: dict | None) -> None:
    outputs = None
    if source is not None:  # a source whose model is missing or broken must not block a rollback
        outputs = {
            "staging": {k: v for k, v in {**source_outputs("staging"), **source}.items() if v is not None}
        }
    run = run_stack("prod", config={"imageRefOverride": ROLLBACK_REF}, stack_outputs=outputs)
    acr = run.one("azure-native:containerregistry:Registry")
    own_ref = f"{acr.outputs['loginServer']}/cancer-classifier@{ROLLBACK_REF.split('@', 1)[1]}"
    assert pod(deployment(run, SERVING_NS))["containers"][0]["image"] == own_ref
    assert run.outputs["imageRef"] == own_ref and run.outputs["imageRefOverride"] == ROLLBACK_REF
    assert not LINEAGE_OUTPUTS & set(run.outputs) and "promotedFrom" not in run.outputs
    expected = source_outputs("staging")
    # the override's digest is imported from the source's registry (skipped when already here)
    [imported] = dynamic(run, "source_ref")
    assert imported.inputs["source_ref"] == ROLLBACK_REF
    assert imported.inputs["source_registry_id"] == expected["registryId"]
    [pull] = role(run, roles.ACR_PULL)  # the kubelet pulls from this stack's registry only
    assert pull.inputs["scope"] == acr.id == run.outputs["registryId"]
    assert not trained(run) and run.of_type(IMAGE) == []


def trained(run: StackRun) -> list[Resource]:
    return [r for r in run.of_type(DYNAMIC_TYPE) if "model_name" in r.inputs]


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


@pytest.mark.parametrize("name", ["dev"])
def test_mlflow_on_azure_accepts_only_its_allowed_sources_and_reaches_only_its_stores(name: str) -> None:
    run = stack(name)
    spec = mlflow_network_policy(run)
    # ClusterIP: nothing in the cluster calls MLflow (port-forward is not filtered)
    assert spec.get("ingress", []) == []
    service = next(
        s for s in run.of_type("kubernetes:core/v1:Service") if s.inputs["metadata"]["namespace"] == "mlflow"
    )
    assert service.inputs["spec"]["type"] == "ClusterIP" and not service.inputs["metadata"].get("annotations")
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


# ---------------------------------------------------------------- first-up ordering and credentials

AKS_ADMIN_GRANT = roles.AKS_RBAC_CLUSTER_ADMIN


def configured_deployers(name: str) -> list[dict[str, str]]:
    """The stack file's deployerPrincipals, else what the harness sets as `pulumi config set` would."""
    config = yaml.safe_load((ROOT / f"Pulumi.{name}.yaml").read_text())["config"]
    return list(config.get("ml-delivery:deployerPrincipals", CONFIGURED_DEPLOYERS))


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_the_kubernetes_provider_waits_for_the_configured_deployers_cluster_grant(name: str) -> None:
    run = stack(name)
    deployers = configured_deployers(name)
    admins = role(run, AKS_ADMIN_GRANT)
    # from config, never from whoever runs Pulumi (a read-only preview identity changes no grant)
    assert [(a.inputs["principalId"], a.inputs["principalType"]) for a in admins] == [
        (d["objectId"], d["principalType"]) for d in deployers
    ]
    assert DEPLOYER_OBJECT_ID not in {a.inputs["principalId"] for a in admins}
    [access] = dynamic(run, "grant_ids")
    assert {a.urn for a in admins} <= set(access.depends_on)
    assert "kubeconfig" in access.secret_paths and access.inputs["timeout_seconds"] <= 900
    [provider] = run.of_type("pulumi:providers:kubernetes")
    assert {a.urn for a in admins} | {access.urn} <= set(provider.depends_on)
    for obj in run.kubernetes():
        assert obj.provider and obj.provider.startswith(provider.urn)


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_workloads_and_maintenance_windows_wait_for_the_user_pool(name: str) -> None:
    run = stack(name)
    pool = run.one("azure-native:containerservice:AgentPool")
    # the system pool is tainted CriticalAddonsOnly: nothing schedules before the user pool exists
    [access] = dynamic(run, "grant_ids")
    assert pool.urn in access.depends_on
    [provider] = run.of_type("pulumi:providers:kubernetes")
    assert access.urn in provider.depends_on
    # AKS runs one operation at a time: the pool, then each maintenance configuration in turn
    windows = {
        w.inputs["configName"]: w
        for w in run.of_type("azure-native:containerservice:MaintenanceConfiguration")
    }
    previous = pool
    for config_name in MAINTENANCE_CONFIGS:
        assert previous.urn in windows[config_name].depends_on
        previous = windows[config_name]


def test_the_user_pool_name_follows_its_immutable_settings() -> None:
    base = user_pool_name("Standard_D4s_v5", None, "Linux")
    assert base == user_pool_name("Standard_D4s_v5", None, "Linux")  # stable: no replacement
    others = {
        user_pool_name("Standard_D8s_v5", None, "Linux"),
        user_pool_name("Standard_D4s_v5", ["1", "2", "3"], "Linux"),
        user_pool_name("Standard_D4s_v5", ["1", "2"], "Linux"),
        user_pool_name("Standard_D4s_v5", None, "Windows"),
    }
    assert base not in others and len(others) == 4
    for pool_name in (base, *others):
        assert re.fullmatch(r"[a-z][a-z0-9]*", pool_name) and len(pool_name) <= POOL_NAME_MAX


def test_a_new_user_vm_size_gives_the_pool_a_new_name_and_nothing_else_does() -> None:
    def pool(run: StackRun) -> dict[str, Any]:
        return run.one("azure-native:containerservice:AgentPool").inputs

    before = pool(stack("dev"))
    resized = pool(run_stack("dev", config={"userNodeVmSize": "Standard_D8s_v5"}))
    rescaled = pool(run_stack("dev", config={"userNodeMaxCount": int(before["maxCount"]) + 1}))
    assert resized["vmSize"] == "Standard_D8s_v5" and resized["agentPoolName"] != before["agentPoolName"]
    assert rescaled["maxCount"] != before["maxCount"] and rescaled["agentPoolName"] == before["agentPoolName"]
    assert pool(stack("prod"))["agentPoolName"] != before["agentPoolName"]  # zones 1-3 in prod


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_the_kubeconfig_is_requested_in_exec_format(name: str) -> None:
    run = stack(name)
    [args] = [a for t, a in run.invoke_args if t.endswith(":listManagedClusterUserCredentials")]
    assert args["format"] == "exec" and args["resourceName"] == aks_name(run)


@pytest.mark.parametrize("name", ["dev", "staging", "prod", "local"])
def test_every_role_assignment_names_its_principal_type_and_its_scopes_subscription(name: str) -> None:
    for grant in stack(name).of_type(ROLE):
        assert grant.inputs["principalType"] in ("User", "Group", "ServicePrincipal")
        subscription = grant.inputs["scope"].split("/")[2]
        assert grant.inputs["roleDefinitionId"].startswith(f"/subscriptions/{subscription}/providers/")


def test_dev_pushes_with_a_registry_token_obtained_after_the_push_grant() -> None:
    run = stack("dev")
    acr = run.one("azure-native:containerregistry:Registry")
    pushes = role(run, roles.ACR_PUSH)
    assert [p.inputs["principalId"] for p in pushes] == [d["objectId"] for d in configured_deployers("dev")]
    assert all(p.inputs["scope"] == acr.id for p in pushes)
    images = run.of_type(IMAGE)
    assert {i.inputs["imageName"].split(":")[0].rsplit("/", 1)[1] for i in images} == {
        "cancer-classifier",
        "mlflow-server",
    }
    for image in images:
        registry = image.inputs["registry"]
        assert registry["server"] == acr.outputs["loginServer"]
        assert registry["username"] == "00000000-0000-0000-0000-000000000000"
        assert registry["password"] and {"registry", "registry.password"} & set(image.secret_paths)
        assert {p.urn for p in pushes} <= set(image.depends_on)
    # one exchange, with the Entra token of the identity running Pulumi, for both repositories
    [exchange] = run.exchanges
    assert exchange["login_server"] == acr.outputs["loginServer"] and exchange["tenant_id"] == TENANT_ID
    assert set(exchange["repositories"]) == {"cancer-classifier", "mlflow-server"}
    assert "azure-native:authorization:getClientToken" in run.invokes


def test_preview_never_exchanges_a_registry_token() -> None:
    for run in (stack("dev", preview=True), run_stack("dev", preview=True, existing=True)):
        assert run.exchanges == []
        assert "azure-native:authorization:getClientToken" not in run.invokes
        for image in run.of_type(IMAGE):
            assert image.inputs["buildOnPreview"] is False
            # present (the policy sees credentials) but unknown: no token exists in a preview
            assert not isinstance(image.inputs["registry"]["password"], str)


def test_the_serving_pods_wait_for_the_kubelets_pull_grant_and_spread_over_zones_and_nodes() -> None:
    run = stack("dev")
    [pull] = role(run, roles.ACR_PULL)
    serving = deployment(run, SERVING_NS)
    assert pull.urn in serving.depends_on
    spread = pod(serving)["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert all(c["labelSelector"]["matchLabels"] == {"app": "model-server"} for c in spread)


def test_prod_can_run_a_private_cluster_or_authorized_ranges() -> None:
    private = run_stack("prod", config={"privateCluster": True})
    aks = private.one("azure-native:containerservice:ManagedCluster").inputs
    assert aks["apiServerAccessProfile"] == {"enablePrivateCluster": True}
    ranges = run_stack("prod", config={"apiServerAuthorizedIpRanges": ["203.0.113.0/24"]})
    aks = ranges.one("azure-native:containerservice:ManagedCluster").inputs
    assert aks["apiServerAccessProfile"] == {"authorizedIPRanges": ["203.0.113.0/24"]}


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_an_azure_stack_without_its_deployers_stops_at_program_start_naming_the_key(name: str) -> None:
    # The committed stack files carry no made-up object id (it would fail only at the first role
    # assignment, after the cluster exists): until the team sets it, the program says what to set.
    text = (ROOT / f"Pulumi.{name}.yaml").read_text()
    assert "ml-delivery:deployerPrincipals:" not in text
    with pytest.raises(
        ConfigError, match=rf"Pulumi\.{name}\.yaml: config key .ml-delivery:deployerPrincipals."
    ):
        run_stack(name, config={"deployerPrincipals": []})


def test_another_model_spec_names_the_model_image_and_labels_and_gates_its_own_metrics() -> None:
    run = run_stack(
        "dev", config={"modelSpec": "examples/wine/model.yaml", "gate": {"f1_macro": {"min": 0.95}}}
    )
    model = run.one(DYNAMIC_TYPE, "model")
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
