"""The container harness's pure parts: cache key of the base stand-in, the pod-like run flags,
proxy pass-through, and the timestamp normalisation the rebuild comparison relies on."""

from __future__ import annotations

import importlib.util
import io
import itertools
import tarfile

import pytest

from model.container import RUN_AS_USER, RUNTIME_ENV, SERVICE_PORT, WRITABLE_PATHS
from tools.base_image import standin_tag
from tools.bench_image import parse_size
from tools.container_run import kubernetes_run_args, proxy_build_args
from tools.image_diff import config_without_times, layer_entries

pytestmark = pytest.mark.e2e


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
