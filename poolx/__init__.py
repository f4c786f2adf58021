"""poolx: parallel Python on one machine first.

The front door is :class:`Executor`, a drop-in ``concurrent.futures``
executor whose tasks run on a pluggable backend (``processes`` by default,
``threads``, ``serial``).  ``poolx.remote``, ``get``, ``wait``, ``put`` and
friends are Ray's API on top of it (``import poolx as ray``).
"""

from ._actor_pool import ActorPool
from ._actors import ActorHandle, ActorMethod, ActorOptions
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
    put,
    remote,
    shutdown,
    wait,
)
from ._errors import (
    ActorDiedError,
    DeserializationError,
    GetTimeoutError,
    InitializerError,
    PoolxError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskCancelledError,
    TaskTimeoutError,
    WorkerDiedError,
)
from ._executor import ActorFactory, Executor, default_max_workers
from ._futures import Future
from ._objects import ObjectRef, PutRef
from ._pool import Pool, ThreadPool
from ._telemetry import Statistics
from .backends import Backend, BackendOptions, available_backends, register_backend

__version__ = "0.1.0.dev0"

__all__ = [
    "ActorDiedError",
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
    "ObjectRef",
    "Pool",
    "PoolxError",
    "PutRef",
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
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "kill",
    "put",
    "register_backend",
    "remote",
    "shutdown",
    "wait",
]
