"""Build, push and run the serving image the way the product and Kubernetes do, for the container
tests and the image benchmark.

`kubernetes_run_args` turns the runtime contract in ``model.container`` (user, read-only root with
writable emptyDir paths, env, port) plus the Deployment's securityContext (no capabilities, no
privilege escalation) into ``docker run`` flags, so a container here starts under the same
constraints as the pod. The build uses the exported build context and its Dockerfile as they are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from model.bento import BuildContext
from model.container import (
    READINESS_PATH,
    RUN_AS_GROUP,
    RUN_AS_USER,
    RUNTIME_ENV,
    SERVICE_PORT,
    WRITABLE_PATHS,
)
from tools.docker_env import DockerEngine, HarnessError, Progress, Registry, docker, docker_streamed, quiet

LOCAL_NAMESPACE = "e2e"  # the test tier tags its builds e2e/<name>:<tag>, so stale ones can be pruned
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


@dataclass(frozen=True)
class PushedImage:
    """An image in the loopback registry: ``ref`` is ``repository@sha256:...``, as a Deployment pins it."""

    repository: str
    tag: str
    digest: str
    image_id: str

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"


def local_tag(context: BuildContext, suffix: str = "") -> str:
    """The engine-local tag the test tier gives a build of ``context``."""
    return f"{LOCAL_NAMESPACE}/{context.image_name}:{context.image_tag}{suffix}"


def proxy_build_args(environ: dict[str, str]) -> list[str]:
    """``--build-arg`` flags passing the build host's proxy variables to RUN steps (Docker predefines
    these ARGs, so the Dockerfile needs no change and the values stay out of the image config)."""
    return [flag for name in PROXY_VARIABLES if name in environ for flag in ("--build-arg", name)]


def build_image(
    engine: DockerEngine,
    context_dir: Path,
    dockerfile: Path,
    tag: str,
    log_path: Path,
    *,
    environ: dict[str, str],
    no_cache: bool = False,
    progress: Progress = quiet,
) -> str:
    """``docker build`` of ``context_dir`` with ``dockerfile``; returns the image id (config digest)."""
    args = ["build", "--file", str(dockerfile), "--tag", tag, *proxy_build_args(environ)]
    if no_cache:
        args.append("--no-cache")
    progress(f"docker build {'--no-cache ' if no_cache else ''}-t {tag} (log: {log_path})")
    docker_streamed(engine, [*args, str(context_dir)], log_path, progress)
    return docker(engine, ["image", "inspect", "--format", "{{.Id}}", tag]).stdout.strip()


def push_image(
    engine: DockerEngine,
    registry: Registry,
    local_tag: str,
    repository: str,
    tag: str,
    log_path: Path,
    progress: Progress = quiet,
) -> PushedImage:
    """Tag ``local_tag`` into ``registry``, push it, and return it with the digest the engine reports."""
    remote = f"{registry.address}/{repository}"
    docker(engine, ["tag", local_tag, f"{remote}:{tag}"])
    docker_streamed(engine, ["push", f"{remote}:{tag}"], log_path, progress)
    inspected = json.loads(docker(engine, ["image", "inspect", f"{remote}:{tag}"]).stdout)[0]
    digests = [ref.split("@", 1)[1] for ref in inspected["RepoDigests"] if ref.startswith(remote + "@")]
    if not digests:
        raise HarnessError(f"pushed {remote}:{tag} but the engine recorded no digest: see {log_path}")
    return PushedImage(repository=remote, tag=tag, digest=digests[0], image_id=inspected["Id"])


def kubernetes_run_args(
    image: str, *, name: str, host_port: int, extra_args: Sequence[str] = ()
) -> list[str]:
    """``docker run`` arguments that reproduce the pod's constraints for ``image`` (``extra_args``:
    more, such as the Deployment's CPU and memory limits)."""
    args = [
        "run",
        "--detach",
        "--name",
        name,
        "--user",
        f"{RUN_AS_USER}:{RUN_AS_GROUP}",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--publish",
        f"127.0.0.1:{host_port}:{SERVICE_PORT}",
    ]
    for path in WRITABLE_PATHS:  # emptyDir volumes: empty, world-writable, executable
        args += ["--tmpfs", f"{path}:rw,exec,mode=0777"]
    for key, value in sorted(RUNTIME_ENV.items()):
        args += ["--env", f"{key}={value}"]
    return [*args, *extra_args, image]


@dataclass(frozen=True)
class RunningContainer:
    """A serving container started here; ``cold_start_s`` runs from `docker run` to the first ready probe."""

    container_id: str
    url: str
    cold_start_s: float


def container_logs(engine: DockerEngine, container_id: str) -> str:
    """The last lines the container printed, for error messages."""
    proc = docker(engine, ["logs", "--tail", "60", container_id], check=False)
    return (proc.stdout + proc.stderr)[-4000:]


def start_serving(
    engine: DockerEngine,
    image: str,
    *,
    name: str,
    host_port: int,
    timeout: float = 300,
    extra_args: Sequence[str] = (),
) -> RunningContainer:
    """Run ``image`` as Kubernetes would and wait until its readiness probe answers 200; a container
    that exits or never gets ready is removed before the error (with its last log lines) is raised."""
    url = f"http://127.0.0.1:{host_port}"
    started = time.monotonic()
    run_args = kubernetes_run_args(image, name=name, host_port=host_port, extra_args=extra_args)
    container_id = docker(engine, run_args).stdout.strip()
    try:
        _wait_ready(engine, container_id, url + READINESS_PATH, started + timeout)
    except BaseException as exc:
        logs = container_logs(engine, container_id)
        remove_container(engine, container_id)
        if isinstance(exc, HarnessError):
            raise HarnessError(f"{exc} ({image}); its last output:\n{logs}") from None
        raise
    return RunningContainer(container_id, url, time.monotonic() - started)


def _wait_ready(engine: DockerEngine, container_id: str, probe: str, deadline: float) -> None:
    checks = 0
    while time.monotonic() < deadline:
        try:
            if requests.get(probe, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        checks += 1
        if checks % 10 == 0 and not _running(engine, container_id):
            raise HarnessError(f"container {container_id[:12]} exited before it was ready")
        time.sleep(0.1)
    raise HarnessError(f"container {container_id[:12]} was not ready by the deadline")


def _running(engine: DockerEngine, container_id: str) -> bool:
    state = docker(engine, ["inspect", "--format", "{{.State.Running}}", container_id], check=False)
    return state.stdout.strip() == "true"


def remove_container(engine: DockerEngine, container_id: str) -> None:
    """Stop and delete one container we started, by id."""
    docker(engine, ["rm", "--force", container_id], check=False)


def image_size_bytes(engine: DockerEngine, ref: str) -> int:
    """Uncompressed size of the image as the engine reports it (what `docker images` shows)."""
    return int(docker(engine, ["image", "inspect", "--format", "{{.Size}}", ref]).stdout.strip())
