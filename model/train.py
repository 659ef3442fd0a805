"""Train a model spec, track it in MLflow, register it and gate it: ``train_and_register``.

Order of effects: read the spec (``model.spec``) and validate the data (``model.data``; no MLflow
call before both pass) -> training fingerprint (``model.fingerprint``, as the Pulumi program
computes it) -> reuse a version with the same fingerprint (no training) and gate it again with the
current gate -> otherwise build the spec's estimator behind its preprocessing (numbers scaled,
categories encoded, per the spec), fit it on the spec's split (stratified for classifiers), log
params, metrics and plots of the task, the held-out rows and the model (signature from the typed
frame, input example, the task and class names as metadata, exact pinned requirements of the
estimator's packages), register it, and decide the gate (bounds, and never worse than the champion
by more than the margin). A passed version gets the ``candidate`` alias; a failed one is tagged and
never aliased.

CLI: ``python -m model.train [--spec model.yaml] [--data-path CSV] [--model-output DIR] [--json]``
plus overrides (``--param KEY=VALUE``, ``--gate METRIC.min=VALUE``, ``--test-size``, ``--seed``,
``--min-rows-per-class``); progress on stderr, the result as the last stdout line. Exit 0 passed
(or reused), 1 bad data, 2 gate failed, 3 any other failure (MLflow unreachable, a missing package,
a bad --model-output folder: the cause is printed, no traceback), 64 usage or a bad spec.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import pandas as pd
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from model import plots
from model.data import Dataset, DataValidationError, load_dataset
from model.fingerprint import MODEL_DIR, REPO_ROOT, training_fingerprint
from model.gate import Gate, GateConfigError, GateFailure, evaluate_gate
from model.metrics import compute_metrics
from model.pins import model_roots, pinned_closure
from model.spec import DEFAULT_SPEC, NAME_RE, ModelSpec, SpecError, load_spec

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from mlflow.tracking import MlflowClient

    from model.registry import VersionInfo

__all__ = [
    "DataValidationError",
    "GateFailedError",
    "SpecError",
    "TrainConfig",
    "TrainResult",
    "load_heldout",
    "train_and_register",
]

MODEL_ARTIFACT_NAME = "model"
HELDOUT_ARTIFACT = "heldout/heldout.csv"
GATE_PASSED_REASON = "all thresholds met"
# Keys of the logged model's MLflow metadata that the service reads (model.service).
METADATA_TASK, METADATA_CLASSES, METADATA_CLASS_NAMES, METADATA_CATEGORIES = (
    "task",
    "classes",
    "class_names",
    "categories",
)

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainConfig:
    """One training request. ``None`` URIs/names fall back to MLFLOW_* env vars, then the spec's name."""

    spec: ModelSpec
    model_name: str | None = None  # default: the spec's registered model name
    experiment_name: str | None = None
    tracking_uri: str | None = None
    model_output: Path | None = None
    code_dir: Path = MODEL_DIR

    @property
    def name(self) -> str:
        return self.model_name or self.spec.registered_model_name


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
    task: str = ""
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


def make_estimator(spec: ModelSpec) -> Any:
    """The spec's untrained estimator: ``Class(**params)`` or ``factory(**params)``."""
    path = spec.estimator
    module_name, attr = path.split(":", 1) if ":" in path else path.rsplit(".", 1)
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))  # a factory in this repository (examples/...)
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SpecError(
            spec.path,
            "estimator",
            f"cannot import {path!r} ({type(exc).__name__}: {exc})",
            "install its package (and list it under `packages:`) or fix the import path",
        ) from exc
    try:
        estimator = target(**dict(spec.params))
    except TypeError as exc:
        raise SpecError(
            spec.path, "params", f"{path} refused them ({exc})", "use its keyword arguments"
        ) from exc
    validate = getattr(estimator, "_validate_params", None)  # scikit-learn's own parameter check
    if callable(validate):
        try:
            validate()
        except (TypeError, ValueError) as exc:  # sklearn's InvalidParameterError is both
            raise SpecError(
                spec.path, "params", f"{path} rejects a value ({exc})", "use a value it accepts"
            ) from exc
    for method in ("fit", "predict", *(["predict_proba"] if spec.is_classifier else [])):
        if not callable(getattr(estimator, method, None)):
            raise SpecError(
                spec.path,
                "estimator",
                f"{path} gives a {type(estimator).__name__} without {method}()",
                "use an estimator with the scikit-learn API"
                + (" that predicts probabilities" if method == "predict_proba" else ""),
            )
    return estimator


