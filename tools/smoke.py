"""Smoke test of a deployed model endpoint, run by the deploy workflow after each `pulumi up`.

It sends rows of the training CSV to the served model and checks what a user relies on: the server
is ready, ``/predict`` returns one label in {0, 1} per row and agrees with the known labels,
``/predict_proba`` returns probabilities that sum to 1, and a bad request gets a 4xx naming the
problem (never a 5xx). ``--endpoint`` is the stack output ``endpoint``: a reachable URL is used as
it is; a cluster-internal one (``http://<service>.<namespace>.svc.cluster.local[:port]``) is reached
with ``--kubeconfig`` through a ``kubectl port-forward`` on 127.0.0.1 that this tool starts and stops
by its process id.

    python -m tools.smoke --endpoint http://127.0.0.1:3000 --data data/train.csv
    python -m tools.smoke --endpoint http://model-server.model-serving.svc.cluster.local --kubeconfig FILE

The checks are pure functions over parsed responses; only ``run_smoke`` and ``port_forward`` touch
the network or processes. Exit status: 0 passed, 1 a check failed, 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import csv
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
from model.data import FEATURES, TARGET
from tools.processes import free_port

LABELS = frozenset({0, 1})


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


def sample_rows(data_path: Path, count: int) -> tuple[list[dict[str, float]], list[int]]:
    """The first ``count`` rows of the training CSV as request rows (FEATURES only) and their labels."""
    if count < 1:
        raise ValueError(f"--rows must be at least 1, got {count}")
    try:
        handle = data_path.open(newline="")
    except OSError as err:
        raise ValueError(f"{data_path}: cannot read the sample data ({err.strerror}); pass --data") from err
    with handle:
        reader = csv.DictReader(handle)
        missing = [name for name in (*FEATURES, TARGET) if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{data_path}: header lacks column(s) {', '.join(missing)}; "
                "pass the training CSV (model.data.FEATURES plus the target)"
            )
        rows: list[dict[str, float]] = []
        labels: list[int] = []
        for line_no, record in enumerate(reader, start=2):
            try:
                rows.append({name: float(record[name]) for name in FEATURES})
                labels.append(int(float(record[TARGET])))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{data_path}, line {line_no}: a feature or the target is not a number; "
                    "fix the row or pass a clean CSV"
                ) from None
            if len(rows) == count:
                break
    if len(rows) < count:
        raise ValueError(f"{data_path}: holds {len(rows)} data row(s), fewer than --rows {count}")
    return rows, labels


def check_labels(body: Any, expected: Sequence[int], min_agreement: float) -> float:
    """Validate a /predict answer; return the share of labels that match ``expected``."""
    if not isinstance(body, list) or len(body) != len(expected):
        raise SmokeError(f"/predict: expected a list of {len(expected)} labels, got {body!r:.200}")
    bad = [label for label in body if isinstance(label, bool) or label not in LABELS]
    if bad:
        raise SmokeError(f"/predict: labels must be 0 or 1, got {bad[:5]!r}")
    agreement = sum(int(got == want) for got, want in zip(body, expected, strict=True)) / len(expected)
    if agreement < min_agreement:
        raise SmokeError(
            f"/predict: agrees with the known labels on {agreement:.0%} of {len(expected)} training rows, "
            f"below {min_agreement:.0%}: the deployed model is not the one that passed the gate"
        )
    return agreement


def check_probabilities(body: Any, count: int, tolerance: float = 1e-6) -> None:
    """Validate a /predict_proba answer: ``count`` pairs of probabilities in [0, 1] summing to 1."""
    if not isinstance(body, list) or len(body) != count:
        raise SmokeError(f"/predict_proba: expected {count} rows of probabilities, got {body!r:.200}")
    for index, probs in enumerate(body):
        if (
            not isinstance(probs, list)
            or len(probs) != len(LABELS)
            or not all(isinstance(p, int | float) and 0.0 <= p <= 1.0 for p in probs)
            or abs(sum(probs) - 1.0) > tolerance
        ):
            raise SmokeError(f"/predict_proba: row {index} is {probs!r}, not two probabilities summing to 1")


def check_rejection(status: int, text: str, missing_feature: str) -> None:
    """A row lacking a feature must get a 4xx whose message names that feature."""
    if not 400 <= status < 500:
        raise SmokeError(
            f"/predict with feature {missing_feature!r} missing answered {status}, "
            f"expected a 4xx: {text[:200]!r}"
        )
    if missing_feature not in text:
        raise SmokeError(f"/predict rejected the bad row with {status} but did not name {missing_feature!r}")


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
    rows: list[dict[str, float]],
    labels: list[int],
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
    agreement = check_labels(predict.json(), labels, min_agreement)
    log(f"/predict: {len(rows)} labels, {agreement:.0%} agree with the known labels")

    proba = requests.post(f"{base_url}/predict_proba", json={"rows": rows}, timeout=60)
    if proba.status_code != 200:
        raise SmokeError(f"/predict_proba answered {proba.status_code}: {proba.text[:300]!r}")
    check_probabilities(proba.json(), len(rows))
    log("/predict_proba: probabilities sum to 1")

    missing = FEATURES[0]
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="the stack output 'endpoint'")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig (stack output 'kubeconfig') for a cluster-internal endpoint"
    )
    parser.add_argument("--data", type=Path, default=Path("data/train.csv"), help="CSV to take rows from")
    parser.add_argument("--rows", type=int, default=20, help="rows to send (default 20)")
    parser.add_argument("--min-agreement", type=float, default=0.8, help="share of known labels to match")
    parser.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for readiness")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows, labels = sample_rows(args.data, args.rows)
        service = cluster_service(args.endpoint)
        if service is not None and not args.kubeconfig:
            raise ValueError(f"endpoint {args.endpoint} is cluster-internal: pass --kubeconfig to reach it")
    except ValueError as err:
        print(f"smoke: {err}", file=sys.stderr)
        return 2
    checks = {"min_agreement": args.min_agreement, "ready_timeout": args.ready_timeout}
    try:
        if service is None:
            run_smoke(args.endpoint.rstrip("/"), rows, labels, **checks)
        else:
            with port_forward(args.kubeconfig, service) as url:
                run_smoke(url, rows, labels, **checks)
    except SmokeError as err:
        print(f"smoke: FAILED: {err}", file=sys.stderr)
        return 1
    print("smoke: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
