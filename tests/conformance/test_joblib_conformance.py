"""joblib's own Parallel tests, run against the "poolx" joblib backend.

poolx.joblib registers a joblib backend, "poolx", that claims to behave as
joblib's own process backends do.  This module takes the tests joblib ships in
its installed package (``joblib/test/test_parallel.py``, the module behind
joblib's own CI) and runs the ones that are parametrized over joblib's backends
with "poolx" as the backend.  Nothing is copied: the file is read from the
installed joblib at collection time.  (tests/conformance/test_pool_conformance.py does the
same with CPython's Pool tests.)  Checked with joblib 1.4.2 and 1.6.0.

How it is loaded
----------------
test_parallel.py builds its backend lists at import time, and uses them in
``@parametrize`` decorators at import time too::

    RETURN_GENERATOR_BACKENDS = BACKENDS.copy()          # joblib's registry
    ALL_VALID_BACKENDS = [None] + sorted(BACKENDS.keys()) # + an instance of each
    PROCESS_BACKENDS = ["multiprocessing", "loky"]       # (in an if/else on mp)
    PARALLEL_BACKENDS = PROCESS_BACKENDS + ["threading"]

1. ``import poolx.joblib`` first: "poolx" is in joblib's BACKENDS, so every list
   built from BACKENDS has it (and ALL_VALID_BACKENDS a ``PoolxBackend()``).
2. PROCESS_BACKENDS is a literal list: the source is parsed (``ast``) and one
   statement, ``PROCESS_BACKENDS = [*PROCESS_BACKENDS, "poolx"]``, is inserted
   after the last top-level statement that assigns it.  The loader fails (a
   collection error, ``LoaderError`` with the reason) when there is no such
   statement, when a statement before it already uses the list at import time
   (a decorator, a derived list), when nothing uses it after it, or when after
   the import "poolx" is missing from one of the backend lists.  The rest of the
   file is compiled unchanged, with its own file name and line numbers, so
   tracebacks point into joblib's file.  The markers it uses (``thread_unsafe``,
   ``no_cover``: joblib registers them in its own pyproject.toml) are
   registered with this session, for ``--strict-markers``.
3. The code runs in a fresh module object that carries *this* module's name
   (and joblib's ``__file__`` and package, for its relative imports), and this
   module hands out its attributes (``__getattr__``).  So joblib's helpers
   (``square``, ``nested_loop``, exception classes) are pickled by reference as
   ``test_joblib_conformance.square``, and a worker that unpickles one imports
   this module, which imports poolx.joblib and loads joblib's file the same
   way: "poolx" is registered in every worker, poolx's or loky's (in the nested
   tests), as it is in the workers of a user whose module imports poolx.joblib.
   (The installed ``joblib.test.test_parallel`` is left alone.)  A name this
   module and joblib's both define fails the import (it would travel wrong).
4. Only the test functions that have a poolx parametrization are collected,
   with their ``parametrize`` marks narrowed to it: a mark whose argument is a
   backend (``backend``, ``parent_backend``, ...) keeps only the rows where a
   backend is "poolx" or a ``PoolxBackend`` instance.  A test with two backend
   arguments (``test_nested_loop``: parent and child) keeps the combinations
   where either is poolx (poolx in loky's workers, loky in poolx's).  The other
   items (loky, multiprocessing, threading, sequential alone) are joblib's
   business and are not collected at all.  A few tests write their backends
   out (``["multiprocessing", "loky"]``) instead of taking joblib's registry:
   those named in ``TWINNED`` (``test_nested_parallel_warnings``, and three of
   ``joblib/test/test_memmapping.py``, imported from the installed joblib) get
   a twin of each row that names loky, with "poolx" in loky's place.
5. Two helpers of joblib's module are patched there (``_PATCHED``):
   ``get_workers``, which reads the pool of joblib's backends (``_pool``,
   ``_workers``), also reads poolx's (``_executor``); and
   ``check_subprocess_call`` puts ``import poolx.joblib`` first in the child
   scripts (``-c`` text, or the script file the test wrote) of the
   interactively-defined-function tests, which say ``backend="poolx"``, as a
   user's script must.

test_config.py is not loaded: none of its tests is parametrized over joblib's
backend registry (its one backend list, in
test_threadpool_limitation_in_child_context_error, names the backends that
*refuse* inner_max_num_threads; poolx accepts it).  Tests with a hard-coded
backend (``backend="loky"``: test_initializer_reused,
test_nested_parallelism_limit, test_threadpool_limitation_in_child_*, ...) are
not parametrized over the registry and not run here; tests/frontends/test_joblib.py
checks poolx's own version of those behaviours.

Each item
---------
An item is joblib's test, then (in the same call, so that it fails the item):
the backend's warm workers and loky's reusable executor are shut down, the
test's own ``mp.Manager()`` servers stopped, and every process still running
``LEFTOVER_WAIT`` seconds later fails the item and is killed.  While the module
runs this process is a "child subreaper" (Linux): a process orphaned by its
parent (loky's workers, when the poolx worker that started them exits) becomes
its child instead of init's and is seen.  Each item has a time limit
(pytest-timeout).

Tables
------
``EXCLUDED`` (skipped, with the reason) holds only items that read a
backend's private attributes to check an internal detail that poolx does
differently on purpose, with the part that does apply run separately
(``test_error_capture_public_part``).  A test of behaviour a user sees is
never excluded.  ``KNOWN_DEVIATIONS``
holds real deviations of the poolx backend, not fixed yet: strict xfails (an
XPASS fails the run: the entry must then go).  ``FLAKY_DEVIATIONS``: the same
for races, which show only sometimes: non-strict xfails.  Keys are item
names, where ``*`` matches anything (``test_initializer_parallel[poolx-*]``).

Set ``POOLX_JOBLIB_CONFORMANCE_TARGET=loky`` to run the same harness on the
"loky" items (without poolx) instead: the tables and patches are then not
used, and everything must pass or be skipped/xfailed by joblib's own marks.
That checks the harness, not poolx.  The module takes about 85 s on 2 cores
(poolx), most of it joblib's own sleeps and worker start-ups.
"""

