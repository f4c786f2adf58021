"""Actors: a worker with state.

``Executor.actor(Cls, *args, **kwargs)`` starts an actor on the executor's
backend and returns an ``ActorHandle``; ``handle.method.remote(*a, **kw)``
runs ``instance.method(*a, **kw)`` there and returns a poolx ``Future``.

Pieces:

* ``ActorOptions``: name, restarts, concurrency, given through
  ``Executor.options(...)`` so they never clash with the constructor's own
  keyword arguments.
* ``Actor``: the driver's record of one actor (its class and constructor
  arguments, kept for restarts; its state; the backend's private part).
* ``ActorHandle`` / ``ActorMethod``: what users hold.  A handle pickles to the
  actor's id; unpickled in a task or in another actor of the same executor, it
  calls through that process's connection to the driver.
* ``ActorDirectory``: the actors of one executor, by id and by name.

This module is imported by worker processes too (handles are unpickled
there), so it never imports the driver's modules at import time.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import deque
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _context
from ._errors import ActorDiedError, PoolxError
from ._futures import Future, Task

_RUNNING = "RUNNING"  # concurrent.futures._base.RUNNING

if TYPE_CHECKING:
    from ._telemetry import Telemetry
    from .backends import Backend

T = TypeVar("T")

ALIVE, DEAD = "alive", "dead"


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


class ActorCall(Task):
    """One method call on its way to an actor (a ``Task`` whose ``fn`` is its label)."""

    __slots__ = ("method",)

    def __init__(self, actor: Actor, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(actor.method_label(method), args, kwargs)  # type: ignore[arg-type]
        self.method = method
        self.worker = -actor.id  # the actor's lane in the telemetry


class Actor:
    """The driver's record of one actor."""

    def __init__(self, actor_id: int, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: ActorOptions, directory: ActorDirectory) -> None:
        from ._actor_core import is_async_class, method_names

        self.id = actor_id
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self.name = options.name
        self.label = f"{cls.__qualname__}#{actor_id}" + (f" ({options.name!r})" if options.name else "")
        self.methods = method_names(cls)
        self.is_async = is_async_class(cls)
        if options.call_timeout is not None and self.is_async:
            raise ValueError(f"call_timeout needs an actor that runs one call at a time; {cls.__qualname__} "
                             "has async methods, whose calls interleave (use asyncio.wait_for in them)")
        self.directory = directory
        self.status = ALIVE
        self.restarts = 0
        self.death: ActorDiedError | None = None
        self.lock = threading.Lock()
        self.impl: Any = None  # the backend's own state for this actor
        self._labels: dict[str, str] = {}
        # Calls waiting for futures among their arguments, and the calls after
        # them (kept back so that calls still run in the order they were made).
        self.held: deque[tuple[ActorCall, list[Any]]] = deque()
        self.hold_lock = threading.Lock()
        self.releasing = False
        self.release_again = False

    @property
    def max_concurrency(self) -> int | None:
        return self.options.max_concurrency

    def method_label(self, method: str) -> str:
        label = self._labels.get(method)
        if label is None:
            label = self._labels[method] = f"{self.cls.__qualname__}.{method}"
        return label

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        directory = self.directory
        call = ActorCall(self, method, args, kwargs)
        directory.telemetry.actor_call_submitted()
        # Handed to the actor at once, so not cancellable: RUNNING from the start.
        # (set_running_or_notify_cancel() without its lock and notify: nobody
        # else can see this future yet.)
        call.future._state = _RUNNING
        if self.status == DEAD:
            self.fail(call, self.died_error())
            return call.future
        from ._objects import dependencies, when_done

        deps = dependencies(args, kwargs)
        if deps or self.held:
            with self.hold_lock:
                self.held.append((call, deps))
            when_done(deps, self.release_held)
            return call.future
        try:
            directory.backend.call_actor(self, call)
        except BaseException as exc:  # e.g. an argument that cannot be pickled: raised here
            if not call.future.done():
                self.fail(call, exc)
            raise
        return call.future

    def release_held(self) -> None:
        """Send the held calls whose arguments are ready, in the order they were made."""
        from ._objects import send_resolved

        def send(call: ActorCall, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            call.args, call.kwargs = args, kwargs
            if self.status == DEAD:
                raise self.died_error()
            self.directory.backend.call_actor(self, call)

        with self.hold_lock:
            if self.releasing:
                self.release_again = True  # the thread releasing now looks again
                return
            self.releasing = True
        while True:
            with self.hold_lock:
                if not self.held or not all(d.done() for d in self.held[0][1]):
                    if self.release_again:
                        self.release_again = False
                        continue
                    self.releasing = False
                    return
                call, deps = self.held.popleft()
            error = send_resolved(deps, call.args, call.kwargs, self.directory.backend.uses_processes,
                                  f"{call.fn}()", functools.partial(send, call))
            if error is not None and not call.future.done():
                self.fail(call, error)

    # -- what backends call -----------------------------------------------------

    def may_restart(self) -> bool:
        """Whether a crash may be followed by a restart; counts the restart if so."""
        limit = self.options.max_restarts
        if self.directory.closed or (limit != -1 and self.restarts >= limit):
            return False
        self.restarts += 1
        self.directory.telemetry.actor_restarted()
        return True

    def may_retry(self, call: ActorCall) -> bool:
        limit = self.options.max_task_retries
        if limit != -1 and call.retries >= limit:
            return False
        call.retries += 1
        return True

    def mark_dead(self, error: ActorDiedError) -> None:
        """The actor is gone for good: later calls fail with ``error``; its name is free again."""
        if self.status == DEAD:
            return
        self.status = DEAD
        self.death = error
        self.directory.forget(self)
        self.directory.telemetry.actor_ended(self.id)
        self.args, self.kwargs = (), {}  # kept for restarts only

    def died_error(self) -> ActorDiedError:
        death = self.death
        if death is None:
            return ActorDiedError(f"the actor {self.label} is dead", actor=self.label)
        error = ActorDiedError(str(death), actor=death.actor, exitcode=death.exitcode, pid=death.pid)
        error.__cause__ = death.__cause__
        return error

    def complete(self, call: ActorCall, ok: bool, value: Any) -> None:
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)
        self.directory.telemetry.task_done(call, ok)

    def fail(self, call: ActorCall, error: BaseException) -> None:
        import time

        call.t_done = time.perf_counter()
        self.complete(call, False, error)


