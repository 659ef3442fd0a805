"""The Kubernetes objects that serve the model image, pinned by digest.

Namespace, ServiceAccount (no token), Deployment (non-root uid from model.container, read-only root
filesystem with emptyDirs at model.container.WRITABLE_PATHS, no capabilities, RuntimeDefault
seccomp, requests/limits, startup/readiness/liveness probes on BentoML's endpoints, rolling update
with maxUnavailable 0, Prometheus scrape annotations), Service (ClusterIP unless config allows a
LoadBalancer), HorizontalPodAutoscaler, PodDisruptionBudget and NetworkPolicies (default deny, allow
ingress to the model port), and the Secret holding the stack's prediction id key (model.feedback),
mounted read-only as a file. pulumi_kubernetes waits for the rollout to be ready.

Rotating that key: ``pulumi up --replace <the RandomPassword's URN>``; the pods roll (their template
carries the Secret's uid) and every id issued before stops verifying (its feedback gets a 400).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import podsecurity
from infra.image import require_digest_ref
from infra.settings import Settings
from infra.tracking_stores import secret
from model import container

APP = "model-server"


def probes() -> dict[str, Any]:
    """Startup, readiness and liveness probes on the serving container's health endpoints."""

    def get(path: str) -> dict[str, Any]:
        return {"http_get": {"path": path, "port": container.SERVICE_PORT}}

    return {
        # the model loads before /readyz answers; allow up to 5 minutes for a cold start
        "startup_probe": {**get(container.LIVENESS_PATH), "period_seconds": 5, "failure_threshold": 60},
        "readiness_probe": {**get(container.READINESS_PATH), "period_seconds": 5, "failure_threshold": 3},
        "liveness_probe": {**get(container.LIVENESS_PATH), "period_seconds": 15, "failure_threshold": 3},
    }


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity in cores: ``"500m"`` -> 0.5, ``"2"`` -> 2.0."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def workers_for_cpu_limit(cpu_limit: str) -> int:
    """BentoML worker processes for a pod's CPU limit: one per whole core, at least one (measured in
    benchmarks/results: one worker per core is the best throughput and p99; more only add contention)."""
    return max(1, int(cpu_cores(cpu_limit)))


FEEDBACK_KEY_SECRET = f"{APP}-feedback-key"  # the Secret (in the serving namespace) and its one key
FEEDBACK_KEY_NAME = "key"
FEEDBACK_KEY_VOLUME = "feedback-key"


def serving_env(settings: Settings) -> dict[str, str]:
    """The serving container's environment: the runtime contract, the worker count, where the
    prediction id key is mounted."""
    return {
        **container.RUNTIME_ENV,
        container.WORKERS_ENV: str(workers_for_cpu_limit(settings.serving.cpu_limit)),
        container.FEEDBACK_KEY_FILE_ENV: container.FEEDBACK_KEY_FILE,
    }


