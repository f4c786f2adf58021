"""The processes engine: pickling, batching, crashes, start methods."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time

import pytest
from _helpers import run_script
from _tasks import (
    FailsToUnpickle,
    ReduceRaisesInDriver,
    add,
    array_roundtrip,
    getpid,
    mark_worker,
    noop,
    raise_unpicklable_error,
    raise_value_error,
    record_init,
    return_fails_to_unpickle,
    return_lock,
    sleep_and_return,
    square,
)

import poolx
from poolx import (
    DeserializationError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    WorkerDiedError,
)


@pytest.fixture
def pex(start_method):
    with poolx.Executor(2, mp_context=start_method) as ex:
        yield ex


# -- pickling: what crosses, how ------------------------------------------------


def test_lambdas_and_closures_work_under_every_start_method(pex):
    base = 10
    assert pex.submit(lambda x: x + base, 5).result(timeout=30) == 15

    def make_adder(n):
        return lambda x: x + n

    assert list(pex.map(make_adder(3), range(4))) == [3, 4, 5, 6]


MAIN_SCRIPT = """
    import sys
    import poolx

    SCALE = 3

    class Point:
        def __init__(self, x):
            self.x = x

    def scaled(p):
        return p.x * SCALE

    if __name__ == "__main__":
        with poolx.Executor(2, mp_context=sys.argv[1]) as ex:
            print(sum(ex.map(scaled, [Point(i) for i in range(10)])))
            print(ex.submit(lambda: SCALE + 1).result(timeout=30))
"""


def test_functions_and_classes_defined_in_main_work_under_every_start_method(start_method):
    proc = run_script(MAIN_SCRIPT, start_method)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["135", "4"]


UNPICKLE_COUNT_SCRIPT = """
    import os
    import sys
    import poolx

    class Marker:
        # Unpickling a Marker prints one line from the worker that does it.
        def __reduce__(self):
            return (Marker._rebuild, ())

        @staticmethod
        def _rebuild():
            print("unpickled", flush=True)
            return Marker()

    def make():
        marker = Marker()
        return lambda x: (marker, x)[1]

    if __name__ == "__main__":
        fn = make()
        with poolx.Executor(2, mp_context=sys.argv[1]) as ex:
            assert list(ex.map(fn, range(200), chunksize=1)) == list(range(200))
            assert [ex.submit(fn, i).result() for i in range(50)] == list(range(50))
