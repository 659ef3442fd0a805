"""A stand-in for ``python:3.11-slim`` built from Debian, for air-gapped builds and test runs that
cannot pull from a public registry, cached in the engine by a tag that hashes its recipe.

Recipe: ``debootstrap --variant=minbase`` of bookworm with python3, python3-venv, python3-pip and
ca-certificates; Debian's EXTERNALLY-MANAGED marker removed (the BentoML Dockerfile pip-installs uv
into the system interpreter, as it does on the official image); ``python`` -> ``python3``; apt
caches and docs dropped; the host's CA bundle in place of Debian's, with SSL_CERT_FILE (read by uv
too), PIP_CERT and REQUESTS_CA_BUNDLE set, so that builds behind a TLS-inspecting proxy trust its CA.
Real users build on the real base image; nothing here reaches the product's Dockerfile.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tools.docker_env import SYSTEM_DEPS_HINT, DockerEngine, HarnessError, Progress, docker, docker_cli, quiet

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_IMAGE = "/etc/ssl/certs/ca-certificates.crt"
REPOSITORY = "ml-delivery/python-standin"
RECIPE_VERSION = 1  # bump when the steps below change in a way the hash inputs do not show
# Trimmed after debootstrap: package caches and lists, docs, man pages, translations.
PRUNED = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")
IMAGE_ENV: dict[str, str] = {
    "LANG": "C.UTF-8",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE": CA_IN_IMAGE,
    "PIP_CERT": CA_IN_IMAGE,
    "REQUESTS_CA_BUNDLE": CA_IN_IMAGE,
}


DEFAULT_MIRROR = "http://deb.debian.org/debian"
# A Debian archive (not debian-security, Ubuntu or a third-party repo): the path ends in /debian, or
# is a snapshot.debian.org archive of it.
_DEBIAN_ARCHIVE = re.compile(
    r"^https?://[^/\s]+(/[^\s]*)?/debian/?$|^https?://[^/\s]+/archive/debian/\d{8}T\d{6}Z/?$"
)
_ONE_LINE = re.compile(r"^deb\s+(?:\[[^\]]*\]\s+)?(?P<uri>\S+)")


def is_debian_archive(uri: str) -> bool:
    """Whether ``uri`` is a Debian package archive debootstrap can fetch bookworm from."""
    return bool(_DEBIAN_ARCHIVE.match(uri))


def mirror_in_sources(text: str) -> str | None:
    """The first Debian archive URI of an apt sources file (one-line ``deb [opts] URI suite ...`` or
    deb822 ``Types: deb`` / ``URIs:`` stanzas); None when it names none. Pure."""
    for line in text.splitlines():
        match = _ONE_LINE.match(line.strip())
        if match and is_debian_archive(match["uri"]):
            return match["uri"]
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.lstrip().startswith("#") and not line[:1].isspace():
                fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            if is_debian_archive(uri):
                return uri
    return None


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror debootstrap uses: ``DEBIAN_MIRROR``, else the first Debian archive apt uses
    here (sources.list, then sources.list.d/*), else deb.debian.org."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    sources = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for source in sources:
        if source.is_file() and source.suffix in (".list", ".sources"):
            found = mirror_in_sources(source.read_text(errors="replace"))
            if found:
                return found
    return DEFAULT_MIRROR


def standin_tag(ca_bundle: bytes) -> str:
    """The image tag for this recipe and CA bundle: a rebuild happens only when either changes."""
    recipe = json.dumps(
        {"suite": SUITE, "packages": PACKAGES, "env": IMAGE_ENV, "pruned": PRUNED, "v": RECIPE_VERSION},
        sort_keys=True,
    ).encode()
    digest = hashlib.sha256(recipe + hashlib.sha256(ca_bundle).digest()).hexdigest()
    return f"{REPOSITORY}:3.11-{SUITE}-{digest[:12]}"


def image_exists(engine: DockerEngine, ref: str) -> bool:
    """True when the engine holds an image called ``ref``."""
    return docker(engine, ["image", "inspect", ref], check=False).returncode == 0


def _debootstrap(rootfs: Path, log_path: Path, progress: Progress) -> None:
    binary = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(binary):
        raise HarnessError(f"`debootstrap` is not installed: {SYSTEM_DEPS_HINT}")
    mirror = debian_mirror()
    progress(f"debootstrap {SUITE} minbase + {', '.join(PACKAGES)} from {mirror} (about 1-2 minutes)")
    command = [binary, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.startswith(("I: Retrieving Release", "I: Installing core", "I: Base system")):
                progress(line.rstrip())
        if proc.wait() != 0:
            raise HarnessError(
                f"debootstrap failed (log: {log_path}); set DEBIAN_MIRROR to a reachable mirror"
            )


def _finish_rootfs(rootfs: Path, ca_bundle: bytes) -> None:
    """Make the debootstrapped tree look like python:3.11-slim where the BentoML Dockerfile cares."""
    for marker in (rootfs / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    python = rootfs / "usr/bin/python"
    if not python.exists():
        python.symlink_to("python3")
    for relative in PRUNED:
        folder = rootfs / relative
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    (rootfs / CA_IN_IMAGE.lstrip("/")).write_bytes(ca_bundle)


def _import(engine: DockerEngine, rootfs: Path, tag: str) -> None:
    changes = [f"ENV {key}={value}" for key, value in IMAGE_ENV.items()] + ['CMD ["python3"]']
    tar = subprocess.Popen(
        [
            "tar",
            "-C",
            str(rootfs),
            "--numeric-owner",
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "-cf",
            "-",
            ".",
        ],
        stdout=subprocess.PIPE,
    )
    args = ["import", *[flag for change in changes for flag in ("--change", change)], "-", tag]
    imported = subprocess.run(
        [docker_cli(), *args], stdin=tar.stdout, env=engine.env(), capture_output=True, text=True
    )
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0 or imported.returncode != 0:
        raise HarnessError(f"`docker import` of the stand-in failed: {imported.stderr.strip()}")


def ensure_standin(
    engine: DockerEngine, work_dir: Path, progress: Progress = quiet, ca_bundle_path: Path = HOST_CA_BUNDLE
) -> str:
    """Tag of the stand-in base image in ``engine``, built now unless an image with that tag exists."""
    if not ca_bundle_path.is_file():
        raise HarnessError(f"CA bundle {ca_bundle_path} not found: install Debian's ca-certificates")
    ca_bundle = ca_bundle_path.read_bytes()
    tag = standin_tag(ca_bundle)
    if image_exists(engine, tag):
        progress(f"base stand-in {tag} is cached")
        return tag
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="standin-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _debootstrap(rootfs, work_dir / "debootstrap.log", progress)
        _finish_rootfs(rootfs, ca_bundle)
        progress(f"importing the base stand-in as {tag}")
        _import(engine, rootfs, tag)
    return tag
