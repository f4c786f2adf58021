"""Pickling for everything that crosses a process boundary.

* cloudpickle, so lambdas, closures and functions defined in ``__main__`` or
  interactively work under every start method.  Its ``Pickler`` is the C pickler
  with a ``reducer_override`` hook, so plain data (ints, strings, lists, dicts)
  costs what the stdlib costs; we reuse one pickler per thread because building
  one is most of the cost of ``cloudpickle.dumps`` for a small object
  (1.7 us against 0.5 us, measured on the 2-core CI machine).
* Pickle protocol 5 with out-of-band buffers: a buffer of at least
  ``OOB_MIN_BYTES`` (a numpy array, ``bytes``, ``bytearray``) is not copied into
  the pickle stream; it travels as its own frame and the receiver rebuilds the
  object on top of the received memory.

This module is shared by the driver and the worker and imports neither.
"""

from __future__ import annotations

import io
import linecache
import pickle
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

import cloudpickle

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
        dispatch_table = dict(cloudpickle.Pickler.dispatch_table)
        dispatch_table[types.CodeType] = _code_reduce

    def reducer_override(self, obj: Any) -> Any:
        if (type(obj) is types.FunctionType and obj.__module__ == "__main__"
                and _main_by_reference(obj)):
            return NotImplemented  # the standard pickler saves it as __main__.<name>
        return super().reducer_override(obj)


class _Dump:
    """A pickler writing into a reusable buffer; large buffers kept out of band."""

    def __init__(self) -> None:
        self.file = io.BytesIO()
        self.buffers: list[pickle.PickleBuffer] = []
        self.pickler = _Pickler(self.file, PROTOCOL, buffer_callback=self._on_buffer)
        self.busy = False

    def _on_buffer(self, buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OOB_MIN_BYTES:
            return True  # serialize in band
        self.buffers.append(buf)
        return False

    def run(self, obj: Any) -> tuple[bytes, Sequence[pickle.PickleBuffer]]:
        self.busy = True
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


def dumps(obj: Any) -> tuple[bytes, Sequence[pickle.PickleBuffer]]:
    """Pickle ``obj``; returns the pickle bytes and its out-of-band buffers."""
    dump = _per_thread.dump
    if dump.busy:  # re-entrant use (a __reduce__ that pickles): a fresh pickler
        dump = _Dump()
    return dump.run(obj)


def loads(data: bytes | bytearray | memoryview, buffers: Any = ()) -> Any:
    """Inverse of dumps()."""
    return pickle.loads(data, buffers=buffers)


def cacheable(fn: Any) -> bool:
    """Whether ``fn`` may be pickled once and then referred to by key.

    Only plain functions and builtins qualify: a bound method, a partial or a
    callable instance carries state that may change between calls, so those
    are pickled with each task, as the stdlib does.
    """
    return isinstance(fn, types.FunctionType | types.BuiltinFunctionType)


def unpicklable_argument(args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """Name the first argument that cannot be pickled ("argument 0 (module.Type)"), if any."""
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for name, value in named:
        try:
            dumps(value)
        except Exception:
            return f"{name} ({describe(type(value))})"
    return None


def describe(obj: Any) -> str:
    """A short name for an object in error messages: ``module.qualname`` or its type."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is not None:
        module = getattr(obj, "__module__", None)
        return f"{module}.{name}" if module else str(name)
    return f"{type(obj).__module__}.{type(obj).__qualname__} instance"
