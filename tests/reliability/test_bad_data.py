"""The bad training data catalogue, through the real training CLI against a real MLflow server.

Each kind of bad file runs ``python -m model.train --data-path FILE`` as a user would (the full run
starts a process per kind; ``make test`` runs ``model.train.main`` with the same arguments in the
test process, except for ALWAYS_A_PROCESS): it must exit 1
with a message naming the file, the column (where there is one), the rule and the fix, and leave
nothing behind: no registered model or version, no run in the experiment, no model output folder.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE_SPECS, REPO_ROOT
from tests.reliability.conftest import FULL, record

pytestmark = pytest.mark.servers

SPEC = EXAMPLE_SPECS["default"]
DATA = (SPEC.parent / "data" / "train.csv").read_text()
LINES = DATA.splitlines(keepends=True)
HEADER = LINES[0].rstrip("\n").split(",")
ROWS = LINES[1:120]


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    return "".join(",".join(r) + "\n" for r in [header, *rows]).encode()


def _table() -> tuple[list[str], list[list[str]]]:
    return list(HEADER), [line.rstrip("\n").split(",") for line in ROWS]


def _edit(change: Callable[[list[str], list[list[str]]], None]) -> bytes:
    header, rows = _table()
    change(header, rows)
    return _csv(header, rows)


def _drop(column: str) -> Callable[[list[str], list[list[str]]], None]:
    def change(header: list[str], rows: list[list[str]]) -> None:
        i = header.index(column)
        for r in [header, *rows]:
            del r[i]

    return change


def _set(column: str, value: str, every: bool = False) -> Callable[[list[str], list[list[str]]], None]:
    def change(header: list[str], rows: list[list[str]]) -> None:
        i = header.index(column)
        for r in rows if every else rows[7:8]:
            r[i] = value

    return change


def _extra(header: list[str], rows: list[list[str]]) -> None:
    header.insert(0, "patient_id")
    for n, r in enumerate(rows):
        r.insert(0, str(n))


def _duplicate(header: list[str], rows: list[list[str]]) -> None:
    header[3] = header[2]


def _single_class(header: list[str], rows: list[list[str]]) -> None:
    rows[:] = [r for r in rows if r[-1] == "0"]


def _ragged(header: list[str], rows: list[list[str]]) -> None:
    rows[20] += ["1", "2"]


# (kind, file bytes, column named or None, rule, words the message must hold). Kinds marked * train
# the shipped spec with its features listed (``listed_spec``): with inferred features (model.yaml as
# shipped) a missing or extra column is a different model, not an error.
CATALOGUE: list[tuple[str, bytes, str | None, str, list[str]]] = [
    ("empty-file", b"", None, "not-empty", ["the file is empty"]),
    ("header-only", LINES[0].encode(), None, "not-empty", ["no data rows"]),
    ("missing-column*", _edit(_drop("mean_area")), "mean_area", "expected-columns", ["missing columns"]),
    ("missing-target", _edit(_drop("target")), "target", "target-column", ["no column 'target'"]),
    ("extra-column*", _edit(_extra), "patient_id", "expected-columns", ["unexpected columns"]),
    ("wrong-dtype", _edit(_set("worst_area", "12 mm")), "worst_area", "numeric", ["'12 mm'", "line 9"]),
    ("overflow-number", _edit(_set("mean_radius", "1e400")), "mean_radius", "numeric", ["'1e400'"]),
    (
        "all-nan-column",
        _edit(_set("mean_texture", "", every=True)),
        "mean_texture",
        "not-all-missing",
        ["every value"],
    ),
    ("single-class", _edit(_single_class), "target", "min-rows-per-class", ["class counts"]),
    ("duplicate-header", _edit(_duplicate), HEADER[2], "unique-columns", ["duplicate column names"]),
    ("non-utf8", DATA[:4000].replace("17.99", "17,99\xb5", 1).encode("latin-1"), None, "is-csv", ["UTF-8"]),
    ("utf16", "".join(LINES[:50]).encode("utf-16"), None, "is-csv", ["UTF-16"]),
    ("semicolon-delimiter", "".join(LINES[:50]).replace(",", ";").encode(), None, "comma-separated", ["';'"]),
    ("tab-delimiter", "".join(LINES[:50]).replace(",", "\t").encode(), None, "comma-separated", ["'\\t'"]),
    ("ragged-row", _edit(_ragged), None, "is-csv", ["line 22"]),
    ("binary-file", b"PAR1\x00\x15\x04\x15garbage", None, "is-csv", ["binary"]),
]


def _registry_state(tracking_uri: str, name: str, experiment: str) -> tuple[int, int, int]:
    """(registered models named ``name``, their versions, runs in ``experiment``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    models = client.search_registered_models(filter_string=f"name = '{name}'")
    versions = client.search_model_versions(filter_string=f"name = '{name}'")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return len(models), len(versions), len(runs)


def listed_spec(folder: Path) -> Path:
    """model.yaml with its 30 features listed (type double), as a spec that freezes its columns."""
    raw = yaml.safe_load(SPEC.read_text())
    raw["data"] = str(SPEC.parent / raw["data"])
    raw["features"] = {name: "double" for name in HEADER if name != raw["target"]}
    path = folder / "listed.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# Kinds that go through a separate `python -m model.train` process in `make test` too; the full run
# starts one per kind (each start imports scikit-learn and MLflow: ~10-25 s on a busy small host).
ALWAYS_A_PROCESS = ("empty-file", "missing-column", "semicolon-delimiter")


def train_cli(
    spec: Path, data: Path, tracking_uri: str, name: str, output: Path, *, process: bool
) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m model.train`` on ``spec`` with ``data``, as a user runs it:
    in its own process, or (``process=False``) its ``main`` in this one, with the same arguments."""
    argv = [
        "--spec", str(spec), "--data-path", str(data), "--tracking-uri", tracking_uri,
        "--model-name", name, "--experiment", name, "--model-output", str(output), "--json",
    ]  # fmt: skip
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "model.train", *argv],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, check=False,
        )  # fmt: skip
        return done.returncode, done.stderr
    from model.train import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("kind", "content", "column", "rule", "words"), CATALOGUE, ids=[c[0] for c in CATALOGUE]
)
def test_bad_training_data_is_refused_clearly_and_nothing_is_registered(
    mlflow_server: str,
    tmp_path: Path,
    kind: str,
    content: bytes,
    column: str | None,
    rule: str,
    words: list[str],
) -> None:
    kind, listed = kind.rstrip("*"), kind.endswith("*")
    data = tmp_path / f"{kind}.csv"
    data.write_bytes(content)
    name = f"bad-data-{kind}"
    output = tmp_path / "model-output"
    process = FULL or kind in ALWAYS_A_PROCESS
    spec = listed_spec(tmp_path) if listed else SPEC
    code, message = train_cli(spec, data, mlflow_server, name, output, process=process)
    record(
        f"bad-data-{kind}",
        {"exit_code": code, "own_process": process, "message": message.strip().splitlines()[-1]},
    )
    assert code == 1, f"{kind}: exit {code}\n{message}"
    assert "nothing was logged or registered" in message
    assert str(data) in message and f"rule '{rule}'" in message and "Fix:" in message, message
    if column is not None:
        assert f"column '{column}'" in message, message
    for word in words:
        assert word in message, f"{kind}: {word!r} not in\n{message}"
    assert "Traceback" not in message
    assert _registry_state(mlflow_server, name, name) == (0, 0, 0)
    assert not output.exists()


def test_the_catalogue_holds_at_least_ten_kinds() -> None:
    assert len({kind for kind, *_ in CATALOGUE}) >= 10
