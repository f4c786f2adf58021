"""``poolx profile run --drop-in``: a program's own stdlib pools and joblib's loky run on poolx.

``install(program)`` makes, for the rest of the process (until ``uninstall()``):

- ``concurrent.futures.ProcessPoolExecutor(...)`` (also imported from
  ``concurrent.futures.process``) a ``poolx.Executor`` with the same
  ``max_workers``, ``mp_context``, ``initializer``, ``initargs`` and
  ``max_tasks_per_child``;
- ``multiprocessing.Pool(...)``, ``multiprocessing.get_context(m).Pool(...)``
  (start method ``m`` kept) and ``multiprocessing.pool.Pool(...)`` a
  ``poolx.Pool`` with the same arguments (the first two go through the third:
  the stdlib's ``context.Pool`` imports it from ``multiprocessing.pool`` at each call);
- joblib's loky backend, the default one and ``backend="loky"`` when named,
  poolx's joblib backend, also when joblib is imported after ``install()``
  (by scikit-learn, say: an import hook patches it as it loads).

The defaults are the stdlib's, not poolx's own: ``max_workers=None`` is
``os.process_cpu_count()`` (``os.cpu_count()`` before 3.13) and
``mp_context=None`` is ``multiprocessing.get_context()`` (spawn with
``max_tasks_per_child``), so the workers inherit what they would have.  The
rest is what docs/executor.md and docs/multiprocessing.md say of poolx.Executor
and poolx.Pool: the stdlib's semantics, and where they differ.  The program
gets poolx's objects; ``isinstance(obj, ProcessPoolExecutor)`` (and
``multiprocessing.pool.Pool``) holds for them, as does
``isinstance(obj, concurrent.futures.Executor)``; ``type(obj)`` is poolx's class.
poolx's own keyword-only extras (``task_timeout=``, ...) are not taken through
the stdlib's names: a program that passes them fails there as it would without poolx.

What is not substituted runs on the original, and ``notes`` says why:

- a subclass of ``ProcessPoolExecutor`` or ``multiprocessing.pool.Pool``
  (seen when it is instantiated: its overrides may rely on the stdlib's
  internals);
- a class whose private attribute the program reads (``pool._pool``,
  ``executor._processes``; an ast scan of the ``program`` file) when poolx's
  object lacks it, or has it as a method with other parameters.  The scan
  knows names, not types: ``pool._processes`` (which poolx.Pool has) also
  leaves ProcessPoolExecutor (whose ``_processes`` poolx.Executor lacks) on
  the stdlib: the safe side, as the note says.  Modules the program imports
  are not scanned;
- a loky backend given options poolx's backend does not take (``reuse=``, ...).

``ThreadPool`` and ``ThreadPoolExecutor`` are threads: left as they are.
A second ``install()`` while one is active raises ``RuntimeError``.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import concurrent.futures.process as cf_process
import importlib.abc
import importlib.util
import inspect
import multiprocessing
import multiprocessing.pool as mp_pool
import os
import sys
import textwrap
import threading
import types
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._executor import Executor
from .._pool import Pool

EXECUTOR = "concurrent.futures.ProcessPoolExecutor"
POOL = "multiprocessing.Pool"
LOKY = "joblib loky"
# The loky backend's options that poolx's joblib backend takes with the same
# meaning; with any other (reuse=, kill_workers=, env=, ...) a Parallel runs on loky.
LOKY_OPTIONS = frozenset({"idle_worker_timeout", "initializer", "initargs", "max_nbytes", "mmap_mode",
                          "temp_folder"})

_installed: DropIn | None = None
_install_lock = threading.Lock()


def install(program: str | os.PathLike[str] | None = None) -> DropIn:
    """Run the program's stdlib process pools and joblib's loky on poolx, until ``uninstall()``.

    ``program``: the main script's path, scanned for private attributes of
    the stdlib's classes that poolx's objects lack (that class is then left
    as it is, and noted).  Raises ``RuntimeError`` if a drop-in is already installed.
    """
    global _installed
    with _install_lock:
        if _installed is not None:
            raise RuntimeError("poolx's drop-in is already installed in this process: call "
                               "uninstall() on the DropIn that install() returned, then install again")
        dropin = DropIn(program)
        try:
            dropin._install()
        except BaseException:  # (nothing half-installed is left behind)
            dropin.active = False
            dropin._undo_all()
            raise
        _installed = dropin
    return dropin


class DropIn:
    """What ``install()`` replaced (``substituted``), what ran on the original and why (``notes``)."""

    def __init__(self, program: str | os.PathLike[str] | None) -> None:
        self.program = None if program is None else str(program)
        self.substituted: list[str] = []
        #: grows at run time too (a subclass instantiated later): one sentence each
        self.notes: list[str] = []
        self.active = False
        self._undo: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "active" if self.active else "uninstalled"
        return f"<DropIn {state} substituted={self.substituted} notes={len(self.notes)}>"

    def note(self, text: str) -> None:
        """Add a note (once: a subclass instantiated in a loop is named once)."""
        with self._lock:
            if text not in self.notes:
                self.notes.append(text)

    def uninstall(self) -> None:
        """Put every original back (the same objects); idempotent."""
        global _installed
        with _install_lock:
            self.active = False
            self._undo_all()
            if _installed is self:
                _installed = None

    def _undo_all(self) -> None:
        while self._undo:
            self._undo.pop()()

    # -- installing ---------------------------------------------------------------

    def _install(self) -> None:
        self.active = True
        reads = private_reads(self.program) if self.program else {}
        if self._keep(EXECUTOR, cf_process.ProcessPoolExecutor, Executor, reads, "Executor"):
            executor_class = substitute(self, cf_process.ProcessPoolExecutor, _make_executor, EXECUTOR)
            self._replace(cf_process, "ProcessPoolExecutor", executor_class)
            self._replace(cf, "ProcessPoolExecutor", executor_class)
            self.substituted.append(EXECUTOR)
        if self._keep(POOL, mp_pool.Pool, Pool, reads, "Pool"):
            pool_class = substitute(self, mp_pool.Pool, _make_pool, "multiprocessing.pool.Pool")
            self._replace(mp_pool, "Pool", pool_class)
            self.substituted.append(POOL)
        if "joblib" in sys.modules:
            self._patch_joblib()
        elif importlib.util.find_spec("joblib") is not None:
            hook = _ImportHook("joblib", self._patch_joblib)
            sys.meta_path.insert(0, hook)
            self._undo.append(lambda: _remove(sys.meta_path, hook))
            self.substituted.append(LOKY)

    def _keep(self, name: str, original: type, ours: type, reads: dict[str, int], ours_name: str) -> bool:
        """Whether ``original`` can be replaced: the program reads none of its private
        attributes that poolx's class lacks (else noted, and left)."""
        missing = lacking(original, ours) if reads else set()
        hits = {attr: line for attr, line in reads.items() if attr in missing}
        if not hits:
            return True
        where = ", ".join(f"{attr} (line {line})" for attr, line in sorted(hits.items(), key=lambda x: x[1]))
        self.note(f"{name} ran on the stdlib, not poolx: {Path(self.program or '').name} reads its private "
                  f"attribute {where}, which poolx's {ours_name} does not have.")
        return False

    def _replace(self, owner: Any, name: str, value: Any) -> None:
        """``owner.name = value``, undone by ``uninstall`` (an attribute that was not there goes again)."""
        namespace = vars(owner)
        had, old = name in namespace, namespace.get(name)
        setattr(owner, name, value)

        def undo() -> None:
            if had:
                setattr(owner, name, old)
            elif name in vars(owner):
                delattr(owner, name)  # (concurrent.futures loads ProcessPoolExecutor lazily)

        self._undo.append(undo)

    def _patch_joblib(self) -> None:
        """Replace joblib's loky backend (joblib is loaded, or has just finished loading)."""
        if not self.active:
            return
        try:
            from joblib import parallel

            from ..joblib import PoolxBackend
        except ImportError as exc:
            self.note(f"joblib's loky backend ran as it is, not on poolx: poolx's joblib backend "
                      f"could not load ({exc}).")
            self._discard(LOKY)
            return
        backends = parallel.BACKENDS
        loky = backends.get("loky")
        if loky is None:  # (joblib without multiprocessing: its default is threads)
            self._discard(LOKY)
            return
        ours = backends["loky"] = loky_substitute(self, loky, PoolxBackend)

        def undo() -> None:
            if backends.get("loky") is ours:  # (not a backend the program registered as "loky" since)
                backends["loky"] = loky

        self._undo.append(undo)
        if LOKY not in self.substituted:
            self.substituted.append(LOKY)

    def _discard(self, name: str) -> None:
        if name in self.substituted:
            self.substituted.remove(name)


