"""Tiny tasks (issue 23, item 2): fewer objects per task in the driver, and map's chunk schedule.

- A future makes its ``threading.Condition`` only when someone waits on it
  (``poolx._futures._LeanFuture``), and keeps the stdlib's semantics: CPython's
  own ``test_future`` runs against it where the stdlib's test package is
  installed, and the waits of ``concurrent.futures`` (``wait``,
  ``as_completed``, ``result(timeout)``) from other threads are checked here.
- A pending task costs the cyclic GC two tracked objects (its ``Task`` and
  its ``Future``), not twelve.
- ``map()`` remembers the cost of an item of a function: the next map of it
  starts with chunks of the right size, a small map goes in one chunk per
  worker, and the results are taken without a Python generator per item.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import importlib
import logging
import threading
import time
import unittest
import weakref

import pytest
from _tasks import add, divide, identity, noop, square

import poolx
from poolx import _map
from poolx._futures import Future

# -- the future ------------------------------------------------------------------


def _cpython_future_tests():
    """CPython's FutureTests module, or None where the stdlib's test package lacks it."""
    for name in ("test.test_concurrent_futures.test_future", "test.test_concurrent_futures"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "FutureTests"):
            return module
    return None


_STDLIB_FUTURE_TESTS = _cpython_future_tests()


@pytest.mark.skipif(_STDLIB_FUTURE_TESTS is None,
                    reason="no test_concurrent_futures in this Python's test package (pyenv leaves it out)")
def test_cpython_future_tests_pass_on_poolx_future(monkeypatch):
    module = _STDLIB_FUTURE_TESTS
    util = importlib.import_module(module.create_future.__module__)

    def create_future(state="PENDING", exception=None, result=None):
        f = Future()
        f._state, f._exception, f._result = state, exception, result
        return f

    # The module's futures, and the ones its helper makes, become poolx's.
    monkeypatch.setattr(module, "Future", Future)
    monkeypatch.setattr(util, "Future", Future, raising=False)
    monkeypatch.setattr(module, "create_future", create_future)
    for name, state, kw in (("PENDING_FUTURE", "PENDING", {}), ("RUNNING_FUTURE", "RUNNING", {}),
                            ("CANCELLED_FUTURE", "CANCELLED", {}),
                            ("CANCELLED_AND_NOTIFIED_FUTURE", "CANCELLED_AND_NOTIFIED", {}),
                            ("EXCEPTION_FUTURE", "FINISHED", {"exception": OSError()}),
                            ("SUCCESSFUL_FUTURE", "FINISHED", {"result": 42})):
        monkeypatch.setattr(module, name, create_future(state, **kw))
    # Two tests read the callback errors the logger prints to stderr, which only
    # happens while the root logger has no handler (pytest's log capture adds one).
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(module.FutureTests)
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    assert suite.countTestCases() >= 20
    assert result.wasSuccessful(), [str(t) for t, _ in result.failures + result.errors]


def _owns_a_condition(future) -> bool:
    return any(isinstance(o, threading.Condition) for o in gc.get_referents(future))


def test_a_future_nobody_waited_on_owns_no_condition(start_method):
    with poolx.Executor(2, mp_context=start_method) as ex:
        futures = [ex.submit(square, i) for i in range(200)]
        cb = []
        futures[0].add_done_callback(cb.append)
    assert all(f.done() for f in futures)
    assert not any(_owns_a_condition(f) for f in futures)
    assert [f.result() for f in futures] == [i * i for i in range(200)]
    assert cb == [futures[0]]
    # result() of a finished future needs none either; a wait does.
    assert not any(_owns_a_condition(f) for f in futures)


def test_result_and_waits_from_other_threads_see_the_completion():
    """Each future completed by one thread while others wait in result(timeout), wait() and
    as_completed(): the three ways a Condition comes to exist while the state changes."""
    n = 300
    futures = [Future() for _ in range(n)]
    got: dict[str, list] = {"result": [], "wait": [], "as_completed": []}

    def by_result():
        got["result"] = [f.result(timeout=60) for f in futures]

    def by_wait():
        for f in futures:
            done, _ = cf.wait([f], timeout=60)
            got["wait"].append(f in done)

    def by_as_completed():
        got["as_completed"] = [f.result() for f in cf.as_completed(futures, timeout=60)]

    threads = [threading.Thread(target=t) for t in (by_result, by_wait, by_as_completed)]
    for t in threads:
        t.start()
    for i, f in enumerate(futures):
        assert f.set_running_or_notify_cancel()
        if i % 3 == 0:
            time.sleep(0)  # (let a waiter get in first now and then)
        f.set_result(i)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert got["result"] == list(range(n))
    assert got["wait"] == [True] * n
    assert sorted(got["as_completed"]) == list(range(n))


def test_a_waiter_arriving_before_the_result_is_woken():
    f = Future()
    out = []
    t = threading.Thread(target=lambda: out.append(f.result(timeout=60)))
    t.start()
    deadline = time.monotonic() + 30
    while not (f._cond is not None and f._cond._waiters) and time.monotonic() < deadline:
        time.sleep(0.001)  # until the thread waits on the Condition it made
    assert f._cond is not None
    f.set_running_or_notify_cancel()
    f.set_result("late")
    t.join(60)
    assert out == ["late"]


def test_cancel_wakes_a_waiter_and_runs_callbacks_once():
    f = Future()
    calls = []
    f.add_done_callback(calls.append)
    waiter = threading.Thread(target=lambda: calls.append(cf.wait([f], timeout=60)))
    waiter.start()
    deadline = time.monotonic() + 30
    while not (f._cond is not None and f._wait_list) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert f.cancel() and f.cancel()
    assert not f.set_running_or_notify_cancel()
    waiter.join(60)
    assert calls[0] is f and calls[1].done == {f} and len(calls) == 2
    with pytest.raises(cf.CancelledError):
        f.result(timeout=0)


def test_finished_future_raises_its_exception_and_refuses_a_second_outcome():
    f = Future()
    f.set_running_or_notify_cancel()
    f.set_exception(ValueError("x"))
    with pytest.raises(ValueError, match="x"):
        f.result()
    assert isinstance(f.exception(), ValueError)
    with pytest.raises(cf.InvalidStateError):
        f.set_result(1)
    assert repr(f).endswith("state=finished raised ValueError>")


def test_a_callback_referring_to_its_future_does_not_keep_it_for_the_cyclic_gc():
    """map() registers callbacks that refer to their chunk's task (and so its future):
    once called they are let go, so a finished future is freed by its last reference."""
    gc.disable()
    try:
        seen = []

        class Chunk:  # holds its future, as a map chunk's task does
            def measure(self, done):
                seen.append(self.future is done)

        chunk = Chunk()
        chunk.future = Future()
        chunk.future.add_done_callback(chunk.measure)
        chunk.future.set_running_or_notify_cancel()
        chunk.future.set_result(1)
        ref = weakref.ref(chunk.future)
        del chunk
        assert ref() is None
        assert seen == [True]
    finally:
        gc.enable()


# -- objects per pending task ---------------------------------------------------------


def _wait_for(path):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open(path):
                return True
        except OSError:
            time.sleep(0.01)
    return False


def test_a_pending_task_costs_the_gc_two_tracked_objects(tmp_path):
    gate = str(tmp_path / "gate")
    n = 2000
    with poolx.Executor(2, mp_context="fork") as ex:
        blockers = [ex.submit(_wait_for, gate) for _ in range(2)]
        gc.collect()
        before = len(gc.get_objects())
        futures = [ex.submit(square, i) for i in range(n)]
        gc.collect()
        per_task = (len(gc.get_objects()) - before) / n
        pending = sum(not f.done() for f in futures)
        open(gate, "w").close()
        assert all(b.result(timeout=120) for b in blockers)
        assert [f.result(timeout=120) for f in futures] == [i * i for i in range(n)]
    assert pending == n  # (the workers were blocked: every one was pending when counted)
    # The Task and its Future (plus the futures list's share): the stdlib's
    # Future alone brought nine (its Condition, RLock methods, deque, lists).
    assert per_task < 3, per_task


def test_tasks_with_plain_and_other_arguments_arrive_intact(start_method):
    """Plain arguments (numbers, strings, None) take a shorter way to the pickle: the
    others, and every keyword, still take poolx's pickler, and all arrive as they were."""
    import enum

    class Colour(enum.IntEnum):  # an int subclass: must arrive as itself, not as an int
        RED = 1

    with poolx.Executor(2, mp_context=start_method) as ex:
        futures = [ex.submit(add, 1, 2), ex.submit(add, "a", "b"), ex.submit(add, 2.5, b=1j),
                   ex.submit(identity, Colour.RED), ex.submit(identity, None), ex.submit(noop),
                   ex.submit(add, [1], [2]), ex.submit(identity, b"bytes")]
        got = [f.result() for f in futures]
    assert got[:3] == [3, "ab", 2.5 + 1j]
    assert type(got[3]).__name__ == "Colour" and got[3] == 1
    assert got[4:] == [None, None, [1, 2], b"bytes"]


