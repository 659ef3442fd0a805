"""Promotion: staging/prod deploy exactly what the source stack built, after checking it.

``promoteFrom: <org>/<project>/<stack>`` names the source. Its outputs (image ref, model version,
metrics, fingerprint, registry id, task) are read through a StackReference and validated: a missing
or malformed output, a task other than this stack's model spec's, or metrics that fail this stack's
gate (the spec's gate with this stack's overrides, over the task's metric table) stop the update
with a clear error.
No TrainedModel and no Image exist in a promoting stack: the digest is imported into this stack's own
registry (``infra.image_import``, ARM importImage keeps the digest) and deployed from there, so
this environment never pulls from another's registry at runtime.

A source that runs a rollback (it exports ``imageRefOverride``) is refused: the model behind that
digest has no lineage in its outputs, so this stack's gate cannot be applied. With this stack's own
``imageRefOverride`` set, only the source's registry id is read (to import the override's digest
from it if this registry lacks it): a rollback never depends on the source's current model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_azure_native import authorization

from infra.image_import import ImportedImage
from infra.settings import DIGEST_REF_RE
from model.fingerprint import FINGERPRINT_RE
from model.gate import Gate, evaluate_gate
from model.metric_rules import metric_names

REQUIRED_OUTPUTS = ("imageRef", "modelVersion", "metrics", "fingerprint", "registryId")
OVERRIDE_OUTPUT = "imageRefOverride"  # exported by a stack that runs a rollback
TASK_OUTPUT = "task"  # the model spec's task: which row of the metric table the metrics belong to
REGISTRY_ID_RE = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ContainerRegistry/registries/[^/]+$",
    re.IGNORECASE,
)


class PromotionError(ValueError):
    """The source stack's outputs cannot be promoted; the message names the output and the fix."""


@dataclass(frozen=True)
class PromotedModel:
    image_ref: str
    model_version: str
    metrics: dict[str, float]
    fingerprint: str
    registry_id: str


def _failure(source: str, stack: str) -> Callable[[str], PromotionError]:
    def fail(problem: str) -> PromotionError:
        return PromotionError(
            f"cannot promote from {source} into {stack}: {problem}. "
            f"Run `pulumi up` on {source} (or fix it) and try again."
        )

    return fail


def validate_registry(outputs: Mapping[str, Any], source: str, stack: str) -> str:
    """The source stack's registry id: what even a rollback needs (it may import from there)."""
    fail = _failure(source, stack)
    if outputs.get("registryId") in (None, "", {}):
        raise fail("the source stack has no output registryId")
    registry_id = str(outputs["registryId"])
    if not REGISTRY_ID_RE.match(registry_id):
        raise fail(f"output registryId {registry_id!r} is not an Azure Container Registry resource id")
    return registry_id


def validate_source(
    outputs: Mapping[str, Any],
    source: str,
    stack: str,
    gate: Gate,
) -> PromotedModel:
    """Check the source stack's outputs; a PromotionError names what is wrong and what to do."""
    fail = _failure(source, stack)
    override = outputs.get(OVERRIDE_OUTPUT)
    if override:
        raise PromotionError(
            f"cannot promote from {source} into {stack}: {source} runs a rollback "
            f"({OVERRIDE_OUTPUT}={override}), whose model lineage is unknown, so the {stack} gate cannot "
            f"be applied. To run the same digest here, `pulumi config set {OVERRIDE_OUTPUT} {override}` "
            f"on {stack}; to promote again, remove {OVERRIDE_OUTPUT} from {source} and `pulumi up` it."
        )
    missing = [key for key in REQUIRED_OUTPUTS if outputs.get(key) in (None, "", {})]
    if missing:
        raise fail(f"the source stack has no output {', '.join(missing)}")
    registry_id = validate_registry(outputs, source, stack)
    ref = str(outputs["imageRef"])
    if not DIGEST_REF_RE.match(ref):
        raise fail(f"output imageRef {ref!r} is not pinned by digest (registry/repo@sha256:<64 hex>)")
    fingerprint = str(outputs["fingerprint"])
    if not FINGERPRINT_RE.match(fingerprint):
        raise fail(f"output fingerprint {fingerprint!r} is not a sha256 hex digest")
    raw_metrics = outputs["metrics"]
    if not isinstance(raw_metrics, Mapping):
        raise fail(f"output metrics is not a mapping: {raw_metrics!r}")
    task = outputs.get(TASK_OUTPUT)
    if task not in (None, "", gate.task):
        raise fail(
            f"output {TASK_OUTPUT} is {task!r} but this stack's model spec is a {gate.task} model: set the "
            f"same modelSpec on both stacks"
        )
    metrics: dict[str, float] = {}
    bounded = {b.metric for b in gate.bounds}
    for name in metric_names(gate.task):
        value = raw_metrics.get(name)
        if value is None and name not in bounded:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise fail(f"output metrics.{name} is missing or not a number ({value!r})")
        metrics[name] = float(value)
    failures = [failure.describe() for failure in evaluate_gate(metrics, gate)]
    if failures:
        raise fail(f"its model fails the {stack} gate: {'; '.join(failures)} (gate from Pulumi.{stack}.yaml)")
    return PromotedModel(
        image_ref=ref,
        model_version=str(outputs["modelVersion"]),
        metrics=metrics,
        fingerprint=fingerprint,
        registry_id=registry_id,
    )


