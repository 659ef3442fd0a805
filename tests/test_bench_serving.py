"""The serving benchmark's pure parts: wrk's command line, parsing its result line, the tables,
ratios and targets of the report, the README rewrite, the peers' request bodies, and the /proc
sampling of a process tree. The numbers themselves come from ``make bench`` (README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

from tools.bench_report import (
    COLUMNS,
    FORMS,
    RESULT_PREFIX,
    ROWS,
    SCENARIOS,
    WRK,
    WRK_LUA,
    Floor,
    Load,
    Measured,
    Report,
    Scenario,
    parse_wrk,
    ratio_table,
    render_markdown,
    replace_section,
    results_table,
    targets,
    total_errors,
    wrk_command,
)
from tools.bench_servers import (
    PROJECT_BODIES,
    mlflow_answers,
    mlflow_body,
    mlflow_split_body,
    mlserver_answers,
    mlserver_body_for,
    mlserver_model,
    project_answers,
    project_body,
    project_columns_body,
)
from tools.bench_serving import Sampler, measure_server, process_tree

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

WRK_OUTPUT = f"""Running 10s test @ http://127.0.0.1:3000/predict
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    1.02ms  25.00ms   90.00%
  20000 requests in 10.00s, 3.00MB read
  Non-2xx or 3xx responses: 5
