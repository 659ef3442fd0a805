"""Security checks: no secret value in what the program writes, MLflow refuses anonymous writes, and
the runtime lock has no known vulnerability (or each accepted one is justified).

- Every stack (dev, staging, prod, local) runs under Pulumi's mocks (tools/stack_mocks.py) with a
  known admin password set as a config secret; the secret values are that password, every
  generated password (``RandomPassword``) and every input the engine received as a secret. None
  may appear in a plaintext stack output, a rendered manifest (tools/render_manifests.py), or any
  line the program printed or logged.
- A real ``mlflow server --app-name basic-auth`` (the config infra/tracking.py deploys) answers 401
  to writes without or with wrong credentials, creates nothing, and the training CLI run with the
  right credentials never prints the password.
- pip-audit checks requirements.txt against PyPI's vulnerability data; it needs that service: when
  it cannot be reached the test is skipped and says so. ACCEPTED lists findings accepted with why.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import REPO_ROOT
from tests.reliability.conftest import full_only, record
from tools.processes import MLFLOW_SERVER_ENV, free_port, mlflow_server_command, running

STACKS = ("dev", "staging", "prod", "local")
ADMIN_PASSWORD = "Reliability-admin-password-7f3c1b9e"  # set as a config secret, must never show
MIN_SECRET_LEN = 8  # shorter "secrets" (flags, empty strings) would match everywhere


# Which parts of a secret input are secret values: a secret object such as a registry login
# ({server, username, password}) is marked secret as a whole, but only its password is one.
SECRET_KEY = re.compile(r"pass|token|secret|kubeconfig|credential|key$|ini$|uri$", re.IGNORECASE)


def _secret_leaves(value: Any, key: str) -> list[str]:
    """String leaves of ``value`` whose own key (or, for a bare string, ``key``) names a secret."""
    if isinstance(value, str):
        return [value] if SECRET_KEY.search(key) else []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _secret_leaves(v, str(k))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _secret_leaves(v, key)]
    return []


def _at(value: Any, dotted: str) -> Any:
    """The value at a dotted path such as ``a.b[0].c`` (as stack_mocks records secret inputs)."""
    for part in dotted.replace("]", "").replace("[", ".").split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def secret_values(run: Any) -> set[str]:
    """Every secret value the run handled: the admin password, generated passwords, and the
    password/token/key/kubeconfig parts of the inputs the engine received as secrets."""
    found = {ADMIN_PASSWORD}
    for resource in run.resources:
        if resource.type == "random:index/randomPassword:RandomPassword":
            found.add(str(resource.outputs.get("result")))
        for path in resource.secret_paths:
            leaf = re.split(r"[.\[]", path)[-1].rstrip("]")
            found.update(_secret_leaves(_at(resource.inputs, path), leaf))
    return {s for s in found if len(s) >= MIN_SECRET_LEN}


def _leaks(text: str, secrets: set[str]) -> list[str]:
    return sorted(s[:4] + "..." for s in secrets if s in text)


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_value_in_stack_outputs_manifests_or_program_output(
    stack: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from tools.render_manifests import manifests_of
    from tools.stack_mocks import run_stack

    caplog.set_level(logging.DEBUG)
    run = run_stack(stack, config={"mlflowAdminPassword": ADMIN_PASSWORD})
    secrets = secret_values(run)
    assert len(secrets) > 1, f"{stack}: no secret values found to check (the check would prove nothing)"
    plaintext = {k: v for k, v in run.outputs.items() if k not in run.secret_outputs}
    manifests = yaml.safe_dump_all(manifests_of(run.resources))
    printed = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    record(
        f"secrets-{stack}",
        {
            "secret_values": len(secrets),
            "plaintext_outputs": len(plaintext),
            "manifest_bytes": len(manifests),
            "output_lines": len((printed.out + printed.err + logged).splitlines()),
        },
    )
    assert not _leaks(json.dumps(plaintext, default=str), secrets), f"{stack}: secret in a plaintext output"
    assert not _leaks(manifests, secrets), f"{stack}: secret in a rendered manifest"
    assert not _leaks(printed.out + printed.err + logged, secrets), f"{stack}: secret in program output"


# ---- MLflow basic auth ---------------------------------------------------------------------------

ADMIN = "admin"
FLASK_SECRET = "reliability-flask-secret-2d8e41a0"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real ``mlflow server --app-name basic-auth`` with infra/tracking.py's auth config."""
    from infra.tracking import auth_config_ini

    root = tmp_path_factory.mktemp("mlflow-auth")
    ini = root / "basic_auth.ini"
    ini.write_text(auth_config_ini(f"sqlite:///{root / 'auth.db'}"))
    port = free_port()
    env = {
        **MLFLOW_SERVER_ENV,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": FLASK_SECRET,  # infra/tracking.py generates one per stack
    }
    with running(
        [*mlflow_server_command(root, port), "--app-name", "basic-auth"],
        ready_url=f"http://127.0.0.1:{port}/health",
        log_path=root / "server.log",
        timeout=240,
        env=env,
        cwd=root,
    ):
        yield f"http://127.0.0.1:{port}", root / "server.log"


