"""The registry and cluster access code against real local endpoints: ACR's token exchange, ARM's
importImage long-running operation and the registry's manifest lookup are served by an HTTP server
on loopback that speaks their contracts; ``az account get-access-token`` and ``kubectl auth can-i``
are real executables on PATH.
"""

from __future__ import annotations

import email.utils
import json
import os
import stat
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from infra import acr_token, cluster_access, image_import
from infra.acr_token import AcrTokenError, wait_for_push_token, wait_for_repository_token
from infra.cluster_access import (
    ClusterAccessError,
    ClusterAccessProvider,
    Verdict,
    can_i,
    classify,
    wait_for_access,
)
from infra.image_import import (
    AZ_ENV,
    ImageImportError,
    ImportedImage,
    ImportedImageProvider,
    import_request,
    retry_after,
    run_import,
)
from tools.stack_mocks import fake_jwt

DIGEST = "sha256:" + "cd" * 32
OTHER_DIGEST = "sha256:" + "ef" * 32
SOURCE_REGISTRY = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-dev/providers/"
    "Microsoft.ContainerRegistry/registries/registrydev"
)
TARGET_REGISTRY = SOURCE_REGISTRY.replace("rg-dev", "rg-staging").replace("registrydev", "registrystaging")


class FakeAzure:
    """State of the fake ARM + registry: what was asked, and what the registry holds."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.push_after = 0  # token exchanges answered without push before push is granted
        self.pull_after = 0  # token exchanges answered with no action at all before pull is granted
        self.manifests: dict[str, str] = {}  # "<repo>@<digest>" -> served digest
        self.pending_polls = 0  # 202 answers the import's Location gives before 200
        self.exchanges = 0
        self.import_failures: list[tuple[int, dict[str, str]]] = []  # answers to importImage POSTs first
        self.poll_failures: list[tuple[int, dict[str, str]]] = []  # answers to polls before the normal one
        self.arm_tokens: list[str] = []  # the bearer token of every ARM call


def handler_for(azure: FakeAzure) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            return None

        def _body(self) -> dict[str, Any]:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                return dict(json.loads(raw))
            return {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}

        def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self._body()
            azure.requests.append(("POST", self.path, body))
            if self.path == "/oauth2/exchange":
                azure.exchanges += 1
                self._json(200, {"refresh_token": f"refresh-{azure.exchanges}"})
            elif self.path == "/oauth2/token":
                repo = body["scope"].split(":")[1]
                actions = ["pull", "push"] if azure.exchanges > azure.push_after else ["pull"]
                if azure.exchanges <= azure.pull_after:
                    actions = []
                claims = {"access": [{"type": "repository", "name": repo, "actions": actions}]}
                self._json(200, {"access_token": fake_jwt(claims)})
            elif self.path.endswith("/importImage?api-version=2023-07-01"):
                azure.arm_tokens.append(self.headers.get("Authorization", ""))
                if azure.import_failures:
                    status, headers = azure.import_failures.pop(0)
                    self._json(status, {"error": {"code": f"E{status}"}}, headers)
                    return
                source = body["source"]["sourceImage"]
                azure.manifests[source] = source.split("@", 1)[1]
                assert isinstance(self.server, ThreadingHTTPServer)  # the fake serves TCP on loopback
                port = self.server.server_address[1]
                self._json(202, {}, {"Location": f"http://127.0.0.1:{port}/operations/1", "Retry-After": "0"})
            else:
                self._json(404, {})

        def do_GET(self) -> None:
            azure.requests.append(("GET", self.path, {}))
            if self.path == "/operations/1":
                azure.arm_tokens.append(self.headers.get("Authorization", ""))
                if azure.poll_failures:
                    status, headers = azure.poll_failures.pop(0)
                    self._json(status, {"error": {"code": f"E{status}"}}, headers)
                elif azure.pending_polls:
                    azure.pending_polls -= 1
                    assert isinstance(self.server, ThreadingHTTPServer)  # the fake serves TCP on loopback
                    port = self.server.server_address[1]
                    self._json(
                        202, {}, {"Location": f"http://127.0.0.1:{port}/operations/1", "Retry-After": "0"}
                    )
                else:
                    self._json(200, {})
            else:
                self._json(404, {})

        def do_HEAD(self) -> None:
            azure.requests.append(("HEAD", self.path, {}))
            repo, _, digest = self.path.removeprefix("/v2/").partition("/manifests/")
            served = azure.manifests.get(f"{repo}@{digest}")
            self.send_response(200 if served else 404)
            if served:
                self.send_header("Docker-Content-Digest", served)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture
def azure() -> Iterator[tuple[FakeAzure, str]]:
    state = FakeAzure()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Clock:
    """A clock that advances only when the code under test sleeps (no real waiting)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 1.0)


