"""model.bento: the bento and its exported build context, built from a model trained in a real MLflow server.

Real MLflow server, real training, real BentoML build and export (no mocks). The pure helpers
(requirement parsing, parity, versions) are tested directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from model.bento import (
    BENTOML_PACKAGE,
    INSTALL_STEP,
    PRUNE_STEP,
    USER_STEP,
    BentoBuildError,
    BuildContext,
    ParityError,
    _mlmodel_creation_time,
    bento_version,
    check_out_dir,
    check_parity,
    export_build_context,
    normalize_tree,
    parse_model_uri,
    parse_pinned_requirements,
    pin_user_creation_day,
    replace_dir,
    slim_install_step,
    tree_digest,
)
from model.fingerprint import SERVING_SOURCES, build_identity
from model.spec import bento_name_for
from model.train import TrainResult
from tests.conftest import SERVING_MODEL_NAME

MODEL_NAME = SERVING_MODEL_NAME
BENTO_NAME = bento_name_for(MODEL_NAME)  # serving_tests_model
FINGERPRINT = "ab" * 32


# ---- pure helpers ----------------------------------------------------------------------------------


def test_parse_pinned_requirements_reads_pins_and_skips_comments_and_foreign_markers() -> None:
    text = "# header\nNumPy==2.4.6\n\nscikit_learn==1.9.1  # comment\npywin32==306; sys_platform == 'win32'\n"
    assert parse_pinned_requirements(text, "reqs.txt") == {"numpy": "2.4.6", "scikit-learn": "1.9.1"}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("numpy>=2", "not pinned to one exact version"),
        ("numpy", "not pinned to one exact version"),
        ("numpy==2.*", "not pinned to one exact version"),
        ("-r other.txt", "is not a requirement"),
        ("numpy==2.4.6\nnumpy==2.4.5", "again with another version"),
    ],
)
def test_parse_pinned_requirements_refuses_what_is_not_one_exact_version(line: str, fragment: str) -> None:
    with pytest.raises(BentoBuildError, match=fragment) as info:
        parse_pinned_requirements(line, "model/requirements.txt")
    assert "model/requirements.txt:" in str(info.value)  # names the file and line


def test_parse_pinned_requirements_refuses_an_empty_file() -> None:
    with pytest.raises(BentoBuildError, match="lists no packages"):
        parse_pinned_requirements("# nothing\n", "requirements.txt")


def test_check_parity_lists_every_difference() -> None:
    model = {"numpy": "2.4.6", "pandas": "2.3.3", "skops": "0.16.0", "scikit-learn": "1.9.1"}
    image = {"numpy": "2.4.5", "pandas": "2.3.3", "scikit_learn": "1.9.1", "bentoml": "1.4.40"}
    with pytest.raises(ParityError) as info:
        check_parity(model, image)
    message = str(info.value)
    assert "2 difference(s)" in message
    assert "numpy: model 2.4.6, image 2.4.5" in message
    assert "skops: model 0.16.0, image (missing)" in message
    assert "pandas" not in message and "scikit" not in message


def test_check_parity_accepts_extra_serving_packages() -> None:
    check_parity({"numpy": "2.4.6"}, {"numpy": "2.4.6", "bentoml": "1.4.40", "starlette": "1.0"})


def test_bento_version_is_the_build_identity_prefix_and_refuses_anything_else() -> None:
    assert bento_version(FINGERPRINT) == build_identity(FINGERPRINT, "python:3.11-slim")[:32]
    assert bento_version(FINGERPRINT, "registry.test/other:3.11") != bento_version(FINGERPRINT)
    for bad in ("", "abc", FINGERPRINT.upper(), FINGERPRINT + "0"):
        with pytest.raises(BentoBuildError, match="sha256 hex digest"):
            bento_version(bad)


def test_parse_model_uri_takes_only_a_registered_version() -> None:
    assert parse_model_uri("models:/cancer-classifier/12") == ("cancer-classifier", "12")
    for bad in ("models:/cancer-classifier@champion", "runs:/abc/model", "models:/x/latest", "/tmp/model"):
        with pytest.raises(BentoBuildError, match="models:/<name>/<version>"):
            parse_model_uri(bad)


def test_normalize_tree_pins_creation_times_and_mtimes(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "bento.yaml").write_text("name: x\ncreation_time: '2031-01-01T00:00:00+00:00'\n")
    (tmp_path / "m" / "model.yaml").write_text("a: 1\n  creation_time: '2032-02-02T00:00:00+00:00'\n")
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    normalize_tree(tmp_path, stamp)
    assert "creation_time: '2026-01-02T03:04:05+00:00'" in (tmp_path / "bento.yaml").read_text()
    assert "  creation_time: '2026-01-02T03:04:05+00:00'" in (tmp_path / "m" / "model.yaml").read_text()
    assert {p.stat().st_mtime for p in [tmp_path, *tmp_path.rglob("*")]} == {stamp.timestamp()}


BENTO_INSTALL_RUN = (
    'RUN if [ -d ./src ]; \\\n    then INSTALL_ROOT="./src"; \\\n    else INSTALL_ROOT="./env/python"; \\\n'
    f"    fi; {INSTALL_STEP}\n\n\nCOPY --chown=bentoml:bentoml . ./\n"
)


def test_slim_install_step_appends_the_prune_to_the_install_run_once() -> None:
    slim = slim_install_step(BENTO_INSTALL_RUN, "Dockerfile")
    assert f"fi; {INSTALL_STEP}{PRUNE_STEP}\n\n\nCOPY" in slim  # same RUN, not a RUN of its own
    assert slim.count("RUN ") == 1
    assert slim_install_step(slim, "Dockerfile") == slim  # idempotent: a reused export stays the same


@pytest.mark.parametrize(
    ("dockerfile", "found"),
    [("FROM x\nRUN pip install -r requirements.txt\n", 0), (BENTO_INSTALL_RUN * 2, 2)],
)
def test_slim_install_step_refuses_a_template_it_does_not_know(dockerfile: str, found: int) -> None:
    with pytest.raises(BentoBuildError, match=f"bento:1: env/docker/Dockerfile has {found} lines") as info:
        slim_install_step(dockerfile, "bento:1: env/docker/Dockerfile")
    assert "update INSTALL_STEP in model/bento.py" in str(info.value)


BENTO_USER_RUN = (
    "ARG BENTO_USER_GID=1034\n"
    f"{USER_STEP}"
    "    groupadd -g $BENTO_USER_GID -o $BENTO_USER && "
    "useradd -m -u $BENTO_USER_UID -g $BENTO_USER_GID -o -r "
    "$BENTO_USER; \\\n    fi\n"
)


def test_pin_user_creation_day_exports_the_creation_time_to_the_user_run_only() -> None:
    created = datetime(2026, 11, 30, 23, 59, 0, tzinfo=UTC)
    dockerfile = f"FROM base AS base-container\n{BENTO_USER_RUN}\n{BENTO_INSTALL_RUN}"
    pinned = pin_user_creation_day(dockerfile, created, "Dockerfile")
    epoch = int(created.timestamp())
    assert f"RUN export SOURCE_DATE_EPOCH={epoch}; if command -v groupadd" in pinned
    assert pinned.count("SOURCE_DATE_EPOCH") == 1  # not an ARG or ENV: later RUNs and the image keep none
    assert pinned.replace(f"export SOURCE_DATE_EPOCH={epoch}; ", "") == dockerfile
    assert pin_user_creation_day(pinned, created, "Dockerfile") == pinned


@pytest.mark.parametrize(
    ("dockerfile", "found"), [("FROM x\nRUN useradd -r app\n", 0), (BENTO_USER_RUN * 2, 2)]
)
def test_pin_user_creation_day_refuses_a_template_it_does_not_know(dockerfile: str, found: int) -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(BentoBuildError, match=f"bento:1: env/docker/Dockerfile has {found} lines") as info:
        pin_user_creation_day(dockerfile, created, "bento:1: env/docker/Dockerfile")
    assert "update USER_STEP in model/bento.py" in str(info.value)


def test_useradd_takes_the_day_from_source_date_epoch(tmp_path: Path) -> None:
    """The contract pin_user_creation_day relies on: shadow's useradd writes the password's last change
    day from SOURCE_DATE_EPOCH. Run against a scratch root (``--prefix``), never the host's files."""
    useradd = shutil.which("useradd")
    if useradd is None or os.geteuid() != 0:
        pytest.skip("needs shadow's useradd and root (it writes the scratch root's /etc/shadow)")
    etc = tmp_path / "etc"
    etc.mkdir()
    for name, line in [("passwd", "root:x:0:0::/root:/bin/sh\n"), ("group", "root:x:0:\n"),
                       ("shadow", "root:*:1::::::\n"), ("gshadow", "root:*::\n")]:  # fmt: skip
        (etc / name).write_text(line)
    (etc / "login.defs").write_text("")
    day = 19_000
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(day * 86_400 + 3_600)}
    subprocess.run([useradd, "--prefix", str(tmp_path), "-r", "-u", "1034", "bentoml"], env=env, check=True)
    entry = next(line for line in (etc / "shadow").read_text().splitlines() if line.startswith("bentoml:"))
    assert entry.split(":")[2] == str(day)


