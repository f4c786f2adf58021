"""Executor semantics that hold on every backend (concurrent.futures behaviour)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import multiprocessing
import os
import threading
import time

import pytest
from _tasks import add, divide, raise_value_error, sleep_and_return, square

import poolx


def test_submit_returns_a_poolx_future_with_the_result(executor):
    fut = executor.submit(add, 2, b=3)
    assert isinstance(fut, poolx.Future) and isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 5


def test_exception_is_reraised_with_its_type(executor):
    fut = executor.submit(raise_value_error, "bad value")
    with pytest.raises(ValueError, match="bad value"):
        fut.result(timeout=30)
    assert executor.submit(square, 4).result(timeout=30) == 16  # still usable


def test_stdlib_wait_and_as_completed_accept_poolx_futures(executor):
    futs = [executor.submit(square, i) for i in range(20)]
    done, not_done = cf.wait(futs, timeout=30)
    assert not not_done and {f.result() for f in done} == {i * i for i in range(20)}
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=30)) == sorted(i * i for i in range(20))


def test_futures_are_awaitable_and_wrap_for_asyncio(executor):
    async def main():
        a = await executor.submit(square, 6)
        b = await asyncio.wrap_future(executor.submit(square, 7))
        return a, b

    assert asyncio.run(main()) == (36, 49)


def test_map_returns_results_in_order(executor):
    assert list(executor.map(square, range(500), timeout=60)) == [i * i for i in range(500)]


def test_map_zips_several_iterables_like_builtin_map(executor):
    assert list(executor.map(add, range(10), range(100, 105))) == [i + 100 + i for i in range(5)]


def test_map_of_nothing(executor):
    assert list(executor.map(square, [])) == []


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_map_with_explicit_chunksize(executor, chunksize):
    assert list(executor.map(square, range(50), chunksize=chunksize)) == [i * i for i in range(50)]


def test_map_yields_results_before_the_failing_item_then_raises(executor):
    it = executor.map(divide, [1, 1, 1, 1], [2, 4, 0, 5])
    assert next(it) == 0.5
    assert next(it) == 0.25
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_consumes_an_infinite_input_lazily_with_buffersize(executor):
    it = executor.map(square, itertools.count(), buffersize=4)
    assert [next(it) for _ in range(10)] == [i * i for i in range(10)]
    it.close()


def test_map_buffersize_bounds_how_far_input_is_read(executor):
    consumed = []

    def source():
        for i in range(1000):
            consumed.append(i)
            yield i

    it = executor.map(square, source(), chunksize=1, buffersize=3)
    assert next(it) == 0
    assert len(consumed) <= 4  # the 3 in flight, plus the one submitted as a result was taken
    it.close()


def test_map_without_buffersize_runs_everything_even_if_not_consumed(executor, tmp_path):
    # The stdlib runs every map() task whether or not results are read.
    it = executor.map(sleep_and_return, [0.0] * 30, range(30))
    del it
    executor.shutdown(wait=True)
    assert executor.statistics().tasks_pending == 0
    assert executor.statistics().tasks_completed >= 1


def test_map_timeout_raises_timeout_error(executor, backend):
    if backend == "serial":
        pytest.skip("serial runs each task as results are read; nothing can time out")
    it = executor.map(sleep_and_return, [0.0, 3.0], timeout=0.5, chunksize=1)
    with pytest.raises(TimeoutError):
        list(it)


def test_map_rejects_bad_arguments(executor):
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(square, [1], chunksize=0)
    with pytest.raises(ValueError, match="buffersize"):
        executor.map(square, [1], buffersize=0)


def test_submit_after_shutdown_raises_runtime_error(backend):
    ex = poolx.Executor(2, backend=backend)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 1)
    with pytest.raises(RuntimeError):
        ex.map(square, [1])


def wait_for_file(path, value=None):
    """A task that runs until the test creates ``path`` (no timing in the test): at most 60 s."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


def _shutdown_cancelling(ex, futures, release):
    """``shutdown(wait=True, cancel_futures=True)``; the tasks waiting on ``release``
    may finish only once it has cancelled what it cancels (the last future)."""
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopper.start()
    deadline = time.monotonic() + 60
    while not futures[-1].done() and time.monotonic() < deadline:
        time.sleep(0.005)
    open(release, "w").close()
    stopper.join(60)
    assert not stopper.is_alive()


