"""Shared fixtures: backends and start methods, and the leak guard every test gets.

The leak guard (``no_leaks``, autouse) checks after every test of the suite
that the test left behind no child process, no thread, no file descriptor and
no shared memory (a new ``/dev/shm`` entry, or a poolx segment still mapped).
Long-lived helpers that the stdlib starts once per interpreter (the
forkserver, the resource tracker) are started before the first test, so that
their processes and fds are part of every test's "before".  A test that must
leave something on purpose says so with ``@pytest.mark.leaks("fds", ...)``
("threads", "fds", "shm").
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import os
import threading
import time

import psutil
import pytest

import poolx

# POOLX_TEST_BACKENDS=dask,ray adds cluster backends to every backend-parametrized
# test (issue 9: the conformance of those backends; needs dask / ray installed).
BACKENDS = ["serial", "threads", "processes",
            *filter(None, os.environ.get("POOLX_TEST_BACKENDS", "").split(","))]
START_METHODS = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]

# Helper processes the stdlib keeps for the life of the interpreter: the
# forkserver and the resource tracker.  They are not workers and not leaks.
_STDLIB_HELPERS = ("forkserver", "resource_tracker")


def _children() -> dict[int, str]:
    me = psutil.Process()
    out = {}
    for child in me.children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            parent = child.ppid()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
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


def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == "ray":
            # ray.shutdown() leaves its core worker's event loops, socket and log files
            # open in the driver (Ray 2.60): Ray's, not poolx's.
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


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(params=START_METHODS)
def start_method(request) -> str:
    return request.param


@pytest.fixture
def executor(backend):
    with poolx.Executor(2, backend=backend) as ex:
        yield ex
