"""Model-registry lookups and writes the training step needs: reuse by fingerprint, the champion's
metrics, gate tags and aliases. Thin wrappers over ``MlflowClient``, one registry call each.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from model.metric_rules import BY_NAME

FINGERPRINT_TAG = "fingerprint"
GATE_TAG = "gate"  # "passed" | "failed"
TASK_TAG = "task"  # the spec's task: which row of the metric table the metrics belong to
GATE_REASON_TAG = "gate_reason"
CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"


@dataclass(frozen=True)
class VersionInfo:
    """What the training step needs to know about one registered version."""

    version: str
    run_id: str
    metrics: dict[str, float]


def run_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    """The metric-table metrics logged on ``run_id`` (only those present)."""
    logged = client.get_run(run_id).data.metrics
    return {name: float(value) for name, value in logged.items() if name in BY_NAME}


def find_gated_version(
    client: MlflowClient, model_name: str, fingerprint: str
) -> tuple[VersionInfo, bool] | None:
    """(version, passed) with this fingerprint: the newest that passed the gate, else the newest that
    failed it; None if no gated version has it (a version without a gate tag never finished)."""
    quoted = model_name.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{quoted}' and tags.{FINGERPRINT_TAG} = '{fingerprint}'")
    for decision in ("passed", "failed"):
        gated = [mv for mv in found if mv.tags.get(GATE_TAG) == decision]
        if gated:
            newest = max(gated, key=lambda mv: int(mv.version))
            run_id = str(newest.run_id)
            return VersionInfo(str(newest.version), run_id, run_metrics(client, run_id)), decision == "passed"
    return None


def version_by_alias(client: MlflowClient, model_name: str, alias: str) -> VersionInfo | None:
    """The version holding ``alias`` (with its run's metrics); None if the model or alias does not exist."""
    try:
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if alias not in aliases:
        return None
    mv = client.get_model_version(model_name, str(aliases[alias]))
    return VersionInfo(str(mv.version), str(mv.run_id), run_metrics(client, str(mv.run_id)))


def mark_gate(client: MlflowClient, model_name: str, version: str, passed: bool, reason: str) -> None:
    """Record the gate decision on the version; a passed version also gets the candidate alias."""
    client.set_model_version_tag(model_name, version, GATE_TAG, "passed" if passed else "failed")
    client.set_model_version_tag(model_name, version, GATE_REASON_TAG, reason)
    if passed:
        client.set_registered_model_alias(model_name, CANDIDATE_ALIAS, version)
