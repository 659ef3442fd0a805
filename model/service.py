"""The BentoML 1.4 services that serve a registered MLflow model over HTTP, whatever its spec.

``model.bento`` builds ``model.service:Classifier`` (binary and multiclass) or
``model.service:Regressor`` (regression), named after the spec (the name of the served model's
tag). Both expose:

- ``POST /predict``  ``{"rows": [{feature: value, ...}, ...]}``, or the same rows in the column form
  ``{"columns": [feature, ...], "data": [[value, ...], ...]}`` (pandas' "split" orient, which
  parses ~3x faster for batches) -> one answer per row: the class name for a classifier
  (``"malignant"``), a number for a regressor (``151.2``)
- ``POST /predict_proba`` (classifiers only) same bodies -> per row ``{class name: probability}``,
  keys in the model's class order
- ``POST /feedback`` ``{"prediction_id": ..., "predictions": [...], "actuals": [...]}``: the true
  values of an earlier answer, counted for the online quality figures (``model.feedback``; every
  answer above carries its id in the ``X-Prediction-Id`` header) -> ``{"rows": n, "version": v}``
- BentoML's ``/livez``, ``/readyz`` and Prometheus ``/metrics`` (paths and port in ``model.container``).

The request schema is the model's MLflow signature (names, types), plus the categories of its string
features from the model's metadata (``model.train.model_metadata``). Each request is validated and
converted to typed column arrays (``model.validation``: ``rows`` while it is parsed, the column
form in ``request_batch``): a bad request gets a 400 that names the row and feature. The model is
then called on those arrays in the event loop (``model.predictor``: the fitted pipeline without a
pandas round trip when it answers the same), one request at a time per worker: no adaptive
batching, whose dispatcher made single rows wait (benchmarks/results/latest.md has the measured
effect of each choice).

``model.request_guard`` answers 413 to a body over ``SERVING_MAX_BODY_BYTES`` before it is read and
415 to an API call that is not JSON. ``model.column_path`` answers a valid column form of numbers for
an all-double model before BentoML's request handling, through the same answer code
(``_Served.column_answer``); every other body takes BentoML's path.

Which model: the BentoML model tag comes from ``SERVING_MODEL_TAG`` (``model.bento`` sets it when it
builds the bento and bakes it into the image's environment); ``SERVING_MAX_ROWS`` caps rows per
request; ``SERVING_WORKERS`` is the number of worker processes (one per CPU of the pod's limit:
infra/serving.py sets it).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
from dataclasses import dataclass
from typing import Annotated, Any, cast

import bentoml
import numpy as np
import pydantic_core
from bentoml._internal.server.http import traffic as _bentoml_traffic
from pydantic import AfterValidator, Field

from model.accept_balance import accept_one_per_wakeup
from model.api_callers import api_methods, bind_api_callers
from model.column_path import ColumnPath, column_batch
from model.container import (
    DEFAULT_BASE_IMAGE,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_WORKERS,
    FEEDBACK_KEY_FILE_ENV,
    MAX_BODY_ENV,
    MAX_ROWS_ENV,
    MODEL_TAG_ENV,
    SERVICE_PORT,
    WORKERS_ENV,
)
from model.feedback import PREDICTION_ID_HEADER, FeedbackError, check_feedback, load_key
from model.feedback import prediction_id as prediction_id_of
from model.kernels import NON_FINITE_MESSAGE
from model.monitoring import monitor_for
from model.predictor import predictor_for
from model.refusals import bad_request, quiet_refusals
from model.request_guard import RequestGuard, RequestTimeout
from model.validation import (
    DEFAULT_MAX_ROWS,
    Batch,
    RequestValidationError,
    RowSchema,
    overflow_problem,
    request_batch,
    validate_batch,
)

DEFAULT_MODEL_TAG = "model:latest"
MLFLOW_MODEL_FOLDER = "mlflow_model"  # where bentoml.mlflow.import_model puts the model (its constant)
# BentoML's "debian" distro apt-installs build-essential and git into every image (~455 MB).
# Naming a distro it has no package list for skips that step; every package the model needs ships
# as a binary wheel, and the python:*-slim base already has bash and ca-certificates.
NO_SYSTEM_PACKAGES_DISTRO = "python-slim"

API_PATHS = ("/predict", "/predict_proba", "/feedback")

logger = logging.getLogger(__name__)

# The served model, read from the local BentoML model store (the bento's own store inside the image).
SERVED_MODEL = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG))
# model.bento names the BentoML model, the bento and the service alike after the spec
# (model.spec.bento_name_for), so the service name is the model tag's name.
SERVICE_NAME = SERVED_MODEL.tag.name
# What BentoML 1.4 sets on every API answer (ServiceAppFactory._add_response_headers).
SERVER_HEADER = f"BentoML Service/{SERVICE_NAME}"


def positive_int_from_env(name: str, default: int) -> int:
    """A positive whole number from environment variable ``name``; a bad value stops the server."""
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={raw!r} is not a positive whole number: set it to e.g. {default}")
    return value


def max_rows_from_env() -> int:
    """The per-request row limit from SERVING_MAX_ROWS (default 1000)."""
    return positive_int_from_env(MAX_ROWS_ENV, DEFAULT_MAX_ROWS)


@dataclass(frozen=True)
class ModelContract:
    """What the logged model promises: its input schema, task and (classifiers) class order and names."""

    schema: RowSchema
    task: str
    classes: tuple[Any, ...]
    class_names: tuple[str, ...]


def contract_from_mlmodel(model_dir: str) -> ModelContract:
    """The contract of the MLflow model in ``model_dir`` (its signature and metadata)."""
    from mlflow.models import Model

    mlmodel = Model.load(model_dir)
    signature_schema = mlmodel.get_input_schema()
    if signature_schema is None or not signature_schema.has_input_names():
        raise RuntimeError(
            f"model {model_dir} has no named input signature: train it with model.train (which logs "
            "one) and rebuild the bento"
        )
    meta = mlmodel.metadata or {}
    categories = {str(k): tuple(str(c) for c in v) for k, v in (meta.get("categories") or {}).items()}
    columns = tuple((spec.name, spec.type.name) for spec in signature_schema.inputs)
    classes = tuple(meta.get("classes") or ())
    names = tuple(str(n) for n in (meta.get("class_names") or classes))
    return ModelContract(
        schema=RowSchema(columns=columns, max_rows=max_rows_from_env(), categories=categories),
        task=str(meta.get("task", "regression" if not classes else "binary")),
        classes=classes,
        class_names=names,
    )


@functools.cache
def contract() -> ModelContract:
    """The served model's contract, read once per process."""
    return contract_from_mlmodel(SERVED_MODEL.resolve().path_of(MLFLOW_MODEL_FOLDER))