def build_pipeline(spec: ModelSpec, dataset: Dataset) -> Pipeline:
    """The untrained pipeline: the spec's preprocessing per feature type, then its estimator."""
    numeric = [f.name for f in dataset.features if f.type in ("double", "long")]
    booleans = [f.name for f in dataset.features if f.type == "boolean"]
    strings = [f for f in dataset.features if f.type == "string"]
    steps: list[tuple[str, Any, list[str]]] = []
    if numeric:
        steps.append(
            ("numeric", StandardScaler() if spec.numeric_scaling == "standard" else "passthrough", numeric)
        )
    if booleans:
        steps.append(("boolean", "passthrough", booleans))
    if strings:
        cats = [list(f.categories or ()) for f in strings]
        encoder = (
            OneHotEncoder(categories=cats, handle_unknown="ignore", sparse_output=False)
            if spec.categorical_encoding == "onehot"
            else OrdinalEncoder(categories=cats, handle_unknown="use_encoded_value", unknown_value=-1)
        )
        steps.append(("categorical", encoder, [f.name for f in strings]))
    return Pipeline([("preprocess", ColumnTransformer(steps)), ("estimator", make_estimator(spec))])


def split(dataset: Dataset, spec: ModelSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out) frames, reproducible for the spec's seed; stratified for classifiers."""
    frame = dataset.frame
    train, heldout = train_test_split(
        frame,
        test_size=spec.test_size,
        random_state=spec.seed,
        stratify=frame[dataset.target] if spec.is_classifier else None,
    )
    return train, heldout


def resolve_tracking(config: TrainConfig) -> tuple[str, str]:
    """(tracking URI, experiment name) from the config, else the environment, else the spec's name."""
    import mlflow

    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    experiment = config.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or config.name
    return uri, experiment


def train_and_register(config: TrainConfig, progress: Progress = _stderr) -> TrainResult:
    """Validate, fingerprint, then reuse, or train + register + gate. A failed gate raises GateFailedError."""
    spec = config.spec
    progress(f"validating {spec.data} for {spec.name} ({spec.task}, spec {spec.path})")
    dataset = load_dataset(spec)
    make_estimator(spec)  # an unimportable estimator or a bad parameter fails here, before MLflow
    fingerprint = training_fingerprint(spec, code_dir=config.code_dir)
    progress(f"{len(dataset.frame)} rows valid; training fingerprint {fingerprint[:16]}")
    check_model_output(config.model_output)  # before any MLflow write: it would be replaced at the end

    import mlflow
    from mlflow.tracking import MlflowClient

    from model import registry

    name = config.name
    tracking_uri, experiment = resolve_tracking(config)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    champion = registry.version_by_alias(client, name, registry.CHAMPION_ALIAS)
    gated = registry.find_gated_version(client, name, fingerprint)
    if gated is not None:
        existing, passed_before = gated
        before = "passed" if passed_before else "failed"
        progress(
            f"version {existing.version} has this fingerprint (gate {before} before): "
            "re-gating it with the current gate, no training"
        )
        result = replace(
            _result(existing.run_id, name, existing.version, existing.metrics, fingerprint, spec.task),
            reused=True,
        )
        rival = champion if champion and champion.version != existing.version else None
        failures = evaluate_gate(existing.metrics, spec.gate, rival.metrics if rival else None)
        if failures:
            raise GateFailedError(_failed(result, failures), failures)
        registry.mark_gate(client, name, existing.version, passed=True, reason=GATE_PASSED_REASON)
    else:
        fitted = fit_and_evaluate(dataset, spec, progress)
        mlflow.set_experiment(experiment)
        result, failures = _track_register_and_gate(client, config, fingerprint, fitted, champion, progress)
        if failures:
            raise GateFailedError(_failed(result, failures), failures)
        progress(f"gate passed: {result.model_uri} has alias '{registry.CANDIDATE_ALIAS}'")
    _write_model_output(config.model_output, result.model_uri, tracking_uri, progress)
    return result