# ---------------------------------------------------------------- ACR push token


def test_the_exchange_sends_the_acr_form_and_waits_for_push(azure: tuple[FakeAzure, str]) -> None:
    state, server = azure
    state.push_after = 2  # AcrPush propagates after two exchanges
    clock = Clock()
    token = wait_for_push_token(
        server,
        "entra-token",
        "tenant-1",
        ["cancer-classifier"],
        scheme="http",
        sleep=clock.sleep,
        clock=clock,
    )
    assert token == "refresh-3" and len(clock.sleeps) == 2
    exchange = next(body for method, path, body in state.requests if path == "/oauth2/exchange")
    assert exchange == {
        "grant_type": "access_token",
        "service": server,
        "tenant": "tenant-1",
        "access_token": "entra-token",
    }
    scope = next(body for method, path, body in state.requests if path == "/oauth2/token")
    assert (
        scope["grant_type"] == "refresh_token" and scope["scope"] == "repository:cancer-classifier:pull,push"
    )
    assert acr_token.ACR_TOKEN_USERNAME == "00000000-0000-0000-0000-000000000000"


def test_the_push_wait_is_bounded_and_says_what_to_check(azure: tuple[FakeAzure, str]) -> None:
    state, server = azure
    state.push_after = 10**6  # AcrPush never arrives
    clock = Clock()
    with pytest.raises(AcrTokenError) as info:
        wait_for_push_token(
            server,
            "t",
            "tenant",
            ["mlflow-server"],
            scheme="http",
            timeout=30,
            sleep=clock.sleep,
            clock=clock,
        )
    assert "no push permission yet on mlflow-server" in str(info.value)
    assert "deployerPrincipals" in str(info.value) and clock.now >= 30


# ---------------------------------------------------------------- ImportedImage

AZ_TOKEN = "arm-token-from-az"