def _checked_rows(rows: Any) -> Batch | None:
    return None if rows is None else validate_batch(rows, contract().schema)


# BentoML 1.4's OpenAPI document drops the null branch of an optional field; "nullable" says it.
_EITHER_FORM = "Send either 'rows', or 'columns' with 'data'; not both."
_OPTIONAL = {"nullable": True}

# Validation of ``rows`` runs while BentoML parses the request; a ValueError becomes a 400 naming
# the problem. The API methods receive the Batch it returns (typed column arrays), or None when the
# request sent the column form. (The validator wraps the optional type: BentoML 1.4 re-applies a
# validator inside an Optional to what it returned.)
Rows = Annotated[
    list[Any] | None,
    AfterValidator(_checked_rows),
    Field(description=f"One object per row, feature: value. {_EITHER_FORM}", json_schema_extra=_OPTIONAL),
]
# The column form. Its rows' shapes are checked in model.validation, which names the row; a
# 'columns' or 'data' that is not an array is refused by these types while the body is parsed.
Columns = Annotated[
    list[str] | None,
    Field(description=f"The column form: the feature names, once, in any order. {_EITHER_FORM}",
          json_schema_extra=_OPTIONAL),
]  # fmt: skip
Data = Annotated[
    list[Any] | None,
    Field(description="The column form: one array of values per row, in the order of 'columns'.",
          json_schema_extra=_OPTIONAL),
]  # fmt: skip


