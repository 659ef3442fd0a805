"""What the serving process counts for monitoring, on BentoML's ``/metrics``: ``Monitor.observe``.

Per feature, served values per reference bin (``model.profile``), values outside the training range
and missing values; the predictions per bin (class names, or numeric bins of predicted values); the
reference proportions of every bin as gauges, so that Prometheus rules (``infra.alert_rules``) can
compute the population stability index by joining on ``feature``/``bin``; and an info gauge naming
the model, its registered version and training fingerprint. BentoML's own request, latency and
error metrics are untouched.

Metric names (``METRICS``; every series carries ``service_name``, the label BentoML's own metrics use):

- ``model_feature_bin_total{feature,bin}``, ``model_feature_out_of_range_total{feature}``,
  ``model_feature_missing_total{feature}`` counters
- ``model_prediction_bin_total{bin}`` counter
- ``model_feature_reference_proportion{feature,bin}``, ``model_prediction_reference_proportion{bin}``
  gauges (the training shares)
- ``model_info{model,version,fingerprint}`` gauge, always 1
- ground truth posted to ``/feedback`` (``model.feedback``), per model ``version`` that answered:
  ``model_feedback_total{version,correct}`` rows and
  ``model_feedback_confusion_total{version,predicted,actual}`` (classifiers), or
  ``model_feedback_total{version}``, ``model_feedback_absolute_error_total{version}`` and
  ``model_feedback_squared_error_total{version}`` (regressors); ``model_reference_quality{version,
  metric}`` gauges, the held-out figures of the served version to compare them with (``Profile.quality``)

BentoML runs the service in several worker processes and serves ``/metrics`` from
``prometheus_client``'s multiprocess collector (``PROMETHEUS_MULTIPROC_DIR``, set for each worker
before it imports the service). ``prometheus_client`` is imported only when a Monitor is made (in the
worker), counters add up across workers, and the constant gauges use ``multiprocess_mode="max"``
so that N workers give one series, not N. Every series is created at start with 0, so that the
first served value already counts in Prometheus' ``increase``.

Counting is vectorised: every counter a request can move has a position in one vector, a request's
values become positions (numeric bins by one comparison against all features' edges, categories by
lookup, added per feature) and the request's counts are added to the pending counts. The pending
counts are written to the counters (one ``inc(amount)`` per non-empty one) at most FLUSH_SECONDS
after the first request since the last write, by a timer on the serving event loop, and at a
graceful stop (``model.service``'s shutdown hook; atexit for scripts); without a running event loop
(a script, a test) at once. So ``/metrics`` shows a request within FLUSH_SECONDS, and a worker does
a few hundred counter writes per second whatever its traffic, instead of ~35 per request (~60% of
the counting's cost in a multiprocess registry). A failure is logged and never fails the request.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.feedback import Feedback, FeedbackError
from model.profile import NUMERIC, Binning, Profile, bin_categorical, bin_numeric, psi
from model.validation import ColumnTable, block

logger = logging.getLogger(__name__)

SERVICE_LABEL = "service_name"  # BentoML's label for the service on its own metrics
FEATURE_BINS = "model_feature_bin_total"
FEATURE_OUT_OF_RANGE = "model_feature_out_of_range_total"
FEATURE_MISSING = "model_feature_missing_total"
FEATURE_REFERENCE = "model_feature_reference_proportion"
PREDICTION_BINS = "model_prediction_bin_total"
PREDICTION_REFERENCE = "model_prediction_reference_proportion"
INFO = "model_info"
FEEDBACK = "model_feedback_total"
FEEDBACK_CONFUSION = "model_feedback_confusion_total"
FEEDBACK_ABSOLUTE_ERROR = "model_feedback_absolute_error_total"
FEEDBACK_SQUARED_ERROR = "model_feedback_squared_error_total"
REFERENCE_QUALITY = "model_reference_quality"
METRICS: tuple[str, ...] = (
    FEATURE_BINS,
    FEATURE_OUT_OF_RANGE,
    FEATURE_MISSING,
    FEATURE_REFERENCE,
    PREDICTION_BINS,
    PREDICTION_REFERENCE,
    INFO,
    FEEDBACK,
    FEEDBACK_CONFUSION,
    FEEDBACK_ABSOLUTE_ERROR,
    FEEDBACK_SQUARED_ERROR,
    REFERENCE_QUALITY,
)
PREDICTION = "prediction"  # the key of the predictions in drift results
# Distinct model versions one process counts feedback for: the label values stay bounded whatever
# clients send (the served version and those before it still in their feedback window).
MAX_FEEDBACK_VERSIONS = 16
MAX_PRECREATED_CELLS = 100  # confusion cells made at start (classes squared), for up to 10 classes
SMALL_REQUEST_ROWS = 8  # up to this many rows, numeric values are binned in one broadcast comparison
# The longest a served request's counts wait before they are written to the counters (/metrics).
FLUSH_SECONDS = 1.0


class Columns(Protocol):
    """Per-feature values: a mapping name -> array/list, or a DataFrame."""

    def __getitem__(self, name: str, /) -> Any: ...


@dataclass(frozen=True)
class ModelIdentity:
    """What the info metric says about the served model."""

    model: str
    version: str
    fingerprint: str


def _counter_name(name: str) -> str:
    return name.removesuffix("_total")  # prometheus_client appends _total itself


class Monitor:
    """Counters for one served model; ``observe`` once per request or adaptive batch."""

    def __init__(self, profile: Profile, service: str, identity: ModelIdentity, registry: Any = None) -> None:
        import prometheus_client  # here, in the worker: after BentoML set PROMETHEUS_MULTIPROC_DIR

        reg = {"registry": registry} if registry is not None else {}
        counter, gauge = prometheus_client.Counter, prometheus_client.Gauge
        bins = counter(_counter_name(FEATURE_BINS), "Served feature values per reference bin",
                       [SERVICE_LABEL, "feature", "bin"], **reg)  # fmt: skip
        out_of_range = counter(_counter_name(FEATURE_OUT_OF_RANGE), "Served numeric values outside the "
                               "training range", [SERVICE_LABEL, "feature"], **reg)  # fmt: skip
        missing = counter(_counter_name(FEATURE_MISSING), "Served feature values that were missing",
                          [SERVICE_LABEL, "feature"], **reg)  # fmt: skip
        reference = gauge(FEATURE_REFERENCE, "Training share of each feature bin",
                          [SERVICE_LABEL, "feature", "bin"], multiprocess_mode="max", **reg)  # fmt: skip
        predictions = counter(_counter_name(PREDICTION_BINS), "Predictions per reference bin",
                              [SERVICE_LABEL, "bin"], **reg)  # fmt: skip
        prediction_reference = gauge(PREDICTION_REFERENCE, "Held-out share of each prediction bin",
                                     [SERVICE_LABEL, "bin"], multiprocess_mode="max", **reg)  # fmt: skip
        info = gauge(INFO, "The served model (always 1)", [SERVICE_LABEL, "model", "version", "fingerprint"],
                     multiprocess_mode="max", **reg)  # fmt: skip
        info.labels(service, identity.model, identity.version, identity.fingerprint).set(1)

        self.profile = profile
        numeric = [b for b in profile.features if b.kind == NUMERIC]
        # Every counter observe moves, at one position of self._children (and of the pending vector):
        # the numeric features' bins, their out-of-range and missing counts, then per categorical
        # feature its bins and its missing count, then the prediction bins.
        children: list[Any] = [bins.labels(service, b.name, str(i)) for b in numeric for i in range(b.size)]
        children += [out_of_range.labels(service, b.name) for b in numeric]
        children += [missing.labels(service, b.name) for b in numeric]
        self._numeric_names = [b.name for b in numeric]
        self._numeric = _NumericBins(numeric) if numeric else None
        self._categorical: list[tuple[Binning, int]] = []
        for b in profile.features:
            if b.kind != NUMERIC:
                self._categorical.append((b, len(children)))
                children += [bins.labels(service, b.name, str(i)) for i in range(b.size)]
                children.append(missing.labels(service, b.name))
        self._prediction_base = len(children)
        children += [predictions.labels(service, str(i)) for i in range(profile.prediction.size)]
        self._children = children
        self._pending = np.zeros(len(children), dtype="float64")
        self._flush_timer: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        self._lock = threading.Lock()
        self.flush_seconds = FLUSH_SECONDS
        atexit.register(self.flush)
        for binning in profile.features:
            for i, share in enumerate(binning.proportions):
                reference.labels(service, binning.name, str(i)).set(share)
        for i, share in enumerate(profile.prediction.proportions):
            prediction_reference.labels(service, str(i)).set(share)

        self.service = service
        self.identity = identity
        self.classifier = profile.prediction.kind != NUMERIC
        by_version = [SERVICE_LABEL, "version"]
        if self.classifier:
            self._feedback = counter(_counter_name(FEEDBACK), "Feedback rows, by whether the answer was "
                                     "right", [*by_version, "correct"], **reg)  # fmt: skip
            self._confusion = counter(_counter_name(FEEDBACK_CONFUSION), "Feedback rows per answered and "
                                      "true class", [*by_version, "predicted", "actual"], **reg)  # fmt: skip
            names = [str(c) for c in profile.prediction.categories]
            # The served version's confusion cells from the start too, where they are few.
            self._cells = (
                [(a, t) for a in names for t in names] if len(names) ** 2 <= MAX_PRECREATED_CELLS else []
            )
        else:
            self._feedback = counter(_counter_name(FEEDBACK), "Feedback rows", by_version, **reg)
            self._absolute = counter(_counter_name(FEEDBACK_ABSOLUTE_ERROR), "Sum of |answer - truth| over "
                                     "feedback rows", by_version, **reg)  # fmt: skip
            self._squared = counter(_counter_name(FEEDBACK_SQUARED_ERROR), "Sum of (answer - truth)^2 over "
                                    "feedback rows", by_version, **reg)  # fmt: skip
        self._feedback_versions: set[str] = set()
        self._admit(identity.version)
        quality = gauge(REFERENCE_QUALITY, "Held-out metric of the served model version, for the feedback "
                        "figures", [*by_version, "metric"], multiprocess_mode="max", **reg)  # fmt: skip
        for metric, value in profile.quality.items():
            quality.labels(service, identity.version, metric).set(value)

    def observe(self, columns: Columns, predictions: Sequence[Any] | np.ndarray) -> None:
        """Count one request's (or batch's) values: ``columns[name]`` per feature, and the answers
        (class names, or predicted numbers); written to the counters within ``flush_seconds``.
        Never raises: a failure is logged."""
        try:
            counts = self._counts(columns, predictions)
            with self._lock:  # the APIs run on the event loop; a flush from another thread is safe too
                self._pending += counts
            self._schedule_flush()
        except Exception:
            logger.exception("monitoring: counting a request failed (the request itself was answered)")

    def _counts(self, columns: Columns, predictions: Sequence[Any] | np.ndarray) -> np.ndarray:
        """One request's count per counter (the positions of ``self._children``)."""
        counts = np.zeros(len(self._children), dtype="float64")
        if self._numeric is not None:
            positions = self._numeric.positions(_matrix(columns, self._numeric_names))
            counts[: self._numeric.size] += np.bincount(positions, minlength=self._numeric.size)
        for binning, base in self._categorical:
            binned, _, absent = count_column(binning, columns[binning.name])
            counts[base : base + binning.size] += binned
            counts[base + binning.size] += absent
        counts[self._prediction_base :] += count_column(self.profile.prediction, predictions)[0]
        return counts

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script, a test): write now
            self.flush()
            return
        if self._flush_timer is None or self._flush_timer[0] is not loop:
            self._flush_timer = (loop, loop.call_later(self.flush_seconds, self.flush))

    def flush(self) -> None:
        """Write the pending counts to the counters: one ``inc`` per counter that moved."""
        if self._flush_timer is not None:
            self._flush_timer[1].cancel()  # when called before its time (no loop, exit)
            self._flush_timer = None
        with self._lock:
            pending, self._pending = self._pending, np.zeros_like(self._pending)
        failed = 0
        for i in np.flatnonzero(pending).tolist():
            try:
                self._children[i].inc(float(pending[i]))
            except Exception:
                failed += 1
                if failed == 1:
                    logger.exception("monitoring: writing a counter failed (the others are written)")

    def _admit(self, version: str) -> None:
        """Create a version's feedback series at 0 before its first rows: ``increase()`` misses the
        increment of a series that appears with it."""
        self._feedback_versions.add(version)
        if self.classifier:
            for correct in ("true", "false"):
                self._feedback.labels(self.service, version, correct)
            for answer, truth in self._cells if version == self.identity.version else []:
                self._confusion.labels(self.service, version, answer, truth)
        else:
            for family in (self._feedback, self._absolute, self._squared):
                family.labels(self.service, version)

    def observe_feedback(self, feedback: Feedback) -> None:
        """Count checked ground truth (``model.feedback.check_feedback``) for the version that answered.

        The version is a label value a client chooses, so one process counts at most
        MAX_FEEDBACK_VERSIONS of them (the served one among them); feedback for another is a
        FeedbackError, counted nowhere."""
        version, service = feedback.version, self.service
        if version not in self._feedback_versions:
            if len(self._feedback_versions) >= MAX_FEEDBACK_VERSIONS:
                raise FeedbackError(
                    f"feedback for model version {version!r} refused: this service already counts feedback "
                    f"for {MAX_FEEDBACK_VERSIONS} versions ({', '.join(sorted(self._feedback_versions))}); "
                    "send the feedback of recent versions",
                    field="prediction_id",
                )
            self._admit(version)
        if self.classifier:
            pairs = Counter(zip(map(str, feedback.predictions), map(str, feedback.actuals), strict=True))
            right = sum(n for (answer, truth), n in pairs.items() if answer == truth)
            for correct, rows in (("true", right), ("false", len(feedback.predictions) - right)):
                if rows:
                    self._feedback.labels(service, version, correct).inc(rows)
            for (answer, truth), rows in pairs.items():
                self._confusion.labels(service, version, answer, truth).inc(rows)
            return
        errors = np.asarray(feedback.predictions, dtype="float64") - np.asarray(
            feedback.actuals, dtype="float64"
        )
        self._feedback.labels(service, version).inc(errors.size)
        self._absolute.labels(service, version).inc(float(np.abs(errors).sum()))
        self._squared.labels(service, version).inc(float(np.square(errors).sum()))


