"""CPython's own multiprocessing.Pool tests, run against poolx.Pool and poolx.ThreadPool.

poolx.Pool and poolx.ThreadPool claim to be drop-ins for
``multiprocessing.pool.Pool`` and ``multiprocessing.pool.ThreadPool``.  This
module takes the Pool tests of the *running* interpreter's stdlib ``test``
package (``test._test_multiprocessing``, the module behind
test_multiprocessing_{fork,forkserver,spawn}) and re-runs them with the pool
class swapped for poolx's.  Nothing is copied: the stdlib classes and mixins are
imported and combined into new ``unittest.TestCase`` classes, which pytest
collects like any other.  (tests/conformance/test_stdlib_conformance.py does the same for
ProcessPoolExecutor.)

How a stdlib class maps to a class here ({Method} is Fork, Forkserver, Spawn)::

    _TestPool               (processes) -> Poolx{Method}PoolTest
    _TestPool               (threads)   -> PoolxThreadsPoolTest
    _TestPoolWorkerErrors   (processes) -> Poolx{Method}PoolWorkerErrorsTest
    _TestPoolWorkerLifetime (processes) -> Poolx{Method}PoolWorkerLifetimeTest
    TestInitializers                    -> Poolx{Method}InitializersTest  (test_pool_initializer only)
    MiscTestCase                        -> PoolxForkserverMiscTest        (test_large_pool only, 3.13+)

Each class is built as the stdlib's own ``install_tests_in_module_dict`` builds
its ``WithProcessesTestPool``/``WithThreadsTestPool``/... classes, ``(suite,
type mixin, unittest.TestCase)``, where the type mixin is the stdlib's
ProcessesMixin (ThreadsMixin) with ``Pool`` pointed at poolx.Pool
(poolx.ThreadPool), plus one harness class first in the MRO (``_PoolxSetUp``).
The 'manager' type (``Manager().Pool``) does not involve poolx and is not run.

Some stdlib tests do not go through the mixin's ``Pool`` but call
``multiprocessing.Pool(...)`` themselves (_TestPoolWorkerErrors,
_TestPoolWorkerLifetime, TestInitializers); for them ``multiprocessing.Pool`` is
pointed at the pool under test while the test runs.  Tests that run a child
interpreter with a script that says ``from multiprocessing import Pool`` or
``multiprocessing.Pool(...)`` get the script rewritten to use poolx.Pool.

Start method: the stdlib's setUpModule sets the global start method for the
whole module (one module per start method); here each process class sets it
(``multiprocessing.set_start_method(..., force=True)``, which poolx.Pool honours
as the stdlib's Pool does) in setUpClass and puts the old one back in
tearDownClass, so that other test modules are not affected.  All three start
methods are run (about 20 s for the module on 2 cores); narrow ``SUITES`` to
trim it.

Tests that only inspect the stdlib's private machinery, or that check one of
poolx's documented deliberate differences, are listed in ``EXCLUDED`` (skipped
with the reason).  Tests that read ``pool._pool`` (the worker processes) or
call ``pool._repopulate_pool()`` run against read-only views of poolx's own
state under those names (``_recording``).  Real poolx deviations that are not fixed yet are listed in
``KNOWN_DEVIATIONS`` and run as strict xfails: when one gets fixed the run
fails with XPASS(strict), and the entry must go.  ``PATCHED`` lists the tests
that run with one stdlib module attribute replaced, and why.

Leak checks: besides tests/conftest.py's ``no_leaks``, each test and each class
is checked for processes (a forkserver's workers included) and threads left
behind; a pool a failing test left running is terminated after it.  The
shared ``Pool(4)`` of _TestPool is made to start its workers in setUpClass
so that they count as the class's.

Set ``POOLX_POOL_CONFORMANCE_TARGET=stdlib`` to run the same harness against
multiprocessing.pool.Pool/ThreadPool themselves (EXCLUDED and KNOWN_DEVIATIONS
are then ignored, PATCHED still applies: everything must pass or be skipped by
the stdlib's own conditions); that checks the harness, not poolx.

Needs the stdlib's ``test`` package (with _test_multiprocessing): some Python
builds leave it out, and then the whole module is skipped with the reason.
"""

