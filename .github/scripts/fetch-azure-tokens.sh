#!/usr/bin/env bash
# Right after azure/login: have az fetch, while the GitHub OIDC token it logged in with is still valid,
# the access tokens that the steps reaching Azure through az need, so that az serves them from its
# cache for their whole lifetime.
#
# Why: azure/login runs `az login --federated-token <GitHub ID token>`. That ID token expires 10
# minutes after it is issued and az cannot ask GitHub for another one, so after 10 minutes az can get
# no token for a resource it has none for, and cannot renew one that expired (AADSTS700024).
# A Microsoft Entra access token lives 60 to 90 minutes by default. The callers through az are the
# azblob state backend (storage), kubelogin in `azurecli` mode (the AKS API server's Entra app:
# kubelogin caches nothing itself and asks az every time) and any az command the program runs (ARM).
# pulumi-azure-native does not go through az: with ARM_USE_OIDC it asks GitHub for a new ID token
# (ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN) whenever it needs an Entra token, so it never runs out.
# The workflows therefore keep each step that relies on these tokens well under 60 minutes after
# this script (`timeout-minutes` on the step), and log in again before the next such step.
# Reads nothing; prints nothing (the tokens stay in az's cache).
set -euo pipefail

# The AKS-managed Microsoft Entra server application: the audience of every AKS API server token.
aks_server_app_id=6dae42f8-4368-4678-94ff-3960e28e3630

for resource in https://storage.azure.com/ "$aks_server_app_id" https://management.azure.com/; do
  az account get-access-token --resource "$resource" --output none
done
