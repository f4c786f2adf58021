"""Where poolx is a drop-in for ProcessPoolExecutor and multiprocessing.Pool, it
behaves as they do (issue 21): errors at pickling come through the future,
Pool's imap iterators have ``next(timeout)``, and ``Pool(wait_for_workers=True)``.

The stdlib is the control where it runs the same program.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import multiprocessing.pool
import os
import pickle
import threading
import time

import pytest
from _tasks import add, failing_init, square

import poolx


def squares_ints(x):
    return x * x if isinstance(x, int) else 0


# -- a call that cannot be pickled (issue 21, item 3) ----------------------------------


def test_submit_of_an_unpicklable_argument_fails_its_future_not_the_call(start_method):
    # CPython's test_error_at_task_pickle: ProcessPoolExecutor.submit() returns
    # a future, and result() raises.  A loop that submits many items and
    # collects errors per future must keep every future.
    with poolx.Executor(2, mp_context=start_method) as ex:
        futures = [ex.submit(add, 1, threading.Lock() if i == 3 else i) for i in range(6)]
        bad = futures.pop(3)
        with pytest.raises(poolx.SerializationError) as info:
            bad.result(timeout=30)
        assert isinstance(info.value, pickle.PicklingError)
        assert "argument 1" in str(info.value) and "lock" in str(info.value).lower()  # poolx's message
        assert isinstance(info.value.__cause__, TypeError)  # the pickling error itself
        assert [f.result(timeout=30) for f in futures] == [1, 2, 3, 5, 6]


def test_submit_of_an_unpicklable_function_fails_its_future():
    lock = threading.Lock()
    with poolx.Executor(1) as ex:
        future = ex.submit(lambda: lock)
        with pytest.raises(poolx.SerializationError, match="cannot be pickled"):
            future.result(timeout=30)


def test_submit_with_retry_exceptions_fails_its_future_too():
    with poolx.Executor(1, max_retries=2, retry_exceptions=True) as ex:
        future = ex.submit(add, 1, threading.Lock())
        with pytest.raises(poolx.SerializationError, match="argument 1"):
            future.result(timeout=30)


@pytest.mark.parametrize("executor_type", [cf.ProcessPoolExecutor, poolx.Executor])
@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_raises_at_the_unpicklable_item_after_the_results_before_it(executor_type, chunksize):
    # The stdlib submits every chunk at map() and raises the chunk's pickling
    # error when iteration reaches it (a chunk of 2 loses item 0 with it).
    with executor_type(2) as ex:
        results = ex.map(squares_ints, [1, threading.Lock(), 3], chunksize=chunksize)
        got = []
        with pytest.raises(pickle.PicklingError if executor_type is poolx.Executor else TypeError):
            for r in results:
                got.append(r)
        assert got == ([1] if chunksize == 1 else [])


def test_remote_still_raises_at_the_call():
    # Ray raises at .remote() for an argument it cannot serialize; so does poolx.
    poolx.init(num_cpus=1)
    try:
        with pytest.raises(poolx.SerializationError, match="argument 1"):
            poolx.remote(add).remote(1, threading.Lock())
    finally:
        poolx.shutdown()


@pytest.mark.parametrize("pool_type", [multiprocessing.Pool, poolx.Pool])
def test_pool_gives_the_pickling_error_as_multiprocessing_does(pool_type):
    lock = threading.Lock()
    bad = [1, lock, 3]
    with pool_type(2) as p:
        for call in (lambda: p.apply(squares_ints, (lock,)),
                     lambda: p.apply_async(squares_ints, (lock,)).get(30),
                     lambda: p.apply_async(squares_ints, (lock,), error_callback=print).get(30),
                     lambda: p.map(squares_ints, bad, 1),
                     lambda: p.map_async(squares_ints, bad).get(30),
                     lambda: p.starmap(squares_ints, [(1,), (lock,)], 1)):
            with pytest.raises(TypeError, match="lock"):
                call()
        got = []
        it = p.imap(squares_ints, bad)
        for _ in range(3):
            try:
                got.append(next(it))
            except TypeError:
                got.append("error")
        assert got == [1, "error", 9]


# -- Pool.imap's iterators (issue 21, item 9) ----------------------------------------


def wait_for_file(path, value):
    """Runs until the test creates ``path`` (at most 60 s): no timing in the test."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