from __future__ import annotations

import _thread
import importlib
import multiprocessing
import multiprocessing.pool
import os
import sys
import threading
import time
import unittest
import unittest.mock
import weakref

import pytest
from _conformance import bad_table_keys, known_deviation, skipped, table_entry
from conftest import _children

import poolx

# Each test's limit (pytest-timeout).  The slowest stdlib Pool tests take a few
# seconds; a hang (a pool that never finishes a join) must not take the
# suite's whole 60 s default.
pytestmark = [
    pytest.mark.timeout(30),
    # 3.12+ warns on every fork() from a process with threads (pytest's, here
    # with a pool's threads alive): the stdlib's own fork suite does the same.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"),
]

_MODULE = "test._test_multiprocessing"

try:
    import test.support  # noqa: F401  (the stdlib's test package is optional)

    _stdlib = importlib.import_module(_MODULE)
    import test.support.script_helper as _script_helper
except unittest.SkipTest as exc:  # e.g. _multiprocessing or sem_open missing, ASAN build
    pytest.skip(f"the stdlib's {_MODULE} skips itself here: {exc}", allow_module_level=True)
except ImportError as exc:
    pytest.skip(
        f"this interpreter ({sys.version.split()[0]}, {sys.prefix}) does not ship the stdlib's "
        f"{_MODULE} ({exc}); install the python3-test / libpython3.X-testsuite package, or run "
        "this module under another interpreter", allow_module_level=True,
    )

# --------------------------------------------------------------------------
# The pools under test.

TARGET = os.environ.get("POOLX_POOL_CONFORMANCE_TARGET", "poolx")
if TARGET not in ("poolx", "stdlib"):
    raise ValueError(f"POOLX_POOL_CONFORMANCE_TARGET must be 'poolx' or 'stdlib', not {TARGET!r}")

if TARGET == "poolx":
    _PROCESS_POOL, _THREAD_POOL = poolx.Pool, poolx.ThreadPool
else:
    _PROCESS_POOL, _THREAD_POOL = multiprocessing.pool.Pool, multiprocessing.pool.ThreadPool

# Every pool a test creates, weakly (test_resource_warning needs its pool to be
# collected), so that the harness can terminate the ones a failing test left
# running: they would fail every later test's leak checks.
_created: list[weakref.ref] = []


class _WorkerView:
    """Enough of multiprocessing.Process for the stdlib tests that read ``pool._pool``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def is_alive(self) -> bool:
        import psutil

        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def _workers_view(pool) -> list:
    """``pool._pool`` for poolx's pools: its live workers, read-only.

    The stdlib's constructor starts its workers itself; poolx's scheduler
    thread starts them just after, so the view first waits (at most 30 s)
    until they are ready.  Processes are seen by pid; a ThreadPool's are its
    threads.
    """
    backend = pool._executor._backend
    backend.wait_ready(30.0)
    if backend.uses_processes:
        return [_WorkerView(pid) for pid in backend.worker_pids()]
    return list(backend._pool._threads)


def _recording(pool_type):
    if isinstance(pool_type, type):
        def __init__(self, *args, **kwargs):
            pool_type.__init__(self, *args, **kwargs)
            _created.append(weakref.ref(self))

        views = {}
        if TARGET == "poolx":
            # Read-only views under the stdlib's private names (test_make_pool,
            # test_pool_worker_lifetime).  poolx replaces a retired worker by
            # itself, as the stdlib's worker handler thread does by calling
            # _repopulate_pool: the test's own call has nothing left to do.
            views = {"_pool": property(_workers_view), "_repopulate_pool": lambda self: None}
        return type(pool_type.__name__, (pool_type,), {
            "__init__": __init__, "__module__": __name__, "__qualname__": pool_type.__name__,
            "__doc__": f"{pool_type.__module__}.{pool_type.__qualname__}, recorded by the harness",
            **views,
        })

    def make(*args, **kwargs):
        pool = pool_type(*args, **kwargs)
        _created.append(weakref.ref(pool))
        return pool

    return make


ProcessPoolUnderTest = _recording(_PROCESS_POOL)
ThreadPoolUnderTest = _recording(_THREAD_POOL)


class PoolxProcessesMixin(_stdlib.ProcessesMixin):
    """The stdlib's ProcessesMixin, with poolx.Pool as the pool."""

    Pool = staticmethod(ProcessPoolUnderTest)


