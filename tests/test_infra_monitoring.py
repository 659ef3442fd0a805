"""Azure stacks declare AKS managed Prometheus and carry the alert rule groups verbatim.

The stacks run under Pulumi's mocks (tools.stack_mocks). The rule groups are given by the test (any
tuple of ``RuleGroup``s, through ``infra.alert_rules.rule_groups``), so what is checked is that
every rule reaches its ``PrometheusRuleGroup`` with the same expression, labels and annotations, and
``for``/``interval`` as the same durations in ISO 8601; ``test_the_shipped_rule_groups_...`` does the
same for the rule groups the program ships.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from infra import alert_rules
from infra.alert_rules import AlertThresholds, Rule, RuleGroup, rule_as_dict, rule_groups
from infra.monitoring import (
    ADDON_NAMESPACE,
    SCRAPER_LABELS,
    SETTINGS_CONFIGMAP,
    addon_settings,
    azure_group_name,
    azure_interval,
    iso_duration,
    iso_seconds,
    prometheus_seconds,
)
from infra.serving import APP
from infra.settings import ConfigError, parse_settings
from model import container
from tools.stack_mocks import CONFIGURED_DEPLOYERS, Resource, StackRun, load_stack_config, run_stack

DEPLOYERS = json.dumps(list(CONFIGURED_DEPLOYERS))

AZURE_STACKS = ("dev", "staging", "prod")
RULE_GROUP = "azure-native:alertsmanagement:PrometheusRuleGroup"
WORKSPACE = "azure-native:monitor:AzureMonitorWorkspace"
DCE = "azure-native:monitor:DataCollectionEndpoint"
DCR = "azure-native:monitor:DataCollectionRule"
DCRA = "azure-native:monitor:DataCollectionRuleAssociation"
ACTION_GROUP = "azure-native:monitor:ActionGroup"
AKS = "azure-native:containerservice:ManagedCluster"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
SERVING_NS = "model-serving"


def sample_groups(service: str, t: AlertThresholds) -> tuple[RuleGroup, ...]:
    """Rule groups shaped like the shipped ones: recording and alert rules, templated annotations."""
    return (
        RuleGroup(
            "model-drift",
            "1m",
            [
                Rule(
                    record="model:feature_psi",
                    expr=f'sum by (feature) (rate(model_bin_total{{service="{service}"}}[{t.window}]))',
                    labels={"service": service},
                ),
                Rule(
                    alert="ModelFeatureDrift",
                    expr=f"model:feature_psi > {t.psi}",
                    for_="1h30m",
                    labels={"severity": "warning"},
                    annotations={"summary": "{{ $labels.feature }} drifted", "runbook": "README#drift"},
                ),
            ],
        ),
        RuleGroup(
            "model-endpoint",
            "2m",
            [
                Rule(
                    alert="ModelNoTraffic",
                    expr=f'absent(bentoml_service_request_total{{service="{service}"}})',
                    for_=f"{t.no_traffic_minutes}m",
                    labels={"severity": "critical"},
                ),
                Rule(alert="ModelErrors", expr=f"model:error_ratio > {t.error_rate}"),
            ],
        ),
    )


@contextlib.contextmanager
def given_groups(asked: list[tuple[str, AlertThresholds]]) -> Iterator[None]:
    """``infra.alert_rules.rule_groups`` answers ``sample_groups`` meanwhile, recording its calls."""
    saved = getattr(alert_rules, "rule_groups", None)

    def given(service: str, thresholds: AlertThresholds, **_: object) -> tuple[RuleGroup, ...]:
        asked.append((service, thresholds))
        return sample_groups(service, thresholds)

    alert_rules.rule_groups = given
    try:
        yield
    finally:
        if saved is None:
            del alert_rules.rule_groups
        else:
            alert_rules.rule_groups = saved


_RUNS: dict[tuple[str, str], tuple[StackRun, list[tuple[str, AlertThresholds]]]] = {}


def stack(name: str, **config: Any) -> StackRun:
    return given_run(name, **config)[0]


def given_run(name: str, **config: Any) -> tuple[StackRun, list[tuple[str, AlertThresholds]]]:
    """The stack's run with the sample groups (once per config), and what the program asked groups for."""
    key = (name, repr(sorted(config.items())))
    if key not in _RUNS:
        asked: list[tuple[str, AlertThresholds]] = []
        with given_groups(asked):
            _RUNS[key] = (run_stack(name, config=config or None), asked)
    return _RUNS[key]


