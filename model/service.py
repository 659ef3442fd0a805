"""The BentoML 1.4 services that serve a registered MLflow model over HTTP, whatever its spec.

``model.bento`` builds ``model.service:Classifier`` (binary and multiclass) or
``model.service:Regressor`` (regression), named after the spec (the name of the served model's
tag). Both expose:

- ``POST /predict``  ``{"rows": [{feature: value, ...}, ...]}`` -> one answer per row: the class
  name for a classifier (``"malignant"``), a number for a regressor (``151.2``)
- ``POST /predict_proba`` (classifiers only) same body -> per row ``{class name: probability}``,
  keys in the model's class order
- BentoML's ``/livez``, ``/readyz`` and Prometheus ``/metrics`` (paths and port in ``model.container``).

The request schema is the model's MLflow signature (names, types), plus the categories of its string
features from the model's metadata (``model.train.model_metadata``). Each request is validated while
it is parsed (``model.validation``), before it joins an adaptive batch: a bad request gets a 400
that names the row and feature, and can never fail the batch of another client.

Which model: the BentoML model tag comes from ``SERVING_MODEL_TAG`` (``model.bento`` sets it when it
builds the bento and bakes it into the image's environment); ``SERVING_MAX_ROWS`` caps rows per request.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
from pydantic import AfterValidator

from model.container import DEFAULT_BASE_IMAGE, MAX_ROWS_ENV, MODEL_TAG_ENV, SERVICE_PORT
from model.monitoring import monitor_for
from model.validation import DEFAULT_MAX_ROWS, RowSchema, Value, validate_rows

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_MODEL_TAG = "model:latest"
MLFLOW_MODEL_FOLDER = "mlflow_model"  # where bentoml.mlflow.import_model puts the model (its constant)
# BentoML's "debian" distro apt-installs build-essential and git into every image (~455 MB).
# Naming a distro it has no package list for skips that step; every package the model needs ships
# as a binary wheel, and the python:*-slim base already has bash and ca-certificates.
NO_SYSTEM_PACKAGES_DISTRO = "python-slim"

# Adaptive batching: a request waits at most this long for company. Generous on purpose: a small
# value makes BentoML answer 503 when the CPUs are busy; single rows still return in ms.
MAX_LATENCY_MS = 10_000
MAX_BATCH_SIZE = 1_000

# The dtype each signature type becomes in the frame handed to the model.
_DTYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32", "boolean": "bool"}

logger = logging.getLogger(__name__)

# The served model, read from the local BentoML model store (the bento's own store inside the image).
SERVED_MODEL = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG))
# model.bento names the BentoML model, the bento and the service alike after the spec
# (model.spec.bento_name_for), so the service name is the model tag's name.
SERVICE_NAME = SERVED_MODEL.tag.name


def max_rows_from_env() -> int:
    """The per-request row limit from SERVING_MAX_ROWS (default 1000); a bad value stops the server."""
    raw = os.environ.get(MAX_ROWS_ENV, str(DEFAULT_MAX_ROWS))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_ROWS_ENV}={raw!r} is not a positive whole number: set it to e.g. 1000")
    return value


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


def _checked_rows(rows: Any) -> list[dict[str, Value]]:
    return validate_rows(rows, contract().schema)


# Validation runs while BentoML parses the request; a ValueError becomes a 400 naming the problem.
Rows = Annotated[list[Any], AfterValidator(_checked_rows)]

_SERVICE_CONFIG: dict[str, Any] = {
    "name": SERVICE_NAME,
    # model.bento sets the base image and the Python packages (the model's pinned requirements).
    "image": bentoml.images.Image(
        base_image=DEFAULT_BASE_IMAGE, distro=NO_SYSTEM_PACKAGES_DISTRO, lock_python_packages=False
    ),
    "http": {"port": SERVICE_PORT},
    "traffic": {"timeout": 60},
}


class _Served:
    """Loading and framing shared by both services."""

    bento_model = SERVED_MODEL  # a class attribute, so that `bentoml build` packages the model

    def __init__(self) -> None:
        import mlflow.pyfunc

        self.pyfunc = mlflow.pyfunc.load_model(self.bento_model.path_of(MLFLOW_MODEL_FOLDER))
        self.estimator = self.pyfunc.get_raw_model()
        self.contract = contract()  # fail at start, not on the first request, if the signature is bad
        self.monitor = monitor_for(
            self.bento_model.path_of(MLFLOW_MODEL_FOLDER), self.bento_model.info.labels, SERVICE_NAME
        )
        logger.info(
            "serving %s (%s) with %d input features",
            SERVED_MODEL.tag,
            self.contract.task,
            len(self.contract.schema.columns),
        )

    def _frame(self, rows: list[dict[str, Value]]) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame.from_records(rows, columns=list(self.contract.schema.names))
        return frame.astype({n: _DTYPES[k] for n, k in self.contract.schema.columns if k in _DTYPES})


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

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, rows: Rows) -> list[str]:
        """The predicted class name per row."""
        frame = self._frame(rows)
        answers = [self.names[str(label)] for label in self.pyfunc.predict(frame)]
        self.monitor.observe(frame, answers)
        return answers

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict_proba(self, rows: Rows) -> list[dict[str, float]]:
        """Per row, each class name with its probability, in the model's class order."""
        names = self.contract.class_names
        frame = self._frame(rows)
        proba = self.estimator.predict_proba(frame)
        self.monitor.observe(frame, [names[i] for i in proba.argmax(axis=1)])
        return [{name: float(p) for name, p in zip(names, probs, strict=True)} for probs in proba]


@bentoml.service(**_SERVICE_CONFIG)
class Regressor(_Served):
    """A regression model: one number per row."""

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, rows: Rows) -> list[float]:
        """The predicted value per row."""
        frame = self._frame(rows)
        answers = [float(value) for value in self.pyfunc.predict(frame)]
        self.monitor.observe(frame, answers)
        return answers
