"""Build the serving bento from a registered MLflow model version and export its Docker build context.

``export_build_context`` is the ONE place that makes the image build context (infra/image.py and the
container tests call it). It runs the BentoML work in a child process (``python -m model.bento``) so
that BentoML's process-wide state (model store home, the imported service module and its model tag)
never leaks between calls, and importing this module stays free of side effects and heavy imports.

The child process:
1. imports ``models:/<name>/<version>`` into the BentoML model store as ``<bento name>:<v>`` where
   ``<v>`` is the first 32 hex chars of the build identity (``model.fingerprint.build_identity``: the
   training fingerprint + the serving code + the base image), reused when already there from the same run;
2. builds the bento ``<bento name>:<v>`` (the registered name sanitised, ``model.spec.bento_name_for``)
   from ``model.service:Classifier`` or ``:Regressor`` (the task in the model's metadata), named
   after the model, with exactly the model's captured,
   ``==``-pinned requirements, plus the installed closure of BentoML for packages the model does not
   name; reused when a bento of that version was built from the same run and base image;
3. exports it as a folder (``env/docker/Dockerfile`` + ``models/``), fixes every timestamp to the MLflow
   model's creation time so the same inputs give a byte-identical folder, and checks parity between
   the model's requirements and the image's ``env/python/requirements.txt``;
4. slims the exported Dockerfile: the RUN that installs the packages also deletes the ``tests``/``test``
   folders of site-packages and any uv/pip cache (``slim_install_step``). It must be that same RUN: a
   later one cannot shrink the layer the install made, and BentoML's ``Image.run`` post-commands each
   get a RUN of their own. ``bentoml containerize`` regenerates BentoML's own Dockerfile without this
   step; the product builds from the exported folder (infra/image.py), so its image is the slim one.
   The RUN that creates the image's user runs under SOURCE_DATE_EPOCH = the model's creation time
   (``pin_user_creation_day``), so /etc/shadow does not record the build day.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from model.container import DEFAULT_BASE_IMAGE
from model.fingerprint import FINGERPRINT_RE, SERVING_SOURCES, build_identity
from model.pins import SERVING_ROOTS
from model.spec import bento_name_for

MODEL_DIR = Path(__file__).resolve().parent
REPO_ROOT = MODEL_DIR.parent
VERSION_LENGTH = 32  # hex chars of the build identity used as bento/model/image version (128 bits)
# The service class per task; the service's own modules (model.fingerprint.SERVING_SOURCES) are
# copied into the bento's src/ (model.train and friends stay out of the image).
SERVICE_IMPORTS = {
    "binary": "model.service:Classifier",
    "multiclass": "model.service:Classifier",
    "regression": "model.service:Regressor",
}
# Packages BentoML itself adds to the image requirements; not the model's, so not parity-checked.
BENTOML_PACKAGE = SERVING_ROOTS[0]

# The install step of BentoML 1.4's Dockerfile template (templates/base_v2.j2), which must end its line.
INSTALL_STEP = "uv --directory $INSTALL_ROOT pip install -r $BENTO_PATH/env/python/requirements.txt"
# Appended to INSTALL_STEP in the same RUN. Only folders named tests/test go (~105 MiB of 514 in the
# venv, measured): nothing imports them at run time, unlike numpy/testing, pandas/_testing or
# sklearn/utils/_testing, which stay. The .pyc files stay too: with a read-only root filesystem Python
# cannot write them at run time, and they make the cold start.
PRUNE_STEP = (
    " && \\\n"
    "    find /app/.venv/lib -path '*/site-packages/*' -type d \\( -name tests -o -name test \\) "
    "-prune -exec rm -rf {} + && \\\n"
    "    rm -rf /root/.cache/uv /root/.cache/pip"
)

# The RUN of BentoML 1.4's template that creates the image's user. useradd writes the day it runs into
# /etc/shadow (the password's last change), so two builds of one context on different days would
# differ in that layer; shadow's useradd takes the day from SOURCE_DATE_EPOCH, exported for this RUN
# only (set image-wide it would also switch Python's later .pyc writes to hash checking).
USER_STEP = "RUN if command -v groupadd &>/dev/null; then \\\n"

_MODEL_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)/(?P<version>[0-9]+)$")
_CREATION_TIME = re.compile(r"^(\s*creation_time:\s*).*$", re.MULTILINE)

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[bento] {message}", file=sys.stderr, flush=True)


class BentoBuildError(RuntimeError):
    """The bento or its build context could not be made; the message says which input and what to do."""


class ParityError(BentoBuildError):
    """The image would not install exactly the package versions the model was trained with."""


@dataclass(frozen=True)
class BuildContext:
    """An exported bento: ``docker build -f dockerfile path`` gives the serving image."""

    path: Path
    dockerfile: Path
    image_name: str
    image_tag: str
    requirements: dict[str, str]  # what the image installs: canonical package name -> pinned version
    bento_tag: str = ""
    model_tag: str = ""
    reused: bool = False  # the bento came from the store (same fingerprint, run and base image)
    notes: list[str] = field(default_factory=list)


# ---- pure helpers -------------------------------------------------------------------------------


def bento_version(fingerprint: str, base_image: str = DEFAULT_BASE_IMAGE) -> str:
    """The bento / BentoML model / image version: the build identity of a training fingerprint on a
    base image, shortened to a valid BentoML tag. Serving code or base image changes move it."""
    if not FINGERPRINT_RE.match(fingerprint):
        raise BentoBuildError(
            f"fingerprint {fingerprint!r} is not a sha256 hex digest (64 lowercase hex chars): "
            "pass TrainResult.fingerprint from model.train"
        )
    return build_identity(fingerprint, base_image)[:VERSION_LENGTH]


def parse_model_uri(model_uri: str) -> tuple[str, str]:
    """``models:/<name>/<version>`` -> (name, version); aliases and run URIs are refused (not pinned)."""
    match = _MODEL_URI.match(model_uri)
    if not match:
        raise BentoBuildError(
            f"model_uri {model_uri!r} must name a registered version as models:/<name>/<version> "
            "(e.g. TrainResult.model_uri); aliases and runs:/ URIs can move and are not accepted"
        )
    return match["name"], match["version"]


def parse_pinned_requirements(text: str, source: str) -> dict[str, str]:
    """``name==version`` lines (comments and blanks skipped) -> {canonical name: version}.

    Anything else (a range, an URL, an option line, a duplicate with another version) is an error
    naming ``source`` and the line: the image must install exactly what the model was trained with.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}: {raw.strip()!r}"
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise BentoBuildError(f"{where} is not a requirement ({exc}): use name==version") from exc
        if req.marker is not None and not req.marker.evaluate():
            continue
        specs = list(req.specifier)
        if req.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise BentoBuildError(
                f"{where} is not pinned to one exact version: log the model with name==version "
                "requirements (model.pins.pinned_closure does)"
            )
        name = canonicalize_name(req.name)
        if name in pins and pins[name] != specs[0].version:
            raise BentoBuildError(f"{where} pins {name} again with another version ({pins[name]})")
        pins[name] = specs[0].version
    if not pins:
        raise BentoBuildError(f"{source} lists no packages: the model was logged without requirements")
    return pins


