"""ImportedImage: copy one exact digest from a source stack's registry into this stack's registry.

A Pulumi dynamic resource over ARM's ``importImage`` action (POST
``{arm}/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ContainerRegistry/registries/
<name>/importImage?api-version=2023-07-01``, body ``{source: {resourceId, sourceImage:
"<repo>@sha256:<digest>"}, untaggedTargetRepositories: [<repo>], mode: "NoForce"}``). ACR import
copies the manifest byte for byte, so the digest is the same in the target registry. The action
answers 200 (done) or 202 with a ``Location`` to poll until it answers 200; 429 and 5xx answers
(to the POST or a poll) are retried after their ``Retry-After`` (seconds or an HTTP date); the whole
wait is bounded. Before and after, the manifest is looked up by digest in the target registry's
data plane (HEAD ``/v2/<repo>/manifests/sha256:<digest>`` with an ACR access token): a digest
already there (an earlier promotion, a rollback to it) is not imported again, and after an import
the served ``Docker-Content-Digest`` must equal the source digest.

The ARM token is never an input (it would land in the state, which preview identities can
decrypt): create and update obtain it themselves with ``az account get-access-token --resource
https://management.azure.com/`` as whoever runs ``pulumi up`` (CI: the azure/login step; people:
``az login``, which kubelogin's azurecli mode needs anyway). ``AZ_CLI`` names another ``az`` binary.
``diff`` compares only the source ref, the source registry and the target registry, so a no-op
``up`` imports nothing. Preview never calls create. The identity running ``pulumi up`` needs read
on the source registry (Reader or AcrPull on it: ARM checks
``Microsoft.ContainerRegistry/registries/pull/read``) and, on the target, Container Registry Data
Importer and Data Reader (``importImage/action`` and ``pull/read``), which the stack grants.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from infra.acr_token import post_form, wait_for_repository_token

ARM_ENDPOINT = "https://management.azure.com"
IMPORT_API_VERSION = "2023-07-01"
IMPORT_WAIT_SECONDS = 900.0
POLL_SECONDS = 10.0
MIN_WAIT_SECONDS = 1.0  # a Retry-After of 0 must not turn the poll into a busy loop
MAX_WAIT_SECONDS = 300.0  # nor may a far-off Retry-After date stall one attempt past reason
HTTP_TIMEOUT_SECONDS = 60.0
AZ_ENV = "AZ_CLI"  # another az binary (path or name), else "az" on PATH
AZ_TIMEOUT_SECONDS = 120.0
# Inputs whose change means "import something else".
IDENTITY_KEYS = ("source_ref", "source_registry_id", "target_registry_id")
# Inputs of earlier versions that must leave the state: one update (a no-op import) drops them.
RETIRED_KEYS = ("arm_token",)
OUTPUT_KEYS = ("image_ref", "digest", "repository")
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


class ImageImportError(RuntimeError):
    """The import did not complete or did not yield the source digest; the message says why."""


def split_ref(ref: str) -> tuple[str, str, str]:
    """(registry host, repository, sha256:<hex>) of ``host/repo@sha256:<hex>``."""
    name, _, digest = ref.partition("@")
    host, _, repository = name.partition("/")
    if not digest.startswith("sha256:") or not repository:
        raise ImageImportError(f"{ref!r} is not <registry>/<repository>@sha256:<digest>")
    return host, repository, digest


def import_request(source_ref: str, source_registry_id: str) -> dict[str, Any]:
    """The importImage body for one digest: no tag, manifest only, never overwrite."""
    _, repository, digest = split_ref(source_ref)
    return {
        "source": {"resourceId": source_registry_id, "sourceImage": f"{repository}@{digest}"},
        "untaggedTargetRepositories": [repository],
        "mode": "NoForce",
    }


def arm_access_token(az: str | None = None) -> str:
    """An ARM access token of whoever is logged in to the Azure CLI (``az account get-access-token``)."""
    binary = az or os.environ.get(AZ_ENV) or "az"
    command = [binary, "account", "get-access-token", "--resource", f"{ARM_ENDPOINT}/", "--output", "json"]
    login_hint = (
        "The import runs as whoever is logged in to the Azure CLI: `az login` (CI: the azure/login step) "
        "as a deployer from deployerPrincipals, then run `pulumi up` again."
    )
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=AZ_TIMEOUT_SECONDS, check=False
        )
    except FileNotFoundError as err:
        raise ImageImportError(
            f"the Azure CLI ({binary!r}) is not installed or not on PATH: importing the image needs it for "
            f"an ARM token. Install it (or set {AZ_ENV} to the binary). {login_hint}"
        ) from err
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ImageImportError(f"`{' '.join(command)}` did not run: {err}. {login_hint}") from err
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        detail = lines[-1] if lines else f"exit {result.returncode}"
        raise ImageImportError(f"`az account get-access-token` failed ({detail}). {login_hint}")
    try:
        answer = json.loads(result.stdout)
    except json.JSONDecodeError as err:
        problem = f"`az account get-access-token` printed no JSON ({err})"
        raise ImageImportError(f"{problem}. {login_hint}") from err
    token = answer.get("accessToken") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise ImageImportError(f"`az account get-access-token` returned no accessToken. {login_hint}")
    return token


def retryable(status: int) -> bool:
    """Throttling and server errors are worth another try; every other error is an answer."""
    return status == 429 or 500 <= status <= 599


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


def retry_after(headers: Mapping[str, str], default: float, *, now: Callable[[], float] = time.time) -> float:
    """Seconds to wait per ``Retry-After`` (delay-seconds or HTTP-date), else ``default``; bounded."""
    value = (_header(headers, "Retry-After") or "").strip()
    seconds = default
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError, OverflowError):
                when = None
            if when is not None and when.tzinfo is not None:
                seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        seconds = default
    return min(max(seconds, MIN_WAIT_SECONDS), MAX_WAIT_SECONDS)


def _request(
    method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], str]:
    """(status, headers, error detail) of one ARM call; HTTP errors are answers, not exceptions."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            response.read()
            return response.status, dict(response.headers.items()), ""
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        return err.code, dict(err.headers.items()) if err.headers else {}, detail