def run_settings(name: str):
    """The settings of ``Pulumi.<name>.yaml`` as the program reads them."""
    config, _ = load_stack_config(name, "ml-delivery")
    values = {"deployerPrincipals": DEPLOYERS}
    values |= {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("ml-delivery:")}
    return parse_settings(values.get, project="ml-delivery", stack=name)


def rule_groups_of(run: StackRun) -> dict[str, Resource]:
    return {r.inputs["ruleGroupName"]: r for r in run.of_type(RULE_GROUP)}


def assert_carried_verbatim(run: StackRun, groups: Sequence[RuleGroup]) -> None:
    """Each group is one PrometheusRuleGroup with its rules in order, as the rules file has them."""
    declared = rule_groups_of(run)
    assert sorted(declared) == sorted(azure_group_name(run.stack, g) for g in groups)
    aks = run.one(AKS)
    workspace = run.one(WORKSPACE)
    for group in groups:
        resource = declared[azure_group_name(run.stack, group)].inputs
        assert resource["scopes"] == [workspace.id, aks.id]
        assert resource["clusterName"] == aks.outputs["name"]
        assert resource["enabled"] is True
        assert iso_seconds(resource["interval"]) == prometheus_seconds(group.interval)
        assert len(resource["rules"]) == len(group.rules)
        for rule, azure in zip(group.rules, resource["rules"], strict=True):
            local = rule_as_dict(rule)  # the rule as the Prometheus rules file writes it
            assert azure["expression"] == local["expr"]
            for key in ("record", "alert", "labels", "annotations"):
                assert azure.get(key) == local.get(key), (group.name, key)
            if "for" in local:
                assert iso_seconds(azure["for"]) == prometheus_seconds(str(local["for"]))
            else:
                assert "for" not in azure


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("prom", "iso"),
    [
        ("1m", "PT1M"),
        ("90s", "PT1M30S"),
        ("1h30m", "PT1H30M"),
        ("15m", "PT15M"),
        ("2h", "PT2H"),
        ("1d", "PT24H"),
    ],
)
def test_prometheus_durations_become_the_same_iso_durations(prom: str, iso: str) -> None:
    assert iso_duration(prom) == iso
    assert iso_seconds(iso) == prometheus_seconds(prom)


@pytest.mark.parametrize("bad", ["", "5", "5x", "1m5", "500ms", "m", "1.5m"])
def test_a_bad_prometheus_duration_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="Prometheus duration"):
        iso_duration(bad)


@pytest.mark.parametrize("interval", ["30s", "16m", "1h"])
def test_a_group_interval_azure_cannot_evaluate_is_refused(interval: str) -> None:
    with pytest.raises(ValueError, match=r"model-drift.*1m\.\.15m"):
        azure_interval(RuleGroup("model-drift", interval, []))


def test_group_names_lose_the_characters_arm_refuses() -> None:
    assert azure_group_name("dev", RuleGroup("model:drift/psi", "1m", [])) == "dev-model-drift-psi"


# ---------------------------------------------------------------- the stacks


@pytest.mark.parametrize("name", AZURE_STACKS)
def test_every_rule_reaches_azure_verbatim(name: str) -> None:
    run, asked = given_run(name)
    [(service, thresholds)] = asked
    assert service == run_settings(name).training.spec.bento_name
    assert thresholds == run_settings(name).monitoring.thresholds
    assert_carried_verbatim(run, sample_groups(service, thresholds))


def test_thresholds_from_stack_config_reach_the_expressions() -> None:
    run, [(_, thresholds)] = given_run(
        "dev", monitoringPsiThreshold=0.35, monitoringWindow="30m", monitoringNoTrafficMinutes=20
    )
    assert (thresholds.psi, thresholds.window, thresholds.no_traffic_minutes) == (0.35, "30m", 20)
    rules = [rule for g in rule_groups_of(run).values() for rule in g.inputs["rules"]]
    assert "model:feature_psi > 0.35" in [r["expression"] for r in rules]
    assert any("[30m]" in r["expression"] for r in rules)
    assert {r["alert"]: r["for"] for r in rules if "for" in r}["ModelNoTraffic"] == "PT20M"


