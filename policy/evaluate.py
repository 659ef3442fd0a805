"""Evaluate the policy pack without the Pulumi engine, over resources the stack mocks recorded.

The engine calls each resource policy once per resource with the resource's input properties, the
policy's config (from ``--policy-pack-config``) and ``PULUMI_STACK`` set; this module does the same
in process, so CI can check every stack without a Pulumi CLI:

    python -m policy.evaluate dev staging prod local     # exit 1 on any mandatory violation
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pulumi.runtime import settings as pulumi_settings
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from policy.policies import POLICIES, STACK_POLICIES

POLICY_DIR = Path(__file__).resolve().parent
LEVELS = {level.value: level for level in EnforcementLevel}


@dataclass(frozen=True)
class Subject:
    """One resource as the engine would show it to a resource or stack policy."""

    type: str
    name: str
    props: Mapping[str, Any]
    protect: bool = False  # ResourceOptions.protect, which the engine passes in the options
    urn: str = ""  # "" -> derived from type and name
    dependencies: tuple[str, ...] = ()  # URNs of the resources this one depends on

    def urn_in(self, stack: str) -> str:
        return self.urn or f"urn:pulumi:{stack}::ml-delivery::{self.type}::{self.name}"


@dataclass(frozen=True)
class Violation:
    policy: str
    level: str
    resource_type: str
    resource_name: str
    message: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.policy}: {self.resource_type} '{self.resource_name}': {self.message}"


class PolicyConfigError(ValueError):
    """A policy pack config file that the engine would reject too."""


def load_pack_config(path: Path | None) -> dict[str, dict[str, Any]]:
    """Read a ``--policy-pack-config`` JSON file: {"all"|policy: level | {enforcementLevel?, ...}}."""
    if path is None or not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PolicyConfigError(f"{path}: not valid JSON ({err}). Fix the file's syntax.") from err
    if not isinstance(raw, dict):
        raise PolicyConfigError(f"{path}: expected a JSON object keyed by policy name (or 'all').")
    known = {policy.name for policy in (*POLICIES, *STACK_POLICIES)} | {"all"}
    config: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key not in known:
            raise PolicyConfigError(f"{path}: unknown policy '{key}'. Use one of {sorted(known)}.")
        entry = {"enforcementLevel": value} if isinstance(value, str) else dict(value)
        level = entry.get("enforcementLevel")
        if level is not None and level not in LEVELS:
            raise PolicyConfigError(
                f"{path}: {key}.enforcementLevel '{level}' is not one of {sorted(LEVELS)}."
            )
        config[key] = entry
    return config


def stack_config_path(stack: str) -> Path:
    """The policy config a stack is previewed with: policy/config.<stack>.json, else policy/config.json
    (the strict defaults; .github/workflows/deploy.yml picks the file the same way)."""
    specific = POLICY_DIR / f"config.{stack}.json"
    return specific if specific.exists() else POLICY_DIR / "config.json"


def _collect(sink: list[str], message: str, _urn: str | None = None) -> None:
    """A report_violation that keeps the messages."""
    sink.append(message)


def _collect_at(sink: list[tuple[str, str | None]], message: str, urn: str | None = None) -> None:
    """A report_violation that keeps the messages and the URNs they name."""
    sink.append((message, urn))


@contextmanager
def _stack_env(stack: str) -> Iterator[None]:
    """As the analyzer runs: PULUMI_STACK set and Pulumi's runtime configured for ``stack``."""
    previous = os.environ.get("PULUMI_STACK")
    previous_runtime = pulumi_settings.SETTINGS.stack
    os.environ["PULUMI_STACK"] = stack
    pulumi_settings.SETTINGS.stack = stack
    try:
        yield
    finally:
        pulumi_settings.SETTINGS.stack = previous_runtime
        if previous is None:
            os.environ.pop("PULUMI_STACK", None)
        else:
            os.environ["PULUMI_STACK"] = previous


