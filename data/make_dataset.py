"""Generate data/train.csv from scikit-learn's bundled breast cancer data set (no download).

Deterministic: rows keep sklearn's order, floats are written in Python's shortest round-trip form and
lines end in ``\\n``, so a rerun is byte-identical. Column names are snake_case (``mean radius`` ->
``mean_radius``) followed by ``target`` (0 = malignant, 1 = benign).

Usage: ``python data/make_dataset.py [OUT_PATH]`` (default: data/train.csv beside this script).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sklearn.datasets import load_breast_cancer

DEFAULT_OUT = Path(__file__).resolve().parent / "train.csv"


def snake_case(name: str) -> str:
    """``'mean concave points'`` -> ``'mean_concave_points'``."""
    return "_".join(str(name).lower().split())


def build_csv_text() -> str:
    """The full CSV text of the data set, header included."""
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns={name: snake_case(name) for name in bunch.feature_names})
    frame["target"] = frame["target"].astype("int64")
    return str(frame.to_csv(index=False, lineterminator="\n"))


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_csv_text(), encoding="utf-8", newline="")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