@pytest.mark.parametrize("name", AZURE_STACKS)
def test_managed_prometheus_collects_the_cluster_into_the_workspace(name: str) -> None:
    run = stack(name)
    aks = run.one(AKS)
    assert aks.inputs["azureMonitorProfile"] == {"metrics": {"enabled": True}}
    workspace, dce, dcr, dcra = (run.one(t) for t in (WORKSPACE, DCE, DCR, DCRA))
    assert workspace.inputs["location"] == dce.inputs["location"] == dcr.inputs["location"] == "westeurope"
    assert dce.inputs["kind"] == dcr.inputs["kind"] == "Linux"
    rule = dcr.inputs
    assert rule["dataCollectionEndpointId"] == dce.id
    assert rule["dataSources"] == {
        "prometheusForwarder": [{"name": "PrometheusDataSource", "streams": ["Microsoft-PrometheusMetrics"]}]
    }
    [destination] = rule["destinations"]["monitoringAccounts"]
    assert destination["accountResourceId"] == workspace.id
    assert rule["dataFlows"] == [
        {"streams": ["Microsoft-PrometheusMetrics"], "destinations": [destination["name"]]}
    ]
    assert dcra.inputs["resourceUri"] == aks.id
    assert dcra.inputs["dataCollectionRuleId"] == dcr.id
    assert dcra.inputs["associationName"] == f"MSProm-westeurope-{aks.outputs['name']}"
    assert dcr.urn in dcra.depends_on
    # No role assignment on the DCR: the association authorizes the addon (as the onboarding does).
    assert not [
        r for r in run.of_type("azure-native:authorization:RoleAssignment") if dcr.id in r.inputs["scope"]
    ]
    assert run.outputs["monitoringWorkspaceId"] == workspace.id
    assert run.outputs["prometheusQueryEndpoint"].endswith(".prometheus.monitor.azure.com")
    assert not {"monitoringWorkspaceId", "prometheusQueryEndpoint"} & run.secret_outputs


