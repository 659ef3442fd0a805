"""Each BentoML API of a service instance bound once, instead of once per request.

BentoML 1.4 finds the function to call for a request as ``getattr(instance, name).local``
(``_bentoml_impl.server.app.ServiceAppFactory.api_endpoint``). ``name`` is an ``APIMethod``, a
descriptor without ``__set__``, and its ``__get__`` builds that local caller anew each time: an
``inspect.signature`` and a ``functools.wraps``, ~4% of a 100-row request's CPU in a py-spy profile
(benchmarks/results/levers.md). The caller holds nothing of a request (the instance, the function
and its parameters), so ``bind_api_callers`` builds it once per API and puts it on the instance,
where attribute lookup finds it before the descriptor. Calling the attribute, or reading any other
attribute of it (a task API's ``submit``, ``__signature__``), still goes through the descriptor, so
it reaches what BentoML would have given (its self-proxy, once it has one).
"""

from __future__ import annotations

import inspect
from typing import Any

from _bentoml_sdk.method import APIMethod


class BoundApi:
    """An API of one instance: its local caller, built once; the rest through BentoML's descriptor."""

    def __init__(self, method: APIMethod[Any, Any], instance: object) -> None:
        self._method = method
        self._instance = instance
        self.local = method.__get__(instance, type(instance)).local

    def _bentoml(self) -> Any:
        return self._method.__get__(self._instance, type(self._instance))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._bentoml()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # only what __init__ did not set
        return getattr(self._bentoml(), name)


def api_methods(cls: type) -> dict[str, APIMethod[Any, Any]]:
    """The BentoML APIs that ``cls`` defines or inherits, by name."""
    return {
        name: member
        for name in dir(cls)
        if isinstance(member := inspect.getattr_static(cls, name), APIMethod)
    }


def bind_api_callers(instance: object) -> tuple[str, ...]:
    """Bind every API of ``instance`` once (see the module docstring); the names bound."""
    methods = api_methods(type(instance))
    for name, method in methods.items():
        vars(instance)[name] = BoundApi(method, instance)
    return tuple(sorted(methods))
