"""The whole policy pack over every stack: zero mandatory violations.

The pack runs the way `pulumi preview --policy-pack policy` runs it: `python -m pulumi.policy
<engine> policy/` starts policy/__main__.py, which serves the analyzer over gRPC on loopback; this
test plays the engine (GetAnalyzerInfo, Configure from the stack's policy config, one Analyze per
resource) with the registrations tools.stack_mocks recorded for each stack. The in-process
evaluator behind `make policy` (policy/evaluate.py) must report the same violations.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from policy.evaluate import Subject, evaluate, load_pack_config, stack_config_path, subjects_of
from policy.policies import K8S_PROVIDER_TYPE, POLICIES, STACK_POLICIES
from tests.conftest import REPO_ROOT, stop_process

STACKS = ("dev", "staging", "prod", "local")
MANDATORY = analyzer_pb2.EnforcementLevel.Value("MANDATORY")
PROJECT = "ml-delivery"


@functools.cache
def stack_subjects(stack: str) -> tuple[Subject, ...]:
    from tools.stack_mocks import run_stack

    return tuple(subjects_of(run_stack(stack)))


@contextlib.contextmanager
def running_pack(stack: str = "dev") -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """The real policy pack process, serving the analyzer protocol on a loopback port; the engine
    starts the analyzer with PULUMI_STACK set to the stack under analysis."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:0", str(REPO_ROOT / "policy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=REPO_ROOT / "policy",
        env={**os.environ, "PULUMI_STACK": stack},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        port = proc.stdout.readline().decode().strip()
        if not port.isdigit():
            stop_process(proc)
            raise RuntimeError(f"policy pack did not start: {port!r} {proc.stderr.read().decode()[-2000:]}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def pack() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    with running_pack("dev") as stub:
        yield stub


def configure(stub: analyzer_pb2_grpc.AnalyzerStub, config: Mapping[str, Mapping[str, Any]]) -> None:
    """Send a --policy-pack-config the way the engine does (every policy, its level and properties)."""
    request = analyzer_pb2.ConfigureAnalyzerRequest()
    for policy in (*POLICIES, *STACK_POLICIES):
        entry = {**config.get("all", {}), **config.get(policy.name, {})}
        level = entry.pop("enforcementLevel", None) or "mandatory"
        properties = struct_pb2.Struct()
        json_format.ParseDict(entry, properties)
        request.policyConfig[policy.name].CopyFrom(
            analyzer_pb2.PolicyConfig(
                enforcementLevel=analyzer_pb2.EnforcementLevel.Value(level.upper()), properties=properties
            )
        )
    stub.Configure(request)


def analyze(stub: analyzer_pb2_grpc.AnalyzerStub, stack: str, subject: Subject) -> list[tuple[str, int, str]]:
    """(policy, enforcement level, message) for each violation the pack reports on one resource."""
    properties = struct_pb2.Struct()
    json_format.ParseDict(json.loads(json.dumps(dict(subject.props), default=str)), properties)
    request = analyzer_pb2.AnalyzeRequest(
        type=subject.type,
        properties=properties,
        urn=f"urn:pulumi:{stack}::{PROJECT}::{subject.type}::{subject.name}",
        name=subject.name,
        options=analyzer_pb2.AnalyzerResourceOptions(protect=subject.protect),
    )
    response = stub.Analyze(request)
    return [(d.policyName, d.enforcementLevel, d.message) for d in response.diagnostics]


def analyze_stack(
    stub: analyzer_pb2_grpc.AnalyzerStub, stack: str, subjects: tuple[Subject, ...]
) -> list[tuple[str, int, str]]:
    """(policy, level, message) of the stack policies over every resource, with its dependencies,
    as the engine sends them after a preview or update (AnalyzeStack)."""
    resources = []
    for subject in subjects:
        properties = struct_pb2.Struct()
        json_format.ParseDict(json.loads(json.dumps(dict(subject.props), default=str)), properties)
        resources.append(
            analyzer_pb2.AnalyzerResource(
                type=subject.type,
                properties=properties,
                urn=subject.urn_in(stack),
                name=subject.name,
                dependencies=list(subject.dependencies),
            )
        )
    response = stub.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=resources))
    return [(d.policyName, d.enforcementLevel, d.message) for d in response.diagnostics]


