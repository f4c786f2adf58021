"""Whole-program behaviour: Ctrl-C, a killed driver, interpreter exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from _helpers import run_script


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _alive(pids)


def _start(source, *args):
    import tempfile

    f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    f.write(textwrap.dedent(source))
    f.close()
    proc = subprocess.Popen([sys.executable, f.name, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, f.name


WORKERS_THEN_WAIT = """
    import sys, time
    import poolx

    def nap(s):
        time.sleep(s)
        return s

    if __name__ == "__main__":
        ex = poolx.Executor(2, mp_context=sys.argv[1])
        futs = [ex.submit(nap, 60) for _ in range(4)]
        # Both workers up and busy: a fixed 1 s sleep was too short for a loaded machine.
        deadline = time.monotonic() + 60
        while not (futs[0].running() and futs[1].running()) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            print(" ".join(map(str, ex._backend.worker_pids())), flush=True)
            futs[0].result()
        except KeyboardInterrupt:
            ex.__exit__(KeyboardInterrupt, None, None)
            print("interrupted", flush=True)
            raise
"""


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_workers_are_gone_within_2_s_when_the_driver_is_interrupted_or_killed(start_method, how):
    proc, path = _start(WORKERS_THEN_WAIT, start_method)
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, (line, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(proc.pid, signal.SIGINT if how == "sigint" else signal.SIGKILL)
        started = time.monotonic()
        proc.wait(timeout=10)
        assert not _wait_gone(pids, 2.0)
        assert time.monotonic() - started < 3.0
        if how == "sigint":
            assert "interrupted" in proc.stdout.read()
            assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.unlink(path)


UNCAUGHT_CTRL_C = """
    import os, signal, threading, time
    import poolx

    def nap(s):
        time.sleep(s)

    if __name__ == "__main__":
        ex = poolx.Executor(2)
        futs = [ex.submit(nap, 60) for _ in range(10)]
        deadline = time.monotonic() + 60  # both workers up and busy, however slow the machine
        while not (futs[0].running() and futs[1].running()) and time.monotonic() < deadline:
            time.sleep(0.01)
        print(" ".join(map(str, ex._backend.worker_pids())), flush=True)
        futs[0].result()  # Ctrl-C lands here and is not caught
"""


def test_uncaught_ctrl_c_stops_everything_promptly():
    proc, path = _start(UNCAUGHT_CTRL_C)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=5)
        assert "KeyboardInterrupt" in proc.stderr.read()
        assert not _wait_gone(pids, 2.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.unlink(path)


def test_pending_work_completes_at_interpreter_exit():
    # The stdlib's rule ("apple" test): exiting with futures pending runs them.
    proc = run_script("""
        import os
        import time
        import poolx

        def late(word):
            time.sleep(0.3)
            # One write() per line: two workers share this pipe, and print()
            # may split a line into several writes that interleave.
            os.write(1, (word + "\\n").encode())

        if __name__ == "__main__":
            ex = poolx.Executor(2)
            ex.submit(late, "apple")
            ex.submit(late, "pear")
    """)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["apple", "pear"]


def test_shutdown_without_wait_then_exit_lets_short_work_finish(tmp_path):
    # The task has started before shutdown(wait=False), so what is left (0.2 s) is far
    # inside the EXIT_GRACE (5 s) the exit gives it: the outcome does not hang on when
    # a loaded machine gets the worker started.  (Longer work is killed at exit:
    # test_faults.py::test_exit_after_shutdown_without_wait_kills_what_is_left.)
    proc = run_script("""
        import os, sys, time
        import poolx

        def late(path):
            open(path, "w").close()
            time.sleep(0.2)
            print("done", flush=True)

        if __name__ == "__main__":
            path = sys.argv[1]
            ex = poolx.Executor(2)
            ex.submit(late, path)
            deadline = time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            ex.shutdown(wait=False)
    """, str(tmp_path / "started"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["done"]


def test_an_executor_that_is_garbage_collected_stops_its_workers():
    proc = run_script("""
        import gc, time
        import psutil
        import poolx

        def square(x):
            return x * x

        if __name__ == "__main__":
            ex = poolx.Executor(2)
            assert ex.submit(square, 3).result() == 9
            pids = ex._backend.worker_pids()
            del ex
            gc.collect()
            deadline = time.monotonic() + 5
            while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids):
                assert time.monotonic() < deadline, "workers outlived their executor"
                time.sleep(0.05)
            print("ok")
    """, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_a_process_pool_left_running_by_a_task_ends_with_its_worker(start_method):
    # The worker runs the interpreter's exit hooks (concurrent.futures' and
    # loky's shut their pools down there) before multiprocessing joins its
    # children: without that, the worker waited for the inner pool for ever,
    # was killed after STOP_TIMEOUT, and the inner pool's processes were orphaned.
    from _tasks import start_inner_process_pool

    import poolx

    with poolx.Executor(1, mp_context=start_method) as ex:
        inner = ex.submit(start_inner_process_pool).result(timeout=30)
        worker = ex._backend.worker_pids()[0]
    assert inner and not _wait_gone([*inner, worker], 10), "the inner pool outlived the worker"
    assert ex.statistics().workers_died == 0
