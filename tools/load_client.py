"""A Python load client for the reliability tier: N keep-alive clients POST valid requests to a
server on loopback, bounded by a request count and a time limit, and every answer is kept with its
status (HTTP status, CONNECTION_ERROR, or BAD_BODY for a 200 that is not one answer per row), so a
test can say exactly what was lost (tests/reliability: sustained load, a worker killed under load).

The serving benchmark (``make bench``, tools/bench_serving.py) measures with wrk instead; this client
is slower than wrk but counts each failure by kind, which is what a fault test asserts on.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WARMUP_REQUESTS = 10  # per scenario, not counted: first calls load code paths and fill caches
CONNECTION_ERROR = 0  # status recorded when no HTTP answer came back
BAD_BODY = -1  # status recorded for a 200 whose body is not one answer per row
SAMPLE_ROWS = 400  # distinct rows taken from the data file and cycled through

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Scenario:
    rows: int  # rows per request
    clients: int
    max_requests: int
    max_seconds: float


@dataclass(frozen=True)
class Sample:
    latency_s: float
    status: int  # HTTP status, CONNECTION_ERROR or BAD_BODY


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    wall_s: float
    statuses: dict[int, int]
    latencies_ms: list[float]  # sorted, of the 200 answers only

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failures(self) -> dict[int, int]:
        return {status: n for status, n in sorted(self.statuses.items()) if status != 200}

    @property
    def server_errors(self) -> int:
        """5xx answers, connection errors and malformed answers: what must never happen."""
        return sum(n for s, n in self.statuses.items() if s >= 500 or s in (CONNECTION_ERROR, BAD_BODY))

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


# ---- pure helpers -------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, linearly interpolated; NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(scenario: Scenario, samples: Sequence[Sample], wall_s: float) -> Result:
    return Result(
        scenario=scenario,
        wall_s=wall_s,
        statuses=dict(Counter(sample.status for sample in samples)),
        latencies_ms=sorted(sample.latency_s * 1000 for sample in samples if sample.status == 200),
    )


def loopback_address(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL on the local host; anything else is refused (loopback only)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or parts.path not in ("", "/"):
        raise ValueError(
            f"--url {url!r} must be http://127.0.0.1:PORT (or localhost / [::1]) with no path: "
            "this benchmark only sends traffic to loopback"
        )
    return parts.hostname, parts.port or 80


def request_bodies(rows: Sequence[dict[str, object]], per_request: int, count: int) -> list[bytes]:
    """``count`` JSON bodies of ``per_request`` rows each, cycling through ``rows``."""
    if not rows:
        raise ValueError("no sample rows to send")
    bodies = []
    for i in range(count):
        start = (i * per_request) % len(rows)
        chunk = [rows[(start + j) % len(rows)] for j in range(per_request)]
        bodies.append(json.dumps({"rows": chunk}).encode())
    return bodies


def answer_status(status: int, body: bytes, rows: int) -> int:
    """The HTTP status, or BAD_BODY for a 200 that is not a JSON list with one answer per row."""
    if status != 200:
        return status
    try:
        answer = json.loads(body)
    except ValueError:
        return BAD_BODY
    return status if isinstance(answer, list) and len(answer) == rows else BAD_BODY


def render(results: Sequence[Result], target: str, endpoint: str) -> str:
    lines = [
        f"target       {target}  POST /{endpoint}",
        f"{'rows/req':>8} {'clients':>7} {'requests':>8} {'wall s':>7} {'req/s':>7} {'rows/s':>8} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}  errors",
    ]
    for r in results:
        s = r.scenario
        failures = ", ".join(f"{_status_name(k)} x{v}" for k, v in r.failures.items()) or "none"
        lines.append(
            f"{s.rows:>8} {s.clients:>7} {r.ok:>8} {r.wall_s:>7.1f} {r.requests_per_s:>7.1f} "
            f"{r.requests_per_s * s.rows:>8.0f} {r.latency_ms(50):>7.1f} {r.latency_ms(95):>7.1f} "
            f"{r.latency_ms(99):>7.1f} {r.latency_ms(100):>7.1f}  {failures}"
        )
    return "\n".join(lines)


def _status_name(status: int) -> str:
    return {CONNECTION_ERROR: "connection error", BAD_BODY: "malformed 200"}.get(status, f"HTTP {status}")


# ---- the load generator (threads, one keep-alive connection each) ----------------------------------


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, rows: int) -> Sample:
    started = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException):
        conn.close()  # reconnects on the next request
        return Sample(time.perf_counter() - started, CONNECTION_ERROR)
    return Sample(time.perf_counter() - started, answer_status(response.status, payload, rows))


def run_scenario(
    address: tuple[str, int], endpoint: str, bodies: Sequence[bytes], scenario: Scenario, progress: Progress
) -> Result:
    """Send up to ``max_requests`` requests from ``clients`` threads, stopping at ``max_seconds``."""
    path = f"/{endpoint}"
    warm = http.client.HTTPConnection(*address, timeout=120)
    for body in bodies[:WARMUP_REQUESTS]:
        _post(warm, path, body, scenario.rows)
    warm.close()

    lock = threading.Lock()
    issued = 0
    samples: list[Sample] = []
    started = time.perf_counter()
    deadline = started + scenario.max_seconds

    def client() -> None:
        nonlocal issued
        conn = http.client.HTTPConnection(*address, timeout=120)
        mine: list[Sample] = []
        while time.perf_counter() < deadline:
            with lock:
                if issued >= scenario.max_requests:
                    break
                index, issued = issued, issued + 1
            mine.append(_post(conn, path, bodies[index % len(bodies)], scenario.rows))
        conn.close()
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(scenario.clients)]
    for thread in threads:
        thread.start()
    next_report = time.perf_counter() + 5
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.2)
        if time.perf_counter() >= next_report:
            next_report += 5
            progress(f"  {scenario.rows} row(s)/request: {issued}/{scenario.max_requests} requests sent")
    for thread in threads:  # the last requests may answer after the deadline; they count
        thread.join()
    return summarize(scenario, samples, time.perf_counter() - started)


def write_png(results: Sequence[Result], target: str, endpoint: str, path: Path) -> None:
    """Latency percentiles (p50/p95/p99/max) per scenario, and throughput per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quantiles = ((50, "p50"), (95, "p95"), (99, "p99"), (100, "max"))
    labels = [f"{r.scenario.rows} row(s)/req\n{r.scenario.clients} clients" for r in results]
    fig, (ax_lat, ax_rps) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(quantiles)
    for i, (q, name) in enumerate(quantiles):
        xs = [k + (i - (len(quantiles) - 1) / 2) * width for k in range(len(results))]
        values = [r.latency_ms(q) for r in results]
        bars = ax_lat.bar(xs, values, width, label=name)
        ax_lat.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=7, padding=1)
    ax_lat.set_xticks(range(len(results)), labels)
    ax_lat.set_ylabel("latency, ms")
    ax_lat.set_title(f"POST /{endpoint} latency percentiles")
    ax_lat.legend(fontsize=8)
    bars = ax_rps.bar(labels, [r.requests_per_s for r in results], color="tab:green")
    ax_rps.bar_label(
        bars,
        labels=[
            f"{r.requests_per_s:.0f} req/s\n{r.requests_per_s * r.scenario.rows:.0f} rows/s" for r in results
        ],
        fontsize=8,
    )
    ax_rps.set_ylabel("requests per second (200s)")
    ax_rps.set_title("throughput")
    ax_rps.margins(y=0.25)
    errors = sum(r.server_errors for r in results)
    fig.suptitle(f"{target}  —  server errors: {errors}", fontsize=9, color="red" if errors else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
