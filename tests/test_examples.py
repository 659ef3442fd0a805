"""The shipped example specs, end to end: each trains and passes its gate in a real MLflow server,
builds its bento (parity checked inside the export), and serves the model's own predictions over
HTTP from a real ``bentoml serve`` of the exported build context, in its task's terms.

The default spec (model.yaml) is covered the same way by test_train, test_bento and test_service.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from model.data import load_dataset, request_rows
from model.metric_rules import metric_names
from model.train import load_heldout
from tests.conftest import ServedExample
from tools import smoke

pytestmark = pytest.mark.servers

EXAMPLES = ["wine", "diabetes", "churn"]
PLOTS = {
    "binary": {"plots/confusion_matrix.png", "plots/roc_curve.png"},
    "multiclass": {"plots/confusion_matrix.png", "plots/roc_curve.png"},
    "regression": {"plots/residuals.png", "plots/predicted_vs_actual.png"},
}


def json_rows(example: ServedExample, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Held-out rows as JSON values of each feature's declared or inferred type."""
    return request_rows(frame, load_dataset(example.spec).features)


def post(example: ServedExample, path: str, rows: list[dict[str, Any]]) -> requests.Response:
    return requests.post(f"{example.url}{path}", json={"rows": rows}, timeout=120)


@pytest.fixture(scope="module", params=EXAMPLES)
def example(request: pytest.FixtureRequest, served_example: Any) -> ServedExample:
    return served_example(request.param)


def test_trains_passes_its_gate_and_logs_the_tasks_metrics_and_plots(
    example: ServedExample, mlflow_server: str
) -> None:
    result, spec = example.result, example.spec
    assert result.gate_passed and result.task == spec.task
    assert set(result.metrics) == set(metric_names(spec.task))
    client = MlflowClient(mlflow_server)
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == PLOTS[spec.task]
    mv = client.get_model_version(spec.registered_model_name, result.version)
    assert (mv.tags["gate"], mv.tags["task"]) == ("passed", spec.task)


def test_the_bento_is_named_after_the_spec_and_pins_the_models_packages(example: ServedExample) -> None:
    ctx, spec = example.context, example.spec
    assert ctx.image_name == spec.bento_name and ctx.bento_tag.startswith(f"{spec.bento_name}:")
    model_txt = next((ctx.path / "models").rglob("mlflow_model/requirements.txt")).read_text()
    model_pins = dict(line.split("==", 1) for line in model_txt.splitlines() if "==" in line)
    assert {name: ctx.requirements.get(name) for name in model_pins} == model_pins  # parity


def test_http_predictions_equal_the_models_own_in_the_tasks_terms(
    example: ServedExample, mlflow_server: str
) -> None:
    import mlflow

    spec = example.spec
    heldout = load_heldout(example.result.run_id, tracking_uri=mlflow_server)
    rows = json_rows(example, heldout)
    response = post(example, "/predict", rows)
    assert response.status_code == 200, response.text
    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model(example.result.model_uri)
    frame = pd.DataFrame.from_records(rows)
    expected = pyfunc.predict(frame)
    if spec.is_classifier:
        assert response.json() == [spec.class_name(v) for v in expected]
        assert set(response.json()) <= {spec.class_name(c) for c in load_dataset(spec).classes or ()}
    else:
        np.testing.assert_allclose(response.json(), expected, rtol=1e-9)
        assert all(isinstance(v, float) for v in response.json())


def test_predict_proba_exists_for_classifiers_only_and_names_the_classes_in_order(
    example: ServedExample, mlflow_server: str
) -> None:
    spec = example.spec
    heldout = load_heldout(example.result.run_id, tracking_uri=mlflow_server)
    response = post(example, "/predict_proba", json_rows(example, heldout.head(5)))
    if not spec.is_classifier:
        assert response.status_code == 404
        return
    assert response.status_code == 200, response.text
    names = [spec.class_name(c) for c in load_dataset(spec).classes or ()]
    for row in response.json():
        assert list(row) == names
        assert sum(row.values()) == pytest.approx(1.0)


def test_a_bad_request_is_a_4xx_naming_the_feature(example: ServedExample, mlflow_server: str) -> None:
    heldout = load_heldout(example.result.run_id, tracking_uri=mlflow_server)
    row = json_rows(example, heldout.head(1))[0]
    name = next(iter(row))
    response = post(example, "/predict", [{**row, name: None}])
    assert response.status_code == 400 and f"rows[0].{name}" in response.text, response.text


def test_an_unknown_category_is_a_4xx_listing_the_categories(served_example: Any, mlflow_server: str) -> None:
    churn: ServedExample = served_example("churn")
    heldout = load_heldout(churn.result.run_id, tracking_uri=mlflow_server)
    row = json_rows(churn, heldout.head(1))[0]
    response = post(churn, "/predict", [{**row, "plan": "gold"}])
    assert response.status_code == 400, response.text
    assert "rows[0].plan must be one of 'basic', 'standard', 'premium', got 'gold'" in response.text


def test_the_deploy_smoke_test_passes_in_the_tasks_terms(example: ServedExample) -> None:
    rows, expected = smoke.sample_rows(example.spec, None, 30)
    logged: list[str] = []
    smoke.run_smoke(
        example.url, example.spec, rows, expected, min_agreement=0.7, ready_timeout=60, log=logged.append
    )
    assert any(("class names" in line) or ("numbers, rmse" in line) for line in logged), logged