# -- the substitutes ----------------------------------------------------------------


def _stdlib_cpu_count() -> int:
    # ProcessPoolExecutor's own default (poolx's would count the cgroup's quota)
    return getattr(os, "process_cpu_count", os.cpu_count)() or 1


def _make_executor(max_workers: int | None = None, mp_context: Any = None,
                   initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = (), *,
                   max_tasks_per_child: int | None = None) -> Executor:
    """``ProcessPoolExecutor(...)`` as a poolx.Executor, with the stdlib's defaults."""
    if max_workers is None:
        max_workers = _stdlib_cpu_count()
    if mp_context is None:  # as the stdlib: the default context, or spawn for max_tasks_per_child
        mp_context = multiprocessing.get_context("spawn" if max_tasks_per_child is not None else None)
    return Executor(max_workers, mp_context, initializer, initargs, max_tasks_per_child=max_tasks_per_child)


def _make_pool(processes: int | None = None, initializer: Callable[..., object] | None = None,
               initargs: Any = (), maxtasksperchild: int | None = None, context: Any = None) -> Pool:
    """``multiprocessing.pool.Pool(...)`` as a poolx.Pool (the stdlib's parameters only: no extras)."""
    return Pool(processes, initializer, initargs, maxtasksperchild, context)


class _Substitute(type):
    """The metaclass of a substitute: poolx's objects it made pass ``isinstance`` for it."""

    def __instancecheck__(cls, obj: Any) -> bool:
        made = cls.__dict__.get("_dropin_made")
        return type.__instancecheck__(cls, obj) or (made is not None and obj in made)


