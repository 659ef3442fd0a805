"""Container test harness: a Docker engine and an image registry on the local host, started on demand.

`docker_engine()` reuses an engine that already answers (``DOCKER_HOST`` or the default socket) and
otherwise starts Debian's ``dockerd`` and stops it again, by process id, when the block ends.
`local_registry()` runs Debian's ``docker-registry`` on a free 127.0.0.1 port (the engine trusts
plain HTTP on loopback), and `manifest_digest()` reads an image's digest back from it over HTTP.

Only the test harness and the benchmark use this module; the product builds with pulumi_docker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tools.processes import free_port, stop_process, wait_for_http

Progress = Callable[[str], None]

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
SYSTEM_DEPS_HINT = "run `make system-deps` (apt-get installs docker.io, docker-registry, debootstrap)"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    )
)


class HarnessError(RuntimeError):
    """A tool the container tests need is missing or did not start; the message says what to do."""


def quiet(_: str) -> None:
    """A progress callback that prints nothing."""


@dataclass(frozen=True)
class DockerEngine:
    """A Docker engine to talk to; ``pid`` is set only when this harness started it."""

    host: str
    pid: int | None = None
    log_path: Path | None = None

    def env(self) -> dict[str, str]:
        """Environment for the docker CLI: this engine, the classic builder (the Dockerfile BentoML
        writes into a bento has no BuildKit syntax, and Debian's engine ships no buildx)."""
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}


def docker_cli() -> str:
    """Path of the docker client; Debian's, matching Debian's engine, when both are installed."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise HarnessError(f"no `docker` client found: {SYSTEM_DEPS_HINT}")


def docker(
    engine: DockerEngine, args: Sequence[str], *, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one docker CLI command against ``engine`` and return its captured output."""
    proc = subprocess.run(
        [docker_cli(), *args], env=engine.env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise HarnessError(
            f"`docker {' '.join(args[:3])} ...` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return proc


def docker_streamed(engine: DockerEngine, args: Sequence[str], log_path: Path, progress: Progress) -> None:
    """Run a long docker command (build, push), writing its output to ``log_path`` and passing each
    step line (``Step 3/20 : RUN ...``) to ``progress``; raise with the log's tail on failure."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [docker_cli(), *args],
            env=engine.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.startswith("Step ") or ": Pushed" in line or "digest:" in line:
                progress(line.rstrip()[:160])
        returncode = proc.wait()
    if returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise HarnessError(f"`docker {args[0]}` exited {returncode} (full log: {log_path}):\n{tail}")


def engine_answers(host: str) -> bool:
    """True when a Docker engine answers on ``host``."""
    try:
        proc = subprocess.run(
            [docker_cli(), "version", "--format", "{{.Server.Version}}"],
            env={**os.environ, "DOCKER_HOST": host},
            capture_output=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def _wait_until(ready: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"{what} exited with {proc.returncode} before it was ready")
        if ready():
            return
        time.sleep(0.5)
    raise HarnessError(f"{what} was not ready within {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    """Stop a server we started (``stop_process``); one that had to be killed is a warning, not an
    error: this runs in fixtures' ``finally`` blocks, where raising would hide the real failure."""
    if stop_process(proc, timeout=timeout):
        warnings.warn(
            f"{what} (pid {proc.pid}) ignored SIGTERM for {timeout:.0f}s and was killed", stacklevel=2
        )


@contextmanager
def docker_engine(state_dir: Path, progress: Progress = quiet) -> Iterator[DockerEngine]:
    """A Docker engine for the block: the running one if any answers, else ``dockerd`` started here
    (data root /var/lib/docker, so images such as the base stand-in stay cached) and stopped after."""
    host = os.environ.get("DOCKER_HOST", DEFAULT_SOCKET)
    if engine_answers(host):
        progress(f"using the running Docker engine at {host}")
        yield DockerEngine(host=host)
        return
    dockerd = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None
    )
    if dockerd is None:
        raise HarnessError(
            f"no Docker engine answers at {host} and `dockerd` is not installed: {SYSTEM_DEPS_HINT}"
        )
    if os.geteuid() != 0:
        raise HarnessError(
            "starting dockerd needs root; run the e2e tier as root or start a Docker engine first"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "dockerd.log"
    progress(f"starting dockerd (log: {log_path})")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [dockerd, "--host", DEFAULT_SOCKET, "--pidfile", str(state_dir / "dockerd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until(lambda: engine_answers(DEFAULT_SOCKET), f"dockerd (log: {log_path})", 120, proc)
        yield DockerEngine(host=DEFAULT_SOCKET, pid=proc.pid, log_path=log_path)
    finally:
        progress(f"stopping dockerd (pid {proc.pid})")
        _stop(proc, "dockerd")


@dataclass(frozen=True)
class Registry:
    """An image registry on loopback: push to ``f"{address}/name:tag"``."""

    address: str
    pid: int

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def _registry_config(root: Path, address: str) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}\n"
    )


@contextmanager
def local_registry(state_dir: Path, progress: Progress = quiet) -> Iterator[Registry]:
    """Debian's ``docker-registry`` on 127.0.0.1:<free port> for the block, stopped by pid after."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise HarnessError(f"`docker-registry` is not installed: {SYSTEM_DEPS_HINT}")
    state_dir.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    config = state_dir / "registry.yml"
    config.write_text(_registry_config(state_dir / "storage", address))
    log_path = state_dir / "registry.log"
    progress(f"starting docker-registry on {address}")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        try:
            wait_for_http(f"http://{address}/v2/", timeout=60, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise HarnessError(f"docker-registry (log: {log_path}): {exc}") from exc
        yield Registry(address=address, pid=proc.pid)
    finally:
        _stop(proc, "docker-registry", timeout=20)


def manifest_digest(registry: Registry, repository: str, tag: str) -> str:
    """The digest the registry serves for ``repository:tag`` (its Docker-Content-Digest header)."""
    response = requests.head(
        f"{registry.url}/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10
    )
    if response.status_code != 200:
        raise HarnessError(
            f"registry {registry.address} has no manifest {repository}:{tag} (HTTP {response.status_code})"
        )
    return str(response.headers["Docker-Content-Digest"])


def prune_tags(engine: DockerEngine, repository: str, *, keep: str) -> list[str]:
    """Remove every ``repository:*`` tag but ``keep`` (layers still used by other images stay)."""
    listed = docker(engine, ["images", "--format", "{{.Repository}}:{{.Tag}}", repository]).stdout.split()
    stale = [ref for ref in listed if ref != keep and not ref.endswith(":<none>")]
    if stale:
        docker(engine, ["rmi", *stale], check=False)
    return stale
