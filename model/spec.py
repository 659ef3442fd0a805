"""The model spec: one YAML file (default ``model.yaml``) that is the single source of a model's identity.

Pure and fast to import (PyYAML only: no mlflow, sklearn or pandas): the Pulumi program reads the
spec at program time, ``model.train`` trains it, ``model.bento`` names the bento and the service
after it. Every key is validated; a ``SpecError`` names the file, the key and the fix.

Keys (README, "Bring your own model"): ``name``, ``task`` (binary|multiclass|regression), ``data``
(CSV, relative to the spec's folder), ``target``, optional ``features`` (name -> double|long|
boolean|string, or ``{type: string, categories: [...]}``; absent: inferred from the file and frozen
into the MLflow signature), optional ``classes`` (a list of target values, or value -> class name),
``estimator`` (``package.module.Class`` or ``package.module:factory``) and ``params``,
``preprocessing`` (``numeric: standard|none``, ``categorical: onehot|ordinal``), ``split``
(``test_size``, ``seed``), ``min_rows_per_class``, ``gate`` (model.gate), optional ``packages``
(extra distributions the model needs at serving time) and ``serialization`` (skops|cloudpickle).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from model.gate import Gate, GateConfigError, parse_gate
from model.metric_rules import CLASSIFICATION_TASKS, TASKS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO_ROOT / "model.yaml"

FEATURE_TYPES: tuple[str, ...] = ("double", "long", "boolean", "string")
NUMERIC_SCALINGS: tuple[str, ...] = ("standard", "none")
CATEGORICAL_ENCODINGS: tuple[str, ...] = ("onehot", "ordinal")
SERIALIZATIONS: tuple[str, ...] = ("skops", "cloudpickle")
DEFAULT_MIN_ROWS_PER_CLASS = 20

KEYS: tuple[str, ...] = (
    "name",
    "task",
    "data",
    "target",
    "features",
    "classes",
    "estimator",
    "params",
    "preprocessing",
    "split",
    "min_rows_per_class",
    "gate",
    "packages",
    "serialization",
)
REQUIRED_KEYS: tuple[str, ...] = ("name", "task", "data", "target", "estimator", "gate")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
ESTIMATOR_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*(\.{_IDENT}|:{_IDENT})$")
_DIST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SpecError(ValueError):
    """A model spec that cannot be used; the message names the file, the key and the fix."""

    def __init__(self, file: str | Path, key: str, problem: str, fix: str) -> None:
        self.file, self.key = str(file), key
        super().__init__(f"{self.file}: key '{key}': {problem}. Fix: {fix}")


@dataclass(frozen=True)
class Feature:
    """One input column: its name, type and (strings) the allowed categories."""

    name: str
    type: str
    categories: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"type": self.type}
        if self.categories is not None:
            out["categories"] = list(self.categories)
        return out


@dataclass(frozen=True)
class ClassLabel:
    """A target value and the name the serving API answers for it."""

    value: int | str
    name: str


@dataclass(frozen=True)
class ModelSpec:
    """A validated model spec. ``data`` is resolved against the spec's folder."""

    path: Path
    name: str
    task: str
    data: Path
    target: str
    estimator: str
    gate: Gate
    params: Mapping[str, Any] = field(default_factory=dict)
    features: tuple[Feature, ...] | None = None
    classes: tuple[ClassLabel, ...] | None = None
    numeric_scaling: str = "standard"
    categorical_encoding: str = "onehot"
    test_size: float = 0.25
    seed: int = 42
    min_rows_per_class: int = DEFAULT_MIN_ROWS_PER_CLASS
    packages: tuple[str, ...] = ()
    serialization: str = "skops"

    # ---- names derived for each system, sanitised to what it accepts ----
    @property
    def registered_model_name(self) -> str:
        """MLflow registered model (and experiment) name: the spec's name as written."""
        return self.name

    @property
    def image_repository(self) -> str:
        """Container image repository: lowercase letters and digits joined by single ``-`` (the
        Docker reference grammar allows no separator at an end or two in a row)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "model"

    @property
    def bento_name(self) -> str:
        """BentoML bento and service name: lowercase letters, digits and underscores."""
        return bento_name_for(self.name)

    @property
    def label_value(self) -> str:
        """A Kubernetes label value: <= 63 chars of ``[A-Za-z0-9._-]``, alphanumeric at both ends."""
        return self.name[:63].strip("._-")

    @property
    def is_classifier(self) -> bool:
        return self.task in CLASSIFICATION_TASKS

    def with_data(self, data: Path) -> ModelSpec:
        return replace(self, data=Path(data).resolve())

    def with_gate(self, gate: Gate) -> ModelSpec:
        return replace(self, gate=gate)

    def training_identity(self) -> dict[str, object]:
        """What about the spec shapes the fitted model (fingerprinted). Not the name (its own
        retrain key), the data path (the data's bytes are fingerprinted) or the gate (a re-gate)."""
        return {
            "task": self.task,
            "target": self.target,
            "features": None if self.features is None else {f.name: f.as_dict() for f in self.features},
            "classes": None if self.classes is None else [[c.value, c.name] for c in self.classes],
            "estimator": self.estimator,
            "params": dict(self.params),
            "preprocessing": {"numeric": self.numeric_scaling, "categorical": self.categorical_encoding},
            "split": {"test_size": self.test_size, "seed": self.seed},
            "min_rows_per_class": self.min_rows_per_class,
            "packages": list(self.packages),
            "serialization": self.serialization,
        }

    def class_name(self, value: object) -> str:
        """The serving name of a target value (the value itself when the spec names no classes)."""
        for label in self.classes or ():
            if label.value == value or str(label.value) == str(value):
                return label.name
        return str(value)


def bento_name_for(name: str) -> str:
    """A registered model name as a BentoML bento/service name: lowercase letters, digits, ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "model"


def load_spec(path: str | Path = DEFAULT_SPEC) -> ModelSpec:
    """Read and validate the spec at ``path``."""
    path = Path(path).resolve()
    if not path.is_file():
        raise SpecError(path, "(file)", "no such file", "pass --spec PATH of a model spec (see model.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SpecError(path, "(file)", f"not valid UTF-8 YAML ({exc})", "fix the YAML syntax") from exc
    return parse_spec(raw, path)


def parse_spec(raw: object, path: Path) -> ModelSpec:
    """Validate ``raw`` (the parsed YAML of ``path``) into a ModelSpec."""
    if not isinstance(raw, Mapping):
        raise SpecError(
            path, "(file)", "is not a mapping of keys", "write `name: ...`, `task: ...` (see model.yaml)"
        )
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise SpecError(path, unknown[0], "is not a spec key", f"remove it; the keys are {', '.join(KEYS)}")
    missing = [k for k in REQUIRED_KEYS if raw.get(k) is None]
    if missing:
        raise SpecError(path, missing[0], "is required", f"add `{missing[0]}:` (see model.yaml)")

    def fail(key: str, problem: str, fix: str) -> SpecError:
        return SpecError(path, key, problem, fix)

    name = _text(raw, "name", fail)
    if not NAME_RE.match(name):
        raise fail(
            "name",
            f"{name!r} is not 1-63 letters, digits, '.', '_' or '-' starting alphanumeric",
            "use a name such as my-model",
        )
    task = _text(raw, "task", fail)
    if task not in TASKS:
        raise fail("task", f"{task!r} is not a task", f"use one of {', '.join(TASKS)}")
    data = (path.parent / _text(raw, "data", fail)).resolve()
    target = _text(raw, "target", fail)
    estimator = _text(raw, "estimator", fail)
    if not ESTIMATOR_RE.match(estimator):
        raise fail(
            "estimator",
            f"{estimator!r} is not an import path",
            "write package.module.Class (e.g. sklearn.ensemble.RandomForestClassifier) "
            "or package.module:factory",
        )
    params = raw.get("params") or {}
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise fail(
            "params", f"must map keyword names to values, got {params!r}", "write e.g. params: {C: 1.0}"
        )
    _check_json(params, "params", fail)
    features = _features(raw.get("features"), target, fail)
    classes = _classes(raw.get("classes"), task, fail)
    numeric, categorical = _preprocessing(raw.get("preprocessing"), fail)
    test_size, seed = _split(raw.get("split"), fail)
    min_rows = raw.get("min_rows_per_class", DEFAULT_MIN_ROWS_PER_CLASS)
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise fail("min_rows_per_class", f"{min_rows!r} is not a whole number >= 1", "set e.g. 20")
    packages = raw.get("packages") or []
    if not isinstance(packages, list) or not all(isinstance(p, str) and _DIST_RE.match(p) for p in packages):
        raise fail("packages", f"{packages!r} is not a list of distribution names", "write e.g. [lightgbm]")
    serialization = str(raw.get("serialization", "skops"))
    if serialization not in SERIALIZATIONS:
        raise fail(
            "serialization", f"{serialization!r} is not supported", f"use one of {', '.join(SERIALIZATIONS)}"
        )
    try:
        gate = parse_gate(raw["gate"], task)
    except GateConfigError as exc:
        raise fail(f"gate.{exc.key}".rstrip("."), exc.problem, exc.fix) from None
    return ModelSpec(
        path=path,
        name=name,
        task=task,
        data=data,
        target=target,
        estimator=estimator,
        gate=gate,
        params=dict(params),
        features=features,
        classes=classes,
        numeric_scaling=numeric,
        categorical_encoding=categorical,
        test_size=test_size,
        seed=seed,
        min_rows_per_class=min_rows,
        packages=tuple(packages),
        serialization=serialization,
    )


def _text(raw: Mapping[str, Any], key: str, fail: Any) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise fail(key, f"must be a non-empty string, got {value!r}", f"set `{key}:` to a string")
    return value.strip()


def _check_json(value: object, key: str, fail: Any) -> None:
    """Params are fingerprinted as JSON: only strings, finite numbers, booleans, null, lists, maps."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_json(v, f"{key}.{k}", fail)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{key}[{i}]", fail)
    elif isinstance(value, float) and not math.isfinite(value):
        raise fail(key, f"{value} is not finite", "use a finite number")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise fail(
            key, f"{value!r} is not a plain YAML value", "use strings, numbers, booleans, lists or maps"
        )


