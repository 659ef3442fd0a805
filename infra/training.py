"""TrainedModel: a Pulumi dynamic resource that trains and registers the model when its inputs change.

The program computes a fingerprint of the training inputs (data bytes, model/ code, params,
requirements lock) with ``model.fingerprint.compute_fingerprint`` - a pure read. ``diff`` compares
that fingerprint only, so an unchanged input means no training; preview never calls create/update,
so preview never trains. create/update call ``model.train.train_and_register`` against the stack's
MLflow with the stack's gate; a failed gate fails the update and nothing downstream is built.
Outputs: run id, model URI, version, metrics, and both fingerprints (inputs, and the model's own
lineage fingerprint used as the bento version).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

# Keys of the resource's properties (the dynamic provider's protocol uses them verbatim).
OUTPUT_KEYS = ("run_id", "model_uri", "version", "metrics", "model_fingerprint", "model_name")


class TrainingError(RuntimeError):
    """Training could not produce a gated model version; the message says why and what to do."""


def input_fingerprint(data_path: str | Path, params: Mapping[str, Any], requirements_path: str | Path) -> str:
    """The change detector for TrainedModel (program time; reads files, writes nothing)."""
    from model.fingerprint import compute_fingerprint

    return compute_fingerprint(data_path, params, requirements_path)


@contextmanager
def tracking_env(username: str | None, password: str | None) -> Iterator[None]:
    """MLflow reads basic-auth credentials from the environment; set them for one call only."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    try:
        if username:
            os.environ["MLFLOW_TRACKING_USERNAME"] = username
        if password:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def integral_fields(params: Mapping[str, Any], int_fields: set[str]) -> dict[str, Any]:
    """The engine sends every number as a float; give int fields their integral value back."""
    return {
        key: int(value) if key in int_fields and isinstance(value, float) and value.is_integer() else value
        for key, value in params.items()
    }


def train(props: Mapping[str, Any]) -> dict[str, Any]:
    """Run model.train for the resource's inputs; returns the output properties."""
    from model.train import GateFailedError, GateThresholds, ModelParams, TrainConfig, train_and_register

    try:
        int_fields = {f.name for f in dataclasses.fields(ModelParams) if f.type in ("int", int)}
        params = ModelParams(**integral_fields(props.get("params") or {}, int_fields))
        thresholds = GateThresholds(**dict(props["gate"]))
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"TrainedModel: bad training config ({exc}). Fix 'modelParams' / 'gate' in the stack file."
        ) from exc
    config = TrainConfig(
        data_path=Path(props["data_path"]),
        params=params,
        thresholds=thresholds,
        model_name=props["model_name"],
        experiment_name=props["experiment_name"],
        tracking_uri=props["tracking_uri"],
        requirements_path=Path(props["requirements_path"]),
    )
    with tracking_env(props.get("tracking_username"), props.get("tracking_password")):
        try:
            result = train_and_register(config)
        except GateFailedError as exc:
            raise TrainingError(f"TrainedModel: {exc}. Nothing was built or deployed.") from exc
    return {
        "fingerprint": props["fingerprint"],
        "run_id": result.run_id,
        "model_uri": result.model_uri,
        "version": result.version,
        "metrics": dict(result.metrics),
        "model_fingerprint": result.fingerprint,
        "model_name": result.model_name,
        "reused": result.reused,
    }


class TrainedModelProvider(ResourceProvider):
    """create/update train; diff compares fingerprints only; delete keeps MLflow's history."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = olds.get("fingerprint") != news.get("fingerprint")
        # Unchanged: every output stays as it is, so preview shows dependants as unchanged too.
        stables = ["model_name"] if changed else list(OUTPUT_KEYS)
        return DiffResult(changes=changed, replaces=[], stables=stables, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = train(props)
        return CreateResult(id_=f"{outs['model_name']}/{outs['version']}", outs=outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=train(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # Registered versions are the audit trail of what was served; destroying a stack keeps them.
        return None


class TrainedModel(pulumi.dynamic.Resource):
    """A registered, gated model version for one fingerprint of the training inputs."""

    fingerprint: pulumi.Output[str]
    run_id: pulumi.Output[str]
    model_uri: pulumi.Output[str]
    version: pulumi.Output[str]
    metrics: pulumi.Output[dict[str, float]]
    model_fingerprint: pulumi.Output[str]
    model_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        fingerprint: str,
        data_path: str,
        requirements_path: str,
        params: Mapping[str, Any],
        gate: Mapping[str, float],
        tracking_uri: pulumi.Input[str],
        tracking_username: pulumi.Input[str],
        tracking_password: pulumi.Input[str],
        experiment_name: str,
        model_name: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "fingerprint": fingerprint,
            "data_path": data_path,
            "requirements_path": requirements_path,
            "params": dict(params),
            "gate": dict(gate),
            "tracking_uri": tracking_uri,
            "tracking_username": tracking_username,
            "tracking_password": pulumi.Output.secret(tracking_password),
            "experiment_name": experiment_name,
            "model_name": model_name,
            **{key: None for key in OUTPUT_KEYS if key != "model_name"},
            "reused": None,
        }
        super().__init__(
            TrainedModelProvider(),
            name,
            props,
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["tracking_password"])
            ),
        )