# -- map -----------------------------------------------------------------------------


def test_chunk_sizer_schedule():
    cold = _map.ChunkSizer(None, 200_000, 2)
    assert cold.next_size() == 1  # nothing known: one item until measured
    known = _map.ItemCost()
    known.per_item = 1e-7  # 0.1 us an item, as an earlier map measured
    warm = _map.ChunkSizer(None, 200_000, 2, known)
    assert warm.next_size() == 25_000  # at once the Pool cap: a quarter of a worker's share
    small = _map.ChunkSizer(None, 2_000, 2, known)
    assert small.next_size() == 1_000  # 0.2 ms of work in all: one chunk per worker
    endless = _map.ChunkSizer(None, None, 2, known)
    assert endless.next_size() == _map.UNMEASURED_MAX_CHUNK  # no length: bounded until measured here
    slow = _map.ItemCost()
    slow.per_item = 0.5
    assert _map.ChunkSizer(None, 100, 2, slow).next_size() == 1
    assert _map.ChunkSizer(7, 100, 2, known).next_size() == 7


def test_a_second_map_of_a_function_starts_with_its_measured_chunks(start_method):
    with poolx.Executor(2, mp_context=start_method) as ex:
        assert list(ex.map(square, range(2000))) == [i * i for i in range(2000)]
        cold_chunks = ex.statistics().tasks_submitted
        assert list(ex.map(square, range(2000))) == [i * i for i in range(2000)]
        warm_chunks = ex.statistics().tasks_submitted - cold_chunks
    # The first map measured with single items first; the second starts from that cost, so
    # it needs fewer chunks (on an idle machine one per worker: under 2 ms of work; a loaded
    # one measures a dearer item, so the count is not fixed: CI once saw 8).
    assert cold_chunks > 2
    assert warm_chunks < cold_chunks


def test_map_results_free_each_item_and_close_cancels_the_rest():
    class Obj:
        pass

    with poolx.Executor(2, backend="threads") as ex:
        for obj in ex.map(lambda _: Obj(), range(20)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None  # the iterator kept no reference (cpython#14406)
        it = ex.map(square, range(100_000), chunksize=10)
        assert next(it) == 0
        it.close()
        assert list(it) == []  # closed: nothing more, as a closed generator


def test_map_stops_at_the_failing_item_after_the_results_before_it():
    with poolx.Executor(2) as ex:
        it = ex.map(divide, [1, 1, 1, 1], [2, 4, 0, 5])
        assert next(it) == 0.5 and next(it) == 0.25
        with pytest.raises(ZeroDivisionError):
            next(it)
        assert list(it) == []
