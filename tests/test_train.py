"""model.train against a real ``mlflow server``: tracking, registration, the gate, reuse by
fingerprint, the CLI, and that bad data registers nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from model import train as train_mod
from model.data import DataValidationError, load_dataset
from model.pins import model_roots, pinned_closure
from model.spec import ModelSpec, load_spec
from model.train import GateFailedError, TrainConfig, TrainResult, load_heldout, train_and_register
from tests.conftest import EXAMPLE_SPECS, REPO_ROOT, free_port
from tests.test_data import BAD_CASES, FEATURES, LISTED, TARGET

pytestmark = pytest.mark.servers

DATA = REPO_ROOT / "data" / "train.csv"
DEFAULT = load_spec(EXAMPLE_SPECS["default"])
# Fast and good: converges in well under a second, accuracy ~0.986 on the held-out quarter.
GOOD = replace(DEFAULT, params={"C": 1.0, "max_iter": 200})
# Deliberately worse (heavy regularisation): passes the default thresholds, ~0.94 accuracy.
WORSE = replace(DEFAULT, params={"C": 0.01, "max_iter": 200})


def gated(spec: ModelSpec, **bounds: object) -> ModelSpec:
    return spec.with_gate(spec.gate.with_overrides(bounds))


Trained = tuple[TrainConfig, TrainResult]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def code_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of model/*.py so that edits to the working tree cannot move fingerprints mid-run."""
    dest = tmp_path_factory.mktemp("code") / "model"
    shutil.copytree(REPO_ROOT / "model", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def fresh_config(mlflow_server: str, code_snapshot: Path) -> TrainConfig:
    """Good data and params, a model and experiment name of its own, the frozen code snapshot."""
    return TrainConfig(
        spec=GOOD,
        model_name=unique("clf"),
        experiment_name=unique("exp"),
        tracking_uri=mlflow_server,
        code_dir=code_snapshot,
    )


@pytest.fixture
def make_config(mlflow_server: str, code_snapshot: Path) -> Callable[..., TrainConfig]:
    def make(**overrides: object) -> TrainConfig:
        return replace(fresh_config(mlflow_server, code_snapshot), **overrides)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="module")
