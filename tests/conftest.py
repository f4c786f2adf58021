"""Shared fixtures: backends and start methods, and the leak guard every test gets.

The leak guard (``no_leaks``, autouse) checks after every test of the suite
that the test left behind no child process, no thread, no file descriptor and
no shared memory (a new ``/dev/shm`` entry, or a poolx segment still mapped).
Long-lived helpers that the stdlib starts once per interpreter (the
forkserver, the resource tracker) are started before the first test, so that
their processes and fds are part of every test's "before".  A test that must
leave something on purpose says so with ``@pytest.mark.leaks("fds", ...)``
("threads", "fds", "shm").

The suite's layout, by area (the folders have no ``__init__.py``: pytest puts
each test module's folder on sys.path, so every test file needs its own name):

- ``engine/``: the processes backend, its faults and their blame, IPC security,
  shared memory, whole-program lifecycle, bad inputs, the soak in small;
- ``frontends/``: Executor, Pool, the Ray-style API, joblib, iterators,
  actors, collectives;
- ``conformance/``: CPython's executor and Pool suites and joblib's own suite,
  run against poolx;
- ``cluster/``: the dask and ray backends against real clusters;
- ``harness/``: ``poolx profile`` (also on clusters), ``poolx bench``, the
  benchmarks' smoke test, the real-browser check;
- ``docs/``: the docs' and README's examples and commands;
- ``support/``: the helper modules (``_tasks``, ``_helpers``, ...), imported by
  plain name by the tests and by the worker processes that unpickle their
  functions: pyproject's ``pythonpath`` puts the folder on sys.path, and the
  workers started by spawn or forkserver inherit it.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time

import psutil
import pytest

import poolx


def _cluster_backends() -> list[str]:
    """The cluster backends every backend-parametrized test also runs on (issue 9):
    those whose engine is installed, or POOLX_TEST_BACKENDS (e.g. "dask", or "" for none)."""
    chosen = os.environ.get("POOLX_TEST_BACKENDS")
    if chosen is not None:
        return [b for b in chosen.split(",") if b]
    return [b for b, module in (("dask", "distributed"), ("ray", "ray")) if importlib.util.find_spec(module)]


CLUSTER_BACKENDS = _cluster_backends()
BACKENDS = ["serial", "threads", "processes", *CLUSTER_BACKENDS]
START_METHODS = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]

# Helper processes the stdlib keeps for the life of the interpreter: the
# forkserver and the resource tracker.  They are not workers and not leaks.
_STDLIB_HELPERS = ("forkserver", "resource_tracker")


# The test clusters' processes (a Dask scheduler and workers, a Ray instance):
# they live for the whole session, and whatever they start is theirs.
_CLUSTER_ROOTS: set[int] = set()


def _children() -> dict[int, str]:
    me = psutil.Process()
    out = {}
    theirs: set[int] = set(_CLUSTER_ROOTS)
    for child in me.children(recursive=True):  # (parents are listed before their children)
        try:
            cmd = " ".join(child.cmdline())
            parent = child.ppid()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if child.pid in theirs or parent in theirs:
            theirs.add(child.pid)
            continue
        # The helpers themselves are ours; a forkserver's children are workers
        # (they share its command line) and count.
        if parent == me.pid and any(h in cmd for h in _STDLIB_HELPERS):
            continue
        out[child.pid] = cmd
    return out


# Threads a library keeps for the whole process once started: not leaks.
_PROCESS_THREADS = (
    "Dask-Callback-Thread",  # distributed runs every future's done-callbacks on one global pool
    "Dask-Offload",  # and (de)serializes large messages on another
    "Dummy-",  # threads Ray's core worker starts outside Python's threading (its callbacks)
)


def _threads() -> dict[int, str]:
    return {t.ident or 0: t.name for t in threading.enumerate()
            if t.is_alive() and not t.name.startswith(_PROCESS_THREADS)}


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own fd, closed by now
            pass
    return out


def _shm_names() -> set[str]:
    """This process's entries in /dev/shm: poolx's (it makes none) and those named after our pid.

    (joblib's memmapping folders and loky's semaphores carry the pid of the
    process that made them; other processes on the machine are not our business.)
    """
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return set()
    me = str(os.getpid())
    return {n for n in names if n.startswith("poolx") or (
        me in n.replace("-", "_").split("_")
        # joblib's loky backend keeps a memmapping folder per call until its
        # own resource tracker deletes it (a peer's, in the comparison tests)
        and not n.startswith("joblib_memmapping_folder_"))}


def _poolx_mappings() -> int:
    """Shared-memory segments of poolx mapped in this process (poolx._shm names its memfds)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:poolx" in line)


