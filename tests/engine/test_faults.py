"""The fault matrix (research/reliability.md §1; issue 8), on every start method.

Each row states what a user gets when that fault happens: the exception type
(a subclass of the stdlib type that existing ``except`` clauses catch), a
message naming the cause, and an executor that keeps working for the other
tasks, the same executor, not a fresh one.  docs/faults.md has the table,
with what the stdlib does beside it.

Rows tested elsewhere, on every start method too:
F11 Ctrl-C and F14 SIGKILL of the driver in test_lifecycle
(``test_workers_are_gone_within_2_s_when_the_driver_is_interrupted_or_killed``),
F14's shared memory in test_shm (``test_driver_sigkill...``), a crash while the
result is pickled in test_processes.  Bad inputs (§3) are in test_bad_inputs.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from _fault_tasks import (
    Counter,
    CrashesWhenUnpickled,
    ExitsWhenUnpickled,
    Flaky,
    SystemExitWhenPickled,
    SystemExitWhenUnpickled,
    always_crash,
    big_result,
    crash_once,
    exit_holding,
    flaky,
    grow,
    hang_in_initializer,
    ignore_sigterm_and_sleep,
    item_crashes_at,
    item_sleeps_at,
    limit_memory_growth,
    log_and_crash_at,
    scripted,
    takes,
    wait_for_file,
    wait_for_refs,
)
from _helpers import run_script
from _tasks import (
    FailsToUnpickle,
    add,
    allocate,
    exit_process,
    failing_init,
    getpid,
    kill_self,
    raise_keyboard_interrupt,
    raise_system_exit,
    raise_unpicklable_error,
    raise_value_error,
    return_fails_to_unpickle,
    return_lock,
    segfault,
    sleep_and_return,
    square,
)

import poolx
from poolx import (
    ActorDiedError,
    DeserializationError,
    InitializerError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerDiedError,
)

BrokenProcessPool = cf.process.BrokenProcessPool

# (row id, task, arguments, exception type, text in its message, stdlib type it must also be)
TASK_FAULTS = [
    ("F1 task raises", raise_value_error, ("boom",), ValueError, "boom", ValueError),
    ("F2 SystemExit", raise_system_exit, (2,), SystemExit, "2", SystemExit),
    ("F2 KeyboardInterrupt", raise_keyboard_interrupt, (), KeyboardInterrupt, "", KeyboardInterrupt),
    ("F4 task cannot be unpickled", add, (FailsToUnpickle(), 1), DeserializationError,
     "cannot rebuild FailsToUnpickle", pickle.UnpicklingError),
    ("F4 SystemExit while unpickling", takes, (SystemExitWhenUnpickled(),), DeserializationError,
     "from a reconstructor", BrokenProcessPool),
    ("F4 segfault while unpickling", takes, (CrashesWhenUnpickled(),), WorkerDiedError, "SIGSEGV",
     BrokenProcessPool),
    ("F4 os._exit while unpickling", takes, (ExitsWhenUnpickled(),), WorkerDiedError, "exited with code 0",
     BrokenProcessPool),
    ("F5 result cannot be pickled", return_lock, (), SerializationError, "could not be pickled",
     pickle.PicklingError),
    ("F6 result cannot be unpickled", return_fails_to_unpickle, (), DeserializationError,
     "unpickled in the driver", BrokenProcessPool),
    ("F6 exception cannot be pickled", raise_unpicklable_error, (), RemoteError, "holds a lock",
     Exception),
    ("F7 segfault", segfault, (), WorkerDiedError, "SIGSEGV", BrokenProcessPool),
    ("F7 os._exit", exit_process, (3,), WorkerDiedError, "exited with code 3", BrokenProcessPool),
    ("F7 SIGKILL", kill_self, (signal.SIGKILL,), WorkerDiedError, "SIGKILL", BrokenProcessPool),
    ("F7 SIGTERM", kill_self, (signal.SIGTERM,), WorkerDiedError, "SIGTERM", BrokenProcessPool),
]


def _check_fault(ex, row):
    """Run one faulty task among innocent ones; return what went wrong, or None."""
    name, fn, args, error, text, stdlib = row
    before = [ex.submit(sleep_and_return, 0.01, i) for i in range(6)]
    culprit = ex.submit(fn, *args)
    after = [ex.submit(square, i) for i in range(6)]
    try:
        culprit.result(timeout=30)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are outcomes here
        caught = exc
    else:
        return f"{name}: no exception"
    problems = []
    if not isinstance(caught, error) or not isinstance(caught, stdlib):
        problems.append(f"got {type(caught).__name__}: {caught}")
    if text not in str(caught):
        problems.append(f"{text!r} not in the message {str(caught)!r}")
    if error is WorkerDiedError:
        if not (caught.pid and caught.exitcode is not None):
            problems.append(f"pid/exitcode missing: {caught.pid}, {caught.exitcode}")
        if fn.__name__ not in str(caught):
            problems.append(f"the message does not name {fn.__name__}")
    if error is ValueError and not isinstance(caught.__cause__, RemoteTraceback):
        problems.append("no RemoteTraceback as the cause")
    if [f.result(timeout=30) for f in before] != list(range(6)):
        problems.append("innocent tasks submitted before it failed")
    if [f.result(timeout=30) for f in after] != [i * i for i in range(6)]:
        problems.append("innocent tasks submitted after it failed")
    if ex.submit(square, 7).result(timeout=30) != 49:
        problems.append("the executor stopped working")
    return f"{name}: {'; '.join(problems)}" if problems else None


def test_every_task_fault_fails_only_its_task(start_method):
    """F1, F2, F4-F7 on one executor: each fault in turn, the executor serving on."""
    with poolx.Executor(2, mp_context=start_method) as ex:
        problems = [p for row in TASK_FAULTS if (p := _check_fault(ex, row))]
        deaths = sum(row[3] is WorkerDiedError for row in TASK_FAULTS)
        stats = ex.statistics()
    assert not problems, "\n".join(problems)
    assert stats.workers_died == deaths, stats


def test_faults_inside_a_map_fail_only_the_culprit_item(start_method, tmp_path):
    """Poison-task quarantine: a worker dies in the middle of a map chunk.

    The other items of the chunk run again and complete; only the item that
    killed the worker fails, and the error names it.  (The stdlib fails the
    whole chunk, or the whole pool.)
    """
    log = tmp_path / "log"
    with poolx.Executor(2, mp_context=start_method) as ex:
        results = []
        with pytest.raises(WorkerDiedError) as info:
            for value in ex.map(log_and_crash_at, range(20), [13] * 20, [str(log)] * 20, chunksize=10):
                results.append(value)
        assert results == list(range(13))
        message = str(info.value)
        assert message.startswith("map item 13, log_and_crash_at(13, 13, "), message
        assert "exited with code 7" in message and info.value.exitcode == 7
        ex.submit(square, 1).result(timeout=30)  # every chunk is done once the executor serves
        runs = [int(x) for x in log.read_text().split()]
        # Items 10..12 ran twice (their first results died with the worker), 13
        # once (never again), 14..19 once, after the quarantine.
        assert sorted(set(runs)) == list(range(20))
        assert runs.count(13) == 1 and all(runs.count(i) == 2 for i in range(10, 13))
        assert ex.statistics().workers_died == 1


def test_pool_imap_goes_on_past_a_crashed_item_and_map_names_it(start_method):
    with poolx.Pool(2, context=start_method) as pool:
        it = pool.imap(item_crashes_at, range(12), 1)
        outcomes = []
        for _ in range(12):
            try:
                outcomes.append(next(it))
            except WorkerDiedError as exc:
                outcomes.append(str(exc).split(":")[0])
        assert outcomes == [0, 10, 20, 30, 40, "map item 5, item_crashes_at(5)", *range(60, 120, 10)]
        with pytest.raises(WorkerDiedError, match=r"^map item 5, item_crashes_at\(5\)"):
            pool.map(item_crashes_at, range(12), chunksize=4)
        with pytest.raises(WorkerDiedError, match=r"^map item 5, item_crashes_at\(5, 5\)"):
            pool.starmap(item_crashes_at, [(i, 5) for i in range(12)], chunksize=4)
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_a_crash_with_large_data_in_flight_fails_only_its_task(start_method):
    """F18: 100 MB each way; the crash is an error, not a deadlock, and nothing is left mapped."""
    big = bytes(100 << 20)
    with poolx.Executor(2, mp_context=start_method) as ex:
        crashing = [ex.submit(exit_holding, big) for _ in range(2)]
        results = [ex.submit(big_result, 100 << 20) for _ in range(2)]
        for f in crashing:
            with pytest.raises(WorkerDiedError, match="exited with code 3"):
                f.result(timeout=60)
        assert [len(f.result(timeout=60)) for f in results] == [100 << 20] * 2
        assert ex.submit(len, big).result(timeout=60) == 100 << 20
    # (the leak guard checks that no segment is still mapped and no fd left open)


# -- F9: timeouts ---------------------------------------------------------------


def test_a_task_over_task_timeout_is_stopped_and_its_worker_replaced(start_method):
    with poolx.Executor(2, mp_context=start_method, task_timeout=0.5) as ex:
        pid = ex.submit(getpid).result(timeout=30)
        others = [ex.submit(sleep_and_return, 0.05, i) for i in range(8)]
        stuck = ex.submit(ignore_sigterm_and_sleep, 60)  # SIGTERM is not enough: it is killed
        with pytest.raises(TaskTimeoutError) as info:  # (within 30 s: only the timeout ends it)
            stuck.result(timeout=30)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, cf.TimeoutError)
        assert "ignore_sigterm_and_sleep ran longer than task_timeout=0.5 s" in str(info.value)
        assert info.value.timeout == 0.5
        assert [f.result(timeout=30) for f in others] == list(range(8))
        pids = {ex.submit(getpid).result(timeout=30) for _ in range(4)}
        assert info.value.pid not in pids
        assert pid in pids or len(pids) >= 1


def test_task_timeout_counts_per_map_item(start_method):
    with poolx.Executor(2, mp_context=start_method, task_timeout=2.0) as ex:
        # One chunk of 30 items of 0.1 s: the chunk takes 3 s, over the limit,
        # but no item comes near it (20 times over: a loaded machine's sleeps
        # overshoot, by far less); only the 30 s item times out, and only it fails.
        times = [0.1 if i != 7 else 30 for i in range(30)]
        results = []
        with pytest.raises(TaskTimeoutError, match=r"^map item 7, sleep_and_return\(30, 7\)"):
            for value in ex.map(sleep_and_return, times, range(30), chunksize=30):
                results.append(value)
        assert results == list(range(7))
        assert list(ex.map(item_sleeps_at, range(6), [99] * 6, [0] * 6, chunksize=3)) == [
            0, 10, 20, 30, 40, 50]


def test_task_timeout_needs_a_backend_that_can_stop_a_task():
    with pytest.raises(ValueError, match=r"cannot stop a running task.*processes"):
        poolx.Executor(1, backend="threads", task_timeout=1)
    for bad, error in ((0, ValueError), (-1, ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="task_timeout"):
            poolx.Executor(1, task_timeout=bad)


# -- retries --------------------------------------------------------------------


def test_max_retries_reruns_a_task_whose_worker_died_and_bounds_the_deaths(start_method, tmp_path):
    with poolx.Executor(1, mp_context=start_method, max_retries=2) as ex:
        assert ex.submit(crash_once, str(tmp_path / "once"), "back").result(timeout=60) == "back"
        attempts = tmp_path / "always"
        with pytest.raises(WorkerDiedError, match="exited with code 3"):
            ex.submit(always_crash, str(attempts)).result(timeout=60)
        assert attempts.read_text() == "xxx"  # killed 3 workers: 1 run + max_retries, then no more
        assert ex.statistics().workers_died == 4
        assert ex.submit(square, 3).result(timeout=30) == 9


def test_retry_exceptions_reruns_chosen_exceptions_only(tmp_path):
    with poolx.Executor(1, max_retries=2, retry_exceptions=[Flaky]) as ex:
        assert ex.submit(flaky, str(tmp_path / "a"), 2, "ok").result(timeout=30) == "ok"
        with pytest.raises(Flaky, match="attempt 3"):
            ex.submit(flaky, str(tmp_path / "b"), 5, "never").result(timeout=30)
        assert (tmp_path / "b").read_text() == "xxx"
        with pytest.raises(ValueError):  # not a chosen exception: not run again
            ex.submit(raise_value_error).result(timeout=30)
        # map items are retried one by one, in their worker
        markers = [str(tmp_path / f"m{i}") for i in range(6)]
        assert list(ex.map(flaky, markers, [1] * 6, range(6), chunksize=3)) == list(range(6))
    with pytest.raises(TypeError, match="retry_exceptions"):
        poolx.Executor(1, retry_exceptions=[ValueError, "KeyError"])
    with pytest.raises(ValueError, match="max_retries"):
        poolx.Executor(1, max_retries=-1)


def test_max_retries_bounds_worker_deaths_and_exceptions_together(tmp_path):
    # As Ray's max_retries: one budget for both kinds of rerun.
    with poolx.Executor(1, max_retries=2, retry_exceptions=[Flaky]) as ex:
        marker = tmp_path / "a"
        with pytest.raises(Flaky, match="run 3"):
            ex.submit(scripted, str(marker), ["crash", "crash", "flaky", "ok"]).result(timeout=60)
        assert marker.read_text() == "xxx"  # 1 run + 2 reruns, whatever made them
        assert ex.submit(scripted, str(tmp_path / "b"), ["flaky", "crash", "ok"]).result(timeout=60) == 3


def test_a_retried_future_can_be_cancelled_while_it_waits(tmp_path):
    with poolx.Executor(1, max_retries=1, retry_exceptions=True) as ex:
        # Held until released: fut waits behind it however slow the machine (a 0.5 s
        # blocker could end before the cancel on a loaded one, and fut would have started).
        blocker = ex.submit(wait_for_file, str(tmp_path / "release"))
        fut = ex.submit(flaky, str(tmp_path / "c"), 0, "x")
        assert fut.cancel() and fut.cancelled()
        (tmp_path / "release").touch()
        blocker.result(timeout=30)
        with pytest.raises(cf.CancelledError):
            fut.result(timeout=30)


# -- F8: memory -------------------------------------------------------------------


def test_memory_exhaustion_in_a_worker_is_a_memory_error_and_the_worker_lives(start_method):
    with poolx.Executor(1, mp_context=start_method, initializer=limit_memory_growth,
                        initargs=(1 << 30,)) as ex:
        pid = ex.submit(getpid).result(timeout=30)
        with pytest.raises(MemoryError):
            ex.submit(allocate, 4 << 30).result(timeout=30)
        assert ex.submit(allocate, 1 << 20).result(timeout=30) == 1 << 20
        assert ex.submit(getpid).result(timeout=30) == pid


def test_a_worker_over_max_memory_per_child_is_replaced_between_tasks(start_method):
    with poolx.Executor(1, mp_context=start_method, max_memory_per_child="300MB") as ex:
        pids = [ex.submit(grow, 100 << 20).result(timeout=30) for _ in range(8)]
        assert len(set(pids)) >= 2  # a worker holding 300 MB retired and a fresh one took over
        futs = [ex.submit(grow, 50 << 20) for _ in range(12)]
        assert len([f.result(timeout=60) for f in futs]) == 12  # none lost while workers retire
        assert ex.statistics().workers_died == 0
    with pytest.raises(ValueError, match="max_memory_per_child"):
        poolx.Executor(1, max_memory_per_child="lots")


def test_max_tasks_per_child_replaces_workers_without_losing_tasks(start_method):
    if start_method == "fork":
        with pytest.raises(ValueError, match="fork"):
            poolx.Executor(1, mp_context="fork", max_tasks_per_child=2)
        return
    with poolx.Executor(2, mp_context=start_method, max_tasks_per_child=3) as ex:
        pids = [f.result(timeout=30) for f in [ex.submit(getpid) for _ in range(30)]]
    assert len(pids) == 30 and len(set(pids)) >= 10


# -- F10: the initializer -------------------------------------------------------------


def test_a_failing_initializer_breaks_the_executor_clearly_without_respawning(start_method):
    ex = poolx.Executor(2, mp_context=start_method, initializer=failing_init)
    try:
        fut = ex.submit(square, 2)
        with pytest.raises(InitializerError, match="initializer exploded") as info:
            fut.result(timeout=30)
        assert isinstance(info.value, BrokenProcessPool) and "failing_init" in str(info.value)
        time.sleep(0.3)
        with pytest.raises(InitializerError):
            ex.submit(square, 3)
        assert ex.statistics().workers_started <= 2
    finally:
        ex.shutdown()


def test_an_initializer_that_hangs_breaks_the_executor_after_init_timeout(start_method):
    ex = poolx.Executor(2, mp_context=start_method, initializer=hang_in_initializer, init_timeout=1.0)
    try:
        futures = [ex.submit(square, i) for i in range(4)]
        for f in futures:
            with pytest.raises(InitializerError, match=r"hang_in_initializer did not finish within "
                                                       r"init_timeout=1 s"):
                f.result(timeout=30)  # (the initializer sleeps 120 s: only init_timeout ends it)
        with pytest.raises(InitializerError):
            ex.submit(square, 1)
        assert ex.statistics().workers_started <= 2  # no respawn loop
    finally:
        ex.shutdown()
    with pytest.raises(ValueError, match="init_timeout"):
        poolx.Executor(1, backend="threads", init_timeout=1)


# -- F3: what cannot be pickled ---------------------------------------------------------


def test_what_cannot_be_pickled_fails_its_future_and_nothing_is_queued(start_method):
    with poolx.Executor(1, mp_context=start_method) as ex:
        for _ in range(100):  # (loky's queue-full deadlock test: 100 failures, then 100 successes)
            with pytest.raises(SerializationError, match="argument 0"):
                ex.submit(takes, threading.Lock()).result(timeout=30)
        with pytest.raises(SerializationError) as info:  # SystemExit in __reduce__ is caught too
            ex.submit(takes, SystemExitWhenPickled()).result(timeout=30)
        assert "SystemExitWhenPickled" in str(info.value)
        assert [f.result(timeout=30) for f in [ex.submit(square, i) for i in range(100)]] == [
            i * i for i in range(100)]
        assert ex.statistics().tasks_submitted == 100


# -- F12: shutdown in the middle of work ---------------------------------------------------


def test_shutdown_without_waiting_and_with_cancel_futures(start_method, tmp_path):
    # The running task runs until the test releases it: shutdown(wait=False) returning
    # at all shows it did not wait, and which tasks are cancelled does not depend on
    # how long a loaded machine takes (it did with a 0.5 s task and a 1 s bound).
    release = tmp_path / "release"
    ex = poolx.Executor(1, mp_context=start_method)
    running = ex.submit(wait_for_file, str(release), "done")
    deadline = time.monotonic() + 30
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    pending = [ex.submit(sleep_and_return, 0.05, i) for i in range(20)]
    ex.shutdown(wait=False, cancel_futures=True)
    # Tasks already sent to the worker (its prefetch window, a task or two for
    # tasks this long) run, as the stdlib's call queue does; the rest are
    # cancelled, by the scheduler thread, soon (as the stdlib's manager thread does).
    deadline = time.monotonic() + 30
    while sum(f.cancelled() for f in pending) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.touch()
    assert not cf.wait(pending, timeout=30).not_done
    cancelled = [f.cancelled() for f in pending]
    assert sum(cancelled) >= 15, cancelled
    assert cancelled == sorted(cancelled)  # the first ones ran, if any
    assert [f.result(timeout=30) for f, c in zip(pending, cancelled) if not c] == list(
        range(cancelled.count(False)))
    assert running.result(timeout=30) == "done"
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    # (the leak guard checks that the worker is gone once the running task is done)


def test_kill_workers_fails_running_tasks_promptly(start_method):
    ex = poolx.Executor(2, mp_context=start_method)
    running = [ex.submit(sleep_and_return, 60) for _ in range(2)]
    # On their workers before the kill (a fixed 0.5 s sleep was too short for a
    # loaded machine to start two spawn workers: the tasks were still queued and
    # were cancelled instead).
    deadline = time.monotonic() + 30
    while not all(f.running() for f in running) and time.monotonic() < deadline:
        time.sleep(0.01)
    pending = [ex.submit(square, i) for i in range(5)]
    ex.kill_workers()
    for f in running:  # (the tasks sleep 60 s: only the kill ends them within the 10 s)
        with pytest.raises(WorkerDiedError, match="forcefully shut down"):
            f.result(timeout=10)
    assert all(f.cancelled() for f in pending)
    ex.shutdown()


# -- F13: a task waiting on its own executor ------------------------------------------------


def test_a_task_waiting_for_futures_of_its_own_executor_does_not_deadlock(start_method):
    with poolx.Executor(1, mp_context=start_method) as ex:
        firsts = [ex.submit(sleep_and_return, 0.2, i) for i in range(3)]
        assert ex.submit(wait_for_refs, firsts).result(timeout=60) == [0, 1, 2]
        with pytest.raises(SerializationError, match=r"a poolx\.Executor cannot be sent to a task"):
            ex.submit(takes, ex).result(timeout=30)


def test_a_thread_task_waiting_for_its_own_executor_borrows_a_thread():
    # concurrent.futures.ThreadPoolExecutor deadlocks here (its docs say so).
    with poolx.Executor(1, backend="threads") as ex:

        def depth(n):
            return 0 if n == 0 else 1 + ex.submit(depth, n - 1).result(timeout=30)

        assert ex.submit(depth, 5).result(timeout=60) == 5


NESTED_RAY = """
    import sys
    import poolx

    @poolx.remote
    def inner(x):
        return x + 1

    @poolx.remote
    def outer(x):
        return poolx.get(inner.remote(x)) * 10

    if __name__ == "__main__":
        poolx.init(1, mp_context=sys.argv[1])
        print(poolx.get([outer.remote(i) for i in range(3)], timeout=60))
        poolx.shutdown()
