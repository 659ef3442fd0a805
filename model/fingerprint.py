"""Two fingerprints, each with one job.

- The **training fingerprint** (``training_fingerprint``) decides retraining. It covers the data
  file's bytes, the spec's training identity (``ModelSpec.training_identity``: task, target,
  features, classes, estimator, params, preprocessing, split, data rule), the training code (every
  ``*.py`` under model/ except the serving-only modules (``SHARED_SOURCES`` count for both), plus a
  local estimator factory's package: every ``*.py`` in the factory module's folder, so a helper it
  imports from there counts too) and the
  exact pins of the packages the model needs (``model.pins``). A change in serving code, a Pulumi
  package, the requirements lock's other entries or the docs does not move it.
- The **build identity** (``build_identity``) decides rebuilding: the training fingerprint, the
  serving code (``SERVING_SOURCES``), the pins of the serving packages the bento installs beside
  the model's (BentoML's closure) and the base image. Its first 32 hex chars are the bento,
  BentoML model and image version.

Each part is length-prefixed and labelled so that bytes cannot slide from one part into the next.
Pure: reads files and installed-package metadata, imports nothing heavy, writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.spec import ModelSpec

MODEL_DIR = Path(__file__).resolve().parent
REPO_ROOT = MODEL_DIR.parent
# What both fingerprints return: a lowercase sha256 hex digest.
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
# The modules the serving image runs (copied into the bento) and the one that builds it: the build
# identity covers them, the training fingerprint does not.
SERVING_SOURCES: tuple[str, ...] = (
    "model/__init__.py",
    "model/accept_balance.py",
    "model/api_callers.py",
    "model/column_path.py",
    "model/container.py",
    "model/feedback.py",
    "model/kernels.py",
    "model/monitoring.py",
    "model/predictor.py",
    "model/profile.py",
    "model/refusals.py",
    "model/request_guard.py",
    "model/service.py",
    "model/validation.py",
)
BUILD_SOURCES: tuple[str, ...] = (*SERVING_SOURCES, "model/bento.py")
# Serving modules that training runs too (model.train writes the reference profile): both cover them.
SHARED_SOURCES: tuple[str, ...] = ("model/__init__.py", "model/profile.py")


def canonical_json(value: Mapping[str, object]) -> str:
    """Key-sorted, whitespace-free JSON; a value JSON cannot hold raises TypeError/ValueError."""
    try:
        return json.dumps(
            dict(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"training inputs must be JSON-serialisable finite values: {exc}") from exc


def training_code_files(code_dir: Path = MODEL_DIR) -> list[tuple[str, bytes]]:
    """``(relative posix path, bytes)`` of every ``*.py`` under ``code_dir`` but the serving-only
    modules, sorted by path."""
    serving_only = {Path(rel).name for rel in BUILD_SOURCES} - {Path(rel).name for rel in SHARED_SOURCES}
    files = [
        (p.relative_to(code_dir).as_posix(), p)
        for p in code_dir.rglob("*.py")
        if p.is_file() and p.relative_to(code_dir).as_posix() not in serving_only
    ]
    return [(rel, p.read_bytes()) for rel, p in sorted(files)]


def local_estimator_file(estimator: str, root: Path = REPO_ROOT) -> Path | None:
    """The file of a ``package.module:factory`` (or class) that lives in this repository, if any."""
    module = estimator.split(":", 1)[0] if ":" in estimator else estimator.rsplit(".", 1)[0]
    candidate = root.joinpath(*module.split(".")).with_suffix(".py")
    return candidate if candidate.is_file() else None


def local_estimator_sources(estimator: str, root: Path = REPO_ROOT) -> list[Path]:
    """The local factory's code: every ``*.py`` in its module's folder (recursively), or only the
    file itself when it sits at ``root`` (the repository's other code is not the model's)."""
    factory = local_estimator_file(estimator, root)
    if factory is None:
        return []
    if factory.parent == root:
        return [factory]
    return sorted(p for p in factory.parent.rglob("*.py") if p.is_file() and "__pycache__" not in p.parts)


class _Digest:
    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def part(self, label: str, payload: bytes) -> None:
        self._sha.update(f"{label}\0{len(payload)}\0".encode())
        self._sha.update(payload)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def training_fingerprint(
    spec: ModelSpec,
    *,
    code_dir: str | Path = MODEL_DIR,
    packages: Sequence[str] | None = None,
    closure: Callable[[Sequence[str]], list[str]] | None = None,
    root: Path = REPO_ROOT,
) -> str:
    """sha256 hex of data bytes + spec training identity + training code + the model's package pins.

    ``packages``: the pins to cover (default: ``model.pins.pinned_closure(model_roots(spec))``).
    """
    from model.pins import model_roots, pinned_closure

    code_dir = Path(code_dir)
    if not spec.data.is_file():
        raise FileNotFoundError(
            f"fingerprint: data file {spec.data} (key 'data' of {spec.path}) does not exist"
        )
    if not code_dir.is_dir():
        raise NotADirectoryError(f"fingerprint: code directory {code_dir} does not exist")
    if packages is None:
        packages = (closure or pinned_closure)(model_roots(spec))
    digest = _Digest()
    digest.part("data", spec.data.read_bytes())
    digest.part("spec", canonical_json(spec.training_identity()).encode())
    for rel, payload in training_code_files(code_dir):
        digest.part(f"code:{rel}", payload)
    for source in local_estimator_sources(spec.estimator, root):
        digest.part(f"estimator:{source.relative_to(root).as_posix()}", source.read_bytes())
    digest.part("packages", "\n".join(sorted(packages)).encode())
    return digest.hexdigest()


def build_identity(
    fingerprint: str,
    base_image: str,
    *,
    root: Path = REPO_ROOT,
    serving_packages: Sequence[str] | None = None,
) -> str:
    """sha256 hex of the training fingerprint + the serving code + the serving packages' pins + the
    base image reference. ``serving_packages``: default ``pinned_closure(SERVING_ROOTS)``, the pins
    the bento installs for what the model does not name."""
    from model.pins import SERVING_ROOTS, pinned_closure

    if not FINGERPRINT_RE.match(fingerprint):
        raise ValueError(f"build identity: {fingerprint!r} is not a training fingerprint (64 hex chars)")
    if serving_packages is None:
        serving_packages = pinned_closure(SERVING_ROOTS)
    digest = _Digest()
    digest.part("training", fingerprint.encode())
    for rel in BUILD_SOURCES:
        digest.part(f"serving:{rel}", (root / rel).read_bytes())
    digest.part("serving_packages", "\n".join(sorted(serving_packages)).encode())
    digest.part("base_image", base_image.encode())
    return digest.hexdigest()
