"""A joblib batch on its way to a poolx worker: joblib's memory-mapping of large arrays.

loky's contract, which the poolx backend keeps (joblib's docs, "Working with
numerical data in shared memory"):

* an array argument larger than ``max_nbytes`` is written once (per
  ``Parallel`` call, or per ``with Parallel(...)`` block) to a file in
  ``temp_folder`` and reaches the task as an ``np.memmap`` opened with
  ``mmap_mode``; the next batches that pass the same array send only the
  file's name;
* an array that is already an ``np.memmap`` (or a view of one) travels as a
  reference to its file, so a task can write into a ``mode="r+"`` memmap;
* a temporary memmap that a task returns comes back as a regular array;
* the folder belongs to one ``Parallel`` instance and is deleted at the end of
  the call (the ``with`` block for a managed one).

joblib's own reducers and temp-folder manager do the work
(``joblib._memmapping_reducer``, as loky's ``MemmappingExecutor`` uses them).
poolx's pickler is not changed: the batch pickles itself with those reducers
into a payload that poolx then sends as any other argument, and the worker
returns its results through joblib's backward reducer the same way.
Functions and futures inside the batch are pickled by poolx itself (so a
``__main__`` function travels as poolx sends it everywhere else).
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import operator
import pickle
import threading
import types
from collections.abc import Callable
from itertools import chain
from typing import Any

import cloudpickle
from joblib._memmapping_reducer import (  # joblib's own machinery, the same in 1.4 and 1.6
    TemporaryResourcesManager,
    _get_backing_memmap,
    get_memmapping_reducers,
    reduce_array_memmap_backward,
)
from joblib.externals.loky import process_executor

from .. import _context
from .._serialization import dumps as poolx_dumps
from .._serialization import loads as poolx_loads

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy comes with scikit-learn, not with joblib
    np = None  # type: ignore[assignment,unused-ignore]

__all__ = ["Batch", "Memmapping"]

PROTOCOL = 5
# Argument and result types that hold no array: a batch made only of them skips the
# reducers (tiny tasks, the common case, pay nothing for memory-mapping).
_SCALARS = frozenset({int, float, str, bytes, bool, complex, type(None)})
_ARRAYS = (np.ndarray, np.memmap) if np is not None else ()
_NDARRAY = np.ndarray if np is not None else None
_ARGS, _KWARGS = operator.itemgetter(1), operator.itemgetter(2)


class Memmapping:
    """One ``Parallel`` instance's temp folder and joblib's forward reducer.

    The folder (and loky's resource tracker, which joblib's reducers count
    files with) is made only when a first array is written.
    """

    def __init__(self, context_id: str, temp_folder: str | None, max_nbytes: int | None,
                 mmap_mode: str | None, verbose: int) -> None:
        self.context_id = context_id
        self.temp_folder = temp_folder
        self.max_nbytes = max_nbytes
        self._lock = threading.Lock()
        self._manager: TemporaryResourcesManager | None = None
        forward, _ = get_memmapping_reducers(
            temp_folder_resolver=self._folder, max_nbytes=max_nbytes, mmap_mode=mmap_mode or "r",
            verbose=verbose,
            # poolx's workers do not share loky's resource tracker, so they
            # cannot count their uses of a file: the files live until close().
            unlink_on_gc_collect=False)
        self._reducer = forward[np.ndarray]

    def _folder(self) -> str:
        with self._lock:
            if self._manager is None:
                self._manager = TemporaryResourcesManager(self.temp_folder, context_id=self.context_id)
            return self._manager.resolve_temp_folder_name()

    def reduce(self, array: Any) -> Any:
        """joblib's forward reduction for a memmap-backed or large array; the default for the others."""
        if isinstance(_get_backing_memmap(array), np.memmap) or (
                self.max_nbytes is not None and not array.dtype.hasobject
                and array.nbytes > self.max_nbytes):
            return self._reducer(array)
        return NotImplemented  # small: poolx's pickle-5 buffers, as without memory-mapping

    def dump(self, calls: Any) -> tuple[bytes, list[Any]]:
        buffers: list[Any] = []
        return _dump(calls, buffers, self.reduce), buffers

    def close(self) -> None:
        """Delete the folder and its files (the end of the ``Parallel`` call or ``with`` block)."""
        with self._lock:
            manager, self._manager = self._manager, None
        if manager is not None:
            # What joblib's loky backend calls at the same point (terminate).
            # force: no worker counts a use of these files (unlink_on_gc_collect
            # is off), so they go now, without waiting for loky's resource
            # tracker to drop them (which costs joblib a 0.1 s retry).
            manager._clean_temporary_resources(context_id=self.context_id, force=True)


