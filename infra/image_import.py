"""ImportedImage: copy one exact digest from a source stack's registry into this stack's registry.

A Pulumi dynamic resource over ARM's ``importImage`` action (POST
``{arm}/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ContainerRegistry/registries/
<name>/importImage?api-version=2023-07-01``, body ``{source: {resourceId, sourceImage:
"<repo>@sha256:<digest>"}, untaggedTargetRepositories: [<repo>], mode: "NoForce"}``). ACR import
copies the manifest byte for byte, so the digest is the same in the target registry. The action
answers 200 (done) or 202 with a ``Location`` to poll until it answers 200; the wait is bounded.
Before and after, the manifest is looked up by digest in the target registry's data plane (HEAD
``/v2/<repo>/manifests/sha256:<digest>`` with an ACR access token): a digest already there (an
earlier promotion, a rollback to it) is not imported again, and after an import the served
``Docker-Content-Digest`` must equal the source digest.

``diff`` compares only the source ref, the source registry and the target registry: the ARM token
(a secret input, fresh every run) never causes a change, so a no-op ``up`` imports nothing.
Preview never calls create. The identity running ``pulumi up`` needs read on the source registry
(Reader or AcrPull on it: ARM checks ``Microsoft.ContainerRegistry/registries/pull/read``) and
AcrPush/Contributor on the target, which the stack grants.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from infra.acr_token import post_form, wait_for_push_token

ARM_ENDPOINT = "https://management.azure.com"
IMPORT_API_VERSION = "2023-07-01"
IMPORT_WAIT_SECONDS = 900.0
POLL_SECONDS = 10.0
HTTP_TIMEOUT_SECONDS = 60.0
# Inputs whose change means "import something else"; everything else (the token) is ignored.
IDENTITY_KEYS = ("source_ref", "source_registry_id", "target_registry_id")
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


def _request(
    method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            response.read()
            return response.status, dict(response.headers.items())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        raise ImageImportError(f"{method} {url.split('?')[0]}: HTTP {err.code}: {detail}") from err


def run_import(
    props: dict[str, Any],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Import ``source_ref`` into the target registry (unless it has that digest), wait, verify."""
    source_ref = str(props["source_ref"])
    target_id = str(props["target_registry_id"])
    arm = str(props.get("arm_endpoint") or ARM_ENDPOINT).rstrip("/")
    token = str(props["arm_token"])
    scheme = str(props.get("registry_scheme") or "https")
    login_server = str(props["target_login_server"])
    tenant = str(props["tenant_id"])
    _, repository, digest = split_ref(source_ref)
    timeout = float(props.get("timeout_seconds") or IMPORT_WAIT_SECONDS)
    pull = pull_token(
        login_server, repository, token, tenant, scheme=scheme, timeout=timeout, sleep=sleep, clock=clock
    )
    if served_digest(login_server, repository, digest, pull, scheme=scheme) != digest:
        url = f"{arm}{target_id}/importImage?api-version={IMPORT_API_VERSION}"
        body = import_request(source_ref, str(props["source_registry_id"]))
        status, headers = _request("POST", url, token, body)
        deadline = clock() + timeout
        while status == 202:
            location = headers.get("Location") or headers.get("location")
            if not location:
                raise ImageImportError(
                    f"importImage into {target_id} answered 202 without a Location to poll"
                )
            if clock() >= deadline:
                raise ImageImportError(
                    f"importing {source_ref} into {target_id} did not finish in {timeout:.0f}s; run up again"
                )
            print(f"waiting for the import of {source_ref}", file=sys.stderr)
            sleep(float(headers.get("Retry-After") or POLL_SECONDS))
            status, headers = _request("GET", location, token)
        if status not in (200, 204):
            raise ImageImportError(f"importImage into {target_id} answered HTTP {status}")
        served = served_digest(login_server, repository, digest, pull, scheme=scheme)
        if served != digest:
            raise ImageImportError(
                f"after the import, {login_server}/{repository}@{digest} is served as {served!r}"
            )
    return {"image_ref": f"{login_server}/{repository}@{digest}", "digest": digest, "repository": repository}


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
    """A registry access token that may read ``repository`` (waits for the deployer's AcrPush)."""
    refresh = wait_for_push_token(
        login_server,
        arm_token,
        tenant_id,
        [repository],
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
        arm_token: pulumi.Input[str],
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
                "arm_token": pulumi.Output.secret(arm_token),
                "tenant_id": tenant_id,
                "image_ref": None,
                "digest": None,
                "repository": None,
            },
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["arm_token"])
            ),
        )
