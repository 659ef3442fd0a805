"""infra/mlflow_prepare.py: the SQL that gives MLflow its own database role, and how the pod runs it."""

from __future__ import annotations

import pytest

from infra import tracking
from infra.mlflow_prepare import role_statements
from tools.stack_mocks import run_stack


def test_the_role_is_created_idempotently_and_owns_only_mlflows_databases() -> None:
    sql = role_statements("mlflow_app", ["mlflow", "mlflow_auth"])
    assert "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow_app')" in sql[0]
    assert sql[1] == "ALTER ROLE mlflow_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s"
    assert sql[-2:] == [
        "ALTER DATABASE mlflow OWNER TO mlflow_app",
        "ALTER DATABASE mlflow_auth OWNER TO mlflow_app",
    ]
    assert all("%s" not in s for i, s in enumerate(sql) if i != 1)  # the password only as a parameter


@pytest.mark.parametrize("name", ["Mlflow", "mlflow;drop", "1role", ""])
def test_names_that_are_not_plain_identifiers_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        role_statements(name, ["mlflow"])
    with pytest.raises(ValueError, match="identifier"):
        role_statements("mlflow_app", [name])


def test_the_pod_runs_the_shipped_script_in_order() -> None:
    run = run_stack("dev")
    [config_map] = [
        r
        for r in run.of_type("kubernetes:core/v1:ConfigMap")
        if r.inputs["metadata"]["name"] == "mlflow-prepare"
    ]
    assert config_map.inputs["data"] == {"mlflow_prepare.py": tracking.PREPARE_SCRIPT.read_text()}
    [deployment] = [
        d for d in run.of_type("kubernetes:apps/v1:Deployment") if d.inputs["metadata"]["name"] == "mlflow"
    ]
    template = deployment.inputs["spec"]["template"]
    assert template["metadata"]["annotations"] == {"azure.workload.identity/skip-containers": "db-role"}
    init = template["spec"]["initContainers"]
    assert [(c["name"], c["args"]) for c in init] == [("db-role", ["db-role"]), ("wait-blob", ["wait-blob"])]
    assert all(c["command"] == ["python", "/opt/mlflow-prepare/mlflow_prepare.py"] for c in init)
    assert all(c["securityContext"]["readOnlyRootFilesystem"] is True for c in init)
