"""Pickling for everything that crosses a process boundary.

* cloudpickle, so lambdas, closures and functions defined in ``__main__`` or
  interactively work under every start method.  Its ``Pickler`` is the C pickler
  with a ``reducer_override`` hook, so plain data (ints, strings, lists, dicts)
  costs what the stdlib costs; we reuse one pickler per thread because building
  one is most of the cost of ``cloudpickle.dumps`` for a small object
  (1.7 us against 0.5 us, measured on the 2-core CI machine).
* Pickle protocol 5 with out-of-band buffers: a buffer of at least
  ``OOB_MIN_BYTES`` (a numpy array's data, a ``bytearray``) is not copied into
  the pickle stream; it travels as its own frame and the receiver rebuilds the
  object on top of the received memory.  Across processes, one of at least
  ``_shm.MIN_BYTES`` goes through shared memory instead (``_shm``).

This module is shared by the driver and the worker and imports neither.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import linecache
import pickle
import sys
import threading
import types
from collections import ChainMap
from collections.abc import Iterable, Sequence
from typing import Any

import cloudpickle

from . import _refs, _shm

PROTOCOL = 5
# Buffers smaller than this are copied into the pickle stream: below ~64 KiB the
# bookkeeping of a separate frame costs more than the memcpy it saves.
OOB_MIN_BYTES = 64 * 1024


def _main_by_reference(fn: types.FunctionType) -> bool:
    """Whether a function of ``__main__`` can travel by reference, as the stdlib sends it.

    Workers import the main script as ``__mp_main__`` (spawn, forkserver) or
    inherit it (fork), so a function defined at its top level is found there
    by name, and shares that module's globals with every other such function:
    an initializer that sets a global is seen by the tasks, as with the stdlib.
    (cloudpickle sends ``__main__`` functions by value, each with its own copy
    of the globals: ray#37705.)  Lambdas, nested functions, functions defined
    under ``if __name__ == "__main__":`` (indented: absent from the workers'
    copy of the module) and interactive code still go by value.
    """
    main = sys.modules.get("__main__")
    if main is None or not getattr(main, "__file__", None):
        return False
    if fn.__qualname__ != fn.__name__ or getattr(main, fn.__name__, None) is not fn:
        return False
    code = fn.__code__
    line = linecache.getline(code.co_filename, code.co_firstlineno)
    return bool(line) and not line[0].isspace()


_cloudpickle_code_reduce = getattr(cloudpickle.cloudpickle, "_code_reduce", None)


def _code_reduce(code: types.CodeType) -> Any:
    """cloudpickle's code reducer, keeping the code's file name.

    cloudpickle 3.1.3 renames the file of every code object it sends by value
    to "<dynamic-code>", so a worker's traceback of a lambda or closure lost
    its source lines (CPython's test_traceback caught it).  Workers run on the
    same machine: with the real file name, linecache finds the source.
    """
    ctor, args = _cloudpickle_code_reduce(code)  # type: ignore[misc]
    return ctor, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


class _Pickler(cloudpickle.Pickler):
    if _cloudpickle_code_reduce is not None:
        # A live view, as cloudpickle's own: a reducer registered with copyreg
        # after this module was imported still counts (a copy froze the table
        # at import, so what pickled depended on when poolx was first used).
        dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)

    pins: list[Any] | None = None  # futures pickled by id (refs in containers), kept by the caller

    def reducer_override(self, obj: Any) -> Any:
        if (type(obj) is types.FunctionType and obj.__module__ == "__main__"
                and _main_by_reference(obj)):
            return NotImplemented  # the standard pickler saves it as __main__.<name>
        if isinstance(obj, cf.Future):
            return _refs.reduce_ref(obj, self.pins)
        return super().reducer_override(obj)


class _Dump:
    """A pickler writing into a reusable buffer; large buffers kept out of band."""

    def __init__(self) -> None:
        self.file = io.BytesIO()
        self.buffers: list[Any] = []
        self.pickler = _Pickler(self.file, PROTOCOL, buffer_callback=self._on_buffer)
        self.busy = False
        self.shm = _shm.NONE

    def _on_buffer(self, buf: pickle.PickleBuffer) -> bool:
        nbytes = buf.raw().nbytes
        if nbytes < OOB_MIN_BYTES:
            return True  # serialize in band
        if _shm.AVAILABLE and self.shm:
            # A view of a shared segment (a put value passed on) goes by reference;
            # a large buffer is copied once into shared memory.
            ref = _shm.lookup(buf)
            if ref is not None:
                self.buffers.append(ref)
                return False
            if self.shm == _shm.SHARED or nbytes >= _shm.MIN_BYTES:  # (put: every buffer)
                stored = _shm.store(buf, self.shm)
                if stored is not None:  # (None: this process has no fd to spare, it goes inline)
                    self.buffers.append(stored)
                    return False
        self.buffers.append(buf)
        return False

    def run(self, obj: Any, shm: int = 0, pins: list[Any] | None = None) -> tuple[bytes, Sequence[Any]]:
        self.busy = True
        self.shm = shm
        self.pickler.pins = pins
        try:
            self.pickler.dump(obj)
            # An empty tuple, not a fresh list, when nothing went out of band: one
            # container fewer per task for the cyclic GC to track (see _futures).
            return self.file.getvalue(), self.buffers or _NO_BUFFERS
        finally:
            self.file.seek(0)
            self.file.truncate()
            self.pickler.clear_memo()
            if self.buffers:
                self.buffers = []
            self.busy = False


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.dump = _Dump()


_per_thread = _PerThread()
_NO_BUFFERS: tuple[pickle.PickleBuffer, ...] = ()


def dumps(obj: Any, shm: int = 0, pins: list[Any] | None = None) -> tuple[bytes, Sequence[Any]]:
    """Pickle ``obj``; returns the pickle bytes and its out-of-band buffers.

    With ``shm`` (``_shm.PRIVATE`` or ``_shm.SHARED``), for a process
    boundary: large buffers go into shared memory (``_shm.ShmBuffer`` items).
    Futures inside ``obj`` pickle as refs; with ``pins``, they are appended
    to it (the caller keeps them alive while the pickle may be read).
    """
    dump = _per_thread.dump
    if dump.busy:  # re-entrant use (a __reduce__ that pickles): a fresh pickler
        dump = _Dump()
    return dump.run(obj, shm, pins)


def loads(data: bytes | bytearray | memoryview, buffers: Any = ()) -> Any:
    """Inverse of dumps(); shared-memory buffers are mapped, not copied."""
    if buffers:
        buffers = [_shm.view(b) for b in buffers]
    return pickle.loads(data, buffers=buffers)


def cacheable(fn: Any) -> bool:
    """Whether ``fn`` may be pickled once and then referred to by key.

    Only plain functions and builtins qualify: a bound method, a partial or a
    callable instance carries state that may change between calls, so those
    are pickled with each task, as the stdlib does.
    """
    return isinstance(fn, types.FunctionType | types.BuiltinFunctionType)


def first_unpicklable(values: Iterable[Any]) -> tuple[int, Any] | None:
    """The position and value of the first of ``values`` that cannot be pickled, if any."""
    for i, value in enumerate(values):
        try:
            dumps(value)
        except (Exception, SystemExit):
            return i, value
    return None


def unpicklable_argument(args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """Name the first argument that cannot be pickled ("argument 0 (module.Type)"), if any."""
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    found = first_unpicklable(value for _, value in named)
    if found is None:
        return None
    i, value = found
    return f"{named[i][0]} ({describe(type(value))})"


def describe(obj: Any) -> str:
    """A short name for an object in error messages: ``module.qualname`` or its type."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is not None:
        module = getattr(obj, "__module__", None)
        return f"{module}.{name}" if module else str(name)
    return f"{type(obj).__module__}.{type(obj).__qualname__} instance"
