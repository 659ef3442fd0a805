"""The reference profile (model.profile) and the serving counters (model.monitoring), without a server:
binning per feature type for every shipped example, the profile file in the logged model and the
bento, counting, and PSI from two /metrics texts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from model import monitoring
from model.monitoring import ModelIdentity, Monitor, count_column, drift_between
from model.profile import (
    CATEGORICAL,
    NUMERIC,
    PROFILE_PATH_IN_MODEL,
    Profile,
    ProfileError,
    build_profile,
    categorical_binning,
    load_profile,
    numeric_binning,
    psi,
)
from tests.conftest import EXAMPLE_SPECS

if TYPE_CHECKING:
    from model.bento import BuildContext
    from model.train import TrainResult


def registry_and_monitor(profile: object, service: str = "svc") -> tuple[object, Monitor]:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    monitor = Monitor(profile, service, ModelIdentity("m", "3", "f" * 64), registry=registry)  # type: ignore[arg-type]
    return registry, monitor


def metrics_text(registry: object) -> str:
    import prometheus_client

    return prometheus_client.generate_latest(registry).decode()  # type: ignore[arg-type]


# ---- binning ---------------------------------------------------------------------------------------


def test_numeric_bins_are_deciles_and_each_holds_training_values() -> None:
    values = np.arange(1000, dtype="float64")
    binning = numeric_binning("x", values)
    assert binning.size == 10
    assert binning.low == 0 and binning.high == 999
    assert all(abs(p - 0.1) < 0.002 for p in binning.proportions)
    assert math.isclose(sum(binning.proportions), 1)


def test_ties_and_constant_columns_collapse_bins_without_empty_ones() -> None:
    tied = numeric_binning("t", [0.0] * 60 + [1.0] * 25 + [2.0] * 15)
    assert tied.edges == (1.0, 2.0)
    assert tied.proportions == (0.6, 0.25, 0.15)
    constant = numeric_binning("c", [3.0] * 50)
    assert constant.edges == () and constant.proportions == (1.0,)
    assert min(tied.proportions) > 0


def test_integer_values_bin_on_their_own_values() -> None:
    binning = numeric_binning("n", np.array([1, 2, 2, 3, 3, 3, 4, 4, 4, 4], dtype="int64"), "long")
    assert binning.edges == (2.0, 3.0, 4.0)
    counts, outside, missing = count_column(binning, np.array([0, 1, 2, 3, 4, 5]))
    assert counts.tolist() == [2, 1, 1, 2] and outside == 2 and missing == 0


def test_categories_get_an_other_bin() -> None:
    binning = categorical_binning("plan", ["a", "b", "b", "a"], ["a", "b", "c"], "string")
    assert binning.proportions == (0.5, 0.5, 0.0, 0.0)
    counts, _, missing = count_column(binning, ["c", "zzz", None, "a"])
    assert counts.tolist() == [1, 0, 1, 1] and missing == 1


@pytest.mark.parametrize("key", list(EXAMPLE_SPECS))
def test_profile_of_every_example(key: str) -> None:
    """Every task and feature type the spec allows: numbers, integers, booleans, strings; binary,
    multiclass (class names) and regression (numeric prediction bins)."""
    from model.data import load_dataset
    from model.spec import load_spec
    from model.train import fit_and_evaluate

    spec = load_spec(EXAMPLE_SPECS[key])
    dataset = load_dataset(spec)
    fitted = fit_and_evaluate(dataset, spec, progress=lambda _: None)
    names = None if fitted.classes is None else {str(c): spec.class_name(c) for c in fitted.classes}
    profile = build_profile(fitted.train, dataset.features, fitted.predictions, spec.task, names)
    assert [b.name for b in profile.features] == dataset.feature_names
    for feature, binning in zip(dataset.features, profile.features, strict=True):
        assert binning.kind == (NUMERIC if feature.type in ("double", "long") else CATEGORICAL)
        assert math.isclose(sum(binning.proportions), 1)
        assert len(binning.proportions) == binning.size
        if feature.type == "boolean":
            assert binning.categories == ("false", "true")
    if spec.is_classifier:
        assert profile.prediction.categories == tuple(names.values())  # type: ignore[union-attr]
    else:
        assert profile.prediction.kind == NUMERIC and profile.prediction.size > 2
    # The service's path: the typed held-out frame and the answers, every row counted once per feature.
    registry, monitor = registry_and_monitor(profile)
    answers = [names[str(p)] for p in fitted.predictions] if names else list(fitted.predictions)
    monitor.observe(fitted.heldout[dataset.feature_names], answers)
    counts = monitoring.bin_counts(metrics_text(registry), "svc")["counts"]
    assert {key: sum(bins.values()) for key, bins in counts.items()} == {
        key: len(fitted.heldout) for key in [*dataset.feature_names, monitoring.PREDICTION]
    }
    # The served rows of the training data count back to the training proportions: PSI 0.
    for binning in profile.features:
        column_counts, outside, _ = count_column(binning, fitted.train[binning.name].to_numpy())
        assert outside == 0
        assert psi(column_counts.tolist(), binning.proportions) < 1e-9


def test_profile_file_round_trips_and_bad_files_name_the_problem(tmp_path: Path) -> None:
    profile = build_profile_for_frame()
    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    assert load_profile(path) == profile
    with pytest.raises(ProfileError, match=r"no reference profile.*retrain"):
        load_profile(tmp_path / "missing.json")
    path.write_text(json.dumps({**profile.as_dict(), "format": 99}))
    with pytest.raises(ProfileError, match="'format' is 99"):
        load_profile(path)
    raw = profile.as_dict()
    raw["features"][0]["proportions"] = [1.0]  # type: ignore[index]
    path.write_text(json.dumps(raw))
    with pytest.raises(ProfileError, match=r"features\[0\]: 1 proportions for \d+ bins"):
        load_profile(path)


def build_profile_for_frame() -> Profile:
    import pandas as pd

    from model.spec import Feature

    frame = pd.DataFrame({"x": np.linspace(0, 1, 50), "flag": [True, False] * 25, "s": ["a", "b"] * 25})
    features = [Feature("x", "double"), Feature("flag", "boolean"), Feature("s", "string", ("a", "b"))]
    return build_profile(frame, features, np.linspace(10, 20, 50), "regression")


# ---- counting and drift --------------------------------------------------------------------------------


def test_observe_counts_bins_range_and_missing_values() -> None:
    profile = build_profile_for_frame()
    registry, monitor = registry_and_monitor(profile)
    monitor.observe(
        {
            "x": np.array([0.0, 0.5, 2.0, np.nan]),
            "flag": [True, True, False, None],
            "s": ["a", "a", "b", "b"],
        },
        np.array([10.0, 30.0, 15.0, 15.0]),
    )
    text = metrics_text(registry)
    assert 'model_feature_out_of_range_total{feature="x",service_name="svc"} 1.0' in text
    assert 'model_feature_missing_total{feature="x",service_name="svc"} 1.0' in text
    assert 'model_feature_missing_total{feature="flag",service_name="svc"} 1.0' in text
    assert 'model_feature_bin_total{bin="1",feature="flag",service_name="svc"} 2.0' in text  # true
    assert 'model_info{fingerprint="' + "f" * 64 + '",model="m",service_name="svc",version="3"} 1.0' in text
    assert f'{monitoring.FEATURE_REFERENCE}{{bin="0",feature="s",service_name="svc"}} 0.5' in text


def counted(registry: object, service: str = "svc") -> dict[tuple[str, str], float]:
    """{(metric, feature/bin labels): value} of the counters observe moves."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(metrics_text(registry)):
        for sample in family.samples:
            if sample.name in (monitoring.FEATURE_BINS, monitoring.FEATURE_OUT_OF_RANGE,
                               monitoring.FEATURE_MISSING, monitoring.PREDICTION_BINS):  # fmt: skip
                key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "service_name")
                out[(sample.name, key)] = sample.value
    return out


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 250])  # both sides of SMALL_REQUEST_ROWS
def test_counting_all_features_at_once_matches_counting_each_column(rows: int) -> None:
    """The vectorised positions against count_column per column, on values at the edges, beyond the
    training range, infinite and missing, for numeric features of different bin counts."""
    import pandas as pd

    from model.spec import Feature

    rng = np.random.default_rng(rows)
    frame = pd.DataFrame(
        {
            "wide": rng.normal(size=400),
            "few": rng.integers(0, 3, size=400).astype(float),  # 3 distinct values: fewer bins
            "flag": rng.random(400) > 0.3,
            "s": rng.choice(["a", "b", "c"], size=400),
        }
    )
    features = [Feature("wide", "double"), Feature("few", "double"), Feature("flag", "boolean"),
                Feature("s", "string", ("a", "b", "c"))]  # fmt: skip
    profile = build_profile(frame, features, rng.normal(size=400), "regression")
    assert len({b.size for b in profile.features if b.kind == NUMERIC}) == 2
    wide = next(b for b in profile.features if b.name == "wide")
    specials = [*wide.edges, np.nan, np.inf, -np.inf, 1e9, -1e9]
    values = np.concatenate([rng.normal(scale=2, size=rows), specials])[:rows]
    rng.shuffle(values)
    columns = {
        "wide": values,
        "few": rng.choice([0.0, 1.0, 2.0, 5.0, np.nan, np.inf], size=rows),
        "flag": list(rng.choice(np.array([True, False, None], dtype=object), size=rows)),
        "s": list(rng.choice(np.array(["a", "c", "zz", None], dtype=object), size=rows)),
    }
    predictions = rng.normal(size=rows)
    registry, monitor = registry_and_monitor(profile)
    monitor.observe(columns, predictions)
    got = counted(registry)

    expected: dict[tuple[str, str], float] = {key: 0.0 for key in got}
    for binning in profile.features:
        counts, outside, absent = count_column(binning, columns[binning.name])
        for i, n in enumerate(counts):
            expected[(monitoring.FEATURE_BINS, f"bin={i},feature={binning.name}")] = float(n)
        if binning.kind == NUMERIC:
            expected[(monitoring.FEATURE_OUT_OF_RANGE, f"feature={binning.name}")] = float(outside)
        expected[(monitoring.FEATURE_MISSING, f"feature={binning.name}")] = float(absent)
    for i, n in enumerate(count_column(profile.prediction, predictions)[0]):
        expected[(monitoring.PREDICTION_BINS, f"bin={i}")] = float(n)
    assert got == expected


