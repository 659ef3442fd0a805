"""Benchmark of the serving image: its size (with what takes the room) and its cold start
(``docker run`` under the pod's constraints -> first 200 from the readiness probe), against the
targets: image <= 600 MB for this model, cold start <= 5 s. Prints a report; optionally a PNG chart.

    python -m tools.bench_image [--image REF] [--runs 3] [--png .build/bench_image.png]

Without --image it takes the image the last container test run built (.build/e2e/image.json).
Starts a Docker engine if none runs and stops it again; removes every container it starts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.bench_servers import BENCH_ENGINE_DIR
from tools.container_run import image_size_bytes, remove_container, start_serving
from tools.docker_env import DockerEngine, docker, docker_engine, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
LAST_E2E_IMAGE = REPO_ROOT / ".build" / "e2e" / "image.json"
TARGET_SIZE_MB = 600.0
TARGET_COLD_START_S = 5.0
# Folders inside the image whose size the report breaks down (largest first).
SIZE_PROBE = (
    "(du -sm /app/.venv 2>/dev/null || echo 0) | cut -f1; "
    "find /app/.venv -name '*.pyc' -print0 | du -cm --files0-from=- | tail -1 | cut -f1; "
    "find /app/.venv -type d -name tests -print0 | du -cm --files0-from=- | tail -1 | cut -f1; "
    "(du -sm /root/.cache 2>/dev/null || echo 0) | cut -f1; "
    "du -sm /app/.venv/lib/python3.11/site-packages/* | sort -rn | head -8"
)


@dataclass(frozen=True)
class Layer:
    size_mb: float
    step: str


@dataclass(frozen=True)
class Report:
    image: str
    size_mb: float
    layers: list[Layer]
    inside: dict[str, float]
    top_packages: list[tuple[str, float]]
    cold_starts_s: list[float]

    def render(self) -> str:
        median = statistics.median(self.cold_starts_s)
        size_ok = "met" if self.size_mb <= TARGET_SIZE_MB else "MISSED"
        start_ok = "met" if median <= TARGET_COLD_START_S else "MISSED"
        lines = [
            f"image        {self.image}",
            f"size         {self.size_mb:.0f} MB   (target <= {TARGET_SIZE_MB:.0f} MB: {size_ok})",
            f"cold start   median {median:.2f} s, min {min(self.cold_starts_s):.2f} s, "
            f"max {max(self.cold_starts_s):.2f} s over {len(self.cold_starts_s)} runs "
            f"(target <= {TARGET_COLD_START_S:.0f} s: {start_ok})",
            "layers over 1 MB (Dockerfile step):",
            *[
                f"  {layer.size_mb:7.1f} MB  {layer.step[:100]}"
                for layer in self.layers
                if layer.size_mb >= 1
            ],
            "inside the image:",
            *[f"  {value:7.0f} MiB {name}" for name, value in self.inside.items()],
            "largest packages in the venv:",
            *[f"  {value:7.0f} MiB {name}" for name, value in self.top_packages],
        ]
        return "\n".join(lines)


def parse_size(text: str) -> float:
    """Docker's human size ('539MB', '2.97kB', '0B') in MB (powers of 1000, as Docker prints them)."""
    units = {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "MB": 1.0, "GB": 1e3}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(f"unexpected docker size {text!r}")