"""


def test_a_function_is_unpickled_once_per_worker_not_per_task(start_method):
    proc = run_script(UNPICKLE_COUNT_SCRIPT, start_method)
    assert proc.returncode == 0, proc.stderr
    # 200 map() chunks and 50 submits on 2 workers: fn is unpickled at most
    # once per worker for map() (its chunk runner) and once per worker for submit().
    assert 1 <= proc.stdout.count("unpickled") <= 4, proc.stdout


def test_unpicklable_argument_fails_its_future_naming_it():
    with poolx.Executor(1) as ex:
        with pytest.raises(SerializationError) as info:
            ex.submit(add, 1, threading.Lock()).result(timeout=30)
        message = str(info.value)
        assert "argument 1" in message and "lock" in message.lower() and "add" in message
        assert isinstance(info.value, pickle.PicklingError)
        with pytest.raises(SerializationError, match="keyword argument 'b'"):
            ex.submit(add, 1, b=threading.Lock()).result(timeout=30)
        assert ex.submit(add, 1, 2).result(timeout=30) == 3


def test_unpicklable_result_fails_only_that_task():
    with poolx.Executor(1) as ex:
        with pytest.raises(SerializationError, match="could not be pickled"):
            ex.submit(return_lock).result(timeout=30)
        assert ex.submit(square, 3).result(timeout=30) == 9


def test_task_that_cannot_be_unpickled_in_the_worker_fails_only_itself():
    with poolx.Executor(1) as ex:
        with pytest.raises(DeserializationError, match="could not unpickle") as info:
            ex.submit(add, FailsToUnpickle(), 1).result(timeout=30)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "cannot rebuild FailsToUnpickle" in info.value.__cause__.tb
        assert ex.submit(square, 3).result(timeout=30) == 9


def test_result_that_cannot_be_unpickled_in_the_driver_fails_only_itself():
    with poolx.Executor(1) as ex:
        with pytest.raises(DeserializationError, match="could not be unpickled in the driver"):
            ex.submit(return_fails_to_unpickle).result(timeout=30)
        assert ex.submit(square, 3).result(timeout=30) == 9
    with poolx.Executor(1, initializer=mark_worker) as ex, pytest.raises(DeserializationError):
        ex.submit(ReduceRaisesInDriver).result(timeout=30)


def test_remote_exception_keeps_its_type_and_carries_the_worker_traceback():
    with poolx.Executor(1) as ex:
        with pytest.raises(ValueError, match="boom") as info:
            ex.submit(raise_value_error, "boom").result(timeout=30)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise_value_error" in cause.tb and 'raise ValueError(message)' in cause.tb


def test_exception_that_cannot_be_pickled_comes_back_as_remote_error():
    with poolx.Executor(1) as ex:
        with pytest.raises(RemoteError) as info:
            ex.submit(raise_unpicklable_error).result(timeout=30)
        err = info.value
        assert err.type_name.endswith("UnpicklableError")
        assert err.message == "holds a lock"
        assert "raise_unpicklable_error" in err.tb


def test_large_arrays_cross_out_of_band_and_come_back_intact(pex):
    np = pytest.importorskip("numpy")
    arr = np.arange(4_000_000, dtype=np.float64)  # 32 MB
    out = pex.submit(array_roundtrip, arr).result(timeout=60)
    assert out.flags.writeable
    np.testing.assert_array_equal(out, arr * 2)
    stats = pex.statistics()
    assert stats.bytes_sent >= arr.nbytes and stats.bytes_received >= arr.nbytes


# -- batching and throughput ----------------------------------------------------------


def test_tiny_tasks_travel_many_per_message():
    with poolx.Executor(2) as ex:
        futs = [ex.submit(noop) for _ in range(5000)]
        cf.wait(futs, timeout=60)
        time.sleep(0.05)
        stats = ex.statistics()
    assert stats.tasks_completed == 5000
    assert stats.messages_sent < 5000 / 4, stats
    assert stats.messages_received < 5000 / 4, stats


def test_map_of_tiny_items_is_chunked_automatically():
    with poolx.Executor(2) as ex:
        assert sum(ex.map(square, range(100_000))) == sum(i * i for i in range(100_000))
        stats = ex.statistics()
    assert stats.tasks_submitted < 1000, stats


def test_a_slow_task_does_not_hold_back_results_of_faster_ones():
    # One worker, a batch: fast tasks before a slow one must come back while it runs.
    with poolx.Executor(1) as ex:
        for _ in range(200):  # teach the scheduler that tasks are tiny (large window)
            ex.submit(noop)
        fast = [ex.submit(square, i) for i in range(5)]
        slow = ex.submit(sleep_and_return, 2.0)
        done, _ = cf.wait(fast, timeout=1.5)
        assert len(done) == 5
        assert not slow.done()
        slow.result(timeout=30)


# -- crashes (the fault matrix itself, on every start method, is tests/engine/test_faults.py) -----


def test_a_worker_killed_from_outside_fails_its_task_naming_the_oom_killer():
    with poolx.Executor(1) as ex:
        fut = ex.submit(sleep_and_return, 30)
        time.sleep(0.5)
        (pid,) = ex._backend.worker_pids()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerDiedError, match="out-of-memory killer"):
            fut.result(timeout=30)
        assert ex.submit(square, 2).result(timeout=30) == 4


def test_workers_ignore_sigint():
    with poolx.Executor(2) as ex:
        futs = [ex.submit(sleep_and_return, 0.5, i) for i in range(2)]
        time.sleep(0.2)
        for pid in ex._backend.worker_pids():
            os.kill(pid, signal.SIGINT)
        assert [f.result(timeout=30) for f in futs] == [0, 1]


def test_initializer_runs_once_in_each_worker(tmp_path):
    path = tmp_path / "inits"
    with poolx.Executor(2, initializer=record_init, initargs=(str(path),)) as ex:
        pids = set(ex.map(getpid, range(200)))
    inits = {int(pid) for pid in path.read_text().split()}
    assert len(path.read_text().split()) == len(inits) <= 2  # once per worker started
    assert pids <= inits


def test_max_tasks_per_child_replaces_workers():
    with poolx.Executor(1, max_tasks_per_child=3) as ex:
        pids = [ex.submit(getpid).result(timeout=30) for _ in range(9)]
    assert len(set(pids)) == 3
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [3, 3, 3]


def test_max_tasks_per_child_refuses_fork():
    with pytest.raises(ValueError, match="fork"):
        poolx.Executor(1, mp_context="fork", max_tasks_per_child=2)


# -- start methods and sizing --------------------------------------------------------------


def test_default_start_method_is_forkserver_on_linux():
    with poolx.Executor(1) as ex:
        method = ex._backend.context.get_start_method()
    expected = "forkserver" if sys.platform.startswith("linux") else "spawn"
    assert method == expected


def test_any_context_or_start_method_name_is_accepted(start_method):
    ctx = multiprocessing.get_context(start_method)
    for mp_context in (ctx, start_method):
        with poolx.Executor(1, mp_context=mp_context) as ex:
            assert ex.submit(square, 3).result(timeout=30) == 9
            assert ex._backend.context.get_start_method() == start_method


def test_default_max_workers_is_the_usable_cpu_count():
    import loky

    with poolx.Executor() as ex:
        assert ex.max_workers == loky.cpu_count()


def test_workers_start_on_demand():
    with poolx.Executor(4) as ex:
        ex.submit(square, 1).result(timeout=30)
        assert ex.statistics().workers_started == 1


# -- forced shutdown ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_running_and_cancel_pending(method):
    ex = poolx.Executor(1)
    running = ex.submit(sleep_and_return, 30)
    time.sleep(0.5)
    pending = [ex.submit(square, i) for i in range(5)]
    started = time.monotonic()
    getattr(ex, method)()
    with pytest.raises(cf.process.BrokenProcessPool):
        running.result(timeout=10)
    assert time.monotonic() - started < 5
    assert all(f.cancelled() for f in pending)
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    ex.shutdown(wait=True)


def test_a_future_passed_as_an_argument_is_replaced_by_its_result():
    with poolx.Executor(1) as ex:
        fut = ex.submit(square, 2)
        assert ex.submit(square, fut).result(timeout=30) == 16


def test_the_driver_lets_go_of_arguments_once_they_are_pickled():
    import gc
    import weakref

    np = pytest.importorskip("numpy")
    with poolx.Executor(1) as ex:
        arr = np.ones(1_000_000)
        ref = weakref.ref(arr)
        fut = ex.submit(array_roundtrip, arr)
        fut.result(timeout=30)
        del arr
        gc.collect()
        assert ref() is None


INITIALIZER_GLOBALS_SCRIPT = """
    import multiprocessing
    import sys
    import poolx

    QUEUE = None
    GREETING = "unset"

    def setup(queue, greeting):
        global QUEUE, GREETING
        QUEUE, GREETING = queue, greeting

    def work(x):
        QUEUE.put(x)
        return f"{GREETING} {x}"

    if __name__ == "__main__":
        method = sys.argv[1]
        queue = multiprocessing.get_context(method).Queue()
        with poolx.Executor(2, mp_context=method, initializer=setup, initargs=(queue, "hi")) as ex:
            print(sorted(ex.map(work, range(4))))
            print(sorted(queue.get(timeout=10) for _ in range(4)))
