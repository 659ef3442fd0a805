"""The reference profile of a trained model: what its inputs and predictions looked like at training.

Pure functions on numpy/pandas, no MLflow or BentoML. ``build_profile`` runs at training time
(``model.train`` writes it into the logged model's folder as ``extra_files/profile.json``, so it
travels with the registered version into the bento and the image); ``model.monitoring`` counts
served values into the same bins and the Prometheus rules (``infra.alert_rules``) compare the two.

Per feature:

- numbers (``double``, ``long``): ``edges``, the distinct training deciles strictly above the
  training minimum (a tied or constant column gets fewer edges, down to none: one bin). A value
  ``v`` falls in bin ``searchsorted(edges, v, side="right")``, so bin ``i`` holds
  ``edges[i-1] <= v < edges[i]`` and every bin holds at least one training value. ``min``/``max``
  are the training range (outside it: the out-of-range counter).
- categories (``string``, ``boolean``): one bin per category (``false``/``true`` for booleans), in
  the order the model lists them, plus a last ``other`` bin for anything else.

Every feature carries ``proportions``: the share of training rows per bin (sum 1). The predictions
on the held-out rows get the same treatment: class names as categories for a classifier, numeric
bins from their deciles for a regressor.

``quality`` holds the held-out metrics that feedback can measure again once the true values arrive
(``ONLINE_METRICS``: accuracy for a classifier, MAE and RMSE for a regressor), so that the online
figures (``model.feedback``) are compared with what the model scored when it was trained.

Bin labels are the bin's index as text (``"0"``, ``"1"``, ...): short, stable Prometheus label
values; ``bin_labels`` says which range or category each one is.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
PROFILE_FILE = "profile.json"
# Where MLflow's ``extra_files`` puts the file inside the model folder (mlflow.utils.model_utils).
PROFILE_PATH_IN_MODEL = f"extra_files/{PROFILE_FILE}"
QUANTILES = tuple(i / 10 for i in range(1, 10))  # deciles: at most 10 bins per numeric feature
OTHER_BIN = "other"
NUMERIC, CATEGORICAL = "numeric", "categorical"
BOOLEAN_CATEGORIES = ("false", "true")
# Held-out metrics (model.metric_rules names) that feedback counters can compute again.
ONLINE_METRICS = ("accuracy", "mae", "rmse")


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Binning:
    """How one column's values map to bins, and the training share of each bin."""

    name: str
    kind: str  # NUMERIC or CATEGORICAL
    proportions: tuple[float, ...]
    edges: tuple[float, ...] = ()  # numeric: inner cut points
    categories: tuple[str, ...] = ()  # categorical: one bin each, then OTHER_BIN
    low: float | None = None  # numeric: training min / max
    high: float | None = None
    type: str = ""  # the feature's spec type ("" for the predictions)

    @property
    def size(self) -> int:
        return len(self.edges) + 1 if self.kind == NUMERIC else len(self.categories) + 1

    def bin_labels(self) -> list[str]:
        """What each bin holds, for people: ``[a, b)`` ranges or category names."""
        if self.kind == CATEGORICAL:
            return [*self.categories, OTHER_BIN]
        bounds = [-math.inf, *self.edges, math.inf]
        return [f"[{lo:g}, {hi:g})" for lo, hi in itertools.pairwise(bounds)]

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "kind": self.kind}
        if self.type:
            out["type"] = self.type
        if self.kind == NUMERIC:
            out.update(edges=list(self.edges), min=self.low, max=self.high)
        else:
            out["categories"] = list(self.categories)
        out["proportions"] = list(self.proportions)
        return out


@dataclass(frozen=True)
class Profile:
    """The features' binnings (in signature order) and the predictions' binning."""

    features: tuple[Binning, ...]
    prediction: Binning
    task: str
    quality: Mapping[str, float] = field(default_factory=dict)  # ONLINE_METRICS on the held-out rows

    def as_dict(self) -> dict[str, object]:
        return {
            "format": FORMAT_VERSION,
            "task": self.task,
            "features": [f.as_dict() for f in self.features],
            "prediction": self.prediction.as_dict(),
            "quality": dict(self.quality),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, allow_nan=False) + "\n"


# ---- building ---------------------------------------------------------------------------------


def numeric_edges(values: np.ndarray) -> tuple[float, ...]:
    """The distinct deciles of ``values`` strictly above their minimum (each an actual value)."""
    values = np.asarray(values, dtype="float64")
    low = values.min()
    cuts = np.unique(np.quantile(values, QUANTILES, method="inverted_cdf"))
    return tuple(float(c) for c in cuts if c > low)


def numeric_binning(name: str, values: Sequence[float] | np.ndarray, type_: str = "") -> Binning:
    array = np.asarray(values, dtype="float64")
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"profile: column {name!r} needs finite values, got {array.size} values")
    edges = numeric_edges(array)
    proportions = _shares(bin_numeric(array, edges), len(edges) + 1)
    return Binning(name, NUMERIC, proportions, edges=edges, low=float(array.min()), high=float(array.max()),
                   type=type_)  # fmt: skip


def categorical_binning(
    name: str, values: Sequence[object] | np.ndarray, categories: Sequence[str], type_: str = ""
) -> Binning:
    cats = tuple(str(c) for c in categories)
    proportions = _shares(bin_categorical(values, cats), len(cats) + 1)
    return Binning(name, CATEGORICAL, proportions, categories=cats, type=type_)


