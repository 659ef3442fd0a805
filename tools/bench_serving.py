"""``make bench``: the registered model served four ways in one run, loaded by wrk from a separate
process on loopback, each scenario bounded in time; writes benchmarks/results/latest.md, a PNG
chart and the README's table.

    python -m tools.bench_serving [--image REF] [--duration 10] [--only project mlflow mlserver]

1. The model: the demo's MLflow store (.demo/, left by ``make demo``) is served again, the spec's
   model reused by fingerprint, and the bento built (or reused) from this checkout's serving code.
2. The servers, one at a time, each alone on the machine: this project (``bentoml serve`` of the
   bento with the Deployment's worker count, or with ``--image`` the serving image as the pod runs
   it: read-only, uid 1034, the Deployment's CPU and memory limits), ``mlflow models serve``
   (--env-manager local, as many workers), MLServer + its scikit-learn runtime (one process,
   ``parallel_workers: 0``, ``debug: false``, an FP64 tensor when the pipeline allows it:
   ``tools.bench_servers``), all on the same rows (the spec's data, cycled).
3. Per server: a warm-up, then wrk at 1, 8 and 32 connections with single rows and 8 with 100-row
   requests, those in both body forms (an object per row; the names once with value arrays); server
   CPU and peak memory summed over its process tree from /proc. Then the floor: the fitted pipeline
   called in this process (on a pandas frame, and as the service calls it).

The load generator shares the host's cores with the server: compare the ratios within one run,
not absolute numbers between machines.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tools.bench_report import (
    FORMS,
    SCENARIOS,
    WRK,
    WRK_LUA,
    Floor,
    Measured,
    Report,
    parse_wrk,
    render_markdown,
    replace_section,
    total_errors,
    wrk_command,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / ".demo"
WORK_DIR = REPO_ROOT / ".build" / "bench"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "latest.md"
CHART = REPO_ROOT / "docs" / "img" / "bench_serving.png"
README = REPO_ROOT / "README.md"
README_BEGIN = "<!-- bench-serving:begin (written by tools.bench_serving) -->"
README_END = "<!-- bench-serving:end -->"
SAMPLE_ROWS = 400
DISTINCT_BODIES = 64
WARMUP_SECONDS = 3
PROJECT, MLFLOW, MLSERVER = "this project", "mlflow models serve", "MLServer 1.7.1 (sklearn)"
SERVER_KEYS = {"project": PROJECT, "mlflow": MLFLOW, "mlserver": MLSERVER}
Progress = Callable[[str], None]


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- the server's processes ----------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def rss_mb(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class Sampler:
    """CPU time and peak RSS of a process tree while the block runs."""

    def __init__(self, root: int) -> None:
        self.pids = process_tree(root)
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> Sampler:
        self.cpu0, self.t0 = cpu_seconds(self.pids), time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, rss_mb(self.pids))

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pids))
        self.cpu_percent = 100 * (cpu_seconds(self.pids) - self.cpu0) / (time.perf_counter() - self.t0)


# ---- one load --------------------------------------------------------------------------------------


def check_answer(url: str, body: bytes, rows: int, answers: Callable[[Any], int]) -> None:
    """One request by hand: a 200 with one answer per row, or SystemExit saying what came back."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    count = answers(json.loads(payload)) if response.status == 200 else -1
    if count != rows:
        raise SystemExit(f"{url} answered {response.status} {payload[:300]!r}: not {rows} answer(s)")


