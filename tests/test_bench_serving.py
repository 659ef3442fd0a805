"""tools.bench_serving: its statistics, its loopback-only guard, and its load generator's counting.

The load generator is checked against a small stdlib HTTP server on 127.0.0.1 whose answers are
known in advance (some 503s, some malformed bodies), so the counts it must report are exact. The
real serving numbers come from running the tool against the serving container (README).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools.bench_serving import (
    BAD_BODY,
    CONNECTION_ERROR,
    Sample,
    Scenario,
    answer_status,
    loopback_address,
    main,
    percentile,
    render,
    request_bodies,
    run_scenario,
    summarize,
)

ROWS = [{"a": float(i), "b": 2.0 * i} for i in range(10)]


def test_percentile_interpolates_between_sorted_values() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 50) == 30.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 95) == pytest.approx(48.0)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        percentile(values, 101)


def test_summarize_counts_statuses_and_keeps_latencies_of_200s_only() -> None:
    samples = [Sample(0.010, 200), Sample(0.030, 200), Sample(5.0, 503), Sample(0.001, CONNECTION_ERROR)]
    result = summarize(Scenario(rows=1, clients=2, max_requests=4, max_seconds=9), samples, wall_s=2.0)
    assert result.ok == 2
    assert result.latencies_ms == pytest.approx([10.0, 30.0])
    assert result.failures == {CONNECTION_ERROR: 1, 503: 1}
    assert result.server_errors == 2
    assert result.requests_per_s == 1.0
    table = render([result], "http://127.0.0.1:1", "predict")
    assert "HTTP 503 x1" in table and "connection error x1" in table


def test_a_4xx_is_a_failure_but_not_a_server_error() -> None:
    result = summarize(Scenario(1, 1, 2, 9), [Sample(0.01, 200), Sample(0.01, 400)], wall_s=1.0)
    assert (result.failures, result.server_errors) == ({400: 1}, 0)


@pytest.mark.parametrize("url", ["http://127.0.0.1:3000", "http://localhost:3000/", "http://[::1]:3000"])
def test_loopback_address_accepts_this_machine(url: str) -> None:
    assert loopback_address(url)[1] == 3000


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.5:3000", "http://example.com", "https://127.0.0.1:3000", "http://127.0.0.1:3000/predict"],
)
def test_loopback_address_refuses_anything_else(url: str) -> None:
    with pytest.raises(ValueError, match="only sends traffic to loopback"):
        loopback_address(url)


def test_request_bodies_cycle_through_the_rows() -> None:
    bodies = [json.loads(b)["rows"] for b in request_bodies(ROWS, 4, 3)]
    assert [len(rows) for rows in bodies] == [4, 4, 4]
    assert [row["a"] for row in bodies[2]] == [8.0, 9.0, 0.0, 1.0]


def test_answer_status_checks_one_answer_per_row() -> None:
    assert answer_status(200, b"[0, 1]", 2) == 200
    assert answer_status(200, b"[0]", 2) == BAD_BODY
    assert answer_status(200, b"oops", 1) == BAD_BODY
    assert answer_status(503, b"busy", 1) == 503


class _Handler(BaseHTTPRequestHandler):
    """/predict answers one label per row; a first row with a == 3 (or no a) gets a 503, a == 5 a
    malformed 200."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the benchmark's clients expect

    def do_POST(self) -> None:
        rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["rows"]
        first = rows[0].get("a", 3.0)
        status, body = (503, b"busy") if first == 3.0 else (200, json.dumps([1] * len(rows)).encode())
        if first == 5.0:
            body = b"[]"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def known_server() -> Iterator[tuple[str, int]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_run_scenario_sends_the_bounded_count_and_counts_every_answer(known_server: tuple[str, int]) -> None:
    scenario = Scenario(rows=1, clients=4, max_requests=100, max_seconds=600)
    result = run_scenario(known_server, "predict", request_bodies(ROWS, 1, 10), scenario, lambda _: None)
    # Bodies cycle a = 0..9 over 100 requests: ten of each, so ten 503s and ten malformed answers.
    assert result.statuses == {200: 80, 503: 10, BAD_BODY: 10}
    assert result.server_errors == 20
    assert len(result.latencies_ms) == 80


def test_main_reports_server_errors_loudly_and_fails(
    known_server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = known_server
    code = main(["--url", f"http://{host}:{port}", "--clients", "2", "--requests", "40", "--rows", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "SERVER ERROR(S)" in err
    assert "p99 ms" in out and "HTTP 503" in out


def test_main_refuses_a_non_loopback_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--url", "http://192.168.1.10:3000"])
    assert info.value.code == 2
    assert "loopback" in capsys.readouterr().err
