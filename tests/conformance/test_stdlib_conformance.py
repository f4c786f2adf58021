"""CPython's own ProcessPoolExecutor tests, run against poolx.Executor.

poolx.Executor claims to be a drop-in for ``concurrent.futures.ProcessPoolExecutor``.
This module takes the test suites of the *running* interpreter's stdlib ``test``
package (``test.test_concurrent_futures``: one module on 3.10/3.11, a package on
3.12+) and re-runs them with ``executor_type`` swapped for poolx.  Nothing is
copied: the stdlib mixins are imported and combined into new ``unittest.TestCase``
classes, which pytest collects like any other.

How a stdlib class maps to a class here (3.12+ module names; on 3.10/3.11 all
of them live in test_concurrent_futures itself)::

    test_process_pool.ProcessPoolExecutorTest -> Poolx{Fork,Forkserver,Spawn}ProcessPoolExecutorTest
        (+ executor.ExecutorTest, its base)
    test_shutdown.ProcessPoolShutdownTest      -> Poolx{...}ProcessPoolShutdownTest
        (+ ExecutorShutdownTest, its base)
    test_wait.WaitTests                        -> Poolx{...}WaitTest
    test_as_completed.AsCompletedTests         -> Poolx{...}AsCompletedTest
    test_init.InitializerMixin                 -> Poolx{...}InitializerTest
    test_init.FailingInitializerMixin          -> Poolx{...}FailingInitializerTest
    test_deadlock.ExecutorDeadlockTest         -> Poolx{...}ExecutorDeadlockTest

Each class is built as the stdlib's own ``create_executor_tests`` builds its
``ProcessPool{Fork,Forkserver,Spawn}*Test`` classes, ``(suite, start-method
mixin, BaseTestCase)``, with ``executor_type = PoolxExecutor`` (poolx.Executor
plus read-only views under four stdlib private names, see its docstring) and
two harness classes around them (``_PoolxSetUp``, ``_PoolxTearDown``).

Tests that only inspect the stdlib's private machinery, or that check one of
poolx's documented deliberate differences, are listed in ``EXCLUDED`` (skipped
with the reason).  Real poolx deviations that are not fixed yet are listed in
``KNOWN_DEVIATIONS`` and run as strict xfails: when one gets fixed the run
fails with XPASS(strict), and the entry must go.  ``PATCHED`` lists the tests
that run with one stdlib private name pointed at poolx's equivalent.

Needs the stdlib's ``test`` package: some Python builds leave it out (the
pyenv 3.11.7 and 3.12.1 here ship ``test`` without test_concurrent_futures), and
then the whole module is skipped with the reason.

The ThreadPoolExecutor variants and ``test_future`` (Future's own semantics) are
not run: they do not involve poolx.Executor.
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys
import threading
import time
import unittest
import unittest.mock

import pytest
from _conformance import bad_table_keys, known_deviation, skipped, table_entry

import poolx

# --------------------------------------------------------------------------
# Where the stdlib keeps each piece, on 3.10/3.11 (one module) and 3.12+ (a package).

_PKG = "test.test_concurrent_futures"
_SUBMODULES = ("util", "executor", "test_process_pool", "test_shutdown", "test_wait",
               "test_as_completed", "test_init", "test_deadlock")

try:
    import test.support  # noqa: F401  (the stdlib's test package is optional)

    _stdlib = importlib.import_module(_PKG)
except unittest.SkipTest as exc:  # e.g. _multiprocessing missing, ASAN build
    pytest.skip(f"the stdlib's {_PKG} skips itself here: {exc}", allow_module_level=True)
except ImportError as exc:
    pytest.skip(
        f"this interpreter ({sys.version.split()[0]}, {sys.prefix}) does not ship the stdlib's "
        f"{_PKG} ({exc}); install the python3-test / libpython3.X-testsuite package, or run "
        "this module under another interpreter", allow_module_level=True,
    )

_modules = [_stdlib]
if hasattr(_stdlib, "__path__"):  # 3.12+: a package
    for _name in _SUBMODULES:
        try:
            _modules.append(importlib.import_module(f"{_PKG}.{_name}"))
        except ImportError:
            pass
        except unittest.SkipTest as exc:
            pytest.skip(f"the stdlib's {_PKG}.{_name} skips itself here: {exc}",
                        allow_module_level=True)


def _find(name: str):
    for mod in _modules:
        obj = getattr(mod, name, None)
        if obj is not None:
            return obj
    return None


_BaseTestCase = _find("BaseTestCase")

# Start method -> the stdlib's mixin for it.
_START_METHOD_MIXINS = {
    "fork": _find("ProcessPoolForkMixin"),
    "forkserver": _find("ProcessPoolForkserverMixin"),
    "spawn": _find("ProcessPoolSpawnMixin"),
}
_AVAILABLE = [m for m in _START_METHOD_MIXINS if m in multiprocessing.get_all_start_methods()]

_ALL = tuple(_AVAILABLE)

# Suite -> the start methods it runs under: all three for every suite.  The whole
# module takes about 1.5 min on 2 cores, mostly the stdlib's own sleeps (on
# 3.10/3.11 test_timeout and test_map_timeout sleep 6 s each, per start method).
# To trim it, narrow the slow suites here, e.g. to ("forkserver", "spawn").
SUITES = {
    "ProcessPoolExecutorTest": _ALL,   # executor.ExecutorTest + process-pool specifics
    "ProcessPoolShutdownTest": _ALL,   # ExecutorShutdownTest + process-pool specifics
    "WaitTests": _ALL,
    "AsCompletedTests": _ALL,
    "InitializerMixin": _ALL,
    "FailingInitializerMixin": _ALL,
    "ExecutorDeadlockTest": _ALL,
}

# --------------------------------------------------------------------------
# Exclusions: "Suite.test_name" (every start method) or "GeneratedClass.test_name".

_PRIVATE = "inspects the stdlib's private machinery ({}), which poolx does not have"
_HARDCODED = ("builds a concurrent.futures.ProcessPoolExecutor itself (not executor_type) and "
              "inspects its private {}: it tests the stdlib, not poolx")

EXCLUDED: dict[str, str] = {
    # -- deliberate differences (documented) ----------------------------------
    "ProcessPoolExecutorTest.test_killed_child":
        "reads the private _processes (to pick a worker to kill), then checks a deliberate "
        "difference: a dead worker fails only the task it ran (WorkerDiedError) and the pool "
        "keeps serving; the stdlib breaks the whole pool and refuses new submits",
    # -- private attributes ---------------------------------------------------
    "ProcessPoolExecutorTest.test_saturation":
        "counts the private _processes right after submitting calls that cannot be pickled (a "
        "Semaphore's bound acquire): the stdlib starts a process per submit (up to max_workers) "
        "before its feeder thread pickles the call; poolx pickles at submit, so a call that "
        "cannot be pickled never reaches the engine and no worker starts for it.  The public "
        "outcome matches: each future fails with the pickling error (test_error_at_task_pickle)",
    "ProcessPoolShutdownTest.test_processes_terminate":
        "counts the private _processes right after submitting calls that cannot be pickled (a "
        "Semaphore argument), as test_saturation (see there); it then joins them",
    "ProcessPoolShutdownTest.test_del_shutdown":
        _HARDCODED.format("_call_queue (and _processes, _executor_manager_thread)") + "; poolx "
        "has no call queue to join, so it cannot be pointed at poolx as "
        "test_context_manager_shutdown is",
    "ProcessPoolShutdownTest.test_shutdown_no_wait":
        _HARDCODED.format("_call_queue (and _processes, _executor_manager_thread)") + "; poolx "
        "has no call queue to join, so it cannot be pointed at poolx as "
        "test_context_manager_shutdown is",
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context":
        "reads the private _mp_context (the harness's view answers it) and expects 'spawn', the "
        "stdlib's default up to 3.13 with max_tasks_per_child; poolx defaults to forkserver on "
        "Linux (Python 3.14's default).  The intent (max_tasks_per_child never uses fork by "
        "default) holds",
    "ExecutorDeadlockTest.test_gh105829_should_not_deadlock_if_wakeup_pipe_full":
        _PRIVATE.format("it mocks _ExecutorManagerThread.run and _ThreadWakeup; against poolx "
                        "the mocks do nothing and the test is a plain map()"),
}

# Real deviations of poolx from the stdlib, not fixed yet.  They run as strict
# xfails: when one gets fixed the run fails with XPASS(strict), and the entry
# must go.
KNOWN_DEVIATIONS: dict[str, str] = {}

# Tests that run with one stdlib attribute pointed at poolx's equivalent.
PATCHED: dict[str, list[tuple[str, str, object]]] = {}


# --------------------------------------------------------------------------
# The executor under test.

class PoolxExecutor(poolx.Executor):
    """poolx.Executor plus read-only views under the stdlib's private names.

    A few stdlib tests read ``_processes`` (only to count workers or join
    them), ``_broken`` (to wait until an initializer failure broke the pool),
    ``_mp_context`` or ``_executor_manager_thread`` (only to join it: poolx's
    scheduler thread).  These views answer from poolx's own state; nothing else is
    changed.  Every instance is recorded, so that the harness can shut down the
    executors a failing test left running.
    """

    _created: list[poolx.Executor] = []

    def __init__(self, *args, **kwargs):
        PoolxExecutor._created.append(self)
        super().__init__(*args, **kwargs)

    @property
    def _processes(self) -> dict[int, _WorkerHandle]:
        return {pid: _WorkerHandle(pid) for pid in self._backend.worker_pids()}

    @property
    def _broken(self):
        return getattr(self._backend, "broken", None)

    @property
    def _mp_context(self):
        return self._backend.context

    @property
    def _executor_manager_thread(self):
        # (test_shutdown_deadlock_pickle joins it: poolx's scheduler thread plays its part)
        return self._backend._scheduler


# test_context_manager_shutdown builds concurrent.futures.ProcessPoolExecutor
# itself (not executor_type); pointed at poolx, it runs a map and a with-block
# shutdown, and joins the workers through the _processes view.
PATCHED["ProcessPoolShutdownTest.test_context_manager_shutdown"] = [
    ("concurrent.futures", "ProcessPoolExecutor", PoolxExecutor)]


class _WorkerHandle:
    """Enough of multiprocessing.Process for the stdlib tests: join/terminate by pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _gone(self) -> bool:
        import psutil

        try:
            return psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._gone() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.01)

    def is_alive(self) -> bool:
        return not self._gone()

    def terminate(self) -> None:
        import os
        import signal

        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _rewrite_child_script(source: str, executor_name: str) -> str:
    """Point a stdlib child script at poolx instead of concurrent.futures.

    Also import multiprocessing there: test_hang_gh83386's script calls
    ``multiprocessing.set_start_method`` without importing it (the stdlib skips
    that test for ProcessPoolExecutor, so its own run never noticed).
    """
    return source.replace(f"from concurrent.futures import {executor_name}",
                          f"import multiprocessing; from poolx import Executor as {executor_name}")