class ActorDirectory:
    """The actors of one executor: by id, and by name for the named ones."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.backend: Backend = None  # type: ignore[assignment]  # set by the Executor
        self.lock = threading.Lock()
        self.by_id: dict[int, Actor] = {}
        self.by_name: dict[str, Actor] = {}
        self.closed = False

    def create(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: ActorOptions) -> tuple[Actor, bool]:
        """A new actor, or (with ``get_if_exists``) the live one of that name; True if new."""
        with self.lock:
            if self.closed:
                raise RuntimeError("cannot create actors after the executor was shut down")
            if options.name is not None:
                existing = self.by_name.get(options.name)
                if existing is not None:
                    if options.get_if_exists:
                        return existing, False
                    raise ValueError(
                        f"an actor named {options.name!r} already exists ({existing.label}); "
                        "use executor.get_actor(name) to reach it, pass get_if_exists=True "
                        "to options(), or kill it first"
                    )
            actor = Actor(_next_id(), cls, args, kwargs, options, self)
            self.by_id[actor.id] = actor
            if options.name is not None:
                self.by_name[options.name] = actor
        _local[actor.id] = actor
        self.telemetry.actor_started(actor.id, actor.label)
        return actor, True

    def close(self) -> None:
        """No new actors, no restarts: the executor is shutting down."""
        self.closed = True

    def forget(self, actor: Actor) -> None:
        with self.lock:
            self.by_id.pop(actor.id, None)
            if actor.name is not None and self.by_name.get(actor.name) is actor:
                del self.by_name[actor.name]

    def get(self, name: str) -> Actor:
        with self.lock:
            actor = self.by_name.get(name)
            known = sorted(self.by_name)
        if actor is None:
            raise ValueError(
                f"no live actor named {name!r}"
                + (f"; the named actors are: {', '.join(map(repr, known))}" if known else
                   "; this executor has no named actor (create one with "
                   "executor.options(name=...).actor(Cls))")
            )
        return actor

    def live(self) -> list[Actor]:
        with self.lock:
            return list(self.by_id.values())


_ids = iter(range(1, 1 << 62))
_ids_lock = threading.Lock()


def _next_id() -> int:
    with _ids_lock:
        return next(_ids)


# Actors living in this process's executors, by id: an unpickled handle finds
# its actor here.  Emptied in a forked child, whose copies would be dead ends.
_local: weakref.WeakValueDictionary[int, Actor] = weakref.WeakValueDictionary()


def _forget_local_actors() -> None:
    global _local
    _local = weakref.WeakValueDictionary()


if hasattr(__import__("os"), "register_at_fork"):
    __import__("os").register_at_fork(after_in_child=_forget_local_actors)


class ActorHandle(Generic[T]):
    """A reference to a live actor: ``handle.method.remote(*args, **kwargs)``.

    Picklable: pass it to a task (``submit``, ``map``) or to another actor of the
    same executor, and calls made there reach the same actor.  Usable as a
    context manager: leaving the block releases the actor (the calls made so
    far finish, then it stops).
    """

    def __init__(self, actor_id: int, label: str, name: str | None, methods: frozenset[str],
                 actor: Actor | None = None, caller: Any = None) -> None:
        self._id = actor_id
        self._label = label
        self._name = name
        self._methods = methods
        self._actor = actor
        # On a cluster's worker: the engine's way to the actor (Backend.portable_handle)
        self._caller = caller

    @classmethod
    def _of(cls, actor: Actor) -> ActorHandle[Any]:
        return cls(actor.id, actor.label, actor.name, actor.methods, actor)

    def __getattr__(self, method: str) -> ActorMethod:
        if method.startswith("__") and method != "__call__":
            raise AttributeError(method)
        if method not in self._methods:
            raise AttributeError(
                f"the actor {self._label} has no method {method!r}; its methods: "
                f"{', '.join(sorted(self._methods)) or '(none)'}. (Attributes cannot be read "
                "through a handle: add a method that returns them.)"
            )
        bound = self.__dict__[method] = ActorMethod(self, method)  # found without __getattr__ next time
        return bound

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        actor = self._actor
        if actor is None:
            actor = _local.get(self._id)
            if actor is not None:
                self._actor = actor
        if actor is not None:
            return actor.call(method, args, kwargs)
        if self._caller is not None:
            return self._caller.call(self._label, method, args, kwargs)
        client = _context.here.client
        if client is not None:
            return client.call(self._id, self._label, method, args, kwargs)  # type: ignore[no-any-return,unused-ignore]
        raise PoolxError(
            f"the actor handle {self._label} cannot be used in this process: it belongs to an "
            "executor of another process.  Pass handles only to tasks and actors of the "
            "executor that created the actor."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        caller = self._caller
        actor = self._actor or _local.get(self._id)
        if actor is not None and caller is None:
            caller = actor.directory.backend.portable_handle(actor)
        if caller is not None:
            return (ActorHandle, (self._id, self._label, self._name, self._methods, None, caller))
        return (ActorHandle, (self._id, self._label, self._name, self._methods))

    def __repr__(self) -> str:
        return f"<ActorHandle {self._label}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._id == self._id

    def __hash__(self) -> int:
        return hash(("poolx.ActorHandle", self._id))

    def __enter__(self) -> ActorHandle[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def release(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the actor once the calls made so far have run; later calls fail.

        With ``wait``, return once it has stopped (at most ``timeout`` seconds).
        Only the process that created the actor can release it.
        """
        actor = self._actor or _local.get(self._id)
        if actor is None:
            raise PoolxError(f"the actor {self._label} can only be released by the executor that created it")
        actor.directory.backend.stop_actor(actor, kill=False, restart=False)
        if wait:
            actor.directory.backend.wait_actor(actor, timeout)