def run_import(
    props: dict[str, Any],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    arm_token: Callable[[], str] = arm_access_token,
) -> dict[str, Any]:
    """Import ``source_ref`` into the target registry (unless it has that digest), wait, verify."""
    source_ref = str(props["source_ref"])
    target_id = str(props["target_registry_id"])
    arm = str(props.get("arm_endpoint") or ARM_ENDPOINT).rstrip("/")
    scheme = str(props.get("registry_scheme") or "https")
    login_server = str(props["target_login_server"])
    tenant = str(props["tenant_id"])
    _, repository, digest = split_ref(source_ref)
    timeout = float(props.get("timeout_seconds") or IMPORT_WAIT_SECONDS)
    token = arm_token()
    pull = pull_token(
        login_server, repository, token, tenant, scheme=scheme, timeout=timeout, sleep=sleep, clock=clock
    )
    if served_digest(login_server, repository, digest, pull, scheme=scheme) != digest:
        wait_for_import(
            f"{arm}{target_id}/importImage?api-version={IMPORT_API_VERSION}",
            import_request(source_ref, str(props["source_registry_id"])),
            token,
            what=f"importing {source_ref} into {target_id}",
            timeout=timeout,
            sleep=sleep,
            clock=clock,
        )
        served = served_digest(login_server, repository, digest, pull, scheme=scheme)
        if served != digest:
            raise ImageImportError(
                f"after the import, {login_server}/{repository}@{digest} is served as {served!r}"
            )
    return {"image_ref": f"{login_server}/{repository}@{digest}", "digest": digest, "repository": repository}


