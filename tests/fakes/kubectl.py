"""A stand-in for ``kubectl port-forward`` that validates its arguments as kubectl does and really forwards.

Only the invocation ``infra.tunnel`` makes is accepted: global ``--kubeconfig FILE`` (must exist, be
mode 0600 and be a kubeconfig) and ``--namespace NS``, then ``port-forward`` with ``--address``
(IP addresses or localhost), ``--pod-running-timeout`` and ``service/NAME LOCAL:REMOTE``. Anything
else fails with kubectl's own wording and exit 1. Environment:

* ``FAKE_KUBECTL_SERVICES``: ``ns/name:port=host:port,...``, the Services that exist and where their
  pods really listen; an unknown Service gets ``Error from server (NotFound)``.
* ``FAKE_KUBECTL_MODE``: ``forward`` (default), ``forbidden`` (the API server's RBAC refusal), or
  ``hang`` (accepts connections and never answers: a pod that never becomes ready).
* ``FAKE_KUBECTL_LOG``: a file that gets one JSON line per call (argv, kubeconfig mode) for tests.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import stat
import sys
import threading
from typing import NoReturn

DURATION_RE = re.compile(r"^\d+(ms|s|m|h)$")


def fail(message: str) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)


def parse(argv: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    positional: list[str] = []
    valued = {"--kubeconfig", "--namespace", "-n", "--address", "--pod-running-timeout"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            name, _, inline = arg.partition("=")
            if name not in valued:
                fail(f"error: unknown flag: {name}\nSee 'kubectl port-forward --help' for usage.")
            if inline:
                opts[name] = inline
            else:
                if i + 1 >= len(argv):
                    fail(f"error: flag needs an argument: {name}")
                opts[name] = argv[i + 1]
                i += 1
        else:
            positional.append(arg)
        i += 1
    if not positional or positional[0] != "port-forward":
        fail(f'error: unknown command {positional[:1]!r} for "kubectl" (this stand-in only port-forwards)')
    if len(positional) != 3:
        fail("error: TYPE/NAME and list of ports are required for port-forward")
    opts["target"], opts["ports"] = positional[1], positional[2]
    return opts


def check(opts: dict[str, str]) -> tuple[str, str, int, int]:
    config = opts.get("--kubeconfig")
    if config is None:
        fail("error: no kubeconfig given (this stand-in needs --kubeconfig)")
    try:
        mode = stat.S_IMODE(os.stat(config).st_mode)
        with open(config) as handle:
            text = handle.read()
    except OSError as exc:
        fail(f"error: stat {config}: {exc.strerror}")
    if mode & 0o077:
        fail(f"error: kubeconfig {config} is readable by others (mode {mode:o})")
    if "kind: Config" not in text or "clusters:" not in text:
        fail(f'error: loading config file "{config}": not a kubeconfig')
    address = opts.get("--address", "localhost")
    for item in address.split(","):
        if item != "localhost":
            try:
                ipaddress.ip_address(item)
            except ValueError:
                fail(f"error: {item} is not a valid IP")
    timeout = opts.get("--pod-running-timeout", "1m0s")
    if not DURATION_RE.match(timeout) and timeout != "1m0s":
        fail(f'error: invalid argument "{timeout}" for "--pod-running-timeout" flag')
    kind, _, name = opts["target"].partition("/")
    if kind not in ("service", "svc", "services") or not name:
        fail(f"error: this stand-in forwards Services only, got {opts['target']!r}")
    local, _, remote = opts["ports"].partition(":")
    if not (local.isdigit() and remote.isdigit()):
        fail(f"error: Error parsing local port '{opts['ports']}'")
    namespace = opts.get("--namespace") or opts.get("-n") or "default"
    return namespace, name, int(local), int(remote)


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def main() -> None:
    opts = parse(sys.argv[1:])
    namespace, name, local, remote = check(opts)
    log = os.environ.get("FAKE_KUBECTL_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"argv": sys.argv[1:]}) + "\n")
    services = {}
    for entry in filter(None, os.environ.get("FAKE_KUBECTL_SERVICES", "").split(",")):
        key, _, target = entry.partition("=")
        services[key] = target
    key = f"{namespace}/{name}:{remote}"
    mode = os.environ.get("FAKE_KUBECTL_MODE", "forward")
    if mode == "forbidden":
        fail(
            f'error: error upgrading connection: pods "{name}-0" is forbidden: User "deployer" cannot create '
            f'resource "pods/portforward" in API group "" in the namespace "{namespace}"'
        )
    if key not in services:
        fail(f'Error from server (NotFound): services "{name}" not found')
    host, _, port = services[key].rpartition(":")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((opts.get("--address", "127.0.0.1").split(",")[0].replace("localhost", "127.0.0.1"), local))
    server.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"Forwarding from 127.0.0.1:{local} -> {remote}", flush=True)
    held = []
    while True:
        client, _ = server.accept()
        if mode == "hang":
            held.append(client)  # never answered
            continue
        print(f"Handling connection for {local}", flush=True)
        upstream = socket.create_connection((host, int(port)))
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    main()
