"""Smoke test of a deployed model endpoint, run by the deploy workflow after each `pulumi up`.

It sends rows of the model spec's data (``--spec``, default model.yaml; ``--data`` for another CSV)
to the served model and checks what a user relies on, in the task's terms: the server is ready;
a classifier's ``/predict`` returns one of the model's class names per row and agrees with the known
labels, and its ``/predict_proba`` returns each class's probability, in class order, summing to 1;
a regressor's ``/predict`` returns one finite number per row (and it has no ``/predict_proba``);
a bad request gets a 4xx naming the problem (never a 5xx). ``--endpoint`` is the stack output
``endpoint``: a reachable URL is used as it is; a cluster-internal one
(``http://<service>.<namespace>.svc.cluster.local[:port]``) is reached with ``--kubeconfig``
through a ``kubectl port-forward`` on 127.0.0.1 that this tool starts and stops by its process id.

    python -m tools.smoke --endpoint http://127.0.0.1:3000 --spec examples/wine/model.yaml
    python -m tools.smoke --endpoint http://model-server.model-serving.svc.cluster.local --kubeconfig FILE

The checks are pure functions over parsed responses; only ``run_smoke`` and ``port_forward`` touch
the network or processes. Exit status: 0 passed, 1 a check failed, 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests

from model.container import READINESS_PATH
from model.data import load_dataset, request_rows
from model.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tools.processes import free_port


class SmokeError(RuntimeError):
    """A check failed; the message says which endpoint, what came back and what was expected."""


class ClusterService(NamedTuple):
    """A Service addressed by its cluster-internal DNS name."""

    namespace: str
    name: str
    port: int


CLUSTER_SUFFIX = ".svc.cluster.local"


def cluster_service(endpoint: str) -> ClusterService | None:
    """The Service behind a ``http://<name>.<namespace>.svc.cluster.local[:port]`` URL, else None."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint {endpoint!r} is not an http(s) URL; pass the stack output 'endpoint'")
    host = parts.hostname
    if not host.endswith(CLUSTER_SUFFIX):
        return None
    labels = host[: -len(CLUSTER_SUFFIX)].split(".")
    if len(labels) != 2 or not all(labels):
        raise ValueError(f"endpoint {endpoint!r}: expected <service>.<namespace>{CLUSTER_SUFFIX}")
    return ClusterService(namespace=labels[1], name=labels[0], port=parts.port or 80)


def sample_rows(
    spec: ModelSpec, data_path: Path | None, count: int
) -> tuple[list[dict[str, object]], list[object]]:
    """The first ``count`` rows of the spec's data (or ``data_path``) as request rows and their
    expected answers: class names for a classifier, numbers for a regressor."""
    if count < 1:
        raise ValueError(f"--rows must be at least 1, got {count}")
    dataset = load_dataset(spec, data_path)  # a DataValidationError names the file, column and fix
    frame = dataset.frame.head(count)
    if len(frame) < count:
        raise ValueError(
            f"{data_path or spec.data}: holds {len(frame)} data row(s), fewer than --rows {count}"
        )
    target = frame[dataset.target].tolist()
    expected: list[object] = [spec.class_name(v) for v in target] if spec.is_classifier else target
    return request_rows(frame, dataset.features), expected


def check_labels(body: Any, expected: Sequence[object], names: Sequence[str], min_agreement: float) -> float:
    """Validate a classifier's /predict answer: one of the model's class names per row; return the
    share that matches ``expected``."""
    if not isinstance(body, list) or len(body) != len(expected):
        raise SmokeError(f"/predict: expected a list of {len(expected)} class names, got {body!r:.200}")
    bad = [label for label in body if label not in names]
    if bad:
        raise SmokeError(f"/predict: answers must be the model's class names {list(names)}, got {bad[:5]!r}")
    agreement = sum(a == b for a, b in zip(body, expected, strict=True)) / len(expected)
    if agreement < min_agreement:
        raise SmokeError(
            f"/predict: agrees with the known labels on {agreement:.0%} of {len(expected)} training rows, "
            f"below {min_agreement:.0%}: the deployed model is not the one that passed the gate"
        )
    return agreement


def check_values(body: Any, expected: Sequence[object]) -> float:
    """Validate a regressor's /predict answer: one finite number per row; return the RMSE."""
    if not isinstance(body, list) or len(body) != len(expected):
        raise SmokeError(f"/predict: expected a list of {len(expected)} numbers, got {body!r:.200}")
    bad = [v for v in body if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)]
    if bad:
        raise SmokeError(f"/predict: answers must be finite numbers, got {bad[:5]!r}")
    errors = [(float(v) - float(e)) ** 2 for v, e in zip(body, expected, strict=True)]  # type: ignore[arg-type]
    return math.sqrt(sum(errors) / len(errors))


def check_probabilities(body: Any, count: int, names: Sequence[str], tolerance: float = 1e-6) -> None:
    """Validate a /predict_proba answer: ``count`` rows of {class name: probability}, keys in the
    model's class order, each in [0, 1], summing to 1."""
    if not isinstance(body, list) or len(body) != count:
        raise SmokeError(f"/predict_proba: expected {count} rows of probabilities, got {body!r:.200}")
    for index, probs in enumerate(body):
        if (
            not isinstance(probs, dict)
            or list(probs) != list(names)
            or not all(isinstance(p, int | float) and 0.0 <= p <= 1.0 for p in probs.values())
            or abs(sum(probs.values()) - 1.0) > tolerance
        ):
            raise SmokeError(
                f"/predict_proba: row {index} is {probs!r:.200}, "
                f"not probabilities of {list(names)} summing to 1"
            )