def test_shutdown_cancel_futures_cancels_what_has_not_started(backend, tmp_path):
    # The first task cannot finish before shutdown() has cancelled what it
    # cancels: which futures are cancelled does not depend on timing.  The
    # processes backend counts max_workers + 1 tasks as handed out (the
    # stdlib's call queue): those run, the rest are cancelled.  The threads
    # backend is ThreadPoolExecutor's: only a running task runs.
    if backend == "serial":
        pytest.skip("serial has nothing pending: tasks run at submit")
    release = str(tmp_path / "release")
    ex = poolx.Executor(1, backend=backend)
    first = ex.submit(wait_for_file, release, "first")
    rest = [ex.submit(square, i) for i in range(20)]
    _shutdown_cancelling(ex, rest, release)
    assert all(f.done() for f in [first, *rest])
    assert first.cancelled() or first.result() == "first"
    assert rest[-1].cancelled()
    if backend == "processes":
        assert first.result() == "first" and rest[0].result() == 0
        assert all(f.cancelled() for f in rest[1:])
    elif backend == "threads":
        assert all(f.cancelled() for f in rest)


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_shutdown_cancel_futures_runs_the_tasks_the_stdlib_would_have_handed_out(start_method, tmp_path):
    # CPython's test_cancel_futures: shutdown(cancel_futures=True) right after
    # the submits, while the workers are still starting.  The stdlib hands
    # max_workers + 1 calls to its call queue and runs them; poolx cancelled
    # every one (issue 21, item 2).  Compared with ProcessPoolExecutor itself;
    # poolx always hands out max_workers + 1, so its outcome is deterministic.
    outcomes = []
    for executor_type in (cf.ProcessPoolExecutor, poolx.Executor):
        release = str(tmp_path / executor_type.__name__)
        ex = executor_type(2, mp_context=multiprocessing.get_context(start_method))
        futures = [ex.submit(wait_for_file, release, i) for i in range(10)]
        _shutdown_cancelling(ex, futures, release)
        outcomes.append(["cancelled" if f.cancelled() else f.result() for f in futures])
    stdlib, ours = outcomes
    # The control: the stdlib runs the calls its manager thread had handed out
    # (its queue of max_workers + 1, plus those its workers had already taken:
    # 4 of 10 under fork in one CI run), and cancels the rest.
    ran = stdlib.index("cancelled") if "cancelled" in stdlib else len(stdlib)
    assert ran >= 1 and stdlib == list(range(ran)) + ["cancelled"] * (10 - ran)
    assert ours == [0, 1, 2] + ["cancelled"] * 7


def test_cancel_a_pending_future(backend):
    if backend == "serial":
        pytest.skip("serial has nothing pending: tasks run at submit")
    with poolx.Executor(1, backend=backend) as ex:
        blocker = ex.submit(sleep_and_return, 0.5)
        time.sleep(0.2)
        queued = [ex.submit(square, i) for i in range(5)]
        assert queued[-1].cancel()
        assert queued[-1].cancelled()
        blocker.result(timeout=30)
        assert [f.result(timeout=30) for f in queued[:-1]] == [0, 1, 4, 9]


def test_submit_from_many_threads_at_once(executor):
    results: list[list[int]] = [[] for _ in range(4)]

    def client(k):
        futs = [executor.submit(add, k, i) for i in range(300)]
        results[k] = [f.result(timeout=60) for f in futs]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[k + i for i in range(300)] for k in range(4)]


def test_done_callbacks_run_and_their_errors_do_not_break_anything(executor, caplog):
    seen = []
    fut = executor.submit(square, 3)
    fut.add_done_callback(lambda f: seen.append(f.result()))
    fut.add_done_callback(lambda f: 1 / 0)
    fut.result(timeout=30)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [9]
    assert executor.submit(square, 5).result(timeout=30) == 25


def test_statistics_count_tasks(executor):
    futs = [executor.submit(square, i) for i in range(10)]
    futs.append(executor.submit(raise_value_error))
    cf.wait(futs, timeout=30)
    time.sleep(0.05)  # telemetry is recorded just after the future completes
    stats = executor.statistics()
    assert isinstance(stats, poolx.Statistics)
    assert (stats.tasks_submitted, stats.tasks_completed, stats.tasks_failed) == (11, 10, 1)
    assert stats.tasks_pending == 0
    assert sum(stats.busy_time.values()) >= 0
    with pytest.raises(AttributeError):
        stats.tasks_submitted = 0  # frozen


