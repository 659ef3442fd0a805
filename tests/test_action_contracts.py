"""Every `uses:` step's `with:` inputs, checked against what that action accepts at its pinned SHA.

actionlint knows the inputs of popular actions from its own table, not from the commit a workflow
pins, and nothing checks an input's *value* against the action's entrypoint: `command: install` on
pulumi/actions v7.0.0 passes every linter and fails the step ("Input was not correct for command").
So each pinned action's contract is recorded as test data, tests/data/actions/<owner>__<repo>.json,
read from its action.yml and entrypoint source at that SHA (each file names the repository, the SHA,
the tag that resolves to it and the source files). A test ties each file's SHA to the workflows'
pin: bumping an action without refreshing its contract fails here.

A contract says, per input: required (action.yml), default (action.yml) and, where the entrypoint
parses the value, `parse` (an enum, a strict YAML 1.2 boolean, a lenient boolean, a number).
Optionally: `modes` (one input selects what the action does, e.g. pulumi/actions runs install-only
when `command` is absent and then reads only the version inputs), `exclusive` (inputs that must not
be given together) and `requirements` (inputs the entrypoint demands in a given configuration).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
CONTRACTS = REPO_ROOT / "tests" / "data" / "actions"
SHA = re.compile(r"^[0-9a-f]{40}$")
USES_COMMENT = re.compile(r"uses:\s*(\S+?)@([0-9a-f]{40})\s+#\s*(\S+)")

Contract = dict[str, Any]


# ---------------------------------------------------------------- reading contracts and workflows


def contract_path(action: str) -> Path:
    owner, repo = action.lower().split("/", 1)
    return CONTRACTS / f"{owner}__{repo}.json"


def load_contract(action: str) -> Contract:
    path = contract_path(action)
    assert path.is_file(), (
        f"{action} has no contract: record {path.relative_to(REPO_ROOT)} from its action.yml and "
        "entrypoint at the pinned SHA (see tests/data/actions/README.md)"
    )
    contract: Contract = json.loads(path.read_text())
    return contract


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def uses_steps() -> list[tuple[str, dict[str, Any]]]:
    """(where, step) for every step with `uses:` in every workflow."""
    found = []
    for path in workflow_files():
        doc = yaml.safe_load(path.read_text())
        for job_name, job in doc["jobs"].items():
            for index, step in enumerate(job.get("steps", [])):
                if "uses" in step:
                    label = step.get("name", step["uses"].split("@")[0])
                    found.append((f"{path.name}:{job_name}[{index}] {label}", step))
    return found


def pins() -> dict[str, set[tuple[str, str]]]:
    """action (lowercase owner/repo) -> every (sha, version comment) the workflows pin it to."""
    pinned: dict[str, set[tuple[str, str]]] = {}
    for path in workflow_files():
        for match in USES_COMMENT.finditer(path.read_text()):
            action, sha, tag = match.groups()
            pinned.setdefault(action.lower(), set()).add((sha, tag))
    return pinned


# ---------------------------------------------------------------- the check (pure)


def as_input(value: Any) -> str:
    """A `with:` value as the runner hands it to the action (INPUT_<NAME>, always a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    # @actions/core getInput trims surrounding whitespace unless told not to.
    return "" if value is None else str(value).strip()


def is_dynamic(value: str) -> bool:
    return "${{" in value


def normalized(value: str, case: str) -> str:
    return {"lower": value.lower(), "upper": value.upper()}.get(case, value)


def value_problem(name: str, value: str, parse: dict[str, Any]) -> str | None:
    kind = parse["kind"]
    if is_dynamic(value) or kind in ("json", "yaml"):
        return None
    if kind in ("enum", "boolean"):
        case = parse.get("case", "exact")
        allowed = [normalized(v, case) for v in parse["values"]]
        if normalized(value, case) not in allowed:
            return f"input {name!r}: {value!r} is not one of {parse['values']} ({parse['parser']})"
    if kind == "number":
        try:
            float(value)
        except ValueError:
            return f"input {name!r}: {value!r} is not a number ({parse['parser']})"
    return None


def effective(contract: Contract, given: dict[str, str], name: str) -> str | None:
    """The value the entrypoint sees: the given one, else action.yml's default, case-normalized."""
    spec = contract["inputs"][name]
    value = given.get(name, spec.get("default"))
    if value is None:
        return None
    case = spec.get("parse", {}).get("case", "exact")
    return normalized(value, case)


def violations(contract: Contract, with_inputs: dict[str, Any] | None) -> list[str]:
    """What the action at the contract's SHA would reject or silently ignore in these inputs."""
    inputs: dict[str, Any] = contract["inputs"]
    by_lower = {name.lower(): name for name in inputs}
    given: dict[str, str] = {}
    problems = []
    for raw_name, raw_value in (with_inputs or {}).items():
        # The runner passes INPUT_<NAME uppercased>: input names are case-insensitive.
        name = by_lower.get(str(raw_name).lower())
        if name is None:
            problems.append(
                f"unknown input {raw_name!r}: {contract['repository']}@{contract['tag']} "
                f"accepts {sorted(inputs)}"
            )
            continue
        given[name] = as_input(raw_value)
    for name, spec in inputs.items():
        if spec["required"] and spec.get("default") is None and not given.get(name):
            problems.append(f"required input {name!r} (no default in action.yml) is not given")
        parse = spec.get("parse")
        if parse and given.get(name):
            problem = value_problem(name, given[name], parse)
            if problem:
                problems.append(problem)

    modes = contract.get("modes")
    if modes:
        selector = modes["selector"]
        if not given.get(selector):
            mode = modes["absent"]
            ignored = sorted(set(given) - set(mode["reads"]))
            if ignored:
                problems.append(
                    f"without {selector!r} the action runs {mode['name']} and ignores {ignored} "
                    f"({mode['source']})"
                )
        else:
            mode = modes["present"]
            for name in mode["requires"]:
                if effective(contract, given, name) in (None, ""):
                    problems.append(
                        f"with {selector!r} the action requires input {name!r} ({mode['source']})"
                    )

    for group in contract.get("exclusive", []):
        both = [name for name in group if given.get(name)]
        if len(both) > 1:
            problems.append(f"inputs {both} must not be given together ({contract['exclusive_source']})")

    for rule in contract.get("requirements", []):
        applies = all(effective(contract, given, name) in values for name, values in rule["when"].items())
        waived = any(given.get(name) for name in rule.get("unless_given", []))
        if applies and not waived:
            for name in rule["require"]:
                if not given.get(name):
                    problems.append(f"input {name!r} is required here ({rule['source']})")
    return problems


# ---------------------------------------------------------------- the recorded data itself


def contract_files() -> list[Path]:
    return sorted(CONTRACTS.glob("*.json"))


@pytest.mark.parametrize("path", contract_files(), ids=lambda p: p.stem)
def test_each_contract_names_its_repository_sha_and_sources(path: Path) -> None:
    contract = json.loads(path.read_text())
    assert contract_path(contract["repository"]) == path, f"{path.name} holds {contract['repository']}"
    assert SHA.match(contract["sha"]), f"{path.name}: sha {contract['sha']!r}"
    assert re.match(r"^v\d+\.\d+\.\d+$", contract["tag"]), f"{path.name}: tag {contract['tag']!r}"
    assert "action.yml" in contract["sources"] and len(contract["sources"]) >= 2, (
        f"{path.name}: name action.yml and the entrypoint source the contract was read from"
    )
    assert contract["provenance"], path.name
    assert contract["inputs"], path.name
    for name, spec in contract["inputs"].items():
        assert set(spec) <= {"required", "default", "parse"}, f"{path.name}: {name}: {sorted(spec)}"
        if "parse" in spec:
            assert spec["parse"]["kind"] in {"enum", "boolean", "number", "json", "yaml"}, (
                f"{path.name}: {name}"
            )
            assert spec["parse"].get("parser"), f"{path.name}: {name}: say which code parses it"
    modes = contract.get("modes")
    if modes:
        assert modes["selector"] in contract["inputs"]
        assert set(modes["absent"]["reads"]) <= set(contract["inputs"])
        assert set(modes["present"]["requires"]) <= set(contract["inputs"])


def test_every_pinned_action_has_a_contract_from_its_pinned_sha() -> None:
    pinned = pins()
    assert pinned, "no `uses: owner/repo@<sha> # vX.Y.Z` line found"
    for action, refs in pinned.items():
        assert len(refs) == 1, f"{action} is pinned to several commits: {sorted(refs)}; pin one everywhere"
        [(sha, tag)] = refs
        contract = load_contract(action)
        assert contract["sha"] == sha, (
            f"{action} is pinned to {sha} but {contract_path(action).name} was read at {contract['sha']}: "
            "refresh the contract from the new commit's action.yml and entrypoint"
        )
        assert contract["tag"] == tag, (
            f"{action}: the workflows say {tag}, the contract says {contract['tag']}"
        )
    recorded = {json.loads(p.read_text())["repository"].lower() for p in contract_files()}
    assert recorded == set(pinned), (
        f"contracts for actions no workflow uses: {sorted(recorded - set(pinned))}"
    )


def test_every_uses_step_is_pinned_to_a_full_sha() -> None:
    for where, step in uses_steps():
        action, _, ref = str(step["uses"]).partition("@")
        assert SHA.match(ref), f"{where}: {step['uses']} is not pinned to a commit SHA"
        assert action.lower() in pins(), f"{where}: {step['uses']} has no `# vX.Y.Z` comment"


# ---------------------------------------------------------------- the workflows against the contracts


@pytest.mark.parametrize(("where", "step"), uses_steps(), ids=[w for w, _ in uses_steps()])
def test_uses_step_inputs_meet_the_action_contract(where: str, step: dict[str, Any]) -> None:
    contract = load_contract(str(step["uses"]).split("@")[0])
    assert violations(contract, step.get("with")) == [], where


# ---------------------------------------------------------------- the check can fail

PULUMI = "pulumi/actions"
LOGIN = "azure/login"
UP = {"command": "up", "stack-name": "o/p/dev", "pulumi-version": "3.272.0"}
OIDC = {"client-id": "${{ vars.AZURE_CLIENT_ID }}", "tenant-id": "t", "subscription-id": "s"}


@pytest.mark.parametrize(
    ("action", "inputs", "expected"),
    [
        # The defect found in deploy.yml: install-only mode is chosen by leaving `command` out.
        (PULUMI, {"command": "install", "pulumi-version": "3.272.0"}, "'install' is not one of"),
        (PULUMI, {**UP, "command": "apply"}, "Input was not correct for command"),
        (
            PULUMI,
            {"pulumi-version": "3.272.0", "stack-name": "o/p/dev"},
            "runs install-only and ignores ['stack-name']",
        ),
        (PULUMI, {"command": "preview"}, "requires input 'stack-name'"),
        (PULUMI, {**UP, "diff": "yes"}, "'yes' is not one of"),
        (PULUMI, {**UP, "parallel": "many"}, "is not a number"),
        (PULUMI, {**UP, "color": "rainbow"}, "is not one of"),
        (PULUMI, {**UP, "pulumi-version-file": ".pulumi.version"}, "must not be given together"),
        (PULUMI, {**UP, "policy-packs": "policy"}, "unknown input 'policy-packs'"),
        (LOGIN, {**OIDC, "environment": "AzurePublicCloud"}, "'AzurePublicCloud' is not one of"),
        (LOGIN, {**OIDC, "auth-type": "OIDC"}, "'OIDC' is not one of"),
        (LOGIN, {**OIDC, "allow-no-subscriptions": "yes"}, "silently means false"),
        (LOGIN, {"client-id": "c", "subscription-id": "s"}, "input 'tenant-id' is required here"),
        (LOGIN, {"client-id": "c", "tenant-id": "t"}, "input 'subscription-id' is required here"),
        (LOGIN, {**OIDC, "client_id": "c"}, "unknown input 'client_id'"),
        ("actions/checkout", {"persist-credentials": "no"}, "silently means false"),
        ("actions/setup-python", {"python-version": "3.11", "cache": "uv"}, "is not one of"),
        ("actions/setup-python", {"python-version": "3.11", "check-latest": "yes"}, "YAML 1.2"),
    ],
)
def test_the_contract_check_flags_what_the_action_rejects(
    action: str, inputs: dict[str, str], expected: str
) -> None:
    problems = violations(load_contract(action), inputs)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("action", "inputs"),
    [
        (PULUMI, {"pulumi-version": "3.272.0"}),  # install-only, as staging/prod use it
        (PULUMI, {**UP, "diff": True, "comment-on-pr": "TRUE", "policyPacks": "policy"}),
        (PULUMI, {**UP, "expect-no-changes": "${{ inputs.strict }}"}),  # an expression: value unknown
        (LOGIN, {**OIDC, "environment": "AzureCloud", "auth-type": "service_principal"}),
        (LOGIN, {"client-id": "c", "tenant-id": "t", "allow-no-subscriptions": "TRUE"}),
        (LOGIN, {"creds": "${{ secrets.AZURE_CREDENTIALS }}"}),
    ],
)
def test_the_contract_check_accepts_what_the_action_accepts(action: str, inputs: dict[str, Any]) -> None:
    assert violations(load_contract(action), inputs) == []