CREATE = "/api/2.0/mlflow/experiments/create"
GET = "/api/2.0/mlflow/experiments/get-by-name"


@pytest.mark.servers
@pytest.mark.parametrize("auth", [None, (ADMIN, "wrong-password"), ("nobody", ADMIN_PASSWORD)])
def test_mlflow_refuses_writes_without_valid_credentials(auth_server: Any, auth: Any) -> None:
    url, _ = auth_server
    name = f"anonymous-{auth[0] if auth else 'none'}"
    refused = requests.post(f"{url}{CREATE}", json={"name": name}, auth=auth, timeout=30)
    assert refused.status_code == 401, refused.text
    check = requests.get(
        f"{url}{GET}", params={"experiment_name": name}, auth=(ADMIN, ADMIN_PASSWORD), timeout=30
    )
    assert check.status_code == 404, f"the refused write created {name}: {check.text[:200]}"
    allowed = requests.post(
        f"{url}{CREATE}", json={"name": f"{name}-admin"}, auth=(ADMIN, ADMIN_PASSWORD), timeout=30
    )
    assert allowed.status_code == 200, allowed.text


@full_only
@pytest.mark.servers
def test_training_with_credentials_never_prints_the_password(auth_server: Any, tmp_path: Path) -> None:
    url, server_log = auth_server
    base = [
        sys.executable,
        "-m",
        "model.train",
        "--tracking-uri",
        url,
        "--model-name",
        "auth-check",
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    anonymous = subprocess.run(
        base, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600, check=False
    )
    assert anonymous.returncode == 3, anonymous.stderr
    assert "401" in anonymous.stderr or "credentials" in anonymous.stderr.lower(), anonymous.stderr
    env.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    done = subprocess.run(
        base, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr
    for text in (anonymous.stdout, anonymous.stderr, done.stdout, done.stderr, server_log.read_text()):
        assert ADMIN_PASSWORD not in text and FLASK_SECRET not in text


# ---- dependency audit ----------------------------------------------------------------------------

# Vulnerability id -> why it is accepted (package, where it matters, what mitigates it). Empty: none.
ACCEPTED: dict[str, str] = {}


def test_runtime_lock_has_no_unaccepted_known_vulnerability(tmp_path: Path) -> None:
    report = tmp_path / "audit.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "pip_audit", "--requirement", str(REPO_ROOT / "requirements.txt"),
            "--vulnerability-service", "pypi", "--no-deps", "--disable-pip", "--format", "json",
            "--progress-spinner", "off", "--output", str(report),
        ],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if not report.exists():
        pytest.skip(f"pip-audit could not run (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    dependencies = json.loads(report.read_text())["dependencies"]
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        reason = dependencies[0]["skip_reason"] if dependencies else done.stderr.strip()[-300:]
        pytest.skip(
            f"the vulnerability service was unreachable: none of {len(dependencies)} pins could be "
            f"audited (e.g. {reason})"
        )
    findings = {
        v["id"]: f"{d['name']}=={d['version']}: {v.get('description', '')[:160]}"
        for d in audited
        for v in d.get("vulns", [])
    }
    record(
        "pip-audit",
        {
            "pins": len(dependencies),
            "audited": len(audited),
            "skipped": [d["name"] for d in dependencies if "skip_reason" in d],
            "findings": findings,
            "accepted": sorted(set(findings) & set(ACCEPTED)),
        },
    )
    unaccepted = {k: v for k, v in findings.items() if k not in ACCEPTED}
    assert not unaccepted, "known vulnerabilities in requirements.txt:\n" + "\n".join(
        f"{k}: {v}" for k, v in unaccepted.items()
    )
