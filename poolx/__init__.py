"""poolx: parallel Python on one machine first.

The front door is :class:`Executor`, a drop-in ``concurrent.futures``
executor whose tasks run on a pluggable backend (``processes`` by default,
``threads``, ``serial``).
"""

from ._errors import (
    DeserializationError,
    InitializerError,
    PoolxError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    WorkerDiedError,
)
from ._executor import Executor, default_max_workers
from ._futures import Future
from ._telemetry import Statistics
from .backends import Backend, BackendOptions, available_backends, register_backend

__version__ = "0.1.0.dev0"

__all__ = [
    "Backend",
    "BackendOptions",
    "DeserializationError",
    "Executor",
    "Future",
    "InitializerError",
    "PoolxError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "Statistics",
    "WorkerDiedError",
    "__version__",
    "available_backends",
    "default_max_workers",
    "register_backend",
]