_SERVICE_CONFIG: dict[str, Any] = {
    "name": SERVICE_NAME,
    # model.bento sets the base image and the Python packages (the model's pinned requirements).
    "image": bentoml.images.Image(
        base_image=DEFAULT_BASE_IMAGE, distro=NO_SYSTEM_PACKAGES_DISTRO, lock_python_packages=False
    ),
    "http": {"port": SERVICE_PORT},
    "traffic": {"timeout": 60},
    "workers": positive_int_from_env(WORKERS_ENV, DEFAULT_WORKERS),
    # Measured per request (benchmarks/results/levers.md): the access log line cost ~15% of a
    # single-row request's CPU, an OpenTelemetry span that no exporter sends ~15%. Prometheus
    # metrics (request count, latency, in progress) stay, as do the spans of every other path.
    "logging": {"access": {"enabled": False}},
    "tracing": {"excluded_urls": list(API_PATHS)},
}


def _json(answer: list[Any], prediction: str) -> Any:
    """The answer as a JSON response, encoded by pydantic-core, with its prediction id
    (``model.feedback``). The methods' return annotations still give the OpenAPI schema; BentoML's
    own encoding rebuilt that schema on every response."""
    from starlette.responses import Response

    return Response(
        pydantic_core.to_json(answer),
        media_type="application/json",
        headers={PREDICTION_ID_HEADER: prediction},
    )


class _Served:
    """Loading and scoring shared by both services."""

    bento_model = SERVED_MODEL  # a class attribute, so that `bentoml build` packages the model

    def __init__(self) -> None:
        import mlflow.pyfunc

        pyfunc = mlflow.pyfunc.load_model(self.bento_model.path_of(MLFLOW_MODEL_FOLDER))
        self.estimator = pyfunc.get_raw_model()
        self.contract = contract()  # fail at start, not on the first request, if the signature is bad
        self.predictor, path = predictor_for(self.estimator, self.contract.schema)
        self.feedback_key = load_key(os.environ.get(FEEDBACK_KEY_FILE_ENV))
        self.monitor = monitor_for(
            self.bento_model.path_of(MLFLOW_MODEL_FOLDER), self.bento_model.info.labels, SERVICE_NAME
        )
        logger.info(
            "serving %s (%s) with %d input features; %s",
            SERVED_MODEL.tag,
            self.contract.task,
            len(self.contract.schema.columns),
            path,
        )
        bind_api_callers(self)  # each API's caller built once, not per request (model.api_callers)
        # What is loaded now lives as long as the worker: out of the collector's sight, full
        # collections stay short (they scanned every imported module's objects: a periodic stall).
        gc.freeze()

    @bentoml.on_shutdown
    def write_pending_counts(self) -> None:
        """At a graceful stop (BentoML's lifespan shutdown, before the worker re-raises SIGTERM and
        exits without atexit): the counts still waiting for the monitoring timer."""
        self.monitor.flush()

    def _batch(self, rows: Rows, columns: Columns, data: Data) -> Batch:
        """The request's validated rows, in whichever of the two forms it sent them."""
        try:
            return request_batch(cast(Batch | None, rows), columns, data, self.contract.schema)
        except RequestValidationError as exc:
            raise bad_request(exc) from None

    def _scored(self, batch: Batch, method: str) -> np.ndarray:
        """The model's answer (``method``: predict or predict_proba) for a validated request: the
        Batch ``Rows`` made of it (typed column arrays). The APIs count the columns and the answers
        for monitoring (``model.monitoring``)."""
        try:
            scores: np.ndarray = getattr(self.predictor, method)(batch.columns)
        except ValueError as exc:
            # scikit-learn's check_array on a value the pipeline's own arithmetic overflowed;
            # anything else is the server's fault and stays a 500.
            if NON_FINITE_MESSAGE not in str(exc):
                raise
            raise bad_request(overflow_problem(batch)) from exc
        return scores

    def column_answer(self, method: str, body: bytes) -> Any:
        """The answer of API ``method`` to a column-form ``body`` of numbers (``model.column_path``),
        as the API gives it, with the header BentoML adds to every API answer; None when the body is
        anything else."""
        batch = column_batch(body, self.contract.schema)
        if batch is None:
            return None
        response = getattr(self, f"_answer_{method}")(batch)
        response.headers["server"] = SERVER_HEADER
        return response

    def _answered(self, answer: list[Any], batch: Batch, labels: list[Any]) -> Any:
        """The response for ``answer``; ``labels``: the class names or numbers it stands for (counted
        for monitoring, and what the prediction id covers)."""
        response = _json(answer, prediction_id_of(self.monitor.identity.version, labels, self.feedback_key))
        self.monitor.observe(batch.columns, labels)  # last: nothing after it raises (model.column_path)
        return response

    @bentoml.api
    async def feedback(
        self, prediction_id: str, predictions: list[Any], actuals: list[Any]
    ) -> dict[str, Any]:
        """The true values of an earlier answer: ``prediction_id`` from its X-Prediction-Id header,
        its ``predictions`` as answered (for /predict_proba: the most probable class per row) and one
        actual value per row (a class name, or a number). Counted for the model version that answered."""
        classes = self.contract.class_names if self.contract.classes else None
        try:
            checked = check_feedback(
                prediction_id,
                predictions,
                actuals,
                class_names=classes,
                max_rows=max_rows_from_env(),
                key=self.feedback_key,
            )
            self.monitor.observe_feedback(checked)
        except FeedbackError as exc:
            raise bad_request(exc) from None
        return {"rows": len(checked.actuals), "version": checked.version}


