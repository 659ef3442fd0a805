"""Sustained valid load on a real ``bentoml serve``: zero errors, latency percentiles reported.

The load loop and its statistics are tools/load_client.py's (one keep-alive connection per client
thread); this test only sets the scale (full run: 60 s at 8 connections) and asserts no request
failed. Figures go to .build/reliability/load.json and load.png.
"""

from __future__ import annotations

import pytest

from tests.conftest import ServedExample
from tests.reliability.conftest import REPORT_DIR, record, scaled
from tools import load_client
from tools.smoke import sample_rows

pytestmark = pytest.mark.servers

CONNECTIONS = 8
SECONDS = scaled(60, 15)
MAX_REQUESTS = 10**7  # bounded by time, not count


def test_sustained_load_of_valid_requests_has_zero_errors(served_default: ServedExample) -> None:
    rows, _ = sample_rows(served_default.spec, None, load_client.SAMPLE_ROWS)
    bodies = load_client.request_bodies(rows, 1, len(rows))
    scenario = load_client.Scenario(1, CONNECTIONS, MAX_REQUESTS, SECONDS)
    result = load_client.run_scenario(
        load_client.loopback_address(served_default.url), "predict", bodies, scenario, print
    )
    figures = {
        "connections": CONNECTIONS,
        "seconds": round(result.wall_s, 1),
        "requests_ok": result.ok,
        "errors": dict(result.failures),
        "requests_per_s": round(result.requests_per_s, 1),
        **{f"p{q}_ms": round(result.latency_ms(q), 1) for q in (50, 95, 99, 100)},
    }
    record("load", figures)
    load_client.write_png([result], served_default.url, "predict", REPORT_DIR / "load.png")
    assert result.ok > 0
    assert not result.failures, f"failed requests under load: {result.failures}"