from __future__ import annotations

import ast
import functools
import gc
import importlib
import importlib.machinery
import importlib.util
import itertools
import multiprocessing
import os
import re
import sys
import time
import types
from typing import Any

import psutil
import pytest

joblib = pytest.importorskip("joblib")

import poolx.joblib  # noqa: E402  (registers "poolx" before joblib's test module is built)
from poolx.joblib import BACKEND_NAME, PoolxBackend  # noqa: E402

# Each item's limit.  The slowest poolx items take a few seconds; joblib's own
# bounds (test_abort_backend: 20 s) are below it.
pytestmark = [
    pytest.mark.timeout(40),
]

_JOBLIB_MODULE = "joblib.test.test_parallel"
_MEMMAPPING_MODULE = "joblib.test.test_memmapping"
_HOOKED_LIST = "PROCESS_BACKENDS"
# Lists test_parallel.py builds from BACKENDS or from PROCESS_BACKENDS; after the
# import each that exists must contain "poolx" (one of them must exist).
_DERIVED_LISTS = ("PROCESS_BACKENDS", "PARALLEL_BACKENDS", "ALL_VALID_BACKENDS",
                  "RETURN_GENERATOR_BACKENDS")

TARGET = os.environ.get("POOLX_JOBLIB_CONFORMANCE_TARGET", "poolx")
if TARGET not in ("poolx", "loky"):
    raise ValueError(f"POOLX_JOBLIB_CONFORMANCE_TARGET must be 'poolx' or 'loky', not {TARGET!r}")


class LoaderError(RuntimeError):
    """joblib's test_parallel.py does not have the shape this loader expects."""


# --------------------------------------------------------------------------
# Tables.  Item name (``*``: anything) -> reason.

EXCLUDED: dict[str, str] = {
    "test_error_capture[poolx]":
        "reads the backend's private pool attribute (get_workers: loky's `_workers`, "
        "multiprocessing's `_pool`, poolx's `_executor`) to check that the pool *object* was "
        "replaced after an error in a managed Parallel (`get_workers(...) is not original_workers`); "
        "poolx keeps its executor by design (only the workers running the failed call's batches are "
        "replaced, poolx/joblib.py's docstring); everything a user sees runs as "
        "test_error_capture_public_part",
}

