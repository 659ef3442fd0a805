"""Held-out metrics of a task, computed from the metric table (``model.metric_rules``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from model.metric_rules import MetricRule, metrics_for


def _scorer(rule: MetricRule) -> Callable[..., Any]:
    module, function = rule.scorer.split(":", 1)
    return getattr(importlib.import_module(module), function)


def compute_metrics(
    task: str,
    y_true: np.ndarray,
    predictions: np.ndarray,
    proba: np.ndarray | None = None,
    classes: Sequence[object] | None = None,
) -> dict[str, float]:
    """Every metric of ``task``'s row of the table. ``proba`` (classifiers) is the probability
    matrix in the order of ``classes``; the positive class of a binary task is ``classes[1]``."""
    out: dict[str, float] = {}
    for rule in metrics_for(task):
        kwargs = dict(rule.kwargs)
        if rule.input == "labels":
            arg: Any = predictions
            if rule.name == "f1" and classes is not None:
                kwargs["pos_label"] = classes[1]
        elif rule.input == "values":
            arg = predictions
        elif rule.input == "proba_positive":
            assert proba is not None
            arg = proba[:, 1]
        else:
            assert proba is not None
            arg = proba
            if classes is not None:
                kwargs["labels"] = list(classes)
        out[rule.name] = float(_scorer(rule)(y_true, arg, **kwargs))
    return out
