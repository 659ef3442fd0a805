"""Entry point of the CrossGuard policy pack: `pulumi preview --policy-pack policy`.

Constructing PolicyPack starts the analyzer's gRPC server and blocks, so this file only does that;
the policies live in policies.py (run from this folder, hence the plain import).
"""

from policies import PACK_NAME, POLICIES, STACK_POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(
    name=PACK_NAME,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[*POLICIES, *STACK_POLICIES],
)
