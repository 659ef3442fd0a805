"""The serving benchmark's pure parts: wrk's command line and Lua script, parsing what wrk prints,
and rendering the results as a Markdown table with each server's ratio to its peers and the
targets met or missed. No processes, no network: ``tools.bench_serving`` runs things.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

WRK = "/usr/bin/wrk"  # Debian's wrk (make system-deps)
RESULT_PREFIX = "BENCH_RESULT"

# wrk runs this per thread: it cycles through the bodies file (one body per line) and, when done,
# prints one line of exact counts and latency percentiles (microseconds) for parse_wrk.
WRK_LUA = """\
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
local next_body = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d "
      .. "p50_us=%d p95_us=%d p99_us=%d max_us=%d\\n",
    "BENCH_RESULT", summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""

_FIELDS = (
    "requests",
    "duration_us",
    "connect",
    "read",
    "write",
    "status",
    "timeout",
    "p50_us",
    "p95_us",
    "p99_us",
    "max_us",
)


@dataclass(frozen=True)
class Scenario:
    rows: int  # rows per request
    connections: int
    form: str = "rows"  # the body's form: FORMS

    @property
    def label(self) -> str:
        return f"{self.rows} row(s), {self.connections} conns, {self.form}"


# A request body's forms: an object per row (feature: value), or the feature names once with an
# array of values per row (this project's 'columns' + 'data', mlflow's dataframe_split). A server with
# one form (MLServer's tensor is columnar) is sent the same body in both.
ROWS, COLUMNS = "rows", "columns"
FORMS = (ROWS, COLUMNS)

# The scenarios: single rows at 1, 8 and 32 connections, 100-row batches at 8 in each form.
SCENARIOS = (
    Scenario(1, 1),
    Scenario(1, 8),
    Scenario(1, 32),
    Scenario(100, 8, ROWS),
    Scenario(100, 8, COLUMNS),
)


@dataclass(frozen=True)
class Load:
    """What wrk measured for one scenario."""

    requests: int
    seconds: float
    errors: int  # connect/read/write errors, timeouts and non-2xx answers
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Measured:
    server: str
    scenario: Scenario
    load: Load
    cpu_percent: float  # the server's processes, all cores (100 = one core busy)
    rss_mb: float  # the server's processes, peak during the scenario
    # The form whose run these numbers are (the same bodies: a server with one form), or None.
    same_as: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.load.requests_per_s * self.scenario.rows


def total_errors(results: Sequence[Measured]) -> int:
    """The errors of the runs made: a result reported under a second form is not counted twice."""
    return sum(m.load.errors for m in results if m.same_as is None)


@dataclass(frozen=True)
class Floor:
    """The fitted pipeline called in this process, no server: per call, one core."""

    how: str
    rows: int
    ms_per_call: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / (self.ms_per_call / 1000) if self.ms_per_call > 0 else 0.0


