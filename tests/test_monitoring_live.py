"""Monitoring with real components: ``bentoml serve`` of the default model with 2 worker processes,
and a real Prometheus (Debian's) scraping it with the project's rules on loopback.

- the counters of both workers add up on ``/metrics`` (multiprocess mode), the names and labels the
  rules use are the ones a real server exports (ours and BentoML's);
- in-distribution rows (the held-out rows) keep every feature's PSI under the threshold, shifted
  rows push exactly the shifted features over it, and the drift alert fires in Prometheus;
- ground truth posted to /feedback with the answers' X-Prediction-Id is counted for the version that
  answered, bad feedback gets a 400 naming the problem, and a low online accuracy fires
  ModelAccuracyDrop in Prometheus.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml

from infra.alert_rules import (
    FEATURE_PSI,
    FEEDBACK_ACCURACY,
    LATENCY_BUCKETS,
    REQUESTS,
    STATUS_LABEL,
    AlertThresholds,
    rule_groups,
    to_prometheus_yaml,
)
from model import monitoring
from model.feedback import PREDICTION_ID_HEADER, prediction_id
from tests.conftest import ServedExample, free_port
from tools.demo import metrics_counting, settled_metrics
from tools.processes import bentoml_serve_command, running

if TYPE_CHECKING:
    import pandas as pd

    from model.bento import BuildContext
    from model.train import TrainResult

pytestmark = pytest.mark.servers

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
WORKERS = 2
SHIFTED = ("mean_radius", "mean_texture", "worst_area")
SHIFT_FACTOR = 2.0
WINDOW_S = 20  # the rules' window in this test: long enough for several scrapes, short to wait for
# The feedback window outlasts the test: feedback posted once stays in it.
THRESHOLDS = AlertThresholds(window=f"{WINDOW_S}s", feedback_window="10m")
FEEDBACK_KEY = b"k" * 48
FEEDBACK_ROWS, WRONG_ROWS = 150, 45  # an online accuracy of 70%, far under the model's held-out one
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def context(
    trained: TrainResult, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> BuildContext:
    from model.bento import export_build_context

    work = tmp_path_factory.mktemp("monitoring")
    return export_build_context(
        trained.model_uri, trained.fingerprint, work / "context", tracking_uri=mlflow_server,
        bentoml_home=work / "bentoml",
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(context: BuildContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``bentoml serve`` with WORKERS worker processes (BentoML's JSON config override), and a
    prediction id key file as the Deployment mounts one."""
    from model.container import FEEDBACK_KEY_FILE_ENV, MODEL_TAG_ENV, READINESS_PATH

    work = tmp_path_factory.mktemp("serve-2-workers")
    (work / "feedback-key").write_bytes(FEEDBACK_KEY + b"\n")
    url = f"http://127.0.0.1:{(port := free_port())}"
    env = {
        FEEDBACK_KEY_FILE_ENV: str(work / "feedback-key"),
        MODEL_TAG_ENV: context.model_tag,
        "BENTOML_HOME": str(work / "home"),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_CONFIG_OVERRIDES": json.dumps({"services": {context.image_name: {"workers": WORKERS}}}),
    }
    with running(
        bentoml_serve_command(context.path, port), ready_url=f"{url}{READINESS_PATH}",
        log_path=work / "serve.log", timeout=300, env=env, cwd=work,
    ):  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def heldout_rows(trained: TrainResult, mlflow_server: str) -> pd.DataFrame:
    from model.train import load_heldout

    return load_heldout(trained.run_id, tracking_uri=mlflow_server)


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    from model.data import load_dataset, request_rows
    from model.spec import load_spec
    from tests.conftest import EXAMPLE_SPECS

    return request_rows(frame, load_dataset(load_spec(EXAMPLE_SPECS["default"])).features)


