"""Train the classifier, track it in MLflow, register it and gate it: ``train_and_register``.

Order of effects: validate the data (no MLflow call before it passes) -> fingerprint (over
``model.params.fingerprint_params``, as the Pulumi program computes it) -> reuse a version with the
same fingerprint (no training) and gate it again with the current thresholds -> otherwise fit a
StandardScaler + LogisticRegression pipeline on a stratified split, log params, metrics, plots, the
held-out rows and the model (skops format, signature, input example, exact pinned requirements),
register it, and decide the gate (thresholds, and never worse than the champion by more than the
margin). A passed version gets the ``candidate`` alias; a failed one is tagged and never aliased.

CLI: ``python -m model.train --data-path data/train.csv --model-output DIR [--json]``; progress on
stderr, the JSON result as the last stdout line. Exit 0 passed, 1 bad data, 2 gate failed, 3 any
other failure (MLflow unreachable, missing lock file or package, a bad --model-output folder: the
cause is printed, no traceback), 64 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from model import plots
from model.data import FEATURES, TARGET, DataValidationError, load_dataset
from model.fingerprint import MODEL_DIR, compute_fingerprint
from model.gate import GateFailure, GateThresholds, evaluate_gate
from model.metrics import compute_metrics
from model.params import DEFAULT_MIN_ROWS_PER_CLASS, ModelParams, fingerprint_params
from model.pins import pinned_closure

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from mlflow.tracking import MlflowClient

    from model.registry import VersionInfo

__all__ = [
    "DataValidationError",
    "GateFailedError",
    "GateThresholds",
    "ModelParams",
    "TrainConfig",
    "TrainResult",
    "load_heldout",
    "train_and_register",
]

REPO_ROOT = MODEL_DIR.parent
DEFAULT_MODEL_NAME = "cancer-classifier"
DEFAULT_EXPERIMENT = "cancer-classifier"
MODEL_ARTIFACT_NAME = "model"
HELDOUT_ARTIFACT = "heldout/heldout.csv"
# skops is MLflow's default and loads only allow-listed types; a scaler + logistic regression
# pipeline needs no extra trusted types, so the safe format costs nothing here.
SERIALIZATION_FORMAT = "skops"
GATE_PASSED_REASON = "all thresholds met"

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainConfig:
    """One training request. ``None`` URIs/names fall back to MLFLOW_* env vars, then defaults."""

    data_path: Path
    params: ModelParams = field(default_factory=ModelParams)
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    model_name: str = DEFAULT_MODEL_NAME
    experiment_name: str | None = None
    tracking_uri: str | None = None
    model_output: Path | None = None
    requirements_path: Path = REPO_ROOT / "requirements.txt"
    code_dir: Path = MODEL_DIR
    min_rows_per_class: int = DEFAULT_MIN_ROWS_PER_CLASS


@dataclass(frozen=True)
class TrainResult:
    """The machine-readable outcome (``--json``)."""

    run_id: str
    model_name: str
    version: str
    model_uri: str
    metrics: dict[str, float]
    fingerprint: str
    gate_passed: bool
    reused: bool
    heldout_uri: str
    gate_failures: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class GateFailedError(RuntimeError):
    """The quality gate refused the version; ``result`` and ``failures`` say which metric and by how much."""

    def __init__(self, result: TrainResult, failures: Sequence[GateFailure]) -> None:
        self.result = result
        self.failures = list(failures)
        details = "; ".join(f.describe() for f in failures)
        super().__init__(
            f"quality gate failed for {result.model_name} version {result.version}: {details}. "
            "The version is tagged gate=failed and has no alias."
        )


def build_pipeline(params: ModelParams) -> Pipeline:
    """The untrained estimator: scale, then logistic regression."""
    return Pipeline(
        [
            ("scaler", StandardScaler()),
            ("classifier", LogisticRegression(C=params.C, max_iter=params.max_iter)),
        ]
    )


def split(frame: pd.DataFrame, params: ModelParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified (train, held-out) frames, reproducible for a given ``random_state``."""
    train, heldout = train_test_split(
        frame, test_size=params.test_size, random_state=params.random_state, stratify=frame[TARGET]
    )
    return train, heldout


