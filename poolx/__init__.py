"""poolx: parallel Python on one machine first.

The front door is :class:`Executor`, a drop-in ``concurrent.futures``
executor whose tasks run on a pluggable backend (``processes`` by default,
``threads``, ``serial``).  ``poolx.remote``, ``get``, ``wait``, ``put`` and
friends are Ray's API on top of it (``import poolx as ray``).
``poolx.profile("out/")`` profiles a block of a program, every executor it
makes included (``poolx.harness.session``; ``poolx profile run`` for a whole
program).

This module is the package's face: it lists the public names in ``__all__``;
the executor, the pools, the actors and the Ray-style API are imported on
first use (``__getattr__`` below).
"""

import typing as _typing

from ._errors import (
    ActorDiedError,
    ActorError,
    DeserializationError,
    GetTimeoutError,
    InitializerError,
    ObjectLostError,
    PoolxError,
    RayTaskError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskCancelledError,
    TaskTimeoutError,
    WorkerDiedError,
)
from ._futures import Future
from ._futures import Future as ObjectRef
from ._telemetry import Statistics
from .backends import Backend, BackendOptions, available_backends, register_backend

if _typing.TYPE_CHECKING:
    from . import exceptions, util
    from ._api import (
        RemoteClass,
        RemoteFunction,
        available_resources,
        cancel,
        cluster_resources,
        get,
        get_actor,
        init,
        is_initialized,
        kill,
        method,
        put,
        remote,
        shutdown,
        timeline,
        wait,
    )
    from ._cpus import default_max_workers
    from ._executor import ActorFactory, Executor
    from ._objects import PutRef
    from ._pool import Pool, ThreadPool
    from .actors.handle import ActorHandle, ActorMethod
    from .actors.options import ActorOptions
    from .actors.pool import ActorPool
    from .harness.session import profile

__version__ = "0.1.0.dev0"

__all__ = [
    "ActorDiedError",
    "ActorError",
    "ActorFactory",
    "ActorHandle",
    "ActorMethod",
    "ActorOptions",
    "ActorPool",
    "Backend",
    "BackendOptions",
    "DeserializationError",
    "Executor",
    "Future",
    "GetTimeoutError",
    "InitializerError",
    "ObjectLostError",
    "ObjectRef",
    "Pool",
    "PoolxError",
    "PutRef",
    "RayTaskError",
    "RemoteClass",
    "RemoteError",
    "RemoteFunction",
    "RemoteTraceback",
    "SerializationError",
    "Statistics",
    "TaskCancelledError",
    "TaskTimeoutError",
    "ThreadPool",
    "WorkerDiedError",
    "__version__",
    "available_backends",
    "available_resources",
    "cancel",
    "cluster_resources",
    "default_max_workers",
    "exceptions",
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "kill",
    "method",
    "profile",
    "put",
    "register_backend",
    "remote",
    "shutdown",
    "timeline",
    "util",
    "wait",
]


# The front doors load on first use, as CPython's concurrent.futures loads its
# executors: ``import poolx`` costs the errors, Future and the backend registry
# (what an ``except`` clause, a type annotation or a backend plugin needs), and
# the first touch of ``poolx.Executor`` loads the executor and what it uses.  A
# worker or actor process, which imports this package before its entry point,
# so loads none of the front ends it never runs.  Name -> module.
_LAZY = {
    **dict.fromkeys(["ActorFactory", "Executor"], "poolx._executor"),
    "default_max_workers": "poolx._cpus",
    **dict.fromkeys(["ActorHandle", "ActorMethod"], "poolx.actors.handle"),
    "ActorOptions": "poolx.actors.options",
    "ActorPool": "poolx.actors.pool",
    "Pool": "poolx._pool",
    "PutRef": "poolx._objects",
    "ThreadPool": "poolx._pool",
    "profile": "poolx.harness.session",  # (the profiling harness: loaded only by poolx.profile)
    **dict.fromkeys(
        ["RemoteClass", "RemoteFunction", "available_resources", "cancel", "cluster_resources", "get",
         "get_actor", "init", "is_initialized", "kill", "method", "put", "remote", "shutdown",
         "timeline", "wait"],
        "poolx._api"),
}
# Ray's namespaces (``ray.util``, ``ray.exceptions``): subpackages loaded on first use.
_SUBPACKAGES = ("exceptions", "util")


def __getattr__(name: str) -> _typing.Any:
    import importlib

    if name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found without __getattr__ next time
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