# Real deviations of the poolx backend, not fixed yet (strict xfail).  The
# first run found seven (a Parallel in a daemonic process, poolx inside loky and
# loky inside poolx at worker exit, Parallel(initializer=...) ignored, initargs
# kept alive after shutdown): all fixed in poolx, none left.
KNOWN_DEVIATIONS: dict[str, str] = {}

# Real deviations that show only sometimes (races): non-strict xfails, so that
# the run stays green whichever way the race goes.  They must go when fixed, as
# the strict ones.
FLAKY_DEVIATIONS: dict[str, str] = {
    "test_error_in_task_iterator[poolx]": (
        "about 1 run in 30 to 150 (2 cores), the third Parallel call, whose input generator raises "
        "at its last item, returns an empty list instead of raising ValueError.  Most likely a "
        "race in joblib's own dispatch (Parallel._start against BatchCompletionCallBack.__call__): "
        "the generator raises in the caller's pre-dispatch loop, which registers the error and sets "
        "_aborting, while a completion callback that had passed its _aborting check goes on to "
        "dispatch_next(), gets False and sets _iterating = False; _retrieve() then ends without "
        "looking at _aborting and _get_outputs drops the error job (self._exception is set).  "
        "poolx's fast round trips let callbacks run during the pre-dispatch; loky's did not in "
        "our runs"),
}


# Tests whose backend list is written out (``["multiprocessing", "loky"]``, the
# nested-warning pairs) instead of built from joblib's registry: each row that
# names "loky" also runs with "poolx" in its place, where poolx claims loky's
# behaviour.  (module -> test names; test_memmapping.py's are imported from the
# installed joblib, test_parallel.py's loaded as above.)  Its other such tests
# run loky in a child script (``backend='{b}'`` in ``-c`` text run with Popen,
# which this module does not patch: the script would not import poolx.joblib)
# or read loky's private attributes (test_child_raises_parent_exits_cleanly:
# ``_backend._workers._temp_folder``), and are not twinned.
TWINNED: dict[str, tuple[str, ...]] = {
    __name__: ("test_nested_parallel_warnings",),
    _MEMMAPPING_MODULE: ("test_parallel_isolated_temp_folders",
                                    "test_managed_backend_reuse_temp_folder",
                                    "test_memmap_returned_as_regular_array"),
}


# --------------------------------------------------------------------------
# The loader.

def _names_read_at_import(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement reads when the module runs (not in function bodies)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in (*node.decorator_list, *node.args.defaults,
                        *(d for d in node.args.kw_defaults if d is not None)):
                visit(sub)
            return
        if isinstance(node, ast.Lambda):
            for sub in (*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)):
                visit(sub)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            found.add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(stmt)
    return found


def _assigns(stmt: ast.stmt, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)
               for n in ast.walk(stmt))


def _hook(tree: ast.Module, path: str) -> ast.Module:
    """Insert ``PROCESS_BACKENDS = [*PROCESS_BACKENDS, "poolx"]`` after its last top-level assignment."""
    body = tree.body
    assigning = [i for i, stmt in enumerate(body) if _assigns(stmt, _HOOKED_LIST)]
    if not assigning:
        raise LoaderError(f"{path}: no top-level assignment to {_HOOKED_LIST}; cannot add {BACKEND_NAME!r} "
                           "to the process backends (see this module's docstring)")
    last = assigning[-1]
    early = [body[i].lineno for i in range(last)
             if i not in assigning and _HOOKED_LIST in _names_read_at_import(body[i])]
    if early:
        raise LoaderError(f"{path}: {_HOOKED_LIST} is used at import time (line(s) {early}) before its "
                           f"last assignment (line {body[last].lineno}): adding {BACKEND_NAME!r} there would "
                           "miss those uses")
    if not any(_HOOKED_LIST in _names_read_at_import(stmt) for stmt in body[last + 1:]):
        raise LoaderError(f"{path}: {_HOOKED_LIST} is assigned but never used at import time after "
                           f"line {body[last].lineno}: no test would be parametrized with it")
    hook = ast.parse(f"{_HOOKED_LIST} = [*{_HOOKED_LIST}, {BACKEND_NAME!r}]").body[0]
    end = body[last].end_lineno or body[last].lineno
    for node in ast.walk(hook):
        if hasattr(node, "lineno"):
            node.lineno = node.end_lineno = end  # type: ignore[attr-defined]
            node.col_offset = node.end_col_offset = 0  # type: ignore[attr-defined]
    body.insert(last + 1, hook)
    return tree