POOLS = [multiprocessing.Pool, multiprocessing.pool.ThreadPool, poolx.Pool, poolx.ThreadPool]


@pytest.mark.parametrize("pool_type", POOLS)
@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
@pytest.mark.parametrize("progress", [False, True])
def test_imap_iterators_have_next_with_a_timeout(pool_type, method, progress, tmp_path, monkeypatch):
    # multiprocessing's IMapIterator: next(timeout) raises multiprocessing.TimeoutError
    # while the next result is not ready, and the result stays next.
    if progress and pool_type in POOLS[:2]:
        pytest.skip("progress= is poolx's")
    if progress:
        tqdm = pytest.importorskip("tqdm")
        monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)  # (no monitor thread left behind)
    release = str(tmp_path / "release")
    with pool_type(2) as p:
        kwargs = {"progress": True} if progress else {}
        it = getattr(p, method)(_star_wait, [(release, i) for i in range(3)], **kwargs)
        assert iter(it) is it
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.05)
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(0.05)
        open(release, "w").close()
        got = [it.next(timeout=30), next(it), *it]
        assert (got if method == "imap" else sorted(got)) == [0, 1, 2]
        with pytest.raises(StopIteration):
            it.next(timeout=1)


def _star_wait(args):
    return wait_for_file(*args)


@pytest.mark.parametrize("pool_type", [poolx.Pool, poolx.ThreadPool])
@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_with_chunks_has_next_with_a_timeout_too(pool_type, method, tmp_path):
    # Beyond the stdlib (a plain generator there), as Ray's Pool: items one at a time.
    release = str(tmp_path / "release")
    with pool_type(2) as p:
        it = getattr(p, method)(_star_wait, [(release, i) for i in range(5)], chunksize=2)
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.05)
        open(release, "w").close()
        got = [it.next(timeout=30), *it]
        assert (got if method == "imap" else sorted(got)) == [0, 1, 2, 3, 4]


def test_imap_with_chunks_ends_after_an_error_as_the_stdlibs_generator():
    lock = threading.Lock()
    for pool_type in (multiprocessing.Pool, poolx.Pool):
        with pool_type(2) as p:
            it = p.imap(squares_ints, [1, lock, 3, 4, 5, 6], chunksize=2)
            with pytest.raises(TypeError):
                list(it)
            assert list(it) == []


# -- Pool(wait_for_workers=True) (issue 21, item 9) --------------------------------------


def slow_record_init(folder):
    time.sleep(0.3)
    with open(os.path.join(folder, str(os.getpid())), "w"):
        pass


@pytest.mark.parametrize("pool_type", [poolx.Pool, poolx.ThreadPool])
def test_pool_wait_for_workers_returns_once_every_initializer_ran(pool_type, tmp_path):
    p = pool_type(3, initializer=slow_record_init, initargs=(str(tmp_path),), wait_for_workers=True)
    try:
        if pool_type is poolx.Pool:
            assert len(os.listdir(tmp_path)) == 3  # one per worker process, all run already
        else:
            assert len(os.listdir(tmp_path)) == 1  # (the threads share this process's pid)
        assert p.map(square, range(4)) == [0, 1, 4, 9]
    finally:
        p.terminate()
        p.join()


def test_pool_wait_for_workers_under_each_start_method(start_method, tmp_path):
    with poolx.Pool(2, initializer=slow_record_init, initargs=(str(tmp_path),),
                    context=multiprocessing.get_context(start_method), wait_for_workers=True) as p:
        assert len(os.listdir(tmp_path)) == 2
        assert p.apply(square, (3,)) == 9


@pytest.mark.parametrize("pool_type", [poolx.Pool, poolx.ThreadPool])
def test_pool_wait_for_workers_raises_an_initializers_failure(pool_type):
    with pytest.raises(poolx.InitializerError, match=r"failing_init.*initializer exploded"):
        pool_type(2, initializer=failing_init, wait_for_workers=True)


def test_pool_without_wait_for_workers_returns_at_once_as_the_stdlib(tmp_path):
    # The stdlib's Pool does not wait for its initializers; neither does poolx's by default.
    with poolx.Pool(2, initializer=time.sleep, initargs=(600,), init_timeout=30) as p:
        assert p._state == "RUN"
