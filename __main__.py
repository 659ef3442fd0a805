"""The ML delivery program: read this stack's settings, plan the release, wire the components.

Every stack: cluster + its own registry (the kubelet pulls from it only) -> release -> ModelServing;
Azure stacks also AzureMonitoring (managed Prometheus with the rule groups of infra/alert_rules.py).
The release plan (infra/release.py) is decided once: BUILD (dev/local: MLflow -> TrainedModel ->
ServingImage), PROMOTE (staging/prod: the source stack's digest, gated again, imported into this
stack's registry; no MLflow here), ROLLBACK (``imageRefOverride``: that digest, no training, no
build; a promoting stack imports it from its source's registry if its own lacks it).
Composition only; every component lives in infra/.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from infra import alert_rules
from infra.cluster import AksCluster, LocalCluster
from infra.image import ServingImage
from infra.mlflow_image import REPOSITORY as MLFLOW_REPOSITORY
from infra.mlflow_image import MlflowImage
from infra.monitoring import AzureMonitoring
from infra.promotion import Promotion
from infra.registry import LocalRegistry, Registry
from infra.release import Release, ReleaseKind, ReleasePlan, plan_release
from infra.serving import ModelServing
from infra.settings import ConfigError, Settings, load_settings
from infra.tracking import TrackingServer
from infra.training import TrainedModel, training_fingerprint


def after(value: pulumi.Input[str], *resources: pulumi.Resource) -> pulumi.Output[str]:
    """``value``, available only once ``resources`` exist (a data dependency for every consumer)."""
    ids = [r.id for r in resources if isinstance(r, pulumi.CustomResource)]
    return pulumi.Output.all(value, *ids).apply(lambda values: str(values[0]))


def own_registry_ref(settings: Settings, ref: str, login_server: pulumi.Input[str]) -> pulumi.Output[str]:
    """``ref`` if it is in this stack's registry (the only one its kubelet may pull from)."""

    def check(server: str) -> str:
        host = ref.split("/", 1)[0]
        if host != server:
            raise ConfigError(
                f"Pulumi.{settings.stack}.yaml: config key '{settings.project}:imageRefOverride' = {ref!r} "
                f"names registry {host}, but this stack pulls only from its own registry {server}. "
                "Use an earlier imageRef output of this stack."
            )
        return ref

    return pulumi.Output.from_input(login_server).apply(check)


def push_repositories(settings: Settings, plan: ReleasePlan) -> tuple[str, ...]:
    """The repositories this run pushes to: the serving image when it builds, MLflow when it runs one."""
    repos: tuple[str, ...] = (settings.training.spec.image_repository,) if plan.trains else ()
    if plan.runs_mlflow and settings.tracking.image is None:
        repos += (MLFLOW_REPOSITORY,)
    return repos


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
        endpoint_subnet_id=cluster.network.node_subnet_id,
        oidc_issuer_url=cluster.oidc_issuer_url,
    )


def build(
    settings: Settings,
    cluster: AksCluster | LocalCluster,
    registry: Registry | LocalRegistry,
    tracking: TrackingServer,
    push_grants: list[pulumi.Resource],
) -> Release:
    """dev/local: TrainedModel (on fingerprint change) -> serving image pushed to this registry."""
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
        tracking_service=tracking.training_service,
        kubeconfig=cluster.kubeconfig,
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
        tracking_service=tracking.training_service,
        kubeconfig=cluster.kubeconfig,
        tracking_username=tracking.admin_username,
        tracking_password=tracking.admin_password,
        tracking_ready=tracking.ready,
        registry_server=registry.login_server,
        platform=settings.serving.platform,
        credentials=registry.credentials,
        push_grants=push_grants,
    )
    return Release(
        image_ref=image.ref,
        model_version=model.version,
        lineage={
            "metrics": model.metrics,
            "fingerprint": model.model_fingerprint,
            "modelUri": model.model_uri,
            "runId": model.run_id,
            "inputFingerprint": model.fingerprint,
        },
    )


