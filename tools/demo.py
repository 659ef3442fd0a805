"""``make demo [SPEC=path]``: the whole ML path for one model spec, locally, no cloud account.

A real ``mlflow server`` (SQLite + artifact folder under .demo/) -> train, track and register the
spec's model (model.train; default spec model.yaml) -> build and export the bento (model.bento) ->
``bentoml serve`` the exported build context -> score held-out rows over HTTP -> print predictions in
the task's terms (class names with their probability, or numbers with their error) -> monitoring:
send the spec's data rows, then the same rows with a few numeric features scaled, and print each
feature's drift (PSI, computed from two ``/metrics`` scrapes as the Prometheus rules compute it) with
a chart (``.demo/drift.png``) -> the run's metrics, the MLflow UI URL and the build-context path ->
stop both servers (by pid, also on Ctrl-C or error).

Run it again and it reuses what the first run made while the fingerprint is unchanged: no new
training run, no bento rebuild (it says so). ``--keep-running`` leaves both servers up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import requests

from tools.processes import bentoml_serve_command, free_port, running, running_mlflow_server

if TYPE_CHECKING:
    from model.bento import BuildContext
    from model.spec import ModelSpec
    from model.train import TrainResult

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / ".demo"
DEFAULT_SPEC = REPO_ROOT / "model.yaml"
PREFERRED_MLFLOW_PORT = 5000
PREFERRED_SERVE_PORT = 3000
SAMPLES_PER_CLASS = 3
SAMPLES_REGRESSION = 8
SHIFTED_FEATURES = 3  # the demo's shift: the first numeric features, scaled by SHIFT_FACTOR
SHIFT_FACTOR = 2.0
REQUEST_ROWS = 500  # rows per request of the monitoring step (the service takes up to 1000)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def port_or_free(preferred: int) -> int:
    """``preferred`` when nothing listens on it, else any free loopback port."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


