"""Start, wait for and stop the local server processes (``mlflow server``, ``bentoml serve``).

Shared by the test fixtures (tests/conftest.py, tests/test_service.py) and ``make demo``. Every
server binds 127.0.0.1, runs in its own process group, logs to a file, and is stopped by its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode} before it was ready")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> bool:
    """Terminate a process group we started, by id; kill it if it ignores SIGTERM for ``timeout``
    seconds. True when it had to be killed (callers may warn), False when it stopped or had already."""
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return True
    return False


def mlflow_server_command(root: Path, port: int) -> list[str]:
    """``mlflow server`` on loopback with a SQLite store and an artifact folder under ``root``."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", LOOPBACK, "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip


# MLflow 3.17 otherwise forks ~6 huey job consumers (GenAI jobs, unused here), each importing mlflow:
# most of the server's startup CPU on a small host.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextmanager
def running_mlflow_server(root: Path, port: int, *, log_path: Path, timeout: float) -> Iterator[str]:
    """A real ``mlflow server`` (``mlflow_server_command``) until the block exits; yields its URL."""
    url = f"http://{LOOPBACK}:{port}"
    with running(
        mlflow_server_command(root, port),
        ready_url=f"{url}/health",
        log_path=log_path,
        timeout=timeout,
        env=MLFLOW_SERVER_ENV,
        cwd=root,
    ):
        yield url


def bentoml_serve_command(bento: str | Path, port: int) -> list[str]:
    """``bentoml serve`` of a bento (a tag, or an exported folder as a Path) on loopback."""
    # A relative folder would be taken for a module name: pass folders absolute.
    target = str(bento.resolve()) if isinstance(bento, Path) else bento
    return [sys.executable, "-m", "bentoml", "serve", target, "--host", LOOPBACK, "--port", str(port)]


@contextmanager
def running(
    command: Sequence[str],
    *,
    ready_url: str,
    log_path: Path,
    timeout: float = 180,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (output to ``log_path``) until ``ready_url`` answers 200; stop it on exit.

    Stops the process group on any exit of the ``with`` block, including errors and Ctrl-C.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
        )
        try:
            try:
                wait_for_http(ready_url, timeout=timeout, proc=proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}; last lines of {log_path}:\n{tail(log_path)}") from exc
            yield proc
        finally:
            stop_process(proc)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
