#!/usr/bin/env bash
# Fails a workflow job early, with one annotation per problem, when the repository or environment
# settings it needs are missing (README.md, "Operations" says where each one is set).
# Reads: STACK, ENVIRONMENT (the GitHub environment the job runs in), ARM_CLIENT_ID, ARM_TENANT_ID,
# ARM_SUBSCRIPTION_ID, PULUMI_BACKEND_URL, PULUMI_ACCESS_TOKEN. Never prints a value, only names.
set -euo pipefail

problems=0
problem() {
  echo "::error title=settings for stack '${STACK:-?}'::$1"
  problems=$((problems + 1))
}

[ -n "${STACK:-}" ] || problem "STACK is empty: the workflow must name the stack it runs"
env="environment '${ENVIRONMENT:-?}'"
[ -n "${ARM_CLIENT_ID:-}" ] || problem "variable AZURE_CLIENT_ID of $env is not set: set it to the client id of the Azure identity whose federated credential trusts $env (Settings > Environments)"
[ -n "${ARM_TENANT_ID:-}" ] || problem "variable AZURE_TENANT_ID is not set: set it, for the repository or $env, to your Microsoft Entra tenant id"
[ -n "${ARM_SUBSCRIPTION_ID:-}" ] || problem "variable AZURE_SUBSCRIPTION_ID of $env is not set: set it to the id of the subscription stack '${STACK:-?}' deploys to"

backend="${PULUMI_BACKEND_URL:-}"
case "$backend" in
  "")
    [ -n "${PULUMI_ACCESS_TOKEN:-}" ] || problem "neither variable PULUMI_BACKEND_URL nor secret PULUMI_ACCESS_TOKEN is set: set PULUMI_BACKEND_URL to azblob://<container>?storage_account=<account>, or add a Pulumi Cloud access token as secret PULUMI_ACCESS_TOKEN"
    ;;
  azblob://*\?storage_account=* | https://*) ;;
  azblob://*)
    problem "variable PULUMI_BACKEND_URL has no storage account: write it as azblob://<container>?storage_account=<account>"
    ;;
  *)
    problem "variable PULUMI_BACKEND_URL is neither azblob://... nor https://...: use azblob://<container>?storage_account=<account>, a self-hosted https:// Pulumi Cloud URL, or leave it empty for Pulumi Cloud"
    ;;
esac

if [ "$problems" -gt 0 ]; then
  echo "$problems setting(s) missing or wrong; see README.md, section Operations" >&2
  exit 1
fi
echo "settings for stack '$STACK' are complete"