@dataclass(frozen=True)
class Report:
    servers: tuple[str, ...]  # the first is this project
    results: tuple[Measured, ...]
    floors: tuple[Floor, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def get(self, server: str, scenario: Scenario) -> Measured | None:
        return next((m for m in self.results if m.server == server and m.scenario == scenario), None)


def wrk_command(url: str, connections: int, seconds: float, lua_path: str, threads: int = 2) -> list[str]:
    """wrk against ``url`` with ``connections`` keep-alive connections for ``seconds``."""
    return [
        WRK,
        f"--threads={max(1, min(threads, connections))}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=10s",
        f"--script={lua_path}",
        url,
    ]


def parse_wrk(output: str) -> Load:
    """The Load from wrk's output with WRK_LUA's result line; ValueError when there is none."""
    match = re.search(rf"^{RESULT_PREFIX} (.+)$", output, re.MULTILINE)
    if not match:
        raise ValueError(f"wrk printed no {RESULT_PREFIX} line (is the script WRK_LUA?): {output[-500:]!r}")
    values = dict(pair.split("=", 1) for pair in match.group(1).split())
    missing = [name for name in _FIELDS if name not in values]
    if missing:
        raise ValueError(f"wrk's {RESULT_PREFIX} line lacks {', '.join(missing)}: {match.group(0)!r}")
    n = {name: int(values[name]) for name in _FIELDS}
    return Load(
        requests=n["requests"],
        seconds=n["duration_us"] / 1e6,
        errors=n["connect"] + n["read"] + n["write"] + n["status"] + n["timeout"],
        p50_ms=n["p50_us"] / 1000,
        p95_ms=n["p95_us"] / 1000,
        p99_ms=n["p99_us"] / 1000,
        max_ms=n["max_us"] / 1000,
    )


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _num(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _body(m: Measured) -> str:
    return f"{m.scenario.form} (= {m.same_as}: one form)" if m.same_as else m.scenario.form


def results_table(report: Report) -> list[str]:
    lines = [
        "| server | conns | rows/req | body | req/s | rows/s | p50 ms | p95 ms | p99 ms | errors "
        "| server CPU % | server RSS MB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.results:
        load = m.load
        lines.append(
            f"| {m.server} | {m.scenario.connections} | {m.scenario.rows} | {_body(m)} "
            f"| {_num(load.requests_per_s)} "
            f"| {_num(m.rows_per_s)} | {_num(load.p50_ms, 1)} | {_num(load.p95_ms, 1)} "
            f"| {_num(load.p99_ms, 1)} | {load.errors} | {_num(m.cpu_percent)} | {_num(m.rss_mb)} |"
        )
    for f in report.floors:
        lines.append(
            f"| in process: {f.how} | - | {f.rows} | - | - | {_num(f.rows_per_s)} per core "
            f"| {f.ms_per_call:.3f} per call | - | - | - | 100 | - |"
        )
    return lines


def ratio_table(report: Report) -> list[str]:
    """This project's throughput over each peer's, per scenario (rows/s; >1 means faster)."""
    ours, peers = report.servers[0], report.servers[1:]
    lines = [
        "| scenario | " + " | ".join(f"x {p}" for p in peers) + " |",
        "|---|" + "---:|" * len(peers),
    ]
    for scenario in SCENARIOS:
        mine = report.get(ours, scenario)
        if mine is None:
            continue
        cells = []
        for peer in peers:
            theirs = report.get(peer, scenario)
            cells.append(_num(ratio(mine.rows_per_s, theirs.rows_per_s), 2) if theirs else "-")
        lines.append(f"| {scenario.label} | " + " | ".join(cells) + " |")
    return lines


@dataclass(frozen=True)
class Target:
    what: str
    met: bool
    measured: str


def targets(report: Report, mlserver: str, mlflow: str) -> list[Target]:
    """The issue's targets, each with what was measured in this run."""
    ours = report.servers[0]
    out: list[Target] = []
    single = report.get(ours, Scenario(1, 8))
    if single:
        for peer, factor in ((mlserver, 2.0), (mlflow, 15.0)):
            theirs = report.get(peer, Scenario(1, 8))
            if theirs:
                r = ratio(single.rows_per_s, theirs.rows_per_s)
                out.append(Target(f"single rows @8: >= {factor:g}x {peer}", r >= factor, f"{r:.2f}x"))
        out.append(
            Target("single rows @8: p99 <= 10 ms", single.load.p99_ms <= 10, f"{single.load.p99_ms:.1f} ms")
        )
        out.append(Target("single rows @8: zero errors", single.load.errors == 0, str(single.load.errors)))
    for form in FORMS:
        batch = report.get(ours, Scenario(100, 8, form))
        if batch:
            rows_per_s, p99 = batch.rows_per_s, batch.load.p99_ms
            out.append(
                Target(f"100-row @8, {form}: >= 200,000 rows/s", rows_per_s >= 200_000, f"{rows_per_s:,.0f}")
            )
            out.append(Target(f"100-row @8, {form}: p99 <= 15 ms", p99 <= 15, f"{p99:.1f} ms"))
    one = report.get(ours, Scenario(1, 1))
    if one:
        r = ratio(one.load.p99_ms, one.load.p50_ms)
        out.append(Target("1 conn: p99 within 3x p50", r <= 3, f"p99/p50 = {r:.1f}"))
    return out


def render_markdown(report: Report, mlserver: str, mlflow: str, header: Sequence[str] = ()) -> str:
    lines = [
        *header,
        "",
        *results_table(report),
        "",
        f"Throughput of {report.servers[0]} over each peer (rows/s):",
        "",
    ]
    lines += ratio_table(report)
    lines += ["", "Targets:", ""]
    lines += [
        f"- [{'x' if t.met else ' '}] {t.what}: {t.measured}" for t in targets(report, mlserver, mlflow)
    ]
    if report.notes:
        lines += ["", *report.notes]
    return "\n".join(lines) + "\n"


def replace_section(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the ``begin`` and ``end`` marker lines replaced by ``body``."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"markers {begin!r} ... {end!r} not found in order")
    return text[: start + len(begin)] + "\n" + body.rstrip("\n") + "\n" + text[stop:]
