"""The metric table: every held-out metric a gate can bound, per task, with its direction and scorer.

One table, pure data (no sklearn import): the gate (``model.gate``), the model spec
(``model.spec``), the training CLI, the stack settings and promotion all read it, and
``model.metrics`` computes each metric from its ``scorer`` entry. A metric name that is not in the
row of the model's task is an error everywhere, with the list of the names that are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")
CLASSIFICATION_TASKS: frozenset[str] = frozenset({"binary", "multiclass"})


@dataclass(frozen=True)
class MetricRule:
    """One metric: the tasks it applies to, whether higher is better, and how it is computed.

    ``scorer`` is ``module:function`` called as ``function(y_true, <input>, **kwargs)`` where
    ``input`` is ``labels`` (predicted classes), ``proba_positive`` (P of the second class),
    ``proba`` (the class-probability matrix) or ``values`` (regression predictions).
    """

    name: str
    tasks: tuple[str, ...]
    higher_is_better: bool
    scorer: str
    input: str
    kwargs: dict[str, object] = field(default_factory=dict)
    description: str = ""

    @property
    def bound_kind(self) -> str:
        """The only bound that makes sense for this metric: a floor (min) or a ceiling (max)."""
        return "min" if self.higher_is_better else "max"


METRICS: tuple[MetricRule, ...] = (
    MetricRule(
        "accuracy",
        ("binary", "multiclass"),
        True,
        "sklearn.metrics:accuracy_score",
        "labels",
        description="share of held-out rows whose predicted class is right",
    ),
    MetricRule(
        "f1",
        ("binary",),
        True,
        "sklearn.metrics:f1_score",
        "labels",
        description="F1 of the positive class (the second of the sorted class values)",
    ),
    MetricRule(
        "roc_auc",
        ("binary",),
        True,
        "sklearn.metrics:roc_auc_score",
        "proba_positive",
        description="area under the ROC curve of the positive-class probability",
    ),
    MetricRule(
        "f1_macro",
        ("multiclass",),
        True,
        "sklearn.metrics:f1_score",
        "labels",
        {"average": "macro"},
        "unweighted mean of the per-class F1",
    ),
    MetricRule(
        "log_loss",
        ("binary", "multiclass"),
        False,
        "sklearn.metrics:log_loss",
        "proba",
        description="cross-entropy of the predicted class probabilities",
    ),
    MetricRule(
        "rmse",
        ("regression",),
        False,
        "sklearn.metrics:root_mean_squared_error",
        "values",
        description="root mean squared error, in the target's unit",
    ),
    MetricRule(
        "mae",
        ("regression",),
        False,
        "sklearn.metrics:mean_absolute_error",
        "values",
        description="mean absolute error, in the target's unit",
    ),
    MetricRule(
        "r2",
        ("regression",),
        True,
        "sklearn.metrics:r2_score",
        "values",
        description="coefficient of determination (1 is perfect, 0 is the mean's score)",
    ),
)

BY_NAME: dict[str, MetricRule] = {rule.name: rule for rule in METRICS}


class UnknownMetricError(ValueError):
    """A metric name that the task's row of the table does not hold."""


def check_task(task: object) -> str:
    """``task`` when it is one of TASKS, else a ValueError listing them."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return str(task)


def metrics_for(task: str) -> tuple[MetricRule, ...]:
    """The rules of ``task``, in table order."""
    check_task(task)
    return tuple(rule for rule in METRICS if task in rule.tasks)


def metric_names(task: str) -> tuple[str, ...]:
    return tuple(rule.name for rule in metrics_for(task))


def rule_for(name: str, task: str) -> MetricRule:
    """The rule of metric ``name`` for ``task``; UnknownMetricError names the metrics that exist."""
    rule = BY_NAME.get(name)
    if rule is None or task not in rule.tasks:
        raise UnknownMetricError(
            f"metric {name!r} is not defined for task {task!r}; the {task} metrics are "
            f"{', '.join(metric_names(task))}"
        )
    return rule