class Step:
    """Prints ``n/N what ...`` and, on exit, how long it took."""

    total = 7

    def __init__(self, number: int, what: str) -> None:
        self.number, self.what = number, what

    def __enter__(self) -> Step:
        self.started = time.monotonic()
        say(f"{self.number}/{self.total} {self.what} ...")
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            say(f"{self.number}/{self.total} done in {time.monotonic() - self.started:.0f}s")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(
    spec_path: Path,
    demo_dir: Path,
    keep_running: bool,
    *,
    mlflow_port: int | None = None,
    serve_port: int | None = None,
    data_path: Path | None = None,
    drift_chart_path: Path | None = None,
) -> int:
    """The seven steps; ``None`` ports mean 5000 / 3000 when free, else any free loopback port."""
    from model.bento import export_build_context
    from model.container import MODEL_TAG_ENV, READINESS_PATH
    from model.spec import SpecError, load_spec
    from model.train import DataValidationError, GateFailedError, TrainConfig, train_and_register

    try:
        spec = load_spec(spec_path) if data_path is None else load_spec(spec_path).with_data(data_path)
    except SpecError as exc:
        say(f"the model spec cannot be used: {exc}")
        return 64

    mlflow_dir, logs = demo_dir / "mlflow", demo_dir / "logs"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    port = mlflow_port or port_or_free(PREFERRED_MLFLOW_PORT)
    tracking = f"http://127.0.0.1:{port}"
    # The stack stops every server it started, by pid, on success, error or Ctrl-C (SIGTERM too).
    with ExitStack() as servers:
        with Step(1, f"starting mlflow server on {tracking} (store {mlflow_dir}, log {logs / 'mlflow.log'})"):
            servers.enter_context(
                running_mlflow_server(mlflow_dir, port, log_path=logs / "mlflow.log", timeout=180)
            )
            servers.callback(say, "stopping mlflow server")

        with Step(2, f"training {spec.name} ({spec.task}, {spec.estimator}) on {spec.data} (model.train)"):
            try:
                result = train_and_register(TrainConfig(spec=spec, tracking_uri=tracking))
            except DataValidationError as exc:
                say(f"training data rejected, nothing registered: {exc}")
                return 1
            except GateFailedError as exc:
                say(str(exc))
                return 2
            except SpecError as exc:
                say(f"the model spec cannot be trained, nothing registered: {exc}")
                return 64
        if result.reused:
            say(f"fingerprint {result.fingerprint[:16]} unchanged: reused {result.model_uri}, no retraining")
        else:
            say(f"trained and registered {result.model_uri} (run {result.run_id})")

        with Step(3, f"building the bento and exporting its build context for {result.model_uri}"):
            ctx = export_build_context(
                result.model_uri, result.fingerprint, demo_dir / "build-context", tracking_uri=tracking,
                bentoml_home=demo_dir / "bentoml",
            )  # fmt: skip
        say(
            f"bento {ctx.bento_tag} already built for this fingerprint: reused, not rebuilt"
            if ctx.reused
            else f"built bento {ctx.bento_tag} with {len(ctx.requirements)} pinned packages"
        )

        serve_port = serve_port or port_or_free(PREFERRED_SERVE_PORT)
        endpoint = f"http://127.0.0.1:{serve_port}"
        env = {
            MODEL_TAG_ENV: ctx.model_tag,  # as the image's Dockerfile sets it
            "BENTOML_HOME": str(demo_dir / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
        }
        with Step(4, f"starting bentoml serve of {ctx.path} on {endpoint} (log {logs / 'bentoml.log'})"):
            servers.enter_context(
                running(
                    bentoml_serve_command(ctx.path, serve_port), ready_url=f"{endpoint}{READINESS_PATH}",
                    log_path=logs / "bentoml.log", timeout=300, env=env, cwd=demo_dir,
                )
            )  # fmt: skip
            servers.callback(say, "stopping bentoml serve")

        with Step(5, "scoring held-out rows over HTTP"):
            scored = score_heldout(spec, result.run_id, tracking, endpoint)
        print_predictions(spec, scored)
        with Step(6, "monitoring: the data's rows, then shifted rows; drift from /metrics"):
            drift = measure_drift(spec, endpoint)
        print_drift(drift)
        chart = drift_chart_path or demo_dir / "drift.png"
        save_drift_chart(drift, chart, spec.name)
        say(f"drift chart: {chart}; the same PSI as recording rules: monitoring/rules.yml")
        with Step(7, "ground truth: the held-out rows' true values posted to /feedback"):
            quality = post_feedback(spec, result.run_id, tracking, endpoint)
        say(quality)
        print_summary(result, ctx, tracking, endpoint, mlflow_dir, spec.image_repository)
        if keep_running:
            say("servers are up; press Ctrl-C to stop them")
            while True:
                time.sleep(3600)
    return 0


def score_heldout(spec: ModelSpec, run_id: str, tracking: str, endpoint: str) -> list[tuple[str, str, str]]:
    """(actual, predicted, detail) for held-out rows scored over HTTP: a few of each class with the
    predicted class's probability, or a few values with the prediction's error."""
    from model.data import load_dataset, request_rows
    from model.train import load_heldout

    features = load_dataset(spec).features
    heldout = load_heldout(run_id, tracking_uri=tracking)
    if spec.is_classifier:
        sample = heldout.groupby(spec.target, group_keys=False).head(SAMPLES_PER_CLASS)
    else:
        sample = heldout.head(SAMPLES_REGRESSION)
    rows = request_rows(sample, features)
    predicted = _post(f"{endpoint}/predict", rows)
    if not spec.is_classifier:
        return [
            (f"{float(a):.4f}", f"{float(p):.4f}", f"{float(p) - float(a):+.4f}")
            for a, p in zip(sample[spec.target], predicted, strict=True)
        ]
    proba = _post(f"{endpoint}/predict_proba", rows)
    return [
        (spec.class_name(actual), str(label), f"{float(probs[label]):.4f}")
        for actual, label, probs in zip(sample[spec.target], predicted, proba, strict=True)
    ]


def post_feedback(spec: ModelSpec, run_id: str, tracking: str, endpoint: str) -> str:
    """Score the held-out rows, post their true values back with the answer's X-Prediction-Id, and
    say what the service counted (its /metrics) next to the held-out figure it exports."""
    from model.data import load_dataset, request_rows
    from model.feedback import PREDICTION_ID_HEADER
    from model.monitoring import FEEDBACK, FEEDBACK_ABSOLUTE_ERROR, REFERENCE_QUALITY
    from model.train import load_heldout

    heldout = load_heldout(run_id, tracking_uri=tracking)[:REQUEST_ROWS]
    response = requests.post(
        f"{endpoint}/predict", json={"rows": request_rows(heldout, load_dataset(spec).features)}, timeout=120
    )
    response.raise_for_status()
    truth = heldout[spec.target]
    actuals = [spec.class_name(v) for v in truth] if spec.is_classifier else [float(v) for v in truth]
    body = {"prediction_id": response.headers[PREDICTION_ID_HEADER], "predictions": response.json(),
            "actuals": actuals}  # fmt: skip
    answer = requests.post(f"{endpoint}/feedback", json=body, timeout=120)
    if answer.status_code != 200:
        raise RuntimeError(f"{endpoint}/feedback answered {answer.status_code}: {answer.text}")
    version = answer.json()["version"]
    sums = _sums(_metrics(endpoint), version)
    rows = sums.get(FEEDBACK, 0.0)
    if spec.is_classifier:
        online, metric = sums.get(f"{FEEDBACK}:true", 0.0) / rows, "accuracy"
    else:
        online, metric = sums.get(FEEDBACK_ABSOLUTE_ERROR, 0.0) / rows, "mae"
    reference = sums.get(f"{REFERENCE_QUALITY}:{metric}", float("nan"))
    return (
        f"version {version}: online {metric} {online:.4f} on {rows:.0f} feedback rows "
        f"(held-out {reference:.4f}); alerts ModelAccuracyDrop / ModelErrorRise compare the two"
    )


def _sums(metrics_text: str, version: str) -> dict[str, float]:
    """Feedback counters of ``version`` summed over workers (``<name>:true`` for right answers), and
    the reference gauges as ``<name>:<metric>``."""
    from prometheus_client.parser import text_string_to_metric_families

    from model.monitoring import REFERENCE_QUALITY

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == REFERENCE_QUALITY:
                out[f"{REFERENCE_QUALITY}:{labels['metric']}"] = sample.value
            elif sample.name.startswith("model_feedback_") and labels.get("version") == version:
                keys = [sample.name] + ([f"{sample.name}:true"] if labels.get("correct") == "true" else [])
                for key in keys:
                    out[key] = out.get(key, 0.0) + sample.value
    return out


@dataclass(frozen=True)
class Drift:
    """PSI per feature (and the predictions) for in-distribution and for shifted rows."""

    shifted: tuple[str, ...]
    before: dict[str, float]
    after: dict[str, float]
    threshold: float


def measure_drift(spec: ModelSpec, endpoint: str) -> Drift:
    """Send the spec's data rows (the distribution the model was trained on), then the same rows
    with the first SHIFTED_FEATURES numeric features scaled by SHIFT_FACTOR; PSI of each pass from
    the /metrics scrapes around it. All rows, not only the held-out ones: PSI of a few dozen rows
    is sampling noise (the alert rules wait for 200 values for that reason)."""
    from infra.alert_rules import AlertThresholds
    from model.data import load_dataset, request_rows
    from model.monitoring import drift_between, served_rows
    from model.spec import bento_name_for

    dataset = load_dataset(spec)
    features, rows = dataset.features, dataset.frame
    numeric = [f for f in features if f.type in ("double", "long")][:SHIFTED_FEATURES]
    shifted = rows.copy()
    for feature in numeric:
        scaled = shifted[feature.name] * SHIFT_FACTOR
        shifted[feature.name] = scaled.round().astype("int64") if feature.type == "long" else scaled
    service = bento_name_for(spec.name)
    scrapes = [settled_metrics(endpoint, service)]  # the held-out rows of step 5 counted
    for frame in (rows, shifted):
        payload = request_rows(frame, features)
        for start in range(0, len(payload), REQUEST_ROWS):
            _post(f"{endpoint}/predict", payload[start : start + REQUEST_ROWS])
        scrapes.append(metrics_counting(endpoint, service, served_rows(scrapes[-1], service) + len(payload)))
    return Drift(
        tuple(f.name for f in numeric),
        drift_between(scrapes[0], scrapes[1], service),
        drift_between(scrapes[1], scrapes[2], service),
        AlertThresholds().psi,
    )


def _metrics(endpoint: str) -> str:
    from model.container import METRICS_PATH

    response = requests.get(f"{endpoint}{METRICS_PATH}", timeout=60)
    response.raise_for_status()
    return response.text


def settled_metrics(endpoint: str, service: str) -> str:
    """A ``/metrics`` text with nothing of the requests before it still pending: the served rows it
    counts are the same after another FLUSH_SECONDS and more (model.monitoring)."""
    from model.monitoring import FLUSH_SECONDS, served_rows

    text = _metrics(endpoint)
    for _ in range(20):
        time.sleep(FLUSH_SECONDS * 1.25)
        again = _metrics(endpoint)
        if served_rows(again, service) == served_rows(text, service):
            return again
        text = again
    raise RuntimeError(f"{endpoint}/metrics kept changing without requests: is something else sending?")


def metrics_counting(endpoint: str, service: str, rows: float, timeout: float | None = None) -> str:
    """The first ``/metrics`` text that counts ``rows`` served rows: a worker writes its counts on a
    timer (model.monitoring.FLUSH_SECONDS); a RuntimeError after ``timeout`` seconds (default 20
    flush periods)."""
    from model.monitoring import FLUSH_SECONDS, served_rows

    wait = 20 * FLUSH_SECONDS if timeout is None else timeout
    deadline = time.monotonic() + wait
    while True:
        text = _metrics(endpoint)
        counted = served_rows(text, service)
        if counted >= rows:
            return text
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{endpoint}/metrics counts {counted:.0f} served rows, not the {rows:.0f} sent, "
                f"{wait:.0f} s after the last: see the server's log"
            )
        time.sleep(FLUSH_SECONDS / 4)