def test_pack_advertises_every_policy_as_mandatory(pack: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = pack.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "ml-delivery-policies"
    advertised = {p.name: p for p in info.policies}
    assert sorted(advertised) == sorted(p.name for p in (*POLICIES, *STACK_POLICIES))
    assert all(p.enforcementLevel == MANDATORY for p in info.policies)
    schema = advertised["no-unapproved-load-balancer"].configSchema
    assert "allowedServices" in schema.properties


def test_pack_blocks_a_non_compliant_resource(pack: analyzer_pb2_grpc.AnalyzerStub) -> None:
    """The harness is live: what the pack reports over gRPC is what a user would see."""
    configure(pack, {})
    bad = Subject(
        "kubernetes:apps/v1:Deployment",
        "bad",
        {
            "metadata": {"name": "bad"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x:1"}]}}},
        },
    )
    found = analyze(pack, "dev", bad)
    assert {name for name, _, _ in found} == {
        "images-pinned-by-digest",
        "containers-hardened",
        "containers-resources-set",
        "containers-probed",
    }
    assert all(level == MANDATORY for _, level, _ in found)
    assert any("x:1' is not pinned by digest" in message for _, _, message in found)


@pytest.mark.parametrize("stack", STACKS)
def test_stack_has_no_mandatory_violation(stack: str) -> None:
    subjects = stack_subjects(stack)
    assert subjects, f"{stack}: the mocks recorded no resource"
    config = load_pack_config(stack_config_path(stack))
    with running_pack(stack) as pack:
        configure(pack, config)
        over_grpc = sorted(
            (policy, s.name, message)
            for s in subjects
            for policy, level, message in analyze(pack, stack, s)
            if level == MANDATORY
        )
        over_grpc += sorted(
            (policy, "stack", message)
            for policy, level, message in analyze_stack(pack, stack, subjects)
            if level == MANDATORY
        )
    assert not over_grpc, f"{stack}: mandatory violations:\n" + "\n".join(
        f"  [{p}] {n}: {m.splitlines()[-1]}" for p, n, m in over_grpc
    )
    in_process = [v for v in evaluate(subjects, stack=stack, config=config) if v.level == "mandatory"]
    assert not in_process, f"{stack}: make policy disagrees with the pack: {in_process}"


def test_evaluator_and_pack_agree_on_violations(pack: analyzer_pb2_grpc.AnalyzerStub) -> None:
    """Weakened copies of dev's workloads: both paths report the same (policy, resource) pairs."""
    weakened = []
    for s in stack_subjects("dev"):
        if s.type != "kubernetes:apps/v1:Deployment":
            continue
        props = json.loads(json.dumps(dict(s.props), default=str))
        for c in props["spec"]["template"]["spec"]["containers"]:
            c["image"] = c["image"].split("@")[0] + ":latest"
            c.pop("readinessProbe", None)
        weakened.append(Subject(s.type, s.name, props))
    assert weakened, "dev declares no Deployment"
    configure(pack, {})
    over_grpc = {
        (p, s.name) for s in weakened for p, level, _ in analyze(pack, "dev", s) if level == MANDATORY
    }
    in_process = {(v.policy, v.resource_name) for v in evaluate(weakened, stack="dev")}
    assert over_grpc == in_process
    assert {p for p, _ in over_grpc} == {"images-pinned-by-digest", "containers-probed"}


@pytest.mark.parametrize("stack", STACKS)
def test_every_load_balancer_allow_is_still_needed(stack: str) -> None:
    """Each allowedServices entry of the stack's policy config matches a LoadBalancer it declares;
    without the entry the pack blocks the stack (so the allow is live, not a stale exception)."""
    config = load_pack_config(stack_config_path(stack))
    entry = config.get("no-unapproved-load-balancer", {})
    for allowed in entry.get("allowedServices", []):
        rest = [a for a in entry["allowedServices"] if a != allowed]
        narrowed = {**config, "no-unapproved-load-balancer": {**entry, "allowedServices": rest}}
        violations = evaluate(stack_subjects(stack), stack=stack, config=narrowed)
        blocked = [v.policy for v in violations if v.level == "mandatory"]
        where = stack_config_path(stack).name
        assert blocked == ["no-unapproved-load-balancer"], f"{where}: '{allowed}' matches no LoadBalancer"


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_a_kubernetes_provider_racing_the_cluster_grant_is_blocked(
    stack: str, pack: analyzer_pb2_grpc.AnalyzerStub
) -> None:
    """The program's provider depends on the grant; without that dependency both paths block it."""
    subjects = stack_subjects(stack)
    [provider] = [s for s in subjects if s.type == K8S_PROVIDER_TYPE]
    grants = {s.urn for s in subjects if s.type == "azure-native:authorization:RoleAssignment"}
    assert grants & set(provider.dependencies), f"{stack}: the provider does not wait for any role grant"
    racing = tuple(
        Subject(
            s.type, s.name, s.props, s.protect, s.urn, tuple(d for d in s.dependencies if d not in grants)
        )
        if s is provider
        else s
        for s in subjects
    )
    config = load_pack_config(stack_config_path(stack))
    configure(pack, config)
    over_grpc = [p for p, level, _ in analyze_stack(pack, stack, racing) if level == MANDATORY]
    in_process = [v.policy for v in evaluate(racing, stack=stack, config=config) if v.level == "mandatory"]
    assert over_grpc == in_process == ["k8s-provider-after-cluster-grant"]
