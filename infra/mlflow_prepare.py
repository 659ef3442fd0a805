"""Init steps of the MLflow pod on Azure, run as init containers before ``mlflow server`` starts.

This file is shipped to the pod as a ConfigMap and run with the MLflow image's Python
(``python /opt/mlflow-prepare/mlflow_prepare.py <step>``); it uses only the standard library plus
the image's psycopg2 and azure-identity/azure-storage-blob, imported inside each step.

``db-role``: as the PostgreSQL server admin (its secret is mounted into this init container only),
idempotently create or update the login role MLflow uses, make it the owner of MLflow's databases
(PostgreSQL 15+ gives the database owner the ``public`` schema), so MLflow never holds the admin
login. ``wait-blob``: until ``PREPARE_TIMEOUT_SECONDS`` pass, try to list the artifact container with
the pod's workload identity; Entra ID answers AADSTS70021/700211 while the federated credential has
not propagated and Storage answers 403 while the role assignment has not, so the MLflow container
starts only once artifacts can be written (the Deployment's rollout waits for that, bounded).
"""

from __future__ import annotations

import os
import sys
import time

ROLE_RE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _identifier(name: str) -> str:
    if not name or not set(name) <= ROLE_RE_CHARS or name[0].isdigit():
        raise ValueError(f"{name!r} is not a plain lower-case PostgreSQL identifier")
    return name


def role_statements(role: str, databases: list[str]) -> list[str]:
    """SQL (with one ``%s`` placeholder: the role's password) that makes ``role`` own ``databases``."""
    r = _identifier(role)
    statements = [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}') THEN "
        f"CREATE ROLE {r} LOGIN; END IF; END $$",
        f"ALTER ROLE {r} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s",
        # PostgreSQL 16: the creator holds ADMIN OPTION on the role but must be a member to give it ownership.
        f"GRANT {r} TO CURRENT_USER",
    ]
    statements += [f"ALTER DATABASE {_identifier(db)} OWNER TO {r}" for db in databases]
    return statements


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"mlflow-prepare: environment variable {name} is not set")
    return value


def db_role() -> None:
    import psycopg2

    databases = _env("PREPARE_DATABASES").split(",")
    deadline = time.monotonic() + float(os.environ.get("PREPARE_TIMEOUT_SECONDS", "600"))
    while True:
        try:
            conn = psycopg2.connect(
                host=_env("PGHOST"),
                port=5432,
                dbname="postgres",
                user=_env("PGADMIN_USER"),
                password=_env("PGADMIN_PASSWORD"),
                sslmode="require",
                connect_timeout=10,
            )
            break
        except psycopg2.OperationalError as exc:  # DNS of the private zone, server still starting
            if time.monotonic() >= deadline:
                raise SystemExit(f"mlflow-prepare: cannot reach PostgreSQL: {exc}") from exc
            print(f"mlflow-prepare: waiting for PostgreSQL ({str(exc).strip()[:200]})", flush=True)
            time.sleep(10)
    conn.autocommit = True
    with conn, conn.cursor() as cursor:
        for statement in role_statements(_env("PREPARE_ROLE"), databases):
            cursor.execute(statement, (_env("PREPARE_ROLE_PASSWORD"),) if "%s" in statement else None)
    print(f"mlflow-prepare: role {os.environ['PREPARE_ROLE']} owns {', '.join(databases)}", flush=True)


def wait_blob() -> None:
    from azure.core.exceptions import AzureError
    from azure.identity import WorkloadIdentityCredential
    from azure.storage.blob import ContainerClient

    url = _env("PREPARE_CONTAINER_URL")
    deadline = time.monotonic() + float(os.environ.get("PREPARE_TIMEOUT_SECONDS", "900"))
    while True:
        try:
            # Reads AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_FEDERATED_TOKEN_FILE set by the webhook.
            client = ContainerClient.from_container_url(url, credential=WorkloadIdentityCredential())
            next(iter(client.list_blobs(results_per_page=1).by_page()), None)
            print(f"mlflow-prepare: {url} is readable with the workload identity", flush=True)
            return
        except (AzureError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(f"mlflow-prepare: no access to {url} in time: {exc}") from exc
            print(f"mlflow-prepare: waiting for identity/role propagation ({str(exc)[:300]})", flush=True)
            time.sleep(15)


if __name__ == "__main__":
    steps = {"db-role": db_role, "wait-blob": wait_blob}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        raise SystemExit(f"usage: mlflow_prepare.py {'|'.join(steps)}")
    steps[sys.argv[1]]()
