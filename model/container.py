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

# With a read-only root filesystem these paths must be writable volumes (emptyDir in Kubernetes,
# tmpfs under `docker run --read-only`).
WRITABLE_PATHS: tuple[str, ...] = ("/tmp", f"{BENTO_HOME}/tmp")

# Environment the server needs at run time in any container runtime.
RUNTIME_ENV: dict[str, str] = {
    "BENTOML_HOME": f"{BENTO_HOME}/",
    "PROMETHEUS_MULTIPROC_DIR": "/tmp/prometheus_multiproc",
}
