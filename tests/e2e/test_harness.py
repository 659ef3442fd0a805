"""The container harness's pure parts: cache key of the base stand-in, the pod-like run flags,
proxy pass-through, and the timestamp normalisation the rebuild comparison relies on."""

from __future__ import annotations

import importlib.util
import io
import itertools
import tarfile
from pathlib import Path

import pytest

from model.container import RUN_AS_USER, RUNTIME_ENV, SERVICE_PORT, WRITABLE_PATHS
from tools.base_image import DEFAULT_MIRROR, debian_mirror, mirror_in_sources, standin_tag
from tools.bench_image import parse_size
from tools.container_run import kubernetes_run_args, proxy_build_args
from tools.image_diff import config_without_times, layer_entries


def test_standin_tag_is_stable_and_follows_the_ca_bundle() -> None:
    assert standin_tag(b"bundle-a") == standin_tag(b"bundle-a")
    assert standin_tag(b"bundle-a") != standin_tag(b"bundle-b")
    assert standin_tag(b"bundle-a").startswith("ml-delivery/python-standin:3.11-bookworm-")


def test_run_flags_carry_the_whole_pod_contract() -> None:
    args = kubernetes_run_args("img@sha256:" + "0" * 64, name="c", host_port=18080)
    assert args[-1] == "img@sha256:" + "0" * 64
    pairs = list(itertools.pairwise(args))
    assert ("--user", f"{RUN_AS_USER}:{RUN_AS_USER}") in pairs
    assert ("--cap-drop", "ALL") in pairs
    assert ("--security-opt", "no-new-privileges") in pairs
    assert ("--publish", f"127.0.0.1:18080:{SERVICE_PORT}") in pairs
    assert "--read-only" in args
    assert {value.split(":", 1)[0] for flag, value in pairs if flag == "--tmpfs"} == set(WRITABLE_PATHS)
    assert {value for flag, value in pairs if flag == "--env"} == {f"{k}={v}" for k, v in RUNTIME_ENV.items()}


def test_proxy_build_args_name_the_variables_without_their_values() -> None:
    flags = proxy_build_args({"HTTPS_PROXY": "http://user:secret@proxy:3128", "PATH": "/bin"})
    assert flags == ["--build-arg", "HTTPS_PROXY"]
    assert proxy_build_args({}) == []


def _layer(files: dict[str, tuple[bytes, int]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (data, mtime) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def test_layer_entries_ignore_mtimes_and_pyc_source_times_but_not_content() -> None:
    magic = importlib.util.MAGIC_NUMBER
    pyc_a = magic + b"\0\0\0\0" + (100).to_bytes(4, "little") + b"\x10\0\0\0code"
    pyc_b = magic + b"\0\0\0\0" + (200).to_bytes(4, "little") + b"\x10\0\0\0code"
    a, _, pycs = layer_entries(_layer({"x.py": (b"print(1)", 1), "x.pyc": (pyc_a, 1)}))
    b, _, _ = layer_entries(_layer({"x.py": (b"print(1)", 2), "x.pyc": (pyc_b, 2)}))
    c, _, _ = layer_entries(_layer({"x.py": (b"print(2)", 1), "x.pyc": (pyc_a, 1)}))
    assert a == b
    assert pycs == {"x.pyc"}
    assert a["x.py"] != c["x.py"]


def test_config_comparison_drops_only_build_times() -> None:
    config = {
        "created": "t1",
        "config": {"Env": ["A=1"]},
        "history": [{"created": "t1", "created_by": "RUN x"}],
    }
    other = {
        "created": "t2",
        "config": {"Env": ["A=1"]},
        "history": [{"created": "t2", "created_by": "RUN x"}],
    }
    assert config_without_times(config) == config_without_times(other)
    changed = {**other, "config": {"Env": ["A=2"]}}
    assert config_without_times(config) != config_without_times(changed)


@pytest.mark.parametrize(
    ("text", "mb"), [("539MB", 539.0), ("2.97kB", 0.00297), ("0B", 0.0), ("1.2GB", 1200.0)]
)
def test_parse_size_reads_docker_history_sizes(text: str, mb: float) -> None:
    assert parse_size(text) == pytest.approx(mb)


@pytest.mark.parametrize(
    ("text", "mirror"),
    [
        ("deb http://ftp.de.debian.org/debian bookworm main\n", "http://ftp.de.debian.org/debian"),
        (  # the [...] options block is skipped; "main" is not a URI
            "deb [arch=amd64 signed-by=/etc/k.gpg] http://mirror.example/debian/ bookworm main contrib\n",
            "http://mirror.example/debian/",
        ),
        (  # third-party, security and Ubuntu repositories come first but are skipped
            "deb [signed-by=/k.gpg] https://deb.nodesource.com/node_20.x nodistro main\n"
            "deb http://security.debian.org/debian-security bookworm-security main\n"
            "deb http://archive.ubuntu.com/ubuntu jammy main\n"
            "# deb http://commented.example/debian bookworm main\n"
            "deb-src http://src.example/debian bookworm main\n"
            "deb https://snapshot.debian.org/archive/debian/20250520T000000Z bookworm main\n",
            "https://snapshot.debian.org/archive/debian/20250520T000000Z",
        ),
        (  # deb822, as /etc/apt/sources.list.d/debian.sources on these machines
            "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
            "URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
            "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n",
            "http://deb.debian.org/debian",
        ),
        (  # deb822: a disabled stanza and a deb-src-only stanza are skipped
            "Types: deb\nEnabled: no\nURIs: http://off.example/debian\n\n"
            "Types: deb-src\nURIs: http://src.example/debian\n\n"
            "Types: deb deb-src\nURIs: http://archive.ubuntu.com/ubuntu http://on.example/debian\n",
            "http://on.example/debian",
        ),
        ("deb http://archive.ubuntu.com/ubuntu jammy main universe\n", None),
        ("", None),
    ],
)
def test_mirror_in_sources_takes_only_a_debian_archive(text: str, mirror: str | None) -> None:
    assert mirror_in_sources(text) == mirror


def test_debian_mirror_falls_back_to_deb_debian_org(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    (tmp_path / "sources.list.d" / "third.list").write_text(
        "deb https://deb.nodesource.com/node_20.x x main\n"
    )
    assert debian_mirror(tmp_path) == DEFAULT_MIRROR == "http://deb.debian.org/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text("Types: deb\nURIs: http://m.example/debian\n")
    assert debian_mirror(tmp_path) == "http://m.example/debian"
    monkeypatch.setenv("DEBIAN_MIRROR", "http://chosen.example/debian")
    assert debian_mirror(tmp_path) == "http://chosen.example/debian"
