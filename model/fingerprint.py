"""The training fingerprint: one sha256 that changes exactly when a retrain could change the model.

It covers the data file's bytes, every ``*.py`` under model/ (sorted relative path + bytes), the
canonical JSON of the training params and the requirements lock. Each part is length-prefixed and
labelled so that bytes cannot slide from one part into the next. Reads files, writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent
# What compute_fingerprint returns: a lowercase sha256 hex digest.
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")


def canonical_json(params: Mapping[str, object]) -> str:
    """Key-sorted, whitespace-free JSON; a value JSON cannot hold raises TypeError/ValueError."""
    try:
        return json.dumps(
            dict(params), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"training params must be JSON-serialisable finite values: {exc}") from exc


def code_files(code_dir: Path) -> list[tuple[str, bytes]]:
    """``(relative posix path, bytes)`` of every ``*.py`` under ``code_dir``, sorted by path."""
    files = [(p.relative_to(code_dir).as_posix(), p) for p in code_dir.rglob("*.py") if p.is_file()]
    return [(rel, p.read_bytes()) for rel, p in sorted(files)]


def compute_fingerprint(
    data_path: str | Path,
    params: Mapping[str, object],
    requirements_path: str | Path,
    code_dir: str | Path = MODEL_DIR,
) -> str:
    """sha256 hex of data bytes + model code + canonical params + requirements lock."""
    data_path, requirements_path, code_dir = Path(data_path), Path(requirements_path), Path(code_dir)
    for label, path in (("data file", data_path), ("requirements lock", requirements_path)):
        if not path.is_file():
            raise FileNotFoundError(f"fingerprint: {label} {path} does not exist or is not a file")
    if not code_dir.is_dir():
        raise NotADirectoryError(f"fingerprint: code directory {code_dir} does not exist")
    digest = hashlib.sha256()

    def part(label: str, payload: bytes) -> None:
        digest.update(f"{label}\0{len(payload)}\0".encode())
        digest.update(payload)

    part("data", data_path.read_bytes())
    for rel, payload in code_files(code_dir):
        part(f"code:{rel}", payload)
    part("params", canonical_json(params).encode())
    part("requirements", requirements_path.read_bytes())
    return digest.hexdigest()
