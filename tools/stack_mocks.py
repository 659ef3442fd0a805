"""Run ``__main__.py`` for one stack file under Pulumi's mocks and return what it declared.

``run_stack("dev")`` loads ``Pulumi.dev.yaml`` into the mock runtime's config, installs mocks that
answer like the real providers would for what the program reads (camelCase outputs: AKS kubelet
identity and OIDC issuer, ACR login server, pushed image digests, the kubeconfig invoke,
StackReference outputs from ``stack_outputs``), runs the program, and returns a ``StackRun``: every
registered resource (type, name, inputs, outputs, parent, provider) and the stack outputs with their
secret/unknown flags. Used by the infra tests, the policy-pack tests and ``make manifests``.

The runtime is reset before each run, so stacks can be run one after another in one process.
No MLflow model exists under mocks, so the bento export (``infra.image.export_context``) is replaced
by a stand-in that records its calls (``StackRun.exports``): tests use it to prove the callback ran.
With ``preview=True`` resources return no computed outputs (as in a first preview): callbacks that
depend on them do not run, and nothing is trained, exported or pushed. ``preview=True,
existing=True`` is a preview of a stack that was already up: every resource answers with its
(prior) outputs, so callbacks on them run, as the bento export does in a real preview.
StackReferences resolve only inside the run's organization (default ``DEFAULT_ORGANIZATION``, the
workflows' own default), as the Pulumi service would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import runpy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000001"
TENANT_ID = "00000000-0000-0000-0000-000000000002"
DEPLOYER_OBJECT_ID = "00000000-0000-0000-0000-000000000003"
KUBELET_OBJECT_ID = "00000000-0000-0000-0000-00000000beef"
MOCK_METRICS = {"accuracy": 0.972, "f1": 0.978, "roc_auc": 0.995, "log_loss": 0.081}
DYNAMIC_TYPE = "pulumi-python:dynamic:Resource"
STACK_REFERENCE_TYPE = "pulumi:pulumi:StackReference"
# The Pulumi organization deploy.yml uses when vars.PULUMI_ORG is unset (tests/test_workflows.py checks).
DEFAULT_ORGANIZATION = "organization"

# ARM resource types of the Azure resources the program creates (for realistic ids).
ARM_TYPES = {
    "azure-native:resources:ResourceGroup": "",
    "azure-native:containerregistry:Registry": "Microsoft.ContainerRegistry/registries",
    "azure-native:containerservice:ManagedCluster": "Microsoft.ContainerService/managedClusters",
    "azure-native:network:VirtualNetwork": "Microsoft.Network/virtualNetworks",
    "azure-native:storage:StorageAccount": "Microsoft.Storage/storageAccounts",
    "azure-native:dbforpostgresql:Server": "Microsoft.DBforPostgreSQL/flexibleServers",
    "azure-native:managedidentity:UserAssignedIdentity": "Microsoft.ManagedIdentity/userAssignedIdentities",
    "azure-native:privatedns:PrivateZone": "Microsoft.Network/privateDnsZones",
    "azure-native:authorization:RoleAssignment": "Microsoft.Authorization/roleAssignments",
    "azure-native:monitor:AzureMonitorWorkspace": "Microsoft.Monitor/accounts",
    "azure-native:monitor:DataCollectionEndpoint": "Microsoft.Insights/dataCollectionEndpoints",
    "azure-native:monitor:DataCollectionRule": "Microsoft.Insights/dataCollectionRules",
    "azure-native:monitor:ActionGroup": "Microsoft.Insights/actionGroups",
    "azure-native:alertsmanagement:PrometheusRuleGroup": "Microsoft.AlertsManagement/prometheusRuleGroups",
}
# Extension resources: ARM ids under the resource they are attached to (its id in input `resourceUri`).
EXTENSION_TYPES = {
    "azure-native:monitor:DataCollectionRuleAssociation": (
        "Microsoft.Insights/dataCollectionRuleAssociations",
        "associationName",
    ),
}
# Child resources of the AKS cluster: ARM ids under the cluster's id.
AKS_CHILD_TYPES = {
    "azure-native:containerservice:AgentPool": ("agentPools", "agentPoolName"),
    "azure-native:containerservice:MaintenanceConfiguration": ("maintenanceConfigurations", "configName"),
}


def fake_jwt(claims: Mapping[str, Any]) -> str:
    """An unsigned JWT with ``claims`` (what Entra and ACR return is signed; nothing here verifies)."""

    def part(value: Mapping[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def unwrap_secrets(value: Any, path: str = "", found: list[str] | None = None) -> Any:
    """``value`` with the wire format's secret markers removed; ``found`` collects their dotted paths."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            if found is not None:
                found.append(path)
            return unwrap_secrets(value.get("value"), path, found)
        return {k: unwrap_secrets(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()


def fake_registry_id(name: str = "mlregistry") -> str:
    return (
        f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-dev/providers/"
        f"Microsoft.ContainerRegistry/registries/{name}"
    )


def source_outputs(source_stack: str = "dev") -> dict[str, Any]:
    """Well-formed outputs of a source stack, as a promoting stack reads them by default."""
    server = "mlregistry.azurecr.io"
    return {
        "imageRef": f"{server}/cancer-classifier@sha256:{_digest('image', source_stack)}",
        "mlflowImageRef": f"{server}/mlflow-server@sha256:{_digest('mlflow', source_stack)}",
        "modelVersion": "3",
        "metrics": dict(MOCK_METRICS),
        "fingerprint": _digest("fingerprint", source_stack),
        "registryId": fake_registry_id(),
    }


def aks_user_kubeconfig(server: str) -> str:
    """A kubeconfig shaped like AKS's listClusterUserCredential for an Azure AD cluster."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "aks", "cluster": {"server": server, "certificate-authority-data": "Q0E="}}
            ],
            "contexts": [{"name": "aks", "context": {"cluster": "aks", "user": "clusterUser_aks"}}],
            "current-context": "aks",
            "users": [
                {
                    "name": "clusterUser_aks",
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "kubelogin",
                            "args": [
                                "get-token",
                                "--environment",
                                "AzurePublicCloud",
                                "--server-id",
                                "6dae42f8-4368-4678-94ff-3960e28e3630",
                                "--client-id",
                                "80faf920-1908-4b52-b5ef-a8e7bedfc67a",
                                "--tenant-id",
                                TENANT_ID,
                                "--login",
                                "devicecode",
                            ],
                        }
                    },
                }
            ],
        }
    )


@dataclass(frozen=True)
class Resource:
    """One resource the program registered (components included: ``custom`` is False for them)."""

    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    urn: str
    id: str | None
    parent: str | None
    provider: str | None
    custom: bool
    depends_on: tuple[str, ...] = ()
    secret_paths: tuple[str, ...] = ()  # dotted paths of inputs that were Pulumi secrets
    protect: bool = False  # ResourceOptions.protect as the engine received it
    retain_on_delete: bool = False

    @property
    def type_(self) -> str:
        return self.type


@dataclass
class StackRun:
    """What one run of the program declared and exported."""

    stack: str
    preview: bool
    resources: list[Resource]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    unknown_outputs: set[str]
    invokes: list[str] = field(default_factory=list)
    invoke_args: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (token, arguments)
    exports: list[dict[str, str]] = field(default_factory=list)
    exchanges: list[dict[str, Any]] = field(default_factory=list)  # ACR token exchanges the run made

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> Resource:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        if len(found) != 1:
            names = [r.name for r in self.of_type(type_)]
            raise LookupError(f"expected one {type_}{' named ' + name if name else ''}, found {names}")
        return found[0]

    def named(self, name: str) -> Resource:
        found = [r for r in self.resources if r.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one resource named {name}, found {len(found)}")
        return found[0]

    def by_urn(self, urn: str) -> Resource:
        return next(r for r in self.resources if r.urn == urn)

    def children_of(self, parent: Resource) -> list[Resource]:
        return [r for r in self.resources if r.parent == parent.urn]

    def kubernetes(self) -> list[Resource]:
        return [r for r in self.resources if r.type.startswith("kubernetes:") and r.custom]


def _config_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


# What `pulumi config set --path 'deployerPrincipals[0].objectId' ...` gives a stack before its first up
# (the committed stack files leave it to the team: a made-up object id would fail only deep into an up).
CONFIGURED_DEPLOYERS: tuple[dict[str, str], ...] = (
    {"objectId": "5f0c7a3e-2b1d-4c8e-9a6f-0d3b2e1c4a57", "principalType": "ServicePrincipal"},
)


def load_stack_config(stack: str, project: str, root: Path = ROOT) -> tuple[dict[str, str], list[str]]:
    """(config, secret keys) of ``Pulumi.<stack>.yaml``, keys fully qualified as Pulumi passes them.

    ``secure:`` values cannot be decrypted here: they become a placeholder and are marked secret.
    """
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no stack file {path.name} in {root}: create it or pick another stack")
    doc = yaml.safe_load(path.read_text()) or {}
    raw = doc.get("config") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: 'config' must be a mapping")
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in raw.items():
        full = key if ":" in key else f"{project}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            config[full] = f"mock-secret-{full.split(':', 1)[1]}"
            secret_keys.append(full)
        elif isinstance(value, dict) and set(value) == {"value"}:
            config[full] = _config_value(value["value"])
        else:
            config[full] = _config_value(value)
    return config, secret_keys


def project_name(root: Path = ROOT) -> str:
    return str(yaml.safe_load((root / "Pulumi.yaml").read_text())["name"])


class _Mocks(pulumi.runtime.Mocks):
    """Fake provider answers, computed from the inputs so that runs are deterministic."""

    def __init__(
        self,
        stack: str,
        preview: bool,
        stack_outputs: Mapping[str, Mapping[str, Any]] | None,
        *,
        organization: str = DEFAULT_ORGANIZATION,
        existing: bool = False,
    ) -> None:
        self.stack = stack
        self.preview = preview
        self.stack_outputs = stack_outputs
        self.organization = organization
        self.existing = existing
        self.invokes: list[str] = []
        self.invoke_args: list[tuple[str, dict[str, Any]]] = []

    def call(self, args: pulumi_mocks.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        self.invokes.append(args.token)
        self.invoke_args.append((args.token, dict(args.args)))
        if args.token == "azure-native:authorization:getClientConfig":
            return {
                "clientId": "00000000-0000-0000-0000-000000000004",
                "objectId": DEPLOYER_OBJECT_ID,
                "subscriptionId": SUBSCRIPTION_ID,
                "tenantId": TENANT_ID,
            }
        if args.token == "azure-native:authorization:getClientToken":
            audience = args.args.get("endpoint") or "https://management.azure.com/"
            return {"token": fake_jwt({"aud": audience, "tid": TENANT_ID, "oid": DEPLOYER_OBJECT_ID})}
        if args.token == "azure-native:containerservice:listManagedClusterUserCredentials":
            server = f"https://{args.args.get('resourceName', 'aks')}.hcp.westeurope.azmk8s.io:443"
            value = base64.b64encode(aks_user_kubeconfig(server).encode()).decode()
            return {"kubeconfigs": [{"name": "clusterUser", "value": value}]}
        return {}

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        if args.typ == STACK_REFERENCE_TYPE:
            return args.resource_id or args.name, self._stack_reference(args.resource_id or args.name)
        inputs = unwrap_secrets(dict(args.inputs))
        if self.preview and (not self.existing or pulumi.output.contains_unknowns(inputs)):
            return None, inputs  # computed outputs are unknown in a preview of a create or of unknown inputs
        return self._fake_id(args), {**inputs, **self._computed(args.typ, args.name, inputs)}

    def _stack_reference(self, name: str) -> dict[str, Any]:
        parts = name.split("/")
        if len(parts) == 3 and parts[0] != self.organization:
            raise ValueError(
                f"StackReference {name!r}: no such stack in organization {self.organization!r} "
                "(promoteFrom must name the organization the stacks live in)"
            )
        source = parts[-1]
        if self.stack_outputs is None:
            outputs = source_outputs(source)
        else:
            outputs = dict(self.stack_outputs.get(name) or self.stack_outputs.get(source) or {})
        return {"name": name, "outputs": outputs, "secretOutputNames": []}

    def _fake_id(self, args: pulumi_mocks.MockResourceArgs) -> str:
        if args.typ.startswith("kubernetes:"):
            meta = args.inputs.get("metadata") or {}
            return f"{meta.get('namespace', 'default')}/{meta.get('name', args.name)}"
        arm = ARM_TYPES.get(args.typ)
        if args.typ in AKS_CHILD_TYPES:
            collection, name_key = AKS_CHILD_TYPES[args.typ]
            cluster = args.inputs.get("resourceName", "aks")
            return (
                f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-{self.stack}/providers/"
                f"Microsoft.ContainerService/managedClusters/{cluster}/{collection}/"
                f"{args.inputs.get(name_key, args.name)}"
            )
        if args.typ in EXTENSION_TYPES:
            collection, name_key = EXTENSION_TYPES[args.typ]
            target, child = args.inputs.get("resourceUri"), args.inputs.get(name_key, args.name)
            return f"{target}/providers/{collection}/{child}"
        if args.typ.startswith("azure-native:") and arm is not None:
            group = f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-{self.stack}"
            return group if arm == "" else f"{group}/providers/{arm}/{args.name}"
        if args.typ.startswith("azure-native:"):
            return (
                f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-{self.stack}/providers/mock/{args.name}"
            )
        return f"{args.name}-id"

    def _computed(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if typ == "azure-native:containerservice:ManagedCluster":
            return {
                "name": name,
                "fqdn": f"{name}.hcp.westeurope.azmk8s.io",
                "identity": {"type": "SystemAssigned", "principalId": _digest("aks-principal", name)[:32]},
                "identityProfile": {
                    "kubeletidentity": {
                        "objectId": KUBELET_OBJECT_ID,
                        "clientId": "00000000-0000-0000-0000-00000000cafe",
                        "resourceId": f"/subscriptions/{SUBSCRIPTION_ID}/kubelet",
                    }
                },
                "oidcIssuerProfile": {
                    "enabled": True,
                    "issuerURL": f"https://westeurope.oic.prod-aks.azure.com/{TENANT_ID}/{name}/",
                },
            }
        if typ == "azure-native:containerregistry:Registry":
            # Azure appends a random suffix to the name; the stack's name stands in for it.
            server = f"{name.lower()}{self.stack}.azurecr.io"
            return {"name": name, "loginServer": server}
        if typ == "azure-native:managedidentity:UserAssignedIdentity":
            return {
                "name": name,
                "clientId": _digest("client", name)[:32],
                "principalId": _digest("principal", name)[:32],
            }
        if typ == "azure-native:dbforpostgresql:Server":
            return {"name": name, "fullyQualifiedDomainName": f"{name}.postgres.database.azure.com"}
        if typ == "azure-native:monitor:AzureMonitorWorkspace":
            host = f"{name}-{_digest('amw', name)[:8]}.{inputs.get('location')}"
            endpoint = f"https://{host}.prometheus.monitor.azure.com"
            return {
                "name": name,
                "metrics": {"internalId": _digest("amw-id", name)[:32], "prometheusQueryEndpoint": endpoint},
            }
        if typ == "azure-native:storage:StorageAccount":
            return {"name": name, "primaryEndpoints": {"blob": f"https://{name}.blob.core.windows.net/"}}
        if typ.startswith("azure-native:"):
            return {"name": inputs.get("name", name)}
        if typ == "docker:index/image:Image":
            image_name = str(inputs.get("imageName", name))
            repo = image_name.rsplit(":", 1)[0] if ":" in image_name.rsplit("/", 1)[-1] else image_name
            build = json.dumps(inputs.get("build"), sort_keys=True, default=str)  # unknowns in preview
            return {"repoDigest": f"{repo}@sha256:{_digest(image_name, build)}"}
        if typ == "random:index/randomPassword:RandomPassword":
            return {
                "result": "mockpw" + _digest("password", name)[: max(int(inputs.get("length", 16)) - 6, 1)]
            }
        if typ == DYNAMIC_TYPE and "grant_ids" in inputs:  # infra.cluster_access.ClusterAccess
            return {"allowed": True, "attempts": 1}
        if typ == DYNAMIC_TYPE and "source_ref" in inputs:  # infra.image_import.ImportedImage
            ref = str(inputs["source_ref"])
            repository, _, digest = ref.split("/", 1)[1].partition("@")
            target = inputs.get("target_login_server")
            return {
                "image_ref": f"{target}/{repository}@{digest}",
                "digest": digest,
                "repository": repository,
            }
        if typ == DYNAMIC_TYPE:
            model_name = inputs.get("model_name", "model")
            return {
                "run_id": _digest("run", inputs.get("fingerprint"))[:32],
                "model_uri": f"models:/{model_name}/1",
                "version": "1",
                "metrics": dict(MOCK_METRICS),
                "model_fingerprint": inputs.get("fingerprint"),
                "model_name": model_name,
                "reused": False,
            }
        if typ == "kubernetes:core/v1:Service" and (inputs.get("spec") or {}).get("type") == "LoadBalancer":
            return {
                "status": {
                    "loadBalancer": {"ingress": [{"ip": "20.0.0." + str(int(_digest(name)[:2], 16) % 250)}]}
                }
            }
        return {}


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping each registration's parent, provider and dependencies."""

    def __init__(self, mocks: _Mocks) -> None:
        super().__init__(mocks)
        self.registrations: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _inputs(struct: Any) -> dict[str, Any]:
        found: list[str] = []
        inputs = unwrap_secrets(rpc.deserialize_properties(struct), "", found)
        return {"inputs": inputs, "secret_paths": tuple(found)}

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations[response.urn] = {
                "type": request.type,
                "name": request.name,
                "parent": request.parent or None,
                "provider": request.provider or None,
                "custom": bool(request.custom),
                "depends_on": tuple(request.dependencies),
                "protect": bool(request.protect),
                "retain_on_delete": bool(request.retainOnDelete),
                **self._inputs(request.object),
            }
        return response

    def ReadResource(self, request: Any) -> Any:
        response = super().ReadResource(request)
        self.registrations[response.urn] = {
            "type": request.type,
            "name": request.name,
            "parent": request.parent or None,
            "provider": request.provider or None,
            "custom": True,
            "depends_on": (),
            "inputs": {},
            "secret_paths": (),
        }
        return response


def _stand_in_export(calls: list[dict[str, str]]) -> Any:
    """Replaces infra.image.export_context: records the call, touches nothing (no MLflow model here)."""
    from infra.image import ContextInfo

    def export(model_uri: str, fingerprint: str, *, tracking_uri: str, base_image: str) -> ContextInfo:
        calls.append(
            {
                "model_uri": model_uri,
                "fingerprint": fingerprint,
                "tracking_uri": tracking_uri,
                "base_image": base_image,
            }
        )
        version = fingerprint[:32]
        return ContextInfo(
            context=f".build/images/{version}",
            dockerfile=f".build/images/{version}/env/docker/Dockerfile",
            tag=version,
        )

    return export


def _stand_in_push_token(calls: list[dict[str, Any]]) -> Any:
    """Replaces infra.acr_token.wait_for_push_token: records the exchange, returns an ACR-like token."""

    def wait(login_server: str, aad_token: str, tenant_id: str, repositories: Any, **_: Any) -> str:
        calls.append(
            {
                "login_server": login_server,
                "aad_token": aad_token,
                "tenant_id": tenant_id,
                "repositories": tuple(repositories),
            }
        )
        return fake_jwt(
            {"iss": "Azure Container Registry", "aud": login_server, "grant_type": "refresh_token"}
        )

    return wait


@contextlib.contextmanager
def _stand_in_tunnel(*, tracking_uri: str = "", service: str = "", kubeconfig: str = "") -> Iterator[str]:
    """Replaces infra.image.tracking_endpoint: no cluster here; a tunnel shows as tunnel://<service>."""
    if service and not kubeconfig:
        raise AssertionError(f"tunnel to {service} without a kubeconfig")
    yield f"tunnel://{service}" if service else tracking_uri


@contextlib.contextmanager
def _program_environment(
    root: Path, exports: list[dict[str, str]], exchanges: list[dict[str, Any]]
) -> Iterator[None]:
    """cwd = project root, the stand-in exporter, tunnel and token exchange, no leaked PULUMI_* env."""
    import infra.acr_token
    import infra.image

    cwd, saved_export = Path.cwd(), infra.image.export_context
    saved_wait = infra.acr_token.wait_for_push_token
    saved_tunnel = infra.image.tracking_endpoint
    infra.image.tracking_endpoint = lambda **kw: _stand_in_tunnel(**kw)  # late-bound: tests may patch it
    saved_env = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("PULUMI_CONFIG")}
    os.chdir(root)
    infra.image.export_context = _stand_in_export(exports)
    infra.acr_token.wait_for_push_token = _stand_in_push_token(exchanges)
    try:
        yield
    finally:
        infra.acr_token.wait_for_push_token = saved_wait
        infra.image.export_context = saved_export
        infra.image.tracking_endpoint = saved_tunnel
        os.chdir(cwd)
        os.environ.update(saved_env)


def _resolve(value: Any) -> tuple[Any, bool, bool]:
    """(value, is_secret, is_known) of a stack output after the program finished."""
    if isinstance(value, pulumi.Output):
        known = _sync_await(value.is_known())
        secret = _sync_await(value.is_secret())
        resolved = _sync_await(value.future()) if known else None
        return resolved, bool(secret), bool(known)
    return value, False, True


def _reset_runtime() -> None:
    """Forget the previous run: its root Stack, and every task a failed run left pending."""
    from pulumi.runtime.sync_await import _ensure_event_loop

    loop = _ensure_event_loop()
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    pulumi_settings.SETTINGS.outputs.clear()
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.ROOT.set(None)


def run_stack(
    stack: str,
    *,
    preview: bool = False,
    stack_outputs: dict[str, dict[str, Any]] | None = None,
    organization: str = DEFAULT_ORGANIZATION,
    root: Path = ROOT,
    config: Mapping[str, object] | None = None,
    existing: bool = False,
) -> StackRun:
    """Run the program for ``Pulumi.<stack>.yaml`` under mocks.

    ``existing`` (with ``preview``): the stack was up before, so resources' outputs are known.

    ``stack_outputs`` maps a referenced stack (full ``org/project/stack`` or just ``stack``) to the
    outputs its StackReference returns; None gives every reference well-formed defaults
    (``source_outputs``), ``{}`` gives references with no outputs at all. ``config`` sets or
    replaces keys of the stack file (as ``pulumi config set`` would; unqualified keys get the
    project's namespace).
    """
    project = project_name(root)
    stack_config, secret_keys = load_stack_config(stack, project, root)
    if stack_config.get(f"{project}:mode") == "azure":
        # the one value every Azure stack is given with `pulumi config set` before its first up
        stack_config.setdefault(f"{project}:deployerPrincipals", _config_value(list(CONFIGURED_DEPLOYERS)))
    for key, value in (config or {}).items():
        stack_config[key if ":" in key else f"{project}:{key}"] = _config_value(value)
    mocks = _Mocks(stack, preview, stack_outputs, organization=organization, existing=existing)
    monitor = _RecordingMonitor(mocks)
    exports: list[dict[str, str]] = []
    exchanges: list[dict[str, Any]] = []

    _reset_runtime()
    pulumi.runtime.set_all_config(stack_config, secret_keys)
    pulumi.runtime.set_mocks(
        mocks, project=project, stack=stack, preview=preview, monitor=monitor, organization=organization
    )
    with _program_environment(root, exports, exchanges):
        program = str(root / "__main__.py")

        def run_program() -> None:
            runpy.run_path(program)

        _sync_await(pulumi.runtime.stack.run_pulumi_func(run_program))
    stack_resource = pulumi_settings.get_root_resource()
    outputs: dict[str, Any] = {}
    secret: set[str] = set()
    unknown: set[str] = set()
    for key, value in getattr(stack_resource, "outputs", {}).items():
        resolved, is_secret, is_known = _resolve(value)
        outputs[key] = resolved
        if is_secret:
            secret.add(key)
        if not is_known:
            unknown.add(key)

    resources = []
    for urn, reg in monitor.registrations.items():
        recorded = monitor.resources.get(urn)
        resources.append(
            Resource(
                type=reg["type"],
                name=reg["name"],
                inputs=reg["inputs"],
                outputs=unwrap_secrets(dict(recorded.state))
                if recorded is not None and recorded.state
                else {},
                urn=urn,
                id=recorded.id if recorded is not None else None,
                parent=reg["parent"],
                provider=reg["provider"],
                custom=reg["custom"],
                depends_on=reg["depends_on"],
                secret_paths=reg["secret_paths"],
                protect=reg.get("protect", False),
                retain_on_delete=reg.get("retain_on_delete", False),
            )
        )
    return StackRun(
        stack=stack,
        preview=preview,
        resources=resources,
        outputs=outputs,
        secret_outputs=secret,
        unknown_outputs=unknown,
        invokes=list(mocks.invokes),
        invoke_args=list(mocks.invoke_args),
        exports=exports,
        exchanges=exchanges,
    )


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or ["dev"]:
        run = run_stack(name)
        print(f"{name}: {len(run.resources)} resources; outputs: {sorted(run.outputs)}")