def _features(raw: object, target: str, fail: Any) -> tuple[Feature, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not raw:
        raise fail("features", "must map feature names to types", "write e.g. features: {age: double}")
    out = []
    for name, entry in raw.items():
        key = f"features.{name}"
        if not isinstance(name, str) or not name.strip():
            raise fail(key, "a feature name must be a non-empty string", "quote the column name")
        if name == target:
            raise fail(key, "is the target column", "remove it from features")
        categories = None
        if isinstance(entry, Mapping):
            kind = entry.get("type")
            extra = sorted(set(entry) - {"type", "categories"})
            if extra:
                raise fail(f"{key}.{extra[0]}", "is not a feature key", "use type and categories")
            if "categories" in entry:
                cats = entry["categories"]
                if (
                    kind != "string"
                    or not isinstance(cats, list)
                    or not cats
                    or len(set(map(str, cats))) != len(cats)
                ):
                    raise fail(
                        f"{key}.categories",
                        f"{cats!r} is not a list of distinct values of a string feature",
                        "write {type: string, categories: [a, b]}",
                    )
                categories = tuple(str(c) for c in cats)
        else:
            kind = entry
        if kind not in FEATURE_TYPES:
            raise fail(key, f"type {kind!r} is not supported", f"use one of {', '.join(FEATURE_TYPES)}")
        out.append(Feature(name, str(kind), categories))
    return tuple(out)


def _classes(raw: object, task: str, fail: Any) -> tuple[ClassLabel, ...] | None:
    if raw is None:
        return None
    if task not in CLASSIFICATION_TASKS:
        raise fail("classes", f"a {task} model has no classes", "remove the key")
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif isinstance(raw, list):
        pairs = [(value, value) for value in raw]
    else:
        raise fail("classes", f"{raw!r} is neither a list nor a mapping", "write [a, b] or {0: no, 1: yes}")
    labels = []
    for value, name in pairs:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise fail(
                f"classes.{value}",
                "a class value must be an integer or a string",
                "use the target's values; quote yes/no/true/false (YAML reads them as booleans)",
            )
        labels.append(ClassLabel(value, str(name)))
    if len({str(label.value) for label in labels}) != len(labels) or len({lb.name for lb in labels}) != len(
        labels
    ):
        raise fail("classes", "holds a value or name twice", "list each class once")
    if task == "binary" and len(labels) != 2:
        raise fail(
            "classes", f"a binary model has 2 classes, not {len(labels)}", "list two, or use task: multiclass"
        )
    if task == "multiclass" and len(labels) < 3:
        raise fail("classes", f"{len(labels)} classes is not multiclass", "use task: binary")
    return tuple(labels)


def _preprocessing(raw: object, fail: Any) -> tuple[str, str]:
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise fail(
            "preprocessing", f"{raw!r} is not a mapping", "write {numeric: standard, categorical: onehot}"
        )
    extra = sorted(set(raw) - {"numeric", "categorical"})
    if extra:
        raise fail(f"preprocessing.{extra[0]}", "is not a preprocessing key", "use numeric and categorical")
    numeric = str(raw.get("numeric", "standard"))
    categorical = str(raw.get("categorical", "onehot"))
    if numeric not in NUMERIC_SCALINGS:
        raise fail(
            "preprocessing.numeric", f"{numeric!r} is unknown", f"use one of {', '.join(NUMERIC_SCALINGS)}"
        )
    if categorical not in CATEGORICAL_ENCODINGS:
        raise fail(
            "preprocessing.categorical",
            f"{categorical!r} is unknown",
            f"use one of {', '.join(CATEGORICAL_ENCODINGS)}",
        )
    return numeric, categorical


def _split(raw: object, fail: Any) -> tuple[float, int]:
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise fail("split", f"{raw!r} is not a mapping", "write {test_size: 0.25, seed: 42}")
    extra = sorted(set(raw) - {"test_size", "seed"})
    if extra:
        raise fail(f"split.{extra[0]}", "is not a split key", "use test_size and seed")
    test_size, seed = raw.get("test_size", 0.25), raw.get("seed", 42)
    if isinstance(test_size, bool) or not isinstance(test_size, int | float) or not 0 < test_size < 1:
        raise fail("split.test_size", f"{test_size!r} is not a fraction in (0, 1)", "set e.g. 0.25")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise fail("split.seed", f"{seed!r} is not a whole number >= 0", "set e.g. 42")
    return float(test_size), int(seed)