@pytest.mark.parametrize("name", AZURE_STACKS)
def test_the_addon_scrapes_the_serving_pods_through_their_network_policy(name: str) -> None:
    run = stack(name)
    [settings_map] = [
        c for c in run.of_type(CONFIG_MAP) if c.inputs["metadata"]["name"] == SETTINGS_CONFIGMAP
    ]
    assert settings_map.inputs["metadata"]["namespace"] == ADDON_NAMESPACE == "kube-system"
    data = settings_map.inputs["data"]
    assert data["schema-version"] == "v1"
    assert data["pod-annotation-based-scraping"] == f'podannotationnamespaceregex = "{SERVING_NS}"'
    assert run.one(DCRA).urn in settings_map.depends_on
    [scrape] = [
        p
        for p in run.of_type(NETWORK_POLICY)
        if p.inputs["metadata"] == {"name": "allow-metrics-scrape", "namespace": SERVING_NS}
    ]
    spec = scrape.inputs["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app": APP}} and spec["policyTypes"] == ["Ingress"]
    [ingress] = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": container.SERVICE_PORT}]
    assert ingress["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": SCRAPER_LABELS},
        }
    ]
    namespace = run.one("kubernetes:core/v1:Namespace", "serving-ns")
    assert namespace.urn in scrape.depends_on  # the serving namespace exists first
    # the pods it admits the scraper to carry the annotations the addon's pod job keeps
    [deployment] = [
        d
        for d in run.of_type("kubernetes:apps/v1:Deployment")
        if d.inputs["metadata"]["namespace"] == SERVING_NS
    ]
    annotations = deployment.inputs["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container.SERVICE_PORT)


def v1_sections(data: dict[str, str]) -> dict[str, dict[str, str]]:
    """The settings as the addon reads schema v1: each key a file of ``key = value`` lines, comments
    and blank lines skipped, quotes around the value removed (prometheus-collector shared.ParseV1Config)."""
    sections = {}
    for name, text in data.items():
        pairs = {}
        for line in (raw.strip() for raw in text.splitlines()):
            if line and not line.startswith("#") and "=" in line:
                key, value = (part.strip() for part in line.split("=", 1))
                pairs[key] = value.strip('"')
        sections[name] = pairs
    return sections


def test_the_addon_reads_the_serving_namespace_from_its_settings() -> None:
    data = addon_settings(SERVING_NS)
    assert data["schema-version"] == "v1"  # the schema the addon's collector declares (schema-versions)
    sections = v1_sections(data)
    assert sections["pod-annotation-based-scraping"] == {"podannotationnamespaceregex": SERVING_NS}
    # a DNS label needs no escaping: it is a regex matching exactly itself (relabel regexes are anchored)
    assert re.fullmatch(sections["pod-annotation-based-scraping"]["podannotationnamespaceregex"], SERVING_NS)
    assert not re.fullmatch(
        sections["pod-annotation-based-scraping"]["podannotationnamespaceregex"], "mlflow"
    )


def test_no_action_group_without_receivers() -> None:
    run = stack("dev")
    assert run.of_type(ACTION_GROUP) == []
    rules = [rule for g in rule_groups_of(run).values() for rule in g.inputs["rules"]]
    assert not [r for r in rules if "actions" in r]


def test_alerts_notify_the_configured_receivers() -> None:
    emails = ["oncall@example.com", "ml-team@example.org"]
    run = stack("prod", monitoringAlertEmails=emails)
    group = run.one(ACTION_GROUP)
    assert group.inputs["location"] == "Global" and group.inputs["enabled"] is True
    assert len(group.inputs["groupShortName"]) <= 12
    assert [r["emailAddress"] for r in group.inputs["emailReceivers"]] == emails
    assert len({r["name"] for r in group.inputs["emailReceivers"]}) == len(emails)
    rules = [rule for g in rule_groups_of(run).values() for rule in g.inputs["rules"]]
    alerts = [r for r in rules if "alert" in r]
    assert alerts and all(r["actions"] == [{"actionGroupId": group.id}] for r in alerts)
    assert all("actions" not in r for r in rules if "record" in r)
    severities = {r["alert"]: r["severity"] for r in alerts}
    assert (severities["ModelNoTraffic"], severities["ModelFeatureDrift"], severities["ModelErrors"]) == (
        0,
        2,
        3,
    )
    assert all(r["resolveConfiguration"] == {"autoResolved": True, "timeToResolve": "PT10M"} for r in alerts)


def test_a_local_stack_declares_no_azure_monitoring() -> None:
    run = stack("local")
    assert not [
        r for r in run.resources if r.type.startswith(("azure-native:monitor", "azure-native:alerts"))
    ]
    assert not [c for c in run.of_type(CONFIG_MAP) if c.inputs["metadata"]["name"] == SETTINGS_CONFIGMAP]
    assert "monitoringWorkspaceId" not in run.outputs


def test_the_shipped_rule_groups_reach_azure_verbatim() -> None:
    """With the program's own rule groups (infra.alert_rules.rule_groups), not the sample ones."""
    run = run_stack("dev")
    settings = run_settings("dev")
    groups = alert_rules.rule_groups(
        settings.training.spec.bento_name,
        settings.monitoring.thresholds,
        namespace=settings.serving.namespace,
    )
    assert groups, "the program ships no rule group"
    assert_carried_verbatim(run, groups)


# ---------------------------------------------------------------- config keys


def monitoring(**values: object):
    raw = {"deployerPrincipals": DEPLOYERS}
    raw |= {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    return parse_settings(raw.get, project="ml-delivery", stack="dev").monitoring


def test_monitoring_defaults_are_the_shared_thresholds_and_no_receivers() -> None:
    assert monitoring().thresholds == AlertThresholds()
    assert monitoring().alert_emails == ()


def test_monitoring_keys_set_the_thresholds() -> None:
    m = monitoring(
        monitoringPsiThreshold="0.1",
        monitoringErrorRate="0.01",
        monitoringP99LatencySeconds="1.5",
        monitoringOutOfRangeShare="0.2",
        monitoringNoTrafficMinutes="30",
        monitoringWindow="6h",
        monitoringAccuracyDrop="0.02",
        monitoringErrorIncrease="0.5",
        monitoringFeedbackWindow="7d",
        monitoringAlertEmails=["oncall@example.com"],
    )
    assert m.thresholds == AlertThresholds(
        psi=0.1,
        error_rate=0.01,
        p99_latency_s=1.5,
        out_of_range_share=0.2,
        no_traffic_minutes=30,
        window="6h",
        accuracy_drop=0.02,
        error_increase=0.5,
        feedback_window="7d",
    )
    assert m.alert_emails == ("oncall@example.com",)


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("monitoringPsiThreshold", "0", "above 0"),
        ("monitoringPsiThreshold", "high", "is not a number"),
        ("monitoringPsiThreshold", "nan", "above 0"),
        ("monitoringErrorRate", "1.5", "up to 1"),
        ("monitoringOutOfRangeShare", "-0.1", "above 0"),
        ("monitoringP99LatencySeconds", "0", "above 0"),
        ("monitoringNoTrafficMinutes", "0", "1..10080"),
        ("monitoringNoTrafficMinutes", "5.5", "whole number"),
        ("monitoringWindow", "90", "Write it like '1h'"),
        ("monitoringWindow", "1h30m", "Write it like '1h'"),
        ("monitoringWindow", "2m", "5m..7d"),
        ("monitoringWindow", "8d", "5m..7d"),
        ("monitoringFeedbackWindow", "1w", "Write it like '1d'"),
        ("monitoringFeedbackWindow", "30d", "5m..7d"),
        ("monitoringAccuracyDrop", "1.5", "up to 1"),
        ("monitoringErrorIncrease", "-1", "above 0"),
        ("monitoringAlertEmails", ["not-an-address"], "oncall@example.com"),
        ("monitoringAlertEmails", ["a@example.com", "a@example.com"], "twice"),
        ("monitoringAlertEmails", "oncall@example.com", "YAML mapping/list"),
    ],
)
def test_a_bad_monitoring_value_names_the_key_and_the_fix(key: str, value: object, hint: str) -> None:
    with pytest.raises(ConfigError) as exc:
        monitoring(**{key: value})
    message = str(exc.value)
    assert f"Pulumi.dev.yaml: config key 'ml-delivery:{key}'" in message
    assert hint in message, message


