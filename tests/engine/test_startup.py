"""Start-up: poolx's own forkserver, a zygote forked from the driver (issue 23, item 3).

Under the default start method (forkserver on Linux) the first worker waited
for the stdlib forkserver, a fresh interpreter that imports poolx's worker.
A small, single-threaded driver now forks poolx's forkserver from itself at
its first executor (``_zygote``), and every later executor of the program
reuses it.  These tests run each program in a fresh interpreter, as a user
runs it (the test process itself has threads, so it never gets a zygote):
the workers' parent is that zygote, for the first executor and the next;
the workers inherit none of the driver's fds, threads or script; the zygote
dies with a driver killed by SIGKILL; a driver too big, or holding a foreign
extension module, gets the stdlib forkserver; the program's own
multiprocessing forkserver pools are never served by the zygote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the zygote is Linux's")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What a worker reports: its parent's pid and command line, its fds' targets, its threads.
PRELUDE = """
    import json, os, sys, threading
    import poolx

    def facts(_=None):
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent_cmd = f.read().replace(b"\\0", b" ").decode().strip()
        fds = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                fds[name] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                pass
        return {"pid": os.getpid(), "ppid": os.getppid(), "parent_cmd": parent_cmd, "fds": fds,
                "threads": sorted(t.name for t in threading.enumerate())}

    def my_cmd():
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().replace(b"\\0", b" ").decode().strip()
"""


def run(body: str, timeout: float = 120, env: dict[str, str] | None = None) -> dict:
    """Run PRELUDE + body as a script in a fresh interpreter; its last stdout line is JSON."""
    script = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    environ = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout, env=environ, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_first_and_next_executor_fork_from_one_zygote_forked_from_the_driver():
    out = run("""
        first = poolx.Executor(max_workers=1)
        a = first.submit(facts).result()
        method = first._backend.context.get_start_method()
        first.shutdown()
        nxt = poolx.Executor(max_workers=1)
        b = nxt.submit(facts).result()
        nxt.shutdown()
        print(json.dumps({"a": a, "b": b, "method": method, "driver": os.getpid(), "cmd": my_cmd()}))
    """)
    a, b = out["a"], out["b"]
    assert out["method"] == "forkserver"  # (what the user sees is unchanged)
    assert a["ppid"] == b["ppid"] != out["driver"]  # one server, reused by the next executor
    # That server is a copy of the driver, not the stdlib forkserver's fresh interpreter.
    assert a["parent_cmd"] == out["cmd"], a["parent_cmd"]
    assert "multiprocessing.forkserver" not in a["parent_cmd"]


def test_workers_inherit_no_fd_thread_or_script_of_the_driver():
    out = run("""
        print("the script's top level ran", file=sys.stderr)  # (once: the workers never run it)
        r, w = os.pipe()
        ex = poolx.Executor(max_workers=1)
        first = ex.submit(facts).result()
        stop = threading.Event()
        user = threading.Thread(target=stop.wait, name="user-thread")  # started after the zygote
        user.start()
        ex2 = poolx.Executor(max_workers=1)
        second = ex2.submit(facts).result()
        ex.shutdown(); ex2.shutdown()
        stop.set(); user.join()
        pipe = os.readlink(f"/proc/self/fd/{w}")
        print(json.dumps({"first": first, "second": second, "pipe": pipe, "cmd": my_cmd()}))
    """)
    for worker in (out["first"], out["second"]):
        assert worker["parent_cmd"] == out["cmd"]  # (served by the zygote)
        assert out["pipe"] not in worker["fds"].values(), worker["fds"]
        assert "user-thread" not in worker["threads"], worker["threads"]


def test_zygote_dies_with_a_driver_killed_by_sigkill():
    script = textwrap.dedent(PRELUDE) + textwrap.dedent("""
        ex = poolx.Executor(max_workers=1)
        worker = ex.submit(facts).result()
        print(json.dumps({"zygote": worker["ppid"], "worker": worker["pid"]}), flush=True)
        threading.Event().wait(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    try:
        facts = json.loads(proc.stdout.readline())
        assert _alive(facts["zygote"]) and _alive(facts["worker"])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    deadline = time.monotonic() + 30
    while (_alive(facts["zygote"]) or _alive(facts["worker"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(facts["zygote"]) and not _alive(facts["worker"])


def _alive(pid: int) -> bool:
    """A live process (not a zombie waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def test_the_programs_own_forkserver_pool_is_not_served_by_the_zygote():
    out = run("""
        import multiprocessing
        ex = poolx.Executor(max_workers=1)
        mine = ex.submit(facts).result()
        with multiprocessing.get_context("forkserver").Pool(1) as pool:  # (by-name tasks: the stdlib's own)
            ppid = pool.apply(os.getppid)
            with open(f"/proc/{ppid}/cmdline", "rb") as f:
                parent_cmd = f.read().replace(b"\\0", b" ").decode().strip()
        ex.shutdown()
        print(json.dumps({"mine": mine, "ppid": ppid, "parent_cmd": parent_cmd, "cmd": my_cmd()}))
    """)
    assert out["mine"]["parent_cmd"] == out["cmd"]
    assert out["ppid"] != out["mine"]["ppid"]
    assert "multiprocessing.forkserver" in out["parent_cmd"]


@pytest.mark.parametrize("before", [
    "ballast = b'x' * (400 << 20)",  # a driver that already holds its data: the zygote would pin it
    "import numpy",  # an extension module whose state (its global random generator) workers must not share
    "started = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True).start()",
])
def test_a_big_threaded_or_extension_holding_driver_gets_the_stdlib_forkserver(before):
    if before == "import numpy":
        pytest.importorskip("numpy")
    out = run(before + """
        from poolx.backends.processes import _zygote
        ex = poolx.Executor(max_workers=1)
        worker = ex.submit(facts).result()
        method = ex._backend.context.get_start_method()
        ex.shutdown()
        print(json.dumps({"worker": worker, "zygote": _zygote.running() is not None, "method": method}))
    """.replace("\n        ", "\n"))
    assert out["method"] == "forkserver"
    assert not out["zygote"]
    assert "multiprocessing.forkserver" in out["worker"]["parent_cmd"]


def test_the_zygote_is_off_with_poolx_zygote_0():
    out = run("""
        ex = poolx.Executor(max_workers=1)
        worker = ex.submit(facts).result()
        ex.shutdown()
        print(json.dumps(worker))
    """, env={"POOLX_ZYGOTE": "0"})
    assert "multiprocessing.forkserver" in out["parent_cmd"]


def test_a_worker_served_by_the_zygote_runs_the_engine_as_before():
    """Crash isolation, task_timeout, max_tasks_per_child and an actor, under the zygote."""
    out = run("""
        import time
        from poolx import TaskTimeoutError, WorkerDiedError

        def crash(_=None):
            os._exit(3)

        class Counter:
            def __init__(self):
                self.n = 0
            def add(self, k):
                self.n += k
                return self.n

        with poolx.Executor(max_workers=2, task_timeout=1.0) as ex:
            served = ex.submit(facts).result()["parent_cmd"] == my_cmd()
            died = ex.submit(crash)
            late = ex.submit(time.sleep, 30)
            ok = [ex.submit(pow, 2, i) for i in range(8)]
            kinds = [type(f.exception(60)).__name__ for f in (died, late)]
            values = [f.result(60) for f in ok]
            counter = ex.actor(Counter)
            calls = [counter.add.remote(1).result(60), counter.add.remote(2).result(60)]
        with poolx.Executor(max_workers=1, max_tasks_per_child=1) as ex:
            pids = {ex.submit(os.getpid).result() for _ in range(3)}
        print(json.dumps({"served": served, "kinds": kinds, "values": values, "calls": calls,
                          "pids": len(pids)}))
    """)
    assert out["served"]
    assert out["kinds"] == ["WorkerDiedError", "TaskTimeoutError"]
    assert out["values"] == [2 ** i for i in range(8)]
    assert out["calls"] == [1, 3]
    assert out["pids"] == 3


def test_what_the_driver_printed_before_the_zygote_is_printed_once():
    """A block-buffered stdout (a pipe) holds the driver's unflushed lines: no worker may print them again."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    script = textwrap.dedent("""
        import poolx
        print("printed by the driver")
        ex = poolx.Executor(max_workers=1)
        ex.submit(print, "printed by a worker", flush=True).result()
        ex.shutdown()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("printed by the driver") == 1, proc.stdout
    assert proc.stdout.count("printed by a worker") == 1, proc.stdout


def test_a_dead_zygote_is_replaced_by_the_stdlib_forkserver():
    out = run("""
        import signal, time
        from poolx.backends.processes import _zygote
        with poolx.Executor(max_workers=1) as ex:
            before = ex.submit(facts).result()
        os.kill(before["ppid"], signal.SIGKILL)
        while os.waitid(os.P_PID, before["ppid"], os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            time.sleep(0.01)
        with poolx.Executor(max_workers=1) as ex:
            after = ex.submit(facts).result()
        print(json.dumps({"before": before, "after": after, "cmd": my_cmd()}))
    """)
    assert out["before"]["parent_cmd"] == out["cmd"]
    assert out["after"]["ppid"] != out["before"]["ppid"]
    assert "multiprocessing.forkserver" in out["after"]["parent_cmd"]


def test_a_module_still_being_imported_at_the_fork_is_imported_afresh_by_the_workers(tmp_path):
    """An executor made at the top of an imported module: its workers must not see the module half-made."""
    (tmp_path / "half_made.py").write_text(textwrap.dedent("""
        import os
        import poolx

        def complete(_=None):
            import half_made
            return hasattr(half_made, "DEFINED_AFTER_THE_EXECUTOR")

        EX = poolx.Executor(max_workers=1)
        DEFINED_AFTER_THE_EXECUTOR = True
    """))
    out = run("""
        import half_made
        from poolx.backends.processes import _zygote
        complete = half_made.EX.submit(half_made.complete).result()
        half_made.EX.shutdown()
        print(json.dumps({"complete": complete, "zygote": _zygote.running() is not None}))
    """, env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert out["zygote"]
    assert out["complete"]


def test_the_default_worker_count_is_lokys_and_needs_no_loky_import_where_it_is_plain(monkeypatch):
    # loky's import (about 25 ms) was most of a fresh executor's start-up; where there is
    # no cgroup CPU quota and no LOKY_MAX_CPU_COUNT, the count is read without it.
    from loky import cpu_count

    from poolx import _cpus

    assert _cpus.default_max_workers() == cpu_count()
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")  # loky's own cap: loky answers
    assert _cpus.default_max_workers() == 1 == cpu_count()
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT")
    if not _cpus._no_cpu_quota():
        pytest.skip("this machine's cgroup sets a CPU quota: loky reads it")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import poolx
        with poolx.Executor() as ex:
            ex.submit(int).result(timeout=60)
            print(ex._max_workers, "loky" in sys.modules)
        """)], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(cpu_count()), "False"]
