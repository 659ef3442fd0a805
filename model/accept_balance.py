"""Spreading the connections of the workers' shared listening socket over the workers.

``bentoml serve`` starts N worker processes that accept on one inherited socket. A new connection
wakes every worker, and asyncio's accept handler (``BaseSelectorEventLoop._accept_connection``)
accepts up to ``backlog`` pending connections per wake-up (2048 as BentoML sets it): the first
worker to run takes every connection of a burst. Keep-alive clients that connect together (a load
balancer's pool, a benchmark) then all sit on one worker, and the pod serves with one CPU of its
limit while the other idles. ``accept_one_per_wakeup`` makes each wake-up accept at most one
connection; the socket stays readable while more are pending, so the next loop iteration takes the
next, and whichever worker is less busy gets there first. The listen queue (``backlog``) is not
changed.

This replaces a private asyncio method. It is applied only to the signature it was written against
(Python 3.11-3.13, ``EXPECTED_PARAMETERS``); against any other, it logs and leaves asyncio as it is.
"""

from __future__ import annotations

import asyncio.selector_events
import functools
import importlib.util
import inspect
import logging
from typing import Any

logger = logging.getLogger(__name__)

EXPECTED_PARAMETERS = (
    "self",
    "protocol_factory",
    "sock",
    "sslcontext",
    "server",
    "backlog",
    "ssl_handshake_timeout",
    "ssl_shutdown_timeout",
)
_LOOP = asyncio.selector_events.BaseSelectorEventLoop


def accept_one_per_wakeup() -> bool:
    """Patch the selector event loop to accept one connection per readiness event; True if applied
    (or already), False if this Python's accept handler is not the one it knows."""
    if importlib.util.find_spec("uvloop") is not None:
        logger.warning(
            "uvloop is installed: uvicorn serves on it, which this patch of asyncio does not reach "
            "(a burst of connections may land on one worker)"
        )
    accept = _LOOP._accept_connection  # type: ignore[attr-defined]
    if getattr(accept, "one_per_wakeup", False):
        return True
    if tuple(inspect.signature(accept).parameters) != EXPECTED_PARAMETERS:
        logger.warning(
            "asyncio's accept handler has an unknown signature here: connections are accepted as "
            "asyncio does (a burst may land on one worker)"
        )
        return False

    @functools.wraps(accept)
    def one_per_wakeup(self: Any, protocol_factory: Any, sock: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) >= 3:  # sslcontext, server, backlog given by position
            args = (*args[:2], 1, *args[3:])
        else:
            kwargs["backlog"] = 1
        return accept(self, protocol_factory, sock, *args, **kwargs)

    one_per_wakeup.one_per_wakeup = True  # type: ignore[attr-defined]
    _LOOP._accept_connection = one_per_wakeup  # type: ignore[attr-defined]
    return True