def _marker_names(tree: ast.Module) -> set[str]:
    """The X of every ``pytest.mark.X`` in the source."""
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "mark" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "pytest"):
            names.add(node.attr)
    return names


def _register_markers(names: set[str]) -> None:
    """Register joblib's own markers (thread_unsafe, no_cover, ...) under --strict-markers.

    joblib registers them in its own pyproject.toml, which this run does not
    read.  pytest's ``pytest.mark`` is bound to the running session's config
    (its ``_config``); markers added to that config's ini list count as
    registered.
    """
    config = getattr(pytest.mark, "_config", None)
    if config is None:
        return  # not under a pytest session (or a pytest without the check)
    registered = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    builtin = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings", "timeout"}
    for name in sorted(names - registered - builtin):
        config.addinivalue_line("markers", f"{name}: used by joblib's own test_parallel.py "
                                           "(tests/conformance/test_joblib_conformance.py)")


def _load() -> types.ModuleType:
    # The workers import this module by its name (see 3. in the docstring).
    found = importlib.machinery.PathFinder.find_spec(__name__) if "." not in __name__ else None
    if found is None or not found.origin or not os.path.samefile(found.origin, __file__):
        raise LoaderError(f"{__file__} must be importable as {__name__!r} from sys.path (pytest's "
                          "default --import-mode=prepend): the workers import it to unpickle "
                          "joblib's helpers")
    spec = importlib.util.find_spec(_JOBLIB_MODULE)
    if spec is None or spec.origin is None:
        pytest.skip(f"this joblib ({joblib.__version__}, {joblib.__file__}) does not ship "
                    f"{_JOBLIB_MODULE}", allow_module_level=True)
    path = spec.origin
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = _hook(ast.parse(source, filename=path), path)
    _register_markers(_marker_names(tree))
    # This module's name, joblib's file and package (for its relative imports).
    module = types.ModuleType(__name__, ast.get_docstring(tree))
    module.__file__ = path
    module.__package__ = spec.parent
    exec(compile(tree, path, "exec"), module.__dict__)
    present = [name for name in _DERIVED_LISTS if hasattr(module, name)]
    missing = [name for name in present if not any(_is_poolx(v) for v in getattr(module, name))]
    if _HOOKED_LIST not in present or missing:
        raise LoaderError(f"{path}: after the import, {BACKEND_NAME!r} is missing from "
                           f"{missing or [_HOOKED_LIST]} (lists found: {present})")
    return module


# --------------------------------------------------------------------------
# Narrowing the parametrizations to poolx.

def _is_poolx(value: Any) -> bool:
    return value == BACKEND_NAME or isinstance(value, PoolxBackend)


def _is_target(value: Any) -> bool:
    if TARGET == "poolx":
        return _is_poolx(value)
    from joblib._parallel_backends import LokyBackend
    return value == "loky" or type(value) is LokyBackend


def _is_backend_arg(name: str) -> bool:
    return name == "backend" or name.endswith("_backend")


_ParameterSet = type(pytest.param(None))


def _argnames(mark) -> list[str]:
    names = mark.args[0] if mark.args else mark.kwargs["argnames"]
    if isinstance(names, str):
        names = names.split(",")
    return [n.strip() for n in names]


def _value_id(value: Any) -> str:
    if value is None or isinstance(value, (str, int, float, bool)):
        return str(value)
    if isinstance(value, type):
        return value.__name__
    return f"{type(value).__name__}()"


