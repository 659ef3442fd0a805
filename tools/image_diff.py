"""Explain why two builds of one build context have different image digests, layer by layer.

Docker's classic builder stamps each build with the time: the image config carries ``created``
dates, and every file a RUN step writes gets the current mtime (and a timestamp-based .pyc records
its source's mtime), so each layer's diff_id differs. `compare_images` reads both images with
``docker save`` and says, for each layer, whether it is identical, differs only in such timestamps,
or differs in content (which would break "same fingerprint -> same image").
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tools.docker_env import DockerEngine, HarnessError, docker_cli

# Fields of the image config that hold build times; everything else must match.
TIME_FIELDS = ("created",)
PYC_MAGIC_LEN = 4


@dataclass(frozen=True)
class Entry:
    """One file of a layer, without its mtime."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    link: str
    content: str  # sha256 of the bytes (a timestamp-based .pyc with its mtime field zeroed)


@dataclass
class LayerReport:
    """How layer ``index`` (its Dockerfile step in ``created_by``) of two images compares."""

    index: int
    created_by: str
    verdict: str  # "identical" | "timestamps only" | "content differs"
    differing_paths: list[str] = field(default_factory=list)
    mtime_only_paths: int = 0
    pyc_timestamp_only: int = 0


def _pyc_normalised(data: bytes) -> tuple[bytes, bool]:
    """A .pyc's bytes with the source-mtime field zeroed when it is timestamp-based (PEP 552 flags 0)."""
    if len(data) >= 16 and int.from_bytes(data[4:8], "little") == 0:
        return data[:8] + b"\0\0\0\0" + data[12:], True
    return data, False


def layer_entries(stream: IO[bytes]) -> tuple[dict[str, Entry], dict[str, float], set[str]]:
    """(path -> Entry, path -> mtime, paths of timestamp-based .pyc files) of one layer tar, streamed."""
    entries: dict[str, Entry] = {}
    mtimes: dict[str, float] = {}
    pycs: set[str] = set()
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            digest = ""
            if member.isfile():
                extracted = tar.extractfile(member)
                data = extracted.read() if extracted else b""
                if member.name.endswith(".pyc"):
                    data, normalised = _pyc_normalised(data)
                    if normalised:
                        pycs.add(member.name)
                digest = hashlib.sha256(data).hexdigest()
            kind = "hardlink" if member.islnk() else "symlink" if member.issym() else str(member.type)
            entries[member.name] = Entry(
                kind, member.mode, member.uid, member.gid, member.size, member.linkname, digest
            )
            mtimes[member.name] = member.mtime
    return entries, mtimes, pycs


def _saved(engine: DockerEngine, ref: str, out: Path) -> tuple[dict[str, Any], list[str]]:
    """(config, names of the layer tars in order) of ``ref`` saved to ``out`` (v1.2 archive layout)."""
    with out.open("wb") as handle:
        proc = subprocess.run(
            [docker_cli(), "save", ref], stdout=handle, stderr=subprocess.PIPE, env=engine.env(), check=False
        )
    if proc.returncode != 0:
        raise HarnessError(f"`docker save {ref}` failed: {proc.stderr.decode(errors='replace')}")
    with tarfile.open(out) as archive:

        def read(name: str) -> bytes:
            member = archive.extractfile(name)
            if member is None:
                raise HarnessError(f"{name} missing from `docker save {ref}`")
            return member.read()

        manifest = json.loads(read("manifest.json"))[0]
        config = json.loads(read(manifest["Config"]))
    return config, list(manifest["Layers"])


def config_without_times(config: dict[str, Any]) -> dict[str, Any]:
    """The image config minus build times and the layer digests (compared layer by layer instead)."""
    stripped = {k: v for k, v in config.items() if k not in (*TIME_FIELDS, "rootfs")}
    stripped["history"] = [
        {k: v for k, v in step.items() if k not in TIME_FIELDS} for step in config.get("history", [])
    ]
    # config.Image is the id of the previous build step's image, itself a product of the build times.
    stripped["config"] = {k: v for k, v in config.get("config", {}).items() if k != "Image"}
    stripped.pop("container", None)  # id of the throw-away build container of the last step
    stripped.pop("container_config", None)  # same config, but names that container's hostname
    return stripped


def compare_images(
    engine: DockerEngine, ref_a: str, ref_b: str, work_dir: Path
) -> tuple[list[str], list[LayerReport]]:
    """(differences in the config other than times, one report per layer) of two images."""
    work_dir.mkdir(parents=True, exist_ok=True)
    archive_a, archive_b = work_dir / "a.tar", work_dir / "b.tar"
    config_a, layers_a = _saved(engine, ref_a, archive_a)
    config_b, layers_b = _saved(engine, ref_b, archive_b)
    stripped_a, stripped_b = config_without_times(config_a), config_without_times(config_b)
    config_diffs = [
        key for key in sorted(set(stripped_a) | set(stripped_b)) if stripped_a.get(key) != stripped_b.get(key)
    ]
    if len(layers_a) != len(layers_b):
        config_diffs.append(f"layer count {len(layers_a)} != {len(layers_b)}")
        return config_diffs, []
    steps = [
        step.get("created_by", "") for step in config_a.get("history", []) if not step.get("empty_layer")
    ]
    diff_ids_a, diff_ids_b = config_a["rootfs"]["diff_ids"], config_b["rootfs"]["diff_ids"]
    reports = []
    with tarfile.open(archive_a) as tar_a, tarfile.open(archive_b) as tar_b:
        for index, (name_a, name_b) in enumerate(zip(layers_a, layers_b, strict=True)):
            step = steps[index] if index < len(steps) else "?"
            if diff_ids_a[index] == diff_ids_b[index]:
                reports.append(LayerReport(index, step, "identical"))
            else:
                reports.append(_compare_layer(index, step, _member(tar_a, name_a), _member(tar_b, name_b)))
    archive_a.unlink()
    archive_b.unlink()
    return config_diffs, reports


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    stream = archive.extractfile(name)
    if stream is None:
        raise HarnessError(f"layer {name} missing from a `docker save` archive")
    return stream


def _compare_layer(index: int, step: str, stream_a: IO[bytes], stream_b: IO[bytes]) -> LayerReport:
    entries_a, mtimes_a, pycs = layer_entries(stream_a)
    entries_b, mtimes_b, _ = layer_entries(stream_b)
    differing = sorted(p for p in set(entries_a) | set(entries_b) if entries_a.get(p) != entries_b.get(p))
    mtime_only = sum(1 for p in entries_a if p in entries_b and mtimes_a[p] != mtimes_b[p])
    verdict = "content differs" if differing else "timestamps only"
    return LayerReport(index, step, verdict, differing[:50], mtime_only, len(pycs))


def describe(config_diffs: list[str], reports: list[LayerReport]) -> str:
    """A human summary of `compare_images`, one line per layer."""
    lines = [f"config fields differing beyond build times: {config_diffs or 'none'}"]
    for report in reports:
        detail = ""
        if report.verdict == "timestamps only":
            detail = (
                f" ({report.mtime_only_paths} file mtimes, {report.pyc_timestamp_only} timestamp-based .pyc)"
            )
        elif report.verdict == "content differs":
            detail = f": {report.differing_paths[:8]}"
        lines.append(f"  layer {report.index:2d} {report.verdict}{detail} <- {report.created_by[:90]}")
    return "\n".join(lines)
