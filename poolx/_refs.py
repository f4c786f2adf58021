"""Futures inside containers, sent to a worker process: they travel by id.

A future pickled for a worker (inside a list, say) travels as its id; the
driver keeps a weak registry of such futures, and the task that carried one
keeps it alive while it runs.  In the worker it becomes a ``ChildRef``, whose
value ``get`` fetches from the driver (through ``_context.here.client``) when
asked for.

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
from ._futures import Future

_registry: weakref.WeakValueDictionary[int, cf.Future[Any]] = weakref.WeakValueDictionary()
_ref_ids = itertools.count(1)
_registry_lock = threading.Lock()


def reduce_ref(future: cf.Future[Any], pins: list[Any] | None) -> tuple[Any, ...]:
    """How a future pickles for a worker: by id (the driver's), or a ChildRef's own id."""
    if isinstance(future, ChildRef):
        return (child_ref, (future.ref_id,))

    if _context.in_child():
        raise pickle.PicklingError(
            "a future made inside a task can be passed to another task only as a top-level "
            "argument (it is then replaced by its result), not inside a container")
    with _registry_lock:
        ref_id = getattr(future, "_poolx_ref_id", None)
        if ref_id is None:
            ref_id = next(_ref_ids)
            future._poolx_ref_id = ref_id  # type: ignore[attr-defined]
            _registry[ref_id] = future
    if pins is not None:
        pins.append(future)
    return (child_ref, (ref_id,))


def lookup(ref_id: int) -> cf.Future[Any] | None:
    """The driver's future registered as ``ref_id``, if it is still held."""
    return _registry.get(ref_id)


def child_ref(ref_id: int) -> cf.Future[Any]:
    """Unpickling a ref: a ChildRef in a worker, the future itself back in the driver."""

    if _context.in_child():
        return ChildRef(ref_id)
    future = _registry.get(ref_id)
    if future is None:
        raise ValueError(f"the ref #{ref_id} sent back to the driver is no longer held there")
    return future


class ChildRef(Future[Any]):
    """A driver's ref received inside a container, in a worker: ``get`` fetches its value."""

    def __init__(self, ref_id: int) -> None:
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