def test_served_counts_reach_the_counters_within_flush_seconds_on_an_event_loop() -> None:
    """In the server (a running event loop) a request's counts wait at most flush_seconds, on one
    timer for all the requests in between; without a loop they are written at once."""
    import asyncio

    profile = build_profile_for_frame()
    registry, monitor = registry_and_monitor(profile)
    monitor.flush_seconds = 0.2
    request = ({"x": np.array([0.5]), "flag": [True], "s": ["a"]}, np.array([15.0]))
    x_bins = lambda: sum(v for (name, key), v in counted(registry).items()  # noqa: E731
                         if name == monitoring.FEATURE_BINS and "feature=x" in key)  # fmt: skip

    async def serve() -> list[float]:
        seen = []
        for _ in range(3):
            monitor.observe(*request)
        seen.append(x_bins())  # pending
        timers = len(asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)
        seen.append(x_bins())  # written by the timer
        seen.append(float(timers))
        return seen

    assert asyncio.run(serve()) == [0.0, 3.0, 1.0]
    monitor.observe(*request)  # no running loop now: at once
    assert x_bins() == 4.0

    async def observe_and_leave() -> None:
        monitor.observe(*request)  # its timer dies with this loop

    async def observe_and_wait() -> None:
        monitor.observe(*request)
        await asyncio.sleep(0.5)

    asyncio.run(observe_and_leave())
    asyncio.run(observe_and_wait())  # a new loop gets its own timer
    assert x_bins() == 6.0


