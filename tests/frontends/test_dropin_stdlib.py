"""Where poolx is a drop-in for ProcessPoolExecutor and multiprocessing.Pool, it
behaves as they do (issue 21): errors at pickling come through the future,
Pool's imap iterators have ``next(timeout)``, and ``Pool(wait_for_workers=True)``.

The stdlib is the control where it runs the same program.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import multiprocessing.pool
import pickle
import threading

import pytest
from _tasks import add

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