def image_requirements(model_pins: Mapping[str, str], serving_pins: Mapping[str, str]) -> dict[str, str]:
    """The packages the image installs: every model pin, plus serving-only packages the model lacks.

    BentoML itself is left out: BentoML appends its own ``bentoml==<version>`` line.
    """
    merged = dict(model_pins)
    for name, version in serving_pins.items():
        if name not in merged and name != BENTOML_PACKAGE:
            merged[name] = version
    return dict(sorted(merged.items()))


def check_parity(model_requirements: Mapping[str, str], image_requirements: Mapping[str, str]) -> None:
    """Raise ParityError listing every model package the image lacks or installs at another version."""
    model = {canonicalize_name(k): v for k, v in model_requirements.items()}
    image = {canonicalize_name(k): v for k, v in image_requirements.items()}
    problems = [
        f"{name}: model {version}, image {image.get(name, '(missing)')}"
        for name, version in sorted(model.items())
        if image.get(name) != version
    ]
    if problems:
        raise ParityError(
            f"the serving image would not install the versions the model was trained with "
            f"({len(problems)} difference(s)): " + "; ".join(problems) + ". Rebuild the bento from the "
            "model's requirements (model.bento.export_build_context) or retrain in the current environment"
        )


def slim_install_step(dockerfile: str, source: str) -> str:
    """``dockerfile`` with PRUNE_STEP appended to BentoML's package install RUN; idempotent.

    A Dockerfile without exactly one INSTALL_STEP line is an error naming ``source``: the BentoML
    template changed, and the image would silently keep its test folders.
    """
    if INSTALL_STEP + PRUNE_STEP + "\n" in dockerfile:
        return dockerfile
    found = dockerfile.count(INSTALL_STEP + "\n")
    if found != 1:
        raise BentoBuildError(
            f"{source} has {found} lines ending in the package install step {INSTALL_STEP!r} (expected 1): "
            "BentoML's Dockerfile template changed; update INSTALL_STEP in model/bento.py to its new step"
        )
    return dockerfile.replace(INSTALL_STEP + "\n", INSTALL_STEP + PRUNE_STEP + "\n")