def test_observe_never_fails_the_request(caplog: pytest.LogCaptureFixture) -> None:
    _, monitor = registry_and_monitor(build_profile_for_frame())
    monitor.observe({"x": [1.0]}, [1.0])  # features missing from the mapping
    assert "counting a request failed" in caplog.text


def test_drift_between_two_scrapes_matches_psi() -> None:
    profile = build_profile_for_frame()
    registry, monitor = registry_and_monitor(profile)
    before = metrics_text(registry)
    x = np.linspace(0, 1, 50)
    monitor.observe({"x": x, "flag": [True, False] * 25, "s": ["a", "b"] * 25}, np.linspace(10, 20, 50))
    middle = metrics_text(registry)
    steady = drift_between(before, middle, "svc")
    assert set(steady) == {"x", "flag", "s", monitoring.PREDICTION}
    assert max(steady.values()) < 1e-9
    monitor.observe({"x": x * 0.1, "flag": [True] * 50, "s": ["a", "b"] * 25}, np.linspace(10, 20, 50))
    shifted = drift_between(middle, metrics_text(registry), "svc")
    assert shifted["x"] > 1 and shifted["flag"] > 1 and shifted["s"] < 1e-9
    assert math.isnan(drift_between(middle, middle, "svc")["x"])  # nothing served in between