def substitute(dropin: DropIn, original: type, make: Callable[..., Any], label: str) -> type:
    """A subclass of ``original`` that, called itself, returns ``make(...)`` (poolx's object);
    a subclass of it (the program's) is built as the original would be, and noted."""
    made: weakref.WeakSet[Any] = weakref.WeakSet()

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if cls is replacement and dropin.active:
            obj = make(*args, **kwargs)
            made.add(obj)
            return obj
        if cls is not replacement and dropin.active:
            dropin.note(f"{_named(cls)} ran on the stdlib, not poolx: it subclasses {label}, "
                        "and its overrides may rely on the stdlib's internals.")
        return object.__new__(cls)  # (the original's own: neither class defines __new__)

    namespace = {"__new__": __new__, "__doc__": original.__doc__, "__module__": original.__module__,
                 "__qualname__": original.__qualname__, "_dropin_made": made,
                 "__signature__": inspect.signature(original)}  # (help() shows the stdlib's, not __new__'s)
    replacement: type = _Substitute(original.__name__, (original,), namespace)
    return replacement


def _named(cls: type) -> str:
    """A class as its author knows it: ``MyPool (train.py)``, or ``package.module.MyPool``."""
    where = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if cls.__module__ == "__main__" and isinstance(where, str):
        return f"{cls.__qualname__} ({Path(where).name})"
    return f"{cls.__module__}.{cls.__qualname__}"


