#!/usr/bin/env bash
# After a promoted stack's deploy and smoke test: record in the registry of record (dev's MLflow)
# which model version that environment now serves (`tools.record_served` moves the environment's
# alias; prod's is `champion` too). Runs in the `dev` GitHub environment with dev's identity only:
# - dev's outputs are read here, secrets included (the tool port-forwards to dev's MLflow with dev's
#   kubeconfig and signs in with dev's MLflow credentials);
# - the served stack's outputs are NOT read from its state here (that would need its secrets
#   provider, a cross-environment credential): its own job exported them, secrets left out, and
#   they arrive in SERVED_OUTPUTS.
# Both go to 0600 files in a private folder under RUNNER_TEMP, deleted on exit whatever happens.
# Reads: STACK_PREFIX (org/project), REGISTRY_STACK (the stack holding the registry of record),
# SERVED_STACK, SERVED_OUTPUTS (JSON object), PULUMI_BACKEND_URL, RUNNER_TEMP,
# PYTHON (default .venv/bin/python). Needs the Pulumi CLI, kubectl and kubelogin on PATH.
set -euo pipefail

: "${STACK_PREFIX:?STACK_PREFIX (org/project) is not set}"
: "${REGISTRY_STACK:?REGISTRY_STACK (the stack whose MLflow is the registry of record) is not set}"
: "${SERVED_STACK:?SERVED_STACK is not set}"
: "${RUNNER_TEMP:?RUNNER_TEMP is not set}"
if [ -z "${SERVED_OUTPUTS:-}" ]; then
  echo "::error title=record served::the $SERVED_STACK job exported no stack outputs (job output 'served-outputs'); GitHub drops a job output that contains a masked value: check that job's log for 'Skip output'"
  exit 1
fi

umask 077
workdir="$(mktemp -d "$RUNNER_TEMP/record-served.XXXXXX")"
trap 'rm -rf "$workdir"' EXIT
registry_outputs="$workdir/$REGISTRY_STACK.json"
served_outputs="$workdir/$SERVED_STACK.json"

if [ -n "${PULUMI_BACKEND_URL:-}" ]; then
  pulumi login --non-interactive "$PULUMI_BACKEND_URL" >/dev/null
else
  pulumi login --non-interactive >/dev/null
fi
pulumi stack output --non-interactive --json --show-secrets --stack "$STACK_PREFIX/$REGISTRY_STACK" \
  > "$registry_outputs"
printf '%s\n' "$SERVED_OUTPUTS" > "$served_outputs"

"${PYTHON:-.venv/bin/python}" -m tools.record_served \
  --registry-outputs "$registry_outputs" --served-outputs "$served_outputs" \
  --environment "$SERVED_STACK"
