"""The release plan of one stack: build, promote or roll back, decided once from its settings.

``plan_release`` is pure: dev/local BUILD (train, build, push), staging/prod PROMOTE (import the
source stack's digest into their own registry), any stack with ``imageRefOverride`` ROLLBACK (run
that digest; a promoting stack imports it from its source's registry if its own lacks it). Only
stacks that train run MLflow (dev's MLflow is the registry of record; staging and prod run none).
``Release`` is what the chosen path produced, typed; ``lineage_outputs`` are the model lineage
stack outputs, exported only when the lineage is known.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import pulumi

from infra.settings import Settings

ROLLBACK_VERSION_LABEL = "rollback"  # the serving pods' model-version label when the lineage is unknown


class ReleaseKind(enum.Enum):
    BUILD = "build"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class ReleasePlan:
    kind: ReleaseKind
    source: str | None  # promoteFrom: the stack whose digest is promoted (or imported on rollback)
    override: str | None  # imageRefOverride: the digest a rollback runs
    runs_mlflow: bool

    @property
    def trains(self) -> bool:
        return self.kind is ReleaseKind.BUILD

    @property
    def imports(self) -> bool:
        """Whether the image comes from the source stack's registry (into this stack's own)."""
        return self.source is not None


def plan_release(settings: Settings) -> ReleasePlan:
    if settings.image_ref_override is not None:
        kind = ReleaseKind.ROLLBACK
    elif settings.promotes:
        kind = ReleaseKind.PROMOTE
    else:
        kind = ReleaseKind.BUILD
    return ReleasePlan(
        kind=kind,
        source=settings.promote_from,
        override=settings.image_ref_override,
        runs_mlflow=not settings.promotes,
    )


@dataclass
class Release:
    """What the plan produced: the digest to serve and, when known, its model lineage."""

    image_ref: pulumi.Input[str]
    model_version: pulumi.Input[str] | None = None
    lineage: dict[str, pulumi.Input[object]] = field(default_factory=dict)

    @property
    def version_label(self) -> pulumi.Input[str]:
        return self.model_version if self.model_version is not None else ROLLBACK_VERSION_LABEL

    def lineage_outputs(self) -> dict[str, pulumi.Input[object]]:
        """The model lineage stack outputs (none on a rollback: the model is unknown)."""
        outs: dict[str, pulumi.Input[object]] = {}
        if self.model_version is not None:
            outs["modelVersion"] = self.model_version
        return {**outs, **self.lineage}
