"""What monitoring adds per request: ``Monitor.observe`` timed on the default model's held-out rows
(1 row, 100 rows), with ``prometheus_client`` in multiprocess mode as under ``bentoml serve``.

``python -m tools.bench_monitoring [--spec model.yaml] [--repeat 300]`` trains the spec in memory (no
MLflow), builds its reference profile and prints microseconds per observe call. A number, not a
verdict: compare it with the per-request latency of ``tools.bench_serving``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def measure(spec_path: Path, repeat: int, sizes: Sequence[int] = (1, 100)) -> dict[int, float]:
    """Median microseconds per ``observe`` for each request size (rows)."""
    with tempfile.TemporaryDirectory(prefix="prom-multiproc-") as tmp:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp  # before prometheus_client is imported
        if "prometheus_client" in sys.modules:
            raise RuntimeError("prometheus_client was imported before its multiprocess folder was set")
        from model.data import load_dataset
        from model.monitoring import ModelIdentity, Monitor
        from model.profile import build_profile
        from model.spec import load_spec
        from model.train import fit_and_evaluate

        spec = load_spec(spec_path)
        dataset = load_dataset(spec)
        fitted = fit_and_evaluate(dataset, spec, progress=lambda _: None)
        names = None if fitted.classes is None else {str(c): spec.class_name(c) for c in fitted.classes}
        profile = build_profile(fitted.train, dataset.features, fitted.predictions, spec.task, names)
        monitor = Monitor(profile, spec.bento_name, ModelIdentity(spec.name, "0", "0" * 64))
        answers = [names[str(p)] for p in fitted.predictions] if names else list(fitted.predictions)
        result = {}
        for size in sizes:
            frame = fitted.heldout[dataset.feature_names].head(size)
            predictions = answers[:size]
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                monitor.observe(frame, predictions)
                times.append(time.perf_counter() - start)
            result[size] = statistics.median(times) * 1e6
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_monitoring", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--spec", type=Path, default=REPO_ROOT / "model.yaml")
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args(argv)
    for size, micros in measure(args.spec, args.repeat).items():
        print(f"observe, {size:>3} row(s): {micros:8.1f} us per request (median of {args.repeat})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
