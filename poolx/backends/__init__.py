"""Backends: where tasks run.

A backend is one small class.  The ``Executor`` builds ``Task`` records and
hands them to ``submit``; the backend runs them and completes each task's
future (and calls ``telemetry.task_done``).  What a backend cannot do is said
by its class flags, never found out by ``isinstance``.

Built in: ``serial`` (in the calling thread), ``threads`` and ``processes``
(poolx's own engine, the default).  Third-party packages add backends through
the ``poolx.backends`` entry-point group, each entry naming a ``Backend``
subclass.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .._futures import Task
from .._telemetry import Telemetry

if TYPE_CHECKING:
    from ..actors.directory import Actor, ActorCall, ActorDirectory

__all__ = [
    "Backend",
    "BackendOptions",
    "Task",
    "Telemetry",
    "available_backends",
    "get_backend",
    "register_backend",
]


@dataclass
class BackendOptions:
    """What the ``Executor`` passes to a backend's constructor."""

    max_workers: int
    mp_context: Any = None
    initializer: Any = None
    initargs: tuple[Any, ...] = ()
    max_tasks_per_child: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the executor's actors (by id and name); backends that run actors use it
    actors: ActorDirectory | None = None
    #: an object with ``start(label)``/``stop()`` run in every worker and actor
    #: process at its start and end (the profiling harness's profilers);
    #: backends whose workers are processes honour it, others ignore it
    child_hook: Any = None
    #: seconds a task may run before its worker is killed and the task fails
    #: with TaskTimeoutError (backends with supports_timeouts)
    task_timeout: float | None = None
    #: resident bytes above which a worker retires after its current batch
    #: (backends with supports_worker_restart)
    max_memory: int | None = None
    #: seconds a worker may take to start, its initializer included; then it is
    #: killed and the executor breaks with InitializerError (supports_timeouts)
    init_timeout: float | None = None


