"""The quality gate: bounds on held-out metrics, read from the metric table, with no ML imports.

A ``Gate`` is a task, ``metric -> Bound`` (a ``min`` for a higher-is-better metric, a ``max`` for a
lower-is-better one, as ``model.metric_rules`` says) and a ``champion_margin``: how much worse than
the current champion a candidate may be on each bounded metric (absolute, in the metric's unit).
The same pure rules run where a model is trained (model.train) and where one is promoted
(infra/promotion.py). The spec (``model.spec``) and the stack settings parse gates with
``parse_gate``; an error names the key and the fix, and the caller adds the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from model.metric_rules import BY_NAME, check_task, metric_names, rule_for

CHAMPION_MARGIN_KEY = "champion_margin"
DEFAULT_CHAMPION_MARGIN = 0.01


class GateConfigError(ValueError):
    """A gate entry that is not valid for the task; ``key`` is its dotted key inside the gate."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"gate.{key}: {problem}. Fix: {fix}")


@dataclass(frozen=True)
class Bound:
    """``metric`` must be >= value (kind ``min``) or <= value (kind ``max``)."""

    metric: str
    kind: str
    value: float


@dataclass(frozen=True)
class Gate:
    """The bounds a task's model must meet, and the margin against the champion."""

    task: str
    bounds: tuple[Bound, ...]
    champion_margin: float = DEFAULT_CHAMPION_MARGIN

    def as_dict(self) -> dict[str, object]:
        """The spec/stack form: ``{metric: {min|max: value}, ..., champion_margin: m}``."""
        out: dict[str, object] = {b.metric: {b.kind: b.value} for b in self.bounds}
        out[CHAMPION_MARGIN_KEY] = self.champion_margin
        return out

    def with_overrides(self, raw: Mapping[str, object]) -> Gate:
        """This gate with the bounds and margin in ``raw`` replacing (or adding to) its own."""
        merged = {**self.as_dict(), **dict(raw)}
        return parse_gate(merged, self.task)


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GateConfigError(key, f"{value!r} is not a finite number", "set a number such as 0.9")
    return float(value)


def parse_gate(raw: Mapping[str, object] | None, task: str) -> Gate:
    """A Gate from ``{metric: {min|max: n}, champion_margin: n}``, checked against the metric table."""
    check_task(task)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise GateConfigError(
            "", f"must be a mapping, got {type(raw).__name__}", "write e.g. accuracy: {min: 0.9}"
        )
    margin = DEFAULT_CHAMPION_MARGIN
    bounds: list[Bound] = []
    for metric, entry in raw.items():
        metric = str(metric)
        if metric == CHAMPION_MARGIN_KEY:
            margin = _number(metric, entry)
            if margin < 0:
                raise GateConfigError(metric, f"{margin} is negative", "use 0 or a small positive number")
            continue
        try:
            rule = rule_for(metric, task)
        except ValueError as exc:
            raise GateConfigError(
                metric, str(exc), f"bound one of {', '.join(metric_names(task))} (or {CHAMPION_MARGIN_KEY})"
            ) from None
        example = f"{metric}: {{{rule.bound_kind}: ...}}"
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise GateConfigError(metric, f"must be one bound, got {entry!r}", f"write {example}")
        ((kind, value),) = entry.items()
        if kind != rule.bound_kind:
            better = "higher" if rule.higher_is_better else "lower"
            raise GateConfigError(
                f"{metric}.{kind}",
                f"{better} is better for {metric}, so only a {rule.bound_kind} bound makes sense",
                f"write {example}",
            )
        bounds.append(Bound(metric, str(kind), _number(f"{metric}.{kind}", value)))
    if not bounds:
        raise GateConfigError(
            "", "bounds no metric", f"bound at least one of {', '.join(metric_names(task))}"
        )
    return Gate(task=task, bounds=tuple(bounds), champion_margin=margin)


@dataclass(frozen=True)
class GateFailure:
    """One failed rule: which metric, its value, the bound it missed, and against what."""

    metric: str
    value: float
    bound: float
    rule: str  # "threshold" or "champion"

    @property
    def shortfall(self) -> float:
        return abs(self.value - self.bound)

    def describe(self) -> str:
        higher = BY_NAME[self.metric].higher_is_better
        against = "threshold"
        if self.rule == "champion":
            against = f"champion's value {'less' if higher else 'plus'} the margin"
        return (
            f"{self.metric}={self.value:.4f} {'<' if higher else '>'} {self.bound:.4f} ({against}): "
            f"{'short' if higher else 'over'} by {self.shortfall:.4f}"
        )


def evaluate_gate(
    metrics: Mapping[str, float], gate: Gate, champion: Mapping[str, float] | None = None
) -> list[GateFailure]:
    """Every rule the candidate's ``metrics`` fail; an empty list means the gate passes.

    Each bounded metric must be present. Against the champion, each bounded metric may be worse by
    at most the margin (a champion logged without that metric is not compared on it).
    """
    missing = [b.metric for b in gate.bounds if b.metric not in metrics]
    if missing:
        raise ValueError(f"gate: metrics {missing} are missing from {sorted(metrics)}")
    failures = []
    for bound in gate.bounds:
        value = float(metrics[bound.metric])
        if (value < bound.value) if bound.kind == "min" else (value > bound.value):
            failures.append(GateFailure(bound.metric, value, bound.value, "threshold"))
    for bound in gate.bounds:
        if champion is None or bound.metric not in champion:
            continue
        value = float(metrics[bound.metric])
        if bound.kind == "min":
            limit = float(champion[bound.metric]) - gate.champion_margin
            worse = value < limit
        else:
            limit = float(champion[bound.metric]) + gate.champion_margin
            worse = value > limit
        if worse:
            failures.append(GateFailure(bound.metric, value, limit, "champion"))
    return failures