def layers(engine: DockerEngine, image: str) -> list[Layer]:
    """Layers of ``image``, largest first, each with the Dockerfile step that made it."""
    out = docker(engine, ["history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image]).stdout
    rows = (line.split("\t", 1) for line in out.splitlines())
    parsed = [Layer(parse_size(size), step or "(base image)") for size, step in rows]
    return sorted(parsed, key=lambda layer: layer.size_mb, reverse=True)


def inside(engine: DockerEngine, image: str) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """(sizes of the venv and its parts, largest packages) measured in a throw-away container."""
    out = docker(
        engine,
        ["run", "--rm", "--user", "0", "--network", "none", "--entrypoint", "sh", image, "-c", SIZE_PROBE],
    ).stdout.splitlines()
    names = ("/app/.venv", "  of which .pyc files", "  of which tests/ folders", "/root/.cache (uv cache)")
    summary = {name: float(value or 0) for name, value in zip(names, out[:4], strict=True)}
    top = [(Path(path).name, float(size)) for size, path in (line.split("\t", 1) for line in out[4:])]
    return summary, top


def cold_starts(engine: DockerEngine, image: str, runs: int) -> list[float]:
    """Seconds from `docker run` to ready, one fresh container per run."""
    results = []
    for run in range(runs):
        container = start_serving(engine, image, name=f"bench-image-{run}", host_port=free_port())
        remove_container(engine, container.container_id)
        print(f"  cold start {run + 1}/{runs}: {container.cold_start_s:.2f} s", file=sys.stderr, flush=True)
        results.append(container.cold_start_s)
    return results


# What each kind of layer of BentoML's Dockerfile holds, for the chart's legend (matched in order).
LAYER_NAMES = (
    ("pip install -r", "Python packages (/app/.venv)"),
    ("uv-requirements", "uv, BentoML's installer"),
    ("uv venv", "empty venv"),
    ("(base image)", "base image"),
    ("COPY", "bento files (model, src)"),
)


def layer_label(step: str) -> str:
    """A short name for a layer's Dockerfile step; unknown steps keep their last 40 characters."""
    return next((name for marker, name in LAYER_NAMES if marker in step), step[-40:].strip())


def write_png(report: Report, path: Path) -> None:
    """Two bars against their targets: size (MB) by layer, and each cold start (s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_size, ax_start) = plt.subplots(1, 2, figsize=(11, 4.5))
    bottom = 0.0
    for layer in report.layers:
        if layer.size_mb >= 1:
            bars = ax_size.bar(
                ["image"], [layer.size_mb], bottom=bottom, width=0.5, label=f"{layer_label(layer.step)}"
            )
            ax_size.bar_label(bars, labels=[f"{layer.size_mb:.0f} MB"], label_type="center", fontsize=8)
            bottom += layer.size_mb
    ax_size.axhline(TARGET_SIZE_MB, color="red", linestyle="--", label=f"target {TARGET_SIZE_MB:.0f} MB")
    ax_size.set_ylabel("MB (layers over 1 MB)")
    ax_size.set_xlim(-0.5, 1.6)
    ax_size.set_title(f"image size {report.size_mb:.0f} MB")
    ax_size.legend(fontsize=8, loc="center right")
    starts = ax_start.bar([str(i + 1) for i in range(len(report.cold_starts_s))], report.cold_starts_s)
    ax_start.bar_label(starts, labels=[f"{s:.2f} s" for s in report.cold_starts_s], fontsize=8)
    ax_start.axhline(
        TARGET_COLD_START_S, color="red", linestyle="--", label=f"target {TARGET_COLD_START_S:.0f} s"
    )
    ax_start.set_xlabel("run")
    ax_start.set_ylabel("s to ready")
    ax_start.set_title("cold start: docker run -> first 200 from /readyz")
    ax_start.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def last_e2e_image() -> str:
    """The image the last container test run built, or an error saying how to get one."""
    if not LAST_E2E_IMAGE.is_file():
        raise SystemExit(
            f"no --image given and {LAST_E2E_IMAGE} is missing: run `make e2e` first or pass --image REF"
        )
    return str(json.loads(LAST_E2E_IMAGE.read_text())["local_tag"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_image", description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="image reference in the engine (default: the last e2e build)")
    parser.add_argument("--runs", type=int, default=3, help="cold starts to measure (default 3)")
    parser.add_argument("--png", type=Path, help="also write a chart here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    image = args.image or last_e2e_image()
    with docker_engine(BENCH_ENGINE_DIR, lambda m: print(m, file=sys.stderr)) as engine:
        if docker(engine, ["image", "inspect", image], check=False).returncode != 0:
            raise SystemExit(
                f"image {image!r} is not in the Docker engine: build it (make e2e) or pass --image"
            )
        summary, top = inside(engine, image)
        report = Report(
            image=image,
            size_mb=image_size_bytes(engine, image) / 1e6,
            layers=layers(engine, image),
            inside=summary,
            top_packages=top,
            cold_starts_s=cold_starts(engine, image, args.runs),
        )
    print(report.render())
    if args.png:
        write_png(report, args.png)
        print(f"chart: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
