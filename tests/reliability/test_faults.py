"""Faults of the training and serving processes, each asserting what was lost and what the user is told.

- The MLflow server is killed while the training step logs its model: the step exits 3 naming the
  tracking URI, no version is registered or aliased, and a rerun after a restart trains the same
  fingerprint and registers it.
- The MLflow backend store (SQLite + artifact folder) survives a server restart: runs, versions,
  tags, aliases and artifacts are all there.
- A serving worker is killed under load: BentoML's arbiter starts a new one, the server answers
  again, and the requests lost meanwhile are counted.
- The gate refuses a worse model: the champion keeps its alias (and the candidate alias) and the
  server keeps answering as before.
- The bento export is killed while it writes: the last complete build context stays as it was (or
  there is none), and the next export removes the leftovers and writes the same bytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import psutil
import pytest
import requests

from model.container import MODEL_TAG_ENV, READINESS_PATH
from model.registry import CANDIDATE_ALIAS, CHAMPION_ALIAS, FINGERPRINT_TAG, GATE_TAG
from tests.conftest import REPO_ROOT, ServedExample
from tests.reliability.conftest import full_only, record, scaled
from tools import load_client
from tools.processes import (
    MLFLOW_SERVER_ENV,
    bentoml_serve_command,
    free_port,
    mlflow_server_command,
    running,
    wait_for_http,
)
from tools.smoke import sample_rows

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.servers

SPEC = REPO_ROOT / "model.yaml"
# The client gives up quickly once the server is gone (MLflow's default retries for minutes).
FAST_FAILING_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


@contextmanager
def mlflow_at(root: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``mlflow server`` on ``port`` over the backend store in ``root``."""
    url = f"http://127.0.0.1:{port}"
    with running(
        mlflow_server_command(root, port),
        ready_url=f"{url}/health",
        log_path=root / "server.log",
        timeout=180,
        env=MLFLOW_SERVER_ENV,
        cwd=root,
    ) as proc:
        yield proc


def _train_cli(url: str, name: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "model.train", "--spec", str(SPEC), "--tracking-uri", url,
            "--model-name", name, "--experiment", name, "--json", *extra,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env={**os.environ, **FAST_FAILING_CLIENT},
    )  # fmt: skip


def _client(url: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)


def _versions(url: str, name: str) -> list[ModelVersion]:
    return list(_client(url).search_model_versions(f"name = '{name}'"))