def promote(settings: Settings, plan: ReleasePlan, registry: Registry) -> Release:
    """staging/prod: the source's digest (or the override's), validated, imported into this registry."""
    assert plan.source is not None
    promotion = Promotion(
        "promotion",
        source=plan.source,
        stack=settings.stack,
        gate=settings.gate,
        target_registry_id=registry.registry_id,
        target_login_server=registry.login_server,
        import_grants=[*registry.push_grants, *registry.import_grants],
        image_ref_override=plan.override,
    )
    if plan.kind is ReleaseKind.ROLLBACK:
        return Release(image_ref=promotion.image_ref)
    return Release(
        image_ref=promotion.image_ref,
        model_version=promotion.model_version,
        lineage={
            "metrics": promotion.metrics,
            "fingerprint": promotion.fingerprint,
            "sourceImageRef": promotion.source_image_ref,
            "promotedFrom": plan.source,
        },
    )


def main() -> None:
    settings = load_settings()
    plan = plan_release(settings)
    cluster: AksCluster | LocalCluster = (
        LocalCluster("cluster", settings) if settings.is_local else AksCluster("cluster", settings)
    )
    registry: Registry | LocalRegistry
    pull_grants: list[pulumi.Resource] = []
    push_grants: list[pulumi.Resource] = []
    if isinstance(cluster, AksCluster):
        registry = Registry(
            "registry",
            settings,
            resource_group_name=cluster.resource_group_name,
            kubelet_object_id=cluster.kubelet_object_id,
            push_repositories=push_repositories(settings, plan),
            imports=plan.imports,
        )
        pull_grants, push_grants = [registry.pull_grant], list(registry.push_grants)
    else:
        registry = LocalRegistry("registry", settings)

    tracking: TrackingServer | None = None
    if plan.runs_mlflow:
        mlflow_image = (
            settings.tracking.image
            or MlflowImage(
                "mlflow-image",
                registry_server=registry.login_server,
                base_image=settings.serving.base_image,
                platform=settings.serving.platform,
                credentials=registry.credentials,
                push_grants=push_grants,
            ).ref
        )
        tracking = tracking_server(settings, cluster, after(mlflow_image, *pull_grants))
        pulumi.export("mlflowImageRef", mlflow_image)

    if plan.kind is ReleaseKind.BUILD:
        assert tracking is not None
        release = build(settings, cluster, registry, tracking, push_grants)
    elif plan.imports:
        assert isinstance(registry, Registry)
        release = promote(settings, plan, registry)
    else:
        # Rollback on a building stack: nothing to train or build, so a broken pipeline cannot block it.
        assert plan.override is not None
        release = Release(image_ref=own_registry_ref(settings, plan.override, registry.login_server))

    serving = ModelServing(
        "serving",
        settings,
        image_ref=after(release.image_ref, *pull_grants),  # the kubelet may pull only after AcrPull
        model_version=release.version_label,
        provider=cluster.provider,
    )
    if isinstance(cluster, AksCluster):
        monitoring = AzureMonitoring(
            "monitoring",
            settings,
            resource_group_name=cluster.resource_group_name,
            cluster_id=cluster.cluster_id,
            cluster_name=cluster.cluster_name,
            groups=alert_rules.rule_groups(
                settings.training.spec.bento_name,
                settings.monitoring.thresholds,
                namespace=settings.serving.namespace,
            ),
            provider=cluster.provider,
            serving=serving,
        )
        pulumi.export("monitoringWorkspaceId", monitoring.workspace_id)
        pulumi.export("prometheusQueryEndpoint", monitoring.query_endpoint)
    if plan.override is not None:
        pulumi.export("imageRefOverride", plan.override)
    pulumi.export("task", settings.training.spec.task)  # promotion re-gates over this task's metrics
    pulumi.export("endpoint", serving.endpoint)
    pulumi.export("imageRef", release.image_ref)  # always in this stack's own registry
    for key, value in release.lineage_outputs().items():
        pulumi.export(key, value)
    pulumi.export("registryId", registry.registry_id)
    pulumi.export("registryLoginServer", registry.login_server)
    if tracking is not None:
        pulumi.export("mlflowUrl", tracking.url)
        pulumi.export("mlflowService", tracking.service)  # <namespace>/<service>:<port>, for the tunnel
        pulumi.export("mlflowModelName", settings.tracking.model_name)
        pulumi.export("mlflowAdminUsername", tracking.admin_username)
        pulumi.export("mlflowAdminPassword", tracking.admin_password)
    pulumi.export("kubeconfig", cluster.kubeconfig)


main()