class Batch:
    """A joblib ``BatchedCalls`` as a poolx task."""

    __slots__ = ("calls", "memmapping")

    def __init__(self, calls: Callable[[], list[Any]], memmapping: Memmapping | None = None) -> None:
        self.calls = calls
        self.memmapping = memmapping

    def __call__(self) -> Any:  # in the worker
        _mark_process_worker()
        results = self.calls()
        return results if _plain(results) else BatchResults(results)

    def __reduce__(self) -> Any:  # in the driver, when poolx pickles the task
        if self.memmapping is None or _plain_calls(self.calls):
            return (Batch, (self.calls,))
        try:
            return (_load_batch, self.memmapping.dump(self.calls))
        except Exception:
            # Something in the batch cannot be pickled: let poolx's pickler
            # meet it, so that its error names the culprit as without arrays.
            return (Batch, (self.calls,))


class BatchResults(list[Any]):
    """A batch's results, pickled with joblib's backward reducer (temporary memmaps as arrays).

    A list, so that when one cannot be pickled poolx names it ("item 3 of a BatchResults").
    """

    __slots__ = ()

    def __reduce__(self) -> Any:
        buffers: list[Any] = []
        try:
            return (_load, (_dump(list(self), buffers, _backward), buffers))
        except Exception:
            return (list, (list(self),))  # poolx's pickler then meets what cannot be pickled


def _backward(array: Any) -> Any:
    if _get_backing_memmap(array) is None:
        return NotImplemented
    return reduce_array_memmap_backward(array)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle with an array reducer; functions and futures pickled by poolx."""

    def __init__(self, file: io.BytesIO, buffers: list[Any], arrays: Callable[[Any], Any]) -> None:
        super().__init__(file, PROTOCOL, buffer_callback=buffers.append)
        self.arrays = arrays

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _ARRAYS:
            return self.arrays(obj)
        by_poolx = kind is types.FunctionType and (obj.__module__ == "__main__" or "<" in obj.__qualname__)
        if by_poolx or isinstance(obj, cf.Future):
            # What poolx's pickler does its own way (a __main__ function by
            # reference when it can, a lambda's source file kept for its
            # traceback, futures by id); a module's function goes by reference
            # in both.
            return (poolx_loads, poolx_dumps(obj))
        return super().reducer_override(obj)


def _dump(obj: Any, buffers: list[Any], arrays: Callable[[Any], Any]) -> bytes:
    file = io.BytesIO()
    _Pickler(file, buffers, arrays).dump(obj)
    return file.getvalue()


def _load(payload: bytes, buffers: list[Any]) -> Any:
    return pickle.loads(payload, buffers=buffers)


def _load_batch(payload: bytes, buffers: list[Any]) -> Batch:
    return Batch(_load(payload, buffers))


def _plain(values: Any) -> bool:
    """A list of scalars, or of arrays that no file backs: nothing for the backward reducer."""
    if type(values) is not list:
        return False
    kinds = set(map(type, values))  # (in C: cheaper than pickling the list again)
    if kinds <= _SCALARS:
        return True
    if kinds - _SCALARS != {_NDARRAY}:
        return False
    return all(_get_backing_memmap(v) is None for v in values if type(v) is _NDARRAY)


def _plain_calls(calls: Any) -> bool:
    """Every argument of every call in the batch a scalar (joblib's BatchedCalls.items)."""
    items = getattr(calls, "items", None)
    if type(items) is not list:
        return False
    try:
        if not set(map(type, chain.from_iterable(map(_ARGS, items)))) <= _SCALARS:
            return False
        kwargs = [k for k in map(_KWARGS, items) if k]
    except (TypeError, IndexError):  # not joblib's (func, args, kwargs) triples
        return False
    return all(set(map(type, k.values())) <= _SCALARS for k in kwargs)


_marked = False


def _mark_process_worker() -> None:
    """Tell joblib's multiprocessing backend it runs in a process pool's worker.

    A ``Parallel(backend="multiprocessing")`` inside a loky worker warns and
    runs with ``n_jobs=1`` ("cannot be nested"): joblib sees loky's depth
    counter above 0.  A poolx worker is a process worker at depth 1 too.
    """
    global _marked
    if _marked:
        return
    _marked = True
    if _context.in_child() and process_executor._CURRENT_DEPTH == 0:
        process_executor._CURRENT_DEPTH = 1
