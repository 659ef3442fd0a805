"""The BentoML 1.4 service that serves the registered MLflow model over HTTP.

``bentoml serve model.service:CancerClassifier`` (or the built bento) exposes:

- ``POST /predict``        ``{"rows": [{feature: number, ...}, ...]}`` -> ``[label, ...]``
                           (0 = malignant, 1 = benign)
- ``POST /predict_proba``  same body -> ``[[p_class_0, p_class_1], ...]`` in the order of the model's classes
- BentoML's ``/livez``, ``/readyz`` and Prometheus ``/metrics`` (paths and port in ``model.container``).

Both APIs use adaptive batching. Each request is validated against the MLflow model signature while
it is parsed (``model.validation``), before it joins a batch: a bad request gets a 400 that names the
row and feature, and can never fail the batch of another client.

Which model: the BentoML model tag comes from ``SERVING_MODEL_TAG`` (``model.bento`` sets it when it
builds the bento and bakes it into the image's environment); ``SERVING_MAX_ROWS`` caps rows per request.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
from pydantic import AfterValidator

from model.container import DEFAULT_BASE_IMAGE, MAX_ROWS_ENV, MODEL_TAG_ENV, SERVICE_PORT
from model.validation import DEFAULT_MAX_ROWS, Number, RowSchema, validate_rows

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_MODEL_TAG = "cancer-classifier:latest"
MLFLOW_MODEL_FOLDER = "mlflow_model"  # where bentoml.mlflow.import_model puts the model (its constant)
# BentoML's "debian" distro apt-installs build-essential and git into every image (~455 MB,
# DESIGN.md). Naming a distro it has no package list for skips that step; every package the model
# needs ships as a binary wheel, and the python:*-slim base already has bash and ca-certificates.
NO_SYSTEM_PACKAGES_DISTRO = "python-slim"

# Adaptive batching: a request waits at most this long for company. Generous on purpose: a small value
# makes BentoML answer 503 when the 2 cores are busy (DESIGN.md); single rows still return in ms.
MAX_LATENCY_MS = 10_000
MAX_BATCH_SIZE = 1_000

logger = logging.getLogger(__name__)

# The served model, read from the local BentoML model store (the bento's own store inside the image).
SERVED_MODEL = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG))


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


@functools.cache
def request_schema() -> RowSchema:
    """The input columns of the served model's MLflow signature, read once per process."""
    from mlflow.models import Model

    stored = SERVED_MODEL.resolve()
    signature_schema = Model.load(stored.path_of(MLFLOW_MODEL_FOLDER)).get_input_schema()
    if signature_schema is None or not signature_schema.has_input_names():
        raise RuntimeError(
            f"model {stored.tag} has no named input signature: log it with mlflow.sklearn.log_model"
            "(..., input_example=...) or signature=infer_signature(X, y) and rebuild the bento"
        )
    columns = tuple((spec.name, spec.type.name) for spec in signature_schema.inputs)
    return RowSchema(columns=columns, max_rows=max_rows_from_env())


def _checked_rows(rows: Any) -> list[dict[str, Number]]:
    return validate_rows(rows, request_schema())


# Validation runs while BentoML parses the request; a ValueError becomes a 400 naming the problem.
Rows = Annotated[list[Any], AfterValidator(_checked_rows)]


@bentoml.service(
    name="cancer_classifier",
    # model.bento sets the base image and the Python packages (the model's pinned requirements).
    image=bentoml.images.Image(
        base_image=DEFAULT_BASE_IMAGE, distro=NO_SYSTEM_PACKAGES_DISTRO, lock_python_packages=False
    ),
    http={"port": SERVICE_PORT},
    traffic={"timeout": 60},
)
class CancerClassifier:
    """Predicts breast-cancer diagnosis (0 = malignant, 1 = benign) from the 30 signature features."""

    # A class attribute, so that `bentoml build` packages the model into the bento.
    bento_model = SERVED_MODEL

    def __init__(self) -> None:
        import mlflow.pyfunc

        self.pyfunc = mlflow.pyfunc.load_model(self.bento_model.path_of(MLFLOW_MODEL_FOLDER))
        self.classifier = self.pyfunc.get_raw_model()
        if not hasattr(self.classifier, "predict_proba"):
            raise RuntimeError(
                f"model {SERVED_MODEL.tag} ({type(self.classifier).__name__}) has no predict_proba: "
                "serve a probabilistic scikit-learn classifier"
            )
        self.schema = request_schema()  # fail at start, not on the first request, if the signature is bad
        logger.info("serving %s with %d input features", SERVED_MODEL.tag, len(self.schema.columns))

    def _frame(self, rows: list[dict[str, Number]]) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame.from_records(rows, columns=list(self.schema.names))

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, rows: Rows) -> list[int]:
        """Predicted class label per row."""
        return [int(label) for label in self.pyfunc.predict(self._frame(rows))]

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict_proba(self, rows: Rows) -> list[list[float]]:
        """Probability of each class per row, in the order of the model's classes (0, 1)."""
        return [[float(p) for p in probs] for probs in self.classifier.predict_proba(self._frame(rows))]