def evaluate(
    subjects: Iterable[Subject], *, stack: str, config: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Violation]:
    """Every violation the pack reports for ``subjects`` (unknown values -> advisory, like the engine)."""
    config = config or {}
    subjects = list(subjects)
    violations: list[Violation] = []
    with _stack_env(stack):
        for policy in POLICIES:
            entry = {**config.get("all", {}), **config.get(policy.name, {})}
            default = policy.enforcement_level or EnforcementLevel.MANDATORY
            level = str(entry.pop("enforcementLevel", None) or default.value)
            if level == EnforcementLevel.DISABLED.value:
                continue
            for subject in subjects:
                found: list[str] = []
                args = ResourceValidationArgs(
                    subject.type,
                    unknown_checking_proxy(dict(subject.props)),
                    f"urn:pulumi:{stack}::ml-delivery::{subject.type}::{subject.name}",
                    subject.name,
                    PolicyResourceOptions(
                        subject.protect, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None
                    ),
                    None,
                    entry,
                )
                try:
                    policy.validate(args, partial(_collect, found))
                except UnknownValueError as err:
                    violations.append(
                        Violation(policy.name, "advisory", subject.type, subject.name, f"unknown: {err}")
                    )
                violations += [Violation(policy.name, level, subject.type, subject.name, m) for m in found]
        violations += _evaluate_stack(subjects, stack, config)
    return violations


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


def _evaluate_stack(
    subjects: list[Subject], stack: str, config: Mapping[str, Mapping[str, Any]]
) -> list[Violation]:
    """The stack policies over every resource, with each one's dependencies resolved by URN."""
    by_urn: dict[str, PolicyResource] = {}
    for subject in subjects:
        urn = subject.urn_in(stack)
        by_urn[urn] = PolicyResource(
            subject.type,
            unknown_checking_proxy(dict(subject.props)),
            urn,
            subject.name,
            _options(),
            None,
            None,
            [],
            {},
        )
    for subject in subjects:
        resource = by_urn[subject.urn_in(stack)]
        resource.dependencies = [by_urn[d] for d in subject.dependencies if d in by_urn]
    names = {s.urn_in(stack): s for s in subjects}
    violations: list[Violation] = []
    for policy in STACK_POLICIES:
        entry = {**config.get("all", {}), **config.get(policy.name, {})}
        level = str(
            entry.pop("enforcementLevel", None)
            or (policy.enforcement_level or EnforcementLevel.MANDATORY).value
        )
        if level == EnforcementLevel.DISABLED.value:
            continue
        found: list[tuple[str, str | None]] = []
        policy.validate(StackValidationArgs(list(by_urn.values()), entry), partial(_collect_at, found))
        for message, at in found:
            named = names.get(at or "")
            violations.append(
                Violation(
                    policy.name,
                    level,
                    named.type if named else "stack",
                    named.name if named else stack,
                    message,
                )
            )
    return violations


def subjects_of(stack_run: Any) -> list[Subject]:
    """The resources a ``tools.stack_mocks.StackRun`` recorded, as policy subjects."""
    return [
        Subject(r.type, r.name, r.inputs, r.protect, r.urn, tuple(r.depends_on)) for r in stack_run.resources
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("stacks", nargs="+", help="stack names (Pulumi.<stack>.yaml)")
    parser.add_argument("--preview", action="store_true", help="run the program as a preview")
    options = parser.parse_args(argv)

    from tools.stack_mocks import run_stack  # the program under mocks: heavy imports, load on use

    failed = False
    for stack in options.stacks:
        print(f"==> {stack}: running the program under mocks", flush=True)
        run = run_stack(stack, preview=options.preview)
        subjects = subjects_of(run)
        violations = evaluate(subjects, stack=stack, config=load_pack_config(stack_config_path(stack)))
        for violation in violations:
            print(f"    {violation}")
        mandatory = [v for v in violations if v.level == EnforcementLevel.MANDATORY.value]
        failed |= bool(mandatory)
        print(f"    {len(subjects)} resources, {len(mandatory)} mandatory / {len(violations)} violations")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
