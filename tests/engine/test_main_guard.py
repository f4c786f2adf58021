"""Scripts without ``if __name__ == "__main__":`` run, their top level once (issue 21, item 1).

On Linux up to Python 3.13 a script that creates ``ProcessPoolExecutor(2)``,
``multiprocessing.Pool(2)`` or ``joblib.Parallel(n_jobs=2)`` at its top level
runs: fork copies the script, and loky sends functions by value.  poolx's
children (forkserver, its default, and spawn) ran the script again, each
creating an executor of its own, until poolx gave up with InitializerError.
They now never run it: the script's functions travel by value and share one
namespace in each worker (poolx._serialization), so an initializer's globals
are still seen by the tasks.  Spawn, where the stdlib requires the guard,
runs such a script too.

Each program runs in a fresh interpreter, as a user runs it; its top level
appends a line to a file, which must hold exactly one line at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(300)

TOP = """
    import sys
    with open(sys.argv[2], "a") as f:
        f.write("ran\\n")  # the top level, once per run of the script

    def square(x):
        return x * x
"""

FRONT_ENDS = {
    "executor": """
        import poolx
        with poolx.Executor(2, mp_context=sys.argv[1]) as ex:
            print(list(ex.map(square, range(5))), ex.submit(square, 5).result())
    """,
    "pool": """
        import poolx
        with poolx.Pool(2, context=__import__("multiprocessing").get_context(sys.argv[1])) as pool:
            print(pool.map(square, range(5)), pool.apply(square, (5,)))
    """,
    "joblib": """
        import joblib
        import poolx.joblib
        with joblib.parallel_backend("poolx", mp_context=sys.argv[1]):
            print(joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(5)),
                  joblib.Parallel(n_jobs=2)([joblib.delayed(square)(5)])[0])
    """,
    "ray": """
        import poolx as ray
        ray.init(2, mp_context=sys.argv[1])
        remote_square = ray.remote(square)
        print(ray.get([remote_square.remote(i) for i in range(5)]), ray.get(remote_square.remote(5)))
        ray.shutdown()
    """,
}


def run(source: str, tmp_path, *args: str, stdin: str | None = None,
        timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``source`` as a script (or with ``args`` as given); returns the process and the runs counted."""
    runs = tmp_path / "runs.txt"
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(source))
    command = [sys.executable, str(script), *args] if stdin is None else [sys.executable, *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          input=stdin, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return proc, len(runs.read_text().splitlines()) if runs.exists() else 0


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_an_unguarded_script_runs_and_its_top_level_runs_once(front_end, start_method, tmp_path):
    if front_end == "joblib":
        pytest.importorskip("joblib")
    source = textwrap.dedent(TOP) + textwrap.dedent(FRONT_ENDS[front_end])
    proc, runs = run(source, tmp_path, start_method, str(tmp_path / "runs.txt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "[0, 1, 4, 9, 16] 25\n", proc.stderr[-3000:]
    assert runs == 1, proc.stderr[-3000:]


UNGUARDED_ACTOR = """
    import functools, sys
    import poolx
    with open(sys.argv[2], "a") as f:
        f.write("ran\\n")

    SCALE = None  # set in each worker by the initializer

    def set_scale(value):
        global SCALE
        SCALE = value

    def scaled(x):
        return x * SCALE

    @functools.lru_cache(maxsize=None)
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    class Point:
        def __init__(self, x):
            self.x = x

        def norm(self):
            return abs(self.x)

    class Total:
        def __init__(self, start):
            self.total = start

        def add(self, point):
            self.total += point.norm()
            return self.total

    ex = poolx.Executor(2, mp_context=sys.argv[1], initializer=set_scale, initargs=(10,))
    total = ex.actor(Total, 1)
    print(ex.submit(scaled, 4).result(), list(ex.map(scaled, [1, 2])), ex.submit(fib, 50).result())
    print(total.add.remote(Point(-2)).result(), total.add.remote(Point(3)).result())
    print(ex.submit(lambda p: p.norm(), Point(-7)).result(), ex.submit(Point, -8).result().norm())
    ex.shutdown()
"""


def test_an_unguarded_script_with_an_actor_of_its_own_class(start_method, tmp_path):
    # The script's classes go by value to the actor and to the tasks (and
    # back), the globals an initializer sets are the tasks', a recursive
    # lru_cache function of the script works.
    proc, runs = run(UNGUARDED_ACTOR, tmp_path, start_method, str(tmp_path / "runs.txt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["40 [10, 20] 12586269025", "3 6", "7 8"], proc.stderr[-3000:]
    assert runs == 1, proc.stderr[-3000:]


GUARDED = """
    import sys
    import poolx

    COUNT = 0

    def init(start):
        global COUNT
        COUNT = start

    def bump(_):
        global COUNT
        COUNT += 1
        return COUNT

    class Box:
        def __init__(self, value):
            self.value = value

    def unbox(box):
        return box.value * 2

    if __name__ == "__main__":
        with open(sys.argv[2], "a") as f:
            f.write("ran\\n")
        with poolx.Executor(1, mp_context=sys.argv[1], initializer=init, initargs=(100,)) as ex:
            print([ex.submit(bump, i).result() for i in range(3)], ex.submit(unbox, Box(21)).result())
"""


def test_a_guarded_script_still_runs_with_globals_shared_by_the_initializer_and_tasks(start_method,
                                                                                     tmp_path):
    # One worker: the initializer's value, then each task's increment, are
    # seen by the next task, as in the stdlib's worker (one module per process).
    proc, runs = run(GUARDED, tmp_path, start_method, str(tmp_path / "runs.txt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "[101, 102, 103] 42\n", proc.stderr[-3000:]
    assert runs == 1


INTERACTIVE = """
import poolx
def square(x):
    return x * x

ex = poolx.Executor(2)
print(list(ex.map(square, range(5))), ex.submit(lambda: 7).result())
ex.shutdown()

"""


@pytest.mark.parametrize("how", ["-c", "stdin", "-i"])
def test_the_interactive_interpreter_keeps_working(how, tmp_path):
    # python -c and python -i have no script to run again; a program piped
    # into python (``__file__`` is "<stdin>") failed: each child tried to run
    # a file named "<stdin>".
    if how == "-c":
        proc, _ = run("", tmp_path, "-c", INTERACTIVE, stdin="")
    else:
        proc, _ = run("", tmp_path, *(["-i"] if how == "-i" else ["-"]), stdin=INTERACTIVE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.replace(">>> ", "").replace("... ", "").strip() == "[0, 1, 4, 9, 16] 7", proc.stderr


def test_a_function_sent_by_value_keeps_a_large_buffer_it_reads(start_method):
    # The script's functions now travel by value, with the globals they read:
    # a numpy array of 64 KiB or more went out of band and was dropped from
    # the function's pickle, which the worker loads alone ("not enough
    # out-of-band buffers").  A closure shows it in-process.
    np = pytest.importorskip("numpy")
    import poolx

    data = np.arange(32 * 1024, dtype=np.int64)  # 256 KiB

    def checksum(offset):
        return int(data[offset:offset + 4].sum())

    with poolx.Executor(1, mp_context=start_method) as ex:
        assert ex.submit(checksum, 1).result(timeout=60) == 10


UNPICKLABLE_GLOBAL = """
    import sys, threading
    import poolx

    LOCK = threading.Lock()

    def locked(x):
        with LOCK:
            return x

    if __name__ == "__main__":
        with poolx.Executor(1, mp_context=sys.argv[1]) as ex:
            try:
                print(ex.submit(locked, 1).result())
            except poolx.SerializationError as exc:
                print(exc)
"""


def test_a_script_global_that_cannot_be_pickled_is_named_with_the_fix(start_method, tmp_path):
    # Forked workers find the function in their copy of the script; others get
    # it by value, with the globals it reads: the error names the global.
    proc, _ = run(UNPICKLABLE_GLOBAL, tmp_path, start_method, str(tmp_path / "runs.txt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    if start_method == "fork":
        assert proc.stdout == "1\n"
    else:
        assert "it reads the global 'LOCK' (_thread.lock) of your script" in proc.stdout
        assert "create the object in an initializer or in the task, or pass mp_context='fork'" in proc.stdout


SCRIPT_CLASSES_BACK = """
    import sys
    import poolx

    class Refused(Exception):
        pass

    class Point:
        def __init__(self, x):
            self.x = x

    def refuse(x):
        raise Refused(x)

    def make(x):
        return Point(x)

    if __name__ == "__main__":
        with poolx.Executor(1, mp_context=sys.argv[1]) as ex:
            try:
                ex.submit(refuse, 1).result(timeout=60)
            except Refused:
                print("caught")
            print(type(ex.submit(make, 2).result(timeout=60)) is Point)
"""


def test_a_script_class_that_comes_back_from_a_worker_is_the_scripts_own(start_method, tmp_path):
    # Under fork (ProcessPoolExecutor's default up to 3.13, and Pool's), a
    # forked worker sent the script's classes by value, and the driver, which
    # had never pickled them, made new classes: ``except Refused`` missed the
    # task's exception.  A forked worker now sends them by name.
    proc, _ = run(SCRIPT_CLASSES_BACK, tmp_path, start_method, str(tmp_path / "runs.txt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["caught", "True"], proc.stderr[-3000:]