def test_export_trace_writes_one_lane_per_worker(executor, tmp_path):
    import json

    cf.wait([executor.submit(sleep_and_return, 0.01) for _ in range(8)], timeout=30)
    time.sleep(0.05)
    path = tmp_path / "trace.json"
    executor.export_trace(path)
    events = json.loads(path.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    lanes = [e for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert len(spans) == 8
    assert {e["tid"] for e in spans} == {e["tid"] for e in lanes}
    assert all(e["dur"] >= 9000 for e in spans)  # each slept 10 ms (trace is in microseconds)


def _trace(ex, path):
    """The task slices of ex's trace, and what the trace says it kept."""
    import json

    ex.export_trace(path)
    trace = json.loads(path.read_text())
    return [e for e in trace["traceEvents"] if e["ph"] == "X"], trace["otherData"]["poolx"]


def _recorded(ex, n):
    """Wait until ex has recorded n finished tasks (just after their futures complete)."""
    deadline = time.monotonic() + 30
    while ex.statistics().tasks_completed < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return ex.statistics()


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_the_trace_keeps_only_the_newest_tasks_and_statistics_count_every_one(backend, tmp_path):
    # Issue 19: every executor kept 100,000 records (~36 MB) whether or not it was ever traced.
    from poolx._telemetry import TRACE_CAPACITY

    n = TRACE_CAPACITY + 200
    with poolx.Executor(2, backend=backend) as ex:
        assert sum(f.result(timeout=30) for f in [ex.submit(square, i) for i in range(n)]) == sum(
            i * i for i in range(n))
        stats = _recorded(ex, n)
        spans, kept = _trace(ex, tmp_path / "t.json")
    assert stats.tasks_submitted == stats.tasks_completed == n and stats.tasks_pending == 0
    assert len(ex._telemetry.records) == len(spans) == TRACE_CAPACITY
    assert kept == {"trace_capacity": TRACE_CAPACITY, "tasks_kept": TRACE_CAPACITY, "tasks_not_kept": 200}


def test_trace_capacity_keeps_that_many_tasks_none_or_every_one(tmp_path):
    from poolx._telemetry import TRACE_CAPACITY

    n = TRACE_CAPACITY + 10
    for capacity, expected in ((0, 0), (5, 5), (None, n)):
        with poolx.Executor(1, backend="serial", trace_capacity=capacity) as ex:
            for i in range(n - 5):
                ex.submit(square, i)
            for i in range(5):  # the newest five, told apart by their name
                ex.submit(add, i, 1)
        spans, kept = _trace(ex, tmp_path / f"{capacity}.json")
        assert len(spans) == kept["tasks_kept"] == expected and kept["tasks_not_kept"] == n - expected
        assert kept["trace_capacity"] == capacity and ex.statistics().tasks_completed == n
        if capacity == 5:
            assert [e["name"] for e in spans] == ["add"] * 5


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (2.5, TypeError), (True, TypeError),
                                        ("100", TypeError)])
def test_a_bad_trace_capacity_is_refused_with_its_remedy(bad, error):
    with pytest.raises(error, match="trace_capacity must be"):
        poolx.Executor(1, backend="serial", trace_capacity=bad)


def test_initializer_runs_before_tasks_on_every_backend(backend, tmp_path):
    from _tasks import record_init

    path = tmp_path / "inits"
    with poolx.Executor(2, backend=backend, initializer=record_init, initargs=(str(path),)) as ex:
        assert ex.submit(square, 3).result(timeout=30) == 9
    assert 1 <= len(path.read_text().split()) <= 2


def test_failing_initializer_is_an_initializer_error_on_every_backend(backend):
    from _tasks import failing_init

    ex = poolx.Executor(1, backend=backend, initializer=failing_init)
    try:
        with pytest.raises((poolx.InitializerError, ValueError), match="initializer exploded"):
            ex.submit(square, 3).result(timeout=30)
    finally:
        ex.shutdown()
    if backend != "serial":  # serial raises the initializer's own error, in the caller
        with pytest.raises(poolx.InitializerError):
            poolx.Executor(1, backend=backend, initializer=failing_init).submit(square, 1).result(30)


def test_map_names_trace_spans_after_the_users_function(executor, tmp_path):
    import json

    list(executor.map(square, range(10)))
    time.sleep(0.05)
    executor.export_trace(tmp_path / "t.json")
    names = {e["name"] for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"]
             if e["ph"] == "X"}
    assert names == {"square [map]"}


def test_map_whose_feeder_thread_cannot_start_fails_cleanly(monkeypatch):
    ex = poolx.Executor(2)
    start = threading.Thread.start

    def refuse_feeder(thread):
        if thread.name == "poolx-map-feeder":
            raise RuntimeError("can't start new thread")
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse_feeder)
    # BrokenProcessPool (a RuntimeError), as the stdlib's when a thread it needs
    # cannot start at interpreter shutdown (CPython's test_python_finalization_error).
    with pytest.raises(cf.process.BrokenProcessPool, match="can't start new thread"):
        ex.map(square, range(100_000))
    monkeypatch.undo()
    ex.shutdown(wait=True)  # must not raise, and must stop the workers (checked by no_leaks)
    assert ex.statistics().tasks_pending == 0


class _Registered:
    """Pickled through a reducer registered with copyreg (after poolx was imported)."""


def _reduce_registered(obj: _Registered) -> tuple[object, tuple[str]]:
    return (str, ("made by the registered reducer",))


def test_a_copyreg_reducer_registered_after_import_is_used(executor, monkeypatch):
    if executor.backend in ("serial", "threads"):
        pytest.skip("the in-process backends pass arguments without pickling them")
    # poolx's pickler once copied the dispatch table when its module loaded, so
    # a reducer registered later was ignored (and with poolx's lazy imports,
    # what pickled depended on when the executor was first used).
    import copyreg

    monkeypatch.setitem(copyreg.dispatch_table, _Registered, _reduce_registered)
    assert executor.submit(repr, _Registered()).result(timeout=30) == "'made by the registered reducer'"


def test_the_remote_traceback_is_the_stdlibs_type(executor):
    # Code written for ProcessPoolExecutor checks the cause's type (CPython's test_traceback).
    from concurrent.futures.process import _RemoteTraceback

    with pytest.raises(ValueError) as info:
        executor.submit(raise_value_error, "boom").result(timeout=30)
    if executor.backend not in ("serial", "threads"):
        assert type(info.value.__cause__) is _RemoteTraceback
        assert "raise_value_error" in info.value.__cause__.tb