def build_profile(
    frame: Any,
    features: Sequence[Any],
    predictions: Sequence[object] | np.ndarray,
    task: str,
    class_names: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Profile:
    """The profile of training rows ``frame`` (a DataFrame with each feature's column) and of the
    model's ``predictions`` on the held-out rows. ``features``: ``model.spec.Feature``s (name, type,
    categories); ``class_names``: target value (as text) -> served class name, for classifiers;
    ``metrics``: the held-out metrics (the ONLINE_METRICS among them are kept)."""
    binnings = []
    for feature in features:
        column = frame[feature.name].to_numpy()
        if feature.type == "string":
            binnings.append(categorical_binning(feature.name, column, feature.categories or (), "string"))
        elif feature.type == "boolean":
            binnings.append(
                categorical_binning(feature.name, _boolean_text(column), BOOLEAN_CATEGORIES, "boolean")
            )
        else:
            binnings.append(numeric_binning(feature.name, column, feature.type))
    if class_names is not None:
        names = [class_names[str(p)] for p in predictions]
        prediction = categorical_binning("prediction", names, list(class_names.values()))
    else:
        prediction = numeric_binning("prediction", np.asarray(predictions, dtype="float64"))
    quality = {k: float(v) for k, v in (metrics or {}).items() if k in ONLINE_METRICS and math.isfinite(v)}
    return Profile(tuple(binnings), prediction, task, quality)


def _boolean_text(values: Sequence[object] | np.ndarray) -> list[str]:
    return ["true" if bool(v) else "false" for v in values]


def _shares(indices: np.ndarray, size: int) -> tuple[float, ...]:
    counts = np.bincount(indices, minlength=size)
    return tuple(float(c) for c in counts / max(int(counts.sum()), 1))


# ---- binning served values (model.monitoring) -------------------------------------------------


def bin_numeric(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin index per value (``searchsorted`` right: bin i holds edges[i-1] <= v < edges[i])."""
    return np.searchsorted(np.asarray(edges, dtype="float64"), values, side="right")


def bin_categorical(values: Sequence[object] | np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """Bin index per value: its category's position, or ``len(categories)`` (other)."""
    index = {c: i for i, c in enumerate(categories)}
    other = len(categories)
    return np.fromiter((index.get(str(v), other) for v in values), dtype="int64", count=len(values))


# ---- population stability index ----------------------------------------------------------------

# An empty bin would make the index infinite; both shares are floored at this (the rules do the same).
PSI_EPSILON = 1e-4


def psi(observed: Sequence[float], reference: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of observed bin counts (or shares) against reference shares:
    sum((o - r) * ln(o / r)) with both as shares floored at ``epsilon``. NaN without observations."""
    counts = np.asarray(observed, dtype="float64")
    total = counts.sum()
    if total <= 0:
        return math.nan
    o = np.maximum(counts / total, epsilon)
    r = np.maximum(np.asarray(reference, dtype="float64"), epsilon)
    return float(np.sum((o - r) * np.log(o / r)))


# ---- reading ------------------------------------------------------------------------------------


def binning_from_dict(raw: Mapping[str, Any], where: str) -> Binning:
    try:
        kind = raw["kind"]
        proportions = tuple(float(p) for p in raw["proportions"])
        if kind == NUMERIC:
            binning = Binning(
                str(raw["name"]), NUMERIC, proportions, edges=tuple(float(e) for e in raw["edges"]),
                low=float(raw["min"]), high=float(raw["max"]), type=str(raw.get("type", "")),
            )  # fmt: skip
        elif kind == CATEGORICAL:
            binning = Binning(
                str(raw["name"]), CATEGORICAL, proportions,
                categories=tuple(str(c) for c in raw["categories"]), type=str(raw.get("type", "")),
            )  # fmt: skip
        else:
            raise ProfileError(f"{where}: kind {kind!r} is neither {NUMERIC} nor {CATEGORICAL}")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProfileError):
            raise
        raise ProfileError(f"{where}: {type(exc).__name__}: {exc}") from exc
    if len(binning.proportions) != binning.size:
        raise ProfileError(f"{where}: {len(binning.proportions)} proportions for {binning.size} bins")
    return binning


def load_profile(path: str | Path) -> Profile:
    """Read a profile file; a missing or malformed one is a ProfileError naming the file and the fix."""
    path = Path(path)
    fix = "retrain the model with model.train, which writes it, and rebuild the bento"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no reference profile in the model folder; {fix}") from None
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path}: not a readable JSON profile ({exc}); {fix}") from exc
    if not isinstance(raw, Mapping) or raw.get("format") != FORMAT_VERSION:
        got = raw.get("format") if isinstance(raw, Mapping) else type(raw).__name__
        raise ProfileError(f"{path}: field 'format' is {got!r}, expected {FORMAT_VERSION}; {fix}")
    features = tuple(
        binning_from_dict(f, f"{path}: features[{i}]") for i, f in enumerate(raw.get("features") or [])
    )
    if not features:
        raise ProfileError(f"{path}: field 'features' is empty; {fix}")
    prediction = binning_from_dict(raw.get("prediction") or {}, f"{path}: prediction")
    quality = _quality(raw.get("quality") or {}, f"{path}: quality")
    return Profile(features, prediction, str(raw.get("task", "")), quality)


def _quality(raw: Any, where: str) -> dict[str, float]:
    """The ``quality`` field (absent in profiles written before it: no online comparison)."""
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{where}: expected a mapping of metric name to number, got {type(raw).__name__}")
    out = {}
    for name, value in raw.items():
        if name not in ONLINE_METRICS:
            raise ProfileError(f"{where}: {name!r} is not one of {', '.join(ONLINE_METRICS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ProfileError(f"{where}: {name} is {value!r}, expected a finite number")
        out[str(name)] = float(value)
    return out