def _rows(mark, twin: bool = False) -> list[tuple[tuple[Any, ...], str | None, tuple[Any, ...]]]:
    """(values, explicit id or None, marks) for each row of a parametrize mark.

    With ``twin``, each row that names "loky" as a backend is followed by its
    twin with "poolx" in loky's place (see TWINNED).
    """
    names = _argnames(mark)
    values = mark.args[1] if len(mark.args) > 1 else mark.kwargs["argvalues"]
    ids = mark.kwargs.get("ids")
    rows = []
    for i, value in enumerate(values):
        row_id, marks = None, ()
        if isinstance(value, _ParameterSet):
            row_id, marks, value = value.id, tuple(value.marks), value.values
        elif len(names) == 1:
            value = (value,)
        else:
            value = tuple(value)
        if row_id is None and isinstance(ids, (list, tuple)) and i < len(ids) and ids[i] is not None:
            row_id = str(ids[i])
        rows.append((tuple(value), row_id, marks))
        loky = [_is_backend_arg(n) and v == "loky" for n, v in zip(names, value)]
        if twin and TARGET == "poolx" and any(loky):
            twin_value = tuple(BACKEND_NAME if is_loky else v for is_loky, v in zip(loky, value))
            rows.append((twin_value, None, marks))
    return rows


def _narrow(func: types.FunctionType) -> list[Any] | None:
    """``func``'s marks with its backend parametrizations narrowed to the target; None if it has none."""
    marks = list(getattr(func, "pytestmark", []))
    backend_marks = [i for i, m in enumerate(marks)
                     if m.name == "parametrize" and any(_is_backend_arg(n) for n in _argnames(m))]
    if not backend_marks:
        return None
    names: list[str] = []
    row_sets = []
    twin = func.__name__ in TWINNED.get(func.__module__, ())
    for i in backend_marks:
        names += _argnames(marks[i])
        row_sets.append(_rows(marks[i], twin))
    is_backend = [_is_backend_arg(n) for n in names]
    params = []
    for combo in itertools.product(*row_sets):
        values = tuple(v for row in combo for v in row[0])
        if not any(b and _is_target(v) for b, v in zip(is_backend, values)):
            continue
        if TARGET != "poolx" and any(b and _is_poolx(v) for b, v in zip(is_backend, values)):
            continue  # the harness check runs the target's items without poolx
        ids = [row[1] if row[1] is not None else "-".join(map(_value_id, row[0])) for row in combo]
        params.append(pytest.param(*values, id="-".join(ids),
                                   marks=[m for row in combo for m in row[2]]))
    if not params:
        return None
    narrowed = pytest.mark.parametrize(names, params).mark
    first = backend_marks[0]
    return [narrowed if i == first else m for i, m in enumerate(marks)
            if i == first or i not in backend_marks]


def _build(module: types.ModuleType, only: tuple[str, ...] | None = None,
           ) -> tuple[dict[str, types.FunctionType], dict[str, list[Any]], list[str]]:
    """joblib's tests that have a target item, their narrowed marks, and the names of the others."""
    kept, marks, other = {}, {}, []
    for name, obj in vars(module).items():
        if not (name.startswith("test") and isinstance(obj, types.FunctionType)):
            continue
        if only is not None and name not in only:
            continue
        narrowed = _narrow(obj)
        if narrowed is None:
            other.append(name)
        else:
            kept[name], marks[name] = obj, narrowed
    return kept, marks, other


_joblib_tests = _load()
_TESTS, _MARKS, _NOT_TARGET = _build(_joblib_tests)


def _load_memmapping() -> tuple[dict[str, types.FunctionType], dict[str, list[Any]]]:
    """The TWINNED tests of joblib's test_memmapping.py, imported as they are.

    Their helpers (``check_memmap_and_send_back``) travel by reference to the
    installed module, which a worker imports like any other.
    """
    try:
        module = importlib.import_module(_MEMMAPPING_MODULE)
    except ImportError:  # numpy missing, or a joblib without the file
        return {}, {}
    names = TWINNED[module.__name__]
    kept, marks, _ = _build(module, names)
    if TARGET == "poolx" and sorted(kept) != sorted(names):
        raise LoaderError(f"{module.__file__}: expected loky items for {sorted(names)}, found {sorted(kept)}")
    return kept, marks


