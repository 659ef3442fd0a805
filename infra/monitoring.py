"""AKS managed Prometheus for an Azure stack: where the served model's metrics go and what watches them.

``AzureMonitoring`` declares what the official AKS onboarding (``az aks create
--enable-azure-monitor-metrics``) creates, as resources of this stack: an Azure Monitor workspace, a
data collection endpoint, a data collection rule (Prometheus forwarder -> the workspace) and its
association to the cluster. The cluster itself turns the metrics addon on
(``azureMonitorProfile.metrics.enabled``, infra/cluster.py); the addon (``ama-metrics`` pods in
kube-system) sends once the association exists. No role is granted for ingestion: the association
authorizes the cluster's addon, as in the onboarding templates.

Then the watching: one ``PrometheusRuleGroup`` per rule group of ``infra.alert_rules`` (the same
expressions, labels and annotations as the Prometheus rules file; ``for`` and ``interval`` as the
ISO 8601 durations Azure requires), scoped to the workspace and the cluster, with an action group
that e-mails ``monitoringAlertEmails`` when any alert fires. In the cluster: the addon's settings
ConfigMap turns on pod-annotation scraping for the serving namespace only (the pods carry the
``prometheus.io/*`` annotations, infra/serving.py), and a NetworkPolicy admits the addon's
collector pods to the model port.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pulumi_azure_native import alertsmanagement, monitor

from infra.alert_rules import Rule, RuleGroup
from infra.serving import APP
from infra.settings import Settings
from model import container

PROMETHEUS_STREAM = "Microsoft-PrometheusMetrics"
DESTINATION = "MonitoringAccount1"  # the DCR's name for the workspace destination
# The addon's settings ConfigMap (name and namespace are fixed by the addon) and the schema we write.
SETTINGS_CONFIGMAP = "ama-metrics-settings-configmap"
ADDON_NAMESPACE = "kube-system"
# The addon's collector pods (the ama-metrics Deployment), which run the pod-annotation scrape job.
SCRAPER_LABELS = {"rsName": "ama-metrics"}
# Azure Monitor alert severities: 0 Critical .. 4 Verbose; 3 when a rule names none it knows.
SEVERITIES = {"critical": 0, "error": 1, "warning": 2, "info": 3}
DEFAULT_SEVERITY = 3
GROUP_INTERVAL_SECONDS = (60, 15 * 60)  # Azure evaluates a rule group every 1 to 15 minutes
# prometheusRuleGroups names: no : @ / # { } % & + * < > ?
_GROUP_NAME_FORBIDDEN = re.compile(r"[:@/#{}%&+*<>?\s]+")
_PROM_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_ISO_DURATION = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?$")


def prometheus_seconds(duration: str) -> int:
    """A Prometheus duration (``1h30m``, ``5m``) in seconds; sub-second parts are refused."""
    parts = _PROM_DURATION.findall(duration)
    if not duration or "".join(n + u for n, u in parts) != duration or any(u == "ms" for _, u in parts):
        raise ValueError(f"{duration!r} is not a whole-second Prometheus duration such as 30s, 5m or 1h30m")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def iso_duration(duration: str) -> str:
    """The Prometheus duration ``duration`` as the ISO 8601 duration Azure takes (``10m`` -> ``PT10M``)."""
    hours, rest = divmod(prometheus_seconds(duration), 3600)
    minutes, seconds = divmod(rest, 60)
    body = "".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if v)
    return f"PT{body or '0S'}"


def iso_seconds(duration: str) -> int:
    """Seconds of an ISO 8601 ``PT..H..M..S`` duration (the inverse of ``iso_duration``)."""
    match = _ISO_DURATION.match(duration)
    if not match or duration == "PT":
        raise ValueError(f"{duration!r} is not an ISO 8601 duration such as PT5M")
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


def azure_group_name(stack: str, group: RuleGroup) -> str:
    """The rule group's ARM name: ``<stack>-<group>`` with the characters ARM refuses replaced."""
    return _GROUP_NAME_FORBIDDEN.sub("-", f"{stack}-{group.name}").strip("-")


def azure_interval(group: RuleGroup) -> str:
    seconds = prometheus_seconds(group.interval)
    low, high = GROUP_INTERVAL_SECONDS
    if not low <= seconds <= high:
        raise ValueError(
            f"rule group {group.name!r}: interval {group.interval} is outside 1m..15m, the range Azure "
            "Monitor evaluates managed Prometheus rule groups at: use one in range (infra/alert_rules.py)"
        )
    return iso_duration(group.interval)


def azure_rule(rule: Rule, action_group_id: pulumi.Input[str] | None) -> dict[str, Any]:
    """One rule as a ``PrometheusRule`` (alertsmanagement 2023-03-01): expression, labels and
    annotations as written; alerts also get a severity, auto-resolution and the action group."""
    out: dict[str, Any] = {"expression": rule.expr, "enabled": True}
    out["record" if rule.record else "alert"] = rule.record or rule.alert
    if rule.labels:
        out["labels"] = dict(rule.labels)
    if rule.record:
        return out
    if rule.for_:
        out["for_"] = iso_duration(rule.for_)
    if rule.annotations:
        out["annotations"] = dict(rule.annotations)
    out["severity"] = SEVERITIES.get(str(rule.labels.get("severity", "")).lower(), DEFAULT_SEVERITY)
    out["resolve_configuration"] = {"auto_resolved": True, "time_to_resolve": "PT10M"}
    if action_group_id is not None:
        out["actions"] = [{"action_group_id": action_group_id}]
    return out