class _PoolxSetUp:
    """First in the MRO: patches applied before the stdlib's setUp runs."""

    _suite_name = ""
    _suite_module = ""

    def setUp(self):
        PoolxExecutor._created = []
        # ExecutorShutdownTest runs child interpreters with scripts that say
        # `from concurrent.futures import <executor_type.__name__>`.
        mod = sys.modules.get(self._suite_module)
        real = getattr(mod, "assert_python_ok", None)
        if real is not None:
            name = self.executor_type.__name__

            def assert_python_ok(*args, **env):
                return real(*(_rewrite_child_script(a, name) if isinstance(a, str) else a
                              for a in args), **env)

            self._patch(mod, "assert_python_ok", assert_python_ok)
        test = self._testMethodName
        for modname, attr, value in table_entry(type(self).__name__, self._suite_name, test,
                                            PATCHED) or ():
            self._patch(importlib.import_module(modname), attr, value)
        super().setUp()

    def _patch(self, obj, attr, value):
        patcher = unittest.mock.patch.object(obj, attr, value)
        patcher.start()
        self.addCleanup(patcher.stop)


def _shutdown_all_created() -> None:
    # A function of its own, so that no local outlives it: a leftover reference
    # to an executor would keep its scheduler Thread alive.
    created, PoolxExecutor._created = PoolxExecutor._created, []
    for ex in created:
        try:
            ex.shutdown(wait=True, cancel_futures=True)
        except Exception:
            pass


