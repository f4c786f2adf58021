"""Futures inside containers, sent to a worker process: they travel by id.

A future pickled for a worker (inside a list, say) travels as its id; the
driver keeps a weak registry of such futures, and the task that carried one
keeps it alive while it runs.  In the worker it becomes a ``ChildRef``, whose
value ``get`` fetches from the driver (through ``_context.here.client``) when
asked for.

A future made inside a child (by a nested ``.remote()``, an actor call, a
``put`` or any ``concurrent.futures`` future) may leave it too, returned by
the task or passed in a call, as in Ray: a finished one travels by value, a
``put`` as its stored pickle, and one still running is *shared*: the child
tells the driver (``ChildClient.share``), which holds a future of its own
under the child's key (``adopt``) until the child sends the outcome.  The
driver pins it until it has been read once (unpickled in the driver, or
fetched by the child that received it), then holds it weakly like its own.

The pickler (``_serialization``) calls ``reduce_ref`` for every future it
meets; this module pickles nothing itself, so it imports neither
``_serialization`` nor ``_objects`` (where ``put`` and a call's top-level
future arguments are handled).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import pickle
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from . import _context
from ._errors import ObjectLostError
from ._futures import Future

_registry: weakref.WeakValueDictionary[int, cf.Future[Any]] = weakref.WeakValueDictionary()
_ref_ids = itertools.count(1)
_registry_lock = threading.Lock()
# Driver: refs shared by children (by key), pinned until read once: [future, reads left]
_pins: dict[Any, list[Any]] = {}


def reduce_ref(future: cf.Future[Any], pins: list[Any] | None) -> tuple[Any, ...]:
    """How a future pickles for a worker: by id (the driver's), or a ChildRef's own id."""
    if isinstance(future, ChildRef):
        return (child_ref, (future.ref_id,))

    if _context.in_child():
        return _reduce_in_child(future)
    with _registry_lock:
        ref_id = getattr(future, "_poolx_ref_id", None)
        if ref_id is None:
            ref_id = next(_ref_ids)
            future._poolx_ref_id = ref_id  # type: ignore[attr-defined]
            _registry[ref_id] = future
    if pins is not None:
        pins.append(future)
    return (child_ref, (ref_id,))


def _reduce_in_child(future: cf.Future[Any]) -> tuple[Any, ...]:
    """A future made in this child, leaving it: by value if done, else shared through the driver."""
    by_value = getattr(future, "reduce_by_value", None)  # a put() made here (_objects.PutRef)
    if by_value is not None:
        return by_value()
    if future.done():
        if future.cancelled():
            return (done_ref, (None, None))
        error = future.exception()
        return (done_ref, (True, future.result()) if error is None else (False, error))
    share = getattr(_context.here.client, "share", None)
    if share is None:  # a cluster backend's worker: its engine has no way to share it
        raise pickle.PicklingError(
            "a ref made inside a task on this backend can be passed on only as a top-level "
            "argument (it is then replaced by its result): get its value first")
    return (child_ref, (share(future),))


def done_ref(ok: bool | None, value: Any) -> cf.Future[Any]:
    """Unpickling a finished future made in a child: a finished Future (cancelled if ``ok`` is None)."""
    future: Future[Any] = Future()
    if ok is None:
        future.cancel()
        future.set_running_or_notify_cancel()
    elif ok:
        future.set_result(value)
    else:
        future.set_exception(value)
    return future


def lookup(ref_id: Any) -> cf.Future[Any] | None:
    """The driver's future registered as ``ref_id``, if it is still held."""
    return _registry.get(ref_id)


def adopt(key: Any) -> Future[Any]:
    """Driver: a child shares a running future as ``key``; the driver's stand-in, pinned for one read."""
    with _registry_lock:
        pin = _pins.get(key)
        if pin is None:
            future = _registry.get(key)
            if future is None:
                future = Future()
                future.set_running_or_notify_cancel()  # running: it cannot be cancelled from here
                _registry[key] = future
            pin = _pins[key] = [future, 0]
        pin[1] += 1
    return pin[0]


def read_once(key: Any) -> None:
    """Driver: a shared ref was read (unpickled here, or fetched by a child): one pin less."""
    with _registry_lock:
        pin = _pins.get(key)
        if pin is not None:
            pin[1] -= 1
            if pin[1] <= 0:
                del _pins[key]


def child_ref(ref_id: Any) -> cf.Future[Any]:
    """Unpickling a ref: a ChildRef in a worker, the future itself back in the driver."""

    if _context.in_child():
        return ChildRef(ref_id)
    future = _registry.get(ref_id)
    if future is None:
        raise ObjectLostError(f"the ref #{ref_id} sent back to the driver is no longer held there")
    if type(ref_id) is tuple:  # shared by a child (see adopt)
        read_once(ref_id)
    return future


class ChildRef(Future[Any]):
    """A driver's ref received inside a container, in a worker: ``get`` fetches its value."""

    def __init__(self, ref_id: Any) -> None:
        super().__init__()
        self.ref_id = ref_id
        self.requested = False

    def request(self) -> None:
        if not self.requested:
            self.requested = True

            _context.here.client.fetch(self)

    def result(self, timeout: float | None = None) -> Any:
        self.request()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self.request()
        return super().exception(timeout)

    def __repr__(self) -> str:
        return f"<poolx.ChildRef #{self.ref_id}>"


def request(refs: Iterable[cf.Future[Any]]) -> None:
    """Ask the driver for the values of the ChildRefs among ``refs`` (before waiting for them)."""
    for ref in refs:
        if isinstance(ref, ChildRef):
            ref.request()