def test_prune_step_removes_only_test_folders_and_caches(tmp_path: Path) -> None:
    """The shell of PRUNE_STEP, run on a site-packages tree rooted in tmp_path instead of /."""
    site = tmp_path / "app/.venv/lib/python3.11/site-packages"
    kept = ["numpy/testing", "numpy/_core", "pandas/_testing", "sklearn/utils/_testing", "pkg/tests_util"]
    removed = ["numpy/tests", "numpy/_core/tests/data", "pandas/tests/frame", "joblib/test", "scipy/tests"]
    for rel in kept + removed:
        (site / rel).mkdir(parents=True)
        (site / rel / "__init__.py").write_text("")
    (tmp_path / "root/.cache/uv/wheels").mkdir(parents=True)
    (tmp_path / "app/.venv/bin/tests").mkdir(parents=True)  # outside site-packages: not touched
    script = "true" + PRUNE_STEP.replace(" /app/", f" {tmp_path}/app/").replace(
        " /root/", f" {tmp_path}/root/"
    )
    subprocess.run(["sh", "-eu", "-c", script], check=True)
    assert [rel for rel in kept if not (site / rel / "__init__.py").is_file()] == []
    assert [rel for rel in removed if (site / rel).exists()] == []
    assert not (tmp_path / "root/.cache/uv").exists()
    assert (tmp_path / "app/.venv/bin/tests").is_dir()


