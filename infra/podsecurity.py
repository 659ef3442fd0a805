"""Restricted pod and container security settings shared by every workload this program runs.

Pure functions returning pulumi_kubernetes input dicts (snake_case keys), so both the MLflow and
the model Deployments get the same posture: non-root, read-only root filesystem, no privilege
escalation, all capabilities dropped, the runtime's default seccomp profile.
"""

from __future__ import annotations

from typing import Any


def pod_security_context(uid: int, gid: int) -> dict[str, Any]:
    return {
        "run_as_non_root": True,
        "run_as_user": uid,
        "run_as_group": gid,
        "fs_group": gid,
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "read_only_root_filesystem": True,
        "allow_privilege_escalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def empty_dir_volumes(
    paths: tuple[str, ...], prefix: str = "writable"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volume_mounts) giving each path its own emptyDir, for a read-only root filesystem."""
    volumes = [{"name": f"{prefix}-{i}", "empty_dir": {"size_limit": "256Mi"}} for i in range(len(paths))]
    mounts = [{"name": f"{prefix}-{i}", "mount_path": path} for i, path in enumerate(paths)]
    return volumes, mounts


def secret_env(name: str, secret_name: Any, key: str) -> dict[str, Any]:
    """An env var read from a Secret key (never a plain value)."""
    return {"name": name, "value_from": {"secret_key_ref": {"name": secret_name, "key": key}}}