class Backend(ABC):
    """The protocol every backend implements."""

    name: ClassVar[str]
    #: tasks run in other processes: callables and arguments are pickled
    uses_processes: ClassVar[bool] = False
    #: a dead worker is replaced and only its task fails
    supports_worker_restart: ClassVar[bool] = False
    #: terminate_workers() / kill_workers() and stop_tasks() can stop running tasks
    supports_terminate: ClassVar[bool] = False
    #: max_tasks_per_child is honoured
    supports_max_tasks_per_child: ClassVar[bool] = False
    #: large buffers cross through shared memory (poolx.put, issue 7)
    supports_shared_memory: ClassVar[bool] = False
    #: per-task timeouts that stop the running task
    supports_timeouts: ClassVar[bool] = False
    #: tasks run synchronously in the submitting thread (map() then runs lazily)
    runs_in_caller: ClassVar[bool] = False
    #: runs actors (Executor.actor)
    supports_actors: ClassVar[bool] = False
    #: actors' max_restarts / max_task_retries are honoured
    supports_actor_restarts: ClassVar[bool] = True
    #: max_retries (rerunning a task whose worker died) is honoured
    supports_retries: ClassVar[bool] = True
    #: actors can form a poolx.collective group (their calls run at once, on one machine)
    supports_collectives: ClassVar[bool] = False

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        self.options = options
        self.telemetry = telemetry

    @abstractmethod
    def submit(self, task: Task) -> None:
        """Start ``task``; complete ``task.future`` when it finishes.  Never blocks long."""

    @abstractmethod
    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Stop accepting work; with ``wait``, return once everything has finished."""

    def stop_tasks(self, tasks: list[Task]) -> None:
        """Stop ``tasks``: cancel those not started; backends with
        ``supports_terminate`` also stop those running (their futures fail with
        ``TaskCancelledError``).  Here: only the not-started ones."""
        for task in tasks:
            task.future.cancel()

    def prestart(self) -> None:  # noqa: B027 (optional: backends whose workers start on demand)
        """Start every worker now, and keep them all alive (multiprocessing.Pool's
        way).  Here: nothing (the workers are threads, or the caller itself)."""

    def wait_ready(self, timeout: float) -> bool:
        """After ``prestart``: wait at most ``timeout`` s for every worker to be
        ready (its initializer run); True if they are.  Here: at once."""
        return True

    def terminate_workers(self, kill: bool) -> None:
        """Stop every worker now (SIGTERM, or SIGKILL with ``kill``)."""
        raise NotImplementedError(f"the {self.name!r} backend cannot terminate its workers")

    def wait_closed(self, timeout: float) -> bool:
        """After ``shutdown``: wait at most ``timeout`` seconds for the work left
        and the workers to be gone; True if they are (backends with
        ``supports_terminate``: the interpreter's exit bounds its wait with it,
        then kills what is left)."""
        raise NotImplementedError(f"the {self.name!r} backend cannot bound its wait for its workers")

    # -- actors (backends with supports_actors) -----------------------------------

    def start_actor(self, actor: Actor) -> None:
        """Start ``actor`` (build its instance); never blocks on the constructor."""
        raise NotImplementedError(f"the {self.name!r} backend does not run actors")

    def call_actor(self, actor: Actor, call: ActorCall) -> None:
        """Hand ``call`` to the actor; complete its future when it has run."""
        raise NotImplementedError(f"the {self.name!r} backend does not run actors")

    def stop_actor(self, actor: Actor, kill: bool, restart: bool) -> None:
        """Stop ``actor``: after the calls made so far, or at once with ``kill``
        (pending calls fail with ``ActorDiedError``); with ``restart``, start it
        again if its ``max_restarts`` allows."""
        raise NotImplementedError(f"the {self.name!r} backend does not run actors")

    def wait_actor(self, actor: Actor, timeout: float | None) -> None:  # noqa: B027 (optional)
        """Wait (at most ``timeout`` seconds) for a stopped actor to be gone."""

    def portable_handle(self, actor: Actor) -> Any:
        """What a handle to ``actor`` carries into a task, for backends whose
        workers cannot reach the driver (the cluster engines): an object with
        ``call(label, method, args, kwargs) -> Future``; None otherwise."""
        return None

    def actor_pid(self, actor: Actor) -> int | None:
        """The process id of ``actor``'s current process (None when in-process)."""
        return None

    def worker_counts(self) -> dict[str, int]:
        """``workers_alive``, ``workers_started``, ``workers_restarted``, ``workers_died``."""
        return {"workers_alive": 0, "workers_started": 0, "workers_restarted": 0, "workers_died": 0}

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (empty for in-process backends)."""
        return []


_BUILTIN = {
    "serial": "poolx.backends.serial:SerialBackend",
    "threads": "poolx.backends.threads:ThreadBackend",
    "processes": "poolx.backends.processes._backend:ProcessBackend",
    "dask": "poolx.backends.dask:DaskBackend",
    "ray": "poolx.backends.ray:RayBackend",
}
_registry: dict[str, type[Backend]] = {}


def register_backend(name: str, backend: type[Backend]) -> None:
    """Make ``backend`` available as ``Executor(backend=name)``."""
    if not (isinstance(backend, type) and issubclass(backend, Backend)):
        raise TypeError(f"register_backend({name!r}, ...) needs a Backend subclass, got {backend!r}")
    _registry[name] = backend


def get_backend(name: str) -> type[Backend]:
    """Return the backend class registered as ``name``."""
    if name in _registry:
        return _registry[name]
    target = _BUILTIN.get(name) or _entry_points().get(name)
    if target is None:
        known = ", ".join(sorted(available_backends()))
        raise ValueError(f"unknown backend {name!r}; available backends: {known}")
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    register_backend(name, cls)
    return cls


def available_backends() -> list[str]:
    """Names accepted by ``Executor(backend=...)``."""
    return sorted({*_BUILTIN, *_registry, *_entry_points()})


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="poolx.backends")}
