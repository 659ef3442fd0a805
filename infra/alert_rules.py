"""The Prometheus recording and alert rules that watch a served model: one source for every stack.

Pure data and functions, no Pulumi: ``rule_groups`` turns a model's service name and the stack's
thresholds into rule groups; ``to_prometheus_yaml`` writes them as a Prometheus rules file (the
local stack and any Prometheus), and ``infra.monitoring`` declares the same groups, expression for
expression, as Azure Monitor ``PrometheusRuleGroup`` resources on the Azure stacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# What the service exports (one source: model.monitoring).
from model.monitoring import (
    FEATURE_BINS,
    FEATURE_OUT_OF_RANGE,
    FEATURE_REFERENCE,
    FEEDBACK,
    FEEDBACK_ABSOLUTE_ERROR,
    FEEDBACK_SQUARED_ERROR,
    PREDICTION_BINS,
    PREDICTION_REFERENCE,
    REFERENCE_QUALITY,
    SERVICE_LABEL,
)
from model.profile import PSI_EPSILON  # an empty bin's share is floored at this, as in the demo


@dataclass(frozen=True)
class AlertThresholds:
    """What counts as trouble; each is a stack config key (``infra.settings``)."""

    psi: float = 0.2  # population stability index per feature / for the predictions
    error_rate: float = 0.05  # share of requests answered 5xx
    p99_latency_s: float = 0.5
    out_of_range_share: float = 0.05  # share of served values outside the training range
    no_traffic_minutes: int = 15
    window: str = "1h"  # the window drift and shares are computed over
    # Ground truth (POST /feedback) against the served model's held-out figures, over feedback_window:
    accuracy_drop: float = 0.05  # classifiers: online accuracy this far under the held-out accuracy
    error_increase: float = 0.25  # regressors: online MAE this share over the held-out MAE
    feedback_window: str = "1d"


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

    class _Dumper(yaml.SafeDumper):
        pass

    def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None  # multi-line expressions stay readable
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _text)
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120)


# ---- the rules ------------------------------------------------------------------------------------

# BentoML 1.4's own metric and label names (its HTTP instruments, as a real `bentoml serve` exports
# them: tests/test_monitoring_live.py scrapes one for each).
REQUESTS = "bentoml_service_request_total"
LATENCY_BUCKETS = "bentoml_service_request_duration_seconds_bucket"
STATUS_LABEL = "http_response_code"
PREDICT_ENDPOINTS = "/predict.*"  # the model's APIs, not /metrics or the health probes
# kube-state-metrics, in AKS managed Prometheus' minimal ingestion profile.
AVAILABLE_REPLICAS = "kube_deployment_status_replicas_available"
DESIRED_REPLICAS = "kube_deployment_spec_replicas"
SERVING_DEPLOYMENT = "model-server"  # infra.serving.APP (a test keeps them equal)

# Recorded series (level:metric:operation, the Prometheus naming convention).
FEATURE_SHARE = "model:feature_bin_share"
FEATURE_PSI = "model:feature_psi"
PREDICTION_SHARE = "model:prediction_bin_share"
PREDICTION_PSI = "model:prediction_psi"
OUT_OF_RANGE_SHARE = "model:feature_out_of_range_share"
FEEDBACK_ACCURACY = "model:feedback_accuracy:ratio"
FEEDBACK_MAE = "model:feedback_absolute_error:mean"
FEEDBACK_RMSE = "model:feedback_squared_error:root_mean"
RUNBOOK = "README.md#runbook"
# Drift alerts wait for this many served values in the window: PSI of a small sample is noise
# (its expected value is about (bins - 1) / values, ~0.05 here for 10 bins).
DRIFT_MIN_VALUES = 200
# Quality alerts wait for this many feedback rows in the window (an accuracy of 20 rows moves by 5%
# with one row).
FEEDBACK_MIN_ROWS = 100
RIGHT_ANSWERS = ', correct="true"'  # model.monitoring's label on feedback rows answered right


def _share(counter: str, selector: str, keys: str, window: str) -> str:
    """Each bin's share of the values counted over ``window``, per ``keys`` (without ``bin``)."""
    return (
        f"sum by ({keys}, bin) (increase({counter}{{{selector}}}[{window}]))\n"
        f"/ on ({keys}) group_left\n"
        f"sum by ({keys}) (increase({counter}{{{selector}}}[{window}]))"
    )