class _NumericBins:
    """Positions of numeric values in the counter vector (``Monitor._children``), every feature at once:
    bin ``i`` of feature ``j`` holds ``edges[i-1] <= v < edges[i]`` (``model.profile.bin_numeric``)."""

    def __init__(self, numeric: Sequence[Binning]) -> None:
        sizes = np.array([b.size for b in numeric])
        # Each feature's inner edges, padded to one width with +inf (a finite value never reaches it).
        self._edges = np.full((len(numeric), int(sizes.max()) - 1), np.inf)
        for j, b in enumerate(numeric):
            self._edges[j, : len(b.edges)] = b.edges
        self._last = sizes - 1
        self._offsets = np.cumsum([0, *sizes[:-1]])
        self._out_of_range_base = int(sizes.sum())
        self._missing_base = self._out_of_range_base + len(numeric)
        self.size = self._missing_base + len(numeric)  # the counters these positions index
        self._lows = np.array([b.low for b in numeric], dtype="float64")
        self._highs = np.array([b.high for b in numeric], dtype="float64")

    def positions(self, matrix: np.ndarray) -> np.ndarray:
        """``matrix``: (rows, features) float64, NaN where missing."""
        present = ~np.isnan(matrix)
        if matrix.shape[0] <= SMALL_REQUEST_ROWS:  # one comparison of all rows with all edges
            reached = np.count_nonzero(self._edges <= matrix[:, :, None], axis=2)
        else:  # one edge rank at a time: less memory, fewer passes over a big request
            reached = np.zeros(matrix.shape, dtype=np.intp)
            for edge in self._edges.T:
                reached += edge <= matrix
        index = np.minimum(reached, self._last) + self._offsets
        outside = (matrix < self._lows) | (matrix > self._highs)  # NaN: False
        return np.concatenate(
            [
                index[present],
                np.nonzero(outside)[1] + self._out_of_range_base,
                np.nonzero(~present)[1] + self._missing_base,
            ]
        )


