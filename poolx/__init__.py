"""poolx: parallel Python on one machine first.

The front door is :class:`Executor`, a drop-in ``concurrent.futures``
executor whose tasks run on a pluggable backend (``processes`` by default,
``threads``, ``serial``).
"""

from ._actor_pool import ActorPool
from ._actors import ActorHandle, ActorMethod, ActorOptions, get_actor
from ._errors import (
    ActorDiedError,
    DeserializationError,
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
    "InitializerError",
    "Pool",
    "PoolxError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "Statistics",
    "TaskCancelledError",
    "TaskTimeoutError",
    "ThreadPool",
    "WorkerDiedError",
    "__version__",
    "available_backends",
    "default_max_workers",
    "get_actor",
    "register_backend",
]
