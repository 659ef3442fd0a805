"""Short-lived push credentials for an Azure Container Registry, obtained by the program itself.

The registry is created in the same ``pulumi up`` that pushes to it, so nobody can ``az acr login``
beforehand. After the registry and the deployers' AcrPush grant exist, ``push_credentials``:

1. gets an Entra access token for the identity running Pulumi (``authorization.getClientToken``,
   default endpoint: Azure Resource Manager, the audience ACR's exchange accepts);
2. exchanges it at ``https://<loginServer>/oauth2/exchange`` (form ``grant_type=access_token``,
   ``service``, ``tenant``, ``access_token``) for an ACR refresh token (valid about 3 hours);
3. waits, bounded, until ACR grants ``push`` with that token: ``/oauth2/token`` with
   ``scope=repository:<repo>:pull,push`` returns an access token whose ``access`` claim lists the
   actions granted (Docker registry token spec). Until the AcrPush assignment has propagated the
   list lacks ``push``, so the image push would fail with 401/403.

The refresh token is the password for the user ``00000000-0000-0000-0000-000000000000`` and a
Pulumi secret. A new one every run does not rebuild or push anything: pulumi-docker's Image Diff
(provider/provider.go ``diffUpdates``) counts a change of ``registry`` only when ``server`` changes,
never ``username`` or ``password``. (``ignore_changes`` on the password would be wrong: an Update
after a real change would then push with the stale, expired token.) Preview never exchanges: the
password is unknown there and no Image is built on preview.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_azure_native import authorization

ACR_TOKEN_USERNAME = "00000000-0000-0000-0000-000000000000"
PUSH_WAIT_SECONDS = 600.0
PUSH_POLL_SECONDS = 10.0
HTTP_TIMEOUT_SECONDS = 30.0
# The scope asked for per action (a push token may also pull), and the role that grants it.
ACTION_SCOPES = {"push": "pull,push", "pull": "pull"}
ACTION_ROLES = {
    "push": "AcrPush",
    "pull": "a pull role (AcrPull, or Container Registry Data Importer and Data Reader)",
}


class AcrTokenError(RuntimeError):
    """The registry would not issue push credentials; the message says why and what to check."""


def post_form(url: str, form: dict[str, str]) -> dict[str, Any]:
    body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
        parsed = json.loads(response.read().decode())
    if not isinstance(parsed, dict):
        raise AcrTokenError(f"{url} answered with a non-object: {parsed!r}")
    return parsed


def exchange_refresh_token(
    login_server: str, aad_token: str, tenant_id: str, *, scheme: str = "https"
) -> str:
    """An ACR refresh token for ``aad_token`` (POST <loginServer>/oauth2/exchange)."""
    answer = post_form(
        f"{scheme}://{login_server}/oauth2/exchange",
        {
            "grant_type": "access_token",
            "service": login_server,
            "tenant": tenant_id,
            "access_token": aad_token,
        },
    )
    token = answer.get("refresh_token")
    if not isinstance(token, str) or not token:
        raise AcrTokenError(f"{login_server}/oauth2/exchange returned no refresh_token")
    return token


def _jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT (not verified: only read to learn which actions were granted)."""
    parts = token.split(".")
    if len(parts) < 2:
        raise AcrTokenError("the registry's access token is not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    claims = json.loads(base64.urlsafe_b64decode(payload.encode()).decode())
    if not isinstance(claims, dict):
        raise AcrTokenError("the registry's access token has no claims object")
    return claims


def granted_actions(
    login_server: str, refresh_token: str, repository: str, *, scheme: str = "https", action: str = "push"
) -> set[str]:
    """The actions ACR grants this refresh token on ``repository`` (POST <loginServer>/oauth2/token).

    ``action`` "push" asks for ``pull,push``; "pull" asks for ``pull`` only.
    """
    answer = post_form(
        f"{scheme}://{login_server}/oauth2/token",
        {
            "grant_type": "refresh_token",
            "service": login_server,
            "scope": f"repository:{repository}:{ACTION_SCOPES[action]}",
            "refresh_token": refresh_token,
        },
    )
    access = answer.get("access_token")
    if not isinstance(access, str):
        raise AcrTokenError(f"{login_server}/oauth2/token returned no access_token")
    actions: set[str] = set()
    for entry in _jwt_claims(access).get("access") or []:
        if isinstance(entry, dict) and entry.get("type") == "repository" and entry.get("name") == repository:
            actions.update(str(a) for a in entry.get("actions") or [])
    return actions


def wait_for_repository_token(
    login_server: str,
    aad_token: str,
    tenant_id: str,
    repositories: Sequence[str],
    *,
    action: str,
    scheme: str = "https",
    timeout: float = PUSH_WAIT_SECONDS,
    interval: float = PUSH_POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """A refresh token granted ``action`` on every repository, once the role has propagated (bounded)."""
    if action not in ACTION_SCOPES:
        raise ValueError(f"action {action!r} is not one of {', '.join(ACTION_SCOPES)}")
    role = ACTION_ROLES[action]
    deadline = clock() + timeout
    attempt = 0
    while True:
        attempt += 1
        problem: str
        try:
            token = exchange_refresh_token(login_server, aad_token, tenant_id, scheme=scheme)
            missing = [
                r
                for r in repositories
                if action not in granted_actions(login_server, token, r, scheme=scheme, action=action)
            ]
            if not missing:
                return token
            problem = f"no {action} permission yet on {', '.join(missing)}"
        except urllib.error.HTTPError as err:
            if err.code not in (401, 403, 404, 429) and err.code < 500:
                raise AcrTokenError(
                    f"{login_server}: HTTP {err.code} from the token endpoint ({err.reason})"
                ) from err
            problem = f"HTTP {err.code} from the token endpoint"
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            problem = f"registry not reachable yet ({err})"
        if clock() >= deadline:
            raise AcrTokenError(
                f"{login_server}: {problem} after {attempt} attempts in {timeout:.0f}s. Check that the "
                f"identity running `pulumi up` is listed in deployerPrincipals (it gets {role}) and that "
                "the machine running it can reach the registry."
            )
        print(f"waiting for {role} on {login_server}: {problem} (attempt {attempt})", file=sys.stderr)
        sleep(interval)


def wait_for_push_token(
    login_server: str,
    aad_token: str,
    tenant_id: str,
    repositories: Sequence[str],
    *,
    scheme: str = "https",
    timeout: float = PUSH_WAIT_SECONDS,
    interval: float = PUSH_POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """A refresh token that may push to every repository, once AcrPush has propagated (bounded)."""
    return wait_for_repository_token(
        login_server,
        aad_token,
        tenant_id,
        repositories,
        action="push",
        scheme=scheme,
        timeout=timeout,
        interval=interval,
        sleep=sleep,
        clock=clock,
    )


@dataclass(frozen=True)
class PushCredentials:
    """What ``pulumi_docker.Image``'s ``registry`` input takes, besides the server."""

    username: str
    password: pulumi.Output[str]


def _unknown() -> pulumi.Output[str]:
    """An Output whose value is unknown (what a preview shows for a value computed during up)."""

    async def value(v: Any) -> Any:
        return v

    return pulumi.Output(set(), value(None), value(False), value(True))


def push_credentials(
    login_server: pulumi.Input[str],
    repositories: Sequence[str],
    *,
    grants: Sequence[pulumi.Resource],
    parent: pulumi.Resource,
) -> PushCredentials:
    """A secret ACR refresh token for whoever runs ``pulumi up``, after ``grants``; unknown on preview."""
    if pulumi.runtime.is_dry_run():
        return PushCredentials(ACR_TOKEN_USERNAME, _unknown())
    invoke = pulumi.InvokeOutputOptions(parent=parent, depends_on=list(grants))
    aad = authorization.get_client_token_output(opts=invoke)
    client = authorization.get_client_config_output(opts=invoke)
    repos = tuple(repositories)

    def obtain(args: list[Any]) -> Any:
        server, token, tenant = args
        # looked up at call time: the mock harness swaps in a stand-in (no registry there)
        wait: Callable[..., str] = globals()["wait_for_push_token"]
        # in a worker thread: the program keeps registering resources while AcrPush propagates
        pending = asyncio.get_running_loop().run_in_executor(None, wait, server, token, tenant, repos)
        return pulumi.Output.from_input(pending)

    password: pulumi.Output[str] = pulumi.Output.all(login_server, aad.token, client.tenant_id).apply(obtain)
    return PushCredentials(ACR_TOKEN_USERNAME, pulumi.Output.secret(password))