def post(url: str, rows: list[dict[str, Any]]) -> None:
    response = requests.post(f"{url}/predict", json={"rows": rows}, timeout=120)
    assert response.status_code == 200, response.text


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def poll(check: Callable[[], Any], what: str, timeout: float = TIMEOUT_S, every: float = 1.0) -> Any:
    """``check()``'s first truthy answer; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"{what} not seen within {timeout:.0f}s (last: {last!r})")


def counting(server: str, service: str, rows: float) -> str:
    """The first /metrics text that counts ``rows`` served rows (tools.demo.metrics_counting: each
    worker writes its counts on a timer); fails if it counts more."""
    text = metrics_counting(server, service, rows, timeout=TIMEOUT_S)
    assert monitoring.served_rows(text, service) == rows
    return text


def test_both_workers_count_into_one_metrics_page(
    server: str, context: BuildContext, heldout_rows: pd.DataFrame, trained: TrainResult
) -> None:
    service = context.image_name
    rows = rows_of(heldout_rows.head(10))
    before = settled_metrics(server, service)
    sent = 0

    def served_by_both() -> set[str] | None:
        nonlocal sent
        post(server, rows)
        sent += len(rows)
        text = requests.get(f"{server}/metrics", timeout=30).text
        pids = {
            labels["pid"] for labels, _ in samples(text, "bentoml_service_last_request_timestamp_seconds")
        }
        return pids if len(pids) >= WORKERS else None

    pids = poll(served_by_both, "requests served by both workers", every=0.1)
    assert len(pids) == WORKERS
    after = counting(server, service, monitoring.served_rows(before, service) + sent)

    def total(text: str, name: str, **match: str) -> float:
        return sum(
            v for labels, v in samples(text, name) if all(labels.get(k) == m for k, m in match.items())
        )

    for feature in ("mean_radius", "worst_area"):
        counted = total(after, monitoring.FEATURE_BINS, feature=feature, service_name=service) - total(
            before, monitoring.FEATURE_BINS, feature=feature, service_name=service
        )
        assert counted == sent, feature  # every row of both workers, once
    predicted = total(after, monitoring.PREDICTION_BINS) - total(before, monitoring.PREDICTION_BINS)
    assert predicted == sent
    # The constant gauges are one series per bin, not one per worker.
    reference = [
        labels
        for labels, _ in samples(after, monitoring.FEATURE_REFERENCE)
        if labels["feature"] == "mean_radius"
    ]
    assert len(reference) == len({labels["bin"] for labels in reference})
    assert "pid" not in reference[0]
    info = samples(after, monitoring.INFO)
    assert info == [
        (
            {"service_name": service, "model": trained.model_name, "version": trained.version,
             "fingerprint": trained.fingerprint},
            1.0,
        )
    ]  # fmt: skip


def test_bentoml_exports_what_the_rules_read(
    server: str, context: BuildContext, heldout_rows: pd.DataFrame
) -> None:
    """BentoML 1.4's request counter and latency histogram, with the labels the rules match on."""
    post(server, rows_of(heldout_rows.head(1)))
    text = requests.get(f"{server}/metrics", timeout=30).text
    requests_seen = samples(text, REQUESTS)
    predict = [labels for labels, _ in requests_seen if labels.get("endpoint") == "/predict"]
    assert predict and all(labels["service_name"] == context.image_name for labels in predict)
    assert {labels[STATUS_LABEL] for labels in predict} >= {"200"}
    buckets = [labels for labels, _ in samples(text, LATENCY_BUCKETS) if labels.get("endpoint") == "/predict"]
    assert buckets and {"le", "service_name"} <= set(buckets[0])


# ---- a real Prometheus ----------------------------------------------------------------------------


