#!/usr/bin/env bash
# Before a promotion `pulumi up`: the source stack must still run the image this workflow run built
# and a reviewer approved. If a newer run moved the source stack on, stop here without deploying;
# that newer run promotes its own image after its own approval.
# Each environment runs the image from its own registry (promotion imports it by digest, and the
# import keeps the digest), so the source's imageRef names another registry than the one dev built
# into: the digest, not the whole reference, is what must match.
# Reads: STACK_PREFIX (org/project), SOURCE_STACK, EXPECTED_IMAGE, PULUMI_BACKEND_URL.
# Needs the Pulumi CLI on PATH and the credentials of the state backend.
set -euo pipefail

: "${STACK_PREFIX:?STACK_PREFIX (org/project) is not set}"
: "${SOURCE_STACK:?SOURCE_STACK is not set}"
if [ -z "${EXPECTED_IMAGE:-}" ]; then
  echo "::error title=promotion::the dev job exported no imageRef: the program must export 'imageRef' (docs/interfaces.md)"
  exit 1
fi

# The sha256 digest of an image reference <registry>/<repository>@sha256:<64 hex>, else nothing.
digest_of() {
  if [[ "$1" =~ @(sha256:[0-9a-f]{64})$ ]]; then
    echo "${BASH_REMATCH[1]}"
  fi
}

expected="$(digest_of "$EXPECTED_IMAGE")"
if [ -z "$expected" ]; then
  echo "::error title=promotion::the dev job's imageRef '$EXPECTED_IMAGE' is not <registry>/<repository>@sha256:<64 hex>: the program must export the digest it deployed"
  exit 1
fi

if [ -n "${PULUMI_BACKEND_URL:-}" ]; then
  pulumi login --non-interactive "$PULUMI_BACKEND_URL" >/dev/null
else
  pulumi login --non-interactive >/dev/null
fi

current="$(pulumi stack output --non-interactive --stack "$STACK_PREFIX/$SOURCE_STACK" imageRef)"
if [ "$(digest_of "$current")" != "$expected" ]; then
  echo "::error title=promotion::stack $SOURCE_STACK now runs $current, not digest $expected that this run built and you approved; a newer run promotes it. Nothing was deployed."
  exit 1
fi
echo "$SOURCE_STACK runs $current ($expected): promoting that digest"