"""


def test_an_initializer_sets_globals_the_tasks_read_with_a_queue_in_initargs(start_method):
    # The stdlib pattern: top-level functions of the script share the workers'
    # module globals, and a multiprocessing.Queue may travel in initargs.
    proc = run_script(INITIALIZER_GLOBALS_SCRIPT, start_method)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['hi 0', 'hi 1', 'hi 2', 'hi 3']", "[0, 1, 2, 3]"]


def test_map_does_not_keep_results_the_caller_dropped():
    import gc
    import weakref

    with poolx.Executor(2) as ex:
        for obj in ex.map(_tasks_make_object, range(10)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None


class _Dummy:
    pass


def _tasks_make_object(_):
    return _Dummy()


def test_unpickling_failures_are_broken_process_pool_errors_too():
    with poolx.Executor(1) as ex:
        with pytest.raises(cf.process.BrokenProcessPool):
            ex.submit(add, FailsToUnpickle(), 1).result(timeout=30)
        assert ex.submit(square, 3).result(timeout=30) == 9  # but nothing is broken


class _ExitOnPickle:
    def __reduce__(self):
        raise SystemExit(5)


def _return_exit_on_pickle():
    return _ExitOnPickle()


def test_system_exit_while_pickling_a_result_comes_back_as_itself():
    with poolx.Executor(1) as ex:
        with pytest.raises(SystemExit):
            ex.submit(_return_exit_on_pickle).result(timeout=30)
        assert ex.submit(square, 3).result(timeout=30) == 9


CRASH_WHILE_PICKLING_RESULT = """
    import sys
    import poolx

    class CrashAtPickle:
        def __reduce__(self):
            import ctypes
            ctypes.string_at(0)

    def task(path):
        with open(path, "a") as f:
            f.write("ran\\n")
        return CrashAtPickle()

    if __name__ == "__main__":
        with poolx.Executor(2, mp_context=sys.argv[1]) as ex:
            try:
                ex.submit(task, sys.argv[2]).result(timeout=30)
            except poolx.WorkerDiedError as exc:
                print("WorkerDiedError", "SIGSEGV" in str(exc))
