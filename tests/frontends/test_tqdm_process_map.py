"""tqdm's ``process_map`` on poolx.Executor (issue 21, item 6).

``process_map`` creates its executor with ``initializer=tqdm.set_lock,
initargs=(lock,)``, the lock a ``multiprocessing.RLock()`` of the default
context: fork, on Linux up to Python 3.13.  Such a lock reaches a worker
only through fork; poolx's default, forkserver, failed with InitializerError
("A SemLock created in a fork context ...").  An executor given no start
method now forks its workers when its initargs hold such a lock, as
ProcessPoolExecutor does; one told to use another start method says in one
line, at construction, what to change.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

import pytest

import poolx

tqdm_concurrent = pytest.importorskip("tqdm.contrib.concurrent")

pytestmark = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                                reason="the lock of a fork context needs fork")


@pytest.fixture(autouse=True)
def no_monitor_thread(monkeypatch):
    # tqdm's monitor thread would outlive the test (the suite's leak guard).
    import tqdm

    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)


def cube(x):
    return x ** 3


def test_process_map_with_poolx_executor(monkeypatch):
    # process_map takes its executor class from concurrent.futures when it
    # runs: a program that puts poolx's there runs process_map on poolx.
    monkeypatch.setattr(cf, "ProcessPoolExecutor", poolx.Executor)
    got = tqdm_concurrent.process_map(cube, range(20), max_workers=2, chunksize=3, disable=True)
    assert got == [x ** 3 for x in range(20)]


def test_the_executor_map_behind_process_map_with_poolx_executor():
    got = tqdm_concurrent._executor_map(poolx.Executor, cube, range(7), max_workers=2,
                                        lock_name="mp_lock", disable=True)
    assert got == [x ** 3 for x in range(7)]


_lock = None  # a worker's copy of the initargs' lock


def keep(lock):
    global _lock
    _lock = lock


def held_elsewhere():
    # True when this worker's lock is the driver's, which the driver holds.
    got = _lock.acquire(timeout=0.2)
    if got:
        _lock.release()
    return not got


def test_a_fork_context_lock_in_initargs_forks_the_workers_of_a_default_executor():
    lock = multiprocessing.get_context("fork").RLock()
    with poolx.Executor(1, initializer=keep, initargs=(lock,)) as ex:
        assert ex.submit(held_elsewhere).result(timeout=60) is False
        with lock:
            assert ex.submit(held_elsewhere).result(timeout=60) is True  # one lock, shared


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_fork_context_lock_with_another_start_method_is_refused_in_one_line(method):
    queue = multiprocessing.get_context("fork").Queue()
    try:
        with pytest.raises(ValueError) as info:
            poolx.Executor(1, mp_context=method, initializer=print, initargs=({"queue": queue},))
    finally:
        queue.close()
        queue.join_thread()
    message = str(info.value)
    assert "\n" not in message
    assert "multiprocessing.queues.Queue made by the fork context" in message
    fix = f"pass mp_context='fork', or make it with multiprocessing.get_context('{method}').Queue()"
    assert message.endswith(fix)


def test_max_tasks_per_child_keeps_the_default_start_method_and_says_so():
    lock = multiprocessing.get_context("fork").Lock()
    with pytest.raises(ValueError, match=r"max_tasks_per_child rules out fork"):
        poolx.Executor(1, max_tasks_per_child=2, initializer=print, initargs=(lock,))