def resolve_tracking(config: TrainConfig) -> tuple[str, str]:
    """(tracking URI, experiment name) from the config, else the environment, else defaults."""
    import mlflow

    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    experiment = config.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    return uri, experiment


def train_and_register(config: TrainConfig, progress: Progress = _stderr) -> TrainResult:
    """Validate, fingerprint, then reuse, or train + register + gate. A failed gate raises GateFailedError."""
    progress(f"validating {config.data_path}")
    frame = load_dataset(config.data_path, min_rows_per_class=config.min_rows_per_class)
    params = fingerprint_params(config.params, config.min_rows_per_class)
    fingerprint = compute_fingerprint(config.data_path, params, config.requirements_path, config.code_dir)
    progress(f"{len(frame)} rows valid; fingerprint {fingerprint[:16]}")
    check_model_output(config.model_output)  # before any MLflow write: it would be replaced at the end

    import mlflow
    from mlflow.tracking import MlflowClient

    from model import registry

    tracking_uri, experiment = resolve_tracking(config)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    champion = registry.version_by_alias(client, config.model_name, registry.CHAMPION_ALIAS)
    gated = registry.find_gated_version(client, config.model_name, fingerprint)
    if gated is not None:
        existing, passed_before = gated
        before = "passed" if passed_before else "failed"
        progress(
            f"version {existing.version} has this fingerprint (gate {before} before): "
            "re-gating it with the current thresholds, no training"
        )
        result = replace(
            _result(existing.run_id, config.model_name, existing.version, existing.metrics, fingerprint),
            reused=True,
        )
        rival = champion if champion and champion.version != existing.version else None
        failures = evaluate_gate(existing.metrics, config.thresholds, rival.metrics if rival else None)
        if failures:
            raise GateFailedError(_failed(result, failures), failures)
        registry.mark_gate(
            client, config.model_name, existing.version, passed=True, reason=GATE_PASSED_REASON
        )
    else:
        fitted = fit_and_evaluate(frame, config.params, progress)
        mlflow.set_experiment(experiment)
        result, failures = _track_register_and_gate(
            client, config, params, fingerprint, fitted, champion, progress
        )
        if failures:
            raise GateFailedError(_failed(result, failures), failures)
        progress(f"gate passed: {result.model_uri} has alias '{registry.CANDIDATE_ALIAS}'")
    _write_model_output(config.model_output, result.model_uri, tracking_uri, progress)
    return result


@dataclass(frozen=True)
class Fitted:
    """A fitted pipeline and its evaluation on the held-out rows."""

    pipeline: Pipeline
    train: pd.DataFrame
    heldout: pd.DataFrame
    proba: np.ndarray  # positive-class probabilities on ``heldout``
    metrics: dict[str, float]


