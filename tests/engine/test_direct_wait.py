"""The direct read (issue 23, item 1): a caller waiting for a task sent straight
to an idle worker reads the result from the worker's channel itself
(``poolx/backends/processes/driver/_direct.py``).

These tests try to break it: the worker dies, the task times out, the executor
shuts down from another thread, several threads wait, the wait times out, a
signal handler raises in the waiting thread, the future is waited for by
``wait``/``as_completed`` or a callback instead, and many round trips run while
workers are killed at random.  No timed assertions: every wait has a bound
that only a hang reaches.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import signal
import threading
import time

import pytest
from _tasks import getpid, identity, noop, sleep_and_return, square

import poolx
from poolx import TaskTimeoutError, WorkerDiedError

pytestmark = pytest.mark.timeout(120)


def warm(ex: poolx.Executor, workers: int = 1) -> list[int]:
    """Start the workers and let them go idle, so that the next tasks go to them directly.

    Fewer than 8 tasks (the engine's EST_MIN_SAMPLES): no prefetching yet, so
    tasks submitted while the workers are busy wait in the driver's queue.
    """
    starting = [ex.submit(sleep_and_return, 0.3) for _ in range(workers)]
    cf.wait(starting, timeout=60)
    pids = {ex.submit(getpid).result(timeout=60) for _ in range(workers)}
    ex.submit(noop).result(timeout=60)
    return sorted(pids)


def completer_thread(fut: poolx.Future) -> list[int]:
    """Record the thread that completes ``fut`` (its callbacks run there)."""
    seen: list[int] = []
    fut.add_done_callback(lambda f: seen.append(threading.get_ident()))
    return seen


def test_the_waiting_thread_completes_its_own_future(start_method):
    # The new behaviour itself: the result is read, and the future completed
    # (its callbacks run), by the thread that waits, not the scheduler thread.
    with poolx.Executor(1, mp_context=start_method) as ex:
        warm(ex)
        fut = ex.submit(sleep_and_return, 0.3, 41)
        seen = completer_thread(fut)
        assert fut.result(timeout=60) == 41
        assert seen == [threading.get_ident()]
        for i in range(50):  # and again, one round trip after another
            assert ex.submit(square, i).result(timeout=60) == i * i


def test_a_worker_killed_while_its_caller_reads_its_channel(start_method):
    with poolx.Executor(1, mp_context=start_method) as ex:
        (pid,) = warm(ex)
        fut = ex.submit(sleep_and_return, 60, "late")
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
        with pytest.raises(WorkerDiedError, match="SIGKILL"):
            fut.result(timeout=60)
        # The replacement serves the next round trips, directly again.
        assert ex.submit(square, 7).result(timeout=60) == 49
        fut = ex.submit(sleep_and_return, 0.2, 1)
        seen = completer_thread(fut)
        assert fut.result(timeout=60) == 1
        assert seen == [threading.get_ident()]


def test_task_timeout_fires_while_the_caller_waits_directly():
    with poolx.Executor(1, task_timeout=0.5) as ex:
        warm(ex)
        with pytest.raises(TaskTimeoutError):
            ex.submit(sleep_and_return, 60).result(timeout=60)
        assert ex.submit(square, 3).result(timeout=60) == 9


@pytest.mark.parametrize("how", ["cancel_futures", "no_wait"])
def test_shutdown_from_another_thread_while_a_caller_waits_directly(how):
    ex = poolx.Executor(1)
    try:
        warm(ex)
        running = ex.submit(sleep_and_return, 0.5, "ran")
        queued = [ex.submit(square, i) for i in range(5)]  # the worker is busy: these wait in the queue
        kwargs = {"cancel_futures": True} if how == "cancel_futures" else {"wait": False}
        closer = threading.Timer(0.1, ex.shutdown, kwargs=kwargs)
        closer.start()
        assert running.result(timeout=60) == "ran"  # a running task finishes, as the stdlib's
        closer.join()
        if how == "cancel_futures":  # (the first is handed out, as the stdlib's EXTRA_QUEUED_CALLS)
            assert [f.cancelled() for f in queued] == [False, True, True, True, True]
            assert queued[0].result(timeout=60) == 0
        else:
            assert [f.result(timeout=60) for f in queued] == [0, 1, 4, 9, 16]
    finally:
        ex.shutdown(wait=True)


def test_two_threads_wait_on_futures_of_the_same_worker():
    with poolx.Executor(1) as ex:
        warm(ex)
        first = ex.submit(sleep_and_return, 0.3, "first")  # direct: the worker was idle
        second = ex.submit(square, 5)  # through the queue, to the same worker after it
        got: dict[str, object] = {}

        def wait(name: str, fut: poolx.Future) -> None:
            got[name] = fut.result(timeout=60)

        threads = [threading.Thread(target=wait, args=(name, fut))
                   for name, fut in (("a", first), ("b", second), ("c", first))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert got == {"a": "first", "b": 25, "c": "first"}


def test_result_timeout_expires_then_the_result_comes_later():
    with poolx.Executor(1) as ex:
        warm(ex)
        fut = ex.submit(sleep_and_return, 0.5, "later")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.05)
        assert time.monotonic() - started >= 0.05  # never early
        with pytest.raises(TimeoutError):
            fut.exception(timeout=0.01)
        assert fut.result(timeout=60) == "later"
        assert ex.submit(square, 6).result(timeout=60) == 36  # the worker's channel was given back


def test_futures_sent_directly_complete_for_wait_and_as_completed_alone():
    # Nobody calls result(): the scheduler must take the worker's channel
    # back (its reservation for a caller, see _direct.note) and read it.
    # A round trip read directly first each time: a reservation follows only a
    # claimed one, and only once the scheduler naps short (it wakes at least
    # once a second: the loop runs for longer than that).
    with poolx.Executor(2) as ex:
        warm(ex, 2)
        for i in range(40):
            assert ex.submit(square, i).result(timeout=60) == i * i
            fut = ex.submit(square, i)
            done, _ = cf.wait([fut], timeout=60)
            assert done == {fut} and fut.result() == i * i
            time.sleep(0.05)
        futures = [ex.submit(square, i) for i in range(2)]
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == [0, 1]


def test_wait_and_as_completed_beside_a_direct_reader():
    with poolx.Executor(2) as ex:
        warm(ex, 2)
        futures = [ex.submit(sleep_and_return, 0.3, i) for i in range(2)]
        reader = threading.Thread(target=futures[0].result, kwargs={"timeout": 60})
        reader.start()
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == [0, 1]
        reader.join(60)


def test_a_callback_that_waits_on_another_direct_future():
    # Callbacks run in the thread that completes the future: here the waiting
    # caller's, under the scheduler's lock.  One that waits for another task
    # must not deadlock on that lock.
    with poolx.Executor(2) as ex:
        warm(ex, 2)
        first = ex.submit(sleep_and_return, 0.2, 1)
        second = ex.submit(sleep_and_return, 0.4, 2)
        got: list[object] = []
        first.add_done_callback(lambda f: got.append(second.result(timeout=60)))
        assert first.result(timeout=60) == 1
        assert got == [2]


class Interrupted(Exception):
    pass


def test_a_signal_handler_raising_in_the_waiting_thread():
    # SIGUSR1, not SIGALRM: pytest-timeout's alarm must stay armed if this hangs.
    def raise_interrupted(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGUSR1, raise_interrupted)
    try:
        with poolx.Executor(1) as ex:
            warm(ex)
            fut = ex.submit(sleep_and_return, 1.0, "after")
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            with pytest.raises(Interrupted):
                fut.result(timeout=60)
            # The interrupted reader let go of the worker's channel: the result still comes.
            assert fut.result(timeout=60) == "after"
            assert ex.submit(square, 8).result(timeout=60) == 64
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_an_exception_while_the_reader_completes_futures_leaves_none_pending(monkeypatch):
    # A signal handler's exception can land while the reader completes the futures it
    # read: those not completed yet must go to the scheduler, not stay pending for ever.
    with poolx.Executor(1) as ex:
        warm(ex)
        scheduler = ex._backend._scheduler
        real = scheduler.complete
        calls = []

        def interrupted(results):
            calls.append(threading.get_ident())
            if len(calls) == 1 and threading.get_ident() != scheduler.ident:
                raise Interrupted  # (before completing any of them)
            real(results)

        monkeypatch.setattr(scheduler, "complete", interrupted)
        fut = ex.submit(sleep_and_return, 0.2, "kept")
        with pytest.raises(Interrupted):
            fut.result(timeout=60)
        assert fut.result(timeout=60) == "kept"
        assert calls[0] != scheduler.ident  # (the reader was interrupted, not the scheduler)


@pytest.mark.timeout(600)
def test_many_round_trips_while_workers_are_killed_at_random():
    """10,000 round trips; a thread kills a worker every ~30 ms.  Each future
    gets its own task's result or WorkerDiedError: none lost, none twice
    (a second set_result would break the executor), none given to another."""
    rounds = 10_000
    stop = threading.Event()
    killed = []
    with poolx.Executor(2) as ex:
        warm(ex, 2)
        pids: set[int] = set()

        def killer() -> None:
            rng = random.Random(23)
            while not stop.wait(rng.uniform(0.01, 0.05)):
                alive = list(pids)[-4:]
                if alive:
                    victim = rng.choice(alive)
                    try:
                        os.kill(victim, signal.SIGKILL)
                        killed.append(victim)
                    except ProcessLookupError:
                        pass

        thread = threading.Thread(target=killer)
        thread.start()
        died = 0
        try:
            for i in range(rounds):
                try:
                    if i % 50 == 0:  # the workers the killer may kill
                        pids.add(ex.submit(getpid).result(timeout=120))
                    value = ex.submit(identity, i).result(timeout=120)
                except WorkerDiedError:
                    died += 1
                    continue
                assert value == i
        finally:
            stop.set()
            thread.join()
        assert ex.submit(square, 9).result(timeout=60) == 81
    assert killed and died <= 2 * len(killed)  # (a kill fails at most the getpid and the identity under way)
