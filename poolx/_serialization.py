"""Pickling for everything that crosses a process boundary.

* cloudpickle, so lambdas, closures and functions defined in ``__main__`` or
  interactively work under every start method.  Its ``Pickler`` is the C pickler
  with a ``reducer_override`` hook, so plain data (ints, strings, lists, dicts)
  costs what the stdlib costs; we reuse one pickler per thread because building
  one is most of the cost of ``cloudpickle.dumps`` for a small object
  (1.7 us against 0.5 us, measured on the 2-core CI machine).
* The functions of the driver's script travel by value (no child runs the
  script) yet share one namespace in each worker, as the script's module in
  the stdlib's workers: see "the script's functions" below.
* Pickle protocol 5 with out-of-band buffers: a buffer of at least
  ``OOB_MIN_BYTES`` (a numpy array's data, a ``bytearray``) is not copied into
  the pickle stream; it travels as its own frame and the receiver rebuilds the
  object on top of the received memory.  Across processes, one of at least
  ``_shm.MIN_BYTES`` goes through shared memory instead (``_shm``).

This module is shared by the driver and the worker and imports neither.
"""

from __future__ import annotations

import builtins
import concurrent.futures as cf
import functools
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
# dumps(obj, IN_BAND): every buffer in the pickle stream, for bytes read back
# with loads(data) alone (a function sent once and kept by key, an initializer).
IN_BAND = -1


def _main_by_reference(fn: types.FunctionType) -> bool:
    """Whether a function of ``__main__`` can travel by reference to a forked worker.

    Only for an executor whose workers are forked (``dumps(main_by_ref=True)``):
    they inherit the script's module, so a function defined at its top level
    is found there by name, with the globals the fork copied (a large array
    a task reads is not pickled at all).  Lambdas, nested functions,
    functions defined under ``if __name__ == "__main__":`` (indented: absent
    from a module forked before they were defined, which is checked by name
    only) and interactive code go by value.
    """
    main = sys.modules.get("__main__")
    if main is None or not getattr(main, "__file__", None):
        return False
    if fn.__qualname__ != fn.__name__ or getattr(main, fn.__name__, None) is not fn:
        return False
    code = fn.__code__
    line = linecache.getline(code.co_filename, code.co_firstlineno)
    return bool(line) and not line[0].isspace()


# -- the script's functions by value, sharing one namespace ---------------------------
#
# No child of poolx runs the driver's script (see backends/processes/_lifetime:
# a script without the ``if __name__ == "__main__":`` guard would start
# executors in every child), so the functions the script defines travel by
# value.  cloudpickle gives each one sent by value its own copy of its globals
# (ray#37705): an initializer that sets a global would not be seen by the
# tasks.  So a function of the script is rebuilt in the receiver with the
# receiver's ``__main__`` namespace as its globals (a worker's stand-in for
# the script, see child._boot.with_main; a forked worker's copy of the
# script), and the globals it uses are added where that namespace lacks them:
# a name already there (set by an initializer, or by an earlier task) keeps
# its value, as in the stdlib's workers, which share the script's module.
# Interactive code (no ``__file__``: python -c, the REPL, notebooks) keeps
# cloudpickle's way, each function with the values its globals had when it
# was sent, so a changed global reaches the workers.

_function_getstate = getattr(cloudpickle.cloudpickle, "_function_getstate", None)
_script: list[dict[str, Any]] = []  # the namespace of this process's script, once seen


def _script_namespace() -> dict[str, Any] | None:
    """``__main__``'s namespace if it is a script's (or a worker's stand-in for one)."""
    main = sys.modules.get("__main__")
    ns = getattr(main, "__dict__", None)
    if ns is None:
        return None
    if _script and ns is _script[0]:
        return ns
    # (CPython deletes __main__.__file__ as the script ends: the namespace is
    # remembered, so functions sent by exit hooks travel the same way.)
    if isinstance(ns.get("__file__"), str):
        _script[:] = [ns]
        return ns
    return None


_script_namespace()  # (poolx is usually imported by the script itself, while __file__ is set)


def _main_class_by_reference(cls: type) -> bool:
    return cls.__module__ == "__main__" and getattr(sys.modules["__main__"], cls.__qualname__, None) is cls


_forked: list[bool] = [False]  # a worker forked from the driver: dumps' default main_by_ref


def forked_from_driver() -> None:
    """In a worker forked from the driver: what it sends goes to processes that have its ``__main__``."""
    _forked[0] = True


def adopt_script_namespace(ns: dict[str, Any]) -> None:
    """In a worker: ``ns`` (its stand-in for the driver's script) is where the script's functions live."""
    _script[:] = [ns]


def _script_function_reduce(fn: types.FunctionType) -> Any:
    attrs, slots = _function_getstate(fn)  # type: ignore[misc]  # (its globals, closure, names, defaults)
    cells = None if fn.__closure__ is None else len(fn.__closure__)
    return _script_function, (fn.__code__, cells), (attrs, slots), None, None, _fill_script_function


def _script_function(code: types.CodeType, cells: int | None) -> types.FunctionType:
    """A function of the driver's script, rebuilt in this process's ``__main__`` namespace."""
    ns = sys.modules["__main__"].__dict__
    ns.setdefault("__builtins__", builtins)
    closure = None if cells is None else tuple(types.CellType() for _ in range(cells))
    return types.FunctionType(code, ns, None, None, closure)