def fit_and_evaluate(frame: pd.DataFrame, params: ModelParams, progress: Progress = _stderr) -> Fitted:
    """Split, fit and score; no tracking."""
    train, heldout = split(frame, params)
    progress(
        f"fitting on {len(train)} rows, holding out {len(heldout)} (stratified, seed {params.random_state})"
    )
    pipeline = build_pipeline(params).fit(train[list(FEATURES)], train[TARGET])
    proba = pipeline.predict_proba(heldout[list(FEATURES)])[:, 1]
    metrics = compute_metrics(heldout[TARGET].to_numpy(), proba)
    progress("held-out " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return Fitted(pipeline, train, heldout, proba, metrics)


def _track_register_and_gate(
    client: MlflowClient,
    config: TrainConfig,
    params: dict[str, object],
    fingerprint: str,
    fitted: Fitted,
    champion: VersionInfo | None,
    progress: Progress,
) -> tuple[TrainResult, list[GateFailure]]:
    """One MLflow run: params, metrics, plots, held-out rows, model -> registered version -> gate tags."""
    import mlflow

    from model import registry

    name = config.model_name
    with mlflow.start_run() as run:
        mlflow.set_tag(registry.FINGERPRINT_TAG, fingerprint)
        mlflow.log_params({**params, "n_train": len(fitted.train), "n_heldout": len(fitted.heldout)})
        mlflow.log_params({f"gate.{k}": v for k, v in asdict(config.thresholds).items()})
        mlflow.log_params({"data_path": str(config.data_path), "serialization_format": SERIALIZATION_FORMAT})
        mlflow.log_metrics(fitted.metrics)
        _log_plots(fitted.heldout[TARGET].to_numpy(), fitted.proba)
        _log_heldout(fitted.heldout)
        progress("logging and registering the model")
        info = _log_model(fitted.pipeline, fitted.heldout[list(FEATURES)], name)
        version = str(info.registered_model_version)
        client.set_model_version_tag(name, version, registry.FINGERPRINT_TAG, fingerprint)
        failures = evaluate_gate(fitted.metrics, config.thresholds, champion.metrics if champion else None)
        reason = "; ".join(f.describe() for f in failures) or GATE_PASSED_REASON
        registry.mark_gate(client, name, version, passed=not failures, reason=reason)
        mlflow.set_tag(registry.GATE_TAG, "failed" if failures else "passed")
    return _result(run.info.run_id, name, version, fitted.metrics, fingerprint), failures


def _result(run_id: str, name: str, version: str, metrics: dict[str, float], fingerprint: str) -> TrainResult:
    return TrainResult(
        run_id=run_id,
        model_name=name,
        version=version,
        model_uri=f"models:/{name}/{version}",
        metrics=metrics,
        fingerprint=fingerprint,
        gate_passed=True,
        reused=False,
        heldout_uri=f"runs:/{run_id}/{HELDOUT_ARTIFACT}",
    )


def _failed(result: TrainResult, failures: Sequence[GateFailure]) -> TrainResult:
    return replace(result, gate_passed=False, gate_failures=[f.describe() for f in failures])


def _log_plots(y: np.ndarray, p: np.ndarray) -> None:
    import mlflow

    for fig, path in (
        (plots.confusion_matrix_figure(y, (p >= 0.5).astype("int64")), "plots/confusion_matrix.png"),
        (plots.roc_curve_figure(y, p), "plots/roc_curve.png"),
    ):
        mlflow.log_figure(fig, path)
        plots.close(fig)


def _log_heldout(heldout: pd.DataFrame) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(HELDOUT_ARTIFACT).name
        heldout.to_csv(path, index=False, lineterminator="\n")
        mlflow.log_artifact(str(path), artifact_path=str(Path(HELDOUT_ARTIFACT).parent))


def _log_model(pipeline: Pipeline, x_test: pd.DataFrame, name: str) -> ModelInfo:
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(x_test, pipeline.predict(x_test))
    return mlflow.sklearn.log_model(
        pipeline,
        name=MODEL_ARTIFACT_NAME,
        signature=signature,
        input_example=x_test.head(3),
        pip_requirements=pinned_closure(),
        serialization_format=SERIALIZATION_FORMAT,
        registered_model_name=name,
    )


def check_model_output(out: Path | None) -> None:
    """Refuse an output folder that is not empty and not an MLflow model folder (it gets replaced)."""
    if out is None or not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / "MLmodel").is_file()):
        raise FileExistsError(
            f"--model-output {out} exists, is not empty and is not an MLflow model folder; "
            "choose an empty or new folder (it is replaced on each run)"
        )


def _write_model_output(out: Path | None, model_uri: str, tracking_uri: str, progress: Progress) -> None:
    """Download the registered model into ``out`` (an MLflow model folder), replacing an older one."""
    if out is None:
        return
    import mlflow

    out = Path(out)
    check_model_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=str(staging), tracking_uri=tracking_uri
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"wrote {model_uri} to {out}")


