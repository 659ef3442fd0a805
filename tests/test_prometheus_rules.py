"""The Prometheus rules: the committed file is what the code renders, real ``promtool`` accepts it
and its unit tests (monitoring/rules.test.yml) pass with a fixture for every alert."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.alert_rules import AlertThresholds, rule_groups, to_prometheus_yaml
from tools.render_rules import RULES_FILE, render

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_FILE = REPO_ROOT / "monitoring" / "rules.test.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).is_file(), reason="promtool missing: make system-deps installs Debian's prometheus"
)


def promtool(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_committed_rules_file_is_current() -> None:
    assert RULES_FILE.read_text(encoding="utf-8") == render(), "run: python -m tools.render_rules"


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(RULES_FILE))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", TESTS_FILE.name, cwd=TESTS_FILE.parent)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The fixtures compare values: a wrong expected PSI makes promtool fail."""
    shutil.copy(RULES_FILE, tmp_path / RULES_FILE.name)
    text = TESTS_FILE.read_text(encoding="utf-8")
    assert "PSI 4.60" in text
    (tmp_path / TESTS_FILE.name).write_text(text.replace("PSI 4.60", "PSI 4.61"), encoding="utf-8")
    assert promtool("test", "rules", TESTS_FILE.name, cwd=tmp_path).returncode != 0


def test_every_alert_has_a_firing_fixture() -> None:
    alerts = {r.alert for g in rule_groups("x", AlertThresholds()) for r in g.rules if r.alert}
    tests = yaml.safe_load(TESTS_FILE.read_text(encoding="utf-8"))["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == fired


def test_thresholds_and_window_reach_the_expressions() -> None:
    text = to_prometheus_yaml(
        rule_groups("svc", AlertThresholds(psi=0.3, error_rate=0.1, p99_latency_s=2.0, out_of_range_share=0.2,
                                           no_traffic_minutes=30, window="2h"))
    )  # fmt: skip
    for piece in ("> 0.3", "> 0.1", "> 2", "> 0.2", "[30m]", "[2h]", 'service_name="svc"'):
        assert piece in text, piece
    assert "[1h]" not in text


def test_rule_names_follow_prometheus_rules() -> None:
    import re

    for group in rule_groups("cancer_classifier", AlertThresholds()):
        for rule in group.rules:
            if rule.record:
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule.record)
            else:
                assert rule.alert and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", rule.alert)
                assert rule.annotations["runbook"].startswith("README.md#runbook-")


def test_runbook_anchors_exist_in_the_readme() -> None:
    """Every alert's runbook annotation is the anchor GitHub gives a README heading."""
    import re

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in readme.splitlines()
        if line.startswith("#")
    }
    for group in rule_groups("cancer_classifier", AlertThresholds()):
        for rule in group.rules:
            if rule.alert:
                assert rule.annotations["runbook"].removeprefix("README.md#") in anchors, rule.alert


def test_pod_rule_watches_the_serving_deployment() -> None:
    from infra import alert_rules, serving

    assert alert_rules.SERVING_DEPLOYMENT == serving.APP
    text = to_prometheus_yaml(rule_groups("s", AlertThresholds(), namespace="models"))
    assert 'deployment="model-server", namespace="models"' in text