def _forget_stopped_poolx_threads() -> None:
    for t in list(threading._dangling):
        if t.name.startswith("poolx") and not t.is_alive():
            threading._dangling.discard(t)


class _PoolxTearDown:
    """Just before the stdlib's BaseTestCase in the MRO: its tearDown checks threads.

    1. Shut down every executor the test created: a stdlib test that fails
       halfway leaves its own executor running (``_check_crash`` shuts down
       only on success), which would fail every later test's leak checks.
    2. Wait for poolx threads to end, then drop the *stopped* ones from
       ``threading._dangling``.  A stopped poolx Thread object can outlive its
       executor for harmless reasons: the scheduler Thread sits in a reference
       cycle with its backend until the cyclic GC runs, and a failed test's
       traceback keeps its executor alive.  The stdlib's ``threading_cleanup``
       counts such objects as dangling threads, and on 3.10/3.11 it then holds
       one itself (a loop variable of its warning) and spins 100 GC rounds,
       about 5 s per test.  Live threads are still reported, and
       tests/conftest.py's ``no_leaks`` fails the test on a live poolx thread.
    """

    def tearDown(self):
        _shutdown_all_created()
        deadline = time.monotonic() + 5.0
        while (any(t.name.startswith("poolx") for t in threading.enumerate())
               and time.monotonic() < deadline):
            time.sleep(0.005)
        _forget_stopped_poolx_threads()
        super().tearDown()


