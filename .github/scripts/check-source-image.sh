#!/usr/bin/env bash
# Before a promotion `pulumi up`: the source stack must still run the image this workflow run built
# and a reviewer approved. If a newer run moved the source stack on, stop here without deploying;
# that newer run promotes its own image after its own approval.
# Reads: STACK_PREFIX (org/project), SOURCE_STACK, EXPECTED_IMAGE, PULUMI_BACKEND_URL.
# Needs the Pulumi CLI on PATH and the credentials of the state backend.
set -euo pipefail

: "${STACK_PREFIX:?STACK_PREFIX (org/project) is not set}"
: "${SOURCE_STACK:?SOURCE_STACK is not set}"
if [ -z "${EXPECTED_IMAGE:-}" ]; then
  echo "::error title=promotion::the dev job exported no imageRef: the program must export 'imageRef' (docs/interfaces.md)"
  exit 1
fi

if [ -n "${PULUMI_BACKEND_URL:-}" ]; then
  pulumi login --non-interactive "$PULUMI_BACKEND_URL" >/dev/null
else
  pulumi login --non-interactive >/dev/null
fi

current="$(pulumi stack output --non-interactive --stack "$STACK_PREFIX/$SOURCE_STACK" imageRef)"
if [ "$current" != "$EXPECTED_IMAGE" ]; then
  echo "::error title=promotion::stack $SOURCE_STACK now runs $current, not $EXPECTED_IMAGE that this run built and you approved; a newer run promotes it. Nothing was deployed."
  exit 1
fi
echo "$SOURCE_STACK runs $current: promoting it"
