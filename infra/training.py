"""TrainedModel: a Pulumi dynamic resource that trains and registers the model when its inputs change.

The program resolves the stack's ``modelParams`` through ``model.params.ModelParams`` and computes
the fingerprint with ``model.fingerprint.compute_fingerprint`` over ``fingerprint_params`` - the
same code ``model.train`` runs, so the fingerprint here IS the model's lineage fingerprint (the
provider checks it). ``diff``: a new fingerprint or model name is an update that trains; a new gate
alone is an update that re-gates the registered version without training (``train_and_register``
reuses a version with the same fingerprint and gates it again); anything else is no change.
Preview never calls create/update, so preview never trains. A failed gate fails the update and
nothing downstream is built. create/update reach MLflow through ``infra.tunnel.tracking_endpoint``:
on Azure a port-forward over the AKS API server (``tracking_service`` + the secret ``kubeconfig``),
opened for the training call and closed after; locally the node-port ``tracking_uri``. How MLflow is
reached never takes part in diff: a new kubeconfig alone changes nothing. Outputs: run id, model
URI, version, metrics, the model fingerprint (the bento version), and the gate it passed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from infra.settings import ConfigError, TrainingSettings
from model.params import ModelParams, fingerprint_params

# Keys of the resource's properties (the dynamic provider's protocol uses them verbatim).
OUTPUT_KEYS = ("run_id", "model_uri", "version", "metrics", "model_fingerprint", "model_name")
RETRAIN_KEYS = ("fingerprint", "model_name")  # a change trains (or reuses that fingerprint's version)


class TrainingError(RuntimeError):
    """Training could not produce a gated model version; the message says why and what to do."""


def input_fingerprint(data_path: str | Path, params: ModelParams, requirements_path: str | Path) -> str:
    """The fingerprint ``train_and_register`` will log for these inputs (program time; reads files only)."""
    from model.fingerprint import compute_fingerprint

    return compute_fingerprint(data_path, fingerprint_params(params), requirements_path)


def training_fingerprint(training: TrainingSettings, stack: str) -> str:
    """``input_fingerprint`` of a stack's training settings; a ConfigError names the keys if it cannot."""
    try:
        return input_fingerprint(training.data_path, training.params, training.requirements_path)
    except (OSError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"Pulumi.{stack}.yaml: cannot fingerprint the training inputs (dataPath={training.data_path!r}, "
            f"requirementsPath={training.requirements_path!r}, modelParams): {exc}"
        ) from exc


def same_gate(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether two gates are equal as numbers (the engine may turn 1 into 1.0)."""
    if old is None or new is None:
        return old is new
    return set(old) == set(new) and all(float(old[k]) == float(new[k]) for k in old)


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


def train(props: Mapping[str, Any]) -> dict[str, Any]:
    """Run model.train for the resource's inputs; returns the output properties."""
    from model.train import GateFailedError, GateThresholds, TrainConfig, train_and_register

    try:
        params = ModelParams.from_mapping(props.get("params"))
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
    from infra.tunnel import TunnelError, tracking_endpoint

    try:
        with (
            tracking_endpoint(
                tracking_uri=props.get("tracking_uri") or "",
                service=props.get("tracking_service") or "",
                kubeconfig=props.get("kubeconfig") or "",
            ) as uri,
            tracking_env(props.get("tracking_username"), props.get("tracking_password")),
        ):
            result = train_and_register(replace(config, tracking_uri=uri))
    except GateFailedError as exc:
        raise TrainingError(f"TrainedModel: {exc}. Nothing was built or deployed.") from exc
    except TunnelError as exc:
        raise TrainingError(f"TrainedModel: cannot reach MLflow to train: {exc}") from exc
    if result.fingerprint != props["fingerprint"]:
        raise TrainingError(
            f"TrainedModel: training logged fingerprint {result.fingerprint} but the program computed "
            f"{props['fingerprint']}: model/ code, data or requirements changed during `pulumi up`, or "
            "the two computations diverged. Run `pulumi up` again from an unchanged checkout."
        )
    return {
        "fingerprint": props["fingerprint"],
        "gate": dict(props["gate"]),
        "run_id": result.run_id,
        "model_uri": result.model_uri,
        "version": result.version,
        "metrics": dict(result.metrics),
        "model_fingerprint": result.fingerprint,
        "model_name": result.model_name,
        "reused": result.reused,
    }


class TrainedModelProvider(ResourceProvider):
    """create/update train or re-gate; diff decides which; delete leaves MLflow's versions alone."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        retrain = [key for key in RETRAIN_KEYS if olds.get(key) != news.get(key)]
        regate = not same_gate(olds.get("gate"), news.get("gate"))
        # A re-gate keeps the version (or fails): every output stays, so dependants show no change.
        stables = [k for k in OUTPUT_KEYS if not retrain or (k == "model_name" and k not in retrain)]
        return DiffResult(
            changes=bool(retrain) or regate, replaces=[], stables=stables, delete_before_replace=False
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = train(props)
        return CreateResult(id_=f"{outs['model_name']}/{outs['version']}", outs=outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=train(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # Registered versions are the audit trail of what was served, so delete leaves them in MLflow.
        # They outlive `pulumi destroy` only because the stack's PostgreSQL server and storage account
        # are protected (protectStatefulResources, infra/tracking_stores.py).
        return None


class TrainedModel(pulumi.dynamic.Resource):
    """A registered, gated model version for one fingerprint of the training inputs."""

    fingerprint: pulumi.Output[str]
    gate: pulumi.Output[dict[str, float]]
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
        params: ModelParams,
        gate: Mapping[str, float],
        tracking_uri: pulumi.Input[str],
        tracking_service: pulumi.Input[str],
        kubeconfig: pulumi.Input[str],
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
            "params": params.as_dict(),  # resolved: the values the fingerprint covers
            "gate": dict(gate),
            "tracking_uri": tracking_uri,  # local: the node-port URL; Azure: "" (tunnel)
            "tracking_service": tracking_service,  # Azure: <namespace>/<service>:<port>; local: ""
            "kubeconfig": pulumi.Output.secret(kubeconfig),
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
                opts, pulumi.ResourceOptions(additional_secret_outputs=["tracking_password", "kubeconfig"])
            ),
        )