def load_heldout(run_id: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """The held-out rows (FEATURES as float64 + TARGET) a training run logged, for parity checks."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=HELDOUT_ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
        )
        frame = pd.read_csv(local)
    frame[list(FEATURES)] = frame[list(FEATURES)].astype("float64")
    return frame


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a usage error, exit 64)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(64, f"{self.prog}: error: {message}\n")  # 64 = EX_USAGE; 2 means "gate failed"


def parse_args(argv: Sequence[str] | None) -> tuple[TrainConfig, bool]:
    """(config, whether to print JSON) from the command line."""
    defaults, gate = ModelParams(), GateThresholds()
    p = _Parser(prog="python -m model.train", description=__doc__.splitlines()[0])
    p.add_argument("--data-path", type=Path, default=REPO_ROOT / "data" / "train.csv")
    p.add_argument("--model-output", type=Path, default=None, help="write the MLflow model folder here")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last stdout line")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--experiment", default=None, help="default: $MLFLOW_EXPERIMENT_NAME or cancer-classifier")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    p.add_argument("--requirements", type=Path, default=REPO_ROOT / "requirements.txt")
    p.add_argument("--min-rows-per-class", type=_positive_int, default=DEFAULT_MIN_ROWS_PER_CLASS)
    p.add_argument("--C", type=float, default=defaults.C, dest="C")
    p.add_argument("--max-iter", type=int, default=defaults.max_iter)
    p.add_argument("--test-size", type=float, default=defaults.test_size)
    p.add_argument("--seed", type=int, default=defaults.random_state)
    for name in ("min_accuracy", "min_f1", "min_roc_auc", "max_log_loss", "champion_margin"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(gate, name))
    a = p.parse_args(argv)
    try:
        config = TrainConfig(
            data_path=a.data_path,
            params=ModelParams(C=a.C, max_iter=a.max_iter, test_size=a.test_size, random_state=a.seed),
            thresholds=GateThresholds(
                a.min_accuracy, a.min_f1, a.min_roc_auc, a.max_log_loss, a.champion_margin
            ),
            model_name=a.model_name,
            experiment_name=a.experiment,
            tracking_uri=a.tracking_uri,
            model_output=a.model_output,
            requirements_path=a.requirements,
            min_rows_per_class=a.min_rows_per_class,
        )
    except ValueError as exc:
        p.error(str(exc))
    return config, bool(a.json)


def describe_failure(exc: BaseException, config: TrainConfig) -> str:
    """What failed (the exception and its cause chain), where (tracking URI, files) and what to do."""
    causes: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(causes) < 4:
        causes.append(f"{type(seen).__name__}: {str(seen).strip() or '(no message)'}")
        seen = seen.__cause__ or seen.__context__
    tracking = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "(MLflow default: ./mlruns)"
    return "\n  ".join(
        [
            "training failed (not a data or gate problem):",
            *causes,
            f"tracking URI: {tracking}; data: {config.data_path}; requirements lock: "
            f"{config.requirements_path}; model output: {config.model_output or '(none)'}",
            "check that the MLflow server answers at that URI, the files exist and the venv has the "
            "locked packages (make venv), then run again. Exit code 3.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    try:
        # MLflow prints run links on stdout; keep stdout for the result alone.
        with contextlib.redirect_stdout(sys.stderr):
            result = train_and_register(config)
    except DataValidationError as exc:
        print(f"data validation failed, nothing was logged or registered:\n  {exc}", file=sys.stderr)
        return 1
    except GateFailedError as exc:
        print(str(exc), file=sys.stderr)
        print(exc.result.to_json() if as_json else json.dumps(exc.result.gate_failures))
        return 2
    except Exception as exc:  # everything else: print the cause, not a traceback, and exit 3
        print(describe_failure(exc, config), file=sys.stderr)
        return 3
    print(result.to_json() if as_json else f"{result.model_uri} ({'reused' if result.reused else 'trained'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
