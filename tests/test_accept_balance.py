"""model.accept_balance: one accepted connection per readiness event of the shared listening socket,
so that the next pending one is left to whichever worker runs next."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import inspect
import socket
from collections.abc import Iterator

import pytest

from model import accept_balance


@pytest.fixture
def unpatched() -> Iterator[None]:
    """asyncio's own accept handler for the test (model.service applies the patch at import)."""
    loop_class = asyncio.selector_events.BaseSelectorEventLoop
    current = loop_class._accept_connection  # type: ignore[attr-defined]
    loop_class._accept_connection = getattr(current, "__wrapped__", current)  # type: ignore[attr-defined]
    yield
    loop_class._accept_connection = current  # type: ignore[attr-defined]


def _accepted_of_pending(pending: int) -> int:
    """How many of ``pending`` connections one call of the loop's accept handler takes (called with
    the arguments asyncio's own server passes: positional, backlog 100)."""
    loop = asyncio.SelectorEventLoop()
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    listener.setblocking(False)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(pending)]
    transports: list[asyncio.BaseTransport] = []

    class Kept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)

    try:
        loop._accept_connection(Kept, listener, None, None, 100, 60.0, 30.0)  # type: ignore[attr-defined]
        accepted = len(asyncio.all_tasks(loop))  # one task per accepted connection
        loop.run_until_complete(asyncio.sleep(0.05))  # they make their transports
        return accepted
    finally:
        for transport in transports:
            transport.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        for client in clients:
            client.close()
        listener.close()


@pytest.mark.usefixtures("unpatched")
def test_one_connection_per_wakeup_instead_of_the_whole_burst() -> None:
    assert _accepted_of_pending(3) == 3  # asyncio as it is: the first worker awake takes them all
    assert accept_balance.accept_one_per_wakeup()
    assert accept_balance.accept_one_per_wakeup()  # once only: not wrapped twice
    assert _accepted_of_pending(3) == 1


@pytest.mark.usefixtures("unpatched")
def test_the_patched_signature_is_this_pythons() -> None:
    """The contract the patch relies on, for the Python the image runs (model.pins' base)."""
    handler = asyncio.selector_events.BaseSelectorEventLoop._accept_connection  # type: ignore[attr-defined]
    assert tuple(inspect.signature(handler).parameters) == accept_balance.EXPECTED_PARAMETERS
    loop_class = asyncio.selector_events.BaseSelectorEventLoop
    source = inspect.getsource(loop_class._start_serving)  # type: ignore[attr-defined]
    assert "self._accept_connection" in source and "backlog" in source  # looked up on the loop, per call


@pytest.mark.usefixtures("unpatched")
def test_an_unknown_signature_leaves_asyncio_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def other(self: object, protocol_factory: object, sock: object, backlog: int = 100) -> None:
        return None

    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "_accept_connection", other)
    assert not accept_balance.accept_one_per_wakeup()
    assert asyncio.selector_events.BaseSelectorEventLoop._accept_connection is other  # type: ignore[attr-defined]
    assert "unknown signature" in caplog.text