class ActorMethod:
    """``handle.method``: call it with ``.remote(*args, **kwargs)``."""

    __slots__ = ("_handle", "_method")

    def __init__(self, handle: ActorHandle[Any], method: str) -> None:
        self._handle = handle
        self._method = method

    def remote(self, *args: Any, **kwargs: Any) -> Future[Any]:
        """Call the method on the actor; returns a Future for its result."""
        return self._handle._call(self._method, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor methods are called with .remote(): use "
            f"{self._handle._label.split('#')[0]}.{self._method}.remote(...) (it returns a Future)"
        )

    def __repr__(self) -> str:
        return f"<ActorMethod {self._handle._label}.{self._method}>"


def get_actor(name: str) -> ActorHandle[Any]:
    """A handle to the live actor called ``name``.

    Inside a task or an actor of the processes backend: the actor of that name
    in the executor running it.  In the driver (and in tasks of the serial and
    threads backends): the actor of that name in this process's executors.
    """
    client = _context.here.client
    if client is not None:
        return client.get_actor(name)  # type: ignore[no-any-return,unused-ignore]
    found = []
    for actor in list(_local.values()):
        if actor.name == name and actor.status == ALIVE and actor.directory.by_name.get(name) is actor:
            found.append(actor)
    if not found:
        raise ValueError(f"no live actor named {name!r} in this process's executors")
    if len(found) > 1:
        raise ValueError(f"{len(found)} executors have an actor named {name!r}; "
                         "use executor.get_actor(name) to choose")
    return ActorHandle._of(found[0])


def handle_of(actor: Actor) -> ActorHandle[Any]:
    return ActorHandle._of(actor)

