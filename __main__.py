"""The ML delivery program: read this stack's settings, wire the components, export the outputs.

dev (and local) train and build: cluster + registry + MLflow -> TrainedModel -> ServingImage ->
ModelServing. staging/prod promote: cluster + MLflow, and the source stack's digests -> ModelServing.
Rollback (``imageRefOverride`` set, any stack): ModelServing runs that digest; no training, no
build, no use of the source's image; the model lineage outputs are not exported (unknown).
Composition only; every component lives in infra/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pulumi

from infra.cluster import AksCluster, LocalCluster
from infra.image import ServingImage
from infra.mlflow_image import MlflowImage
from infra.promotion import Promotion
from infra.registry import LocalRegistry, Registry
from infra.serving import ModelServing
from infra.settings import Settings, load_settings
from infra.tracking import TrackingServer
from infra.training import TrainedModel, training_fingerprint

ROLLBACK_VERSION_LABEL = "rollback"  # the serving pods' model-version label when the lineage is unknown


class PushTarget(NamedTuple):
    """Where images are pushed, and optional registry credentials (else the Docker login)."""

    registry_server: pulumi.Output[str]
    platform: str
    registry_username: str | None
    registry_password: pulumi.Output[str] | None

    def kwargs(self) -> dict[str, Any]:
        return self._asdict()


def tracking_server(
    settings: Settings, cluster: AksCluster | LocalCluster, image: pulumi.Input[str]
) -> TrackingServer:
    if isinstance(cluster, LocalCluster):
        return TrackingServer("mlflow", settings, provider=cluster.provider, image=image)
    return TrackingServer(
        "mlflow",
        settings,
        provider=cluster.provider,
        image=image,
        resource_group_name=cluster.resource_group_name,
        vnet_id=cluster.network.vnet_id,
        postgres_subnet_id=cluster.network.postgres_subnet_id,
        oidc_issuer_url=cluster.oidc_issuer_url,
    )


def promote(settings: Settings, cluster: AksCluster | LocalCluster) -> dict[str, pulumi.Input[object]]:
    """staging/prod: the source stack's digests, validated; no training, no build."""
    assert settings.promote_from is not None
    promotion = Promotion(
        "promotion",
        source=settings.promote_from,
        stack=settings.stack,
        gate=settings.gate,
        kubelet_object_id=cluster.kubelet_object_id if isinstance(cluster, AksCluster) else None,
        need_mlflow_image=settings.tracking.image is None,
        image_ref_override=settings.image_ref_override,
    )
    mlflow_image = settings.tracking.image or promotion.mlflow_image_ref.apply(lambda ref: ref or "")
    tracking = tracking_server(settings, cluster, mlflow_image)
    if settings.image_ref_override is not None:
        return {
            "tracking": tracking,
            "imageRef": settings.image_ref_override,
            "registryId": promotion.registry_id,
            "mlflowImageRef": mlflow_image,
        }
    return {
        "tracking": tracking,
        "imageRef": promotion.image_ref,
        "modelVersion": promotion.model_version,
        "metrics": promotion.metrics,
        "fingerprint": promotion.fingerprint,
        "registryId": promotion.registry_id,
        "mlflowImageRef": mlflow_image,
        "promotedFrom": settings.promote_from,
    }


def train_and_build(
    settings: Settings, cluster: AksCluster | LocalCluster
) -> dict[str, pulumi.Input[object]]:
    """dev/local: registry, MLflow, TrainedModel (on fingerprint change), serving image."""
    registry: Registry | LocalRegistry
    if isinstance(cluster, AksCluster):
        registry = Registry(
            "registry",
            settings,
            resource_group_name=cluster.resource_group_name,
            kubelet_object_id=cluster.kubelet_object_id,
        )
    else:
        registry = LocalRegistry("registry", settings)
    push = PushTarget(
        registry.login_server,
        settings.serving.platform,
        settings.registry.username,
        settings.registry.password,
    )
    mlflow_image = (
        settings.tracking.image
        or MlflowImage("mlflow-image", base_image=settings.serving.base_image, **push.kwargs()).ref
    )
    tracking = tracking_server(settings, cluster, mlflow_image)
    built: dict[str, pulumi.Input[object]] = {
        "tracking": tracking,
        "registryId": registry.registry_id,
        "mlflowImageRef": mlflow_image,
        "registryLoginServer": registry.login_server,
    }
    if settings.image_ref_override is not None:
        # Rollback: nothing to train or build, so a broken pipeline cannot block it.
        return {**built, "imageRef": settings.image_ref_override}
    t = settings.training
    model = TrainedModel(
        "model",
        fingerprint=training_fingerprint(t, settings.stack),
        spec_path=str(Path(t.spec_path).resolve()),
        task=t.spec.task,
        gate=settings.gate.as_dict(),
        experiment_name=settings.tracking.experiment_name,
        model_name=settings.tracking.model_name,
        tracking_uri=tracking.training_uri,
        tracking_username=tracking.admin_username,
        tracking_password=tracking.admin_password,
        opts=pulumi.ResourceOptions(depends_on=[tracking]),  # MLflow must be up before training
    )
    image = ServingImage(
        "serving-image",
        model_uri=model.model_uri,
        model_fingerprint=model.model_fingerprint,
        repository=t.spec.image_repository,
        base_image=settings.serving.base_image,
        tracking_uri=tracking.training_uri,
        tracking_username=tracking.admin_username,
        tracking_password=tracking.admin_password,
        **push.kwargs(),
    )
    return {
        **built,
        "imageRef": image.ref,
        "modelVersion": model.version,
        "metrics": model.metrics,
        "fingerprint": model.model_fingerprint,
        "modelUri": model.model_uri,
        "runId": model.run_id,
        "inputFingerprint": model.fingerprint,
    }


def main() -> None:
    settings = load_settings()
    cluster: AksCluster | LocalCluster = (
        LocalCluster("cluster", settings) if settings.is_local else AksCluster("cluster", settings)
    )
    parts = promote(settings, cluster) if settings.promotes else train_and_build(settings, cluster)
    tracking = parts.pop("tracking")
    assert isinstance(tracking, TrackingServer)
    serving = ModelServing(
        "serving",
        settings,
        image_ref=parts["imageRef"],  # type: ignore[arg-type]
        model_version=parts.get("modelVersion", ROLLBACK_VERSION_LABEL),  # type: ignore[arg-type]
        provider=cluster.provider,
    )
    if settings.image_ref_override is not None:
        pulumi.export("imageRefOverride", settings.image_ref_override)
    pulumi.export("task", settings.training.spec.task)  # promotion re-gates over this task's metrics
    pulumi.export("endpoint", serving.endpoint)
    for key, value in parts.items():
        pulumi.export(key, value)
    pulumi.export("mlflowUrl", tracking.url)
    pulumi.export("mlflowAdminUsername", tracking.admin_username)
    pulumi.export("mlflowAdminPassword", tracking.admin_password)
    pulumi.export("kubeconfig", cluster.kubeconfig)


main()