@pytest.fixture
def prometheus(server: str, context: BuildContext, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping the server every second, with the rules over a WINDOW_S window."""
    if not Path(PROMETHEUS).is_file():
        pytest.skip("prometheus missing: make system-deps installs Debian's prometheus")
    groups = rule_groups(context.image_name, THRESHOLDS, interval="1s", rate_window=f"{WINDOW_S}s")
    (tmp_path / "rules.yml").write_text(to_prometheus_yaml(groups), encoding="utf-8")
    target = server.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [{"job_name": "model", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    url = f"http://127.0.0.1:{(port := free_port())}"
    command = [
        PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    with running(command, ready_url=f"{url}/-/ready", log_path=tmp_path / "prometheus.log", timeout=120):
        yield url


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
    response.raise_for_status()
    return list(response.json()["data"]["result"])


def psi_by_feature(prometheus: str, service: str) -> dict[str, float]:
    return {
        r["metric"]["feature"]: float(r["value"][1])
        for r in query(prometheus, f'{FEATURE_PSI}{{service_name="{service}"}}')
    }


def firing(prometheus: str, alert: str) -> set[str]:
    alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
    return {
        a["labels"].get("feature", "")
        for a in alerts
        if a["labels"]["alertname"] == alert and a["state"] == "firing"
    }


def test_drift_of_shifted_features_fires_in_prometheus(
    prometheus: str, server: str, context: BuildContext, heldout_rows: pd.DataFrame
) -> None:
    service, threshold = context.image_name, THRESHOLDS.psi
    features = list(rows_of(heldout_rows.head(1))[0])
    in_distribution = rows_of(heldout_rows)
    shifted_frame = heldout_rows.copy()
    for name in SHIFTED:
        shifted_frame[name] = shifted_frame[name] * SHIFT_FACTOR
    shifted = rows_of(shifted_frame)
    poll(lambda: query(prometheus, 'up{job="model"} == 1'), "Prometheus scraping the server")

    # In distribution, for longer than the window: every feature's PSI stays under the threshold.
    # Judged once the window holds only whole requests (a scrape may land between two counters).
    start, seen = time.monotonic(), []
    while time.monotonic() - start < 2 * WINDOW_S:
        post(server, in_distribution)
        psi = psi_by_feature(prometheus, service)
        if time.monotonic() - start > WINDOW_S + 2 and len(psi) == len(features):
            seen.append(psi)
        time.sleep(0.5)
    assert len(seen) >= 5, "Prometheus recorded too few PSI evaluations"
    worst = max((v, k) for psi in seen for k, v in psi.items())
    assert worst[0] < threshold, f"in-distribution rows drifted: {worst}"
    assert firing(prometheus, "ModelFeatureDrift") == set()

    # Shifted: exactly the shifted features cross the threshold, and the alert fires for them.
    def drifted() -> set[str] | None:
        post(server, shifted)
        over = {k for k, v in psi_by_feature(prometheus, service).items() if v > threshold}
        return over if over == set(SHIFTED) else None

    poll(drifted, f"PSI over {threshold} for exactly {SHIFTED}", every=0.5)

    def alerted() -> set[str] | None:
        post(server, shifted)
        fired = firing(prometheus, "ModelFeatureDrift")
        return fired if fired >= set(SHIFTED) else None

    assert poll(alerted, "ModelFeatureDrift firing", every=0.5) == set(SHIFTED)
    for _ in range(5):  # and it stays exactly those while the shift goes on
        post(server, shifted)
        assert {k for k, v in psi_by_feature(prometheus, service).items() if v > threshold} == set(SHIFTED)
        time.sleep(1)


@pytest.mark.parametrize("key", ["wine", "diabetes", "churn"])
def test_every_task_and_feature_type_is_counted_by_a_real_server(
    served_example: Callable[[str], ServedExample], mlflow_server: str, key: str
) -> None:
    """Multiclass, regression, and string/boolean/integer features: each served row lands once in
    every feature's bins and the prediction bins. (No PSI bound: 54 held-out wine rows in 10 bins
    are sampling noise, which is why the drift alerts wait for 200 values.)"""
    from model.data import load_dataset, request_rows
    from model.train import load_heldout

    example = served_example(key)
    heldout = load_heldout(example.result.run_id, tracking_uri=mlflow_server)
    features = load_dataset(example.spec).features
    service = example.spec.bento_name
    before = settled_metrics(example.url, service)  # other tests' requests on this server counted
    post(example.url, request_rows(heldout, features))
    after = counting(example.url, service, monitoring.served_rows(before, service) + len(heldout))
    old, new = (
        monitoring.bin_counts(before, service)["counts"],
        monitoring.bin_counts(after, service)["counts"],
    )
    served = {key: sum(new[key].values()) - sum(old.get(key, {}).values()) for key in new}
    assert served == {name: len(heldout) for name in [*(f.name for f in features), monitoring.PREDICTION]}
    drift = monitoring.drift_between(before, after, service)
    assert set(drift) == set(served) and all(value >= 0 for value in drift.values())


def answered(server: str, path: str, rows: list[dict[str, Any]]) -> tuple[str, Any]:
    response = requests.post(f"{server}{path}", json={"rows": rows}, timeout=120)
    assert response.status_code == 200, response.text
    return response.headers[PREDICTION_ID_HEADER], response.json()


def test_feedback_counts_for_the_version_that_answered_and_fires_the_accuracy_alert(
    prometheus: str, server: str, context: BuildContext, heldout_rows: pd.DataFrame, trained: TrainResult
) -> None:
    service = context.image_name
    rows = rows_of(heldout_rows.sample(n=FEEDBACK_ROWS, replace=True, random_state=3))
    # Prometheus has seen the (pre-created) feedback counters at 0 before any feedback arrives.
    poll(
        lambda: query(prometheus, f'{monitoring.FEEDBACK}{{service_name="{service}"}} == 0'), "zero counters"
    )
    pid, answers = answered(server, "/predict", rows)
    assert pid == prediction_id(trained.version, answers, FEEDBACK_KEY)  # keyed by the mounted key
    proba_id, proba = answered(server, "/predict_proba", rows[:3])  # its id covers the top classes
    assert proba_id == prediction_id(trained.version, [max(p, key=p.get) for p in proba], FEEDBACK_KEY)
    names = sorted(set(proba[0]))
    actuals = [a if i >= WRONG_ROWS else next(n for n in names if n != a) for i, a in enumerate(answers)]

    def feedback(body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{server}/feedback", json=body, timeout=120)

    bad = [
        ({"prediction_id": pid, "predictions": answers[::-1], "actuals": actuals}, "are not the answers of"),
        ({"prediction_id": pid, "predictions": answers, "actuals": ["nope", *actuals[1:]]}, "actuals[0]"),
        ({"prediction_id": "x", "predictions": answers, "actuals": actuals}, "is not a prediction id"),
        # made up without the key, for answers that were never given: refused
        (
            {"prediction_id": prediction_id("99", answers), "predictions": answers, "actuals": actuals},
            "not the",
        ),
        ({"prediction_id": pid, "predictions": answers}, "actuals"),
    ]
    for body, fragment in bad:
        response = feedback(body)
        assert response.status_code == 400 and fragment in response.text, (fragment, response.text)
    response = feedback({"prediction_id": pid, "predictions": answers, "actuals": actuals})
    assert response.status_code == 200, response.text
    assert response.json() == {"rows": FEEDBACK_ROWS, "version": trained.version}

    text = requests.get(f"{server}/metrics", timeout=30).text
    counted = {
        labels["correct"]: value
        for labels, value in samples(text, monitoring.FEEDBACK)
        if labels["version"] == trained.version
    }
    assert counted == {"true": FEEDBACK_ROWS - WRONG_ROWS, "false": WRONG_ROWS}  # once, not per bad try
    reference = samples(text, monitoring.REFERENCE_QUALITY)
    assert [(labels["metric"], labels["version"]) for labels, _ in reference] == [
        ("accuracy", trained.version)
    ]
    held_out = reference[0][1]
    assert held_out == pytest.approx(trained.metrics["accuracy"])

    expected = (FEEDBACK_ROWS - WRONG_ROWS) / FEEDBACK_ROWS
    selector = f'{{service_name="{service}", version="{trained.version}"}}'

    def online_accuracy() -> float | None:
        result = query(prometheus, f"{FEEDBACK_ACCURACY}{selector}")
        return float(result[0]["value"][1]) if result else None

    assert poll(online_accuracy, FEEDBACK_ACCURACY) == pytest.approx(expected, abs=1e-9)

    def alerted() -> list[dict[str, Any]] | None:
        alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
        mine = [
            a for a in alerts if a["labels"]["alertname"] == "ModelAccuracyDrop" and a["state"] == "firing"
        ]
        return mine or None

    fired = poll(alerted, "ModelAccuracyDrop firing")
    assert [a["labels"]["version"] for a in fired] == [trained.version]
    assert f"accuracy {expected:.0%}" in fired[0]["annotations"]["summary"]