def _aliases(url: str, name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return {k: str(v) for k, v in _client(url).get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


def test_mlflow_killed_mid_training_registers_nothing_and_a_rerun_succeeds(tmp_path: Path) -> None:
    root, port, name = tmp_path / "mlflow", free_port(), "fault-mlflow-killed"
    root.mkdir()
    url = f"http://127.0.0.1:{port}"
    with mlflow_at(root, port) as server:
        training = _train_cli(url, name)
        assert training.stderr is not None and training.stdout is not None
        seen: list[str] = []
        for line in training.stderr:  # kill the server as the step starts logging the model
            seen.append(line)
            if "logging and registering the model" in line:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
                break
        seen.append(training.stderr.read())
        training.wait(timeout=600)
    told = "".join(seen)
    assert training.returncode == 3, told
    assert "training failed (not a data or gate problem)" in told and url in told, told
    assert "Traceback" not in told
    fingerprint_line = next(line for line in seen if "training fingerprint" in line)
    first_fingerprint = fingerprint_line.rsplit(" ", 1)[1].strip()

    with mlflow_at(root, port):  # the same store, restarted
        assert _versions(url, name) == [], "a version was registered by the interrupted run"
        assert _aliases(url, name) == {}
        rerun = _train_cli(url, name)
        out, err = rerun.communicate(timeout=900)
        assert rerun.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert result["fingerprint"].startswith(first_fingerprint) and not result["reused"]
        versions = _versions(url, name)
        assert [v.version for v in versions] == [result["version"]]
        assert versions[0].tags[GATE_TAG] == "passed"
        assert _aliases(url, name) == {CANDIDATE_ALIAS: result["version"]}
    record(
        "fault-mlflow-killed",
        {
            "exit_code": training.returncode,
            "told": told.strip().splitlines()[-5:],
            "rerun_version": result["version"],
        },
    )


@full_only
def test_the_mlflow_backend_store_survives_a_restart(tmp_path: Path) -> None:
    from model.spec import load_spec
    from model.train import TrainConfig, load_heldout, train_and_register

    root, port, name = tmp_path / "mlflow", free_port(), "fault-restart"
    root.mkdir()
    url = f"http://127.0.0.1:{port}"
    with mlflow_at(root, port):
        result = train_and_register(
            TrainConfig(spec=load_spec(SPEC), tracking_uri=url, experiment_name=name, model_name=name)
        )
        client = _client(url)
        client.set_registered_model_alias(name, CHAMPION_ALIAS, result.version)
        before = _store_snapshot(url, name, result.run_id)
    with mlflow_at(root, port):  # stopped with SIGTERM above, started again on the same store
        after = _store_snapshot(url, name, result.run_id)
        heldout = load_heldout(result.run_id, url)
    assert after == before
    assert after["aliases"] == {CANDIDATE_ALIAS: result.version, CHAMPION_ALIAS: result.version}
    assert after["version_tags"][FINGERPRINT_TAG] == result.fingerprint
    assert "model/MLmodel" in after["artifacts"] or any(a.endswith("MLmodel") for a in after["model_files"])
    assert (len(heldout) == result.metrics and False) or len(heldout) > 0
    record("fault-mlflow-restart", {"compared": sorted(before), "artifacts": len(after["artifacts"])})


class StoreSnapshot(TypedDict):
    """What ``_store_snapshot`` reads back from the tracking server."""

    run_status: str
    params: dict[str, str]
    metrics: dict[str, float]
    run_tags: dict[str, str]
    version: str
    version_tags: dict[str, str]
    aliases: dict[str, str]
    artifacts: list[str]
    model_files: list[str]


def _store_snapshot(url: str, name: str, run_id: str) -> StoreSnapshot:
    """Everything the training step wrote, as plain values to compare across a restart."""
    import mlflow

    client = _client(url)
    run = client.get_run(run_id)
    (version,) = _versions(url, name)
    artifacts = sorted(_walk(client, run_id, ""))
    with_model = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version.version}", tracking_uri=url
    )
    return {
        "run_status": run.info.status,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "run_tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "version": version.version,
        "version_tags": dict(version.tags),
        "aliases": _aliases(url, name),
        "artifacts": artifacts,
        "model_files": sorted(
            str(p.relative_to(with_model)) for p in Path(with_model).rglob("*") if p.is_file()
        ),
    }


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _walk(client: MlflowClient, run_id: str, path: str) -> Iterator[str]:
    for item in client.list_artifacts(run_id, path or None):
        if item.is_dir:
            yield from _walk(client, run_id, item.path)
        else:
            yield item.path


def _workers(server: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(server.pid).children(recursive=True)
        if "_bentoml_impl.worker" in " ".join(p.cmdline())
    ]


