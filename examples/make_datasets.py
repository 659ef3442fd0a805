"""Generate the example data sets: examples/wine/wine.csv, examples/diabetes/diabetes.csv and
examples/churn/churn.csv (no download: scikit-learn's bundled data, and a seeded generator).

Deterministic: rows keep their order, floats are written in Python's shortest round-trip form and
lines end in ``\\n``, so a rerun is byte-identical (tests/test_examples.py checks the committed files).

- wine: scikit-learn's wine recognition data, 178 rows, 13 measurements, 3 cultivars (``cultivar``).
- diabetes: scikit-learn's diabetes data, 442 rows, 10 standardised baseline variables, ``progression``.
- churn: 600 synthetic subscriptions with string categories (``plan``, ``region``), a whole number
  (``tenure_months``), a boolean (``autopay``), a number (``monthly_spend``) and ``churned`` yes/no.

Usage: ``python examples/make_datasets.py [OUT_DIR]`` (default: the examples/ folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_diabetes, load_wine

EXAMPLES = Path(__file__).resolve().parent


def wine() -> pd.DataFrame:
    bunch = load_wine(as_frame=True)
    frame = bunch.frame.rename(columns={"od280/od315_of_diluted_wines": "od280_od315"})
    return frame.rename(columns={"target": "cultivar"}).astype({"cultivar": "int64"})


def diabetes() -> pd.DataFrame:
    return load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})


def churn(rows: int = 600, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "standard", "premium"], size=rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], size=rows)
    tenure = rng.integers(1, 73, size=rows)
    autopay = rng.random(rows) < 0.55
    spend = np.round(rng.normal(40, 12, size=rows) + (plan == "premium") * 35 + (plan == "standard") * 15, 2)
    logit = 1.2 - 0.06 * tenure - 1.1 * autopay + 0.9 * (plan == "basic") + 0.4 * (region == "south")
    churned = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "plan": plan,
            "region": region,
            "tenure_months": tenure.astype("int64"),
            "autopay": autopay,
            "monthly_spend": spend,
            "churned": np.where(churned, "yes", "no"),
        }
    )


DATASETS = {"wine/wine.csv": wine, "diabetes/diabetes.csv": diabetes, "churn/churn.csv": churn}


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0]) if argv else EXAMPLES
    for rel, make in DATASETS.items():
        out = out_dir / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(make().to_csv(index=False, lineterminator="\n"), encoding="utf-8", newline="")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