class PoolxThreadsMixin(_stdlib.ThreadsMixin):
    """The stdlib's ThreadsMixin, with poolx.ThreadPool as the pool."""

    Pool = staticmethod(ThreadPoolUnderTest)


# Suite (a class of test._test_multiprocessing) -> the variants it runs under:
# a start method (the processes type) or "threads".  "threads" only where the
# stdlib runs the suite with threads itself (its ALLOWED_TYPES).  Start methods
# this platform lacks are left out.  The whole module takes about 20 s on 2
# cores (8 s with forkserver alone), mostly the stdlib's own sleeps; fork is
# poolx.Pool's default on Linux up to 3.13 (multiprocessing's), forkserver
# from 3.14.
_ALL = ("fork", "forkserver", "spawn")
SUITES: dict[str, tuple[str, ...]] = {
    "_TestPool": (*_ALL, "threads"),
    "_TestPoolWorkerErrors": _ALL,
    "_TestPoolWorkerLifetime": _ALL,
    "TestInitializers": _ALL,
    # Its one Pool test runs a child interpreter, which uses its own default
    # start method whatever the class sets: once is enough.
    "MiscTestCase": ("forkserver",),
}

# Suites that mix Pool tests with others: only these of their tests are run
# (the others are about Manager, multiprocessing.__all__, ...; not about Pool).
POOL_TESTS_ONLY: dict[str, tuple[str, ...]] = {
    "TestInitializers": ("test_pool_initializer",),
    "MiscTestCase": ("test_large_pool",),   # 3.13+
}

# Suites that call multiprocessing.Pool(...) themselves instead of self.Pool.
USE_MULTIPROCESSING_POOL = ("_TestPoolWorkerErrors", "_TestPoolWorkerLifetime", "TestInitializers",
                            "MiscTestCase")

# --------------------------------------------------------------------------
# Exclusions: "Suite.test_name" (every variant) or "GeneratedClass.test_name".

# No test reads a private attribute that the harness cannot answer: pool._pool
# and pool._repopulate_pool() are views (see _recording).  The one exclusion is
# a test whose stdlib pass rests on a race, on two Python versions.
EXCLUDED: dict[str, str] = {}
if (3, 11) <= sys.version_info < (3, 13):
    EXCLUDED["PoolxThreadsPoolTest.test_terminate"] = (
        "3.11/3.12's version gives each task time.sleep(support.LONG_TIMEOUT) (300 s), then "
        "terminate() and join(); a thread cannot be stopped, so join() waits for the tasks that "
        "started.  The stdlib's ThreadPool passes only because its task-handler thread has "
        "usually not handed a task to a worker yet when terminate() runs; poolx.ThreadPool "
        "starts tasks at once.  3.13's version (1 s tasks for threads: \"Thread pool workers "
        "can't be forced to quit\") and 3.10's are run")

# Real deviations of poolx from the stdlib, not fixed yet.  They run as strict
# xfails: when one gets fixed the run fails with XPASS(strict), and the entry
# must go.
KNOWN_DEVIATIONS: dict[str, str] = {}

# Tests that run with one stdlib attribute replaced (in both TARGET modes):
# "Suite.test_x" -> [(module, attribute, value)].
PATCHED: dict[str, list[tuple[str, str, object]]] = {
    # The test's "unpicklable" result is a lambda, which poolx pickles (with
    # cloudpickle: lambdas and closures work, a documented difference).  A
    # lock is unpicklable for both, so the test checks what it means to: an
    # unpicklable result gives MaybeEncodingError and no worker is lost.
    "_TestPoolWorkerErrors.test_unpickleable_result":
        [(_MODULE, "unpickleable_result", _thread.allocate_lock)],
}


def _reason(cls_name: str, suite: str, test: str, table: dict, always: bool = False):
    if TARGET != "poolx" and not always:
        return None
    return table_entry(cls_name, suite, test, table)


# --------------------------------------------------------------------------
# The harness.

