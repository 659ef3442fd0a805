"""Exact pins of the packages a logged model needs, taken from the running (training) environment.

The serving image is built from the model's captured requirements, so they must name every package
of the dependency closure at the version training ran with (DESIGN invariant 3). MLflow's own
inference pins only top-level packages, and MLFLOW_LOCK_MODEL_DEPENDENCIES re-resolves against the
index (network, and possibly other versions); walking the installed distributions is exact and offline.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What `mlflow.pyfunc.load_model` needs for a skops-serialised sklearn pipeline. mlflow-skinny is the
# same code as mlflow at the same version without the tracking server and UI.
MODEL_ROOTS: tuple[str, ...] = (
    "mlflow-skinny",
    "scikit-learn",
    "skops",
    "pandas",
    "numpy",
    "scipy",
    "cloudpickle",
)


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
                "install the locked requirements (make venv) before training"
            ) from exc
        seen[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            # Extras-only dependencies are not installed by a plain `pip install name`.
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                pending.append(canonicalize_name(req.name))
    return [f"{name}=={version}" for name, version in sorted(seen.items())]
