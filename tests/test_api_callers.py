"""model.api_callers: each API's local caller built once per instance, with BentoML's behaviour."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any, cast

import bentoml
from _bentoml_impl.server.app import ServiceAppFactory
from pydantic import Field

from model.api_callers import BoundApi, api_methods, bind_api_callers


class _Base:
    @bentoml.api
    def shout(self, text: str) -> str:
        return text.upper()


@bentoml.service(name="api_callers_probe")
class _Probe(_Base):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    @bentoml.api
    async def echo(self, text: str, times: int = Field(default=2, ge=1)) -> str:
        self.calls.append((text, times))
        return text * times

    def helper(self) -> str:  # not an API: left alone
        return "helper"


_PROBE: Any = cast(Any, _Probe).inner  # the class bentoml.service wraps


def _instance() -> Any:
    return _PROBE()


def test_bentoml_builds_the_local_caller_anew_on_every_lookup() -> None:
    """Why the module exists: were this ever False, BentoML would cache it itself."""
    probe = _instance()
    assert probe.echo.local is not probe.echo.local


def test_the_apis_of_a_service_class_inherited_ones_included() -> None:
    assert sorted(api_methods(_PROBE)) == ["echo", "shout"]


def test_bound_callers_are_built_once_and_answer_as_bentomls() -> None:
    probe = _instance()
    fresh = type(probe).echo.__get__(probe, type(probe)).local
    assert bind_api_callers(probe) == ("echo", "shout")
    assert isinstance(probe.echo, BoundApi)
    assert probe.echo.local is probe.echo.local  # what BentoML's api_endpoint looks up per request
    assert inspect.signature(probe.echo.local) == inspect.signature(fresh)  # without `self`
    # The Field default is filled in, as BentoML's own caller does.
    assert asyncio.run(probe.echo.local(text="ab")) == asyncio.run(fresh(text="ab")) == "abab"
    assert probe.shout.local("hi") == "HI"
    assert asyncio.run(probe.echo("c", times=3)) == "ccc"  # a call goes through the descriptor
    assert probe.calls == [("ab", 2), ("ab", 2), ("c", 3)]
    assert probe.helper() == "helper"


def test_bentomls_request_handler_looks_the_caller_up_on_the_instance() -> None:
    """The contract the binding relies on (BentoML 1.4.x): ``getattr(instance, name).local``."""
    source = inspect.getsource(ServiceAppFactory.api_endpoint)
    assert "getattr(self._service_instance, name).local" in source


def test_once_bentoml_has_a_self_proxy_calls_and_other_attributes_reach_it() -> None:
    """BentoML sets ``__self_proxy__`` after the instance is made; a call then goes to the proxy's
    method (a task API's ``submit`` too), while the request path keeps the bound local caller."""
    probe = _instance()
    bind_api_callers(probe)
    local = probe.echo.local
    probe.__self_proxy__ = SimpleNamespace(echo=_ProxyMethod())
    assert probe.echo("x", times=1) == ("proxy", ("x",), {"times": 1})
    assert probe.echo.submit("y") == ("submitted", ("y",))
    assert probe.echo.local is local
    assert probe.calls == []


class _ProxyMethod:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return ("proxy", args, kwargs)

    def submit(self, *args: Any) -> Any:
        return ("submitted", args)