def pin_user_creation_day(dockerfile: str, created: datetime, source: str) -> str:
    """``dockerfile`` with USER_STEP run under ``SOURCE_DATE_EPOCH`` = ``created``; idempotent.

    A Dockerfile without exactly one USER_STEP line is an error naming ``source``: the BentoML
    template changed, and the user layer would again record the build day.
    """
    pinned = USER_STEP.replace("RUN ", f"RUN export SOURCE_DATE_EPOCH={int(created.timestamp())}; ", 1)
    if pinned in dockerfile:
        return dockerfile
    found = dockerfile.count(USER_STEP)
    if found != 1:
        raise BentoBuildError(
            f"{source} has {found} lines {USER_STEP.strip()!r} creating the image's user (expected 1): "
            "BentoML's Dockerfile template changed; update USER_STEP in model/bento.py to its new step"
        )
    return dockerfile.replace(USER_STEP, pinned)


def check_out_dir(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that export would destroy without owning it: a file, or a non-empty folder
    that is not a previous export (no ``bento.yaml``). An empty folder or a previous export is replaced.
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise BentoBuildError(
            f"out_dir {out_dir} exists and is not a folder: pass a new or empty folder for the build context"
        )
    if any(out_dir.iterdir()) and not (out_dir / "bento.yaml").is_file():
        raise BentoBuildError(
            f"out_dir {out_dir} is not empty and is not a previous export (no bento.yaml): it would be "
            "replaced; pass a new or empty folder, or a folder a previous export wrote"
        )


def remove_leftovers(out_dir: Path) -> list[Path]:
    """Delete the staging folders an interrupted export left beside ``out_dir`` (``.NAME-new-*``,
    ``.NAME-old-*``: a killed process runs no cleanup); return them. The next export starts clean."""
    if not out_dir.parent.is_dir():
        return []
    stale = sorted(
        p
        for pattern in (f".{out_dir.name}-new-*", f".{out_dir.name}-old-*")
        for p in out_dir.parent.glob(pattern)
        if p.is_dir() and not p.is_symlink()
    )
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def replace_dir(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target`` (a sibling), replacing what is there; on failure ``target``
    keeps its old content."""
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent)) / "old"
    try:
        if target.exists():
            target.rename(aside)
        try:
            new.rename(target)
        except OSError:
            if aside.exists():
                aside.rename(target)
            raise
    finally:
        shutil.rmtree(aside.parent, ignore_errors=True)


def half_copied_models(bento_dir: Path) -> list[Path]:
    """The model folders (``models/<name>/<version>``) of a stored bento that have no model.yaml."""
    return sorted(
        version
        for version in bento_dir.glob("models/*/*")
        if version.is_dir() and not (version / "model.yaml").is_file()
    )


def normalize_tree(root: Path, timestamp: datetime) -> None:
    """Pin every ``creation_time`` in bento.yaml / model.yaml files and every mtime to ``timestamp``."""
    stamp = timestamp.isoformat()
    for path in sorted(root.rglob("*.yaml")):
        if path.name in ("bento.yaml", "model.yaml"):
            text = path.read_text(encoding="utf-8")
            path.write_text(_CREATION_TIME.sub(lambda m: f"{m[1]}'{stamp}'", text), encoding="utf-8")
    epoch = timestamp.timestamp()
    for path in [root, *root.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def tree_digest(root: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of every file under ``root``, sorted: what "byte-identical" compares."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        yield path.relative_to(root).as_posix(), path.read_bytes()


# ---- the parent side: run the child, return its result --------------------------------------------


def export_build_context(
    model_uri: str,
    fingerprint: str,
    out_dir: str | Path,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    tracking_uri: str | None = None,
    bentoml_home: str | Path | None = None,
    timeout: float = 1800,
) -> BuildContext:
    """Build (or reuse) the bento for ``model_uri``; export it to ``out_dir`` (replaced); check parity.

    ``tracking_uri`` defaults to $MLFLOW_TRACKING_URI and ``bentoml_home`` to $BENTOML_HOME (or ~/bentoml).
    Progress goes to stderr. Raises BentoBuildError / ParityError with the reason.
    """
    parse_model_uri(model_uri)
    bento_version(fingerprint)
    if not base_image.strip():
        raise BentoBuildError("base_image is empty: pass an image reference such as python:3.11-slim")
    out = Path(out_dir).resolve()
    check_out_dir(out)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(REPO_ROOT)}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if bentoml_home:
        env["BENTOML_HOME"] = str(Path(bentoml_home).resolve())
    cmd = [
        sys.executable,
        "-m",
        "model.bento",
        "--model-uri",
        model_uri,
        "--fingerprint",
        fingerprint,
        "--out-dir",
        str(out),
        "--base-image",
        base_image,
    ]
    what = f"building the bento for {model_uri} into {out}"
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BentoBuildError(
            f"{what} took more than {timeout:g} s and was stopped; see the [bento] log above, "
            "then retry or pass a larger timeout"
        ) from exc
    except OSError as exc:
        raise BentoBuildError(f"{what} could not start {sys.executable}: {exc}") from exc
    lines = proc.stdout.strip().splitlines()
    try:
        payload = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        payload = {}
    if proc.returncode != 0 or "error" in payload or "path" not in payload:
        reason = payload.get("error") or f"exit code {proc.returncode}; see the [bento] log above"
        error = ParityError if payload.get("kind") == "ParityError" else BentoBuildError
        raise error(f"{what} failed: {reason}")
    return _context_from_json(payload)


def _context_from_json(payload: Mapping[str, Any]) -> BuildContext:
    return BuildContext(
        path=Path(payload["path"]),
        dockerfile=Path(payload["dockerfile"]),
        image_name=payload["image_name"],
        image_tag=payload["image_tag"],
        requirements=dict(payload["requirements"]),
        bento_tag=payload["bento_tag"],
        model_tag=payload["model_tag"],
        reused=bool(payload["reused"]),
        notes=list(payload.get("notes", [])),
    )


# ---- the child side: BentoML and MLflow work ---------------------------------------------------------


def _build_in_this_process(
    model_uri: str, fingerprint: str, out_dir: Path, base_image: str, progress: Progress = _stderr
) -> BuildContext:
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema  # envs must be this type
    from bentoml.exceptions import NotFound
    from mlflow.tracking import MlflowClient

    from model.container import MODEL_TAG_ENV
    from model.pins import pinned_closure

    name, version = parse_model_uri(model_uri)
    tag_version = bento_version(fingerprint, base_image)
    bento_name = bento_name_for(name)
    model_tag, bento_tag = f"{bento_name}:{tag_version}", f"{bento_name}:{tag_version}"
    run_id = _run_of(MlflowClient(), name, version)
    labels = {"fingerprint": fingerprint, "mlflow_model_uri": model_uri, "mlflow_run_id": run_id}
    notes: list[str] = []

    stored = _stored_or_none(bentoml.models.get, model_tag, NotFound)
    if stored is not None and stored.info.labels.get("mlflow_run_id") != run_id:
        progress(f"BentoML model {model_tag} came from another run: importing {model_uri} again")
        bentoml.models.delete(model_tag)
        stored = None
    if stored is None:
        progress(f"importing {model_uri} (run {run_id}) into the BentoML model store as {model_tag}")
        stored = bentoml.mlflow.import_model(model_tag, model_uri, labels=labels)
    else:
        notes.append(f"model {model_tag} already in the BentoML store: not downloaded again")
    mlmodel_dir = Path(stored.path_of(bentoml.mlflow.MLFLOW_MODEL_FOLDER))
    model_pins = parse_pinned_requirements(
        (mlmodel_dir / "requirements.txt").read_text(encoding="utf-8"), f"{model_uri}/requirements.txt"
    )
    created = _mlmodel_creation_time(mlmodel_dir)
    service_import = _service_import(mlmodel_dir, model_uri)

    bento_labels = {**labels, "base_image": base_image}
    bento = _stored_or_none(bentoml.bentos.get, bento_tag, NotFound)
    if bento is not None and dict(bento.info.labels) != bento_labels:
        progress(f"bento {bento_tag} was built from another run or base image: rebuilding it")
        bentoml.bentos.delete(bento_tag)
        bento = None
    if bento is not None and half_copied_models(Path(bento.path)):
        # BentoML's export copies the models into the stored bento's own folder first; an export
        # killed during that copy leaves a model folder without its model.yaml, which every later
        # export of the bento fails to load.
        progress(f"bento {bento_tag} holds a model an interrupted export left half-copied: rebuilding it")
        bentoml.bentos.delete(bento_tag)
        bento = None
    reused = bento is not None
    if bento is None:
        wanted = image_requirements(model_pins, _serving_pins(pinned_closure))
        progress(f"building bento {bento_tag} on {base_image} with {len(wanted) + 1} pinned packages")
        os.environ[MODEL_TAG_ENV] = model_tag  # read by model.service when the build imports it
        if "model.service" in sys.modules:
            raise BentoBuildError("model.service was imported before its model tag was set: a bug here")
        with tempfile.TemporaryDirectory(prefix="bento-ctx-") as ctx:
            for rel in SERVING_SOURCES:
                (Path(ctx) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO_ROOT / rel, Path(ctx) / rel)
            bento = bentoml.bentos.build(
                service_import,
                name=bento_name,
                version=tag_version,
                labels=bento_labels,
                include=list(SERVING_SOURCES),
                python={"packages": [f"{n}=={v}" for n, v in wanted.items()], "lock_packages": False},
                docker={"base_image": base_image},
                # UV_NO_CACHE: without BuildKit's cache mount uv leaves its cache (randomly named
                # folders, ~30 MB) in the image layer; the same context must give the same files.
                envs=[
                    BentoEnvSchema(name=MODEL_TAG_ENV, value=model_tag),
                    BentoEnvSchema(name="UV_NO_CACHE", value="1"),
                ],
                build_ctx=ctx,
            )
    else:
        notes.append(f"bento {bento_tag} already built from this run and base image: not rebuilt")
        progress(notes[-1])

    progress(f"exporting {bento_tag} to {out_dir}")
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_leftovers(out_dir):
        progress(f"removed {stale.name}, left by an interrupted export")
    # Export next to out_dir and move it into place only once it is complete and passed parity:
    # a failed export leaves the previous one untouched.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-new-", dir=out_dir.parent))
    try:
        bentoml.bentos.export_bento(bento_tag, str(staging) + "/", output_format="folder")
        exported = next(p.parent for p in staging.rglob("bento.yaml") if p.parent.parent == staging)
        dockerfile = exported / "env/docker/Dockerfile"
        source = f"{bento_tag}: env/docker/Dockerfile"
        text = slim_install_step(dockerfile.read_text(encoding="utf-8"), source)
        dockerfile.write_text(pin_user_creation_day(text, created, source), encoding="utf-8")
        normalize_tree(exported, created)
        image_pins = parse_pinned_requirements(
            (exported / "env/python/requirements.txt").read_text(encoding="utf-8"),
            f"bento {bento_tag}: env/python/requirements.txt",
        )
        check_parity(model_pins, image_pins)
        replace_dir(exported, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"parity ok: the image pins all {len(model_pins)} packages of the model's requirements")
    return BuildContext(
        path=out_dir,
        dockerfile=out_dir / "env/docker/Dockerfile",
        image_name=bento_name,
        image_tag=tag_version,
        requirements=image_pins,
        bento_tag=bento_tag,
        model_tag=model_tag,
        reused=reused,
        notes=notes,
    )


def _service_import(mlmodel_dir: Path, model_uri: str) -> str:
    """The service class for the model's task (its MLflow metadata, written by model.train)."""
    import yaml

    meta = yaml.safe_load((mlmodel_dir / "MLmodel").read_text(encoding="utf-8")).get("metadata") or {}
    task = meta.get("task")
    if task not in SERVICE_IMPORTS:
        raise BentoBuildError(
            f"{model_uri} has no task in its MLflow metadata (got {task!r}): train it with model.train "
            "from a model spec, which records the task"
        )
    return SERVICE_IMPORTS[str(task)]


def _run_of(client: Any, name: str, version: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        run_id = client.get_model_version(name, version).run_id
    except MlflowException as exc:
        raise BentoBuildError(
            f"cannot read models:/{name}/{version} from the tracking server {client.tracking_uri}: "
            f"{exc.message}. Check MLFLOW_TRACKING_URI and that the version is registered"
        ) from exc
    if not run_id:
        raise BentoBuildError(f"models:/{name}/{version} has no source run: register it from a run")
    return str(run_id)


def _stored_or_none(getter: Callable[[str], Any], tag: str, not_found: type[Exception]) -> Any:
    try:
        return getter(tag)
    except not_found:
        return None


def _serving_pins(closure: Callable[[Sequence[str]], list[str]]) -> dict[str, str]:
    """Installed pins of BentoML and everything it needs, from this (the build) environment."""
    return parse_pinned_requirements("\n".join(closure(SERVING_ROOTS)), "the installed BentoML closure")


def _mlmodel_creation_time(mlmodel_dir: Path) -> datetime:
    import yaml

    raw = yaml.safe_load((mlmodel_dir / "MLmodel").read_text(encoding="utf-8")).get("utc_time_created")
    if raw is None:
        raise BentoBuildError(f"{mlmodel_dir / 'MLmodel'} has no utc_time_created: not an MLflow model?")
    created = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
    return created if created.tzinfo else created.replace(tzinfo=UTC)  # MLflow writes UTC


def main(argv: Sequence[str] | None = None) -> int:
    """The child process: build + export, print the BuildContext as JSON on the last stdout line."""
    parser = argparse.ArgumentParser(prog="python -m model.bento", description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    args = parser.parse_args(argv)
    try:
        ctx = _build_in_this_process(args.model_uri, args.fingerprint, args.out_dir, args.base_image)
    except BentoBuildError as exc:
        print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        return 1
    except Exception as exc:  # anything else still reaches the parent as one JSON error line
        print(f"[bento] {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "kind": "BentoBuildError"}))
        return 1
    print(json.dumps({**asdict(ctx), "path": str(ctx.path), "dockerfile": str(ctx.dockerfile)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