def loky_substitute(dropin: DropIn, loky: type, poolx_backend: type) -> type:
    """joblib's ``BACKENDS["loky"]``: poolx's backend, or loky itself when given an option poolx's lacks."""

    def __new__(cls: type, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                **kwargs: Any) -> Any:
        foreign = sorted(set(kwargs) - LOKY_OPTIONS)
        if dropin.active and not foreign:
            return object.__new__(cls)  # then PoolxBackend.__init__ with the same arguments
        backend = loky(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)
        if foreign and dropin.active:  # (after: joblib 1.4's loky refuses every option, as without us)
            dropin.note(f"A joblib Parallel ran on loky, not poolx: loky was given {', '.join(foreign)}, "
                        "which poolx's joblib backend does not take.")
        return backend

    # (joblib's verbose output names the class: "Using backend PoolxBackend")
    return type(poolx_backend.__name__, (poolx_backend,), {"__new__": __new__, "__module__": __name__})


class _ImportHook(importlib.abc.MetaPathFinder):
    """Calls ``then()`` once the module ``name`` has been executed, wherever it is imported from."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then
        self.looking = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or getattr(self.looking, "now", False):
            return None
        self.looking.now = True
        try:
            spec = importlib.util.find_spec(fullname)  # (the other finders: this one says None now)
        finally:
            self.looking.now = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ThenLoader(spec.loader, self._loaded)
        return spec

    def _loaded(self) -> None:
        _remove(sys.meta_path, self)
        self.then()


class _ThenLoader(importlib.abc.Loader):
    """A module's own loader, then a call once it has run (the module keeps its own loader)."""

    def __init__(self, loader: Any, then: Callable[[], None]) -> None:
        self.loader = loader
        self.then = then

    def create_module(self, spec: Any) -> types.ModuleType | None:
        created: types.ModuleType | None = self.loader.create_module(spec)
        return created

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # type: ignore[union-attr]
        self.loader.exec_module(module)
        self.then()


# -- the program's private reads -------------------------------------------------------


def private_reads(program: str) -> dict[str, int]:
    """The private attributes (``x._name``, ``getattr(x, "_name")``, ``hasattr``) the program reads, with
    the first line of each; reads on ``self`` and ``cls`` are the program's own classes'."""
    try:
        tree = ast.parse(Path(program).read_text(encoding="utf-8"), program)
    except (OSError, SyntaxError, ValueError):
        return {}  # (python reports a program it cannot read or parse itself)
    reads: dict[str, int] = {}
    for node in ast.walk(tree):
        name: str | None = None
        if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name)
                                                    and node.value.id in ("self", "cls")):
            name = node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str)):
            name = node.args[1].value
        if name is not None and _private(name):
            reads.setdefault(name, getattr(node, "lineno", 0))
    return reads


def lacking(original: type, ours: type) -> set[str]:
    """The private attributes of ``original`` that ``ours`` does not have, or has as a
    method with other parameters (``Pool._map_async``)."""
    theirs, mine = _private_attributes(original), _private_attributes(ours)
    return {name for name, value in theirs.items()
            if name not in mine or _parameters(value) != _parameters(mine[name])}


def _remove(items: list[Any], item: Any) -> None:
    if item in items:
        items.remove(item)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_attributes(cls: type) -> dict[str, Any]:
    """A class's private attributes: its classes' own, and those their methods set on ``self``."""
    names: dict[str, Any] = {}
    for klass in cls.__mro__[:-1]:
        for name, value in vars(klass).items():
            if _private(name):
                names.setdefault(name, value)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self" and _private(node.attr)):
                names.setdefault(node.attr, None)
    return names


def _parameters(value: Any) -> tuple[str, ...] | None:
    """A method's parameter names (None for data)."""
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if not inspect.isfunction(value):
        return None
    return tuple(inspect.signature(value).parameters)
