"""What users hold: ``ActorHandle`` and ``ActorMethod``; and how the rest of poolx reads a handle.

``handle.method.remote(*args, **kwargs)`` calls the actor and returns a poolx
``Future``.  A handle pickles to the actor's id; unpickled in a task or in
another actor, of any executor of the driver's process, it calls through that
process's connection to its driver (``_context.here.client``; the driver
passes a call for another executor's actor to that executor), or on a
cluster's worker through the engine's own way (``Backend.portable_handle``).

The rest of poolx (the executor, the Ray-style API, collectives) reads a
handle through the functions at the end of this module (``handle_of``,
``owner_of``, ``actor_id``, ``label_of``, ``call_method``), never through its
attributes: a handle's attribute names are its actor's methods
(``handle.label`` is the actor's ``label`` method), so it has none of its own.

Imported by worker processes too; it never imports the driver's executor or a
backend.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .. import _context
from .._errors import PoolxError
from .._futures import Future
from .directory import ALIVE, Actor, local_actor, local_actors

T = TypeVar("T")


class ActorHandle(Generic[T]):
    """A reference to a live actor: ``handle.method.remote(*args, **kwargs)``.

    Picklable: pass it to a task (``submit``, ``map``) or to another actor, of
    any executor of this program, and calls made there reach the same actor.  Usable as a
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
            actor = local_actor(self._id)
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
            "program that created the actor."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        caller = self._caller
        actor = self._actor or local_actor(self._id)
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
        actor = self._actor or local_actor(self._id)
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
    for actor in local_actors():
        if actor.name == name and actor.status == ALIVE and actor.directory.by_name.get(name) is actor:
            found.append(actor)
    if not found:
        raise ValueError(f"no live actor named {name!r} in this process's executors")
    if len(found) > 1:
        raise ValueError(f"{len(found)} executors have an actor named {name!r}; "
                         "use executor.get_actor(name) to choose")
    return handle_of(found[0])


# -- the handle's interface for the rest of poolx ----------------------------------------


def handle_of(actor: Actor) -> ActorHandle[Any]:
    """A new handle to ``actor`` (the driver's record), bound to it."""
    return ActorHandle(actor.id, actor.label, actor.name, actor.methods, actor)


def owner_of(handle: ActorHandle[Any], look_up: bool = True) -> Actor | None:
    """The driver's record of the handle's actor, if this process holds it.

    A handle made here is bound to its record; with ``look_up``, one
    unpickled here is found in this process's executors.  None elsewhere (in
    a worker), or once the actor is dead and forgotten.
    """
    if handle._actor is not None or not look_up:
        return handle._actor
    return local_actor(handle._id)


def actor_id(handle: ActorHandle[Any]) -> int:
    """The id of the handle's actor (unique in the driver's process)."""
    return handle._id


def label_of(handle: ActorHandle[Any]) -> str:
    """The actor's label for messages: ``Class#id``, and its name if it has one."""
    return handle._label


def call_method(handle: ActorHandle[Any], method: str, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Future[Any]:
    """``handle.<method>.remote(*args, **kwargs)``, for any method name (``runner.CALL_ON_INSTANCE`` too)."""
    return handle._call(method, args, kwargs)

