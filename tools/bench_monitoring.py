"""What monitoring adds per request: ``Monitor.observe`` timed on the default model's held-out rows
(1 row, 100 rows, validated as the service validates them), with ``prometheus_client`` in
multiprocess mode as under ``bentoml serve``: as served (on a running event loop, the counts written
by a timer, whose write is timed apart) and written at once (no event loop: one counter write per
moved counter per call).

``python -m tools.bench_monitoring [--spec model.yaml] [--repeat 300]`` trains the spec in memory (no
MLflow), builds its reference profile and prints microseconds per observe call. A number, not a
verdict: compare it with the per-request latency of ``tools.bench_serving``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Timing:
    served_us: float  # observe on the serving event loop (counts pending)
    flush_us: float  # writing what the repeated requests left pending, once
    at_once_us: float  # observe without an event loop (written in the call)


def measure(spec_path: Path, repeat: int, sizes: Sequence[int] = (1, 100)) -> dict[int, Timing]:
    """Median microseconds per ``observe`` for each request size (rows)."""
    with tempfile.TemporaryDirectory(prefix="prom-multiproc-") as tmp:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp  # before prometheus_client is imported
        if "prometheus_client" in sys.modules:
            raise RuntimeError("prometheus_client was imported before its multiprocess folder was set")
        from model.data import load_dataset, request_rows
        from model.monitoring import ModelIdentity, Monitor
        from model.profile import build_profile
        from model.spec import load_spec
        from model.train import fit_and_evaluate
        from model.validation import RowSchema, validate_batch

        spec = load_spec(spec_path)
        dataset = load_dataset(spec)
        fitted = fit_and_evaluate(dataset, spec, progress=lambda _: None)
        names = None if fitted.classes is None else {str(c): spec.class_name(c) for c in fitted.classes}
        profile = build_profile(fitted.train, dataset.features, fitted.predictions, spec.task, names)
        monitor = Monitor(profile, spec.bento_name, ModelIdentity(spec.name, "0", "0" * 64))
        answers = [names[str(p)] for p in fitted.predictions] if names else list(fitted.predictions)
        schema = RowSchema(columns=tuple((f.name, f.type) for f in dataset.features))

        def median_us(call: Callable[[], object]) -> float:
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1e6

        result = {}
        for size in sizes:
            # What the service hands observe: the validated request's columns.
            rows = request_rows(fitted.heldout.head(size), dataset.features)
            frame = validate_batch(rows, schema).columns
            predictions = answers[:size]

            async def served() -> tuple[float, float]:
                us = median_us(lambda: monitor.observe(frame, predictions))  # noqa: B023
                start = time.perf_counter()
                monitor.flush()
                return us, (time.perf_counter() - start) * 1e6

            served_us, flush_us = asyncio.run(served())
            at_once = median_us(lambda: monitor.observe(frame, predictions))  # noqa: B023
            result[size] = Timing(served_us, flush_us, at_once)
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_monitoring", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--spec", type=Path, default=REPO_ROOT / "model.yaml")
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args(argv)
    for size, timing in measure(args.spec, args.repeat).items():
        print(
            f"observe, {size:>3} row(s): {timing.served_us:8.1f} us per request as served (median of "
            f"{args.repeat}; their counts written once by the timer in {timing.flush_us:.0f} us), "
            f"{timing.at_once_us:.1f} us written at once"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
