"""Exact pins of the packages a logged model needs, taken from the running (training) environment.

The serving image is built from the model's captured requirements, so they must name every package
of the dependency closure at the version training ran with. The roots are what
``mlflow.pyfunc.load_model`` needs for a serialised scikit-learn pipeline (``MODEL_ROOTS``) plus the
distribution that provides the spec's estimator (``lightgbm`` for ``lightgbm.LGBMClassifier``) and
the spec's ``packages``. MLflow's own inference pins only top-level packages, and
MLFLOW_LOCK_MODEL_DEPENDENCIES re-resolves against the index (network, and possibly other
versions); walking the installed distributions is exact and offline. Pure metadata reads: the Pulumi
program fingerprints these pins at program time without importing any of them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import metadata
from typing import TYPE_CHECKING

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if TYPE_CHECKING:
    from model.spec import ModelSpec

# mlflow-skinny is the same code as mlflow at the same version without the tracking server and UI.
# What the serving image installs beside the model's own packages (its closure, pinned as installed).
SERVING_ROOTS: tuple[str, ...] = ("bentoml",)
MODEL_ROOTS: tuple[str, ...] = (
    "mlflow-skinny",
    "scikit-learn",
    "skops",
    "pandas",
    "numpy",
    "scipy",
    "cloudpickle",
)


@functools.cache
def _top_level_distributions() -> dict[str, tuple[str, ...]]:
    return {name: tuple(dists) for name, dists in metadata.packages_distributions().items()}


def estimator_distribution(estimator: str) -> str | None:
    """The installed distribution whose top-level module holds ``estimator``; None for local code
    (a factory in this repository), which the training fingerprint covers by its bytes instead."""
    top = estimator.split(":", 1)[0].split(".", 1)[0]
    dists = _top_level_distributions().get(top)
    return canonicalize_name(dists[0]) if dists else None


def model_roots(spec: ModelSpec) -> tuple[str, ...]:
    """MODEL_ROOTS plus the estimator's distribution and the spec's extra ``packages``."""
    extra = [estimator_distribution(spec.estimator), *spec.packages]
    return tuple(dict.fromkeys([*MODEL_ROOTS, *(canonicalize_name(e) for e in extra if e)]))


def pinned_closure(roots: Iterable[str] = MODEL_ROOTS) -> list[str]:
    """Sorted ``name==version`` for ``roots`` and all their installed runtime dependencies."""
    env = {key: str(value) for key, value in default_environment().items()}
    seen: dict[str, str] = {}
    pending = [canonicalize_name(name) for name in roots]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            raise RuntimeError(
                f"package '{name}' is required by the model but not installed in this environment; "
                "install the locked requirements (make venv), or fix the spec's estimator/packages"
            ) from exc
        seen[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            # Extras-only dependencies are not installed by a plain `pip install name`.
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                pending.append(canonicalize_name(req.name))
    return [f"{name}=={version}" for name, version in sorted(seen.items())]
