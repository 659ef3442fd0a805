"""Ground-truth feedback without a server: the prediction id (model.feedback), the checks of a
feedback body, the counters it feeds (model.monitoring) and the held-out figures the profile carries
for the online comparison (model.profile). The same over HTTP: tests/test_monitoring_live.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.feedback import (
    MIN_KEY_BYTES,
    PREDICTION_ID_HEADER,
    Feedback,
    FeedbackError,
    check_feedback,
    load_key,
    prediction_id,
)
from model.monitoring import MAX_FEEDBACK_VERSIONS, ModelIdentity, Monitor
from model.profile import ONLINE_METRICS, ProfileError, build_profile, load_profile
from model.spec import Feature

CLASSES = ("malignant", "benign")


def check(pid: Any, predictions: list[Any], actuals: list[Any], classes: Any = CLASSES) -> Feedback:
    return check_feedback(pid, predictions, actuals, class_names=classes, max_rows=5)


def test_an_id_names_the_version_and_moves_with_every_answer() -> None:
    pid = prediction_id("3", ["benign", "malignant"])
    version, digest = pid.split(".")
    assert version == "3" and len(digest) == 24 and int(digest, 16) >= 0
    assert prediction_id("3", ["benign", "malignant"]) == pid  # the same answers, the same id
    assert prediction_id("3", ["malignant", "benign"]) != pid  # order matters
    assert prediction_id("4", ["benign", "malignant"]).split(".")[1] != digest  # the version is covered
    assert prediction_id("", [1.5]).startswith(".")  # a model without a registered version


def test_a_keyed_id_verifies_only_with_its_key() -> None:
    key, other = b"a" * MIN_KEY_BYTES, b"b" * MIN_KEY_BYTES
    pid = prediction_id("3", ["benign"], key)
    assert pid != prediction_id("3", ["benign"]) and pid != prediction_id("3", ["benign"], other)
    body = (["benign"], ["malignant"])
    assert check_feedback(pid, *body, class_names=CLASSES, max_rows=5, key=key).version == "3"
    for wrong in (b"", other):  # an unkeyed id, or another stack's key
        with pytest.raises(ValueError, match="are not the answers of prediction_id"):
            check_feedback(pid, *body, class_names=CLASSES, max_rows=5, key=wrong)
    forged = prediction_id("3", ["benign"])  # the public recipe without the key
    with pytest.raises(ValueError, match="are not the answers of prediction_id"):
        check_feedback(forged, *body, class_names=CLASSES, max_rows=5, key=key)


def test_load_key_reads_the_mounted_file_or_stops_the_start(tmp_path: Path) -> None:
    assert load_key(None) == b"" and load_key("") == b""  # no key configured: unkeyed ids
    path = tmp_path / "key"
    path.write_bytes(b"x" * MIN_KEY_BYTES + b"\n")
    assert load_key(str(path)) == b"x" * MIN_KEY_BYTES
    with pytest.raises(RuntimeError, match=r"cannot be read.*mount its Secret"):
        load_key(str(tmp_path / "missing"))
    path.write_bytes(b"short")
    with pytest.raises(RuntimeError, match=f"has 5 bytes, fewer than {MIN_KEY_BYTES}"):
        load_key(str(path))


def test_feedback_with_its_id_is_taken_for_the_version_that_answered() -> None:
    pid = prediction_id("7", ["benign", "malignant"])
    assert check(pid, ["benign", "malignant"], ["benign", "benign"]) == Feedback(
        "7", ("benign", "malignant"), ("benign", "benign")
    )


def test_negative_zero_comes_back_as_zero_from_javascript() -> None:
    pid = prediction_id("2", [-0.0, 1.5])
    assert check(pid, [0, 1.5], [0.0, 1.0], classes=None).predictions == (0.0, 1.5)


def test_regression_feedback_survives_the_json_round_trip_of_its_numbers() -> None:
    answers = [151.2, 1e16, 3.0, -0.1]
    pid = prediction_id("2", answers)
    echoed = json.loads(json.dumps([151.2, 1e16, 3, -0.1]))  # a client may send 3.0 back as 3
    checked = check(pid, echoed, [150, 1e16, 2.5, 0], classes=None)
    assert checked.predictions == (151.2, 1e16, 3.0, -0.1)
    assert checked.actuals == (150.0, 1e16, 2.5, 0.0)


@pytest.mark.parametrize(
    ("pid", "predictions", "actuals", "classes", "fragment"),
    [
        (None, ["benign"], ["benign"], CLASSES, "prediction_id None is not a prediction id"),
        (12, ["benign"], ["benign"], CLASSES, f"send the {PREDICTION_ID_HEADER} header"),
        ("3.abc", ["benign"], ["benign"], CLASSES, "'3.abc' is not a prediction id"),
        ("v3." + "0" * 24, ["benign"], ["benign"], CLASSES, "is not a prediction id"),
        ("03." + "0" * 24, ["benign"], ["benign"], CLASSES, "is not a prediction id"),  # one spelling each
        ("ID", [1.0], [10**400], None, "actuals[0] is 1000"),  # beyond any float: a 400, not a crash
        ("ID", [], [], CLASSES, "predictions is empty"),
        ("ID", ["benign"] * 6, ["benign"] * 6, CLASSES, "predictions has 6 rows, over the limit of 5"),
        ("ID", ["benign", "benign"], ["benign"], CLASSES, "actuals has 1 values for 2 predictions"),
        (
            "ID",
            ["benign"],
            ["healthy"],
            CLASSES,
            "actuals[0] is 'healthy': expected a class name ('malignant'",
        ),
        ("ID", ["benign"], [1], CLASSES, "actuals[0] is 1: expected a class name"),
        ("ID", [True], [1.0], None, "predictions[0] is True: expected a finite number"),
        ("ID", [1.0], ["2.0"], None, "actuals[0] is '2.0': expected a finite number"),
        ("ID", [1.0], [math.nan], None, "actuals[0] is nan: expected a finite number"),
        ("ID", [1.0], [math.inf], None, "actuals[0] is inf: expected a finite number"),
    ],
)
def test_a_bad_feedback_body_names_the_field_and_row(
    pid: Any, predictions: list[Any], actuals: list[Any], classes: Any, fragment: str
) -> None:
    if pid == "ID":
        pid = prediction_id("3", ["benign"])
    with pytest.raises(FeedbackError) as info:
        check(pid, predictions, actuals, classes)
    assert fragment in str(info.value)
    assert str(info.value).startswith(info.value.field)  # the body field the 400 is located at


@pytest.mark.parametrize(
    "tampered",
    [
        lambda pid: (pid, ["malignant", "malignant"]),  # answers edited
        lambda pid: ("4." + pid.split(".")[1], ["benign", "malignant"]),  # another version's id
        lambda pid: (prediction_id("3", ["benign"]), ["benign", "malignant"]),  # another answer's id
    ],
)
def test_answers_that_are_not_those_of_the_id_are_refused(tampered: Any) -> None:
    pid, predictions = tampered(prediction_id("3", ["benign", "malignant"]))
    with pytest.raises(ValueError, match="predictions are not the answers of prediction_id"):
        check(pid, predictions, ["benign", "benign"])


# ---- counting ----------------------------------------------------------------------------------------


def profile_for(task: str, metrics: dict[str, float]) -> Any:
    import pandas as pd

    frame = pd.DataFrame({"x": np.linspace(0, 1, 40)})
    if task == "regression":
        return build_profile(frame, [Feature("x", "double")], np.linspace(0, 9, 40), task, metrics=metrics)
    names = {"0": "malignant", "1": "benign"}
    return build_profile(frame, [Feature("x", "double")], [0, 1] * 20, task, names, metrics)


def monitor_text(profile: Any, feed: list[Feedback]) -> str:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    monitor = Monitor(profile, "svc", ModelIdentity("m", "3", "f" * 64), registry=registry)
    for feedback in feed:
        monitor.observe_feedback(feedback)
    return prometheus_client.generate_latest(registry).decode()


def test_classifier_feedback_counts_right_and_wrong_rows_and_the_confusion_per_version() -> None:
    profile = profile_for("binary", {"accuracy": 0.93, "f1": 0.9, "roc_auc": 0.99})
    text = monitor_text(
        profile,
        [
            Feedback("3", ("benign", "malignant", "benign"), ("benign", "benign", "benign")),
            Feedback("2", ("malignant",), ("malignant",)),
        ],
    )
    assert 'model_feedback_total{correct="true",service_name="svc",version="3"} 2.0' in text
    assert 'model_feedback_total{correct="false",service_name="svc",version="3"} 1.0' in text
    assert 'model_feedback_total{correct="true",service_name="svc",version="2"} 1.0' in text
    confusion = 'model_feedback_confusion_total{actual="benign",predicted="malignant",service_name="svc",'
    assert confusion + 'version="3"} 1.0' in text
    assert 'model_reference_quality{metric="accuracy",service_name="svc",version="3"} 0.93' in text
    assert 'metric="f1"' not in text  # only what feedback can measure again


def test_feedback_series_of_the_served_version_exist_before_any_feedback() -> None:
    text = monitor_text(profile_for("binary", {"accuracy": 0.9}), [])
    assert 'model_feedback_total{correct="true",service_name="svc",version="3"} 0.0' in text
    assert 'model_feedback_total{correct="false",service_name="svc",version="3"} 0.0' in text


def test_regressor_feedback_sums_absolute_and_squared_errors() -> None:
    profile = profile_for("regression", {"mae": 2.0, "rmse": 2.5, "r2": 0.8})
    text = monitor_text(profile, [Feedback("3", (10.0, 5.0, 1.0), (7.0, 5.0, 2.0))])
    assert 'model_feedback_total{service_name="svc",version="3"} 3.0' in text
    assert 'model_feedback_absolute_error_total{service_name="svc",version="3"} 4.0' in text
    assert 'model_feedback_squared_error_total{service_name="svc",version="3"} 10.0' in text
    assert 'model_reference_quality{metric="mae",service_name="svc",version="3"} 2.0' in text
    assert 'model_reference_quality{metric="rmse",service_name="svc",version="3"} 2.5' in text


def test_a_version_s_series_exist_at_zero_before_its_first_rows() -> None:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    monitor = Monitor(profile_for("binary", {}), "svc", ModelIdentity("m", "3", "f" * 64), registry=registry)
    monitor.observe_feedback(Feedback("2", ("benign",), ("benign",)))  # an older version, all right
    text = prometheus_client.generate_latest(registry).decode()
    assert 'model_feedback_total{correct="false",service_name="svc",version="2"} 0.0' in text
    cell = 'model_feedback_confusion_total{actual="malignant",predicted="benign",service_name="svc",'
    cell += 'version="3"} 0.0'
    assert cell in text  # the served version's confusion cells, from the start


def test_one_process_counts_feedback_for_a_bounded_number_of_versions() -> None:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    monitor = Monitor(profile_for("binary", {}), "svc", ModelIdentity("m", "3", "f" * 64), registry=registry)
    others = [str(v) for v in range(100, 100 + MAX_FEEDBACK_VERSIONS - 1)]  # with "3": the limit
    for version in ["3", *others]:
        monitor.observe_feedback(Feedback(version, ("benign",), ("benign",)))
    with pytest.raises(
        ValueError, match=f"refused: this service already counts feedback for {MAX_FEEDBACK_VERSIONS}"
    ):
        monitor.observe_feedback(Feedback("999", ("benign",), ("benign",)))
    monitor.observe_feedback(Feedback(others[0], ("benign",), ("malignant",)))  # a known one still counts
    text = prometheus_client.generate_latest(registry).decode()
    assert 'version="999"' not in text
    assert f'model_feedback_total{{correct="false",service_name="svc",version="{others[0]}"}} 1.0' in text


# ---- the held-out figures in the profile ---------------------------------------------------------------


def test_profile_carries_the_held_out_figures_feedback_can_measure(tmp_path: Path) -> None:
    profile = profile_for("binary", {"accuracy": 0.93, "log_loss": 0.2})
    assert dict(profile.quality) == {"accuracy": 0.93}
    assert set(ONLINE_METRICS) >= set(profile.quality)
    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    assert load_profile(path) == profile
    older = {k: v for k, v in profile.as_dict().items() if k != "quality"}  # written before the field
    path.write_text(json.dumps(older))
    assert dict(load_profile(path).quality) == {}


@pytest.mark.parametrize(
    ("quality", "fragment"),
    [
        ({"f1": 0.9}, "'f1' is not one of accuracy, mae, rmse"),
        ({"accuracy": "high"}, "accuracy is 'high', expected a finite number"),
        ([0.9], "expected a mapping of metric name to number"),
    ],
)
def test_a_bad_quality_field_names_the_problem(tmp_path: Path, quality: Any, fragment: str) -> None:
    raw = profile_for("binary", {"accuracy": 0.9}).as_dict()
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({**raw, "quality": quality}))
    with pytest.raises(ProfileError, match="quality") as info:
        load_profile(path)
    assert fragment in str(info.value)