def feedback_key_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volume_mount): the key Secret as a read-only file at model.container.FEEDBACK_KEY_FILE."""
    volume = {
        "name": FEEDBACK_KEY_VOLUME,
        "secret": {
            "secret_name": FEEDBACK_KEY_SECRET,
            "items": [{"key": FEEDBACK_KEY_NAME, "path": container.FEEDBACK_KEY_FILE.rsplit("/", 1)[1]}],
            "default_mode": 0o444,
        },
    }
    mount = {"name": FEEDBACK_KEY_VOLUME, "mount_path": container.FEEDBACK_KEY_DIR, "read_only": True}
    return volume, mount


def pod_spec(settings: Settings, image_ref: pulumi.Input[str], service_account: str) -> dict[str, Any]:
    """The serving pod: digest-pinned image, hardened, with resources and probes.

    Only the image waits for the build/promotion, so the rest is known even in a preview.
    """
    s = settings.serving
    volumes, mounts = podsecurity.empty_dir_volumes(container.WRITABLE_PATHS)
    key_volume, key_mount = feedback_key_volume()
    volumes, mounts = [*volumes, key_volume], [*mounts, key_mount]
    return {
        "service_account_name": service_account,
        "automount_service_account_token": False,
        "security_context": podsecurity.pod_security_context(container.RUN_AS_USER, container.RUN_AS_GROUP),
        "containers": [
            {
                "name": APP,
                "image": pulumi.Output.from_input(image_ref).apply(
                    lambda ref: require_digest_ref(ref, "serving Deployment image")
                ),
                "image_pull_policy": "IfNotPresent",
                "ports": [{"name": "http", "container_port": container.SERVICE_PORT}],
                "env": [{"name": k, "value": v} for k, v in sorted(serving_env(settings).items())],
                "security_context": podsecurity.container_security_context(),
                "resources": {
                    "requests": {"cpu": s.cpu_request, "memory": s.memory_request},
                    "limits": {"cpu": s.cpu_limit, "memory": s.memory_limit},
                },
                "volume_mounts": mounts,
                **probes(),
            }
        ],
        "volumes": volumes,
        # Replicas spread over zones and nodes where the pool has them (a preference, so a
        # single-zone pool still schedules every replica).
        "topology_spread_constraints": [
            {
                "max_skew": 1,
                "topology_key": key,
                "when_unsatisfiable": "ScheduleAnyway",
                "label_selector": {"match_labels": {"app": APP}},
            }
            for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
        ],
    }


class ModelServing(pulumi.ComponentResource):
    """Serves ``image_ref`` in its own namespace; ``endpoint`` is the URL clients use."""

    endpoint: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        image_ref: pulumi.Input[str],
        model_version: pulumi.Input[str],
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("ml-delivery:infra:ModelServing", name, None, opts)
        s = settings.serving
        ns = s.namespace
        # The model's name from its spec, sanitised to a label value; the selector stays `app` only
        # (a Deployment's selector is immutable, so another model must not change it).
        labels = {
            "app": APP,
            "app.kubernetes.io/part-of": settings.project,
            "app.kubernetes.io/name": settings.training.spec.label_value,
        }
        selector = {"app": APP}
        namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata={"name": ns, "labels": labels},
            opts=pulumi.ResourceOptions(parent=self, provider=provider),
        )
        opts_ns = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[namespace])
        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata={"name": APP, "namespace": ns},
            automount_service_account_token=False,
            opts=opts_ns,
        )
        # One key per stack, kept across ups: replacing it makes the ids clients hold unverifiable.
        key = random.RandomPassword(
            f"{name}-feedback-key", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        key_secret = k8s.core.v1.Secret(
            f"{name}-feedback-key",
            metadata={"name": FEEDBACK_KEY_SECRET, "namespace": ns, "labels": labels},
            type="Opaque",
            string_data={FEEDBACK_KEY_NAME: secret(key.result)},  # a secret in the state, too
            opts=opts_ns,
        )
        annotations = {
            # The pods read the key at start: a recreated Secret (a new key) rolls them all, so no
            # two pods behind the Service verify ids with different keys.
            "ml-delivery/feedback-key-uid": key_secret.metadata.apply(lambda m: (m.uid if m else None) or ""),
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(container.SERVICE_PORT),
            "prometheus.io/path": container.METRICS_PATH,
        }
        metadata: Any = {"name": APP, "namespace": ns, "labels": labels}
        spec: Any = {
            "replicas": s.min_replicas,
            "selector": {"match_labels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rolling_update": {"max_unavailable": 0, "max_surge": 1},
            },
            "template": {
                "metadata": {
                    "labels": {
                        **labels,
                        "model-version": pulumi.Output.from_input(model_version).apply(str),
                    },
                    "annotations": annotations,
                },
                "spec": pod_spec(settings, image_ref, APP),
            },
        }
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=metadata,
            spec=spec,
            # replicas belong to the HPA after the first rollout
            opts=pulumi.ResourceOptions.merge(
                opts_ns,
                pulumi.ResourceOptions(
                    depends_on=[namespace, account, key_secret], ignore_changes=["spec.replicas"]
                ),
            ),
        )
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": APP, "namespace": ns, "labels": labels},
            spec={
                "type": s.service_type,
                "selector": selector,
                "ports": [{"name": "http", "port": 80, "target_port": container.SERVICE_PORT}],
            },
            opts=opts_ns,
        )
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata={"name": APP, "namespace": ns},
            spec={
                "scale_target_ref": {"api_version": "apps/v1", "kind": "Deployment", "name": APP},
                "min_replicas": s.min_replicas,
                "max_replicas": s.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {
                                "type": "Utilization",
                                "average_utilization": s.target_cpu_utilization,
                            },
                        },
                    }
                ],
            },
            opts=pulumi.ResourceOptions.merge(opts_ns, pulumi.ResourceOptions(depends_on=[deployment])),
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": APP, "namespace": ns},
            # maxUnavailable, not minAvailable: with one replica minAvailable 1 would block every
            # node drain (and so AKS auto-upgrade); one pod at a time may always be evicted.
            spec={"selector": {"match_labels": selector}, "max_unavailable": 1},
            opts=opts_ns,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny",
            metadata={"name": "default-deny", "namespace": ns},
            spec={"pod_selector": {}, "policy_types": ["Ingress", "Egress"]},
            opts=opts_ns,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-allow-model-port",
            metadata={"name": "allow-model-port", "namespace": ns},
            spec={
                "pod_selector": {"match_labels": selector},
                "policy_types": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": container.SERVICE_PORT}]}],
            },
            opts=opts_ns,
        )
        if s.service_type == "LoadBalancer":
            self.endpoint = service.status.apply(
                lambda st: f"http://{_ingress_address(st)}" if _ingress_address(st) else ""
            )
        else:
            self.endpoint = pulumi.Output.from_input(f"http://{APP}.{ns}.svc.cluster.local")
        self.register_outputs({"endpoint": self.endpoint})


def _ingress_address(status: Any) -> str | None:
    ingress = (status.load_balancer.ingress if status and status.load_balancer else None) or []
    return (ingress[0].ip or ingress[0].hostname) if ingress else None