def test_export_refuses_bad_arguments_before_doing_any_work(tmp_path: Path) -> None:
    with pytest.raises(BentoBuildError, match="models:/<name>/<version>"):
        export_build_context("models:/m@champion", FINGERPRINT, tmp_path / "out")
    with pytest.raises(BentoBuildError, match="sha256"):
        export_build_context("models:/m/1", "not-a-fingerprint", tmp_path / "out")
    with pytest.raises(BentoBuildError, match="base_image is empty"):
        export_build_context("models:/m/1", FINGERPRINT, tmp_path / "out", base_image=" ")
    assert not (tmp_path / "out").exists()


def test_export_refuses_an_out_dir_it_does_not_own_and_leaves_it_alone(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    for out in (taken, Path(".")):  # "." is the working tree: never wiped
        with pytest.raises(BentoBuildError, match="is not empty and is not a previous export") as info:
            export_build_context("models:/m/1", FINGERPRINT, out)
        assert str(out.resolve()) in str(info.value)
    assert (taken / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(BentoBuildError, match="exists and is not a folder"):
        check_out_dir(tmp_path / "file")
    check_out_dir(tmp_path / "new")  # absent: fine
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")  # empty: fine
    (taken / "bento.yaml").write_text("name: x\n")
    check_out_dir(taken)  # a previous export: replaced


def test_replace_dir_swaps_a_folder_into_place(tmp_path: Path) -> None:
    target, new = tmp_path / "ctx", tmp_path / ".ctx-new"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx"]  # no staging or aside folder left
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_replace_dir_keeps_the_old_folder_when_the_move_fails(tmp_path: Path) -> None:
    target = tmp_path / "ctx"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OSError):
        replace_dir(tmp_path / "does-not-exist", target)
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx"]


def test_a_child_that_overruns_its_timeout_is_a_bento_build_error(tmp_path: Path) -> None:
    # The child cannot finish importing BentoML in 0.01 s, on any machine: the timeout always fires.
    with pytest.raises(BentoBuildError, match=r"models:/m/1 into .*out took more than 0.01 s") as info:
        export_build_context("models:/m/1", FINGERPRINT, tmp_path / "out", timeout=0.01)
    assert isinstance(info.value.__cause__, subprocess.TimeoutExpired)
    assert not (tmp_path / "out").exists()


# ---- real MLflow + BentoML -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bento")


@pytest.fixture(scope="module")
def first(trained: TrainResult, mlflow_server: str, work: Path) -> BuildContext:
    return export_build_context(
        trained.model_uri, trained.fingerprint, work / "first", tracking_uri=mlflow_server,
        bentoml_home=work / "home-a",
    )  # fmt: skip


@pytest.fixture(scope="module")
def model_pins(trained: TrainResult, mlflow_server: str) -> dict[str, str]:
    """The model's captured requirements, read through MLflow's own API."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    path = mlflow.pyfunc.get_model_dependencies(trained.model_uri)
    return parse_pinned_requirements(Path(path).read_text(), f"{trained.model_uri}/requirements.txt")


@pytest.mark.servers
def test_context_layout_and_identity(first: BuildContext, trained: TrainResult) -> None:
    assert first.dockerfile == first.path / "env" / "docker" / "Dockerfile"
    assert first.dockerfile.is_file()
    assert first.image_tag == bento_version(trained.fingerprint)
    assert first.image_name == BENTO_NAME
    assert first.bento_tag == f"{BENTO_NAME}:{first.image_tag}"
    assert first.model_tag == f"{BENTO_NAME}:{first.image_tag}"
    mlmodel = first.path / "models" / BENTO_NAME / first.image_tag / "mlflow_model" / "MLmodel"
    assert mlmodel.is_file(), "the exported context must carry the model (models/)"
    bento_yaml = (first.path / "bento.yaml").read_text()
    assert f"mlflow_model_uri: {trained.model_uri}" in bento_yaml
    assert f"mlflow_run_id: {trained.run_id}" in bento_yaml
    sources = sorted(p.relative_to(first.path / "src").as_posix() for p in (first.path / "src").rglob("*.py"))
    assert sources == sorted(SERVING_SOURCES)  # what the service imports: tests/test_service.py


@pytest.mark.servers
def test_bento_packages_equal_the_models_requirements(
    first: BuildContext, model_pins: dict[str, str]
) -> None:
    image_txt = (first.path / "env" / "python" / "requirements.txt").read_text()
    image_pins = parse_pinned_requirements(image_txt, "env/python/requirements.txt")
    assert image_pins == first.requirements
    assert {name: image_pins.get(name) for name in model_pins} == model_pins
    assert BENTOML_PACKAGE in image_pins
    assert "mlflow-skinny" in model_pins and "mlflow" not in image_pins  # the slim MLflow, as trained


@pytest.mark.servers
def test_dockerfile_uses_the_base_image_without_compilers_or_git(
    first: BuildContext, trained: TrainResult
) -> None:
    dockerfile = first.dockerfile.read_text()
    assert "FROM python:3.11-slim AS base-container" in dockerfile
    assert "build-essential" not in dockerfile and " git" not in dockerfile
    assert f"{INSTALL_STEP}{PRUNE_STEP}\n" in dockerfile  # test folders go in the install's own layer
    mlmodel_dir = next(first.path.glob("models/*/*/mlflow_model"))
    created = _mlmodel_creation_time(mlmodel_dir)  # the same instant every timestamp is pinned to
    assert f"RUN export SOURCE_DATE_EPOCH={int(created.timestamp())}; if command -v groupadd" in dockerfile
    assert "ENV SERVING_MODEL_TAG=$SERVING_MODEL_TAG" in dockerfile
    assert f"ARG SERVING_MODEL_TAG={BENTO_NAME}:{bento_version(trained.fingerprint)}" in dockerfile


@pytest.mark.servers
def test_two_exports_are_byte_identical_reused_or_rebuilt(
    first: BuildContext, trained: TrainResult, mlflow_server: str, work: Path
) -> None:
    again = export_build_context(
        trained.model_uri, trained.fingerprint, work / "again", tracking_uri=mlflow_server,
        bentoml_home=work / "home-a",
    )  # fmt: skip
    rebuilt = export_build_context(
        trained.model_uri, trained.fingerprint, work / "rebuilt", tracking_uri=mlflow_server,
        bentoml_home=work / "home-b",
    )  # fmt: skip
    assert (first.reused, again.reused, rebuilt.reused) == (False, True, False)
    reference = list(tree_digest(first.path))
    assert len(reference) > 10
    assert list(tree_digest(again.path)) == reference
    assert list(tree_digest(rebuilt.path)) == reference
    assert {p.stat().st_mtime for p in again.path.rglob("*")} == {
        p.stat().st_mtime for p in first.path.rglob("*")
    }


@pytest.mark.servers
def test_another_base_image_rebuilds_with_that_base(
    first: BuildContext, trained: TrainResult, mlflow_server: str, work: Path
) -> None:
    standin = "registry.test/python-standin:3.11"
    other = export_build_context(
        trained.model_uri, trained.fingerprint, work / "other-base", base_image=standin,
        tracking_uri=mlflow_server, bentoml_home=work / "home-a",
    )  # fmt: skip
    assert not other.reused
    assert other.image_tag == bento_version(trained.fingerprint, standin) != first.image_tag
    assert f"FROM {standin} AS base-container" in other.dockerfile.read_text()
    assert other.requirements == first.requirements


@pytest.mark.servers
def test_parity_fails_on_a_tampered_requirement(
    first: BuildContext, model_pins: dict[str, str], work: Path
) -> None:
    tampered = work / "tampered"
    shutil.copytree(first.path, tampered)
    reqs = tampered / "env" / "python" / "requirements.txt"
    numpy = model_pins["numpy"]
    reqs.write_text(
        reqs.read_text().replace(f"numpy=={numpy}\n", "numpy==1.26.4\n").replace("skops==", "skops-x==")
    )
    with pytest.raises(ParityError) as info:
        check_parity(model_pins, parse_pinned_requirements(reqs.read_text(), str(reqs)))
    assert f"numpy: model {numpy}, image 1.26.4" in str(info.value)
    assert f"skops: model {model_pins['skops']}, image (missing)" in str(info.value)


@pytest.mark.servers
def test_an_unknown_model_version_fails_with_a_clear_error(mlflow_server: str, work: Path) -> None:
    with pytest.raises(BentoBuildError, match=r"models:/no-such-model/7.*MLFLOW_TRACKING_URI"):
        export_build_context(
            "models:/no-such-model/7", FINGERPRINT, work / "missing", tracking_uri=mlflow_server,
            bentoml_home=work / "home-a",
        )  # fmt: skip
    assert not (work / "missing").exists()


@pytest.mark.servers
def test_a_child_failure_is_reported_as_one_error_naming_model_and_folder(
    first: BuildContext, trained: TrainResult, mlflow_server: str, work: Path
) -> None:
    """An exception that is not a BentoBuildError in the child (here: out_dir's parent is a file, so
    mkdir fails after the bento is ready) still reaches the parent as one error with its reason."""
    (work / "a-file").write_text("x")
    out = work / "a-file" / "context"
    with pytest.raises(BentoBuildError) as info:
        export_build_context(
            trained.model_uri, trained.fingerprint, out, tracking_uri=mlflow_server,
            bentoml_home=work / "home-a",
        )  # fmt: skip
    message = str(info.value)
    assert f"building the bento for {trained.model_uri} into {out} failed" in message
    assert "FileExistsError" in message or "NotADirectoryError" in message, message
    assert "see the [bento] log above" not in message, "the child's reason must reach the parent"


@pytest.mark.servers
def test_parity_is_checked_inside_the_export_of_a_reused_bento(
    first: BuildContext, trained: TrainResult, mlflow_server: str, work: Path, model_pins: dict[str, str]
) -> None:
    """Tamper the STORED bento's requirements: the next export reuses it, must refuse it, and must
    leave the previous export in place."""
    home = work / "home-tamper"
    shutil.copytree(work / "home-a", home)  # models already imported: no download
    out = work / "tamper-out"
    good = export_build_context(
        trained.model_uri, trained.fingerprint, out, tracking_uri=mlflow_server, bentoml_home=home,
    )  # fmt: skip
    before = list(tree_digest(out))
    stored = home / "bentos" / BENTO_NAME / good.image_tag / "env" / "python" / "requirements.txt"
    numpy = model_pins["numpy"]
    text = stored.read_text()
    assert f"numpy=={numpy}\n" in text
    stored.write_text(text.replace(f"numpy=={numpy}\n", "numpy==1.26.4\n"))
    with pytest.raises(ParityError) as info:
        export_build_context(
            trained.model_uri, trained.fingerprint, out, tracking_uri=mlflow_server, bentoml_home=home,
        )  # fmt: skip
    assert f"numpy: model {numpy}, image 1.26.4" in str(info.value)
    assert "1 difference(s)" in str(info.value)
    assert list(tree_digest(out)) == before, "a failed export must leave the previous one untouched"
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".tamper-out")) == []


def test_half_copied_models_are_the_model_folders_without_their_model_yaml(tmp_path: Path) -> None:
    """What an export killed while BentoML copied the models into the stored bento leaves: the next
    export rebuilds such a bento instead of failing to load it."""
    from model.bento import half_copied_models

    whole, half = tmp_path / "models" / "m" / "v1", tmp_path / "models" / "m" / "v2"
    whole.mkdir(parents=True)
    half.mkdir()
    (whole / "model.yaml").write_text("name: m\n")
    (half / "saved_model.pkl").write_text("partial")
    (tmp_path / "models" / "m" / "latest").write_text("v1")  # BentoML's pointer file, not a model
    assert half_copied_models(tmp_path) == [half]
    assert half_copied_models(tmp_path / "elsewhere") == []