def wait_for_import(
    url: str,
    body: dict[str, Any],
    token: str,
    *,
    what: str,
    timeout: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    """POST the import, poll its ``Location`` while 202, retry 429/5xx; all within ``timeout``."""
    deadline = clock() + timeout
    method, target = "POST", url
    payload: dict[str, Any] | None = body
    status, headers, detail = _request(method, target, token, payload)
    while status not in (200, 204):
        if status == 202:
            location = _header(headers, "Location")
            if not location:
                raise ImageImportError(f"{what}: ARM answered 202 without a Location to poll")
            method, target, payload = "GET", location, None
            reason = "the import is running"
        elif retryable(status):
            reason = f"{method} answered HTTP {status}, retrying"  # same request again
        else:
            raise ImageImportError(f"{what}: {method} {target.split('?')[0]}: HTTP {status}: {detail}")
        if clock() >= deadline:
            raise ImageImportError(
                f"{what} did not finish in {timeout:.0f}s (last answer HTTP {status}); run `pulumi up` again"
            )
        print(f"waiting: {what}: {reason}", file=sys.stderr)
        sleep(retry_after(headers, POLL_SECONDS))
        status, headers, detail = _request(method, target, token, payload)


def pull_token(
    login_server: str,
    repository: str,
    arm_token: str,
    tenant_id: str,
    *,
    scheme: str,
    timeout: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> str:
    """A registry access token that may read ``repository`` (waits for the deployer's pull grant)."""
    refresh = wait_for_repository_token(
        login_server,
        arm_token,
        tenant_id,
        [repository],
        action="pull",
        scheme=scheme,
        timeout=timeout,
        sleep=sleep,
        clock=clock,
    )
    answer = post_form(
        f"{scheme}://{login_server}/oauth2/token",
        {
            "grant_type": "refresh_token",
            "service": login_server,
            "scope": f"repository:{repository}:pull",
            "refresh_token": refresh,
        },
    )
    access = answer.get("access_token")
    if not isinstance(access, str):
        raise ImageImportError(f"{login_server}/oauth2/token returned no access_token")
    return access


def served_digest(login_server: str, repository: str, digest: str, access: str, *, scheme: str) -> str | None:
    """The ``Docker-Content-Digest`` the registry serves for ``repository@digest``; None if absent."""
    request = urllib.request.Request(
        f"{scheme}://{login_server}/v2/{repository}/manifests/{digest}",
        method="HEAD",
        headers={"Authorization": f"Bearer {access}", "Accept": ", ".join(MANIFEST_TYPES)},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return response.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise ImageImportError(
            f"HEAD {login_server}/v2/{repository}/manifests/{digest}: HTTP {err.code}"
        ) from err


class ImportedImageProvider(ResourceProvider):
    """create/update import and verify; diff only on what is imported where; delete keeps the image."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in IDENTITY_KEYS if olds.get(key) != news.get(key)]
        changed += [key for key in RETIRED_KEYS if key in olds]
        return DiffResult(
            changes=bool(changed),
            replaces=[],
            stables=[] if changed else list(OUTPUT_KEYS),
            delete_before_replace=False,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = run_import(props)
        return CreateResult(id_=outs["image_ref"], outs={**props, **outs})

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, **run_import(news)})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # A rollback may need this digest again; the registry's retention decides when it goes.
        return None


class ImportedImage(pulumi.dynamic.Resource):
    """``source_ref``'s digest, imported into the target registry; ``image_ref`` points there."""

    image_ref: pulumi.Output[str]
    digest: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        source_ref: pulumi.Input[str],
        source_registry_id: pulumi.Input[str],
        target_registry_id: pulumi.Input[str],
        target_login_server: pulumi.Input[str],
        tenant_id: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            ImportedImageProvider(),
            name,
            {
                "source_ref": source_ref,
                "source_registry_id": source_registry_id,
                "target_registry_id": target_registry_id,
                "target_login_server": target_login_server,
                "tenant_id": tenant_id,
                "image_ref": None,
                "digest": None,
                "repository": None,
            },
            opts,
        )
