"""Shared fixtures: backends and start methods, and the leak checks every test gets."""

from __future__ import annotations

import multiprocessing
import threading
import time

import psutil
import pytest

import poolx

BACKENDS = ["serial", "threads", "processes"]
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


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.is_alive()}


def _wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(autouse=True)
def no_leaks():
    """After each test: no child process, no poolx thread left behind."""
    before_procs = set(_children())
    before_threads = _threads()
    yield
    assert _wait_until(lambda: not (set(_children()) - before_procs)), (
        f"processes left behind: {[ _children().get(p) for p in set(_children()) - before_procs]}"
    )
    assert _wait_until(lambda: not {n for n in _threads() - before_threads if n.startswith("poolx")}), (
        f"threads left behind: {_threads() - before_threads}"
    )


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
