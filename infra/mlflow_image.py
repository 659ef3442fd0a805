"""The MLflow server image, built from infra/mlflow_image/ and pushed, so it is pinned by digest.

The folder holds a Dockerfile and a full requirements lock (mlflow, psycopg2, azure-storage-blob,
azure-identity). It only changes with a commit, so pulumi_docker's context digest is stable and an
unchanged folder is never rebuilt or pushed; preview never builds. Only stacks that run MLflow
(dev, local) build it; staging and prod run no MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pulumi

from infra.acr_token import PushCredentials
from infra.image import pushed_image

CONTEXT = Path("infra") / "mlflow_image"
REPOSITORY = "mlflow-server"


def mlflow_version(lock: Path = CONTEXT / "requirements.txt") -> str:
    """The mlflow version pinned in the image's lock (used as the image tag)."""
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.startswith("mlflow=="):
            return line.split("==", 1)[1].strip()
    raise ValueError(f"{lock}: no 'mlflow==<version>' line; re-lock it with the command at its top")


class MlflowImage(pulumi.ComponentResource):
    """Builds and pushes the MLflow server image; ``ref`` is digest-pinned."""

    ref: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        registry_server: pulumi.Input[str],
        base_image: str,
        platform: str,
        credentials: PushCredentials | None = None,
        push_grants: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("ml-delivery:infra:MlflowImage", name, None, opts)
        self.ref = pushed_image(
            name,
            image_name=pulumi.Output.format("{0}/{1}:{2}", registry_server, REPOSITORY, mlflow_version()),
            build={
                "context": CONTEXT.as_posix(),
                "dockerfile": (CONTEXT / "Dockerfile").as_posix(),
                "platform": platform,
                "args": {"BASE_IMAGE": base_image},
            },
            registry_server=registry_server,
            credentials=credentials,
            parent=self,
            depends_on=push_grants,
        )
        self.register_outputs({"ref": self.ref})