# ---------------------------------------------------------------- the policy pack guards the wiring


@pytest.mark.parametrize(
    ("drop", "policy"),
    [
        (
            lambda s: s.name in ("monitoring-allow-metrics-scrape", "serving-allow-model-port"),
            "scraped-pods-admit-the-collector",
        ),
        (lambda s: s.type == DCRA, "aks-metrics-collected"),
        (lambda s: s.type == DCR, "aks-metrics-collected"),
    ],
)
def test_the_pack_blocks_the_stack_without_a_piece_of_the_collection(drop: Any, policy: str) -> None:
    from policy.evaluate import evaluate, load_pack_config, stack_config_path, subjects_of

    subjects = subjects_of(stack("dev"))
    config = load_pack_config(stack_config_path("dev"))
    assert [v.policy for v in evaluate(subjects, stack="dev", config=config)] == []
    kept = [s for s in subjects if not drop(s)]
    assert len(kept) < len(subjects)
    assert [v.policy for v in evaluate(kept, stack="dev", config=config)] == [policy]


def test_the_pack_blocks_the_cluster_without_the_addon() -> None:
    from policy.evaluate import evaluate, load_pack_config, stack_config_path, subjects_of

    subjects = [
        dataclasses.replace(s, props={k: v for k, v in s.props.items() if k != "azureMonitorProfile"})
        if s.type == AKS
        else s
        for s in subjects_of(stack("dev"))
    ]
    violations = evaluate(subjects, stack="dev", config=load_pack_config(stack_config_path("dev")))
    assert [v.policy for v in violations] == ["aks-managed-prometheus"]


# Azure Monitor's service limits for managed Prometheus: at most 20 rules in one rule group.
AZURE_RULES_PER_GROUP = 20


def test_every_rule_group_fits_azure_s_limit_of_rules_per_group() -> None:
    for groups in (
        rule_groups("cancer_classifier", AlertThresholds()),
        rule_groups("cancer_classifier", AlertThresholds(), namespace="models"),
    ):
        for group in groups:
            assert len(group.rules) <= AZURE_RULES_PER_GROUP, (group.name, len(group.rules))