@dataclass(frozen=True)
class Fitted:
    """A fitted pipeline and its evaluation on the held-out rows."""

    pipeline: Pipeline
    dataset: Dataset
    train: pd.DataFrame
    heldout: pd.DataFrame
    predictions: np.ndarray
    proba: np.ndarray | None  # classifiers: class probabilities in the order of ``classes``
    classes: tuple[Any, ...] | None
    metrics: dict[str, float]


def fit_and_evaluate(dataset: Dataset, spec: ModelSpec, progress: Progress = _stderr) -> Fitted:
    """Split, fit and score; no tracking."""
    train, heldout = split(dataset, spec)
    how = "stratified, " if spec.is_classifier else ""
    progress(
        f"fitting {spec.estimator} on {len(train)} rows, holding out {len(heldout)} ({how}seed {spec.seed})"
    )
    x_names, target = dataset.feature_names, dataset.target
    pipeline = build_pipeline(spec, dataset).fit(train[x_names], train[target])
    x_test, y_test = heldout[x_names], heldout[target].to_numpy()
    predictions = np.asarray(pipeline.predict(x_test))
    proba, classes = None, None
    if spec.is_classifier:
        proba = np.asarray(pipeline.predict_proba(x_test))
        classes = tuple(pipeline.classes_.tolist())
    metrics = compute_metrics(spec.task, y_test, predictions, proba, classes)
    progress("held-out " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return Fitted(pipeline, dataset, train, heldout, predictions, proba, classes, metrics)


def _track_register_and_gate(
    client: MlflowClient,
    config: TrainConfig,
    fingerprint: str,
    fitted: Fitted,
    champion: VersionInfo | None,
    progress: Progress,
) -> tuple[TrainResult, list[GateFailure]]:
    """One MLflow run: params, metrics, plots, held-out rows, model -> registered version -> gate tags."""
    import mlflow

    from model import registry

    spec, name = config.spec, config.name
    with mlflow.start_run() as run:
        mlflow.set_tag(registry.FINGERPRINT_TAG, fingerprint)
        mlflow.set_tag(registry.TASK_TAG, spec.task)
        mlflow.log_params(_flat("spec", spec.training_identity()))
        mlflow.log_params({"n_train": len(fitted.train), "n_heldout": len(fitted.heldout)})
        mlflow.log_params(_flat("gate", spec.gate.as_dict()))
        mlflow.log_params({"data_path": str(spec.data), "spec_path": str(spec.path)})
        mlflow.log_metrics(fitted.metrics)
        _log_plots(fitted, spec)
        _log_heldout(fitted.heldout)
        progress("logging and registering the model")
        info = _log_model(fitted, spec, name)
        version = str(info.registered_model_version)
        client.set_model_version_tag(name, version, registry.FINGERPRINT_TAG, fingerprint)
        client.set_model_version_tag(name, version, registry.TASK_TAG, spec.task)
        failures = evaluate_gate(fitted.metrics, spec.gate, champion.metrics if champion else None)
        reason = "; ".join(f.describe() for f in failures) or GATE_PASSED_REASON
        registry.mark_gate(client, name, version, passed=not failures, reason=reason)
        mlflow.set_tag(registry.GATE_TAG, "failed" if failures else "passed")
    return _result(run.info.run_id, name, version, fitted.metrics, fingerprint, spec.task), failures


def _flat(prefix: str, value: object) -> dict[str, str]:
    """Nested spec values as ``prefix.key.sub`` params (MLflow params are flat strings, <= 6000 chars)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, sub in value.items():
            out.update(_flat(f"{prefix}.{key}", sub))
        return out
    return {prefix: json.dumps(value)[:6000]}


def _result(
    run_id: str, name: str, version: str, metrics: dict[str, float], fingerprint: str, task: str
) -> TrainResult:
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
        task=task,
    )


def _failed(result: TrainResult, failures: Sequence[GateFailure]) -> TrainResult:
    return replace(result, gate_passed=False, gate_failures=[f.describe() for f in failures])


def _log_plots(fitted: Fitted, spec: ModelSpec) -> None:
    import mlflow

    y = fitted.heldout[fitted.dataset.target].to_numpy()
    if fitted.classes is not None and fitted.proba is not None:
        names = [spec.class_name(c) for c in fitted.classes]
        figures = [
            (
                plots.confusion_matrix_figure(y, fitted.predictions, fitted.classes, names),
                "plots/confusion_matrix.png",
            ),
            (plots.roc_curve_figure(y, fitted.proba, fitted.classes, names), "plots/roc_curve.png"),
        ]
    else:
        y_pred = fitted.predictions.astype("float64")
        figures = [
            (plots.residuals_figure(y.astype("float64"), y_pred), "plots/residuals.png"),
            (plots.predicted_vs_actual_figure(y.astype("float64"), y_pred), "plots/predicted_vs_actual.png"),
        ]
    for fig, path in figures:
        mlflow.log_figure(fig, path)
        plots.close(fig)


def _log_heldout(heldout: pd.DataFrame) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(HELDOUT_ARTIFACT).name
        heldout.to_csv(path, index=False, lineterminator="\n")
        mlflow.log_artifact(str(path), artifact_path=str(Path(HELDOUT_ARTIFACT).parent))


def model_metadata(fitted: Fitted, spec: ModelSpec) -> dict[str, object]:
    """What the service needs beyond the signature: the task, the class order and names, and the
    categories of string features (so that a request with an unknown category is a 400)."""
    meta: dict[str, object] = {
        METADATA_TASK: spec.task,
        METADATA_CATEGORIES: {f.name: list(f.categories) for f in fitted.dataset.features if f.categories},
    }
    if fitted.classes is not None:
        meta[METADATA_CLASSES] = list(fitted.classes)
        meta[METADATA_CLASS_NAMES] = [spec.class_name(c) for c in fitted.classes]
    return meta


def _log_model(fitted: Fitted, spec: ModelSpec, name: str) -> ModelInfo:
    import mlflow
    from mlflow.models import infer_signature

    x_test = fitted.heldout[fitted.dataset.feature_names]
    with warnings.catch_warnings():
        # Integer columns stay integers on purpose (long features); the data rules refuse missing
        # values, the case MLflow's hint warns about.
        warnings.filterwarnings("ignore", message=r".*Inferred schema contains integer column")
        signature = infer_signature(x_test, fitted.predictions)
    kwargs: dict[str, Any] = {}
    if spec.serialization == "skops":
        import skops.io

        with tempfile.TemporaryDirectory() as tmp:
            dumped = Path(tmp) / "model.skops"
            skops.io.dump(fitted.pipeline, dumped)
            # The types of the pipeline this training just built, nothing from outside it.
            kwargs["skops_trusted_types"] = skops.io.get_untrusted_types(file=dumped) or None
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.sklearn.log_model(
            fitted.pipeline,
            name=MODEL_ARTIFACT_NAME,
            signature=signature,
            input_example=x_test.head(3),
            pip_requirements=pinned_closure(model_roots(spec)),
            serialization_format=spec.serialization,
            registered_model_name=name,
            metadata=model_metadata(fitted, spec),
            extra_files=[str(write_reference_profile(fitted, spec, Path(tmp)))],
            **kwargs,
        )


def write_reference_profile(fitted: Fitted, spec: ModelSpec, folder: Path) -> Path:
    """The monitoring reference (model.profile) of the training rows and the held-out predictions,
    as ``folder/profile.json``; logged into the model folder (``extra_files/``), it ships in the image."""
    from model.profile import PROFILE_FILE, build_profile

    names = None if fitted.classes is None else {str(c): spec.class_name(c) for c in fitted.classes}
    profile = build_profile(
        fitted.train, fitted.dataset.features, fitted.predictions, spec.task, names, fitted.metrics
    )
    path = folder / PROFILE_FILE
    path.write_text(profile.to_json(), encoding="utf-8")
    return path


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
    """The held-out rows (features then target) a training run logged, for parity checks and the demo."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=HELDOUT_ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
        )
        return pd.read_csv(local)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a usage error, exit 64)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _assignment(text: str) -> tuple[str, Any]:
    """argparse type: ``KEY=VALUE`` with VALUE parsed as YAML (``C=0.5``, ``max_depth=null``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not YAML ({exc})") from exc


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(64, f"{self.prog}: error: {message}\n")  # 64 = EX_USAGE; 2 means "gate failed"


def gate_overrides(gate: Gate, assignments: Sequence[tuple[str, Any]]) -> Gate:
    """``gate`` with ``metric.min=v`` / ``metric.max=v`` / ``champion_margin=v`` applied."""
    raw: dict[str, object] = {}
    for key, value in assignments:
        metric, _, kind = key.partition(".")
        raw[metric] = {kind: value} if kind else value
    return gate.with_overrides(raw)


def parse_args(argv: Sequence[str] | None) -> tuple[TrainConfig, bool]:
    """(config, whether to print JSON) from the command line."""
    p = _Parser(prog="python -m model.train", description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the model spec (default: model.yaml)")
    p.add_argument(
        "--data-path", type=Path, default=None, help="train on this CSV instead of the spec's data"
    )
    p.add_argument("--model-output", type=Path, default=None, help="write the MLflow model folder here")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last stdout line")
    p.add_argument("--model-name", default=None, help="default: the spec's name")
    p.add_argument("--experiment", default=None, help="default: $MLFLOW_EXPERIMENT_NAME or the spec's name")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    p.add_argument("--min-rows-per-class", type=_positive_int, default=None)
    p.add_argument("--test-size", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--param",
        type=_assignment,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one estimator parameter (repeatable)",
    )
    p.add_argument(
        "--gate",
        type=_assignment,
        action="append",
        default=[],
        metavar="METRIC.min=VALUE",
        help="override one gate bound, or champion_margin=VALUE (repeatable)",
    )
    a = p.parse_args(argv)
    if a.model_name is not None and not NAME_RE.match(a.model_name):
        p.error(
            f"--model-name {a.model_name!r} is not 1-63 letters, digits, '.', '_' or '-' starting "
            "alphanumeric (the rule of the spec's name); use a name such as my-model"
        )
    try:
        spec = load_spec(a.spec)
        if a.data_path is not None:
            spec = spec.with_data(a.data_path)
        changes: dict[str, Any] = {}
        if a.param:
            changes["params"] = {**spec.params, **dict(a.param)}
        if a.min_rows_per_class is not None:
            changes["min_rows_per_class"] = a.min_rows_per_class
        if a.test_size is not None:
            if not 0 < a.test_size < 1:
                p.error(f"--test-size must be in (0, 1), got {a.test_size}")
            changes["test_size"] = a.test_size
        if a.seed is not None:
            changes["seed"] = a.seed
        spec = replace(spec, **changes).with_gate(gate_overrides(spec.gate, a.gate))
    except GateConfigError as exc:
        p.error(f"--gate: {exc}")
    except SpecError as exc:
        p.error(str(exc))
    config = TrainConfig(
        spec=spec,
        model_name=a.model_name,
        experiment_name=a.experiment,
        tracking_uri=a.tracking_uri,
        model_output=a.model_output,
    )
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
            f"tracking URI: {tracking}; spec: {config.spec.path}; data: {config.spec.data}; "
            f"model output: {config.model_output or '(none)'}",
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
    except SpecError as exc:
        print(
            f"the model spec cannot be trained, nothing was logged or registered:\n  {exc}", file=sys.stderr
        )
        return 64
    except Exception as exc:  # everything else: print the cause, not a traceback, and exit 3
        print(describe_failure(exc, config), file=sys.stderr)
        return 3
    print(result.to_json() if as_json else f"{result.model_uri} ({'reused' if result.reused else 'trained'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