@full_only
def test_a_serving_worker_killed_under_load_is_replaced(
    served_default: ServedExample, tmp_path: Path
) -> None:
    context = served_default.context
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        MODEL_TAG_ENV: context.model_tag,
        "BENTOML_HOME": str(tmp_path / "home"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    rows, _ = sample_rows(served_default.spec, None, load_client.SAMPLE_ROWS)
    bodies = load_client.request_bodies(rows, 1, len(rows))
    seconds = scaled(40, 20)
    scenario = load_client.Scenario(1, 4, 10**7, seconds)
    with running(
        bentoml_serve_command(context.path, port),
        ready_url=f"{url}{READINESS_PATH}",
        log_path=tmp_path / "serve.log",
        timeout=300,
        env=env,
        cwd=tmp_path,
    ) as server:
        (victim,) = _workers(server)
        outcome: list[load_client.Result] = []
        load = threading.Thread(
            target=lambda: outcome.append(
                load_client.run_scenario(("127.0.0.1", port), "predict", bodies, scenario, print)
            )
        )
        load.start()
        time.sleep(seconds / 4)  # let the load settle before the fault
        victim.kill()
        killed_at = time.monotonic()
        wait_for_http(f"{url}{READINESS_PATH}", timeout=300)
        deadline = time.monotonic() + 300
        while not [w for w in _workers(server) if w.pid != victim.pid] and time.monotonic() < deadline:
            time.sleep(0.5)
        recovered_s = time.monotonic() - killed_at
        load.join(timeout=600)
        (result,) = outcome
        after = requests.post(f"{url}/predict", json={"rows": rows[:3]}, timeout=60)
        replacement = [w.pid for w in _workers(server) if w.pid != victim.pid]
    record(
        "fault-worker-killed",
        {
            "requests_ok": result.ok,
            "errors": {load_client._status_name(k): v for k, v in result.failures.items()},
            "error_count": sum(result.failures.values()),
            "recovered_within_s": round(recovered_s, 1),
        },
    )
    assert replacement, "no new worker after the kill"
    assert after.status_code == 200 and len(after.json()) == 3
    assert result.ok > 0


def test_the_gate_refuses_a_worse_model_and_the_champion_keeps_alias_and_serving(
    served_default: ServedExample, mlflow_server: str
) -> None:
    name, champion = served_default.result.model_name, served_default.result.version
    client = _client(mlflow_server)
    rows, _ = sample_rows(served_default.spec, None, 20)
    before = requests.post(f"{served_default.url}/predict", json={"rows": rows}, timeout=60).json()
    client.set_registered_model_alias(name, CHAMPION_ALIAS, champion)
    try:
        worse = _train_cli(mlflow_server, name, "--param", "C=0.0005")
        _, err = worse.communicate(timeout=900)
        aliases = _aliases(mlflow_server, name)
        refused = [v for v in _versions(mlflow_server, name) if v.version != champion]
    finally:
        client.delete_registered_model_alias(name, CHAMPION_ALIAS)
    assert worse.returncode == 2, err
    assert "quality gate failed" in err and "has no alias" in err, err
    assert aliases == {CANDIDATE_ALIAS: champion, CHAMPION_ALIAS: champion}
    newest = max(refused, key=lambda v: int(v.version))
    assert newest.tags[GATE_TAG] == "failed" and newest.version not in aliases.values()
    after = requests.post(f"{served_default.url}/predict", json={"rows": rows}, timeout=60)
    assert after.status_code == 200 and after.json() == before
    record("fault-gate-refuses", {"exit_code": worse.returncode, "told": err.strip().splitlines()[-1]})


# ``python -m model.bento`` (what export_build_context runs), held once the export is written into
# its staging folder and before it is moved into place: the kill lands mid-export on any machine,
# however fast the export.
HELD_EXPORT = (
    "import sys, time, model.bento as b; real = b.normalize_tree; "
    "b.normalize_tree = lambda *a, **k: (real(*a, **k), time.sleep(3600)); sys.exit(b.main(sys.argv[1:]))"
)


def _killed_export(served: ServedExample, mlflow_server: str, out: Path, home: Path) -> list[Path]:
    """Start the export child (HELD_EXPORT), SIGKILL it once its staging folder holds the written
    export (the hold), and return the leftovers it could not clean."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [
        sys.executable, "-c", HELD_EXPORT, "--model-uri", served.result.model_uri,
        "--fingerprint", served.result.fingerprint, "--out-dir", str(out),
    ]  # fmt: skip
    child = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 900
        while not list(out.parent.glob(f".{out.name}-new-*/*/bento.yaml")):
            assert child.poll() is None, (
                f"the export ended (exit {child.returncode}) before it was interrupted"
            )
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    return list(out.parent.glob(f".{out.name}-*"))


def test_an_interrupted_bento_export_leaves_the_last_good_one_and_the_next_run_starts_clean(
    served_default: ServedExample, mlflow_server: str, tmp_path: Path
) -> None:
    from model.bento import export_build_context, tree_digest

    out, home = tmp_path / "build" / "context", tmp_path / "bentoml"
    out.parent.mkdir()

    def export() -> Any:
        return export_build_context(
            served_default.result.model_uri,
            served_default.result.fingerprint,
            out,
            tracking_uri=mlflow_server,
            bentoml_home=home,
        )

    leftovers = _killed_export(served_default, mlflow_server, out, home)
    assert leftovers and not out.exists(), "the first export, interrupted, must leave no context"
    first = export()
    assert list(tree_digest(first.path)) == list(tree_digest(served_default.context.path))
    assert not list(out.parent.glob(f".{out.name}-*")), "the next run left the interrupted export's folders"
    good = list(tree_digest(out))

    assert _killed_export(served_default, mlflow_server, out, home)
    assert list(tree_digest(out)) == good, "an interrupted export touched the last complete one"
    again = export()
    assert again.reused and list(tree_digest(out)) == good
    assert not list(out.parent.glob(f".{out.name}-*"))
    record("fault-export-interrupted", {"interruptions": 2, "files_in_context": len(good)})
