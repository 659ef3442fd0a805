"""Fixtures of the container tier: a Docker engine, a loopback registry, the base-image stand-in,
a model trained in a real MLflow server from a shipped non-default spec (examples/wine), the image
built from ``model.bento.export_build_context`` (the build context infra/image.py hands to
pulumi_docker.Image), pushed, and run as Kubernetes would.

Everything is session-scoped and built once; whatever the session started (dockerd, the registry,
containers) is stopped by id at the end. Images stay in the engine so the next run is faster.
Progress of the long steps is printed live, past pytest's output capture.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model.bento import BuildContext, export_build_context
from model.spec import ModelSpec, load_spec
from model.train import TrainConfig, TrainResult, train_and_register
from tests.conftest import EXAMPLE_SPECS, REPO_ROOT, free_port
from tools.base_image import ensure_standin
from tools.bench_image import LAST_E2E_IMAGE
from tools.container_run import (
    LOCAL_NAMESPACE,
    PushedImage,
    RunningContainer,
    build_image,
    image_size_bytes,
    local_tag,
    push_image,
    remove_container,
    start_serving,
)
from tools.docker_env import DockerEngine, Registry, docker, docker_engine, local_registry, prune_tags

Progress = Callable[[str], None]
E2E_EXPERIMENT = "e2e-container"
E2E_SPEC = EXAMPLE_SPECS["wine"]


@pytest.fixture(scope="session")
def progress(pytestconfig: pytest.Config) -> Progress:
    """Print a line to the terminal now, even while pytest captures output."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def emit(message: str) -> None:
        with capture.global_and_fixture_disabled():
            sys.stderr.write(f"\n[e2e] {message}")
            sys.stderr.flush()

    return emit


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def engine(e2e_dir: Path, progress: Progress) -> Iterator[DockerEngine]:
    with docker_engine(e2e_dir / "dockerd", progress) as running:
        yield running


@pytest.fixture(scope="session")
def registry(e2e_dir: Path, progress: Progress) -> Iterator[Registry]:
    with local_registry(e2e_dir / "registry", progress) as running:
        yield running


@pytest.fixture(scope="session")
def base_image(engine: DockerEngine, e2e_dir: Path, progress: Progress) -> str:
    return ensure_standin(engine, e2e_dir / "standin", progress)


@pytest.fixture(scope="session")
def e2e_spec() -> ModelSpec:
    """A non-default example (multiclass, a random forest): the image is built for whatever spec."""
    return load_spec(E2E_SPEC)


@pytest.fixture(scope="session")
def trained(mlflow_server: str, progress: Progress, e2e_spec: ModelSpec) -> TrainResult:
    progress(f"training {e2e_spec.name} ({E2E_SPEC.relative_to(REPO_ROOT)}) in the real MLflow server")
    config = TrainConfig(spec=e2e_spec, tracking_uri=mlflow_server, experiment_name=E2E_EXPERIMENT)
    result = train_and_register(config, progress=lambda message: None)
    progress(f"trained {result.model_uri} (fingerprint {result.fingerprint[:12]})")
    return result


@pytest.fixture(scope="session")
def bentoml_home(e2e_dir: Path) -> Path:
    return e2e_dir / "bentoml"


@pytest.fixture(scope="session")
def make_context(
    trained: TrainResult, mlflow_server: str, base_image: str, bentoml_home: Path, e2e_dir: Path
) -> Callable[[str], BuildContext]:
    """Export the build context for the trained model into ``e2e_dir/<name>`` (the product's one path)."""

    def make(name: str) -> BuildContext:
        return export_build_context(
            trained.model_uri,
            trained.fingerprint,
            e2e_dir / name,
            base_image=base_image,
            tracking_uri=mlflow_server,
            bentoml_home=bentoml_home,
        )

    return make


@pytest.fixture(scope="session")
def build_context(make_context: Callable[[str], BuildContext], progress: Progress) -> BuildContext:
    progress("exporting the build context (model.bento.export_build_context)")
    return make_context("context")


@pytest.fixture(scope="session")
def built_image_id(
    engine: DockerEngine, build_context: BuildContext, e2e_dir: Path, progress: Progress
) -> str:
    """Image id (config digest) of the first build of the context; the engine's layer cache is used."""
    tag = local_tag(build_context)
    stale = prune_tags(engine, f"{LOCAL_NAMESPACE}/{build_context.image_name}", keep=tag)
    if stale:
        progress(f"removed {len(stale)} image tag(s) of earlier fingerprints: {', '.join(stale)}")
    return build_image(
        engine,
        build_context.path,
        build_context.dockerfile,
        tag,
        e2e_dir / "build-1.log",
        environ=dict(os.environ),
        progress=progress,
    )


@pytest.fixture(scope="session")
def pushed(
    engine: DockerEngine,
    registry: Registry,
    build_context: BuildContext,
    built_image_id: str,
    e2e_dir: Path,
    progress: Progress,
) -> Iterator[PushedImage]:
    image = push_image(
        engine,
        registry,
        local_tag(build_context),
        build_context.image_name,
        build_context.image_tag,
        e2e_dir / "push.log",
        progress,
    )
    size_mb = image_size_bytes(engine, image.ref) / 1e6
    progress(f"pushed {image.ref} ({size_mb:.0f} MB; target <= 600 MB)")
    # For `python -m tools.bench_image` (the registry is gone after the session; the local tag stays).
    LAST_E2E_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    LAST_E2E_IMAGE.write_text(json.dumps({"local_tag": local_tag(build_context), "digest": image.digest}))
    try:
        yield image
    finally:  # the registry stops with the session: drop the engine's names for it
        docker(engine, ["rmi", f"{image.repository}:{image.tag}", image.ref], check=False)


@pytest.fixture(scope="session")
def serving(engine: DockerEngine, pushed: PushedImage, progress: Progress) -> Iterator[RunningContainer]:
    """The pushed image, run by digest under the pod's constraints, ready to serve."""
    progress(f"starting {pushed.ref} as the Deployment would (read-only, uid 1034, no capabilities)")
    container = start_serving(engine, pushed.ref, name=f"e2e-serving-{os.getpid()}", host_port=free_port())
    progress(f"container ready: cold start {container.cold_start_s:.2f} s (target <= 5 s)")
    try:
        yield container
    finally:
        remove_container(engine, container.container_id)
