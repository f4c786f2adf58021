"""Whole-program behaviour: Ctrl-C, a killed driver, interpreter exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from _helpers import run_script

import poolx


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


GIL_HELD_IN_C = """
    import ctypes, os, sys
    import poolx

    def hold_the_gil(seconds):
        os.write(1, b"in C\\n")
        ctypes.PyDLL(None).sleep(seconds)  # PyDLL keeps the GIL through the call (CDLL releases it)

    class Stuck:
        def hold_the_gil(self, seconds):
            hold_the_gil(seconds)

    if __name__ == "__main__":
        ex = poolx.Executor(1, mp_context=sys.argv[1])
        fut = ex.submit(hold_the_gil, 60)
        call = ex.actor(Stuck).hold_the_gil.remote(60)
        fut.result()
"""


def _pymp_folders(tmpdir):
    return sorted(name for name in os.listdir(tmpdir) if name.startswith("pymp-"))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_child_outlives_a_killed_driver_even_in_a_c_call_that_holds_the_gil(start_method, sig, tmp_path):
    # The workers' watchdog thread needs the GIL: a task in such a call kept its
    # worker, the forkserver and the resource tracker alive for the call's
    # length (issue 19, item 8).  And the forkserver's socket folder was left.
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    f = tmp_path / "driver.py"
    f.write_text(textwrap.dedent(GIL_HELD_IN_C))
    proc = subprocess.Popen([sys.executable, str(f), start_method], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # the task and the actor are in C
        assert lines == ["in C\n"] * 2, (lines, proc.stderr.read() if proc.poll() is not None else "")
        children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(children) >= 2  # the worker and the actor (and the forkserver, the resource tracker)
        os.kill(proc.pid, sig)  # (no exit handler runs: the default action of both)
        proc.wait(timeout=10)
        assert not _wait_gone(children, 5.0), "children outlived the driver"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    # What is left is poolx's own folder, which the next run that starts a forkserver removes.
    left = _pymp_folders(tmpdir)
    assert len(left) <= 1 and all(name.startswith("pymp-poolx-") for name in left), left
    next_run = run_script("""
        import poolx

        if __name__ == "__main__":
            with poolx.Executor(1, mp_context="forkserver") as ex:
                assert ex.submit(abs, -1).result() == 1
    """, env=env, timeout=60)
    assert next_run.returncode == 0, next_run.stderr
    assert _pymp_folders(tmpdir) == []


def test_the_temp_folder_sweep_takes_only_folders_whose_driver_has_ended(tmp_path):
    from poolx.backends.processes import _lifetime

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from multiprocessing import util
        from poolx.backends.processes import _lifetime
        _lifetime.own_temp_dir()
        print(util.get_temp_dir(), flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        live = proc.stdout.readline().strip()
        assert os.path.basename(live).startswith(_lifetime.TEMP_PREFIX), live
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (tmpdir / (_lifetime.TEMP_PREFIX + "link")).symlink_to(elsewhere)
        assert _lifetime.sweep_temp_dirs(str(tmpdir)) == []  # its driver lives; a link is never followed
        assert os.path.isdir(live) and elsewhere.is_dir()
        os.kill(proc.pid, signal.SIGKILL)  # (no exit handler runs)
        proc.wait(timeout=10)
        assert _lifetime.sweep_temp_dirs(str(tmpdir)) == [live]
        assert not os.path.exists(live) and elsewhere.is_dir()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


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


def test_a_child_started_from_a_thread_that_has_ended_lives_on(start_method):
    # Children die with their parent (PR_SET_PDEATHSIG), and to the kernel the
    # parent is the thread that started them: an actor created from a short
    # thread must not die when that thread ends.
    from _actor_classes import Counter

    import poolx

    with poolx.Executor(1, mp_context=start_method) as ex:
        box = []

        def make():  # (the thread ends once the actor runs)
            counter = ex.actor(Counter, 5)
            box.append(counter.increment.remote().result(timeout=30))
            box.append(counter)

        maker = threading.Thread(target=make)
        maker.start()
        maker.join()
        assert box[0] == 6
        time.sleep(0.5)  # (a killed actor would be known dead by now: not needed to pass)
        assert box[1].increment.remote().result(timeout=30) == 7
        assert ex.statistics().actors_died == 0


def _executors_here() -> int:
    from poolx import _executor

    return len(_executor._live)


@pytest.mark.timeout(60)
def test_a_forked_worker_does_not_shut_down_its_parents_executors():
    # A forked worker inherits the driver's registry of live executors and the
    # exit hook that shuts them down: at its exit it shut down its copy of the
    # executor it serves, and blocked on a lock a driver thread held at the
    # fork (then the driver killed it after STOP_TIMEOUT).  It starts with none.
    with poolx.Executor(1, mp_context="fork") as ex:
        assert ex.submit(_executors_here).result(timeout=30) == 0
