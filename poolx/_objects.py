"""Object references: ``put``, and futures passed as arguments (dependencies).

* ``ObjectRef`` is poolx's ``Future``: a task's future and a ``put`` are both
  refs, as in Ray, and ``get``/``wait`` accept either.
* ``put(obj)`` pickles ``obj`` once (a snapshot: changing ``obj`` afterwards
  changes nothing) into a ``PutRef``.  Passed to a task as an argument, the
  stored pickle travels as it is (``Prepickled``); the worker unpickles it
  and the driver never pickles the object again.
* A future passed as a *top-level* argument of a task or an actor call is a
  dependency: the call is held until every such future is done, then sent
  with each future replaced by its result (``resolve``).  A failed dependency
  fails the call with that error; a future nested in a container is passed
  as it is.

Futures inside containers (not top-level arguments) travel by id instead:
``_refs``.  Imported by worker processes too (``load_prepickled``), so it
imports nothing from the driver's side.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import pickle
import threading
from collections.abc import Callable, Iterable
from typing import Any

from . import _serialization as ser
from . import _shm
from ._errors import TaskCancelledError
from ._futures import Future
from ._refs import ChildRef as ChildRef
from ._refs import lookup as lookup
from ._refs import request as request

ObjectRef = Future


class PutRef(Future[Any]):
    """The ref ``put(obj)`` returns: a finished future holding ``obj``'s pickle.

    ``result()`` unpickles a fresh copy each time: numpy arrays in it are
    read-only (they are views of the stored bytes), as Ray's are.
    """

    def __init__(self, obj: Any, shm: int = _shm.NONE) -> None:
        super().__init__()
        payload, bufs = ser.dumps(obj, shm)
        # The snapshot must not change with obj: large buffers are copies in
        # shared memory (with ``shm``), or copied to bytes here.
        #: the pickled value and its buffers, made once: sent as they are (the driver's ref replies)
        self.blob: tuple[bytes, tuple[Any, ...]] = (
            payload, tuple(b if _shm.is_shm(b) else b.raw().tobytes() for b in bufs))
        self.nbytes = len(payload) + sum(len(b) for b in self.blob[1])
        self._state = "FINISHED"

    def result(self, timeout: float | None = None) -> Any:
        payload, bufs = self.blob
        return ser.loads(payload, bufs)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return None

    def prepickled(self) -> Prepickled:
        return Prepickled(*self.blob)

    def reduce_by_value(self) -> tuple[Any, ...]:
        """How a ``put`` made in a child leaves it (returned, or passed in a container): its stored
        pickle, out of band, rebuilt as a PutRef on the other side (see ``_refs``)."""
        payload, bufs = self.blob
        return (_put_ref_of, (payload, *(pickle.PickleBuffer(_shm.view(b)) for b in bufs)))

    def __repr__(self) -> str:
        return f"<poolx.PutRef {self.nbytes} bytes>"


class Prepickled:
    """A value already pickled: pickling it again embeds the stored pickle as it is."""

    __slots__ = ("bufs", "payload")

    def __init__(self, payload: bytes, bufs: tuple[Any, ...]) -> None:
        self.payload = payload
        self.bufs = bufs

    def __reduce__(self) -> tuple[Any, ...]:
        # Out-of-band again: bytes cross without being copied into the outer
        # pickle, and a shared-memory buffer is found by the outer pickler
        # (_shm.lookup) and sent by reference.
        return (load_prepickled, (self.payload, *(pickle.PickleBuffer(_shm.view(b)) for b in self.bufs)))


def _put_ref_of(payload: bytes, *bufs: Any) -> PutRef:
    ref = PutRef.__new__(PutRef)
    Future.__init__(ref)
    ref.blob = (payload, tuple(b if _shm.is_shm(b) else memoryview(b).tobytes() for b in bufs))
    ref.nbytes = len(payload) + sum(len(b) for b in ref.blob[1])
    ref._state = "FINISHED"
    return ref


def load_prepickled(payload: bytes, *bufs: Any) -> Any:
    return ser.loads(payload, bufs)


def dependencies(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[cf.Future[Any]]:
    """The futures among the top-level arguments (each once), in argument order."""
    found: list[cf.Future[Any]] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, cf.Future) and not any(value is f for f in found):
            found.append(value)
    return found


def failed_dependency(deps: Iterable[cf.Future[Any]], what: str) -> BaseException | None:
    """The error a call must fail with because a dependency failed or was cancelled, if any."""
    for dep in deps:
        if dep.cancelled():
            return TaskCancelledError(f"an argument of {what} is the future of a task that was cancelled")
        error = dep.exception()
        if error is not None:
            return _fresh(error)
    return None


def resolve(args: tuple[Any, ...], kwargs: dict[str, Any],
            prepickled: bool) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Replace each top-level future by its result (all must be done and have succeeded).

    With ``prepickled`` (the task will be pickled), a ``put`` ref becomes its
    stored pickle, so the object is not pickled again.
    """

    def value(v: Any) -> Any:
        if not isinstance(v, cf.Future):
            return v
        if prepickled and isinstance(v, PutRef):
            return v.prepickled()
        return v.result()

    return tuple(value(a) for a in args), {k: value(v) for k, v in kwargs.items()}


def send_resolved(deps: list[cf.Future[Any]], args: tuple[Any, ...], kwargs: dict[str, Any],
                  prepickled: bool, what: str,
                  send: Callable[[tuple[Any, ...], dict[str, Any]], None]) -> BaseException | None:
    """Once ``deps`` are done: ``send(args, kwargs)`` with the futures resolved.

    Returns the error the call must fail with instead: a failed or cancelled
    dependency's, or what ``send`` raised (a result that cannot be pickled for
    the next task, say); None when it was sent.
    """
    error = failed_dependency(deps, what)
    if error is not None:
        return error
    try:
        send(*resolve(args, kwargs, prepickled))
    except BaseException as exc:
        return exc
    return None


def when_done(deps: list[cf.Future[Any]], callback: Callable[[], None]) -> None:
    """Call ``callback()`` once every future in ``deps`` is done (at once if they are)."""
    remaining = [len(deps)]
    lock = threading.Lock()

    def one_done(_f: cf.Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            callback()

    for dep in deps:
        dep.add_done_callback(one_done)


def _fresh(error: BaseException) -> BaseException:
    """A copy of a dependency's exception for each dependent: one exception
    object raised from several threads would mix their tracebacks."""
    try:
        fresh = copy.copy(error)
        fresh.__cause__ = error.__cause__
        fresh.__traceback__ = None
    except Exception:  # (an exception that cannot be copied or changed: a frozen dataclass)
        return error
    return fresh