def test_psi_formula() -> None:
    assert psi([50, 50], [0.5, 0.5]) == 0
    expected = (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert math.isclose(psi([10, 0], [0.5, 0.5]), expected)


# ---- the profile travels with the model ---------------------------------------------------------------


@pytest.mark.servers
def test_logged_model_and_bento_carry_the_profile(
    trained: TrainResult, mlflow_server: str, tmp_path: Path
) -> None:
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=trained.model_uri, dst_path=str(tmp_path), tracking_uri=mlflow_server
    )
    profile = load_profile(Path(local) / PROFILE_PATH_IN_MODEL)
    assert len(profile.features) == 30 and profile.task == "binary"
    assert "extra_files" in (Path(local) / "MLmodel").read_text()


@pytest.mark.servers
def test_exported_bento_has_the_profile_and_the_monitoring_code(bento_context: BuildContext) -> None:
    models = list((bento_context.path / "models").rglob(PROFILE_PATH_IN_MODEL))
    assert len(models) == 1
    for module in ("model/monitoring.py", "model/profile.py"):
        assert (bento_context.path / "src" / module).is_file()


@pytest.fixture(scope="module")
def bento_context(
    trained: TrainResult, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> BuildContext:
    from model.bento import export_build_context

    work = tmp_path_factory.mktemp("monitoring-bento")
    return export_build_context(
        trained.model_uri, trained.fingerprint, work / "context", tracking_uri=mlflow_server,
        bentoml_home=work / "bentoml",
    )  # fmt: skip


def test_bench_monitoring_prints_a_cost_per_request() -> None:
    """The micro-benchmark runs (a fresh interpreter: it sets the multiprocess folder before
    prometheus_client is imported) and prints one number per request size; no timed assert."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    done = subprocess.run(
        [sys.executable, "-m", "tools.bench_monitoring", "--repeat", "5"], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("observe,")]
    assert [line.split()[1] for line in lines] == ["1", "100"]
    assert all(float(line.split(":")[1].split()[0]) > 0 for line in lines)


def test_monitor_for_reads_the_model_folder_once_per_process(tmp_path: Path) -> None:
    import prometheus_client

    (tmp_path / "extra_files").mkdir()
    (tmp_path / PROFILE_PATH_IN_MODEL).write_text(build_profile_for_frame().to_json())
    labels = {"mlflow_model_uri": "models:/my-model/7", "fingerprint": "ab" * 32}
    first = monitoring.monitor_for(tmp_path, labels, "monitor_for_test")
    assert monitoring.monitor_for(tmp_path, labels, "monitor_for_test") is first
    text = prometheus_client.generate_latest().decode()
    labelled = f'fingerprint="{"ab" * 32}",model="my-model",service_name="monitor_for_test",version="7"'
    assert f"model_info{{{labelled}}} 1.0" in text
    with pytest.raises(ProfileError, match="no reference profile"):
        monitoring.monitor_for(tmp_path / "elsewhere", labels, "monitor_for_test_2")


def test_the_profile_code_counts_toward_training_and_build_the_counters_toward_build_only() -> None:
    from model.fingerprint import BUILD_SOURCES, training_code_files

    training = {rel for rel, _ in training_code_files()}
    assert "profile.py" in training and "monitoring.py" not in training
    assert {"model/profile.py", "model/monitoring.py"} <= set(BUILD_SOURCES)