def _fill_script_function(fn: types.FunctionType, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
    attrs, slots = state
    fn.__dict__.update(attrs)
    ns = fn.__globals__
    for name, value in slots.pop("__globals__").items():
        ns.setdefault(name, value)  # a name the worker has keeps its value (see above)
    sent = slots.pop("__closure__") or ()
    for cell, source in zip(fn.__closure__ or (), sent):
        try:
            cell.cell_contents = source.cell_contents
        except ValueError:  # an empty cell (a variable not bound yet when it was sent)
            pass
    slots.pop("_cloudpickle_submodules", None)  # (unpickling them imported them: that was their job)
    for name, value in slots.items():
        setattr(fn, name, value)


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


_LRU = functools._lru_cache_wrapper


def _script_cached(fn: types.FunctionType, name: str, maxsize: int | None, typed: bool) -> Any:
    """A function of the script under ``functools.lru_cache`` (or ``cache``), in this namespace.

    The one already there is kept, with its cache (as a global the worker has).
    """
    ns = fn.__globals__
    found = ns.get(name)
    if type(found) is _LRU:
        return found
    cached = functools.lru_cache(maxsize, typed)(fn)
    ns.setdefault(name, cached)
    return cached


class _Pickler(cloudpickle.Pickler):
    if _cloudpickle_code_reduce is not None:
        # A live view, as cloudpickle's own: a reducer registered with copyreg
        # after this module was imported still counts (a copy froze the table
        # at import, so what pickled depended on when poolx was first used).
        dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)

    pins: list[Any] | None = None  # futures pickled by id (refs in containers), kept by the caller
    main_by_ref = False  # the receiver has this process's __main__: its top-level functions by name
    # A forked worker's classes of the script, by name: what it sends goes to
    # the driver (which has every class of its script) or to its fork siblings.
    # Not from the driver to forked workers: a class defined after their fork
    # (under the guard) is not in their copy.
    classes_by_ref = False

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType and obj.__module__ == "__main__":
            if self.main_by_ref and _main_by_reference(obj):
                return NotImplemented  # the standard pickler saves it as __main__.<name>
            if _function_getstate is not None and obj.__globals__ is _script_namespace():
                return _script_function_reduce(obj)
        elif self.classes_by_ref and isinstance(obj, type) and _main_class_by_reference(obj):
            # (by value, a class the driver never pickled came back as a new class:
            # under fork, a task's exception of the script escaped ``except MyError``)
            return NotImplemented
        elif type(obj) is _LRU and obj.__module__ == "__main__" and not self.main_by_ref:
            wrapped = getattr(obj, "__wrapped__", None)
            if getattr(wrapped, "__globals__", None) is _script_namespace():
                # (the stdlib pickles it as __main__.<name>, which the stand-in lacks)
                params = obj.cache_parameters()
                return _script_cached, (wrapped, obj.__name__, params["maxsize"], params["typed"])
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
        if nbytes < OOB_MIN_BYTES or self.shm == IN_BAND:
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

    def run(self, obj: Any, shm: int = 0, pins: list[Any] | None = None,
            main_by_ref: bool | None = None) -> tuple[bytes, Sequence[Any]]:
        self.busy = True
        self.shm = shm
        self.pickler.pins = pins
        self.pickler.main_by_ref = _forked[0] if main_by_ref is None else main_by_ref
        self.pickler.classes_by_ref = _forked[0] and main_by_ref is None
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


def dumps(obj: Any, shm: int = 0, pins: list[Any] | None = None,
          main_by_ref: bool | None = None) -> tuple[bytes, Sequence[Any]]:
    """Pickle ``obj``; returns the pickle bytes and its out-of-band buffers.

    With ``shm`` (``_shm.PRIVATE`` or ``_shm.SHARED``), for a process
    boundary: large buffers go into shared memory (``_shm.ShmBuffer`` items).
    Futures inside ``obj`` pickle as refs; with ``pins``, they are appended
    to it (the caller keeps them alive while the pickle may be read).
    With ``main_by_ref`` (a receiver forked from this process), functions
    defined at the top level of the script go by name (``_main_by_reference``);
    by default only in a worker forked from the driver, whose pickles go to
    the driver or to its fork siblings, and which sends the script's classes
    by name too.
    """
    dump = _per_thread.dump
    if dump.busy:  # re-entrant use (a __reduce__ that pickles): a fresh pickler
        dump = _Dump()
    return dump.run(obj, shm, pins, main_by_ref)


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


def unpicklable_global(fn: Any) -> str | None:
    """For a function of the script: name the global it reads that cannot be pickled, if any.

    ("the global 'LOCK' (_thread.lock)"): no worker runs the script, so its
    functions travel with the values of the globals they read.
    """
    if type(fn) is not types.FunctionType or fn.__globals__ is not _script_namespace():
        return None
    for name in fn.__code__.co_names:
        value = fn.__globals__.get(name, fn)
        if value is fn or isinstance(value, types.ModuleType):
            continue
        try:
            dumps(value)
        except Exception:
            return f"the global {name!r} ({describe(type(value))})"
    return None


def describe(obj: Any) -> str:
    """A short name for an object in error messages: ``module.qualname`` or its type."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is not None:
        module = getattr(obj, "__module__", None)
        return f"{module}.{name}" if module else str(name)
    return f"{type(obj).__module__}.{type(obj).__qualname__} instance"
