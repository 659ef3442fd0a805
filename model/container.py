"""The serving container's runtime contract, shared by the image build, the Kubernetes
Deployment (infra/serving.py) and the container tests, so that all three agree.

These are facts about the image BentoML builds (see bentoml/_internal/container/generate.py):
the user it runs as, where the bento lives, the port it serves on and its health endpoints.
"""

from __future__ import annotations

SERVICE_PORT = 3000
RUN_AS_USER = 1034  # BentoML's image user "bentoml"
RUN_AS_GROUP = 1034
BENTO_HOME = "/home/bentoml"

LIVENESS_PATH = "/livez"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"

# BentoML writes into BENTOML_HOME when the server starts (bentos/, models/, envs/, tmp/, client_id and
# prometheus_multiproc_dir/ for the metrics; it ignores PROMETHEUS_MULTIPROC_DIR), and the image's own
# BENTOML_HOME (/home/bentoml/) also holds the bento, so at run time BENTOML_HOME is a volume of its own.
RUNTIME_HOME = f"{BENTO_HOME}/runtime"

# With a read-only root filesystem these paths must be writable volumes (emptyDir in Kubernetes,
# tmpfs under `docker run --read-only`). Measured with `docker diff` on the running image.
WRITABLE_PATHS: tuple[str, ...] = ("/tmp", RUNTIME_HOME)

# Environment the server needs at run time in any container runtime.
RUNTIME_ENV: dict[str, str] = {
    "BENTOML_HOME": f"{RUNTIME_HOME}/",
    # Usage analytics / telemetry: no calls out of the pod; MLflow's would also write ~/.config.
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # The bento's src/ ships without .pyc files; writing them would hit the read-only root.
    "PYTHONDONTWRITEBYTECODE": "1",
}

# Set by model.bento when it builds the bento (baked into the image as ENV) and read by model.service
# when it is imported: which BentoML model to serve, and the most rows one request may carry.
MODEL_TAG_ENV = "SERVING_MODEL_TAG"
MAX_ROWS_ENV = "SERVING_MAX_ROWS"
# Read by model.service at import: the largest request body (bytes; bigger ones get 413 unread) and
# the number of BentoML worker processes (infra/serving.py sets it to the pod's CPU limit).
MAX_BODY_ENV = "SERVING_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # 1000 rows of 30 named features are ~1.3 MB of JSON
WORKERS_ENV = "SERVING_WORKERS"
# The key of the prediction ids (model.feedback), a file from a Secret volume: unset, ids are unkeyed.
FEEDBACK_KEY_FILE_ENV = "SERVING_FEEDBACK_KEY_FILE"
FEEDBACK_KEY_DIR = "/etc/ml-delivery/feedback"
FEEDBACK_KEY_FILE = f"{FEEDBACK_KEY_DIR}/key"
DEFAULT_WORKERS = 2

# The serving image's base unless a stack or test overrides it (model.service declares it, model.bento
# builds on it). Tests build on a Debian stand-in (tools/base_image.py); users keep this one.
DEFAULT_BASE_IMAGE = "python:3.11-slim"
