"""One typed, validated settings object per stack, read from the stack's Pulumi config.

Every value has a default except the ones only a person can choose. A wrong value raises
``ConfigError`` naming the key, the stack file and what to write instead. Parsing works on a plain
``get(key) -> str | None`` function so it is testable without a Pulumi runtime; ``load_settings``
binds it to ``pulumi.Config`` and reads the secrets.

``mlflowAdminPassword`` must be set before the first ``pulumi up``: MLflow's basic auth creates the
admin only when it is missing, so changing the secret later leaves MLflow on the old password and
training fails with 401. To rotate: change it with MLflow's auth API (``update_user_password``)
first, then set the same value with ``pulumi config set --secret mlflowAdminPassword``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import pulumi

from infra.alert_rules import AlertThresholds
from infra.network import AKS_POD_CIDR, AKS_SERVICE_CIDR, subnet_prefixes
from model.gate import Gate, GateConfigError
from model.spec import ModelSpec, SpecError, load_spec

PROJECT = "ml-delivery"

MODES = ("azure", "local")
SERVICE_TYPES = ("ClusterIP", "LoadBalancer", "NodePort")
ACR_SKUS = ("Basic", "Standard", "Premium")
UPGRADE_CHANNELS = ("none", "patch", "stable", "rapid", "node-image")
NODE_OS_UPGRADE_CHANNELS = ("None", "Unmanaged", "NodeImage", "SecurityPatch")
# kubelogin --login modes; every one but devicecode and interactive works without a person.
KUBELOGIN_MODES = ("azurecli", "workloadidentity", "spn", "msi", "devicecode", "interactive")
POSTGRES_TIERS = ("Burstable", "GeneralPurpose", "MemoryOptimized")
PROMOTE_FROM_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
K8S_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
DIGEST_REF_RE = re.compile(r"^[a-z0-9][a-z0-9.\-:/_]*@sha256:[0-9a-f]{64}$")
# <registry host[:port]>/<repository>@sha256:<64 hex>; the registry part is explicit (no Docker Hub default).
REGISTRY_DIGEST_REF_RE = re.compile(
    r"^(?:[a-z0-9-]+(?:\.[a-z0-9-]+)+(?::\d+)?|localhost(?::\d+)?|[a-z0-9-]+:\d+)"
    r"/[a-z0-9]+(?:[._/-][a-z0-9]+)*@sha256:[0-9a-f]{64}$"
)
DNS_LABEL_RE = re.compile(r"^[a-z][a-z0-9-]{1,61}[a-z0-9]$")
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PRINCIPAL_TYPES = ("User", "Group", "ServicePrincipal")
AKS_TIERS = ("Free", "Standard", "Premium")
AVAILABILITY_ZONES = ("1", "2", "3")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HHMM_RE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
UTC_OFFSET_RE = re.compile(r"^[+-](0[0-9]|1[0-4]):[0-5][0-9]$")
# A Prometheus duration in whole minutes, hours or days (the window drift and shares are computed over).
PROM_WINDOW_RE = re.compile(r"^[1-9][0-9]*[mhd]$")
EMAIL_RE = re.compile(r"^[^@\s,;]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")

T = TypeVar("T")


class ConfigError(ValueError):
    """A stack config value is missing or wrong; the message says which key, where, and the fix."""


@dataclass(frozen=True)
class Principal:
    """An Entra principal the stack grants roles to: its object id and ARM principal type."""

    object_id: str
    principal_type: str  # User, Group or ServicePrincipal


@dataclass(frozen=True)
class MaintenanceWindow:
    """The weekly window AKS may run auto-upgrades in (cluster and node OS)."""

    day_of_week: str = "Sunday"
    start_time: str = "02:00"  # HH:mm
    duration_hours: int = 4  # AKS requires at least 4 hours for a weekly schedule
    utc_offset: str = "+00:00"


@dataclass(frozen=True)
class ClusterSettings:
    system_vm_size: str = "Standard_D2s_v5"
    system_node_count: int = 2
    user_vm_size: str = "Standard_D4s_v5"
    user_min_count: int = 1
    user_max_count: int = 3
    kubernetes_version: str | None = None
    upgrade_channel: str = "stable"
    node_os_upgrade_channel: str = "NodeImage"
    kubelogin_mode: str = "azurecli"
    admin_group_object_ids: tuple[str, ...] = ()
    vnet_cidr: str = "10.20.0.0/16"
    # Who runs `pulumi up` (CI's identity, people): AKS RBAC Cluster Admin and AcrPush, from config.
    deployers: tuple[Principal, ...] = ()
    tier: str = "Free"  # Standard: the uptime SLA
    availability_zones: tuple[str, ...] = ()
    maintenance: MaintenanceWindow = field(default_factory=MaintenanceWindow)
    api_authorized_ranges: tuple[str, ...] = ()
    private_cluster: bool = False


@dataclass(frozen=True)
class LocalSettings:
    kube_context: str | None = None
    kubeconfig_path: str = "~/.kube/config"


@dataclass(frozen=True)
class RegistrySettings:
    sku: str = "Basic"
    server: str | None = None  # local mode only: an existing registry such as localhost:5001
    username: str | None = None
    password: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class TrackingSettings:
    image: str | None = None  # digest-pinned override; None: built from infra/mlflow_image (or promoted)
    # Azure: ClusterIP only (reached through infra/tunnel.py); local: NodePort on a laptop cluster.
    service_type: str = "ClusterIP"
    extra_allowed_hosts: tuple[str, ...] = ()
    tracking_uri: str | None = (
        None  # local only: how the machine running `pulumi up` reaches MLflow; derived when unset
    )
    admin_username: str = "admin"
    # None: generated with pulumi_random. Set before the first up; rotation: see the module docstring.
    admin_password: pulumi.Output[str] | None = None
    experiment_name: str = ""  # default: the model spec's name
    model_name: str = ""  # default: the model spec's name
    postgres_sku: str = "Standard_B1ms"
    postgres_tier: str = "Burstable"
    postgres_version: str = "16"
    postgres_storage_gb: int = 32
    postgres_backup_retention_days: int = 14  # Azure allows 7..35
    blob_soft_delete_days: int = 14  # deleted/overwritten artifacts and the container itself
    node_port: int = 30500


@dataclass(frozen=True)
class TrainingSettings:
    spec: ModelSpec  # read from spec_path: the model's name, task, data, estimator, params and gate
    spec_path: str = "model.yaml"


@dataclass(frozen=True)
class ServingSettings:
    namespace: str = "model-serving"
    service_type: str = "ClusterIP"
    min_replicas: int = 2
    max_replicas: int = 4
    target_cpu_utilization: int = 70
    cpu_request: str = "250m"
    # Two workers (infra.serving.workers_for_cpu_limit), ~300 MB each: the benchmarked pod.
    cpu_limit: str = "2"
    memory_request: str = "768Mi"
    memory_limit: str = "1536Mi"
    base_image: str = "python:3.11-slim"  # the serving image's base (bento export)
    platform: str = "linux/amd64"


@dataclass(frozen=True)
class MonitoringSettings:
    """What the alert rules treat as trouble, and who Azure Monitor notifies when one fires."""

    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    alert_emails: tuple[str, ...] = ()  # Azure stacks: e-mail receivers of the alerts' action group


@dataclass(frozen=True)
class Settings:
    project: str
    stack: str
    mode: str
    location: str
    promote_from: str | None
    cluster: ClusterSettings
    local: LocalSettings
    registry: RegistrySettings
    tracking: TrackingSettings
    training: TrainingSettings
    serving: ServingSettings
    gate: Gate  # the spec's gate with this stack's `gate` overrides
    tags: Mapping[str, str]
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    # Rollback: deploy exactly this digest instead of what the stack builds or promotes.
    image_ref_override: str | None = None
    # `protect` on stateful Azure resources (PostgreSQL, storage, registry): destroy cannot delete them.
    protect_stateful: bool = True

    @property
    def is_local(self) -> bool:
        return self.mode == "local"

    @property
    def promotes(self) -> bool:
        return self.promote_from is not None


class _Reader:
    """Typed reads of one stack's config with errors that name the key and the stack file."""

    def __init__(self, get: Callable[[str], str | None], project: str, stack: str) -> None:
        self._get = get
        self.project = project
        self.stack = stack

    def fail(self, key: str, value: object, problem: str, fix: str) -> ConfigError:
        return ConfigError(
            f"Pulumi.{self.stack}.yaml: config key '{self.project}:{key}' = {value!r} {problem}. {fix}"
        )

    def raw(self, key: str) -> str | None:
        value = self._get(key)
        return None if value is None or value == "" else value

    def str_(self, key: str, default: str | None, choices: tuple[str, ...] = ()) -> str | None:
        value = self.raw(key)
        if value is None:
            return default
        if choices and value not in choices:
            raise self.fail(key, value, "is not allowed", f"Use one of: {', '.join(choices)}.")
        return value

    def required_str(self, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
        value = self.str_(key, default, choices)
        assert value is not None
        return value

    def matching(self, key: str, default: str | None, pattern: re.Pattern[str], example: str) -> str | None:
        value = self.str_(key, default)
        if value is not None and not pattern.match(value):
            raise self.fail(key, value, "has the wrong format", f"Write it like {example!r}.")
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise self.fail(key, value, "is not a boolean", "Set true or false.")
        return value.lower() == "true"

    def int_(self, key: str, default: int, low: int, high: int) -> int:
        value = self.raw(key)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise self.fail(key, value, "is not an integer", f"Set a whole number {low}..{high}.") from None
        if not low <= number <= high:
            raise self.fail(key, value, f"is outside {low}..{high}", f"Set a number {low}..{high}.")
        return number

    def float_(self, key: str, default: float, low: float, high: float, *, open_low: bool = True) -> float:
        """A number in (low, high] (or [low, high] with ``open_low=False``)."""
        value = self.raw(key)
        if value is None:
            return default
        span = f"{'above' if open_low else 'from'} {low:g} up to {high:g}"
        try:
            number = float(value)
        except ValueError:
            raise self.fail(key, value, "is not a number", f"Set a number {span}.") from None
        if not (low < number if open_low else low <= number) or not number <= high:
            raise self.fail(key, value, f"is not {span}", f"Set a number {span}.")
        return number

    def obj(self, key: str, kind: type[T], default: T) -> T:
        value = self.raw(key)
        if value is None:
            return default
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            raise self.fail(
                key, value, "is not valid structured config", "Write it as a YAML mapping/list."
            ) from None
        if not isinstance(parsed, kind):
            raise self.fail(key, value, f"is not a {kind.__name__}", f"Write a YAML {kind.__name__}.")
        return parsed

    def cidr(self, key: str, value: str, example: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """``value`` as a network; host bits set (10.20.1.0/16) is an error, not silently masked."""
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise self.fail(
                key, value, f"is not a CIDR network ({exc})", f"Write it like {example!r}."
            ) from None

    def str_list(
        self, key: str, pattern: re.Pattern[str] | None = None, example: str = ""
    ) -> tuple[str, ...]:
        items = self.obj(key, list, [])
        for item in items:
            if not isinstance(item, str) or (pattern is not None and not pattern.match(item)):
                raise self.fail(key, items, f"holds a bad entry {item!r}", f"List strings like {example!r}.")
        return tuple(items)


def _spec(reader: _Reader) -> tuple[str, ModelSpec]:
    """The stack's model spec (``modelSpec``, default model.yaml, relative to the project folder)."""
    for moved, where in (("dataPath", "data"), ("modelParams", "params (and split)")):
        if reader.raw(moved) is not None:
            raise reader.fail(
                moved, reader.raw(moved), "is no longer read",
                f"Move it into the model spec as `{where}` (modelSpec, default model.yaml); remove the key.",
            )  # fmt: skip
    path = reader.required_str("modelSpec", TrainingSettings.spec_path)
    try:
        return path, load_spec(path)
    except SpecError as exc:
        raise reader.fail(
            "modelSpec", path, f"is not a usable model spec: {exc}", "Fix the spec or point modelSpec at one."
        ) from None


def _gate(reader: _Reader, spec: ModelSpec) -> Gate:
    """The spec's gate with this stack's overrides, e.g. ``{accuracy: {min: 0.92}, champion_margin: 0.01}``,
    checked against the metric table of the spec's task."""
    given = reader.obj("gate", dict, {})
    try:
        return spec.gate.with_overrides(given)
    except GateConfigError as exc:
        key = f"gate.{exc.key}" if exc.key else "gate"
        value = given.get(exc.key.split(".")[0], given) if exc.key else given
        raise reader.fail(
            key, value, exc.problem, f"{exc.fix} (a {spec.task} model: {spec.path.name})."
        ) from None


def _serving(reader: _Reader) -> ServingSettings:
    d = ServingSettings()
    quantities = {}
    for key, default in (
        ("servingCpuRequest", d.cpu_request),
        ("servingCpuLimit", d.cpu_limit),
        ("servingMemoryRequest", d.memory_request),
        ("servingMemoryLimit", d.memory_limit),
    ):
        quantities[key] = reader.matching(key, default, K8S_QUANTITY_RE, "500m or 1Gi")
    min_replicas = reader.int_("servingMinReplicas", d.min_replicas, 1, 50)
    max_replicas = reader.int_("servingMaxReplicas", max(d.max_replicas, min_replicas), 1, 100)
    if max_replicas < min_replicas:
        raise reader.fail(
            "servingMaxReplicas",
            max_replicas,
            f"is below servingMinReplicas ({min_replicas})",
            "Raise servingMaxReplicas or lower servingMinReplicas.",
        )
    return ServingSettings(
        namespace=reader.matching("servingNamespace", d.namespace, DNS_LABEL_RE, "model-serving") or "",
        service_type=reader.required_str("servingServiceType", d.service_type, SERVICE_TYPES),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_cpu_utilization=reader.int_("servingTargetCpu", d.target_cpu_utilization, 10, 100),
        cpu_request=quantities["servingCpuRequest"] or "",
        cpu_limit=quantities["servingCpuLimit"] or "",
        memory_request=quantities["servingMemoryRequest"] or "",
        memory_limit=quantities["servingMemoryLimit"] or "",
        base_image=reader.required_str("servingBaseImage", d.base_image),
        platform=reader.required_str("imagePlatform", d.platform, ("linux/amd64", "linux/arm64")),
    )


def _cluster(reader: _Reader, azure: bool) -> ClusterSettings:
    d = ClusterSettings()
    user_min = reader.int_("userNodeMinCount", d.user_min_count, 0, 100)
    user_max = reader.int_("userNodeMaxCount", max(d.user_max_count, user_min, 1), 1, 1000)
    if user_max < user_min:
        raise reader.fail(
            "userNodeMaxCount",
            user_max,
            f"is below userNodeMinCount ({user_min})",
            "Raise userNodeMaxCount or lower userNodeMinCount.",
        )
    ranges, private = _api_server(reader, d.private_cluster)
    return ClusterSettings(
        system_vm_size=reader.required_str("systemNodeVmSize", d.system_vm_size),
        system_node_count=reader.int_("systemNodeCount", d.system_node_count, 1, 100),
        user_vm_size=reader.required_str("userNodeVmSize", d.user_vm_size),
        user_min_count=user_min,
        user_max_count=user_max,
        kubernetes_version=reader.matching(
            "kubernetesVersion", None, re.compile(r"^\d+\.\d+(\.\d+)?$"), "1.33"
        ),
        upgrade_channel=reader.required_str("upgradeChannel", d.upgrade_channel, UPGRADE_CHANNELS),
        node_os_upgrade_channel=reader.required_str(
            "nodeOsUpgradeChannel", d.node_os_upgrade_channel, NODE_OS_UPGRADE_CHANNELS
        ),
        kubelogin_mode=reader.required_str("kubeloginMode", d.kubelogin_mode, KUBELOGIN_MODES),
        admin_group_object_ids=reader.str_list(
            "adminGroupObjectIds", re.compile(r"^[0-9a-fA-F-]{36}$"), "00000000-0000-0000-0000-000000000000"
        ),
        vnet_cidr=_vnet_cidr(reader, d.vnet_cidr),
        deployers=_principals(reader, "deployerPrincipals", required=azure),
        tier=reader.required_str("aksTier", d.tier, AKS_TIERS),
        availability_zones=_zones(reader),
        maintenance=_maintenance(reader, d.maintenance),
        api_authorized_ranges=ranges,
        private_cluster=private,
    )


def _principals(reader: _Reader, key: str, required: bool) -> tuple[Principal, ...]:
    """A list of {objectId, principalType} mappings; empty is an error when ``required``."""
    example = "[{objectId: <guid>, principalType: ServicePrincipal}]"
    items = reader.obj(key, list, [])
    if required and not items:
        raise reader.fail(
            key,
            items,
            "is empty",
            f"List who runs `pulumi up` (CI's identity, people) as {example}; "
            "the object id of a managed identity is its principalId.",
        )
    found = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"objectId", "principalType"}:
            raise reader.fail(key, items, f"holds a bad entry {item!r}", f"Write {example}.")
        if not isinstance(item["objectId"], str) or not GUID_RE.match(item["objectId"]):
            raise reader.fail(f"{key}.objectId", item["objectId"], "is not a GUID", f"Write {example}.")
        if item["principalType"] not in PRINCIPAL_TYPES:
            raise reader.fail(
                f"{key}.principalType",
                item["principalType"],
                "is not allowed",
                f"Use one of: {', '.join(PRINCIPAL_TYPES)}.",
            )
        found.append(Principal(item["objectId"], item["principalType"]))
    return tuple(found)


def _maintenance(reader: _Reader, default: MaintenanceWindow) -> MaintenanceWindow:
    names = {
        "dayOfWeek": "day_of_week",
        "startTime": "start_time",
        "durationHours": "duration_hours",
        "utcOffset": "utc_offset",
    }
    given = reader.obj("maintenanceWindow", dict, {})
    unknown = [k for k in given if k not in names]
    if unknown:
        raise reader.fail(
            "maintenanceWindow", given, f"has unknown fields {unknown}", f"Use: {', '.join(names)}."
        )
    day = given.get("dayOfWeek", default.day_of_week)
    if day not in WEEKDAYS:
        raise reader.fail("maintenanceWindow.dayOfWeek", day, "is not a weekday", f"Use one of {WEEKDAYS}.")
    start = given.get("startTime", default.start_time)
    if not isinstance(start, str) or not HHMM_RE.match(start):
        raise reader.fail("maintenanceWindow.startTime", start, "is not HH:mm", "Write it like '02:00'.")
    hours = given.get("durationHours", default.duration_hours)
    if isinstance(hours, bool) or not isinstance(hours, int) or not 4 <= hours <= 24:
        raise reader.fail(
            "maintenanceWindow.durationHours", hours, "is outside 4..24", "AKS needs 4 to 24 hours."
        )
    offset = given.get("utcOffset", default.utc_offset)
    if not isinstance(offset, str) or not UTC_OFFSET_RE.match(offset):
        raise reader.fail("maintenanceWindow.utcOffset", offset, "is not ±HH:mm", "Write it like '+01:00'.")
    return MaintenanceWindow(day, start, hours, offset)


def _zones(reader: _Reader) -> tuple[str, ...]:
    zones = reader.str_list("availabilityZones")
    bad = [z for z in zones if z not in AVAILABILITY_ZONES] or (
        ["a zone listed twice"] if len(set(zones)) != len(zones) else []
    )
    if bad:
        raise reader.fail(
            "availabilityZones", list(zones), f"holds {bad[0]!r}", "List zones from '1', '2', '3' once each."
        )
    return zones


def _api_server(reader: _Reader, default_private: bool) -> tuple[tuple[str, ...], bool]:
    """(authorized ranges, private cluster): how the API server is exposed."""
    ranges = reader.str_list("apiServerAuthorizedIpRanges")
    for cidr in ranges:
        if reader.cidr("apiServerAuthorizedIpRanges", cidr, "203.0.113.0/24").prefixlen == 0:
            raise reader.fail(
                "apiServerAuthorizedIpRanges", cidr, "opens the API server to everyone", "List your ranges."
            )
    private = reader.bool_("privateCluster", default_private)
    if private and ranges:
        raise reader.fail(
            "apiServerAuthorizedIpRanges",
            list(ranges),
            "is set with privateCluster: true (AKS does not combine them)",
            "Remove one of the two keys.",
        )
    return ranges, private


def _vnet_cidr(reader: _Reader, default: str) -> str:
    """The VNet range: an IPv4 network of /21 or more, clear of the cluster's pod and service ranges."""
    value = reader.required_str("vnetCidr", default)
    vnet = reader.cidr("vnetCidr", value, "10.20.0.0/16")
    if not isinstance(vnet, ipaddress.IPv4Network):
        raise reader.fail("vnetCidr", value, "is not IPv4", "Use a private IPv4 range such as 10.20.0.0/16.")
    try:
        subnet_prefixes(value)
    except ValueError:
        raise reader.fail(
            "vnetCidr", value, "is smaller than /21", "Use a /21 or larger (e.g. 10.20.0.0/16)."
        ) from None
    for name, reserved in (("pod", AKS_POD_CIDR), ("service", AKS_SERVICE_CIDR)):
        if vnet.overlaps(ipaddress.ip_network(reserved)):
            raise reader.fail(
                "vnetCidr",
                value,
                f"overlaps the cluster's {name} CIDR {reserved} (infra/network.py)",
                "Pick a range outside 192.168.0.0/16 and 10.0.0.0/16, e.g. 10.20.0.0/16.",
            )
    return value


def _monitoring(reader: _Reader) -> MonitoringSettings:
    """The alert thresholds (``monitoring*`` keys) and the alert e-mail receivers."""
    d = AlertThresholds()

    def window_of(key: str, default: str, example: str) -> str:
        window = reader.matching(key, default, PROM_WINDOW_RE, example) or default
        minutes = int(window[:-1]) * {"m": 1, "h": 60, "d": 1440}[window[-1]]
        if not 5 <= minutes <= 7 * 1440:
            raise reader.fail(key, window, "is outside 5m..7d", "Set a window such as 30m, 1h or 1d.")
        return window

    window = window_of("monitoringWindow", d.window, "1h")
    thresholds = AlertThresholds(
        psi=reader.float_("monitoringPsiThreshold", d.psi, 0, 10),
        error_rate=reader.float_("monitoringErrorRate", d.error_rate, 0, 1),
        p99_latency_s=reader.float_("monitoringP99LatencySeconds", d.p99_latency_s, 0, 300),
        out_of_range_share=reader.float_("monitoringOutOfRangeShare", d.out_of_range_share, 0, 1),
        no_traffic_minutes=reader.int_("monitoringNoTrafficMinutes", d.no_traffic_minutes, 1, 7 * 1440),
        window=window,
        accuracy_drop=reader.float_("monitoringAccuracyDrop", d.accuracy_drop, 0, 1),
        error_increase=reader.float_("monitoringErrorIncrease", d.error_increase, 0, 100),
        feedback_window=window_of("monitoringFeedbackWindow", d.feedback_window, "1d"),
    )
    emails = reader.str_list("monitoringAlertEmails", EMAIL_RE, "oncall@example.com")
    if len(set(emails)) != len(emails):
        raise reader.fail(
            "monitoringAlertEmails", list(emails), "lists an address twice", "List each address once."
        )
    return MonitoringSettings(thresholds=thresholds, alert_emails=emails)


# Keys an older version of this program read, and what replaced them (a stale key is an error).
RETIRED_TRACKING_KEYS = {
    "mlflowAllowedCidrs": "MLflow is never public in an Azure stack (ClusterIP only)",
    "mlflowDnsLabel": "MLflow is never public in an Azure stack (ClusterIP only)",
}
TUNNEL_HINT = (
    "The deploying machine reaches MLflow through a port-forward over the AKS API server "
    "(infra/tunnel.py); people use `make mlflow-ui STACK=<stack>`."
)


def _tracking(
    reader: _Reader, mode: str, trains: bool, admin_password: pulumi.Output[str] | None, spec: ModelSpec
) -> TrackingSettings:
    d = TrackingSettings()
    for key, why in RETIRED_TRACKING_KEYS.items():
        if reader.raw(key) is not None:
            raise reader.fail(
                key,
                reader.raw(key),
                f"is no longer read: {why}",
                f"{TUNNEL_HINT} Remove it: `pulumi config rm {key}`.",
            )
    local = mode == "local"
    service_type = reader.required_str(
        "mlflowServiceType",
        "NodePort" if local else d.service_type,
        ("ClusterIP", "NodePort") if local else ("ClusterIP",),
    )
    tracking_uri = reader.matching(
        "trackingUri", None, re.compile(r"^https?://[^\s/]+(/.*)?$"), "http://127.0.0.1:5000"
    )
    if tracking_uri is not None and not local:
        raise reader.fail(
            "trackingUri", tracking_uri, "is only for mode: local", f"{TUNNEL_HINT} Remove the key."
        )
    if trains and local and service_type == "ClusterIP" and tracking_uri is None:
        raise reader.fail(
            "trackingUri",
            None,
            "is unset while mlflowServiceType is ClusterIP",
            "Training runs on the deploying machine and must reach MLflow: set trackingUri "
            "(e.g. a kubectl port-forward URL) or use mlflowServiceType NodePort.",
        )
    return TrackingSettings(
        image=reader.matching(
            "mlflowImage", None, DIGEST_REF_RE, "registry.example.com/mlflow@sha256:<64 hex>"
        ),
        service_type=service_type,
        extra_allowed_hosts=reader.str_list(
            "mlflowAllowedHosts", re.compile(r"^[A-Za-z0-9*.:\-\[\]]+$"), "mlflow.example.com"
        ),
        tracking_uri=tracking_uri,
        admin_username=reader.matching(
            "mlflowAdminUsername", d.admin_username, re.compile(r"^[A-Za-z0-9_.-]{3,64}$"), "admin"
        )
        or d.admin_username,
        admin_password=admin_password,
        experiment_name=reader.required_str("mlflowExperimentName", spec.name),
        model_name=reader.matching(
            "modelName", spec.registered_model_name, re.compile(r"^[A-Za-z0-9_.-]+$"), "my-model"
        )
        or spec.registered_model_name,
        postgres_sku=reader.required_str("postgresSku", d.postgres_sku),
        postgres_tier=reader.required_str("postgresTier", d.postgres_tier, POSTGRES_TIERS),
        postgres_version=reader.required_str("postgresVersion", d.postgres_version, ("14", "15", "16", "17")),
        postgres_storage_gb=reader.int_("postgresStorageGb", d.postgres_storage_gb, 32, 16384),
        postgres_backup_retention_days=reader.int_(
            "postgresBackupRetentionDays", d.postgres_backup_retention_days, 7, 35
        ),
        blob_soft_delete_days=reader.int_("blobSoftDeleteDays", d.blob_soft_delete_days, 1, 365),
        node_port=reader.int_("mlflowNodePort", d.node_port, 30000, 32767),
    )


def parse_settings(
    get: Callable[[str], str | None],
    *,
    project: str,
    stack: str,
    get_secret: Callable[[str], pulumi.Output[str] | None] = lambda _key: None,
    require_secret: Callable[[str], pulumi.Output[str]] | None = None,
) -> Settings:
    """Build and validate the settings from a config getter (raw string values, as Pulumi stores them)."""
    reader = _Reader(get, project, stack)
    mode = reader.required_str("mode", "azure", MODES)
    promote_from = reader.matching("promoteFrom", None, PROMOTE_FROM_RE, "organization/ml-delivery/dev")
    if promote_from is not None and promote_from.split("/")[2] == stack:
        raise reader.fail(
            "promoteFrom", promote_from, "names this stack itself", "Promote from another stack, e.g. dev."
        )
    if promote_from is not None and mode == "local":
        raise reader.fail(
            "promoteFrom", promote_from, "is set on a local stack", "Promotion needs mode: azure."
        )

    registry_username = reader.str_("registryUsername", None)
    registry_password = None
    if registry_username is not None:
        if require_secret is None:
            raise reader.fail("registryPassword", None, "cannot be read", "Run under Pulumi.")
        registry_password = require_secret("registryPassword")
    registry_server = reader.matching(
        "registryServer",
        "localhost:5001" if mode == "local" else None,
        re.compile(r"^[A-Za-z0-9.\-]+(:\d+)?$"),
        "localhost:5001",
    )
    if registry_server is not None and mode != "local":
        raise reader.fail(
            "registryServer",
            registry_server,
            "is only for mode: local",
            "Remove it; azure stacks create their own registry.",
        )

    spec_path, spec = _spec(reader)
    tags = reader.obj("tags", dict, {})
    return Settings(
        project=project,
        stack=stack,
        mode=mode,
        location=reader.required_str("location", "westeurope"),
        promote_from=promote_from,
        cluster=_cluster(reader, mode == "azure"),
        local=LocalSettings(
            kube_context=reader.str_("kubeContext", None),
            kubeconfig_path=reader.required_str("kubeconfigPath", LocalSettings.kubeconfig_path),
        ),
        registry=RegistrySettings(
            sku=reader.required_str("acrSku", RegistrySettings.sku, ACR_SKUS),
            server=registry_server,
            username=registry_username,
            password=registry_password,
        ),
        tracking=_tracking(reader, mode, promote_from is None, get_secret("mlflowAdminPassword"), spec),
        training=TrainingSettings(spec=spec, spec_path=spec_path),
        serving=_serving(reader),
        gate=_gate(reader, spec),
        tags={"project": project, "stack": stack, **{str(k): str(v) for k, v in tags.items()}},
        image_ref_override=reader.matching(
            "imageRefOverride",
            None,
            REGISTRY_DIGEST_REF_RE,
            "myregistry.azurecr.io/my-model@sha256:<64 hex> (an earlier imageRef output)",
        ),
        protect_stateful=reader.bool_("protectStatefulResources", mode != "local"),
        monitoring=_monitoring(reader),
    )


def load_settings() -> Settings:
    """Read this stack's settings from ``pulumi.Config`` (the program's only config read)."""
    config = pulumi.Config()
    return parse_settings(
        config.get,
        project=pulumi.get_project(),
        stack=pulumi.get_stack(),
        get_secret=config.get_secret,
        require_secret=config.require_secret,
    )