def print_drift(drift: Drift) -> None:
    width = max(len(k) for k in drift.after)
    print(f"\n  {'feature':<{width}}  {'data':>8}  {'shifted':>8}  (PSI; alert above {drift.threshold:g})")
    for key, value in drift.after.items():
        note = "  <- scaled" if key in drift.shifted else ""
        flag = " DRIFT" if value > drift.threshold else ""
        print(f"  {key:<{width}}  {drift.before[key]:>8.3f}  {value:>8.3f}{flag}{note}")
    print()


def save_drift_chart(drift: Drift, path: Path, model_name: str) -> None:
    """A bar chart of PSI per feature, the data's rows against the shifted ones, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(drift.after)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(keys) + 2), 4))
    positions = range(len(keys))
    ax.bar([p - 0.2 for p in positions], [drift.before[k] for k in keys], width=0.4, label="the data's rows")
    ax.bar([p + 0.2 for p in positions], [drift.after[k] for k in keys], width=0.4,
           label=f"{', '.join(drift.shifted)} x{SHIFT_FACTOR:g}")  # fmt: skip
    ax.axhline(drift.threshold, color="crimson", linestyle="--", label=f"alert threshold {drift.threshold:g}")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xticks(list(positions), keys, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("population stability index")
    ax.set_title(f"{model_name}: drift per feature, before and after a shift")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _post(url: str, rows: list[dict[str, object]]) -> list[Any]:
    response = requests.post(url, json={"rows": rows}, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")
    return list(response.json())


def print_predictions(spec: ModelSpec, scored: list[tuple[str, str, str]]) -> None:
    width = max([9, *(len(a) for a, _, _ in scored), *(len(p) for _, p, _ in scored)])
    detail = "P(predicted)" if spec.is_classifier else "error"
    print(f"\n  {'row':>3}  {'actual':<{width}}  {'predicted':<{width}}  {detail}")
    for index, (actual, predicted, extra) in enumerate(scored):
        print(f"  {index:>3}  {actual:<{width}}  {predicted:<{width}}  {extra}")
    print()


def print_summary(
    result: TrainResult,
    ctx: BuildContext,
    tracking: str,
    endpoint: str,
    mlflow_dir: Path,
    image_repository: str = "",
) -> None:
    metrics = ", ".join(f"{name}={value:.4f}" for name, value in sorted(result.metrics.items()))
    say(f"held-out metrics of run {result.run_id}: {metrics}")
    say(f"MLflow UI: {tracking}/#/models/{result.model_name}/versions/{result.version}")
    say(f"  (after the demo: {mlflow_ui_command(mlflow_dir)})")
    apis = "/predict, /predict_proba, /feedback" if result.task != "regression" else "/predict, /feedback"
    say(f"served at {endpoint}: POST {apis}; GET /readyz, /metrics")
    say(f"build context: {ctx.path}")
    image = f"{image_repository or ctx.image_name}:{ctx.image_tag}"  # the repository Pulumi pushes to
    say(f"  docker build -f {ctx.dockerfile} -t {image} {ctx.path}")


def mlflow_ui_command(mlflow_dir: Path) -> str:
    """The ``mlflow ui`` line that reopens the demo's store, artifacts included (same folders as the
    demo's server: runs log to mlflow-artifacts:/, which only the artifacts destination resolves)."""
    return (
        f".venv/bin/mlflow ui --backend-store-uri sqlite:///{mlflow_dir / 'mlflow.db'} "
        f"--artifacts-destination {mlflow_dir / 'artifacts'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the model spec (default model.yaml)")
    parser.add_argument(
        "--data-path", type=Path, default=None, help="train on this CSV instead of the spec's"
    )
    parser.add_argument("--demo-dir", type=Path, default=DEMO_DIR, help="local state (git-ignored)")
    parser.add_argument("--keep-running", action="store_true", help="leave the servers up until Ctrl-C")
    parser.add_argument("--drift-chart", type=Path, default=None, help="default: <demo-dir>/drift.png")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    try:
        data = args.data_path.resolve() if args.data_path else None
        chart = args.drift_chart.resolve() if args.drift_chart else None
        return run(
            args.spec.resolve(),
            args.demo_dir.resolve(),
            args.keep_running,
            data_path=data,
            drift_chart_path=chart,
        )
    except KeyboardInterrupt:
        say("interrupted; servers stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
