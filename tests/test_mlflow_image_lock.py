"""The MLflow server image's lock holds what the deployed command needs.

infra/tracking.py runs ``mlflow server --app-name basic-auth``; MLflow's basic-auth app imports
packages that only its ``auth`` extra installs (Flask-WTF for CSRF). A lock made from plain ``mlflow``
builds an image that exits at start, so every requirement of that extra, read from the installed
MLflow's own metadata, must be pinned in infra/mlflow_image/requirements.txt.
"""

from __future__ import annotations

import re
from importlib.metadata import requires

from tests.conftest import REPO_ROOT

LOCK = REPO_ROOT / "infra/mlflow_image/requirements.txt"
TRACKING = REPO_ROOT / "infra/tracking.py"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _extra_requirements(package: str, extra: str) -> list[str]:
    marker = re.compile(rf"""extra\s*==\s*["']{extra}["']""")
    names = []
    for requirement in requires(package) or []:
        if marker.search(requirement):
            names.append(_normalized(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]))
    return names


def _locked() -> set[str]:
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", LOCK.read_text(encoding="utf-8"), re.MULTILINE)
    return {_normalized(name) for name in pins}


def test_the_deployed_server_runs_the_basic_auth_app() -> None:
    assert '"--app-name", "basic-auth"' in TRACKING.read_text(encoding="utf-8")


def test_the_mlflow_image_lock_pins_the_auth_extra() -> None:
    needed = _extra_requirements("mlflow", "auth")
    assert needed, (
        "MLflow's metadata lists no 'auth' extra: check how this MLflow version installs basic-auth"
    )
    missing = sorted(set(needed) - _locked())
    assert not missing, (
        f"{LOCK.relative_to(REPO_ROOT)} lacks {missing}, which `mlflow server --app-name basic-auth` "
        "imports: list mlflow[auth] in infra/mlflow_image/requirements.in and run `make lock`"
    )