"""


def test_nested_tasks_on_one_worker_do_not_deadlock(start_method):
    proc = run_script(NESTED_RAY, start_method, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "[10, 20, 30]"


# -- F16: interpreter exit ---------------------------------------------------------------------

EXIT_WITH_PENDING = """
    import sys, threading, time
    from poolx import Executor  # (loads the executor module, which registers poolx's exit hook)

    def slow(x):
        time.sleep(0.3)
        print(x, flush=True)
        return x

    def start_as_the_script_ends():
        # Hold each child's start (after poolx's own check of __main__.__file__) until the
        # script has ended and CPython has deleted __main__.__file__: the race that a loaded
        # machine lost once in a full run (issue 19, item 9), made certain.
        from multiprocessing import spawn

        entered, ended = threading.Event(), threading.Event()
        threading._register_atexit(ended.set)  # runs before poolx's exit hook (registered earlier)
        read = spawn.get_preparation_data

        def late(name):
            entered.set()
            ended.wait(30)
            return read(name)

        spawn.get_preparation_data = late
        return entered

    if __name__ == "__main__":
        entered = start_as_the_script_ends() if sys.argv[2] == "late-start" else None
        ex = Executor(1, mp_context=sys.argv[1])
        futs = [ex.submit(slow, word) for word in ("apple", "pear")]
        if sys.argv[2] == "nowait":
            ex.shutdown(wait=False)
        if entered is not None:
            entered.wait(30)
        # no shutdown: the interpreter's exit waits for the pending work (the stdlib's promise)