"""


def test_a_crash_while_pickling_the_result_blames_that_task_and_runs_it_once(start_method, tmp_path):
    runs = tmp_path / "runs"
    proc = run_script(CRASH_WHILE_PICKLING_RESULT, start_method, str(runs))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["WorkerDiedError", "True"]
    assert runs.read_text().split() == ["ran"]


WORKERS_CANNOT_START = """
    import os
    import sys
    import poolx

    # Every worker dies in its initializer (workers no longer import the script,
    # so a failing import of it cannot serve here).
    with poolx.Executor(2, mp_context=sys.argv[1], initializer=os._exit, initargs=(3,)) as ex:
        fut = ex.submit(abs, -1)
    try:
        fut.result(timeout=30)
    except poolx.InitializerError as exc:
        print("broken:", "died while starting" in str(exc))
    print("started", ex.statistics().workers_started)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_that_die_while_starting_break_the_executor_even_during_shutdown(method):
    proc = run_script(WORKERS_CANNOT_START, method, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "broken: True"
    assert int(lines[1].split()[1]) <= 3 + 1  # MAX_START_FAILURES, not an endless respawn


def test_the_start_method_set_for_the_program_is_honoured():
    proc = run_script("""
        import multiprocessing
        import poolx

        if __name__ == "__main__":
            multiprocessing.set_start_method("spawn")
            with poolx.Executor(1) as ex:
                print(ex._backend.context.get_start_method(), ex.submit(abs, -2).result())
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["spawn", "2"]


def _make_raiser():
    def raiser(x):
        raise RuntimeError(x)  # the source line the traceback must show
    return raiser


@pytest.mark.timeout(60)
def test_a_closures_remote_traceback_shows_its_source_line():
    # cloudpickle >= 3.1.3 renames code sent by value to "<dynamic-code>";
    # poolx keeps the real file name so the worker's traceback has the source.
    with poolx.Executor(1) as ex:
        with pytest.raises(RuntimeError) as info:
            ex.submit(_make_raiser(), 7).result(timeout=30)
    assert "the source line the traceback must show" in str(info.value.__cause__)


def test_initargs_with_a_large_array_reach_the_workers(start_method):
    # The setup message is unpickled by the worker's boot, where no out-of-band
    # buffer travels with it: a 800 kB array in initargs failed with "not enough
    # out-of-band buffers" before the setup was pickled in band.
    np = pytest.importorskip("numpy")
    with poolx.Executor(1, mp_context=start_method, initializer=np.asarray,
                        initargs=(np.ones(100_000),)) as ex:
        assert ex.submit(abs, -1).result(timeout=60) == 1