def _rewrite_child_script(source: str) -> str:
    """Point a stdlib child script's multiprocessing.Pool at poolx.Pool."""
    if TARGET != "poolx":
        return source
    return (source.replace("from multiprocessing import Pool", "from poolx import Pool")
                  .replace("multiprocessing.Pool(", "__import__('poolx').Pool("))


def _assert_python_ok(*args, **env_vars):
    """script_helper.assert_python_ok, with its script (-c text or a file) rewritten.

    A script file is one the test itself wrote (os_helper.TESTFN, a relative
    path, which the test deletes afterwards): it is rewritten in place.
    """
    args = tuple(_rewrite_child_script(a) if isinstance(a, str) else a for a in args)
    for arg in args:
        if (isinstance(arg, (str, os.PathLike)) and not os.path.isabs(arg)
                and os.path.isfile(arg)):
            with open(arg, encoding="utf-8") as f:
                source = f.read()
            if _rewrite_child_script(source) != source:
                with open(arg, "w", encoding="utf-8") as f:
                    f.write(_rewrite_child_script(source))
    return _assert_python_ok.real(*args, **env_vars)


_assert_python_ok.real = _script_helper.assert_python_ok


def _terminate(pool) -> None:
    try:
        pool.terminate()
        pool.join()
    except Exception:
        pass


def _terminate_created() -> None:
    # No local may keep a pool alive past this function.
    refs, _created[:] = list(_created), []
    while refs:
        pool = refs.pop()()
        if pool is not None:
            _terminate(pool)
        pool = None


def _start_workers(pool) -> None:
    """Have a class's shared pool start its workers now.

    The stdlib's Pool starts all its workers in __init__; poolx's start on
    demand.  Started here, in setUpClass, they are not counted as left behind by
    the first test that uses the pool (by the leak checks below, and by
    tests/conftest.py's no_leaks, which compares poolx thread names).
    """
    pool.map(time.sleep, [0.2] * 8, chunksize=1)


class _PoolxSetUp:
    """First in the MRO: the start method around the class, patches around each test."""

    _suite_name = ""
    _start_method: str | None = None
    _use_multiprocessing_pool = False

    @classmethod
    def setUpClass(cls):
        if cls._start_method is not None:
            cls._old_start_method = multiprocessing.get_start_method(allow_none=True)
            multiprocessing.set_start_method(cls._start_method, force=True)
        try:
            super().setUpClass()
            if getattr(cls, "pool", None) is not None:  # _TestPool's shared Pool(4)
                _start_workers(cls.pool)
        except BaseException:
            cls._restore_start_method()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls._restore_start_method()

    @classmethod
    def _restore_start_method(cls):
        if cls._start_method is not None:
            multiprocessing.set_start_method(cls._old_start_method, force=True)

    def setUp(self):
        _created.clear()  # not the class's own pool (setUpClass), only the test's
        # Registered first, so it runs last: after the suite's tearDown and
        # its own cleanups (a suite's tearDown need not call super()).
        self.addCleanup(_terminate_created)
        self._patch(_script_helper, "assert_python_ok", _assert_python_ok)
        if self._use_multiprocessing_pool:
            self._patch(multiprocessing, "Pool", ProcessPoolUnderTest)
        for modname, attr, value in _reason(type(self).__name__, self._suite_name,
                                            self._testMethodName, PATCHED, always=True) or ():
            self._patch(importlib.import_module(modname), attr, value)
        super().setUp()

    def _patch(self, obj, attr, value):
        patcher = unittest.mock.patch.object(obj, attr, value)
        patcher.start()
        self.addCleanup(patcher.stop)


# --------------------------------------------------------------------------
# Leak checks.  tests/conftest.py's no_leaks (autouse, so it wraps these tests
# too) runs per test and looks only at threads named poolx*.  These checks use
# its process finder (a forkserver's workers included) and look at every
# thread (the stdlib ThreadPool's, under TARGET=stdlib), per test and per class
# (a class's shared pool lives from setUpClass to tearDownClass).

def _threads() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if t.is_alive() and t.ident is not None}