@bentoml.service(**_SERVICE_CONFIG)
class Classifier(_Served):
    """A binary or multiclass model: class names, and class probabilities."""

    def __init__(self) -> None:
        super().__init__()
        if not hasattr(self.estimator, "predict_proba") or not self.contract.classes:
            raise RuntimeError(
                f"model {SERVED_MODEL.tag} ({type(self.estimator).__name__}) is not a classifier with "
                "predict_proba and logged classes: train it with a classification task"
            )
        self.names = {
            str(c): n for c, n in zip(self.contract.classes, self.contract.class_names, strict=True)
        }

    @bentoml.api
    async def predict(self, rows: Rows = None, columns: Columns = None, data: Data = None) -> list[str]:
        """The predicted class name per row (``rows``, or ``columns`` with ``data``)."""
        return self._answer_predict(self._batch(rows, columns, data))

    def _answer_predict(self, batch: Batch) -> Any:
        answers = [self.names[str(label)] for label in self._scored(batch, "predict").tolist()]
        return self._answered(answers, batch, answers)

    @bentoml.api
    async def predict_proba(
        self, rows: Rows = None, columns: Columns = None, data: Data = None
    ) -> list[dict[str, float]]:
        """Per row (``rows``, or ``columns`` with ``data``), each class name with its probability, in
        the model's class order."""
        return self._answer_predict_proba(self._batch(rows, columns, data))

    def _answer_predict_proba(self, batch: Batch) -> Any:
        names = self.contract.class_names
        scores = self._scored(batch, "predict_proba")
        answers = [dict(zip(names, probs, strict=True)) for probs in scores.tolist()]
        return self._answered(answers, batch, [names[i] for i in scores.argmax(axis=1)])


@bentoml.service(**_SERVICE_CONFIG)
class Regressor(_Served):
    """A regression model: one number per row."""

    @bentoml.api
    async def predict(self, rows: Rows = None, columns: Columns = None, data: Data = None) -> list[float]:
        """The predicted value per row (``rows``, or ``columns`` with ``data``)."""
        return self._answer_predict(self._batch(rows, columns, data))

    def _answer_predict(self, batch: Batch) -> Any:
        answers = [float(value) for value in self._scored(batch, "predict").tolist()]
        return self._answered(answers, batch, answers)


# BentoML 1.4 builds its ``traffic.timeout`` middleware from this module attribute when a worker makes
# the app (bentoml._internal.server.base_app.BaseAppFactory.middlewares): the same 504 after the
# timeout, without the uncancelled per-request timer (model.request_guard.RequestTimeout).
_bentoml_traffic.TimeoutMiddleware = RequestTimeout  # type: ignore[misc,assignment]

for _service in (Classifier, Regressor):
    cast(Any, _service).add_asgi_middleware(
        RequestGuard,
        max_bytes=positive_int_from_env(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES),
        json_paths=API_PATHS,
    )
    # Inside RequestGuard (BentoML adds user middleware in order, each inside the one before); the
    # APIs it answers are those with an answer of a validated batch (_Served.column_answer).
    _inner = cast(Any, _service).inner
    cast(Any, _service).add_asgi_middleware(
        ColumnPath, methods={f"/{m}": m for m in api_methods(_inner) if hasattr(_inner, f"_answer_{m}")}
    )

quiet_refusals()

# Each worker accepts one connection per wake-up of the shared socket, so that a burst of keep-alive
# connections spreads over the workers (model.accept_balance).
accept_one_per_wakeup()