_LINUX = os.path.isdir("/proc/self/fd")


def _wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="session", autouse=True)
def _stdlib_helpers_started():
    """Start the helpers the stdlib keeps for the whole session before the first test."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        from multiprocessing import forkserver

        forkserver.ensure_running()
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    # The thread poolx starts its children from, kept for the life of the process.
    from poolx.backends.processes import _lifetime

    _lifetime.starter_thread()
    # loky's and joblib's copy of it: the tests that compare with loky start them.
    for name in ("loky.backend.resource_tracker", "joblib.externals.loky.backend.resource_tracker"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.ensure_running()
    yield


# Leaks that are not poolx's: objects of the stdlib's or a peer's own tests,
# which a test keeps after it ends.  (nodeid fragment -> (kinds, why))
_FOREIGN_LEAKS = {
    "InitializersTest::test_pool_initializer": (
        ("fds",), "the stdlib test keeps a Manager Namespace proxy, and its socket, on the TestCase"),
    "FailingInitializerTest::test_initializer": (
        ("fds", "shm"), "the stdlib test keeps the multiprocessing.Queue it logs through (a pipe, and "
                        "named semaphores under forkserver and spawn) on the TestCase"),
}


# The cluster engines the collected tests need (started once, for the session).
_ENGINES_NEEDED: set[str] = set()


def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        fixtures = getattr(item, "fixturenames", ())
        if params.get("backend") == "dask" or "dask_address" in fixtures:
            _ENGINES_NEEDED.add("dask")
        if params.get("backend") == "ray" or "ray_cluster" in fixtures:
            _ENGINES_NEEDED.add("ray")
            # Ray's core worker opens sockets and log files in the driver as it
            # goes (Ray 2.60): Ray's, not poolx's.
            item.add_marker(pytest.mark.leaks("fds"))
        for fragment, (kinds, _why) in _FOREIGN_LEAKS.items():
            if fragment in item.nodeid:
                item.add_marker(pytest.mark.leaks(*kinds))


def _new(before: dict[int, str], now: dict[int, str]) -> dict[int, str]:
    return {k: v for k, v in now.items() if before.get(k) != v}


@pytest.fixture(autouse=True)
def no_leaks(request):
    """After each test: no child process, thread, fd or shared memory left behind."""
    allowed = set()
    for marker in request.node.iter_markers("leaks"):
        allowed.update(marker.args)
    before_procs = set(_children())
    before_threads = _threads()
    before_fds = _fds() if _LINUX else {}
    before_shm = _shm_names()
    yield
    assert _wait_until(lambda: not (set(_children()) - before_procs)), (
        f"processes left behind: {[ _children().get(p) for p in set(_children()) - before_procs]}"
    )
    if "threads" not in allowed:
        assert _wait_until(lambda: not _new(before_threads, _threads())), (
            f"threads left behind: {sorted(_new(before_threads, _threads()).values())}"
        )
    if not _LINUX:
        return

    def settled() -> bool:
        fds_ok = "fds" in allowed or not _new(before_fds, _fds())
        shm_ok = "shm" in allowed or not (_shm_names() - before_shm)
        return fds_ok and shm_ok and _poolx_mappings() == 0

    def collected_and_settled() -> bool:
        gc.collect()  # (only when needed: a full collection per test costs minutes over the suite)
        return settled()

    if not settled() and not _wait_until(collected_and_settled):
        assert "fds" in allowed or not _new(before_fds, _fds()), (
            f"file descriptors left open: {_new(before_fds, _fds())}")
        assert "shm" in allowed or not (_shm_names() - before_shm), (
            f"/dev/shm entries left behind: {_shm_names() - before_shm}")
        assert _poolx_mappings() == 0, "poolx shared-memory segments still mapped in the driver"


def _tests_path_env() -> dict[str, str]:
    """The environment a cluster's workers start with: they import the tests'
    task modules, as a real cluster's workers import the user's code."""
    # The helper modules (support/) and the test modules of every area, whose
    # module-level functions travel by reference as pickle does (pytest puts
    # each test module's folder on sys.path; a cluster's workers need it too).
    here = os.path.dirname(os.path.abspath(__file__))
    folders = sorted(os.path.join(here, name) for name in os.listdir(here)
                     if os.path.isdir(os.path.join(here, name)) and not name.startswith(("_", ".")))
    # (and this poolx, even where another checkout is the installed one)
    path = [here, *folders, os.path.dirname(os.path.dirname(poolx.__file__)),
            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _start_dask() -> list[subprocess.Popen]:
    """A scheduler and two single-threaded workers, as separate processes on
    loopback, started with the ``dask`` command (a two-node cluster in small)."""
    import tempfile

    dask = shutil.which("dask") or os.path.join(os.path.dirname(sys.executable), "dask")
    folder = tempfile.mkdtemp(prefix="poolx-dask-")
    scheduler_file = os.path.join(folder, "scheduler.json")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", scheduler_file], env=_tests_path_env(), **quiet)]
    _CLUSTER_ROOTS.add(procs[0].pid)
    for _ in range(2):
        procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", scheduler_file, "--nthreads", "1",
                                       "--host", "127.0.0.1", "--no-dashboard"],
                                      env=_tests_path_env(), **quiet))
        _CLUSTER_ROOTS.add(procs[-1].pid)
    from distributed import Client

    if not _wait_until(lambda: os.path.exists(scheduler_file), 60):
        raise RuntimeError("the test Dask scheduler did not start within 60 s")
    with Client(scheduler_file=scheduler_file, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
    with open(scheduler_file) as f:
        os.environ["POOLX_DASK_ADDRESS"] = json.load(f)["address"]
    shutil.rmtree(folder, ignore_errors=True)
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _test_clusters(_stdlib_helpers_started):
    """The cluster engines the collected tests need, started once before the first
    test: the dask backend connects to them through POOLX_DASK_ADDRESS, the ray
    backend finds Ray initialized (and leaves it running)."""
    procs: list[subprocess.Popen] = []
    ray = None
    try:
        if "dask" in _ENGINES_NEEDED:
            procs = _start_dask()
        if "ray" in _ENGINES_NEEDED:
            import ray

            before = set(psutil.Process().children())
            saved = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = _tests_path_env()["PYTHONPATH"]
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # (a loopback test instance)
            try:
                ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            finally:
                if saved is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = saved
            _CLUSTER_ROOTS.update(p.pid for p in set(psutil.Process().children()) - before)
        yield
    finally:
        if ray is not None:
            ray.shutdown()
        _stop(procs)
        os.environ.pop("POOLX_DASK_ADDRESS", None)


@pytest.fixture
def dask_address() -> str:
    return os.environ["POOLX_DASK_ADDRESS"]


@pytest.fixture
def ray_cluster():
    import ray

    assert ray.is_initialized()
    return ray


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def api(backend):
    """The Ray-style API's executor, 2 workers on ``backend``, shut down after the test."""
    poolx.init(num_cpus=2, backend=backend)
    yield poolx
    poolx.shutdown()


@pytest.fixture(params=START_METHODS)
def start_method(request) -> str:
    return request.param


@pytest.fixture
def executor(backend):
    with poolx.Executor(2, backend=backend) as ex:
        yield ex