# --------------------------------------------------------------------------
# Build the classes.

def _short(name: str) -> str:
    for suffix in ("Mixin", "Tests", "Test"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _build() -> tuple[dict[str, type], list[str]]:
    classes: dict[str, type] = {}
    missing: list[str] = []
    if _BaseTestCase is None:
        return classes, ["BaseTestCase"]
    for suite_name, methods in SUITES.items():
        suite = _find(suite_name)
        if suite is None:
            missing.append(suite_name)
            continue
        for method in methods:
            start_mixin = _START_METHOD_MIXINS[method]
            if start_mixin is None:
                missing.append(f"the {method} mixin")
                continue
            name = f"Poolx{method.capitalize()}{_short(suite_name)}Test"
            ns: dict[str, object] = {
                "__module__": __name__,
                "__qualname__": name,
                "executor_type": PoolxExecutor,
                "_suite_name": suite_name,
                "_suite_module": suite.__module__,
            }
            for attr in dir(suite):
                if not attr.startswith("test"):
                    continue
                if (why := table_entry(name, suite_name, attr, EXCLUDED)) is not None:
                    ns[attr] = skipped(why)
                elif (why := table_entry(name, suite_name, attr, KNOWN_DEVIATIONS)) is not None:
                    ns[attr] = known_deviation(getattr(suite, attr), why)
            bases = (_PoolxSetUp, suite, start_mixin, _PoolxTearDown, _BaseTestCase)
            classes[name] = type(name, bases, ns)
    return classes, missing


_classes, _missing = _build()
globals().update(_classes)


def test_stdlib_suites_found():
    """Every stdlib suite this module maps is present in this Python's test package."""
    assert not _missing, f"not found in {_PKG} of Python {sys.version.split()[0]}: {_missing}"


def test_tables_name_mapped_suites():
    """Each EXCLUDED/KNOWN_DEVIATIONS/PATCHED key is 'Suite.test_x' or 'GeneratedClass.test_x'."""
    bad = bad_table_keys((EXCLUDED, KNOWN_DEVIATIONS, PATCHED), set(SUITES) | set(_classes))
    assert not bad, bad
