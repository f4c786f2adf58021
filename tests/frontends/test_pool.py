"""poolx.Pool and poolx.ThreadPool: the stdlib's semantics (CPython's own tests
run in test_pool_conformance.py) and what poolx adds: a dead worker fails only
its task, per-task timeouts, a memory cap, progress bars, lambdas everywhere."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

import pytest
from _helpers import run_script

import poolx

pytestmark = pytest.mark.timeout(60)


def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def nap(seconds):
    time.sleep(seconds)
    return seconds


def die(_):
    os.kill(os.getpid(), signal.SIGKILL)


_held = []


def pid_after_holding(n):
    """Keep ``n`` more bytes resident in this worker (a leak), return its pid."""
    block = bytearray(n)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page: resident
    _held.append(block)
    return os.getpid()


def raise_value_error(x):
    raise ValueError(x)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def unpicklable_result(_):
    return Unpicklable()


# -- the stdlib's semantics, where poolx's own engine could differ ------------------------


def test_the_basic_api_matches_multiprocessing():
    with poolx.Pool(2) as p:
        assert p.apply(sqr, (5,)) == 25
        assert p.map(sqr, range(10)) == [x * x for x in range(10)]
        assert p.starmap(sqr, [(2, 0.0), (3, 0.0)]) == [4, 9]
        assert list(p.imap(sqr, range(20), chunksize=3)) == [x * x for x in range(20)]
        assert sorted(p.imap_unordered(sqr, range(20))) == [x * x for x in range(20)]
        got = []
        r = p.map_async(sqr, range(4), callback=got.append)
        assert r.get(30) == [0, 1, 4, 9] and r.ready() and r.successful()
        assert got == [[0, 1, 4, 9]]  # the callback ran before the result was ready
        assert "state=RUN pool_size=2" in repr(p)


def test_errors_are_the_stdlibs():
    import multiprocessing.pool as mpp

    with poolx.Pool(2) as p:
        slow = p.apply_async(nap, (5,))
        with pytest.raises(multiprocessing.TimeoutError):
            slow.get(timeout=0.05)
        with pytest.raises(ValueError, match="not ready"):
            slow.successful()
        with pytest.raises(ValueError, match="7") as info:
            p.apply(raise_value_error, (7,))
        assert type(info.value.__cause__) is mpp.RemoteTraceback
        assert "raise ValueError(x)" in str(info.value.__cause__)
        with pytest.raises(mpp.MaybeEncodingError):
            p.apply(unpicklable_result, (1,))
        with pytest.raises(RuntimeError, match="cannot pickle"):  # the pickling error itself
            p.map(sqr, [Unpicklable()] * 3)
        it = p.imap(raise_value_error, range(3))
        for i in range(3):  # imap goes on after a failed item
            with pytest.raises(ValueError, match=str(i)):
                next(it)
        with pytest.raises(StopIteration):
            next(it)
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(sqr, (1,))
    p.join()
    with pytest.raises(ValueError, match="Number of processes must be at least 1"):
        poolx.Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        poolx.Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        poolx.Pool(1, initializer=3)
    with pytest.raises(NotImplementedError, match="cannot be passed between processes or pickled"):
        import pickle

        with poolx.Pool(1) as q:
            pickle.dumps(q)


def test_close_then_join_runs_everything_submitted():
    p = poolx.Pool(2)
    results = [p.apply_async(sqr, (i, 0.01)) for i in range(10)]
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(sqr, (1,))
    p.join()
    assert [r.get(0) for r in results] == [i * i for i in range(10)]
    assert "state=CLOSE" in repr(p)


def test_join_before_close_is_an_error():
    with poolx.Pool(1) as p:
        with pytest.raises(ValueError, match="Pool is still running"):
            p.join()


def test_terminate_fails_pending_results_instead_of_hanging():
    p = poolx.Pool(1)
    pending = [p.apply_async(nap, (5,)) for _ in range(3)]
    time.sleep(0.3)
    started = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - started < 5
    for r in pending:
        assert r.ready() and not r.successful()


def test_a_raising_callback_is_reported_and_the_pool_goes_on(capfd):
    def bad_callback(_):
        raise RuntimeError("callback broke")

    with poolx.Pool(1) as p:
        r = p.apply_async(sqr, (3,), callback=bad_callback)
        assert r.get(30) == 9
        assert p.apply(sqr, (4,)) == 16
    assert "callback broke" in capfd.readouterr().err


def test_thread_pool():
    with poolx.ThreadPool(3) as p:
        assert p.map(sqr, range(6)) == [0, 1, 4, 9, 16, 25]
        assert p.apply(lambda: 42) == 42
        assert "ThreadPool state=RUN pool_size=3" in repr(p)


# -- what poolx adds ------------------------------------------------------------------------


def test_a_killed_worker_fails_only_its_task():
    with poolx.Pool(2) as p:
        others = [p.apply_async(sqr, (i, 0.05)) for i in range(6)]
        killed = p.apply_async(die, (0,))
        with pytest.raises(poolx.WorkerDiedError, match="SIGKILL"):
            killed.get(30)
        assert [r.get(30) for r in others] == [i * i for i in range(6)]
        assert p.map(sqr, range(5)) == [0, 1, 4, 9, 16]  # the pool still serves


def test_a_task_over_its_timeout_is_stopped_and_the_rest_go_on():
    with poolx.Pool(2, task_timeout=0.5) as p:
        slow = p.apply_async(nap, (30,))
        quick = [p.apply_async(nap, (0.05,)) for _ in range(4)]
        with pytest.raises(poolx.TaskTimeoutError, match=r"task_timeout=0\.5") as info:
            slow.get(20)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, multiprocessing.TimeoutError)
        assert [r.get(20) for r in quick] == [0.05] * 4
        assert p.map(sqr, range(4)) == [0, 1, 4, 9]
        assert p._executor.statistics().workers_died == 0  # stopped on purpose, not died
    with pytest.raises(ValueError, match="task_timeout"):
        poolx.Pool(1, task_timeout=0)


def test_a_worker_over_its_memory_cap_is_replaced_without_losing_tasks():
    with poolx.Pool(1, max_memory_per_child="60MB") as p:
        pids = [p.apply(pid_after_holding, (100_000_000,)) for _ in range(3)]
        assert len(set(pids)) == 3  # each worker retired after going over 60 MB
        many = p.map_async(pid_after_holding, [100_000_000] * 6, chunksize=1)
        assert len(set(many.get(60))) == 6  # tasks sent to a retiring worker ran elsewhere
        small = p.map(sqr, range(50), chunksize=1)
        assert small == [x * x for x in range(50)]
    with pytest.raises(ValueError, match="max_memory_per_child"):
        poolx.Pool(1, max_memory_per_child="lots")


def test_maxtasksperchild_recycles_workers_without_losing_tasks():
    with poolx.Pool(2, maxtasksperchild=2) as p:
        pids = p.map(pid_after_holding, [1] * 12, chunksize=1)
        assert len(pids) == 12 and len(set(pids)) >= 6


@pytest.mark.parametrize("method", multiprocessing.get_all_start_methods())
def test_lambdas_and_main_functions_work_under_every_start_method(method):
    proc = run_script(f"""
        import poolx

        def triple(x):
            return 3 * x

        if __name__ == "__main__":
            offset = 10
            with poolx.Pool(2, context=__import__("multiprocessing").get_context({method!r})) as p:
                print(p.map(triple, range(4)), p.map(lambda x: x + offset, range(3)))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 3, 6, 9] [10, 11, 12]"


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bar_in_a_real_terminal():
    import pty
    import subprocess

    pytest.importorskip("tqdm")
    script = (
        "import poolx, time\n"
        "def work(x):\n"
        "    time.sleep(0.01)\n"
        "    return x\n"
        "if __name__ == '__main__':\n"
        "    with poolx.Pool(2) as p:\n"
        "        assert sum(p.imap(work, range(40), progress=True)) == 780\n"
        "        assert p.map(work, range(30), progress=True) == list(range(30))\n"
    )
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=follower, stdout=follower, stderr=follower,
                            close_fds=True)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(60) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "work: 100%" in text and "40/40" in text and "30/30" in text
    assert "\r" in text  # redrawn in place, as on a terminal
