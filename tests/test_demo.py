"""tools.demo (``make demo``) end to end, twice in one temporary demo folder on free ports: both runs
succeed, the second reuses the trained version and the built bento, and both servers are stopped."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port
from tools import demo

pytestmark = pytest.mark.servers


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_runs_twice_reuses_the_second_time_and_stops_its_servers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo_dir = tmp_path / "demo"
    outputs = []
    for _ in range(2):
        mlflow_port, serve_port = free_port(), free_port()
        code = demo.run(
            REPO_ROOT / "model.yaml", demo_dir, keep_running=False,
            mlflow_port=mlflow_port, serve_port=serve_port,
        )  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0, out
        assert not listening(mlflow_port), f"mlflow server still listens on {mlflow_port}"
        assert not listening(serve_port), f"bentoml serve still listens on {serve_port}"
        assert f"http://127.0.0.1:{mlflow_port}" in out and f"http://127.0.0.1:{serve_port}" in out
        outputs.append(out)
    first, second = outputs

    assert "trained and registered models:/cancer-classifier/1" in first
    assert "built bento cancer_classifier:" in first
    assert "unchanged: reused models:/cancer-classifier/1, no retraining" in second
    assert "already built for this fingerprint: reused, not rebuilt" in second
    for out in outputs:
        assert "[demo] 7/7 done" in out
        assert "online accuracy" in out and "feedback rows (held-out" in out
        drifted = {line.split()[0] for line in out.splitlines() if " DRIFT" in line} - {"prediction"}
        assert drifted == {"mean_radius", "mean_texture", "mean_perimeter"}  # the scaled features, only
        assert out.count("malignant") >= demo.SAMPLES_PER_CLASS  # the actual column, at least
        assert "P(predicted)" in out and "benign" in out  # class names, not 0/1
        assert "stopping bentoml serve" in out and "stopping mlflow server" in out
        ui = f"--artifacts-destination {demo_dir / 'mlflow' / 'artifacts'}"
        assert ui in out, "the printed mlflow ui command must reach the demo's artifacts"
    assert (demo_dir / "drift.png").is_file()
    assert (demo_dir / "build-context" / "bento.yaml").is_file()
    assert any((demo_dir / "mlflow" / "artifacts").rglob("MLmodel"))