_memmapping_tests, _memmapping_marks = _load_memmapping()
_TESTS.update(_memmapping_tests)
_MARKS.update(_memmapping_marks)


def __getattr__(name: str) -> Any:
    """joblib's helpers (``square``, ``nested_loop``, ...) as attributes of this module.

    They were defined with this module's name, so pickle sends them by
    reference as ``<this module>.square``: a worker (poolx's, or loky's in the
    nested tests) imports this module, which imports poolx.joblib and loads
    joblib's file the same way, as a user's module that uses the backend
    imports poolx.joblib.
    """
    try:
        return getattr(_joblib_tests, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


# --------------------------------------------------------------------------
# What joblib's tests call that must know about poolx (patched in the loaded
# module, for the whole session; TARGET=loky leaves them alone).

def _get_workers(backend: Any) -> Any:
    """test_parallel.get_workers, which reads the pool of joblib's backends (``_pool``, ``_workers``).

    The poolx backend's pool is its executor, ``_executor``: set by configure
    (kept for a managed ``with Parallel(...)``), None after terminate.
    """
    if isinstance(backend, PoolxBackend):
        return backend._executor
    return _get_workers.joblib(backend)


def _check_subprocess_call(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
    """joblib.testing.check_subprocess_call, with the child's script importing poolx.joblib first.

    The scripts of the interactively-defined-function tests say
    ``backend="poolx"``; a user's script would import poolx.joblib to have it.
    The script is ``-c`` text or a file the test wrote (rewritten in place).
    """
    cmd = list(cmd)
    if len(cmd) >= 3 and cmd[0] == sys.executable and cmd[1] == "-c":
        cmd[2] = _IMPORT_BACKEND + cmd[2]
    elif len(cmd) >= 2 and cmd[0] == sys.executable and cmd[1].endswith(".py") and os.path.isfile(cmd[1]):
        with open(cmd[1], encoding="utf-8") as f:
            source = f.read()
        with open(cmd[1], "w", encoding="utf-8") as f:
            f.write(_IMPORT_BACKEND + source)
    else:
        raise AssertionError(f"test_joblib_conformance: cannot add the backend's import to {cmd!r}")
    return _check_subprocess_call.joblib(cmd, *args, **kwargs)


_IMPORT_BACKEND = "import poolx.joblib  # registers the 'poolx' backend\n"

_PATCHED = {"get_workers": _get_workers, "check_subprocess_call": _check_subprocess_call}
if TARGET == "poolx":
    for _name, _patch in _PATCHED.items():
        if not hasattr(_joblib_tests, _name):
            raise LoaderError(f"{_joblib_tests.__file__} has no {_name} to patch")
        _patch.joblib = getattr(_joblib_tests, _name)  # type: ignore[attr-defined]
        setattr(_joblib_tests, _name, _patch)


# --------------------------------------------------------------------------
# Around each item: joblib's test, then the backend's shutdown and a look for
# processes left behind, in the item's call (so that a leftover is a failure
# of the item, which KNOWN_DEVIATIONS can mark), bounded in time (a nested
# executor that keeps its host process from exiting must not hang the run).

# How long processes may take to exit after the shutdown (the wait ends as
# soon as they are gone).  A loky worker that hosted a nested executor
# (test_nested_loop[loky-poolx]) takes 1.1 to 2.9 s to be gone after loky's
# shutdown on 2 busy cores (load ~10), most of it the interpreter's own
# finalization (gdb: Py_FinalizeEx -> finalize_modules -> gc), the same on
# 0e39549: 2 s failed it now and then; a process that does not exit at all
# still fails the item, 10 s later.
LEFTOVER_WAIT = 10.0


def _shutdown_workers() -> None:
    # The test's own leftovers first: a Manager() (test_dispatch_multiprocessing,
    # the initializer tests) stops when collected, and its proxies sit in
    # reference cycles (closures, generators).
    gc.collect()
    poolx.joblib.shutdown_workers(wait=True)
    from joblib.externals.loky import reusable_executor

    # Only an executor some item started (the nested tests with loky as parent
    # or child; joblib's own default backend): get_reusable_executor() would
    # create one to shut it down.  Not waited for here: its workers are
    # processes like any other below.
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=False)
    gc.collect()


# Processes whose parent exits before them are reparented to the nearest
# "subreaper", normally init: a look at this process's descendants would miss
# them (e.g. the workers a task started inside a poolx worker, left running
# when that worker exits).  This process is made one while the module runs
# (Linux), so such orphans become its children and are seen.
_PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


@pytest.fixture(scope="module", autouse=True)
def _orphans_are_ours():
    enabled = _set_subreaper(True)
    yield
    if enabled:
        _set_subreaper(False)


def _session_helpers() -> set[int]:
    """This process's multiprocessing forkserver and resource tracker, and loky's: kept for the session."""
    from multiprocessing import forkserver, resource_tracker

    from joblib.externals.loky.backend import resource_tracker as loky_tracker

    pids = {getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None),
            getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None),
            getattr(getattr(loky_tracker, "_resource_tracker", None), "_pid", None)}
    return {pid for pid in pids if pid}


