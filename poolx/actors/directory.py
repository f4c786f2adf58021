"""The driver's records of its actors: ``Actor``, ``ActorCall``, ``ActorDirectory``.

* ``Actor``: the driver's record of one actor (its class and constructor
  arguments, kept for restarts; its state; the backend's private part).
  Backends start, call and stop it (``Backend.start_actor`` ...); its calls
  wait here for the futures among their arguments.
* ``ActorCall``: one method call on its way to an actor.
* ``ActorDirectory``: the actors of one executor, by id and by name.
* The process's registry of the actors its executors hold (``local_actor``),
  where an unpickled handle finds its actor.

What users hold is in ``handle``; how an actor's instance runs its calls is in
``runner``.  This module is imported by worker processes too (handles are
unpickled there), so it never imports the driver's executor or a backend.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from .._errors import ActorDiedError
from .._futures import Future, Task
from .._objects import dependencies, send_resolved, when_done
from .options import ActorOptions, is_async_class, method_names

_RUNNING = "RUNNING"  # concurrent.futures._base.RUNNING

if TYPE_CHECKING:
    from .._telemetry import Telemetry
    from ..backends import Backend

ALIVE, DEAD = "alive", "dead"


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


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_local_actors)


def local_actor(actor_id: int) -> Actor | None:
    """The actor ``actor_id`` if an executor of this process holds it (None in other processes)."""
    return _local.get(actor_id)


def local_actors() -> list[Actor]:
    """The actors this process's executors hold."""
    return list(_local.values())