"""


@pytest.mark.parametrize("how", ["pending", "late-start", "nowait"])
def test_interpreter_exit_with_pending_futures_does_not_hang(start_method, how):
    if how == "late-start" and start_method == "fork":
        pytest.skip("a forked worker copies the driver's __main__: it imports no script")
    proc = run_script(EXIT_WITH_PENDING, start_method, how, timeout=60)
    assert proc.returncode == 0, proc.stderr
    if how != "nowait":
        assert proc.stdout.split() == ["apple", "pear"], proc.stderr


EXIT_AFTER_NOWAIT = """
    import atexit, os, sys, time
    import poolx

    class Sleeper:
        def nap(self, path, seconds):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(seconds)

    def nap(path, seconds):
        Sleeper().nap(path, seconds)

    def started(path):
        deadline = time.monotonic() + 60
        while not (os.path.exists(path) and open(path).read()):
            if time.monotonic() > deadline:
                sys.exit("the long call never started")
            time.sleep(0.05)
        return open(path).read()

    def outcome(fut):
        try:
            print(type(fut.exception(timeout=0)).__name__, flush=True)
        except BaseException as exc:
            print("not done:", repr(exc), flush=True)

    if __name__ == "__main__":
        method, what, path = sys.argv[1:]
        ex = poolx.Executor(1, mp_context=method)
        if what == "task":
            fut = ex.submit(nap, path, 600)
        else:
            fut = ex.actor(Sleeper).nap.remote(path, 600)
        print(started(path), flush=True)  # the pid of the process running the long call
        ex.shutdown(wait=False)
        atexit.register(outcome, fut)  # runs after the threading exit hooks (poolx's among them)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("what", ["task", "actor"])
