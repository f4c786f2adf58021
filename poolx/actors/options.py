"""How an actor runs: what the user asks (``ActorOptions``) and what its class implies.

``ActorOptions`` is given through ``Executor.options(...)``; this module only
validates it: what the options do is in the backends (restarts, call
timeouts) and in the runner (concurrency).  ``method_names`` and
``is_async_class`` read an actor's class: the methods its handle offers, and
whether its calls run on an event loop.  Imports nothing from poolx.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ActorOptions:
    """How an actor runs (``Executor.options(...)``).

    ``name``: register the actor under this name (``Executor.get_actor``); with
    ``get_if_exists=True`` an existing actor of that name is returned instead of
    an error.  ``max_restarts``: how many times a crashed actor process is
    started again (its constructor re-runs; state is lost), -1 for no limit.
    ``max_task_retries``: how many times a call that was running or queued when
    the actor crashed is sent again to the restarted actor, -1 for no limit (0:
    such calls fail with ``ActorDiedError``).  ``max_concurrency``: calls run at
    once, on threads inside the actor (default 1), or interleaved on its event
    loop for a class with ``async def`` methods (default 1000).  ``num_cpus``:
    the CPUs one call may keep busy; on the processes backend it caps the
    actor's BLAS/OpenMP thread pools (``OMP_NUM_THREADS`` and friends, unless
    already set), as Ray does.  ``call_timeout``: seconds one call may run;
    then the actor's process is killed, that call fails with
    ``TaskTimeoutError``, and the actor goes through its restart policy like
    one that crashed (processes backend; actors that run one call at a time).
    """

    name: str | None = None
    get_if_exists: bool = False
    max_restarts: int = 0
    max_task_retries: int = 0
    max_concurrency: int | None = None
    num_cpus: float | None = None
    call_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for field in ("max_restarts", "max_task_retries"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < -1:
                raise ValueError(f"{field} must be an integer >= 0, or -1 for no limit; got {value!r}")
        mc = self.max_concurrency
        if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
            raise ValueError(f"max_concurrency must be an integer >= 1, got {mc!r}")
        nc = self.num_cpus
        if nc is not None and (not isinstance(nc, int | float) or isinstance(nc, bool) or nc < 0):
            raise ValueError(f"num_cpus must be a number >= 0, got {nc!r}")
        ct = self.call_timeout
        if ct is not None and (not isinstance(ct, int | float) or isinstance(ct, bool) or ct <= 0):
            raise ValueError(f"call_timeout must be a positive number of seconds or None, got {ct!r}")
        if ct is not None and mc is not None and mc > 1:
            raise ValueError("call_timeout needs an actor that runs one call at a time: with "
                             f"max_concurrency={mc}, killing the actor would stop the other calls too")

    @classmethod
    def build(cls, options: dict[str, Any]) -> ActorOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"unknown actor option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"the options are: {', '.join(sorted(known))}"
            )
        return cls(**options)


def is_async_class(cls: type) -> bool:
    """Whether ``cls`` has an ``async def`` method: its calls then run on an event loop."""
    for name in dir(cls):
        if name.startswith("__") and name != "__call__":
            continue
        attr = inspect.getattr_static(cls, name, None)
        if isinstance(attr, staticmethod | classmethod):
            attr = attr.__func__
        if inspect.iscoroutinefunction(attr) or inspect.isasyncgenfunction(attr):
            return True
    return False


def method_names(cls: type) -> frozenset[str]:
    """The names a handle exposes: callable attributes not starting with ``__``, and ``__call__``."""
    names = {n for n in dir(cls) if not n.startswith("__") and callable(getattr(cls, n, None))}
    if "__call__" in _own_dunders(cls) and callable(vars_lookup(cls, "__call__")):
        names.add("__call__")
    return frozenset(names)


def vars_lookup(cls: type, name: str) -> Any:
    return inspect.getattr_static(cls, name, None)


def _own_dunders(cls: type) -> set[str]:
    return {n for k in cls.__mro__ if k is not object for n in vars(k)}