def _check_left_behind(before_procs: set[int], before_threads: set[int], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        procs = {p: c for p, c in _children().items() if p not in before_procs}
        threads = {i: n for i, n in _threads().items() if i not in before_threads}
        if not procs and not threads:
            return
        time.sleep(0.02)
    assert not procs, f"processes left behind by {what}: {sorted(procs.values())}"
    assert not threads, f"threads left behind by {what}: {sorted(threads.values())}"


@pytest.fixture(scope="class", autouse=True)
def _no_leaks_per_class(request):
    """Around setUpClass ... tearDownClass: nothing left when the class is done."""
    before_procs, before_threads = set(_children()), set(_threads())
    yield
    if request.cls is not None:
        _check_left_behind(before_procs, before_threads, request.cls.__name__)


@pytest.fixture(autouse=True)
def _no_leaks_per_test(request):
    before_procs, before_threads = set(_children()), set(_threads())
    yield
    _check_left_behind(before_procs, before_threads, request.node.name)


# --------------------------------------------------------------------------
# Build the classes.

def _short(name: str) -> str:
    name = name.lstrip("_")
    for affix in ("TestCase", "Test"):
        if name.startswith(affix):
            name = name[len(affix):]
        if name.endswith(affix):
            name = name[: -len(affix)]
    return name


def _build() -> tuple[dict[str, type], list[str]]:
    classes: dict[str, type] = {}
    missing: list[str] = []
    for suite_name, variants in SUITES.items():
        suite = getattr(_stdlib, suite_name, None)
        if suite is None:
            missing.append(suite_name)
            continue
        is_typed = issubclass(suite, _stdlib.BaseTestCase)
        for variant in variants:
            if variant == "threads":
                if not is_typed or "threads" not in suite.ALLOWED_TYPES:
                    missing.append(f"{suite_name} with threads (the stdlib does not run it so)")
                    continue
                mixins: tuple[type, ...] = (PoolxThreadsMixin,)
                start_method = None
            else:
                if variant not in multiprocessing.get_all_start_methods():
                    continue
                mixins = (PoolxProcessesMixin,) if is_typed else ()
                start_method = variant
            name = f"Poolx{variant.capitalize()}{_short(suite_name)}Test"
            ns: dict[str, object] = {
                "__module__": __name__,
                "__qualname__": name,
                "_suite_name": suite_name,
                "_start_method": start_method,
                "_use_multiprocessing_pool": suite_name in USE_MULTIPROCESSING_POOL,
            }
            only = POOL_TESTS_ONLY.get(suite_name)
            n_tests = 0
            for attr in dir(suite):
                if not attr.startswith("test"):
                    continue
                if only is not None and attr not in only:
                    ns[attr] = None  # not a Pool test: not collected
                    continue
                n_tests += 1
                if (why := _reason(name, suite_name, attr, EXCLUDED)) is not None:
                    ns[attr] = skipped(why)
                elif (why := _reason(name, suite_name, attr, KNOWN_DEVIATIONS)) is not None:
                    ns[attr] = known_deviation(getattr(suite, attr), why)
            if n_tests == 0:  # e.g. MiscTestCase before 3.13: no Pool test
                continue
            bases = (_PoolxSetUp, suite, *mixins, unittest.TestCase)
            classes[name] = type(name, bases, ns)
    return classes, missing


_classes, _missing = _build()
globals().update(_classes)


def test_stdlib_suites_found():
    """Every stdlib suite this module maps is present in this Python's test package."""
    assert not _missing, f"not found in {_MODULE} of Python {sys.version.split()[0]}: {_missing}"


def test_tables_name_mapped_suites():
    """Each EXCLUDED/KNOWN_DEVIATIONS/PATCHED key is 'Suite.test_x' or 'GeneratedClass.test_x'."""
    bad = bad_table_keys((EXCLUDED, KNOWN_DEVIATIONS, PATCHED), set(SUITES) | set(_classes))
    assert not bad, bad


@pytest.mark.parametrize("pool_type", [ProcessPoolUnderTest, ThreadPoolUnderTest],
                         ids=["Pool", "ThreadPool"])
def test_make_pool_public_part(pool_type):
    """_TestPool.test_make_pool without its count of the private _pool (the harness's view)."""
    with pytest.raises(ValueError):
        pool_type(-1)
    with pytest.raises(ValueError):
        pool_type(0)