def _enough(counter: str, selector: str, keys: str, window: str) -> str:
    return f"sum by ({keys}) (increase({counter}{{{selector}}}[{window}])) >= {DRIFT_MIN_VALUES}"


def _psi(share: str, reference: str, selector: str, keys: str) -> str:
    """sum over bins of (observed - reference) * ln(observed / reference), both floored at epsilon.
    ``max by`` merges the reference gauges of several pods (all equal)."""
    observed = f"clamp_min({share}{{{selector}}}, {PSI_EPSILON:g})"
    expected = f"clamp_min(max by ({keys}, bin) ({reference}{{{selector}}}), {PSI_EPSILON:g})"
    return f"sum by ({keys}) (\n  ({observed} - {expected})\n  * ln({observed} / {expected})\n)"


def rule_groups(
    service: str,
    thresholds: AlertThresholds,
    *,
    interval: str = "1m",
    rate_window: str = "5m",
    namespace: str | None = None,
    deployment: str = SERVING_DEPLOYMENT,
) -> tuple[RuleGroup, ...]:
    """The recording rules (drift, out-of-range share) and the alerts of the BentoML service
    ``service`` (``model.spec.ModelSpec.bento_name``). ``interval``: how often Prometheus evaluates
    them; ``rate_window``: the window of error rate and latency; ``namespace``/``deployment``: the
    serving Deployment for kube-state-metrics (any namespace when None)."""
    t = thresholds
    sel = f'{SERVICE_LABEL}="{service}"'
    api = f'{sel}, endpoint=~"{PREDICT_ENDPOINTS}"'
    deploy = f'deployment="{deployment}"' + (f', namespace="{namespace}"' if namespace else "")
    by_feature = f"{SERVICE_LABEL}, feature"
    by_version = f"{SERVICE_LABEL}, version"
    fw = t.feedback_window

    def feedback_sum(counter: str, extra: str = "") -> str:
        return f"sum by ({by_version}) (increase({counter}{{{sel}{extra}}}[{fw}]))"

    def reference(metric: str) -> str:
        """The version's held-out figure; over the feedback window, so that a version no pod serves
        any more keeps its reference while its feedback still counts."""
        gauge = f'{REFERENCE_QUALITY}{{{sel}, metric="{metric}"}}'
        return f"max by ({by_version}) (max_over_time({gauge}[{fw}]))"

    rows = f"({feedback_sum(FEEDBACK)} > 0)"  # no feedback in the window: no series, not NaN
    enough_feedback = f"and on ({by_version}) {feedback_sum(FEEDBACK)} >= {FEEDBACK_MIN_ROWS}"
    recording = RuleGroup(
        name=f"{service}-drift",
        interval=interval,
        rules=(
            Rule(record=FEATURE_SHARE, expr=_share(FEATURE_BINS, sel, by_feature, t.window)),
            Rule(record=FEATURE_PSI, expr=_psi(FEATURE_SHARE, FEATURE_REFERENCE, sel, by_feature)),
            Rule(record=PREDICTION_SHARE, expr=_share(PREDICTION_BINS, sel, SERVICE_LABEL, t.window)),
            Rule(
                record=PREDICTION_PSI, expr=_psi(PREDICTION_SHARE, PREDICTION_REFERENCE, sel, SERVICE_LABEL)
            ),
            Rule(
                record=OUT_OF_RANGE_SHARE,
                expr=(
                    f"sum by ({by_feature}) (increase({FEATURE_OUT_OF_RANGE}{{{sel}}}[{t.window}]))\n"
                    f"/ sum by ({by_feature}) (increase({FEATURE_BINS}{{{sel}}}[{t.window}]))"
                ),
            ),
            Rule(
                record=FEEDBACK_ACCURACY,
                expr=f"{feedback_sum(FEEDBACK, RIGHT_ANSWERS)}\n/ {rows}",
            ),
            Rule(
                record=FEEDBACK_MAE,
                expr=f"{feedback_sum(FEEDBACK_ABSOLUTE_ERROR)}\n/ {rows}",
            ),
            Rule(
                record=FEEDBACK_RMSE,
                expr=f"sqrt(\n  {feedback_sum(FEEDBACK_SQUARED_ERROR)}\n  / {rows}\n)",
            ),
        ),
    )

    def alert(name: str, expr: str, severity: str, summary: str, for_: str | None = None) -> Rule:
        return Rule(
            alert=name,
            expr=expr,
            for_=for_,
            labels={"severity": severity, SERVICE_LABEL: service},
            annotations={"summary": summary, "runbook": f"{RUNBOOK}-{name.lower()}"},
        )

    requests = f"sum by ({SERVICE_LABEL}) (rate({REQUESTS}{{{api}}}[{rate_window}]))"
    errors = f'sum by ({SERVICE_LABEL}) (rate({REQUESTS}{{{api}, {STATUS_LABEL}=~"5.."}}[{rate_window}]))'
    p99 = (
        f"histogram_quantile(0.99, sum by ({SERVICE_LABEL}, le) "
        f"(rate({LATENCY_BUCKETS}{{{api}}}[{rate_window}])))"
    )
    quiet = f"{t.no_traffic_minutes}m"
    alerts = RuleGroup(
        name=f"{service}-alerts",
        interval=interval,
        rules=(
            alert(
                "ModelFeatureDrift",
                f"{FEATURE_PSI}{{{sel}}} > {t.psi:g}\n"
                f"and on ({by_feature}) {_enough(FEATURE_BINS, sel, by_feature, t.window)}",
                "warning",
                f'{{{{ $labels.feature }}}}: PSI {{{{ $value | printf "%.2f" }}}} over {t.window} '
                f"(threshold {t.psi:g}): served inputs no longer look like the training data",
            ),
            alert(
                "ModelPredictionDrift",
                f"{PREDICTION_PSI}{{{sel}}} > {t.psi:g}\n"
                f"and on ({SERVICE_LABEL}) {_enough(PREDICTION_BINS, sel, SERVICE_LABEL, t.window)}",
                "warning",
                f'predictions: PSI {{{{ $value | printf "%.2f" }}}} over {t.window} (threshold {t.psi:g}): '
                "the model answers differently than on its held-out rows",
            ),
            alert(
                "ModelOutOfRange",
                f"{OUT_OF_RANGE_SHARE}{{{sel}}} > {t.out_of_range_share:g}",
                "warning",
                f"{{{{ $labels.feature }}}}: {{{{ $value | humanizePercentage }}}} of served values over "
                f"{t.window} lie outside the training range (threshold {t.out_of_range_share:g})",
            ),
            alert(
                "ModelAccuracyDrop",
                f"{FEEDBACK_ACCURACY}{{{sel}}}\n< on ({by_version})\n"
                f"({reference('accuracy')} - {t.accuracy_drop:g})\n{enough_feedback}",
                "warning",
                f"version {{{{ $labels.version }}}}: accuracy {{{{ $value | humanizePercentage }}}} on the "
                f"last {fw} of feedback, more than {t.accuracy_drop:g} under its held-out accuracy",
            ),
            alert(
                "ModelErrorRise",
                f"{FEEDBACK_MAE}{{{sel}}}\n> on ({by_version})\n"
                f"({reference('mae')} * {1 + t.error_increase:g})\n{enough_feedback}",
                "warning",
                f'version {{{{ $labels.version }}}}: mean absolute error {{{{ $value | printf "%.4g" }}}} on '
                f"the last {fw} of feedback, over {1 + t.error_increase:g}x its held-out MAE",
            ),
            alert(
                "ModelHighErrorRate",
                f"{errors}\n/ {requests}\n> {t.error_rate:g}",
                "critical",
                f"{{{{ $value | humanizePercentage }}}} of prediction requests answered 5xx over "
                f"{rate_window} (threshold {t.error_rate:g})",
                for_="5m",
            ),
            alert(
                "ModelHighLatency",
                f"{p99} > {t.p99_latency_s:g}",
                "warning",
                f"p99 latency {{{{ $value | humanizeDuration }}}} over {rate_window} "
                f"(threshold {t.p99_latency_s:g}s)",
                for_="5m",
            ),
            alert(
                "ModelNoTraffic",
                f"sum by ({SERVICE_LABEL}) (increase({REQUESTS}{{{api}}}[{quiet}])) == 0\n"
                f"or absent({REQUESTS}{{{sel}}})",
                "warning",
                f"no prediction request in {quiet}",
            ),
            alert(
                "ModelPodNotReady",
                f"{AVAILABLE_REPLICAS}{{{deploy}}} < {DESIRED_REPLICAS}{{{deploy}}}",
                "critical",
                f"{{{{ $labels.namespace }}}}/{deployment}: fewer ready replicas than desired",
                for_="10m",
            ),
        ),
    )
    return recording, alerts
