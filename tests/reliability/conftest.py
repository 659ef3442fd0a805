"""Fixtures and scale of the reliability tier (docs/reliability.md).

``make test`` runs the tests here at the fast counts; ``make reliability`` sets
``RELIABILITY_FULL=1`` and the same tests run at the full counts (``scaled(full, fast)``), plus
the few marked ``full_only`` (each starts extra servers and trainings). The
served default model comes from the session fixtures of tests/conftest.py (real MLflow server,
real ``bentoml serve``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServedExample

FULL_ENV = "RELIABILITY_FULL"
FULL = os.environ.get(FULL_ENV, "") == "1"
# Where the tests write their figures (counts, latencies) for docs/reliability.md.
REPORT_DIR = Path(
    os.environ.get("RELIABILITY_REPORT_DIR", Path(__file__).resolve().parents[2] / ".build" / "reliability")
)


# The heaviest faults (extra server processes and trainings) run in `make reliability` only.
full_only = pytest.mark.skipif(not FULL, reason=f"full run only: make reliability ({FULL_ENV}=1)")


def scaled(full: float, fast: float) -> float:
    """The full-run value under ``make reliability``, the fast one under ``make test``."""
    return full if FULL else fast


def record(name: str, figures: dict[str, object]) -> None:
    """Write one test's figures to REPORT_DIR/<name>.json (and print them, for the -s / -rA log)."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"full_run": FULL, **figures}
    (REPORT_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"[reliability] {name}: {json.dumps(payload, sort_keys=True)}")


@pytest.fixture(scope="session")
def served_default(served_example: Callable[[str], ServedExample]) -> ServedExample:
    """The default spec (model.yaml) trained, exported and served by a real ``bentoml serve``."""
    return served_example("default")
