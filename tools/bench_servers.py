"""The servers the serving benchmark compares, each serving the same registered model on loopback:
this project's bento (``bentoml serve`` of the exported build context, or the serving image run as
the pod runs it), ``mlflow models serve`` (--env-manager local) and MLServer with its scikit-learn
runtime (in its own venv under .cache/, beside the model's scikit-learn). For each: how it starts
(a context yielding the pid its processes hang from and its URL), how to shape a body of rows in each
form (``*_BODIES``; MLServer has one form, its V2 tensor) and how many answers its reply holds
(``*_answers``).

MLServer is set up as a user after its speed would: ``debug: false`` (its default, true, writes an
access-log line per request), one process (``parallel_workers: 0``: measured faster here than 1 or 2
inference workers, whose IPC costs more than a small request's arithmetic), and, when every feature
is a double and the pipeline's ColumnTransformer is one transformer over all of them in signature
order, the fitted pipeline re-assembled without that ColumnTransformer (``mlserver_model``) and fed
one FP64 tensor of shape [rows, features], which its scikit-learn runtime decodes straight into a
numpy array. One V2 input per feature decoded to a pandas frame (``mlserver_body_for``, the fallback
for any other pipeline) cost it ~6x the CPU per request. Its Prometheus metrics stay on, as ours do.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from tools.bench_report import COLUMNS, ROWS
from tools.processes import LOOPBACK, bentoml_serve_command, free_port, running

REPO_ROOT = Path(__file__).resolve().parent.parent
# The Docker engine the benchmarks start (its data root), where a benchmarked image must be.
BENCH_ENGINE_DIR = REPO_ROOT / ".build" / "bench-dockerd"
MLSERVER_VERSION = "1.7.1"
MLSERVER_VENV = REPO_ROOT / ".cache" / "bench-mlserver"
# The model's own numeric stack goes in beside MLServer, so it unpickles the same fitted pipeline.
MLSERVER_BESIDE = ("scikit-learn", "numpy", "pandas", "scipy")

Rows = Sequence[dict[str, object]]
Body = Callable[[Rows], bytes]


def _split(rows: Rows) -> dict[str, list[Any]]:
    """pandas' split orient: the names of the first row once, then each row's values in that order."""
    names = list(rows[0]) if rows else []
    return {"columns": names, "data": [[row[name] for name in names] for row in rows]}


def project_body(rows: Rows) -> bytes:
    return json.dumps({"rows": list(rows)}).encode()


def project_columns_body(rows: Rows) -> bytes:
    return json.dumps(_split(rows)).encode()


PROJECT_BODIES: Mapping[str, Body] = {ROWS: project_body, COLUMNS: project_columns_body}


def project_answers(answer: Any) -> int:
    return len(answer) if isinstance(answer, list) else -1


def mlflow_body(rows: Rows) -> bytes:
    return json.dumps({"dataframe_records": list(rows)}).encode()


def mlflow_split_body(rows: Rows) -> bytes:
    return json.dumps({"dataframe_split": _split(rows)}).encode()


MLFLOW_BODIES: Mapping[str, Body] = {ROWS: mlflow_body, COLUMNS: mlflow_split_body}


def mlflow_answers(answer: Any) -> int:
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    return len(predictions) if isinstance(predictions, list) else -1


_V2_TYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL"}


def mlserver_body_for(columns: Sequence[tuple[str, str]]) -> Body:
    """Open Inference Protocol (V2) bodies: one input per feature, decoded to a pandas frame."""

    def body(rows: Rows) -> bytes:
        inputs = [
            {
                "name": name,
                "shape": [len(rows)],
                "datatype": _V2_TYPES.get(kind, "BYTES"),
                "data": [row[name] for row in rows],
                **({"parameters": {"content_type": "str"}} if kind == "string" else {}),
            }
            for name, kind in columns
        ]
        return json.dumps({"inputs": inputs, "parameters": {"content_type": "pd"}}).encode()

    return body


def mlserver_tensor_body(rows: Rows, names: Sequence[str]) -> bytes:
    """One FP64 input of shape [rows, features], features in signature order (NumpyRequestCodec)."""
    data = [float(cast(float, row[name])) for row in rows for name in names]
    inputs = [{"name": "input-0", "shape": [len(rows), len(names)], "datatype": "FP64", "data": data}]
    return json.dumps({"inputs": inputs}).encode()


def mlserver_model(pipeline: Any, columns: Sequence[tuple[str, str]]) -> tuple[Any, Body, str]:
    """What MLServer serves, how its bodies look and a phrase saying so: the pipeline's fitted steps
    on an FP64 tensor when every feature is a double and its ColumnTransformer is one fitted
    transformer over all of them in signature order, else the pipeline on one V2 input per feature."""
    from sklearn.pipeline import Pipeline

    from model.predictor import (
        ArrayPredictor,
        FramePredictor,
        array_predictor,
        first_difference,
        probe_columns,
    )
    from model.validation import RowSchema

    names = tuple(name for name, _ in columns)
    schema = RowSchema(columns=tuple(columns))
    # The fitted steps themselves (not this project's kernels), when they answer exactly as the
    # pipeline on a frame (model.predictor's own check).
    fast = array_predictor(pipeline, schema)
    if (
        not isinstance(fast, ArrayPredictor)
        or first_difference(FramePredictor(pipeline, names), fast, pipeline, probe_columns(schema))
        or any(kind != "double" for _, kind in columns)
        or len(fast.parts) != 1
        or fast.parts[0][1] != names
        or fast.parts[0][0] is None
    ):
        return pipeline, mlserver_body_for(columns), "one V2 input per feature decoded to a pandas frame"
    rest = fast.rest.steps if isinstance(fast.rest, Pipeline) else [("estimator", fast.rest)]
    on_arrays = Pipeline([("preprocess", fast.parts[0][0]), *rest])
    how = f"the pipeline's fitted steps without its ColumnTransformer on one FP64 tensor [rows, {len(names)}]"
    return on_arrays, functools.partial(mlserver_tensor_body, names=names), how


def mlserver_answers(answer: Any) -> int:
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not outputs:
        return -1
    shape = outputs[0].get("shape") or [0]
    return int(shape[0])


@contextmanager
def project_native(
    context: Path, model_tag: str, workers: int, logs: Path, home: Path
) -> Iterator[tuple[int, str]]:
    """``bentoml serve`` of the exported build context, with the environment the image sets."""
    from model.container import MODEL_TAG_ENV, READINESS_PATH, WORKERS_ENV

    port = free_port()
    env = {
        MODEL_TAG_ENV: model_tag,
        WORKERS_ENV: str(workers),
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    url = f"http://{LOOPBACK}:{port}"
    with running(
        bentoml_serve_command(context, port), ready_url=f"{url}{READINESS_PATH}",
        log_path=logs / "project.log", timeout=300, env=env, cwd=home,
    ) as proc:  # fmt: skip
        yield proc.pid, url


@contextmanager
def project_container(
    image: str, docker_args: Sequence[str], progress: Callable[[str], None]
) -> Iterator[tuple[int, str]]:
    """The serving image as the pod runs it (read-only, uid 1034, no capabilities, the Deployment's
    CPU and memory limits and worker count: ``docker_args``); removed on exit."""
    from tools.container_run import remove_container, start_serving
    from tools.docker_env import docker, docker_engine

    with docker_engine(BENCH_ENGINE_DIR, progress) as engine:
        if docker(engine, ["image", "inspect", image], check=False).returncode != 0:
            raise SystemExit(
                f"image {image!r} is not in the Docker engine: build it (make e2e) or pass --image"
            )
        port = free_port()
        container = start_serving(
            engine, image, name=f"bench-serving-{port}", host_port=port, extra_args=docker_args
        )
        progress(f"{image} ready after {container.cold_start_s:.1f} s ({' '.join(docker_args)})")
        try:
            pid = int(
                docker(engine, ["inspect", "--format", "{{.State.Pid}}", container.container_id]).stdout
            )
            yield pid, bridge_url(engine, container.container_id, progress) or container.url
        finally:
            remove_container(engine, container.container_id)


def bridge_url(engine: Any, container_id: str, progress: Callable[[str], None]) -> str | None:
    """The container's own address on the engine's bridge, as a pod's address is reached (veth and
    bridge, no proxy), when it answers; the published loopback port goes through docker-proxy, a
    userland copy of every byte that a pod network does not have."""
    import requests

    from model.container import READINESS_PATH, SERVICE_PORT
    from tools.docker_env import docker

    inspected = docker(
        engine, ["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                 container_id],
    ).stdout.split()  # fmt: skip
    for address in inspected:
        url = f"http://{address}:{SERVICE_PORT}"
        try:
            if requests.get(url + READINESS_PATH, timeout=5).status_code == 200:
                progress(f"loading the container at its bridge address {url}")
                return url
        except requests.RequestException:
            continue
    progress("the container's bridge address does not answer: loading it through the published port")
    return None


@contextmanager
def mlflow_serve(model_dir: Path, workers: int, logs: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [
        mlflow, "models", "serve", "-m", str(model_dir), "--env-manager", "local",
        "-h", LOOPBACK, "-p", str(port), "-w", str(workers),
    ]  # fmt: skip
    # mlflow execs `uvicorn` by name: this venv's bin first on PATH.
    env = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{Path(mlflow).parent}{os.pathsep}{os.environ['PATH']}",
    }
    with running(
        command, ready_url=f"{url}/ping", log_path=logs / "mlflow.log", timeout=300, env=env
    ) as proc:
        yield proc.pid, url


def ensure_mlserver(progress: Callable[[str], None]) -> Path:
    """MLServer and its scikit-learn runtime in their own venv, beside this venv's numeric stack."""
    from importlib.metadata import version

    binary = MLSERVER_VENV / "bin" / "mlserver"
    pins = [f"{name}=={version(name)}" for name in MLSERVER_BESIDE]
    wanted = [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}", *pins]
    stamp = MLSERVER_VENV / "bench-pins.txt"
    if binary.exists() and stamp.is_file() and stamp.read_text() == "\n".join(wanted):
        return binary
    uv = Path(sys.executable).with_name("uv")
    progress(f"installing {' '.join(wanted)} into {MLSERVER_VENV} (uv, from the configured index)")
    subprocess.run(
        [str(uv), "venv", "--quiet", "--allow-existing", "--python", sys.executable, str(MLSERVER_VENV)],
        check=True,
    )
    subprocess.run(
        [str(uv), "pip", "install", "--quiet", *wanted],
        check=True,
        env={**os.environ, "VIRTUAL_ENV": str(MLSERVER_VENV)},
    )
    stamp.write_text("\n".join(wanted))
    return binary


@contextmanager
def mlserver(
    pipeline: Any, name: str, work: Path, logs: Path, progress: Callable[[str], None]
) -> Iterator[tuple[int, str]]:
    """MLServer's scikit-learn runtime on ``pipeline`` (joblib; ``mlserver_model`` says which), one
    process (parallel_workers 0), no per-request access log (debug false)."""
    import joblib

    binary = ensure_mlserver(progress)
    repo = work / "mlserver"
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, model_dir / "model.joblib")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": LOOPBACK,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,
        "debug": False,
    }
    (repo / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings))
    url = f"http://{LOOPBACK}:{http_port}"
    with running(
        [str(binary), "start", str(repo)], ready_url=f"{url}/v2/models/{name}/ready",
        log_path=logs / "mlserver.log", timeout=300, cwd=repo,
    ) as proc:  # fmt: skip
        yield proc.pid, f"{url}/v2/models/{name}/infer"