Requests/sec:   2000.00
{RESULT_PREFIX} requests=20000 duration_us=10000000 connect=0 read=1 write=0 status=5 timeout=2 \
p50_us=2900 p95_us=4500 p99_us=8100 max_us=25000
"""


def test_parse_wrk_reads_the_result_line_of_the_lua_script() -> None:
    load = parse_wrk(WRK_OUTPUT)
    assert load == Load(
        requests=20000, seconds=10.0, errors=8, p50_ms=2.9, p95_ms=4.5, p99_ms=8.1, max_ms=25.0
    )
    assert load.requests_per_s == pytest.approx(1999.2)  # errors do not count as served


def test_parse_wrk_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match=f"no {RESULT_PREFIX} line"):
        parse_wrk("Requests/sec: 10\n")
    with pytest.raises(ValueError, match="lacks p95_us, p99_us"):
        parse_wrk(
            f"{RESULT_PREFIX} requests=1 duration_us=1 connect=0 read=0 write=0 status=0 timeout=0 p50_us=1\n"
        )


def test_the_lua_script_prints_every_field_parse_wrk_reads() -> None:
    for name in ("requests=", "duration_us=", "p50_us=", "p95_us=", "p99_us=", "max_us=", "timeout="):
        assert name in WRK_LUA
    assert "BENCH_BODIES" in WRK_LUA and "wrk.format" in WRK_LUA


def test_wrk_command_is_bounded_in_time_and_threads() -> None:
    command = wrk_command("http://127.0.0.1:1/predict", 1, 9.6, "/tmp/post.lua")
    assert command[0] == WRK
    assert "--threads=1" in command and "--connections=1" in command and "--duration=10s" in command
    assert "--timeout=10s" in command and command[-1] == "http://127.0.0.1:1/predict"
    assert "--threads=2" in wrk_command("http://127.0.0.1:1/", 32, 10, "x.lua")


class _Recorder(BaseHTTPRequestHandler):
    """Answers 200 to every POST, 503 to bodies holding "busy"; remembers the bodies it got."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[set[bytes]] = set()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.add(body)
        self.send_response(503 if b"busy" in body else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(not Path(WRK).is_file(), reason="Debian's wrk is not installed (make system-deps)")
def test_wrk_with_the_lua_script_cycles_the_bodies_and_counts_non_2xx(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lua, bodies = tmp_path / "post.lua", tmp_path / "bodies.txt"
    lua.write_text(WRK_LUA)
    lines = [b'{"rows": [1]}', b'{"rows": [2]}', b'{"busy": 3}']
    bodies.write_bytes(b"\n".join(lines) + b"\n")
    try:
        proc = subprocess.run(
            wrk_command(f"http://127.0.0.1:{server.server_address[1]}/predict", 1, 1, str(lua)),
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "BENCH_BODIES": str(bodies)},
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    load = parse_wrk(proc.stdout)
    assert _Recorder.seen == set(lines)
    assert load.requests > 3 and abs(load.errors - load.requests / 3) <= 1  # every third body got 503


def _measured(
    server: str, scenario: Scenario, rps: float, p50: float, p99: float, errors: int = 0
) -> Measured:
    load = Load(int(rps * 10) + errors, 10.0, errors, p50, p50 * 1.5, p99, p99 * 2)
    return Measured(server, scenario, load, cpu_percent=150.0, rss_mb=600.0)


def _report() -> Report:
    ours, peer, slow = "this project", "MLServer", "mlflow"
    results = [
        _measured(ours, Scenario(1, 1), 900, 1.0, 2.5),
        _measured(ours, Scenario(1, 8), 2400, 3.0, 9.0),
        _measured(ours, Scenario(100, 8, ROWS), 1500, 5.0, 20.0),
        _measured(ours, Scenario(100, 8, COLUMNS), 2100, 3.5, 12.0),
        _measured(peer, Scenario(1, 8), 1000, 7.0, 14.0),
        _measured(peer, Scenario(100, 8, ROWS), 800, 9.0, 11.0),
        _measured(peer, Scenario(100, 8, COLUMNS), 800, 9.0, 11.0),
        _measured(slow, Scenario(1, 8), 150, 50.0, 90.0, errors=3),
    ]
    return Report((ours, peer, slow), tuple(results), (Floor("pipeline.predict(DataFrame)", 100, 0.5),))


def test_ratio_table_divides_this_projects_rows_per_second_by_each_peers() -> None:
    lines = ratio_table(_report())
    assert lines[0] == "| scenario | x MLServer | x mlflow |"
    assert "| 1 row(s), 8 conns, rows | 2.40 | 16.00 |" in lines
    assert "| 100 row(s), 8 conns, rows | 1.88 | - |" in lines  # no mlflow run for this scenario
    assert "| 100 row(s), 8 conns, columns | 2.62 | - |" in lines


def test_targets_report_each_goal_with_its_measured_value() -> None:
    got = {t.what: (t.met, t.measured) for t in targets(_report(), "MLServer", "mlflow")}
    assert got["single rows @8: >= 2x MLServer"] == (True, "2.40x")
    assert got["single rows @8: >= 15x mlflow"] == (True, "16.00x")
    assert got["single rows @8: p99 <= 10 ms"] == (True, "9.0 ms")
    assert got["100-row @8, columns: >= 200,000 rows/s"] == (True, "210,000")
    assert got["100-row @8, columns: p99 <= 15 ms"] == (True, "12.0 ms")
    assert got["100-row @8, rows: >= 200,000 rows/s"] == (False, "150,000")
    assert got["100-row @8, rows: p99 <= 15 ms"] == (False, "20.0 ms")
    assert got["1 conn: p99 within 3x p50"] == (True, "p99/p50 = 2.5")


def test_a_missed_target_is_unticked() -> None:
    report = Report(("us",), (_measured("us", Scenario(1, 1), 100, 1.0, 9.0),))
    [target] = targets(report, "MLServer", "mlflow")
    assert (target.met, target.measured) == (False, "p99/p50 = 9.0")
    assert "- [ ] 1 conn: p99 within 3x p50" in render_markdown(report, "MLServer", "mlflow")


def test_results_table_has_a_row_per_measurement_and_the_floor() -> None:
    lines = results_table(_report())
    assert len(lines) == 2 + 8 + 1
    assert "| mlflow | 8 | 1 | rows | 150 | 150 | 50.0 | 75.0 | 90.0 | 3 | 150 | 600 |" in lines
    assert "| MLServer | 8 | 100 | columns | 800 | 80,000 | 9.0 | 13.5 | 11.0 | 0 | 150 | 600 |" in lines
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    floor = "| in process: pipeline.predict(DataFrame) | - | 100 | - | - | 200,000 per core"
    assert lines[-1].startswith(floor)


def test_ratio_of_nothing_is_not_a_number() -> None:
    report = Report(
        ("us", "them"),
        (_measured("us", Scenario(1, 8), 10, 1, 1), _measured("them", Scenario(1, 8), 0, 1, 1)),
    )
    assert "| 1 row(s), 8 conns, rows | - |" in ratio_table(report)


def test_replace_section_swaps_only_what_lies_between_the_markers() -> None:
    text = "intro\n<!-- b -->\nold table\n<!-- e -->\noutro\n"
    assert (
        replace_section(text, "<!-- b -->", "<!-- e -->", "new\n")
        == "intro\n<!-- b -->\nnew\n<!-- e -->\noutro\n"
    )
    with pytest.raises(ValueError, match="not found"):
        replace_section("no markers", "<!-- b -->", "<!-- e -->", "x")


def test_the_readme_has_the_benchmark_markers() -> None:
    from tools.bench_serving import README, README_BEGIN, README_END

    text = README.read_text()
    assert text.index(README_BEGIN) < text.index(README_END)


def test_every_peer_gets_the_same_rows_in_its_own_protocol() -> None:
    rows = [{"x": 1.5, "n": 2, "plan": "basic"}, {"x": -1.0, "n": 3, "plan": "premium"}]
    assert json.loads(project_body(rows)) == {"rows": rows}
    assert json.loads(mlflow_body(rows)) == {"dataframe_records": rows}
    split = {"columns": ["x", "n", "plan"], "data": [[1.5, 2, "basic"], [-1.0, 3, "premium"]]}
    assert json.loads(project_columns_body(rows)) == split
    assert json.loads(mlflow_split_body(rows)) == {"dataframe_split": split}
    v2 = json.loads(mlserver_body_for((("x", "double"), ("n", "long"), ("plan", "string")))(rows))
    assert v2["parameters"] == {"content_type": "pd"}
    assert [(i["name"], i["datatype"], i["shape"], i["data"]) for i in v2["inputs"]] == [
        ("x", "FP64", [2], [1.5, -1.0]),
        ("n", "INT64", [2], [2, 3]),
        ("plan", "BYTES", [2], ["basic", "premium"]),
    ]
    assert project_answers(["a", "b"]) == 2 and project_answers({"x": 1}) == -1
    assert mlflow_answers({"predictions": [0, 1]}) == 2 and mlflow_answers([0]) == -1
    assert mlserver_answers({"outputs": [{"shape": [2, 1], "data": [0, 1]}]}) == 2
    assert mlserver_answers({"error": "x"}) == -1


def _fitted_on_a_frame(columns: list[str]) -> Pipeline:
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, len(columns))), columns=columns)
    pipeline = Pipeline(
        [
            ("preprocess", ColumnTransformer([("numeric", StandardScaler(), columns)])),
            ("estimator", LogisticRegression()),
        ]
    )
    return pipeline.fit(frame, (frame[columns[0]] > 0).astype(int))