def _descendants() -> dict[int, psutil.Process]:
    out = {}
    helpers = _session_helpers()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid not in helpers and proc.status() != psutil.STATUS_ZOMBIE:
                out[proc.pid] = proc
        except psutil.Error:
            continue
    return out


def _left_behind(before: set[int], timeout: float) -> dict[int, psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        new = {pid: proc for pid, proc in _descendants().items() if pid not in before}
        if not new or time.monotonic() >= deadline:
            return new
        time.sleep(0.05)


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{' '.join(proc.cmdline())[:160]} (pid {proc.pid}, parent {proc.ppid()})"
    except psutil.Error:
        return f"pid {proc.pid} (gone)"


def _kill(procs: list[psutil.Process]) -> None:
    everything = []
    for proc in procs:
        try:
            everything += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            pass
    for proc in everything:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(everything, timeout=5)  # reaps the ones that are our children


def _stop_managers(before: set[int]) -> None:
    """Shut down the multiprocessing Managers the test started (their server processes).

    joblib's tests leave their ``mp.Manager()`` to the garbage collector; a
    backend that keeps the initargs of its last executor after shutting it down
    keeps the Manager alive through a proxy in them (loky's reusable executor
    and poolx's backend both do, until their next executor).  That is the
    test's process, not the backend's.
    """
    for proc in multiprocessing.active_children():
        if proc.pid not in before and proc.name.startswith("SyncManager-"):
            proc.terminate()
            proc.join(5)


def _end_of_item(before: set[int]) -> str | None:
    """Shut the workers down; kill and describe what is still running after LEFTOVER_WAIT."""
    _shutdown_workers()
    _stop_managers(before)
    left = _left_behind(before, LEFTOVER_WAIT)
    if not left:
        return None
    described = sorted(_describe(proc) for proc in left.values())
    _kill(list(left.values()))
    return (f"processes still running {LEFTOVER_WAIT:g} s after the backends' shutdown (killed now): "
            f"{described}")


def _item(func: types.FunctionType, marks: list[Any] | None = None) -> types.FunctionType:
    """``func`` as an item of this module: its test, then _end_of_item."""

    @functools.wraps(func)
    def item(*args: Any, **kwargs: Any) -> Any:
        before = set(_descendants())
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            leftovers = _end_of_item(before)
            if leftovers and hasattr(exc, "add_note"):  # 3.11+
                exc.add_note(leftovers + " (the test failed: its traceback may be what kept some alive)")
            raise
        leftovers = _end_of_item(before)
        if leftovers:
            raise AssertionError(leftovers)
        return result

    if marks is not None:
        item.pytestmark = marks  # type: ignore[attr-defined]
    item.__module__ = __name__
    return item


globals().update({name: _item(func, _MARKS[name]) for name, func in _TESTS.items()})


def _matches(name: str, pattern: str) -> bool:
    """``*`` is the only wildcard (the brackets of an item id are literal)."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), name) is not None


@pytest.fixture(autouse=True)
def _tables(request):
    """Skip or mark the item from EXCLUDED, KNOWN_DEVIATIONS and FLAKY_DEVIATIONS."""
    name = request.node.name
    if TARGET == "poolx":
        for pattern, reason in EXCLUDED.items():
            if _matches(name, pattern):
                pytest.skip(reason)
        for table, strict in ((KNOWN_DEVIATIONS, True), (FLAKY_DEVIATIONS, False)):
            for pattern, reason in table.items():
                if _matches(name, pattern):
                    request.node.add_marker(pytest.mark.xfail(reason=reason, strict=strict))


# --------------------------------------------------------------------------
# The parts of excluded tests that do apply.

@_item
def test_error_capture_public_part(monkeypatch):
    """joblib's test_error_capture with poolx, its pool-replacement check left out (see EXCLUDED).

    The test reads the backend's pool (get_workers) to check that it is alive
    in a managed Parallel, still alive after an error, *replaced* by then, and
    gone after the ``with``.  poolx keeps its executor after an error by design
    (only the workers running the failed call's batches are replaced), so here
    get_workers gives a fresh token while the executor is there: the liveness
    checks and everything the user sees (the errors raised, KeyboardInterrupt,
    the managed Parallel still working after them) run as they are.
    """
    if TARGET != "poolx":
        pytest.skip(f"test_error_capture[{TARGET}] runs as it is")

    def alive(backend: Any) -> Any:
        return object() if getattr(backend, "_executor", None) is not None else None

    monkeypatch.setattr(_joblib_tests, "get_workers", alive)
    _TESTS["test_error_capture"](TARGET)


# --------------------------------------------------------------------------
# The harness's own checks.

# Tests that have a poolx item in every joblib this loader supports (1.4.2 on):
# if one goes missing, joblib changed and the loader or the tables need a look.
_EXPECTED = (
    "test_simple_parallel", "test_main_thread_renamed_no_warning", "test_nested_loop",
    "test_parallel_timeout_success", "test_parallel_timeout_fail", "test_error_capture",
    "test_error_in_task_iterator", "test_dispatch_one_job", "test_dispatch_multiprocessing",
    "test_batching_auto_subprocesses", "test_invalid_njobs", "test_backend_context_manager",
    "test_nested_backend_in_sequential", "test_backend_nesting_level",
    "test_parallel_with_interactively_defined_functions", "test_abort_backend",
)


def test_harness_loaded_poolx_items():
    """The loader found joblib's backend-parametrized tests and gave them poolx items."""
    missing = [name for name in _EXPECTED if name not in _TESTS]
    assert not missing, (f"joblib {joblib.__version__}'s {_JOBLIB_MODULE} has no {TARGET} item for "
                         f"{missing}; tests without one: {sorted(_NOT_TARGET)}")


def test_harness_tables_name_loaded_tests():
    """Each EXCLUDED/KNOWN_DEVIATIONS/FLAKY_DEVIATIONS pattern names a test this module collects."""
    for table in (EXCLUDED, KNOWN_DEVIATIONS, FLAKY_DEVIATIONS):
        for pattern in table:
            base = pattern.split("[", 1)[0]
            if base not in _TESTS and not hasattr(_joblib_tests, base):
                continue  # not in this joblib (test_initializer_* came with joblib 1.5)
            assert base in _TESTS, f"{pattern!r}: no collected test {base!r}"


def _clashes() -> list[str]:
    """Names joblib's module defines that this module defines otherwise (see __getattr__).

    (Its tests are not sent anywhere: this module's are the wrapped ones.)
    """
    mine = globals()
    return sorted(name for name, value in vars(_joblib_tests).items()
                  if not name.startswith("__") and name != "pytestmark" and name not in _TESTS
                  and name in mine
                  and mine[name] is not value
                  and not isinstance(value, types.ModuleType))


if _clashes():
    raise LoaderError(f"{_joblib_tests.__file__} defines {_clashes()}, which this module defines "
                       "too: those of joblib's would not travel to the workers by reference")