def _matrix(columns: Columns, names: Sequence[str]) -> np.ndarray:
    """The numeric columns as one (rows, features) float64 array; missing values (None) as NaN."""
    if hasattr(columns, "to_numpy") and hasattr(columns, "columns"):  # a DataFrame: one copy
        frame: Any = columns
        return np.asarray(frame[list(names)].to_numpy(dtype="float64", na_value=np.nan))
    if isinstance(columns, ColumnTable):  # validated doubles: its own matrix
        return block(columns, names)
    return np.column_stack([np.asarray(columns[name], dtype="float64") for name in names])


def count_column(binning: Binning, values: Any) -> tuple[np.ndarray, int, int]:
    """(count per bin, values outside the training range, missing values) of one column."""
    if binning.kind == NUMERIC:
        array = np.asarray(values, dtype="float64")  # None becomes NaN
        present = ~np.isnan(array)
        absent = int(array.size - np.count_nonzero(present))
        if absent:
            array = array[present]
        counts = np.bincount(bin_numeric(array, binning.edges), minlength=binning.size)
        assert binning.low is not None and binning.high is not None
        outside = int(np.count_nonzero((array < binning.low) | (array > binning.high)))
        return counts, outside, absent
    items = list(values.tolist() if isinstance(values, np.ndarray) else values)
    kept = [v for v in items if not _missing(v)]
    if binning.type == "boolean" or (kept and isinstance(kept[0], bool | np.bool_)):
        kept = ["true" if v else "false" for v in kept]
    return (
        np.bincount(bin_categorical(kept, binning.categories), minlength=binning.size),
        0,
        len(items) - len(kept),
    )


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---- drift from two /metrics scrapes (the demo; Prometheus does the same with its rules) -------------


