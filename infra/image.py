"""The serving image: export the bento for the trained version, build it, push it, pin it by digest.

``model.bento.export_build_context`` is the one function that makes the build context (the
container tests call it too). The context folder is ``.build/images/<bento version>`` relative to
the project, and the same fingerprint gives a byte-identical folder, so pulumi_docker's context
digest (computed over the folder's files in its Check) is unchanged and nothing is rebuilt or
pushed. ``build_on_preview`` is off: preview never builds or pushes. The output ``ref`` is
``<registry>/<repository>@sha256:<digest>``, validated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pulumi
import pulumi_docker as docker

from infra.acr_token import PushCredentials
from infra.settings import DIGEST_REF_RE
from infra.training import tracking_env
from infra.tunnel import TunnelRefused, tracking_endpoint  # noqa: F401 (swapped by the mocks)

BUILD_ROOT = Path(".build") / "images"


class ImageRefError(ValueError):
    """An image reference is not pinned by digest."""


def require_digest_ref(ref: str | None, what: str) -> str:
    """``ref`` if it is ``repo@sha256:<64 hex>``; a clear error otherwise (Deployments never use tags)."""
    if not ref or not DIGEST_REF_RE.match(ref):
        raise ImageRefError(
            f"{what}: {ref!r} is not an image reference pinned by digest (registry/repo@sha256:<64 hex>)."
        )
    return ref


def pushed_image(
    name: str,
    *,
    image_name: pulumi.Input[str],
    build: docker.DockerBuildArgsDict,
    registry_server: pulumi.Input[str],
    credentials: PushCredentials | None,
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource] = (),
) -> pulumi.Output[str]:
    """Build ``build`` with pulumi_docker (never on preview), push it, return its digest-pinned ref.

    ``credentials`` (a username and a secret password) authenticate the push; their changes alone
    never rebuild (pulumi-docker diffs ``registry`` on ``server`` only, see infra/acr_token.py).
    """
    registry: Any = {"server": registry_server}
    if credentials is not None:
        registry["username"] = credentials.username
        registry["password"] = pulumi.Output.secret(cast(Any, credentials.password))
    image = docker.Image(
        f"{name}-image",
        image_name=image_name,
        build=build,
        registry=registry,
        build_on_preview=False,
        skip_push=False,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )
    return image.repo_digest.apply(lambda ref: require_digest_ref(ref, f"image {name}"))


@dataclass(frozen=True)
class ContextInfo:
    """What pulumi_docker needs from an exported bento: folder, Dockerfile, tag."""

    context: str
    dockerfile: str
    tag: str


def _relative(path: Path) -> str:
    """A path relative to the project when it is inside it, so state is the same on every machine."""
    try:
        return Path(os.path.relpath(path.resolve(), Path.cwd())).as_posix()
    except ValueError:
        return path.as_posix()


def export_context(model_uri: str, fingerprint: str, *, tracking_uri: str, base_image: str) -> ContextInfo:
    """Export the bento for one registered version (the edge: runs BentoML in a child process)."""
    from model.bento import bento_version, export_build_context

    out_dir = BUILD_ROOT / bento_version(fingerprint, base_image)
    ctx = export_build_context(
        model_uri, fingerprint, out_dir, base_image=base_image, tracking_uri=tracking_uri
    )
    return ContextInfo(context=_relative(ctx.path), dockerfile=_relative(ctx.dockerfile), tag=ctx.image_tag)


class ServingImage(pulumi.ComponentResource):
    """Build context from the trained model -> pulumi_docker.Image pushed -> digest-pinned ref."""

    ref: pulumi.Output[str]
    tag: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        model_uri: pulumi.Input[str],
        model_fingerprint: pulumi.Input[str],
        registry_server: pulumi.Input[str],
        repository: str,
        tracking_uri: pulumi.Input[str],
        tracking_service: pulumi.Input[str],
        kubeconfig: pulumi.Input[str],
        tracking_username: pulumi.Input[str],
        tracking_password: pulumi.Input[str],
        base_image: str,
        tracking_ready: pulumi.Input[bool] = True,
        platform: str,
        credentials: PushCredentials | None = None,
        push_grants: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("ml-delivery:infra:ServingImage", name, None, opts)

        def export(args: list[str]) -> ContextInfo:
            uri, fingerprint, tracking, service, kubeconfig, user, password, _ready = args
            # looked up at call time: the mock harness swaps in stand-ins (no cluster, no MLflow model)
            endpoint, exporter = globals()["tracking_endpoint"], globals()["export_context"]
            try:
                with (
                    endpoint(tracking_uri=tracking, service=service, kubeconfig=kubeconfig) as reached,
                    tracking_env(user, password),
                ):
                    return cast(
                        ContextInfo, exporter(uri, fingerprint, tracking_uri=reached, base_image=base_image)
                    )
            except TunnelRefused as exc:
                if not pulumi.runtime.is_dry_run():
                    raise
                # A PR preview's read-only identity may not port-forward: show the image as unknown.
                pulumi.log.warn(
                    f"preview: not exporting the bento for {uri} (the image shows as unknown): {exc}",
                    resource=self,
                )
                return cast(ContextInfo, pulumi.UNKNOWN)

        # The password and kubeconfig only authenticate the export; nothing in the context is secret.
        context = pulumi.Output.unsecret(
            pulumi.Output.all(
                model_uri,
                model_fingerprint,
                tracking_uri,
                tracking_service,
                kubeconfig,
                tracking_username,
                tracking_password,
                # An up that changes MLflow's Deployment restarts it: export once it rolled out. A
                # preview restarts nothing (and may not know the Deployment's id), so it need not wait.
                True if pulumi.runtime.is_dry_run() else tracking_ready,
            ).apply(export)
        )
        self.tag = context.tag
        self.ref = pushed_image(
            name,
            image_name=pulumi.Output.format("{0}/{1}:{2}", registry_server, repository, context.tag),
            build={"context": context.context, "dockerfile": context.dockerfile, "platform": platform},
            registry_server=registry_server,
            credentials=credentials,
            parent=self,
            depends_on=push_grants,
        )
        self.register_outputs({"ref": self.ref, "tag": self.tag})
