"""Render every Kubernetes object a stack declares to YAML: ``make manifests`` -> manifests/<stack>/.

The program runs under the stack mocks (tools.stack_mocks.run_stack, no cluster, no cloud); each
recorded ``kubernetes:<group>/<version>:<Kind>`` registration becomes one manifest file holding the
inputs the provider would send to the API server. Secret values are redacted (invariant 7: no
plaintext secret in manifests). The files feed kubernetes-validate and checkov (tests/test_manifests.py).

    python -m tools.render_manifests dev staging prod local
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "manifests"
# Used when a stack does not pin kubernetesVersion; a version kubernetes-validate ships schemas for.
DEFAULT_KUBERNETES_VERSION = "1.33"
REDACTED = "REDACTED"
# The Pulumi wire marker of a secret value ({sig: ..., value: ...}) as mocks may record it.
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"

_TYPE_RE = re.compile(r"^kubernetes:(?P<group>[a-z0-9.]+)/(?P<version>v[0-9a-z]+):(?P<kind>[A-Za-z]+)$")
# Kinds that patch or list other objects, and groups of Pulumi components (Helm, YAML, Kustomize)
# that are not API objects themselves.
_NOT_OBJECTS = re.compile(r"(Patch|List)$")
_COMPONENT_GROUPS = frozenset({"helm.sh", "yaml", "kustomize"})


def api_version_and_kind(resource_type: str) -> tuple[str, str] | None:
    """``("apps/v1", "Deployment")`` for ``kubernetes:apps/v1:Deployment``; None for non-objects."""
    match = _TYPE_RE.match(resource_type)
    if not match or _NOT_OBJECTS.search(match["kind"]) or match["group"] in _COMPONENT_GROUPS:
        return None
    group = match["group"]
    api_version = match["version"] if group == "core" else f"{group}/{match['version']}"
    return api_version, match["kind"]


def _plain(value: Any) -> Any:
    """Inputs as plain YAML data: secrets unwrapped, None (an unset input) dropped, and integral
    floats back to ints (the wire format has only doubles: replicas 1 arrives as 1.0)."""
    if isinstance(value, Mapping):
        if value.get(SIG_KEY) == SECRET_SIG:
            return _plain(value.get("value"))
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value if v is not None]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _redact_secret(manifest: dict[str, Any]) -> dict[str, Any]:
    redacted_b64 = base64.b64encode(REDACTED.encode()).decode()
    for field, placeholder in (("data", redacted_b64), ("stringData", REDACTED)):
        if isinstance(manifest.get(field), Mapping):
            manifest[field] = dict.fromkeys(sorted(manifest[field]), placeholder)
    return manifest


def to_manifest(
    resource_type: str, name: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]
) -> dict | None:
    """The Kubernetes object a registration declares, or None if the type is not a plain object."""
    parsed = api_version_and_kind(resource_type)
    if parsed is None:
        return None
    api_version, kind = parsed
    body = _plain(inputs)
    metadata = dict(body.get("metadata") or {})
    if not metadata.get("name"):
        # Pulumi auto-names it <name>-<random suffix>; the mocks may echo a name in the outputs.
        metadata["name"] = (_plain(outputs).get("metadata") or {}).get("name") or name
    manifest = {"apiVersion": api_version, "kind": kind, **body, "metadata": metadata}
    manifest["apiVersion"], manifest["kind"] = api_version, kind
    return _redact_secret(manifest) if kind == "Secret" else manifest


def file_name(manifest: Mapping[str, Any]) -> str:
    """``<kind>-<namespace>-<name>.yaml``: stable across runs, unique per object."""
    meta = manifest["metadata"]
    parts = [manifest["kind"].lower(), meta.get("namespace") or "", meta["name"]]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(p for p in parts if p)) + ".yaml"


def write_manifests(manifests: Iterable[Mapping[str, Any]], folder: Path) -> list[Path]:
    """Replace ``folder``'s content with one YAML file per object (keys sorted: byte-stable output)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    paths = []
    for manifest in manifests:
        path = folder / file_name(manifest)
        if path.exists():
            raise ValueError(f"two objects render to {path.name}: kind/namespace/name must be unique")
        path.write_text(yaml.safe_dump(dict(manifest), sort_keys=True, default_flow_style=False))
        paths.append(path)
    return sorted(paths)


def kubernetes_version(stack: str, root: Path = REPO_ROOT) -> str:
    """The Kubernetes version a stack targets: its ``kubernetesVersion`` config, else the default."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: create the stack file or pick one of the stacks present"
        )
    config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    for key, value in config.items():
        if key.split(":", 1)[-1] == "kubernetesVersion" and value:
            return str(value)
    return DEFAULT_KUBERNETES_VERSION


def manifests_of(resources: Iterable[Any]) -> list[dict[str, Any]]:
    """The Kubernetes objects among recorded registrations (``StackRun.resources``), in order."""
    manifests = []
    for resource in resources:
        manifest = to_manifest(resource.type, resource.name, resource.inputs or {}, resource.outputs or {})
        if manifest is not None:
            manifests.append(manifest)
    return manifests


def render_stack(stack: str, out_root: Path = DEFAULT_OUT) -> list[Path]:
    """Run the stack under mocks and write its Kubernetes objects to ``out_root/stack``."""
    from tools.stack_mocks import run_stack  # imports the whole program: load on use

    return write_manifests(manifests_of(run_stack(stack).resources), out_root / stack)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("stacks", nargs="+", help="stack names (Pulumi.<stack>.yaml)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: manifests/)")
    options = parser.parse_args(argv)
    for stack in options.stacks:
        print(f"==> {stack}: running the program under mocks", flush=True)
        paths = render_stack(stack, options.out)
        print(f"    {len(paths)} objects -> {options.out / stack} (Kubernetes {kubernetes_version(stack)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