class Promotion(pulumi.ComponentResource):
    """Reads and validates the source stack; imports the digest into this stack's own registry.

    With ``image_ref_override`` (a rollback) the lineage outputs are None: the model is unknown, and
    the override's digest is imported from the source registry unless this registry has it already.
    ``image_ref`` is always ``<this registry>/<repo>@sha256:<the same digest>``.
    """

    image_ref: pulumi.Output[str]
    source_image_ref: pulumi.Output[str]
    model_version: pulumi.Output[str]
    metrics: pulumi.Output[dict[str, float]]
    fingerprint: pulumi.Output[str]
    source_registry_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        source: str,
        stack: str,
        gate: Gate,
        target_registry_id: pulumi.Input[str],
        target_login_server: pulumi.Input[str],
        import_grants: list[pulumi.Resource],
        image_ref_override: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("ml-delivery:infra:Promotion", name, None, opts)
        ref = pulumi.StackReference(
            f"{name}-source", stack_name=source, opts=pulumi.ResourceOptions(parent=self)
        )
        if image_ref_override is None:
            keys = (*REQUIRED_OUTPUTS, OVERRIDE_OUTPUT, TASK_OUTPUT)
            promoted = pulumi.Output.all(*(ref.get_output(key) for key in keys)).apply(
                lambda values: validate_source(dict(zip(keys, values, strict=True)), source, stack, gate)
            )
            self.source_image_ref = promoted.image_ref
            self.model_version = promoted.model_version
            self.metrics = promoted.metrics
            self.fingerprint = promoted.fingerprint
            self.source_registry_id = promoted.registry_id
        else:
            # Rollback: the source's image and model are neither read nor validated.
            registry = ref.get_output("registryId").apply(
                lambda value: validate_registry({"registryId": value}, source, stack)
            )
            unknown_lineage: pulumi.Output[Any] = pulumi.Output.from_input(None)
            self.source_image_ref = pulumi.Output.from_input(image_ref_override)
            self.model_version = unknown_lineage
            self.metrics = unknown_lineage
            self.fingerprint = unknown_lineage
            self.source_registry_id = registry
        # No ARM token here: the import obtains its own at run time, so none lands in the state.
        invoke = pulumi.InvokeOutputOptions(parent=self)
        imported = ImportedImage(
            f"{name}-import",
            source_ref=self.source_image_ref,
            source_registry_id=self.source_registry_id,
            target_registry_id=target_registry_id,
            target_login_server=target_login_server,
            tenant_id=authorization.get_client_config_output(opts=invoke).tenant_id,
            opts=pulumi.ResourceOptions(parent=self, depends_on=import_grants),
        )
        self.image_ref = imported.image_ref
        self.register_outputs({"imageRef": self.image_ref, "modelVersion": self.model_version})
