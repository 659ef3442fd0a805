"""Ground truth that arrives after the answer: the prediction id the APIs return, and the check of a
``POST /feedback`` body. Pure functions; the service counts what passes (``model.monitoring``).

Every ``/predict`` and ``/predict_proba`` answer carries the header ``X-Prediction-Id``:
``<version>.<digest>``, the registered model version that answered and the first 24 hex chars of a
digest (below) over that version and the answers (class names, or numbers; for ``/predict_proba``
the most probable class per row). The service keeps nothing per request, so any worker or replica, even one
serving a newer version, takes the feedback: its body names the id, the answers as they came back
and the true values, row for row::

    {"prediction_id": "3.5f0c...", "predictions": ["benign", "malignant"], "actuals": ["benign", "benign"]}

The digest ties the answers to the id: feedback paired with the wrong id or with edited answers is a
400, not a wrong quality metric. With a key (``load_key``: the Deployment mounts one per stack from a
Secret) the digest is an HMAC, so only ids this deployment issued verify: nobody can make up
answers, or versions that never answered, to count. Without one (``bentoml serve`` on a laptop) it is
a plain SHA-256, a check against mix-ups only. Whoever posts feedback is still trusted with the true
values.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic_core

FeedbackField = Literal["prediction_id", "predictions", "actuals"]


class FeedbackError(ValueError):
    """Feedback the service refuses; ``field`` is the body field at fault."""

    def __init__(self, message: str, *, field: FeedbackField) -> None:
        super().__init__(message)
        self.field = field


PREDICTION_ID_HEADER = "X-Prediction-Id"
DIGEST_LENGTH = 24
MIN_KEY_BYTES = 32
# A registered model version is a number; "" when the served model names none (a local bento).
# Canonical numbers only ("3", never "03"), so one version is one label value.
_PREDICTION_ID = re.compile(rf"^(?P<version>0|[1-9][0-9]{{0,11}}|)\.(?P<digest>[0-9a-f]{{{DIGEST_LENGTH}}})$")
_ASK = f"send the {PREDICTION_ID_HEADER} header of the /predict or /predict_proba answer"

Answer = str | float


@dataclass(frozen=True)
class Feedback:
    """A checked feedback body: the version that answered, and per row its answer and the truth."""

    version: str
    predictions: tuple[Answer, ...]
    actuals: tuple[Answer, ...]


def prediction_id(version: str, answers: Sequence[Answer], key: bytes = b"") -> str:
    """The id of one answer of model ``version``: what ``/feedback`` takes back with the answers."""
    return f"{version}.{_digest(version, answers, key)}"


def _digest(version: str, answers: Sequence[Answer], key: bytes) -> str:
    # -0.0 as 0.0: JavaScript's JSON.stringify(-0) sends "0" back.
    canonical = [a + 0.0 if isinstance(a, float) else a for a in answers]
    payload = pydantic_core.to_json([version, canonical])
    digest = hmac.new(key, payload, hashlib.sha256) if key else hashlib.sha256(payload)
    return digest.hexdigest()[:DIGEST_LENGTH]


def load_key(path: str | None) -> bytes:
    """The id key from the file at ``path`` (the Deployment's Secret volume); ``b""`` when no path is
    set. A set path without a key is an error at start, never unkeyed ids in a deployment."""
    if not path:
        return b""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise RuntimeError(f"the prediction id key {path} cannot be read ({exc}): mount its Secret") from exc
    if len(key) < MIN_KEY_BYTES:
        raise RuntimeError(f"the prediction id key {path} has {len(key)} bytes, fewer than {MIN_KEY_BYTES}")
    return key


def check_feedback(
    prediction_id_: Any,
    predictions: Sequence[Any],
    actuals: Sequence[Any],
    *,
    class_names: Sequence[str] | None,
    max_rows: int,
    key: bytes = b"",
) -> Feedback:
    """The feedback body as ``Feedback``; a FeedbackError naming the field (and row) that is wrong.

    ``class_names``: the classifier's classes (answers and truths must be among them); None for a
    regressor (finite numbers). ``max_rows``: the service's row limit per request; ``key``: the
    service's id key (``load_key``)."""
    match = _PREDICTION_ID.match(prediction_id_) if isinstance(prediction_id_, str) else None
    if match is None:
        raise FeedbackError(
            f"prediction_id {repr(prediction_id_)[:80]} is not a prediction id: {_ASK}", field="prediction_id"
        )
    if not predictions:
        raise FeedbackError(
            "predictions is empty: send the answers of the prediction, one per row", field="predictions"
        )
    if len(predictions) > max_rows:
        raise FeedbackError(
            f"predictions has {len(predictions)} rows, over the limit of {max_rows}", field="predictions"
        )
    if len(actuals) != len(predictions):
        raise FeedbackError(
            f"actuals has {len(actuals)} values for {len(predictions)} predictions: "
            "send one true value per row",
            field="actuals",
        )
    answers: tuple[Answer, ...]
    truths: tuple[Answer, ...]
    if class_names is None:
        answers = tuple(_number(v, "predictions", i) for i, v in enumerate(predictions))
        truths = tuple(_number(v, "actuals", i) for i, v in enumerate(actuals))
    else:
        known = frozenset(class_names)
        answers = tuple(_class(v, "predictions", i, known, class_names) for i, v in enumerate(predictions))
        truths = tuple(_class(v, "actuals", i, known, class_names) for i, v in enumerate(actuals))
    version = match["version"]
    if not hmac.compare_digest(_digest(version, answers, key), match["digest"]):
        raise FeedbackError(
            f"predictions are not the answers of prediction_id {prediction_id_!r}: send that answer's "
            f"rows unchanged, in order, with the {PREDICTION_ID_HEADER} it came with",
            field="predictions",
        )
    return Feedback(version, answers, truths)


def _number(value: Any, field: FeedbackField, row: int) -> float:
    problem = FeedbackError(f"{field}[{row}] is {repr(value)[:40]}: expected a finite number", field=field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise problem
    try:
        number = float(value)  # a JSON integer can be beyond any float
    except OverflowError:
        raise problem from None
    if not math.isfinite(number):
        raise problem
    return number


def _class(value: Any, field: FeedbackField, row: int, known: frozenset[str], names: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in known:
        listed = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
        raise FeedbackError(
            f"{field}[{row}] is {repr(value)[:40]}: expected a class name ({listed})", field=field
        )
    return value
