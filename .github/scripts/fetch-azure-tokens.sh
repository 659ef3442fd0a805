#!/usr/bin/env bash
# Right after azure/login: have az fetch, while the GitHub OIDC token it logged in with is still valid,
# the access tokens that the steps reaching Azure through az need, so that az serves them from its
# cache for their whole lifetime.
#
# Why: azure/login runs `az login --federated-token <GitHub ID token>`. That ID token expires 5
# minutes after it is issued (Entra's clock-skew tolerance stretches it to about 10) and az cannot
# ask GitHub for another one, so after that az can get no token for a resource it has none for, and
# cannot renew one that expired (AADSTS700024).
# A Microsoft Entra access token lives 60 to 90 minutes by default. The callers through az are the
# azblob state backend (storage), kubelogin in `azurecli` mode (the AKS API server's Entra app:
# kubelogin caches nothing itself and asks az every time), the azurekeyvault:// secrets provider
# (Key Vault) and any az command (az's own ARM audience). Each resource is written exactly as its
# caller asks az for it: MSAL's cache matches scopes exactly, so `https://storage.azure.com/` (with a
# slash) would be a different entry from the Azure SDK's `https://storage.azure.com`.
# pulumi-azure-native does not go through az: with ARM_USE_OIDC it asks GitHub for a new ID token
# (ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN) whenever it needs an Entra token, bounded only by the job's
# request token (hours, longer than any job here).
# The workflows therefore keep each step that relies on these tokens well under 60 minutes after
# this script (`timeout-minutes` on the step), and log in again before the next such step.
# Reads nothing; prints nothing (the tokens stay in az's cache).
set -euo pipefail

# The AKS-managed Microsoft Entra server application: the audience of every AKS API server token.
aks_server_app_id=6dae42f8-4368-4678-94ff-3960e28e3630

# The last one is ARM as infra/image_import.py asks az for it (the digest import of staging/prod).
for resource in https://storage.azure.com https://vault.azure.net "$aks_server_app_id" \
  https://management.core.windows.net/ https://management.azure.com/; do
  az account get-access-token --resource "$resource" --output none
done