def test_exit_after_shutdown_without_wait_kills_what_is_left(start_method, what, tmp_path):
    # Issue 19, item 6: the program hung until the 600 s call ended (the stdlib and loky do).
    # Now the exit waits EXIT_GRACE, kills, and is gone well within the 60 s allowed here.
    proc = run_script(EXIT_AFTER_NOWAIT, start_method, what, str(tmp_path / "pid"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    pid, outcome = proc.stdout.split("\n", 1)
    assert outcome.strip() == ("WorkerDiedError" if what == "task" else "ActorDiedError")
    assert not _running(int(pid), within=5.0)


def _running(pid, within):
    """True if ``pid`` is still a running process (not a zombie) after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


# -- F17: actors ----------------------------------------------------------------------------------


def test_an_actor_that_dies_fails_its_calls_or_restarts(start_method):
    with poolx.Executor(1, mp_context=start_method) as ex:
        plain = ex.actor(Counter)
        assert plain.incr.remote().result(timeout=30) == 1
        with pytest.raises(ActorDiedError, match="exited with code 5") as info:
            plain.crash.remote().result(timeout=30)
        assert "crash" in str(info.value)
        with pytest.raises(ActorDiedError):
            plain.incr.remote().result(timeout=30)

        restarting = ex.options(max_restarts=1).actor(Counter)
        assert restarting.incr.remote().result(timeout=30) == 1
        with pytest.raises(ActorDiedError):
            restarting.crash.remote().result(timeout=30)
        assert restarting.incr.remote().result(timeout=30) == 1  # a fresh instance: state reset
        with pytest.raises(ActorDiedError):
            restarting.crash.remote().result(timeout=30)
        with pytest.raises(ActorDiedError):  # restarts used up
            restarting.incr.remote().result(timeout=30)
        assert ex.submit(square, 4).result(timeout=30) == 16


def test_an_actor_call_over_call_timeout_kills_and_restarts_the_actor(start_method):
    with poolx.Executor(1, mp_context=start_method) as ex:
        actor = ex.options(call_timeout=0.5, max_restarts=1, max_task_retries=1).actor(Counter)
        assert actor.incr.remote().result(timeout=30) == 1
        stuck = actor.nap.remote(60)
        after = actor.incr.remote()  # queued behind it: sent again to the restarted actor
        with pytest.raises(TaskTimeoutError, match=r"Counter.nap\(\) ran longer than call_timeout=0.5 s"):
            stuck.result(timeout=30)
        assert after.result(timeout=30) == 1
    with poolx.Executor(1, backend="threads") as ex:
        with pytest.raises(ValueError, match="call_timeout needs backend='processes'"):
            ex.options(call_timeout=1).actor(Counter)
    with pytest.raises(ValueError, match="one call at a time"):
        poolx.ActorOptions(call_timeout=1, max_concurrency=2)


# -- F20: done-callbacks ------------------------------------------------------------------------


def test_done_callbacks_that_raise_or_exit_are_isolated(caplog):
    with poolx.Executor(1) as ex:

        def raising(_f):
            raise RuntimeError("callback failed")

        def exiting(_f):
            sys.exit("callback exits")

        resubmitted = []

        def submits(_f):
            resubmitted.append(ex.submit(square, 5))

        with caplog.at_level(logging.ERROR):
            for cb in (raising, exiting, submits):
                fut = ex.submit(square, 2)
                fut.add_done_callback(cb)
                assert fut.result(timeout=30) == 4
            deadline = time.monotonic() + 10
            while not resubmitted and time.monotonic() < deadline:
                time.sleep(0.01)
            assert resubmitted[0].result(timeout=30) == 25
        assert "callback failed" in caplog.text
        assert ex.submit(square, 3).result(timeout=30) == 9


# -- every front end: a crash and a timeout -------------------------------------------------------


def test_every_front_end_survives_a_crash_and_times_out(tmp_path):
    joblib = pytest.importorskip("joblib")
    import poolx.joblib  # registers the backend

    with poolx.Pool(2, task_timeout=0.5) as pool:
        with pytest.raises(WorkerDiedError):
            pool.apply_async(exit_process, (3,)).get(timeout=30)
        with pytest.raises(TaskTimeoutError):
            pool.apply_async(sleep_and_return, (30,)).get(timeout=30)
        assert pool.apply(square, (3,)) == 9

    with joblib.parallel_config(backend="poolx", n_jobs=2, task_timeout=0.5):
        with pytest.raises(WorkerDiedError):
            joblib.Parallel()(joblib.delayed(exit_process)(3) for _ in range(1))
        with pytest.raises(TaskTimeoutError):
            joblib.Parallel()(joblib.delayed(sleep_and_return)(30) for _ in range(1))
        assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    poolx.joblib.shutdown_workers()

    poolx.init(2, task_timeout=0.5)
    try:
        crash = poolx.remote(max_retries=0)(exit_process)
        with pytest.raises(WorkerDiedError):
            poolx.get(crash.remote(3), timeout=30)
        with pytest.raises(TaskTimeoutError):
            poolx.get(poolx.remote(sleep_and_return).remote(30), timeout=30)
        retried = poolx.remote(max_retries=1)(crash_once)
        assert poolx.get(retried.remote(str(tmp_path / "m"), 7), timeout=30) == 7
        assert poolx.get(poolx.remote(square).remote(4), timeout=30) == 16
    finally:
        poolx.shutdown()


def test_the_errors_subclass_what_stdlib_handlers_catch():
    assert issubclass(WorkerDiedError, BrokenProcessPool)
    assert issubclass(TaskTimeoutError, TimeoutError) and issubclass(TaskTimeoutError, cf.TimeoutError)
    import multiprocessing

    assert issubclass(TaskTimeoutError, multiprocessing.TimeoutError)
    assert issubclass(SerializationError, pickle.PicklingError)
    assert issubclass(DeserializationError, pickle.UnpicklingError)
    assert issubclass(DeserializationError, BrokenProcessPool)
    assert issubclass(InitializerError, BrokenProcessPool)
    assert issubclass(poolx.TaskCancelledError, cf.CancelledError)
    assert os  # (imported for the fault tasks' sake)


def test_a_timeout_kill_that_lands_late_blames_only_the_task_over_time(monkeypatch):
    """The scheduler sees a task over task_timeout, then kills its worker.  If the
    task finishes in between (a GIL switch, a VM pause), the kill lands while the
    worker runs the next task: that one is innocent and runs again; only the task
    seen over time fails.  Here the gap is widened to 30 ms to make it happen."""
    from poolx.backends.processes import driver

    signal_worker = driver.Scheduler.signal

    def late_signal(self, w, kill):
        if kill and w.timed_out:
            time.sleep(0.03)
        return signal_worker(self, w, kill)

    monkeypatch.setattr(driver.Scheduler, "signal", late_signal)
    with poolx.Executor(1, task_timeout=0.1) as ex:
        for i in range(10):
            slow = ex.submit(sleep_and_return, 0.11 + 0.005 * i, "slow")
            after = [ex.submit(sleep_and_return, 0.001, j) for j in range(20)]
            assert [f.result(timeout=30) for f in after] == list(range(20))
            try:
                assert slow.result(timeout=30) == "slow"  # (finished and sent before the kill)
            except TaskTimeoutError:
                pass


# -- a scheduler thread that dies (issue 19, item 5) ----------------------------------------
#
# Only a bug in poolx kills the processes engine's scheduler thread (Executor(2.5)
# did, before constructor arguments were checked).  Whatever kills it, every task
# handed to it before, during or after its death must fail promptly with a
# PoolxError naming the cause: never wait on a queue nobody reads.


class SchedulerBug(Exception):
    """Raised inside the scheduler thread, as a bug in it would be."""


def _kill_scheduler(ex: poolx.Executor) -> Any:
    """Make ``ex``'s scheduler thread raise SchedulerBug on its next pass; returns the thread."""
    scheduler = ex._backend._scheduler

    def dispatch() -> None:
        raise SchedulerBug("injected into the scheduler loop")

    scheduler.dispatch = dispatch  # an instance attribute: the loop looks it up each pass
    ex._backend.wake()
    return scheduler


def _failed_naming_the_bug(call: Callable[[], Any]) -> str | None:
    """None if ``call()`` raised a PoolxError naming SchedulerBug within T seconds, else what it did."""
    try:
        value = call()
    except poolx.PoolxError as exc:
        return None if "SchedulerBug" in str(exc) else f"PoolxError without the cause: {exc}"
    except BaseException as exc:
        return f"raised {type(exc).__name__}: {exc}"
    return f"returned {value!r}"


T = 20  # seconds: every wait in this section is bounded by it


def test_a_scheduler_that_dies_fails_every_task_it_was_given_and_refuses_new_ones(start_method):
    ex = poolx.Executor(1, mp_context=start_method)
    try:
        assert ex.submit(square, 3).result(timeout=T) == 9
        running = ex.submit(time.sleep, 60)
        queued = [ex.submit(square, i) for i in range(20)]  # behind the busy worker
        _kill_scheduler(ex).join(T)
        problems = [_failed_naming_the_bug(lambda f=f: f.result(timeout=T)) for f in [running, *queued]]
        problems.append(_failed_naming_the_bug(lambda: ex.submit(square, 2).result(timeout=T)))
        assert not [p for p in problems if p], problems
        with pytest.raises(poolx.PoolxError, match=r"create a new one.*a bug in poolx") as info:
            ex.submit(square, 2)
        assert isinstance(info.value.__cause__, SchedulerBug)
    finally:
        ex.shutdown(wait=True)


def test_a_pool_whose_scheduler_died_fails_its_calls():
    with poolx.Pool(1) as pool:
        assert pool.apply_async(square, (3,)).get(timeout=T) == 9
        _kill_scheduler(pool._executor).join(T)
        problems = [
            _failed_naming_the_bug(lambda: pool.apply_async(square, (2,)).get(timeout=T)),
            _failed_naming_the_bug(lambda: pool.apply_async(square, (2,), callback=print).get(timeout=T)),
            _failed_naming_the_bug(lambda: pool.map_async(square, range(5)).get(timeout=T)),
        ]
        assert not [p for p in problems if p], problems


@pytest.mark.parametrize("end", ["dies", "shuts down"])
def test_a_task_handed_over_just_after_the_scheduler_ended_fails_at_once(end):
    # The race of issue 19: submit checked that the scheduler was alive, and
    # appended the task after the scheduler's abort() had drained its queue:
    # Pool.apply_async(...).get() hung in 1 to 5 of 6 tries.  Here the hand-over
    # is held at its last step (try_direct, just before the append) until the
    # scheduler thread has ended, which makes the race happen every time.
    ex = poolx.Executor(1)
    try:
        assert ex.submit(square, 3).result(timeout=T) == 9
        backend = ex._backend
        scheduler = backend._scheduler
        try_direct = scheduler.try_direct

        def end_first(task: Any) -> bool:
            if end == "dies":
                _kill_scheduler(ex)
            else:
                backend.shutdown(wait=False, cancel_futures=False)
            scheduler.join(T)
            assert not scheduler.is_alive()
            return try_direct(task)

        scheduler.try_direct = end_first
        if end == "dies":
            assert _failed_naming_the_bug(lambda: ex.submit(square, 2).result(timeout=T)) is None
        else:  # as the stdlib's submit after shutdown
            with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
                ex.submit(square, 2).result(timeout=T)
    finally:
        ex.shutdown(wait=True)


def test_tasks_submitted_from_many_threads_while_the_scheduler_dies_all_end():
    # The same race left to chance: four threads submit while the scheduler dies.
    # Every future must end (a result, or the PoolxError), none may wait.
    def submitter(ex: poolx.Executor, start: threading.Barrier, futures: list[cf.Future[Any]],
                  refused: list[BaseException]) -> None:
        start.wait(T)
        for i in range(300):
            try:
                futures.append(ex.submit(square, i))
            except poolx.PoolxError as exc:
                refused.append(exc)
                return

    for attempt in range(5):
        ex = poolx.Executor(2)
        futures: list[cf.Future[Any]] = []
        refused: list[BaseException] = []
        start = threading.Barrier(5)
        threads = [threading.Thread(target=submitter, args=(ex, start, futures, refused)) for _ in range(4)]
        try:
            for t in threads:
                t.start()
            start.wait(T)
            time.sleep(0.002 * attempt)
            _kill_scheduler(ex)
            for t in threads:
                t.join(T)
            done, not_done = cf.wait(futures, timeout=T)
            assert not not_done, f"attempt {attempt}: {len(not_done)} of {len(futures)} futures still pending"
            errors = [f.exception() for f in done if f.exception() is not None] + refused
            assert errors, f"attempt {attempt}: the scheduler did not die"
            wrong = [e for e in errors if not (isinstance(e, poolx.PoolxError) and "SchedulerBug" in str(e))]
            assert not wrong, wrong[:3]
        finally:
            ex.shutdown(wait=True)


EXIT_CODES = """
    import multiprocessing, os, signal, sys
    from poolx.backends.processes import _lifetime

    def exit_with(code):
        os._exit(code)

    def kill_parent_then_exit(code):
        os.kill(os.getppid(), signal.SIGKILL)  # (under forkserver, the parent is the forkserver)
        os._exit(code)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context(sys.argv[1])
        cases = [(exit_with, 7), (exit_with, 255)]
        if sys.argv[1] == "forkserver":
            cases.append((kill_parent_then_exit, 7))
        for target, code in cases:
            process = ctx.Process(target=target, args=(code,))
            _lifetime.start_process(process)
            process.join(30)
            print(process.exitcode, _lifetime.exit_code(process), flush=True)
"""


def test_the_exit_code_of_a_child_whose_forkserver_died_is_unknown_not_255(start_method):
    # Issue 19, item 10: a task that killed the forkserver and exited with 7
    # was reported as exiting with 255, multiprocessing's placeholder when the
    # forkserver, which alone can learn the code, dies before reporting it.
    proc = run_script(EXIT_CODES, start_method, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")[:-1]
    assert lines[:2] == ["7 7", "255 255"]  # real codes, 255 included, stay as they are
    if start_method == "forkserver":
        assert lines[2:] == ["255 None"]
    from poolx._errors import describe_exit

    assert "unknown" in describe_exit(None) and "forkserver" in describe_exit(None)


# -- a retiring worker that does not exit ---------------------------------------------------


@pytest.mark.parametrize("cap", ["max_tasks_per_child", "max_memory_per_child"])
def test_a_worker_stuck_on_its_way_out_does_not_hold_its_place(start_method, cap):
    # A task left a non-daemon thread running, so its worker's exit (after its
    # last task, or over its memory cap) waits for that thread.  The worker
    # held its place until it exited: the next tasks waited for ever with one
    # worker.  Now a fresh worker takes them at once, and the stuck one is
    # killed after STOP_TIMEOUT (or at shutdown).
    from _fault_tasks import leave_a_thread_running

    if cap == "max_tasks_per_child" and start_method == "fork":
        pytest.skip("max_tasks_per_child is refused under fork, as by the stdlib")
    option = {"max_tasks_per_child": 1} if cap == "max_tasks_per_child" else {"max_memory_per_child": 1}
    with poolx.Executor(1, mp_context=start_method, **option) as ex:
        assert [ex.submit(leave_a_thread_running, i).result(timeout=30) for i in range(3)] == [0, 1, 2]


PACKAGE_WORK = """
def inc(x):
    return x + 1


class Box:
    def get(self):
        return 5
"""

PACKAGE_MAIN = """
import sys

import poolx

from prog.work import Box, inc

# No __main__ guard: a package's __main__ is never imported again in a child.
with poolx.Executor(2, mp_context=sys.argv[1]) as ex:
    box = ex.actor(Box)
    print(ex.submit(inc, 1).result(timeout=30), box.get.remote().result(timeout=30))
"""


def test_a_program_run_as_python_m_package_is_not_run_again_in_its_children(start_method, tmp_path):
    # The fix for item 9 (a child imports the driver's script itself when spawn
    # did not) imported a package's __main__.py too: `python -m poolx profile`
    # ran its command again in every actor, which exited with code 0.  Spawn
    # imports a script by its path, a module run with -m by its name, and a
    # package's __main__ not at all; poolx now does the same.
    package = tmp_path / "prog"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "work.py").write_text(PACKAGE_WORK)
    (package / "__main__.py").write_text(PACKAGE_MAIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "prog", start_method], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2 5\n", proc.stdout + proc.stderr
