"""Container-tier faults and posture (docs/reliability.md), on the real engine and registry of the
e2e fixtures (tests/e2e/conftest.py).

- The registry is down when the image is pushed: the push fails, the error names the registry and
  the refused connection, and the engine records no digest for it (nothing a deployment could use).
- The image build is interrupted: no tag exists for the killed build (no stale reference to pick
  up), and the next build of the same context gives an image with the same content as the session's build.
- The running serving container cannot write to its root filesystem and runs as the image's
  non-root user (the inspect-level checks are in test_image.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from model.bento import BuildContext
from model.container import RUN_AS_USER
from tests.reliability.conftest import record
from tools.container_run import (
    RunningContainer,
    build_image,
    local_tag,
    proxy_build_args,
    push_image,
)
from tools.docker_env import DockerEngine, HarnessError, docker, docker_cli, local_registry
from tools.image_diff import compare_images

pytestmark = pytest.mark.e2e


def test_a_push_to_a_registry_that_is_down_fails_naming_it_and_records_no_digest(
    engine: DockerEngine,
    build_context: BuildContext,
    built_image_id: str,
    e2e_dir: Path,
    progress: Callable[[str], None],
) -> None:
    with local_registry(e2e_dir / "down-registry") as stopped:
        pass  # started and stopped: its address now refuses connections
    with pytest.raises(HarnessError) as caught:
        push_image(
            engine,
            stopped,
            local_tag(build_context),
            build_context.image_name,
            build_context.image_tag,
            e2e_dir / "push-down.log",
            progress,
        )
    message = str(caught.value)
    assert stopped.address in message and "connection refused" in message.lower(), message
    inspected = json.loads(docker(engine, ["image", "inspect", built_image_id]).stdout)[0]
    assert not [d for d in inspected["RepoDigests"] if d.startswith(stopped.address)]
    docker(
        engine,
        ["rmi", f"{stopped.address}/{build_context.image_name}:{build_context.image_tag}"],
        check=False,
    )
    record("fault-registry-down", {"told": message.strip().splitlines()[-1][:300]})


def test_an_interrupted_image_build_leaves_no_tag_and_the_rebuild_has_the_same_content(
    engine: DockerEngine, build_context: BuildContext, built_image_id: str, e2e_dir: Path
) -> None:
    tag = f"{local_tag(build_context)}-interrupted"
    docker(engine, ["rmi", tag], check=False)
    command = [
        docker_cli(), "build", "--no-cache", "--file", str(build_context.dockerfile), "--tag", tag,
        *proxy_build_args(dict(os.environ)), str(build_context.path),
    ]  # fmt: skip
    build = subprocess.Popen(
        command,
        env=engine.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert build.stdout is not None
    seen = []
    for line in build.stdout:  # kill the build once it runs its first RUN step
        seen.append(line)
        if line.startswith("Step ") and " : RUN " in line:
            break
    os.killpg(build.pid, signal.SIGKILL)
    build.wait(timeout=60)
    assert any(" : RUN " in line for line in seen), "the build ended before it was interrupted:\n" + "".join(
        seen
    )
    assert docker(engine, ["image", "inspect", tag], check=False).returncode != 0, (
        "the killed build left a tag"
    )
    rebuilt = build_image(
        engine,
        build_context.path,
        build_context.dockerfile,
        tag,
        e2e_dir / "build-after-kill.log",
        environ=dict(os.environ),
    )
    try:
        assert docker(engine, ["image", "inspect", "--format", "{{.Id}}", tag]).stdout.strip() == rebuilt
        # Build times differ between builds (test_image.py explains); the content must not.
        config_diffs, layers = compare_images(engine, built_image_id, rebuilt, e2e_dir / "compare-after-kill")
    finally:
        docker(engine, ["rmi", tag], check=False)
    assert config_diffs == [], f"the rebuilt image's config differs beyond build times: {config_diffs}"
    assert not [layer for layer in layers if layer.verdict == "content differs"]
    record("fault-build-interrupted", {"killed_after_steps": sum(line.startswith("Step ") for line in seen)})


@pytest.mark.parametrize("path", ["/", "/usr/local/lib", "/home"])
def test_the_serving_container_cannot_write_its_root_filesystem(
    serving: RunningContainer, engine: DockerEngine, path: str
) -> None:
    probe = f"{path.rstrip('/')}/.write-probe"
    done = docker(engine, ["exec", serving.container_id, "sh", "-c", f"id -u; touch {probe}"], check=False)
    assert done.stdout.strip().splitlines()[0] == str(RUN_AS_USER)
    assert done.returncode != 0, f"wrote {probe} inside the container"
    assert "read-only file system" in done.stderr.lower(), done.stderr