def trained(mlflow_server: str, code_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One real training shared by the read-only assertions below."""
    config = replace(
        fresh_config(mlflow_server, code_snapshot), model_output=tmp_path_factory.mktemp("out") / "model"
    )
    return config, train_and_register(config)


def client_for(url: str) -> MlflowClient:
    return MlflowClient(url)


def run_count(client: MlflowClient, experiment: str | None) -> int:
    assert experiment is not None
    exp = client.get_experiment_by_name(experiment)
    return 0 if exp is None else len(client.search_runs([exp.experiment_id]))


def test_training_logs_params_metrics_plots_heldout_and_registers(
    mlflow_server: str, trained: Trained
) -> None:
    config, result = trained
    assert config.model_name is not None  # fresh_config names the model
    client = client_for(mlflow_server)
    assert (result.gate_passed, result.reused, result.version) == (True, False, "1")
    assert result.model_uri == f"models:/{config.model_name}/1"
    run = client.get_run(result.run_id)
    assert run.data.params["spec.params.C"] == "1.0" and run.data.params["spec.params.max_iter"] == "200"
    assert run.data.params["gate.accuracy.min"] == "0.9"
    assert run.data.tags["task"] == "binary"
    assert (run.data.params["n_train"], run.data.params["n_heldout"]) == ("426", "143")
    assert run.data.tags["fingerprint"] == result.fingerprint
    for name in ("accuracy", "f1", "roc_auc", "log_loss"):
        assert run.data.metrics[name] == pytest.approx(result.metrics[name])
    assert result.metrics["accuracy"] > 0.95 and result.metrics["roc_auc"] > 0.98

    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/roc_curve.png"}
    local = Path(client.download_artifacts(result.run_id, "plots/roc_curve.png"))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    mv = client.get_model_version(config.model_name, "1")
    assert mv.tags["fingerprint"] == result.fingerprint
    assert mv.tags["gate"] == "passed"
    assert client.get_registered_model(config.model_name).aliases == {"candidate": "1"}


def test_heldout_rows_round_trip_and_pyfunc_agrees_with_logged_metrics(
    mlflow_server: str, trained: Trained
) -> None:
    _, result = trained
    heldout = load_heldout(result.run_id, tracking_uri=mlflow_server)
    assert list(heldout.columns) == [*FEATURES, TARGET]
    assert len(heldout) == 143
    assert heldout[list(FEATURES)].dtypes.map(str).unique().tolist() == ["float64"]
    assert heldout[TARGET].value_counts().to_dict() == {1: 90, 0: 53}  # stratified: 357/212 of 569
    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model(result.model_uri)
    predictions = np.asarray(pyfunc.predict(heldout[list(FEATURES)]))
    accuracy = float((predictions == heldout[TARGET].to_numpy()).mean())
    assert accuracy == pytest.approx(result.metrics["accuracy"])


def test_model_requirements_pin_the_training_environment_exactly(trained: Trained) -> None:
    config, _ = trained
    out = config.model_output
    assert out is not None
    assert (out / "MLmodel").is_file()
    lines = [
        ln for ln in (out / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    assert lines == pinned_closure(model_roots(GOOD))
    pins = dict(line.split("==", 1) for line in lines)
    for needed in ("scikit-learn", "skops", "mlflow-skinny", "pandas", "numpy", "scipy"):
        assert needed in pins, f"{needed} missing from the model's requirements"
    for name, version in pins.items():
        assert version == metadata.version(name), (
            f"{name}: model pins {version}, installed {metadata.version(name)}"
        )


def test_training_environment_matches_the_runtime_lock(trained: Trained) -> None:
    """The env that trained must be the locked one, or the lock and the image tell different stories."""
    config, _ = trained
    assert config.model_output is not None
    text = (config.model_output / "requirements.txt").read_text()
    model_pins = dict(ln.split("==", 1) for ln in text.splitlines() if "==" in ln)
    lock = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if version:
            lock[name.lower()] = version.strip()
    drift = {n: (v, lock[n]) for n, v in model_pins.items() if n in lock and lock[n] != v}
    assert drift == {}, (
        f"installed (model) vs requirements.txt versions differ: {drift}; re-sync the venv or the lock"
    )


def test_same_fingerprint_is_reused_without_a_new_run(mlflow_server: str, trained: Trained) -> None:
    config, first = trained
    client = client_for(mlflow_server)
    runs_before = run_count(client, config.experiment_name)
    again = train_and_register(replace(config, model_output=None))
    assert again.reused is True
    assert (again.version, again.run_id, again.fingerprint) == (
        first.version,
        first.run_id,
        first.fingerprint,
    )
    assert again.metrics == pytest.approx(first.metrics)
    assert run_count(client, config.experiment_name) == runs_before
    assert len(client.search_model_versions(f"name = '{config.model_name}'")) == 1


def test_reused_version_is_gated_again_with_current_thresholds(mlflow_server: str, trained: Trained) -> None:
    config, first = trained
    client = client_for(mlflow_server)
    runs_before = run_count(client, config.experiment_name)
    stricter = replace(config, model_output=None, spec=gated(config.spec, roc_auc={"min": 0.99999}))
    with pytest.raises(GateFailedError, match="roc_auc") as caught:
        train_and_register(stricter)
    assert caught.value.result.reused is True and caught.value.result.version == first.version
    assert run_count(client, config.experiment_name) == runs_before


def test_threshold_failure_tags_the_version_and_sets_no_alias(
    mlflow_server: str, make_config: Callable[..., TrainConfig]
) -> None:
    config = make_config(spec=gated(GOOD, accuracy={"min": 0.999}))
    assert config.model_name is not None  # fresh_config names the model
    with pytest.raises(GateFailedError) as caught:
        train_and_register(config)
    failure = caught.value.failures[0]
    assert (failure.metric, failure.rule) == ("accuracy", "threshold")
    assert failure.shortfall == pytest.approx(0.999 - caught.value.result.metrics["accuracy"])
    assert "accuracy=" in str(caught.value) and "short by" in str(caught.value)
    client = client_for(mlflow_server)
    mv = client.get_model_version(config.model_name, caught.value.result.version)
    assert mv.tags["gate"] == "failed"
    assert "accuracy" in mv.tags["gate_reason"]
    assert client.get_registered_model(config.model_name).aliases == {}
    assert caught.value.result.gate_passed is False


def test_a_worse_model_than_the_champion_is_refused(
    mlflow_server: str, make_config: Callable[..., TrainConfig]
) -> None:
    client = client_for(mlflow_server)
    good = train_and_register(make_config())
    client.set_registered_model_alias(good.model_name, "champion", good.version)
    worse_config = make_config(model_name=good.model_name, spec=WORSE)
    with pytest.raises(GateFailedError) as caught:
        train_and_register(worse_config)
    rules = {(f.metric, f.rule) for f in caught.value.failures}
    assert ("accuracy", "champion") in rules
    assert all(rule == "champion" for _, rule in rules), "WORSE must pass the absolute thresholds"
    worse_version = caught.value.result.version
    assert client.get_model_version(good.model_name, worse_version).tags["gate"] == "failed"
    aliases = client.get_registered_model(good.model_name).aliases
    assert aliases == {"champion": good.version, "candidate": good.version}


def registry_snapshot(client: MlflowClient) -> set[tuple[str, str]]:
    """Every (model name, version) in the registry."""
    return {(mv.name, str(mv.version)) for mv in client.search_model_versions(max_results=10_000)}


@pytest.mark.parametrize(
    ("case", "writer", "column", "rule", "words"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_data_fails_before_anything_is_logged_or_registered(
    mlflow_server: str,
    make_config: Callable[..., TrainConfig],
    tmp_path: Path,
    case: str,
    writer: Callable[[Path], Path],
    column: str | None,
    rule: str,
    words: list[str],
) -> None:
    client = client_for(mlflow_server)
    before = registry_snapshot(client)
    config = make_config(spec=LISTED.with_data(writer(tmp_path / f"{case}.csv")))
    with pytest.raises(DataValidationError, match=re.escape(f"rule '{rule}'")):
        train_and_register(config)
    assert registry_snapshot(client) == before
    assert client.get_experiment_by_name(str(config.experiment_name)) is None


def test_missing_data_file_registers_nothing(
    mlflow_server: str, make_config: Callable[..., TrainConfig]
) -> None:
    client = client_for(mlflow_server)
    before = registry_snapshot(client)
    config = make_config(spec=GOOD.with_data(REPO_ROOT / "data" / "does-not-exist.csv"))
    with pytest.raises(
        DataValidationError, match=re.escape("does-not-exist.csv: whole file: rule 'file-exists'")
    ):
        train_and_register(config)
    assert registry_snapshot(client) == before
    assert client.get_experiment_by_name(str(config.experiment_name)) is None


def cli_args(mlflow_server: str, *extra: str) -> list[str]:
    return [
        "--tracking-uri",
        mlflow_server,
        "--experiment",
        unique("exp"),
        "--model-name",
        unique("clf"),
        *extra,
    ]


def test_cli_gate_failure_exits_2_naming_metric_and_shortfall(
    mlflow_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_mod.main(
        cli_args(mlflow_server, "--json", "--param", "max_iter=200", "--gate", "roc_auc.min=0.99999")
    )
    assert code == 2
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["gate_passed"] is False and result["reused"] is False
    assert "roc_auc=" in err and "short by" in err


def test_cli_bad_data_exits_1_and_bad_usage_exits_64(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert train_mod.main(cli_args(mlflow_server, "--data-path", str(empty))) == 1
    assert "nothing was logged or registered" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        train_mod.main(["--test-size", "1.5"])
    assert caught.value.code == 64
    assert "--test-size must be in (0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        train_mod.main(["--gate", "rmse.max=3"])
    assert caught.value.code == 64
    err = capsys.readouterr().err
    assert (
        "metric 'rmse' is not defined for task 'binary'" in err and "accuracy, f1, roc_auc, log_loss" in err
    )
    with pytest.raises(SystemExit) as caught:
        train_mod.main(["--spec", str(REPO_ROOT / "no-such-spec.yaml")])
    assert caught.value.code == 64
    assert "no-such-spec.yaml: key '(file)': no such file" in capsys.readouterr().err


def test_cli_min_rows_per_class_below_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-3"):
        with pytest.raises(SystemExit) as caught:
            train_mod.main(["--min-rows-per-class", bad])
        assert caught.value.code == 64
        err = capsys.readouterr().err
        assert "--min-rows-per-class" in err and f"must be an integer >= 1, got {bad}" in err


def test_cli_unimportable_estimator_exits_64_naming_the_key_before_anything_is_registered(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = client_for(mlflow_server)
    before = registry_snapshot(client)
    text = (
        EXAMPLE_SPECS["default"]
        .read_text()
        .replace("sklearn.linear_model.LogisticRegression", "no_such_package.Model")
        .replace("data/train.csv", str(DATA))
    )
    (spec := tmp_path / "spec.yaml").write_text(text)
    assert train_mod.main(cli_args(mlflow_server, "--spec", str(spec))) == 64
    err = capsys.readouterr().err
    assert f"{spec}: key 'estimator': cannot import 'no_such_package.Model'" in err
    assert "Traceback" not in err
    assert registry_snapshot(client) == before


def test_a_string_feature_declared_without_categories_trains(tmp_path: Path) -> None:
    """``region: string`` without categories: they come from the data and reach the served metadata."""
    text = (
        EXAMPLE_SPECS["churn"]
        .read_text()
        .replace("region: {type: string, categories: [north, south, east, west]}", "region: string")
    )
    assert "region: string" in text
    (path := tmp_path / "model.yaml").write_text(
        text.replace("churn.csv", str(EXAMPLE_SPECS["churn"].parent / "churn.csv"))
    )
    spec = load_spec(path)
    fitted = train_mod.fit_and_evaluate(load_dataset(spec), spec, progress=lambda _: None)
    categories = train_mod.model_metadata(fitted, spec)[train_mod.METADATA_CATEGORIES]
    assert categories["region"] == ["east", "north", "south", "west"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("where", "extra"),
    [("spec", ()), ("cli", ("--param", "n_estimators=abc")), ("cli", ("--param", "n_estimators=-3"))],
)
def test_parameter_values_the_estimator_rejects_exit_64_before_any_mlflow_call(
    where: str, extra: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        EXAMPLE_SPECS["churn"]
        .read_text()
        .replace("churn.csv", str(EXAMPLE_SPECS["churn"].parent / "churn.csv"))
    )
    if where == "spec":
        text = text.replace("n_estimators: 60", "n_estimators: -3")
    (path := tmp_path / "model.yaml").write_text(text)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: any MLflow call would be exit 3
    assert train_mod.main(cli_args(dead, "--spec", str(path), *extra)) == 64
    err = capsys.readouterr().err
    assert f"{path}: key 'params':" in err and "n_estimators" in err
    assert "MLflow server" not in err and "Traceback" not in err


def test_cli_model_name_follows_the_spec_name_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        train_mod.main(["--model-name", "bad name"])
    assert caught.value.code == 64
    assert "--model-name 'bad name' is not 1-63 letters" in capsys.readouterr().err


def test_cli_unreachable_mlflow_exits_3_naming_the_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert train_mod.main(cli_args(dead)) == 3
    err = capsys.readouterr().err
    assert f"tracking URI: {dead}" in err
    assert "check that the MLflow server answers at that URI" in err


def test_cli_non_model_output_folder_exits_3_before_anything_is_registered(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = client_for(mlflow_server)
    before = registry_snapshot(client)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    assert train_mod.main(cli_args(mlflow_server, "--model-output", str(taken))) == 3
    err = capsys.readouterr().err
    assert f"--model-output {taken} exists, is not empty and is not an MLflow model folder" in err
    assert (taken / "notes.txt").read_text() == "keep me"
    assert registry_snapshot(client) == before


def test_cli_subprocess_prints_json_last_and_writes_the_model(mlflow_server: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "model"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_EXPERIMENT_NAME": unique("exp"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "model.train", "--data-path", str(DATA), "--model-output", str(out_dir),
         "--json", "--param", "max_iter=200", "--model-name", unique("clf")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1, (
        f"stdout must hold only the JSON result: {proc.stdout!r}"
    )
    result = TrainResult(**json.loads(proc.stdout))
    assert result.gate_passed and result.model_uri.endswith("/1")
    assert "[train] fitting sklearn.linear_model.LogisticRegression on 426 rows" in proc.stderr
    assert (out_dir / "MLmodel").is_file() and (out_dir / "model.skops").is_file()


def test_the_default_spec_gives_todays_results(
    mlflow_server: str, make_config: Callable[..., TrainConfig]
) -> None:
    """model.yaml as shipped (max_iter 1000): the held-out numbers the README quotes."""
    result = train_and_register(make_config(spec=DEFAULT))
    rounded = {k: round(v, 4) for k, v in result.metrics.items()}
    assert (rounded["accuracy"], rounded["f1"], rounded["roc_auc"]) == (0.986, 0.9889, 0.9977)
