"""Training parameters: ``ModelParams`` (defaults, types, validation) and the one fingerprinted dict.

Pure and fast to import (no mlflow, sklearn or pandas): the Pulumi program resolves a stack's
``modelParams`` through it at program time and ``model.train`` trains with it, so both compute the
fingerprint over the same resolved values (``fingerprint_params``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

DEFAULT_MIN_ROWS_PER_CLASS = 20  # a data rule, but part of what identifies a training


class ParamsError(ValueError):
    """A training parameter is unknown, of the wrong type or out of range; the message names it."""


@dataclass(frozen=True)
class ModelParams:
    """Everything that shapes the fitted model; part of the fingerprint.

    Values are normalised on construction (``C=1`` becomes ``1.0``, ``max_iter=1000.0`` becomes
    ``1000``), so every way of writing the same params gives the same fingerprint.
    """

    C: float = 1.0
    max_iter: int = 1000
    test_size: float = 0.25
    random_state: int = 42

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = int if f.type in ("int", int) else float
            object.__setattr__(self, f.name, _number(f.name, value, kind))
        if not self.C > 0:
            raise ParamsError(f"ModelParams.C must be > 0, got {self.C}")
        if self.max_iter < 1:
            raise ParamsError(f"ModelParams.max_iter must be >= 1, got {self.max_iter}")
        if not 0 < self.test_size < 1:
            raise ParamsError(f"ModelParams.test_size must be in (0, 1), got {self.test_size}")
        if self.random_state < 0:
            raise ParamsError(f"ModelParams.random_state must be >= 0, got {self.random_state}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object] | None) -> ModelParams:
        """Params from a mapping such as a stack's ``modelParams``; missing keys take the defaults."""
        raw = dict(raw or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ParamsError(
                f"unknown parameter(s) {', '.join(unknown)}; the known ones are {', '.join(known)}"
            )
        return cls(**raw)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _number(name: str, value: object, kind: type[int] | type[float]) -> int | float:
    """``value`` as ``kind``; integral floats are accepted for ints (the Pulumi engine sends floats)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamsError(f"ModelParams.{name} must be a finite number, got {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ParamsError(f"ModelParams.{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def fingerprint_params(
    params: ModelParams, min_rows_per_class: int = DEFAULT_MIN_ROWS_PER_CLASS
) -> dict[str, object]:
    """The params that identify a training: the resolved model params plus the data rule applied."""
    return {**params.as_dict(), "min_rows_per_class": int(min_rows_per_class)}