@pytest.fixture
def az(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``az`` first on PATH that prints a token like ``az account get-access-token`` and records
    its arguments; a file ``fail`` makes it answer like an Azure CLI that is not logged in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "az"
    token = json.dumps(
        {"accessToken": AZ_TOKEN, "expires_on": 1, "tenant": "tenant-1", "tokenType": "Bearer"}
    )
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/az-args\n'
        f"if [ -e {tmp_path}/fail ]; then\n"
        "  echo \"ERROR: Please run 'az login' to setup account.\" >&2\n"
        "  exit 1\n"
        "fi\n"
        f"echo '{token}'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv(AZ_ENV, raising=False)
    return tmp_path


def import_props(server: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {
        "source_ref": ref,
        "source_registry_id": SOURCE_REGISTRY,
        "target_registry_id": TARGET_REGISTRY,
        "target_login_server": server,
        "tenant_id": "tenant-1",
        "arm_endpoint": f"http://{server}",
        "registry_scheme": "http",
        **extra,
    }


def import_posts(state: FakeAzure) -> list[tuple[str, str, dict[str, Any]]]:
    return [r for r in state.requests if "importImage" in r[1]]


def test_import_copies_the_digest_waits_for_the_operation_and_verifies(
    azure: tuple[FakeAzure, str], az: Path
) -> None:
    state, server = azure
    state.pending_polls = 2
    clock = Clock()
    outs = run_import(
        import_props(server, f"registrydev.azurecr.io/cancer-classifier@{DIGEST}"),
        sleep=clock.sleep,
        clock=clock,
    )
    assert outs == {
        "image_ref": f"{server}/cancer-classifier@{DIGEST}",
        "digest": DIGEST,
        "repository": "cancer-classifier",
    }
    [(_, path, body)] = import_posts(state)
    assert path == f"{TARGET_REGISTRY}/importImage?api-version=2023-07-01"
    assert body == {
        "source": {"resourceId": SOURCE_REGISTRY, "sourceImage": f"cancer-classifier@{DIGEST}"},
        "untaggedTargetRepositories": ["cancer-classifier"],
        "mode": "NoForce",
    }
    assert len([r for r in state.requests if r[1] == "/operations/1"]) == 3  # two 202s, then 200
    heads = [r for r in state.requests if r[0] == "HEAD"]
    assert [h[1] for h in heads] == [f"/v2/cancer-classifier/manifests/{DIGEST}"] * 2  # before and after
    # the ARM token came from the Azure CLI, asked for Resource Manager's audience
    assert (az / "az-args").read_text().split() == [
        "account",
        "get-access-token",
        "--resource",
        "https://management.azure.com/",
        "--output",
        "json",
    ]
    assert state.arm_tokens and set(state.arm_tokens) == {f"Bearer {AZ_TOKEN}"}
    exchange = next(body for method, path, body in state.requests if path == "/oauth2/exchange")
    assert exchange["access_token"] == AZ_TOKEN and exchange["tenant"] == "tenant-1"


def test_the_import_waits_for_pull_on_the_target_not_for_push(azure: tuple[FakeAzure, str], az: Path) -> None:
    state, server = azure
    state.pull_after = 1  # the importer role (pull/read) propagates after one exchange
    state.push_after = 10**6  # no push right ever: a promoting stack grants none
    clock = Clock()
    run_import(
        import_props(server, f"registrydev.azurecr.io/cancer-classifier@{DIGEST}"),
        sleep=clock.sleep,
        clock=clock,
    )
    scopes = {body["scope"] for method, path, body in state.requests if path == "/oauth2/token"}
    assert scopes == {"repository:cancer-classifier:pull"}
    assert state.exchanges == 2 and len(import_posts(state)) == 1


def test_the_pull_wait_names_the_pull_roles(azure: tuple[FakeAzure, str]) -> None:
    state, server = azure
    state.pull_after = 10**6
    clock = Clock()
    with pytest.raises(AcrTokenError) as info:
        wait_for_repository_token(
            server, "t", "tenant", ["cancer-classifier"], action="pull", scheme="http", timeout=20,
            sleep=clock.sleep, clock=clock,
        )  # fmt: skip
    assert "no pull permission yet on cancer-classifier" in str(info.value)
    assert "Container Registry Data Importer and Data Reader" in str(info.value)


def test_the_import_fails_clearly_without_the_azure_cli(
    azure: tuple[FakeAzure, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, server = azure
    monkeypatch.setenv(AZ_ENV, str(tmp_path / "no-such-az"))
    with pytest.raises(ImageImportError) as info:
        run_import(import_props(server, f"registrydev.azurecr.io/cancer-classifier@{DIGEST}"))
    assert "not installed" in str(info.value) and AZ_ENV in str(info.value)
    assert "az login" in str(info.value) and state.requests == []


def test_the_import_fails_clearly_when_the_azure_cli_is_not_logged_in(
    azure: tuple[FakeAzure, str], az: Path
) -> None:
    state, server = azure
    (az / "fail").write_text("")
    with pytest.raises(ImageImportError) as info:
        run_import(import_props(server, f"registrydev.azurecr.io/cancer-classifier@{DIGEST}"))
    assert "Please run 'az login'" in str(info.value) and "azure/login" in str(info.value)
    assert state.requests == []


def test_the_import_retries_throttling_and_server_errors(azure: tuple[FakeAzure, str], az: Path) -> None:
    state, server = azure
    soon = email.utils.formatdate(0, usegmt=True)  # an HTTP date (long past: wait the minimum)
    state.import_failures = [(429, {"Retry-After": "7"}), (503, {"Retry-After": soon})]
    state.poll_failures = [(500, {})]
    state.pending_polls = 1
    clock = Clock()
    outs = run_import(
        import_props(server, f"registrydev.azurecr.io/cancer-classifier@{DIGEST}"),
        sleep=clock.sleep,
        clock=clock,
    )
    assert outs["digest"] == DIGEST
    assert len(import_posts(state)) == 3  # 429, 503, then 202
    assert len([r for r in state.requests if r[1] == "/operations/1"]) == 3  # 500, 202, then 200
    # Retry-After in seconds, then as a date, then the 202's; a 5xx without one waits the interval
    assert clock.sleeps == [7.0, 1.0, 1.0, image_import.POLL_SECONDS, 1.0]


def test_the_import_does_not_retry_a_refusal(azure: tuple[FakeAzure, str], az: Path) -> None:
    state, server = azure
    state.import_failures = [(403, {})]
    with pytest.raises(ImageImportError) as info:
        run_import(import_props(server, f"registrydev.azurecr.io/cancer-classifier@{DIGEST}"))
    assert "HTTP 403" in str(info.value) and len(import_posts(state)) == 1


def test_import_retries_are_bounded(azure: tuple[FakeAzure, str], az: Path) -> None:
    state, server = azure
    state.import_failures = [(503, {"Retry-After": "10"})] * 100
    clock = Clock()
    with pytest.raises(ImageImportError) as info:
        run_import(
            import_props(server, f"registrydev.azurecr.io/cancer-classifier@{DIGEST}", timeout_seconds=30),
            sleep=clock.sleep,
            clock=clock,
        )
    assert "did not finish in 30s" in str(info.value) and "HTTP 503" in str(info.value)
    assert 30 <= clock.now < 30 + 10 + 1 and len(import_posts(state)) == 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 12 ", 12.0),
        ("0", 1.0),  # never a busy loop
        ("-3", 1.0),
        ("86400", 300.0),  # never one endless wait
        ("nan", 10.0),
        ("soon", 10.0),
        ("", 10.0),
        ("Wed, 21 Oct 2015 07:28:20 GMT", 20.0),
        ("Wed, 21 Oct 2015 07:28:20", 10.0),  # no zone: not an HTTP date
    ],
)
def test_retry_after_reads_seconds_or_an_http_date(value: str, expected: float) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert retry_after({"retry-after": value}, 10.0, now=lambda: now) == expected


def test_a_digest_already_in_the_target_is_not_imported_again(azure: tuple[FakeAzure, str], az: Path) -> None:
    state, server = azure
    state.manifests[f"cancer-classifier@{DIGEST}"] = DIGEST
    run_import(import_props(server, f"{server}/cancer-classifier@{DIGEST}"))
    assert not import_posts(state)


def test_an_import_that_serves_another_digest_fails(azure: tuple[FakeAzure, str], az: Path) -> None:
    _, server = azure
    original = image_import.served_digest
    calls: list[str] = []

    def served(*args: Any, **kwargs: Any) -> str | None:
        calls.append("head")
        found = original(*args, **kwargs)
        return OTHER_DIGEST if found else None

    image_import.served_digest = served
    try:
        with pytest.raises(ImageImportError) as info:
            run_import(import_props(server, f"registrydev.azurecr.io/cancer-classifier@{DIGEST}"))
    finally:
        image_import.served_digest = original
    assert OTHER_DIGEST in str(info.value) and calls == ["head", "head"]


def test_import_diff_only_on_what_is_imported_where() -> None:
    provider = ImportedImageProvider()
    olds = import_props("t", f"r/cancer-classifier@{DIGEST}")
    assert (
        provider.diff("id", olds, {**olds, "tenant_id": "other", "target_login_server": "u"}).changes is False
    )
    assert provider.diff("id", olds, {**olds, "source_ref": f"r/cancer-classifier@{OTHER_DIGEST}"}).changes
    assert provider.diff("id", olds, {**olds, "target_registry_id": SOURCE_REGISTRY}).changes
    # a state written by an earlier version still holds a token: one update drops it
    assert provider.diff("id", {**olds, "arm_token": "stale"}, olds).changes


def test_imported_image_takes_no_token() -> None:
    import inspect

    assert "arm_token" not in inspect.signature(ImportedImage.__init__).parameters


def test_import_request_refuses_a_tag() -> None:
    with pytest.raises(ImageImportError):
        import_request("registrydev.azurecr.io/cancer-classifier:latest", SOURCE_REGISTRY)


# ---------------------------------------------------------------- ClusterAccess


@pytest.fixture
def kubectl(tmp_path: Path) -> Path:
    """A kubectl that answers `auth can-i` like the real one, one line of ``answers`` per call
    (``stdout|stderr|exit code``, the last line repeating), and records its kubeconfig's mode."""
    script = tmp_path / "kubectl"
    script.write_text(
        "#!/bin/sh\n"
        "for last; do :; done\n"  # the kubeconfig path is the last argument
        f'stat -c %a "$last" > {tmp_path}/mode\n'
        f'echo "$@" > {tmp_path}/args\n'
        f"n=$(($(cat {tmp_path}/calls 2>/dev/null || echo 0) + 1)); echo $n > {tmp_path}/calls\n"
        f'line=$(sed -n "${{n}}p" {tmp_path}/answers)\n'
        f'[ -n "$line" ] || line=$(tail -n 1 {tmp_path}/answers)\n'
        "out=${line%%|*}; rest=${line#*|}; err=${rest%%|*}; code=${rest#*|}\n"
        '[ -z "$out" ] || echo "$out"\n'
        '[ -z "$err" ] || echo "$err" >&2\n'
        'exit "$code"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


YES = "yes||0"
NO = "no||1"
FORBIDDEN = (
    '|Error from server (Forbidden): selfsubjectaccessreviews.authorization.k8s.io is forbidden: User "u" '
    "cannot create resource|1"
)
UNAUTHORIZED = "|error: You must be logged in to the server (Unauthorized)|1"


def answering(kubectl: Path, *answers: str) -> Callable[[str], tuple[Verdict, str]]:
    (kubectl.parent / "answers").write_text("\n".join(answers) + "\n")
    return lambda kubeconfig: can_i(kubeconfig, str(kubectl))


def calls(kubectl: Path) -> int:
    return int((kubectl.parent / "calls").read_text())


def test_can_i_asks_kubectl_with_a_private_kubeconfig(kubectl: Path) -> None:
    check = answering(kubectl, "no - Azure RBAC: not yet||1", YES)
    assert check("apiVersion: v1\n") == (Verdict.DENIED, "no - Azure RBAC: not yet")
    assert check("apiVersion: v1\n") == (Verdict.ALLOWED, "yes")
    assert (kubectl.parent / "mode").read_text().strip() == "600"
    args = (kubectl.parent / "args").read_text().split()
    assert args[:5] == ["auth", "can-i", "create", "namespaces", "--all-namespaces"]
    leftover = args[args.index("--kubeconfig") + 1]
    assert not os.path.exists(leftover)  # the temporary kubeconfig is removed


@pytest.mark.parametrize(
    ("code", "stdout", "stderr", "verdict"),
    [
        (0, "yes\n", "", Verdict.ALLOWED),
        (0, "yes\n", "Warning: the API server is overloaded\n", Verdict.ALLOWED),
        (1, "no\n", "", Verdict.DENIED),
        (1, "no - no RBAC policy matched\n", "", Verdict.DENIED),
        (1, "", FORBIDDEN.split("|")[1], Verdict.DENIED),
        (1, "", UNAUTHORIZED.split("|")[1], Verdict.BROKEN),
        (1, "", "Unable to connect to the server: dial tcp 20.1.2.3:443: i/o timeout", Verdict.BROKEN),
        (1, "", "getting credentials: exec: executable kubelogin not found", Verdict.BROKEN),
        (0, "yesterday\n", "", Verdict.BROKEN),
        (1, "", "", Verdict.BROKEN),
    ],
)
def test_kubectl_answers_are_yes_no_or_broken(code: int, stdout: str, stderr: str, verdict: Verdict) -> None:
    assert classify(code, stdout, stderr)[0] is verdict


def test_access_needs_three_consecutive_yes_answers(kubectl: Path) -> None:
    check = answering(kubectl, NO, YES, FORBIDDEN, YES, YES, YES)
    clock = Clock()
    outs = wait_for_access({"kubeconfig": "k"}, check=check, sleep=clock.sleep, clock=clock)
    assert outs == {"allowed": True, "attempts": 6} and calls(kubectl) == 6
    assert clock.sleeps == [cluster_access.POLL_SECONDS] * 5 and cluster_access.POLL_SECONDS == 15.0
    assert cluster_access.CONFIRMATIONS == 3


def test_access_fails_fast_when_kubectl_cannot_ask(kubectl: Path) -> None:
    check = answering(kubectl, NO, UNAUTHORIZED)
    clock = Clock()
    with pytest.raises(ClusterAccessError) as info:
        wait_for_access({"kubeconfig": "k"}, check=check, sleep=clock.sleep, clock=clock)
    message = str(info.value)
    assert "You must be logged in to the server (Unauthorized)" in message and "kubeloginMode" in message
    assert "apiServerAuthorizedIpRanges" in message and "privateCluster" in message
    assert calls(kubectl) == 2 and len(clock.sleeps) == 1  # no waiting out the timeout


def test_access_fails_fast_without_kubectl(tmp_path: Path) -> None:
    with pytest.raises(ClusterAccessError) as info:
        wait_for_access(
            {"kubeconfig": "k"}, check=lambda k: can_i(k, str(tmp_path / "no-kubectl")), sleep=Clock().sleep
        )
    assert "did not run" in str(info.value) and "kubelogin are installed" in str(info.value)


def test_access_wait_is_bounded_and_names_what_to_check(kubectl: Path) -> None:
    clock = Clock()
    with pytest.raises(ClusterAccessError) as info:
        wait_for_access(
            {"kubeconfig": "k", "timeout_seconds": 60, "interval_seconds": 15},
            check=answering(kubectl, NO),
            sleep=clock.sleep,
            clock=clock,
        )
    message = str(info.value)
    assert "deployerPrincipals" in message and 60 <= clock.now < 60 + 15 + 1
    assert "apiServerAuthorizedIpRanges" in message and "privateCluster" in message


def test_a_streak_under_way_at_the_deadline_finishes(kubectl: Path) -> None:
    clock = Clock()
    outs = wait_for_access(
        {"kubeconfig": "k", "timeout_seconds": 30, "interval_seconds": 15},
        check=answering(kubectl, NO, NO, YES, YES, YES),
        sleep=clock.sleep,
        clock=clock,
    )
    assert outs["attempts"] == 5 and clock.now == 60


def test_access_diff_changes_only_with_the_grants() -> None:
    provider = ClusterAccessProvider()
    olds = {"kubeconfig": "a", "grant_ids": ["g1"]}
    assert provider.diff("id", olds, {"kubeconfig": "b", "grant_ids": ["g1"]}).changes is False
    assert provider.diff("id", olds, {"kubeconfig": "a", "grant_ids": ["g1", "g2"]}).changes is True
    assert cluster_access.CAN_I[0:2] == ("auth", "can-i")
