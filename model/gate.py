"""The quality gate: pure rules over held-out metrics, with no ML imports.

Used where a model is trained (model.train) and where one is promoted (infra/promotion.py), so that
both apply the same rules to the same numbers. Higher is better for accuracy, f1 and roc_auc; lower is
better for log_loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

HIGHER_IS_BETTER: tuple[str, ...] = ("accuracy", "f1", "roc_auc")
LOWER_IS_BETTER: tuple[str, ...] = ("log_loss",)
METRIC_NAMES: tuple[str, ...] = (*HIGHER_IS_BETTER, *LOWER_IS_BETTER)


@dataclass(frozen=True)
class GateThresholds:
    """Absolute floors/ceilings, and how much worse than the champion a candidate may be."""

    min_accuracy: float = 0.90
    min_f1: float = 0.90
    min_roc_auc: float = 0.95
    max_log_loss: float = 0.35
    champion_margin: float = 0.01

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"GateThresholds.{name} must be a finite number >= 0, got {value!r}")

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in asdict(self).items()}


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
        higher = self.metric in HIGHER_IS_BETTER
        against = "threshold" if self.rule == "threshold" else "champion's value less the margin"
        if not higher and self.rule == "champion":
            against = "champion's value plus the margin"
        return (
            f"{self.metric}={self.value:.4f} {'<' if higher else '>'} {self.bound:.4f} ({against}): "
            f"{'short' if higher else 'over'} by {self.shortfall:.4f}"
        )


def evaluate_gate(
    metrics: Mapping[str, float],
    thresholds: GateThresholds,
    champion: Mapping[str, float] | None = None,
) -> list[GateFailure]:
    """Every rule the candidate's ``metrics`` fail; an empty list means the gate passes."""
    missing = [name for name in METRIC_NAMES if name not in metrics]
    if missing:
        raise ValueError(f"gate: metrics {missing} are missing from {sorted(metrics)}")
    failures = []
    floors = {"accuracy": thresholds.min_accuracy, "f1": thresholds.min_f1, "roc_auc": thresholds.min_roc_auc}
    for name, floor in floors.items():
        if metrics[name] < floor:
            failures.append(GateFailure(name, metrics[name], floor, "threshold"))
    if metrics["log_loss"] > thresholds.max_log_loss:
        failures.append(GateFailure("log_loss", metrics["log_loss"], thresholds.max_log_loss, "threshold"))
    for name in METRIC_NAMES:
        # A champion logged before a metric existed cannot be compared on it.
        if champion is None or name not in champion:
            continue
        if name in HIGHER_IS_BETTER:
            bound = champion[name] - thresholds.champion_margin
            worse = metrics[name] < bound
        else:
            bound = champion[name] + thresholds.champion_margin
            worse = metrics[name] > bound
        if worse:
            failures.append(GateFailure(name, metrics[name], bound, "champion"))
    return failures
