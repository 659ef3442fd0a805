"""Manifest truth: the Kubernetes objects every stack declares, rendered by tools/render_manifests.py,
are valid for the Kubernetes version the stack targets (kubernetes-validate, strict schemas), pass
checkov with no failed check beyond the reasoned skips in .checkov.yaml, carry no secret value, and
render byte-identically twice.

checkov runs from its own venv (.venv-checkov: its pins conflict with mlflow's); `make checkov-venv`
creates it, and so does this module when it is missing.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tools import render_manifests as rm

STACKS = ("dev", "staging", "prod", "local")
CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
CHECKOV_CONFIG = REPO_ROOT / ".checkov.yaml"


@functools.cache
def stack_run(stack: str) -> Any:
    from tools.stack_mocks import run_stack

    return run_stack(stack)


@functools.cache
def rendered(stack: str, root: Path) -> list[Path]:
    """Render ``stack`` under ``root`` once per session (the program run is the slow part)."""
    return rm.write_manifests(rm.manifests_of(stack_run(stack).resources), root / stack)


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("manifests")


def load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one object per file, found {len(docs)}"
    return docs[0]


# ---------------------------------------------------------------- rendering rules (no program run)


@pytest.mark.parametrize(
    ("resource_type", "expected"),
    [
        ("kubernetes:apps/v1:Deployment", ("apps/v1", "Deployment")),
        ("kubernetes:core/v1:Service", ("v1", "Service")),
        ("kubernetes:networking.k8s.io/v1:NetworkPolicy", ("networking.k8s.io/v1", "NetworkPolicy")),
        ("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", ("autoscaling/v2", "HorizontalPodAutoscaler")),
        ("kubernetes:apps/v1:DeploymentPatch", None),
        ("kubernetes:core/v1:ConfigMapList", None),
        ("pulumi:providers:kubernetes", None),
        ("kubernetes:helm.sh/v3:Release", None),
        ("azure-native:containerservice:ManagedCluster", None),
    ],
)
def test_type_tokens_map_to_api_version_and_kind(
    resource_type: str, expected: tuple[str, str] | None
) -> None:
    assert rm.api_version_and_kind(resource_type) == expected


def test_secret_values_are_redacted_and_unset_inputs_dropped() -> None:
    secret_value = {rm.SIG_KEY: rm.SECRET_SIG, "value": "hunter2-very-secret"}
    manifest = rm.to_manifest(
        "kubernetes:core/v1:Secret",
        "creds",
        {
            "metadata": {"name": "creds", "namespace": "ml"},
            "stringData": {"b": secret_value, "a": "x"},
            "type": None,
        },
        {},
    )
    assert manifest == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": "ml"},
        "stringData": {"a": rm.REDACTED, "b": rm.REDACTED},
    }


def test_auto_named_objects_take_the_output_name_or_the_resource_name() -> None:
    inputs = {"metadata": {"namespace": "ml"}, "spec": {"ports": [{"port": 80}]}}
    from_outputs = rm.to_manifest(
        "kubernetes:core/v1:Service", "svc", inputs, {"metadata": {"name": "svc-1a2b"}}
    )
    assert from_outputs is not None and from_outputs["metadata"] == {"namespace": "ml", "name": "svc-1a2b"}
    from_name = rm.to_manifest("kubernetes:core/v1:Service", "svc", inputs, {})
    assert from_name is not None and from_name["metadata"]["name"] == "svc"


def test_kubernetes_version_comes_from_the_stack_file_or_the_default(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.a.yaml").write_text("config:\n  ml-delivery:kubernetesVersion: '1.31'\n")
    (tmp_path / "Pulumi.b.yaml").write_text("config:\n  ml-delivery:mode: local\n")
    assert rm.kubernetes_version("a", tmp_path) == "1.31"
    assert rm.kubernetes_version("b", tmp_path) == rm.DEFAULT_KUBERNETES_VERSION
    with pytest.raises(FileNotFoundError, match=r"Pulumi\.c\.yaml does not exist"):
        rm.kubernetes_version("c", tmp_path)


# ---------------------------------------------------------------- every stack's objects


@pytest.mark.parametrize("stack", STACKS)
def test_stack_renders_its_workloads(stack: str, out_root: Path) -> None:
    paths = rendered(stack, out_root)
    kinds = [load(p)["kind"] for p in paths]
    assert "Deployment" in kinds and "Service" in kinds, f"{stack}: rendered only {kinds}"
    names = [
        (load(p)["kind"], load(p)["metadata"].get("namespace"), load(p)["metadata"]["name"]) for p in paths
    ]
    assert len(names) == len(set(names)), f"{stack}: two objects share kind/namespace/name: {names}"


@pytest.mark.parametrize("stack", STACKS)
def test_objects_are_valid_for_the_stack_kubernetes_version(stack: str, out_root: Path) -> None:
    version = rm.kubernetes_version(stack)
    errors = []
    for path in rendered(stack, out_root):
        try:
            kubernetes_validate.validate(load(path), version, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{path.name}: {'.'.join(map(str, err.path))}: {err.message}")
    assert not errors, f"{stack} (Kubernetes {version}):\n" + "\n".join(errors)


def pod_references(doc: Mapping[str, Any]) -> list[str]:
    """What the API server or the kubelet would refuse in a workload: mounts of undeclared volumes,
    and Secret/ConfigMap references to objects the stack does not declare (checked by the caller)."""
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    volumes = {v["name"] for v in spec.get("volumes", [])}
    problems = []
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                problems.append(
                    f"container {c['name']} mounts volume {m['name']!r}, not among {sorted(volumes)}"
                )
    return problems


@pytest.mark.parametrize("stack", STACKS)
def test_every_workload_mounts_declared_volumes_and_references_declared_objects(
    stack: str, out_root: Path
) -> None:
    # Schema validation checks each object alone; a mount of a missing volume or a secretKeyRef to a
    # Secret nobody creates passes it and fails only in the cluster.
    docs = [load(p) for p in rendered(stack, out_root)]
    declared = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}
    problems = []
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        where = f"{doc['kind']} {doc['metadata'].get('namespace')}/{doc['metadata']['name']}"
        problems += [f"{where}: {p}" for p in pod_references(doc)]
        namespace = doc["metadata"].get("namespace")
        spec = doc["spec"]["template"]["spec"]
        refs = [("Secret", v["secret"]["secretName"]) for v in spec.get("volumes", []) if "secret" in v]
        refs += [("ConfigMap", v["configMap"]["name"]) for v in spec.get("volumes", []) if "configMap" in v]
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append(("Secret", ref["name"]))
        problems += [
            f"{where}: {k} {n!r} is not declared" for k, n in refs if (k, namespace, n) not in declared
        ]
    assert not problems, f"{stack}:\n" + "\n".join(problems)


def test_the_reference_check_catches_a_mount_of_a_missing_volume() -> None:
    doc = {
        "spec": {
            "template": {
                "spec": {
                    "volumes": [{"name": "writable-0", "emptyDir": {}}],
                    "initContainers": [
                        {"name": "init", "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}
                    ],
                    "containers": [
                        {"name": "c", "volumeMounts": [{"name": "writable-0", "mountPath": "/tmp"}]}
                    ],
                }
            }
        }
    }
    assert pod_references(doc) == ["container init mounts volume 'tmp', not among ['writable-0']"]


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_value_reaches_a_manifest(stack: str, out_root: Path) -> None:
    secrets = {
        value
        for r in stack_run(stack).resources
        if r.type == "kubernetes:core/v1:Secret"
        for field in ("stringData", "data")
        for value in _strings(rm._plain((r.inputs or {}).get(field) or {}))
        if len(value) >= 8
    }
    text = "\n".join(p.read_text() for p in rendered(stack, out_root))
    leaked = sorted(s for s in secrets if s in text)
    assert not leaked, (
        f"{stack}: secret values appear in rendered manifests: {[s[:4] + '...' for s in leaked]}"
    )


def _strings(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    """Two separate runs of the program give byte-identical folders."""
    from tools.stack_mocks import run_stack

    first = {
        p.name: p.read_bytes()
        for p in rm.write_manifests(rm.manifests_of(stack_run("dev").resources), tmp_path / "a")
    }
    again = rm.manifests_of(run_stack("dev").resources)
    second = {p.name: p.read_bytes() for p in rm.write_manifests(again, tmp_path / "b")}
    assert first and first == second


# ---------------------------------------------------------------- checkov


def checkov_skips() -> dict[str, str]:
    """The skip list of .checkov.yaml: check id -> the reason written on the same line."""
    skips = {}
    for line in CHECKOV_CONFIG.read_text().splitlines():
        match = re.match(r"^\s+-\s+(CKV2?_K8S_\d+)\s*(?:#\s*(.*))?$", line)
        if match:
            skips[match[1]] = (match[2] or "").strip()
    return skips


def test_every_checkov_skip_carries_its_reason() -> None:
    config = yaml.safe_load(CHECKOV_CONFIG.read_text())
    listed = config.get("skip-check") or []
    skips = checkov_skips()
    assert sorted(listed) == sorted(skips), "write each skip as `  - CKV_K8S_N  # reason` on one line"
    short = {check: reason for check, reason in skips.items() if len(reason) < 25}
    assert not short, f"give each skip a real reason (why it does not apply here): {short}"


@pytest.fixture(scope="module")
def checkov() -> Path:
    if not CHECKOV.exists():
        subprocess.run(["make", "-s", "checkov-venv"], cwd=REPO_ROOT, check=True, timeout=1200)
    return CHECKOV


def run_checkov(checkov: Path, folder: Path, *, with_skips: bool = True) -> dict[str, Any]:
    # BC_SKIP_MAPPING / --skip-download: no call to the vendor's API (offline, loopback-only tests).
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    cmd = [
        str(checkov), "-d", str(folder), "--framework", "kubernetes", "--quiet", "--compact",
        "-o", "json", "--skip-download",
    ]  # fmt: skip
    if with_skips:
        cmd += ["--config-file", str(CHECKOV_CONFIG)]
    # checkov also reads a .checkov.yaml in its working directory: run it beside the folder.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=folder.parent)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError(f"checkov exited {proc.returncode}: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    return {
        "failed": [c for r in reports for c in r.get("results", {}).get("failed_checks", [])],
        "passed": sum(r.get("summary", {}).get("passed", 0) for r in reports),
        "parsing_errors": [e for r in reports for e in r.get("results", {}).get("parsing_errors", [])],
    }


@pytest.mark.parametrize("stack", STACKS)
def test_checkov_finds_no_failed_check(stack: str, out_root: Path, checkov: Path) -> None:
    result = run_checkov(checkov, rendered(stack, out_root)[0].parent)
    assert not result["parsing_errors"], result["parsing_errors"]
    assert result["passed"] > 0, "checkov evaluated nothing: are the manifests where it looked?"
    failures = sorted(
        f"{c['check_id']} {c['check_name']} -> {c['resource']} ({Path(c['file_path']).name})"
        for c in result["failed"]
    )
    assert not failures, f"{stack}: checkov failed checks:\n" + "\n".join(failures)


# The objects each skip of .checkov.yaml is for; any other object failing the check is a regression.
SKIP_SCOPE = {
    "CKV_K8S_35": {"Deployment.mlflow.mlflow"},
    "CKV_K8S_40": {"Deployment.model-serving.model-server"},
}


def test_skips_cover_only_the_objects_they_are_for(out_root: Path, checkov: Path) -> None:
    assert set(SKIP_SCOPE) == set(checkov_skips()), "keep SKIP_SCOPE in step with .checkov.yaml"
    for stack in ("dev", "local"):
        failed = run_checkov(checkov, rendered(stack, out_root)[0].parent, with_skips=False)["failed"]
        outside = sorted(
            f"{c['check_id']} {c['resource']}"
            for c in failed
            if c["resource"] not in SKIP_SCOPE.get(c["check_id"], ())
        )
        assert not outside, f"{stack}: skipped checks fail on objects the skip is not meant for: {outside}"


def test_checkov_harness_fails_a_weak_deployment(checkov: Path, tmp_path: Path) -> None:
    """The harness is live: a bare Deployment fails the checks our manifests must pass."""
    weak = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "weak", "namespace": "ml"},
        "spec": {
            "selector": {"matchLabels": {"app": "weak"}},
            "template": {
                "metadata": {"labels": {"app": "weak"}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/weak:latest"}]},
            },
        },
    }
    rm.write_manifests([weak], tmp_path / "weak")
    failed = {c["check_id"] for c in run_checkov(checkov, tmp_path / "weak")["failed"]}
    assert {"CKV_K8S_22", "CKV_K8S_43", "CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_20"} <= failed, failed
