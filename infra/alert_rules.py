"""The Prometheus recording and alert rules that watch a served model: one source for every stack.

Pure data and functions, no Pulumi: ``rule_groups`` turns a model's service name and the stack's
thresholds into rule groups; ``to_prometheus_yaml`` writes them as a Prometheus rules file (the
local stack and any Prometheus), and ``infra.monitoring`` declares the same groups, expression for
expression, as Azure Monitor ``PrometheusRuleGroup`` resources on the Azure stacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AlertThresholds:
    """What counts as trouble; each is a stack config key (``infra.settings``)."""

    psi: float = 0.2  # population stability index per feature / for the predictions
    error_rate: float = 0.05  # share of requests answered 5xx
    p99_latency_s: float = 0.5
    out_of_range_share: float = 0.05  # share of served values outside the training range
    no_traffic_minutes: int = 15
    window: str = "1h"  # the window drift and shares are computed over


@dataclass(frozen=True)
class Rule:
    """One recording rule (``record`` set) or alert rule (``alert`` set)."""

    expr: str
    record: str | None = None
    alert: str | None = None
    for_: str | None = None  # alerts: how long the condition holds before it fires
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.record is None) == (self.alert is None):
            raise ValueError(f"a rule is either a recording rule or an alert, not both or neither: {self}")


@dataclass(frozen=True)
class RuleGroup:
    name: str
    interval: str
    rules: Sequence[Rule]


def rule_as_dict(rule: Rule) -> dict[str, object]:
    """One rule as Prometheus' rules-file schema spells it."""
    out: dict[str, object] = {"record": rule.record} if rule.record else {"alert": rule.alert}
    out["expr"] = rule.expr
    if rule.for_:
        out["for"] = rule.for_
    if rule.labels:
        out["labels"] = dict(rule.labels)
    if rule.annotations:
        out["annotations"] = dict(rule.annotations)
    return out


def to_prometheus_yaml(groups: Sequence[RuleGroup]) -> str:
    """The groups as a Prometheus rules file (``promtool check rules`` accepts it)."""
    import yaml

    doc = {
        "groups": [
            {"name": g.name, "interval": g.interval, "rules": [rule_as_dict(r) for r in g.rules]}
            for g in groups
        ]
    }
    return yaml.safe_dump(doc, sort_keys=False, width=120)