def test_mlserver_gets_the_same_fitted_steps_on_one_fp64_tensor() -> None:
    import numpy as np
    import pandas as pd

    names = ["b", "a", "c"]
    pipeline = _fitted_on_a_frame(names)
    served, body, how = mlserver_model(pipeline, [(n, "double") for n in names])
    assert "FP64 tensor [rows, 3]" in how
    rows: list[dict[str, object]] = [{"a": 0.5, "b": -1.0, "c": 2}, {"a": -0.25, "b": 1.5, "c": 0.0}]
    (tensor,) = json.loads(body(rows))["inputs"]
    assert (tensor["datatype"], tensor["shape"]) == ("FP64", [2, 3])
    assert tensor["data"] == [-1.0, 0.5, 2.0, 1.5, -0.25, 0.0]  # row by row, signature order
    array = np.array(tensor["data"]).reshape(tensor["shape"])
    frame = pd.DataFrame.from_records(rows, columns=names)
    assert served.predict(array).tolist() == pipeline.predict(frame).tolist()
    np.testing.assert_allclose(served.predict_proba(array), pipeline.predict_proba(frame), rtol=1e-12)


def test_mlserver_keeps_the_frame_form_when_a_feature_is_not_a_double() -> None:
    names = ["b", "a"]
    pipeline = _fitted_on_a_frame(names)
    columns = [("b", "double"), ("a", "long")]
    served, body, how = mlserver_model(pipeline, columns)
    assert served is pipeline and "pandas" in how
    assert json.loads(body([{"a": 1, "b": 0.5}]))["parameters"] == {"content_type": "pd"}


def test_sampler_sums_cpu_and_memory_over_a_process_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
        with Sampler(os.getpid()) as sampler:
            sum(i * i for i in range(3_000_000))  # busy on purpose: this process's CPU must show
        assert sampler.cpu_percent > 10
        assert sampler.peak > 10  # MB: this interpreter and its child
    finally:
        child.kill()
        child.wait()


def test_every_scenario_of_the_issue_is_measured() -> None:
    assert {(s.rows, s.connections, s.form) for s in SCENARIOS} == {
        (1, 1, ROWS),
        (1, 8, ROWS),
        (1, 32, ROWS),
        (100, 8, ROWS),
        (100, 8, COLUMNS),
    }


class _Answerer(BaseHTTPRequestHandler):
    """Answers a list with one entry per row of either body form; counts the POSTs per body."""

    protocol_version = "HTTP/1.1"
    posts: ClassVar[dict[bytes, int]] = {}

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posts[body] = self.posts.get(body, 0) + 1
        parsed = json.loads(body)
        answer = json.dumps([0] * len(parsed.get("rows") or parsed["data"])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(not Path(WRK).is_file(), reason="Debian's wrk is not installed (make system-deps)")
@pytest.mark.parametrize("one_form", [True, False], ids=["one form", "two forms"])
def test_a_server_with_one_body_form_is_measured_once_per_scenario_two_forms_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_form: bool
) -> None:
    import tools.bench_serving

    monkeypatch.setattr(tools.bench_serving, "WARMUP_SECONDS", 1)
    _Answerer.posts = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answerer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows: list[dict[str, object]] = [{"x": float(i), "n": i} for i in range(7)]
    url = f"http://127.0.0.1:{server.server_address[1]}/predict"
    bodies = dict.fromkeys(FORMS, project_body) if one_form else PROJECT_BODIES
    try:
        results = measure_server("s", url, os.getpid(), bodies, project_answers, rows, 1, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert [m.scenario for m in results] == list(SCENARIOS)
    assert all(m.load.requests > 0 and m.load.errors == 0 for m in results)
    by_form = {m.scenario.form: m for m in results if m.scenario.rows == 100}
    columns_posted = any(b'"columns"' in body for body in _Answerer.posts)
    if one_form:  # one wrk run, reported under both forms and marked so
        assert by_form[COLUMNS].load is by_form[ROWS].load and by_form[COLUMNS].same_as == ROWS
        assert not columns_posted
        assert total_errors(results) == 0 and "columns (= rows: one form)" in "".join(
            results_table(Report(("s",), tuple(results)))
        )
    else:
        assert by_form[COLUMNS].load is not by_form[ROWS].load and by_form[COLUMNS].same_as is None
        assert columns_posted
    assert all(m.same_as is None for m in results if m.scenario.form == ROWS)