def addon_settings(namespace: str) -> dict[str, str]:
    """The addon's settings ConfigMap data (schema v1): scrape annotated pods in ``namespace`` only.

    Sections left out keep the addon's defaults. The namespace is a DNS label, which has no regex
    metacharacter, and Prometheus anchors relabel regexes: the value matches that namespace alone.
    """
    return {
        "schema-version": "v1",
        "config-version": "ver1",
        "pod-annotation-based-scraping": f'podannotationnamespaceregex = "{namespace}"',
    }


def scrape_ingress() -> dict[str, Any]:
    """NetworkPolicy spec admitting the addon's collector pods to the serving pods' model port."""
    return {
        "pod_selector": {"match_labels": {"app": APP}},
        "policy_types": ["Ingress"],
        "ingress": [
            {
                "from": [
                    {
                        "namespace_selector": {
                            "match_labels": {"kubernetes.io/metadata.name": ADDON_NAMESPACE}
                        },
                        "pod_selector": {"match_labels": dict(SCRAPER_LABELS)},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": container.SERVICE_PORT}],
            }
        ],
    }


class AzureMonitoring(pulumi.ComponentResource):
    """Managed Prometheus for one AKS cluster, the stack's rule groups and their notifications."""

    workspace_id: pulumi.Output[str]
    query_endpoint: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        resource_group_name: pulumi.Input[str],
        cluster_id: pulumi.Input[str],
        cluster_name: pulumi.Input[str],
        groups: Sequence[RuleGroup],
        provider: k8s.Provider,
        serving: pulumi.Resource,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("ml-delivery:infra:AzureMonitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(settings.tags)
        location = settings.location
        workspace = monitor.AzureMonitorWorkspace(
            f"{name}-workspace",
            resource_group_name=resource_group_name,
            location=location,
            tags=tags,
            opts=child,
        )
        endpoint = monitor.DataCollectionEndpoint(
            f"{name}-dce",
            resource_group_name=resource_group_name,
            location=location,
            kind="Linux",
            tags=tags,
            opts=child,
        )
        rule = monitor.DataCollectionRule(
            f"{name}-dcr",
            resource_group_name=resource_group_name,
            location=location,
            kind="Linux",
            description="Managed Prometheus: the cluster's metrics to the stack's Azure Monitor workspace",
            data_collection_endpoint_id=endpoint.id,
            data_sources={
                "prometheus_forwarder": [{"name": "PrometheusDataSource", "streams": [PROMETHEUS_STREAM]}]
            },
            destinations={
                "monitoring_accounts": [{"account_resource_id": workspace.id, "name": DESTINATION}]
            },
            data_flows=[{"streams": [PROMETHEUS_STREAM], "destinations": [DESTINATION]}],
            tags=tags,
            opts=child,
        )
        association = monitor.DataCollectionRuleAssociation(
            f"{name}-dcra",
            resource_uri=cluster_id,
            association_name=pulumi.Output.concat("MSProm-", location, "-", cluster_name),
            data_collection_rule_id=rule.id,
            description="Managed Prometheus of this cluster: deleting it stops its metrics collection.",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[rule]),
        )
        action_group_id: pulumi.Output[str] | None = None
        emails = settings.monitoring.alert_emails
        if emails:
            action_group = monitor.ActionGroup(
                f"{name}-alerts",
                resource_group_name=resource_group_name,
                location="Global",
                enabled=True,
                group_short_name=f"ml-{settings.stack}"[:12],  # ARM: at most 12 characters
                email_receivers=[
                    {"name": f"email-{i}", "email_address": email, "use_common_alert_schema": True}
                    for i, email in enumerate(emails)
                ],
                tags=tags,
                opts=child,
            )
            action_group_id = action_group.id
        for group in groups:
            azure_name = azure_group_name(settings.stack, group)
            rules: Any = [azure_rule(r, action_group_id) for r in group.rules]
            alertsmanagement.PrometheusRuleGroup(
                f"{name}-rules-{azure_name}",
                resource_group_name=resource_group_name,
                location=location,
                rule_group_name=azure_name,
                description=f"{group.name} (infra/alert_rules.py), stack {settings.stack}",
                scopes=[workspace.id, cluster_id],
                cluster_name=cluster_name,  # the `cluster` label the addon puts on every series
                enabled=True,
                interval=azure_interval(group),
                rules=rules,
                tags=tags,
                opts=child,
            )
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)
        k8s.core.v1.ConfigMap(
            f"{name}-addon-settings",
            metadata={"name": SETTINGS_CONFIGMAP, "namespace": ADDON_NAMESPACE},
            data=addon_settings(settings.serving.namespace),
            # scraping is configured once the cluster's metrics have somewhere to go
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[association])),
        )
        scrape: Any = scrape_ingress()
        k8s.networking.v1.NetworkPolicy(
            f"{name}-allow-metrics-scrape",
            metadata={"name": "allow-metrics-scrape", "namespace": settings.serving.namespace},
            spec=scrape,
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[serving])),
        )
        self.workspace_id = workspace.id
        self.query_endpoint = workspace.metrics.apply(lambda m: m.prometheus_query_endpoint if m else "")
        self.register_outputs({"workspaceId": self.workspace_id, "queryEndpoint": self.query_endpoint})
