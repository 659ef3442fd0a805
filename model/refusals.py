"""What a refused request gets back and what the server log says about it: one 400 shape and one
log line, whatever refused it.

BentoML 1.4 answers a pydantic ``ValidationError`` with a 400
``{"error": "N validation error(s) for Input", "detail": [{"type", "loc", "msg", "url"}]}``, whether
the body failed while it was parsed into the API's input model (a ``rows`` value, a ``columns`` that
is not an array) or the API method raised it. ``bad_request`` makes the method's own refusals
(``model.validation.RequestValidationError``, ``model.feedback.FeedbackError``) one of those, with
``loc`` the body field at fault, so a client reads every refusal the same way.

BentoML also logs every refused request at ERROR with a traceback (~30 lines each), as it logs a
server fault: an alert on errors would fire on clients' mistakes. ``QuietRefusals`` turns those
records into one WARNING line naming the path and the problems, without the client's values.
"""

from __future__ import annotations

import logging

import pydantic_core

# The logger BentoML's API wrapper logs a refused request with (bentoml._internal.server.http_app).
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


def bad_request(exc: ValueError) -> pydantic_core.ValidationError:
    """``exc`` as the ValidationError BentoML answers 400, located at ``exc.field`` (the body field
    at fault) when it has one. The input is not repeated: the message names the value."""
    field = getattr(exc, "field", None)
    return pydantic_core.ValidationError.from_exception_data(
        "Input",
        [{"type": "value_error", "loc": (field,) if field else (), "input": None, "ctx": {"error": exc}}],
        hide_input=True,
    )


def summary(exc: pydantic_core.ValidationError) -> str:
    """The problems of a refusal, located, without the values that were sent."""
    return "; ".join(
        ".".join(map(str, e["loc"])) + ": " + e["msg"] if e["loc"] else e["msg"]
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    )


class QuietRefusals(logging.Filter):
    """On BentoML's HTTP logger: a record of a refused request (a ValidationError) becomes one
    WARNING line, ``Refused POST /predict (400): rows: Value error, ...``; other records pass as
    they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, pydantic_core.ValidationError) and isinstance(record.args, tuple):
            path, method = (*record.args, "?", "?")[:2]
            record.msg, record.args = "Refused %s %s (400): %s", (method, path, summary(exc))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def quiet_refusals() -> None:
    """Install ``QuietRefusals`` on BentoML's HTTP logger (once; the API wrapper logs through it)."""
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, QuietRefusals) for f in logger.filters):
        logger.addFilter(QuietRefusals())