def run_wrk(url: str, connections: int, seconds: float, bodies_path: Path, lua_path: Path) -> str:
    proc = subprocess.run(
        wrk_command(url, connections, seconds, str(lua_path)),
        capture_output=True, text=True, timeout=seconds + 60, check=False,
        env={**os.environ, "BENCH_BODIES": str(bodies_path)},
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    return proc.stdout


def measure_server(
    name: str,
    url: str,
    pid: int,
    bodies: Mapping[str, Callable[[Sequence[dict[str, object]]], bytes]],  # per form
    answers: Callable[[Any], int],
    rows: Sequence[dict[str, object]],
    seconds: float,
    work: Path,
) -> list[Measured]:
    """Each scenario, grouped by rows per request and body form (a warm-up per group); a group whose
    bodies are byte for byte an earlier group's (a server with one form) is measured once."""
    lua = work / "post.lua"
    lua.write_text(WRK_LUA)
    results: list[Measured] = []
    measured: dict[tuple[bytes, int], Measured] = {}  # (bodies, connections) -> what wrk saw
    for rows_per_request, form in sorted(
        dict.fromkeys((s.rows, s.form) for s in SCENARIOS), key=lambda g: g[0]
    ):
        group = [
            bodies[form]([rows[(i * rows_per_request + j) % len(rows)] for j in range(rows_per_request)])
            for i in range(DISTINCT_BODIES)
        ]
        content = b"\n".join(group) + b"\n"
        scenarios = [s for s in SCENARIOS if (s.rows, s.form) == (rows_per_request, form)]
        if all((content, s.connections) in measured for s in scenarios):
            say(f"{name}: {rows_per_request} row(s), {form}: the same bodies as measured, not run again")
            results += [
                replace(
                    measured[content, s.connections],
                    scenario=s,
                    same_as=measured[content, s.connections].scenario.form,
                )
                for s in scenarios
            ]
            continue
        check_answer(url, group[0], rows_per_request, answers)
        path = work / f"bodies-{rows_per_request}-{form}.txt"
        path.write_bytes(content)
        run_wrk(url, 8, WARMUP_SECONDS, path, lua)
        for scenario in scenarios:
            with Sampler(pid) as sampler:
                load = parse_wrk(run_wrk(url, scenario.connections, seconds, path, lua))
            say(
                f"{name}: {scenario.label}: "
                f"{load.requests_per_s:,.0f} req/s, p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms, "
                f"{load.errors} errors, CPU {sampler.cpu_percent:.0f}%"
            )
            result = Measured(name, scenario, load, sampler.cpu_percent, sampler.peak)
            measured[content, scenario.connections] = result
            results.append(result)
    return results


# ---- the model -------------------------------------------------------------------------------------


def prepared_model(spec_path: Path, work: Path, base_image: str | None = None) -> tuple[Any, Any, Path]:
    """(spec, build context, MLflow model folder): the demo's registered model and its bento
    (on ``base_image`` when given, else the service's default base)."""
    from model.bento import export_build_context
    from model.container import DEFAULT_BASE_IMAGE
    from model.spec import load_spec
    from model.train import TrainConfig, train_and_register
    from tools.processes import free_port, running_mlflow_server

    mlflow_dir = DEMO_DIR / "mlflow"
    if not (mlflow_dir / "mlflow.db").is_file():
        raise SystemExit(
            f"{mlflow_dir / 'mlflow.db'} is missing: run `make demo` first (it trains and registers)"
        )
    spec = load_spec(spec_path)
    port = free_port()
    with running_mlflow_server(
        mlflow_dir, port, log_path=work / "logs" / "mlflow-server.log", timeout=180
    ) as uri:
        result = train_and_register(TrainConfig(spec=spec, tracking_uri=uri))
        say(f"model {result.model_uri} ({'reused' if result.reused else 'trained'})")
        ctx = export_build_context(
            result.model_uri, result.fingerprint, work / "build-context", tracking_uri=uri,
            bentoml_home=DEMO_DIR / "bentoml", base_image=base_image or DEFAULT_BASE_IMAGE,
        )  # fmt: skip
    name, version = ctx.model_tag.split(":")
    return spec, ctx, ctx.path / "models" / name / version / "mlflow_model"


def built_image(spec_path: Path, work: Path) -> tuple[Any, Any, Path, str]:
    """``prepared_model`` exported on the Debian stand-in base (tools.base_image: the harness's
    offline base for air-gapped builds) and built in the benchmark's Docker engine, the engine
    ``--image`` runs in; returns its tag last. The build context and the Dockerfile are the product's."""
    from tools.base_image import ensure_standin
    from tools.bench_servers import BENCH_ENGINE_DIR
    from tools.container_run import build_image
    from tools.docker_env import docker_engine

    with docker_engine(BENCH_ENGINE_DIR, say) as engine:
        base = ensure_standin(engine, work / "standin", say)
        spec, ctx, model_dir = prepared_model(spec_path, work, base_image=base)
        tag = f"bench/{ctx.image_name}:{ctx.image_tag}"
        build_image(engine, ctx.path, ctx.dockerfile, tag, work / "logs" / "image-build.log",
                    environ=dict(os.environ), progress=say)  # fmt: skip
    return spec, ctx, model_dir, tag


def floors(model_dir: Path, rows: Sequence[dict[str, object]], schema: Any) -> list[Floor]:
    """The fitted pipeline called here on 1 and 100 rows: on a pandas frame, and as the service does."""
    import mlflow.pyfunc
    import pandas as pd

    from model.predictor import predictor_for

    pipeline = mlflow.pyfunc.load_model(str(model_dir)).get_raw_model()
    predictor, _ = predictor_for(pipeline, schema)
    path = {"KernelPredictor": "numpy kernels", "ArrayPredictor": "array path"}.get(
        type(predictor).__name__, "pandas frame path"
    )
    served = f"validate + predict as served ({path})"
    out = []
    for n in (1, 100):
        chunk = list(rows[:n])
        frame = pd.DataFrame.from_records(chunk, columns=list(schema.names))
        on_frame = functools.partial(pipeline.predict, frame)
        out.append(Floor("pipeline.predict(DataFrame)", n, _time_call(on_frame)))
        out.append(Floor(served, n, _time_call(functools.partial(_served_call, predictor, chunk, schema))))
    return out


def _served_call(predictor: Any, rows: list[dict[str, object]], schema: Any) -> object:
    from model.validation import validate_batch

    return predictor.predict(validate_batch(rows, schema).columns)


def _time_call(call: Callable[[], object], seconds: float = 1.5) -> float:
    call()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        call()
        calls += 1
    return 1000 * elapsed / calls


# ---- the run ---------------------------------------------------------------------------------------


def deployment_resources() -> tuple[int, str, str]:
    """(workers, cpu limit, memory limit) of the serving Deployment's defaults (infra/settings.py)."""
    from infra.serving import workers_for_cpu_limit
    from infra.settings import ServingSettings

    defaults = ServingSettings()
    return workers_for_cpu_limit(defaults.cpu_limit), defaults.cpu_limit, defaults.memory_limit


def docker_resource_args(workers: int, cpu_limit: str, memory_limit: str) -> list[str]:
    """``docker run`` flags for a Kubernetes CPU and memory limit and the worker count."""
    from infra.serving import cpu_cores
    from model.container import WORKERS_ENV

    memory = memory_limit.replace("Mi", "m").replace("Gi", "g")
    return ["--cpus", f"{cpu_cores(cpu_limit):g}", "--memory", memory, "--env", f"{WORKERS_ENV}={workers}"]


def server_contexts(
    args: argparse.Namespace,
    ctx: Any,
    model_dir: Path,
    spec: Any,
    schema: Any,
    work: Path,
    notes: dict[str, str],  # filled: how a server is set up, where the report says it
) -> Iterator[
    tuple[
        str, AbstractContextManager[tuple[int, str]], Mapping[str, Callable[..., bytes]], Callable[[Any], int]
    ]
]:
    from tools import bench_servers as s

    workers, cpu_limit, memory_limit = deployment_resources()
    logs = work / "logs"
    if "project" in args.only:
        if args.image:
            cm: AbstractContextManager[tuple[int, str]] = s.project_container(
                args.image, docker_resource_args(workers, cpu_limit, memory_limit), say
            )
        else:
            home = work / "serve-home"
            home.mkdir(parents=True, exist_ok=True)
            cm = s.project_native(ctx.path, ctx.model_tag, workers, logs, home)
        yield PROJECT, cm, s.PROJECT_BODIES, s.project_answers
    if "mlflow" in args.only:
        yield MLFLOW, s.mlflow_serve(model_dir, workers, logs), s.MLFLOW_BODIES, s.mlflow_answers
    if "mlserver" in args.only:
        import mlflow.pyfunc

        pipeline = mlflow.pyfunc.load_model(str(model_dir)).get_raw_model()
        served, body, notes[MLSERVER] = s.mlserver_model(pipeline, schema.columns)
        cm = s.mlserver(served, spec.name, work, logs, say)
        yield MLSERVER, cm, dict.fromkeys(FORMS, body), s.mlserver_answers


def write_png(report: Report, path: Path) -> None:
    """Rows/s and p99 per scenario, one bar per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s.label.replace(", ", "\n") for s in SCENARIOS]
    fig, (ax_rows, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.4))
    width = 0.8 / max(1, len(report.servers))
    for i, server in enumerate(report.servers):
        xs = [k + (i - (len(report.servers) - 1) / 2) * width for k in range(len(SCENARIOS))]
        got = [report.get(server, s) for s in SCENARIOS]
        rows = [m.rows_per_s if m else 0 for m in got]
        p99 = [m.load.p99_ms if m else 0 for m in got]
        bars = ax_rows.bar(xs, rows, width, label=server)
        ax_rows.bar_label(bars, labels=[f"{v:,.0f}" for v in rows], fontsize=6, padding=1, rotation=90)
        bars = ax_p99.bar(xs, p99, width, label=server)
        ax_p99.bar_label(bars, labels=[f"{v:.1f}" for v in p99], fontsize=6, padding=1, rotation=90)
    for ax, title, unit in ((ax_rows, "throughput", "rows/s"), (ax_p99, "p99 latency", "ms")):
        ax.set_xticks(range(len(SCENARIOS)), labels)
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.margins(y=0.2)
    ax_p99.set_yscale("log")
    ax_rows.set_yscale("log")
    ax_rows.legend(fontsize=7, loc="upper left")
    errors = total_errors(report.results)
    fig.suptitle(f"POST predict, wrk on loopback — errors: {errors}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_serving", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--spec", type=Path, default=REPO_ROOT / "model.yaml", help="the served model's spec")
    parser.add_argument(
        "--image", help="benchmark this serving image (as the pod runs it) instead of bentoml serve"
    )
    parser.add_argument(
        "--container",
        action="store_true",
        help="build the demo model's serving image (the product's build context and Dockerfile) and "
        "benchmark it as the pod runs it",
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per scenario (default 10)")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SERVER_KEYS), default=list(SERVER_KEYS), help="servers to run"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="Markdown report (default benchmarks/results/latest.md)"
    )
    parser.add_argument("--png", type=Path, default=CHART, help="chart (default docs/img/bench_serving.png)")
    parser.add_argument(
        "--no-readme", action="store_true", help="do not rewrite the README's benchmark table"
    )
    args = parser.parse_args(argv)
    if args.container and args.image:
        parser.error("--container builds the image it benchmarks: pass --container or --image, not both")
    if args.duration <= 0:
        parser.error(f"--duration must be positive, got {args.duration}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from model.service import contract_from_mlmodel
    from tools.smoke import sample_rows

    args = parse_args(argv)
    if not Path(WRK).is_file():
        raise SystemExit(f"{WRK} is missing: `make system-deps` installs Debian's wrk")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    if args.container:
        spec, ctx, model_dir, args.image = built_image(args.spec, WORK_DIR)
    else:
        spec, ctx, model_dir = prepared_model(args.spec, WORK_DIR)
    schema = contract_from_mlmodel(str(model_dir)).schema
    rows, _ = sample_rows(spec, None, SAMPLE_ROWS)
    results: list[Measured] = []
    servers: list[str] = []
    setups: dict[str, str] = {}
    for name, cm, bodies, answers in server_contexts(args, ctx, model_dir, spec, schema, WORK_DIR, setups):
        say(f"starting {name}")
        with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
            pid, url = stack.enter_context(cm)
            endpoint = url if "/v2/" in url else f"{url}/predict" if name == PROJECT else f"{url}/invocations"
            results += measure_server(name, endpoint, pid, bodies, answers, rows, args.duration, Path(tmp))
        servers.append(name)
    workers, cpu_limit, memory_limit = deployment_resources()
    load_after = os.getloadavg()[0]
    busy = max(load_before, load_after) > (os.cpu_count() or 1)
    where = f"the serving image {args.image}" if args.image else "`bentoml serve` of the bento"
    header = [
        f"# Serving benchmark: {spec.name}",
        "",
        f"`make bench` on {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"wrk (2 threads) on the same host, loopback, {args.duration:g} s per scenario, "
        "the same rows for every server.",
        f"This project: {where}, {workers} workers (the Deployment's CPU limit {cpu_limit}, "
        f"memory {memory_limit}); `mlflow models serve --env-manager local -w {workers}`; "
        "MLServer: one process (`parallel_workers: 0`, faster here than 1 or 2 inference workers), "
        "`debug: false` (no access log), metrics on, " + setups.get(MLSERVER, "not run") + ".",
        f"Host load average (1 min) at the start and end of the run: {load_before:.1f} / {load_after:.1f} "
        f"on {os.cpu_count()} CPUs"
        + (": other processes took CPU from every server alike" if busy else "")
        + "; compare the ratios, not the absolute numbers.",
    ]
    report = Report(tuple(servers), tuple(results), tuple(floors(model_dir, rows, schema)))
    text = render_markdown(report, MLSERVER, MLFLOW, header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    write_png(report, args.png)
    if not args.no_readme and README.is_file():
        readme = README.read_text()
        section = text.split("\n", 2)[2] + f"\n![serving benchmark]({args.png.relative_to(REPO_ROOT)})\n"
        README.write_text(replace_section(readme, README_BEGIN, README_END, section))
    print(text)
    errors = total_errors(results)
    if errors:
        say(
            f"!!! {errors} error(s) (non-2xx, timeouts, socket errors): "
            f"see the errors column and {WORK_DIR / 'logs'}"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