def bin_counts(metrics_text: str, service: str) -> dict[str, dict[str, dict[int, float]]]:
    """From one ``/metrics`` text: {"counts" | "reference": {feature or PREDICTION: {bin: value}}}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, dict[int, float]]] = {"counts": {}, "reference": {}}
    wanted = {
        FEATURE_BINS: "counts",
        PREDICTION_BINS: "counts",
        FEATURE_REFERENCE: "reference",
        PREDICTION_REFERENCE: "reference",
    }
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            kind = wanted.get(sample.name)
            if kind is None or sample.labels.get(SERVICE_LABEL) != service:
                continue
            key = sample.labels.get("feature", PREDICTION)
            column = out[kind].setdefault(key, {})
            column[int(sample.labels["bin"])] = column.get(int(sample.labels["bin"]), 0.0) + sample.value
    return out


def served_rows(metrics_text: str, service: str) -> float:
    """The rows ``service`` has counted on one ``/metrics`` text (the total of its prediction bins)."""
    return sum(bin_counts(metrics_text, service)["counts"].get(PREDICTION, {}).values())


def drift_between(before: str, after: str, service: str) -> dict[str, float]:
    """PSI per feature (and PREDICTION) of what was served between two ``/metrics`` scrapes, against
    the reference proportions the service exports; NaN where nothing was served in between."""
    old, new = bin_counts(before, service), bin_counts(after, service)
    result = {}
    for key, reference in new["reference"].items():
        bins = sorted(reference)
        counts = new["counts"].get(key, {})
        start = old["counts"].get(key, {})
        served = [counts.get(b, 0.0) - start.get(b, 0.0) for b in bins]
        result[key] = psi(served, [reference[b] for b in bins])
    return result


_MONITORS: dict[tuple[str, str], Monitor] = {}  # a metric can be registered once per process


def monitor_for(model_dir: str | Path, labels: Mapping[str, str], service: str) -> Monitor:
    """The Monitor of the MLflow model folder ``model_dir`` (its ``extra_files/profile.json``),
    named by the BentoML model's ``labels`` (``mlflow_model_uri``, ``fingerprint``; model.bento).
    One per process and service: a second service instance in the same process shares it."""
    key = (str(model_dir), service)
    if key not in _MONITORS:
        _MONITORS[key] = _new_monitor(model_dir, labels, service)
    return _MONITORS[key]


def _new_monitor(model_dir: str | Path, labels: Mapping[str, str], service: str) -> Monitor:
    from model.profile import PROFILE_PATH_IN_MODEL, load_profile

    uri = labels.get("mlflow_model_uri", "")
    name, _, version = uri.removeprefix("models:/").rpartition("/")
    identity = ModelIdentity(
        model=name or service, version=version, fingerprint=labels.get("fingerprint", "")
    )
    return Monitor(load_profile(Path(model_dir) / PROFILE_PATH_IN_MODEL), service, identity)