def check_rejection(status: int, text: str, missing_feature: str) -> None:
    """A request missing a feature must get a 4xx whose message names that feature."""
    if not 400 <= status < 500:
        raise SmokeError(
            f"/predict answered {status} to a row missing {missing_feature!r}; expected a 4xx: {text[:200]!r}"
        )
    if missing_feature not in text:
        raise SmokeError(f"/predict: the {status} answer does not name {missing_feature!r}: {text[:200]!r}")


def wait_ready(base_url: str, timeout: float, log: Callable[[str], None]) -> None:
    """Poll the readiness endpoint until it answers 200; report progress every 10 seconds."""
    url = base_url + READINESS_PATH
    deadline = time.monotonic() + timeout
    next_report = 0.0
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as err:
            last = type(err).__name__
        if time.monotonic() >= next_report:
            log(f"waiting for {url} ({last})")
            next_report = time.monotonic() + 10
        time.sleep(1)
    raise SmokeError(f"{url} was not ready within {timeout:.0f}s (last: {last})")


def run_smoke(
    base_url: str,
    spec: ModelSpec,
    rows: list[dict[str, object]],
    expected: list[object],
    *,
    min_agreement: float,
    ready_timeout: float,
    log: Callable[[str], None] = print,
) -> None:
    """Run every check against ``base_url``; raise SmokeError on the first failure."""
    wait_ready(base_url, ready_timeout, log)
    log(f"{base_url} is ready; sending {len(rows)} rows")
    predict = requests.post(f"{base_url}/predict", json={"rows": rows}, timeout=60)
    if predict.status_code != 200:
        raise SmokeError(f"/predict answered {predict.status_code}: {predict.text[:300]!r}")
    proba = requests.post(f"{base_url}/predict_proba", json={"rows": rows}, timeout=60)
    if spec.is_classifier:
        names = [spec.class_name(c) for c in load_dataset(spec).classes or ()]
        agreement = check_labels(predict.json(), expected, names, min_agreement)
        log(f"/predict: {len(rows)} class names, {agreement:.0%} agree with the known labels")
        if proba.status_code != 200:
            raise SmokeError(f"/predict_proba answered {proba.status_code}: {proba.text[:300]!r}")
        check_probabilities(proba.json(), len(rows), names)
        log(f"/predict_proba: probabilities of {names} sum to 1")
    else:
        rmse = check_values(predict.json(), expected)
        log(f"/predict: {len(rows)} numbers, rmse {rmse:.4g} against the known values")
        if proba.status_code != 404:
            raise SmokeError(f"/predict_proba of a regressor answered {proba.status_code}, expected 404")

    missing = next(iter(rows[0]))
    bad_row = {name: value for name, value in rows[0].items() if name != missing}
    rejected = requests.post(f"{base_url}/predict", json={"rows": [bad_row]}, timeout=60)
    check_rejection(rejected.status_code, rejected.text, missing)
    log(f"a row without {missing!r} got {rejected.status_code} naming it")


@contextmanager
def port_forward(kubeconfig: str, service: ClusterService) -> Iterator[str]:
    """``kubectl port-forward`` the Service's port to 127.0.0.1; yield the local base URL."""
    port = free_port()
    command = [
        "kubectl",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        service.namespace,
        "port-forward",
        "--address",
        "127.0.0.1",
        f"service/{service.name}",
        f"{port}:{service.port}",
    ]
    try:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError:
        raise SmokeError("kubectl is not on PATH: install it (az aks install-cli)") from None
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def stack_spec(stack_file: Path) -> Path:
    """The model spec a stack file's ``modelSpec`` names (the program's default when unset)."""
    import yaml

    from infra.settings import PROJECT, TrainingSettings

    try:
        config = (yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{stack_file}: cannot read the stack file ({exc})") from None
    value = config.get(f"{PROJECT}:modelSpec", TrainingSettings.spec_path)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{stack_file}: {PROJECT}:modelSpec must be a path, got {value!r}")
    return stack_file.resolve().parent / value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="the stack output 'endpoint'")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig (stack output 'kubeconfig') for a cluster-internal endpoint"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--spec", type=Path, default=None, help="the model spec (default model.yaml)")
    which.add_argument(
        "--stack-file",
        type=Path,
        default=None,
        help="Pulumi.<stack>.yaml: test the model its modelSpec names",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="CSV to take rows from (default: the spec's data)"
    )
    parser.add_argument("--rows", type=int, default=20, help="rows to send (default 20)")
    parser.add_argument("--min-agreement", type=float, default=0.8, help="share of known labels to match")
    parser.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for readiness")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec or (stack_spec(args.stack_file) if args.stack_file else DEFAULT_SPEC))
        rows, expected = sample_rows(spec, args.data, args.rows)
        service = cluster_service(args.endpoint)
        if service is not None and not args.kubeconfig:
            raise ValueError(f"endpoint {args.endpoint} is cluster-internal: pass --kubeconfig to reach it")
    except ValueError as err:
        print(f"smoke: {err}", file=sys.stderr)
        return 2
    checks = {"min_agreement": args.min_agreement, "ready_timeout": args.ready_timeout}
    try:
        if service is None:
            run_smoke(args.endpoint.rstrip("/"), spec, rows, expected, **checks)
        else:
            with port_forward(args.kubeconfig, service) as url:
                run_smoke(url, spec, rows, expected, **checks)
    except SmokeError as err:
        print(f"smoke: FAILED: {err}", file=sys.stderr)
        return 1
    print("smoke: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
