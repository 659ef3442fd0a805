"""The serving image, built from the product's one build context, pushed to a real registry and run
under the pod's constraints: it answers like the MLflow model, holds the training versions, refuses
bad input with 4xx, exposes metrics, and rebuilds to the same content from the same fingerprint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from packaging.utils import canonicalize_name

from model.bento import BuildContext, check_parity, parse_pinned_requirements, tree_digest
from model.container import METRICS_PATH, RUN_AS_USER, WRITABLE_PATHS
from model.data import load_dataset, request_rows
from model.spec import ModelSpec, load_spec
from model.train import TrainResult, load_heldout
from tests.e2e.conftest import E2E_SPEC
from tools.container_run import PushedImage, RunningContainer, build_image, image_size_bytes, local_tag
from tools.docker_env import DockerEngine, Registry, docker, manifest_digest
from tools.image_diff import compare_images, describe

pytestmark = pytest.mark.e2e

Progress = Callable[[str], None]


SPEC: ModelSpec = load_spec(E2E_SPEC)
DATASET = load_dataset(SPEC)
FEATURES = DATASET.feature_names
CLASS_NAMES = [SPEC.class_name(c) for c in DATASET.classes or ()]


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return request_rows(frame, DATASET.features)


def test_pushed_digest_is_what_the_registry_serves(
    pushed: PushedImage, registry: Registry, engine: DockerEngine
) -> None:
    repository = pushed.repository.split("/", 1)[1]
    assert manifest_digest(registry, repository, pushed.tag) == pushed.digest
    assert pushed.digest.startswith("sha256:") and len(pushed.digest) == 71
    # The digest reference (what the Deployment pins) resolves to the image we built.
    resolved = docker(engine, ["image", "inspect", "--format", "{{.Id}}", pushed.ref]).stdout.strip()
    assert resolved == pushed.image_id


def test_container_runs_under_the_pod_constraints(serving: RunningContainer, engine: DockerEngine) -> None:
    inspected = json.loads(docker(engine, ["inspect", serving.container_id]).stdout)[0]
    host = inspected["HostConfig"]
    assert inspected["Config"]["User"] == f"{RUN_AS_USER}:{RUN_AS_USER}"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert set(host["Tmpfs"]) == set(WRITABLE_PATHS)
    assert docker(engine, ["exec", serving.container_id, "id", "-u"]).stdout.strip() == str(RUN_AS_USER)
    # Nothing was written outside the writable volumes: `docker diff` shows only their mount points.
    mount_points = {str(parent) for path in WRITABLE_PATHS for parent in (Path(path), *Path(path).parents)}
    changed = {
        line.split(" ", 1)[1] for line in docker(engine, ["diff", serving.container_id]).stdout.splitlines()
    }
    assert changed <= mount_points, f"written outside {WRITABLE_PATHS}: {sorted(changed - mount_points)}"


def test_predictions_equal_the_mlflow_model_on_heldout_rows(
    serving: RunningContainer, trained: TrainResult, mlflow_server: str
) -> None:
    import mlflow

    heldout = load_heldout(trained.run_id, tracking_uri=mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model(trained.model_uri)
    expected = [SPEC.class_name(label) for label in np.asarray(pyfunc.predict(heldout[list(FEATURES)]))]
    expected_proba = mlflow.sklearn.load_model(trained.model_uri).predict_proba(heldout[list(FEATURES)])

    rows = _rows(heldout)
    labels = requests.post(f"{serving.url}/predict", json={"rows": rows}, timeout=60)
    proba = requests.post(f"{serving.url}/predict_proba", json={"rows": rows}, timeout=60)

    assert labels.status_code == 200, labels.text
    assert proba.status_code == 200, proba.text
    assert len(expected) == len(heldout) > 0
    assert labels.json() == expected  # class names, in the spec's terms
    assert all(list(row) == CLASS_NAMES for row in proba.json())  # keyed by class, in class order
    got = np.asarray([list(row.values()) for row in proba.json()])
    np.testing.assert_allclose(got, expected_proba, rtol=0, atol=1e-12)
    # A client sending a whole number for a float feature is right (DESIGN.md): same answer.
    whole = [{name: round(float(value)) for name, value in rows[0].items()}]
    as_ints = requests.post(f"{serving.url}/predict", json={"rows": whole}, timeout=30)
    as_floats = requests.post(
        f"{serving.url}/predict", json={"rows": [{k: float(v) for k, v in whole[0].items()}]}, timeout=30
    )
    assert as_ints.status_code == 200, as_ints.text
    assert as_ints.json() == as_floats.json()


def _image_packages(engine: DockerEngine, image: str) -> dict[str, str]:
    listed = docker(
        engine,
        [
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            str(RUN_AS_USER),
            "--entrypoint",
            "uv",
            image,
            "pip",
            "list",
            "--no-cache",
            "--format",
            "json",
            "--python",
            "/app/.venv/bin/python",
        ],
    ).stdout
    return {canonicalize_name(item["name"]): item["version"] for item in json.loads(listed)}


def test_image_holds_the_training_versions_of_every_model_package(
    engine: DockerEngine,
    pushed: PushedImage,
    build_context: BuildContext,
    trained: TrainResult,
    mlflow_server: str,
) -> None:
    import mlflow

    installed = _image_packages(engine, pushed.ref)
    model_txt = Path(
        mlflow.artifacts.download_artifacts(
            f"{trained.model_uri}/requirements.txt", tracking_uri=mlflow_server
        )
    ).read_text()
    model_pins = parse_pinned_requirements(model_txt, f"{trained.model_uri}/requirements.txt")
    training_env = {name: metadata.version(name) for name in model_pins}

    assert model_pins == training_env, "the model's captured requirements are not the training environment's"
    check_parity(model_pins, installed)  # raises, naming each package that differs
    # Serving-only packages the context pins (BentoML's closure) are installed as pinned too.
    check_parity(build_context.requirements, installed)


@pytest.mark.parametrize(
    ("body", "problem", "fragments"),
    [
        (b"{not json", "malformed JSON", ["json_invalid", "Invalid JSON"]),
        (b'{"rows": "x"}', "rows is not a list", ['"loc":["rows"]', "Input should be a valid array"]),
        (b'{"rows": []}', "no rows", ["'rows' is empty: send at least one row"]),
        (b"{}", "no rows field", ["the body has no rows", "'rows'", "'columns'", "'data'"]),
        (None, "a row missing a feature", [f"rows[0] is missing feature(s) '{FEATURES[3]}'"]),
        ("text", "a string for a number", [f"rows[0].{FEATURES[0]} must be a number, got the string"]),
        ("unknown", "an unknown feature", ["rows[0] has unknown feature(s) 'not_a_feature'"]),
    ],
)
def test_bad_requests_get_4xx_naming_the_problem(
    serving: RunningContainer,
    trained: TrainResult,
    mlflow_server: str,
    body: bytes | str | None,
    problem: str,
    fragments: list[str],
) -> None:
    row = _rows(load_heldout(trained.run_id, tracking_uri=mlflow_server).head(1))[0]
    if body is None:
        row.pop(FEATURES[3])
        body = json.dumps({"rows": [row]}).encode()
    elif body == "text":
        body = json.dumps({"rows": [{**row, FEATURES[0]: "twelve"}]}).encode()
    elif body == "unknown":
        body = json.dumps({"rows": [{**row, "not_a_feature": 1.0}]}).encode()
    response = requests.post(
        f"{serving.url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert 400 <= response.status_code < 500, f"{problem}: {response.status_code} {response.text}"
    for fragment in fragments:
        assert fragment in response.text, f"{problem}: {fragment!r} not in {response.text}"


def test_metrics_endpoint_counts_requests(serving: RunningContainer) -> None:
    requests.get(f"{serving.url}/livez", timeout=10)
    metrics = requests.get(f"{serving.url}{METRICS_PATH}", timeout=10)
    assert metrics.status_code == 200
    assert "# TYPE" in metrics.text
    assert "request" in metrics.text and "_total" in metrics.text


def test_the_image_user_records_the_model_creation_day_not_the_build_day(
    engine: DockerEngine, build_context: BuildContext, built_image_id: str
) -> None:
    """/etc/shadow's last-change day of the image's user is the day the model was created
    (model.bento.pin_user_creation_day): the base image's useradd takes it from SOURCE_DATE_EPOCH."""
    from model.bento import _mlmodel_creation_time

    created = _mlmodel_creation_time(next(build_context.path.glob("models/*/*/mlflow_model")))
    shadow = docker(
        engine, ["run", "--rm", "--user", "0", "--entrypoint", "cat", built_image_id, "/etc/shadow"]
    ).stdout
    entry = next(line for line in shadow.splitlines() if line.startswith("bentoml:"))
    assert entry.split(":")[2] == str(int(created.timestamp()) // 86_400), entry


def test_same_fingerprint_rebuilds_to_the_same_content(
    engine: DockerEngine,
    build_context: BuildContext,
    built_image_id: str,
    make_context: Callable[[str], BuildContext],
    e2e_dir: Path,
    progress: Progress,
) -> None:
    """Export again (byte-identical folder), build again without the layer cache, compare images.

    Docker's classic builder writes build times into the image config and file mtimes into each RUN
    layer, so the config digest differs between two builds; what must hold is that every layer has
    the same files with the same bytes, modes and owners. The per-layer report is printed.
    """
    again = make_context("context-again")
    assert list(tree_digest(again.path)) == list(tree_digest(build_context.path))
    assert (again.image_name, again.image_tag) == (build_context.image_name, build_context.image_tag)

    second_tag = local_tag(again, "-rebuild")
    second_id = build_image(
        engine,
        again.path,
        again.dockerfile,
        second_tag,
        e2e_dir / "build-2.log",
        environ=dict(os.environ),
        no_cache=True,
        progress=progress,
    )
    try:
        config_diffs, layers = compare_images(engine, built_image_id, second_id, e2e_dir / "compare")
        size_a, size_b = image_size_bytes(engine, built_image_id), image_size_bytes(engine, second_id)
    finally:
        docker(engine, ["rmi", second_tag], check=False)
    progress(
        f"rebuild: config digest {'identical' if second_id == built_image_id else 'differs'} "
        f"({built_image_id[:19]} vs {second_id[:19]})\n" + describe(config_diffs, layers)
    )
    if second_id == built_image_id:
        return
    assert config_diffs == [], f"the image configs differ beyond build times: {config_diffs}"
    changed = [layer for layer in layers if layer.verdict == "content differs"]
    assert not changed, "layers whose files differ between two builds of one fingerprint:\n" + describe(
        [], changed
    )
    assert size_a == size_b
