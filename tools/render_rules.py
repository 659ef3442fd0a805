"""Write ``monitoring/rules.yml``: the Prometheus rules (``infra.alert_rules``) for a model spec's
service with the default thresholds, usable by any Prometheus (``rule_files:``).

``python -m tools.render_rules [--spec model.yaml] [--out monitoring/rules.yml] [--check]``;
``--check`` exits 1 when the file differs from what the code renders (the tests run it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.alert_rules import AlertThresholds, rule_groups, to_prometheus_yaml
from model.spec import DEFAULT_SPEC, load_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = REPO_ROOT / "monitoring" / "rules.yml"
HEADER = (
    "# Rendered by `python -m tools.render_rules` from infra/alert_rules.py for the service of {spec}\n"
    "# with the default thresholds; do not edit (the tests check it is current).\n"
)


def render(spec_path: Path = DEFAULT_SPEC, thresholds: AlertThresholds | None = None) -> str:
    spec = load_spec(spec_path)
    body = to_prometheus_yaml(rule_groups(spec.bento_name, thresholds or AlertThresholds()))
    return HEADER.format(spec=spec_path.resolve().relative_to(REPO_ROOT).as_posix()) + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.render_rules", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--out", type=Path, default=RULES_FILE)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    args = parser.parse_args(argv)
    text = render(args.spec)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m tools.render_rules", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
