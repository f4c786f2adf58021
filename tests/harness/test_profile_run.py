"""poolx profile run: the user's own program, run unchanged (its argv, __main__, exit code and
traceback as python gives them), observed, side by side on several settings, shown while it runs.

Every program here is a real file run through ``python -m poolx profile run`` as a subprocess,
and where python's own behaviour is the reference, the same program is run by python directly
as the control.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from _browser import load_page, require_browser

from poolx.harness import command, live, whatif

# What a program sees of itself; then it leaves the way its first argument says.
OBSERVER = textwrap.dedent('''
    import json, os, signal, sys
    seen = {"argv": sys.argv, "name": __name__, "file": __file__,
            "spec": getattr(__spec__, "name", None), "path0": sys.path[0],
            "main": sys.modules["__main__"].__dict__ is globals()}
    print(json.dumps(seen), flush=True)

    def fail():
        raise ValueError("boom: " + " ".join(sys.argv[1:]))

    how = sys.argv[1] if len(sys.argv) > 1 else "return"
    if how == "raise":
        fail()
    if how == "message":
        sys.exit("the program's own message")
    if how == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
        signal.pause()
    if how.isdigit():
        sys.exit(int(how))
''')

# No `if __name__ == "__main__":` guard: the stdlib's spawn would run this again in each worker.
UNGUARDED = textwrap.dedent('''
    import os, sys
    import poolx

    def square(x):
        return x * x, os.getpid()

    ex = poolx.Executor(2)
    out = [f.result() for f in [ex.submit(square, i) for i in range(20)]]  # (20 tasks: map would chunk)
    ex.shutdown()
    print(sum(v for v, _ in out), sorted({pid for _, pid in out}))
''')


def profile_run(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CI="true")  # (CI: no live area, whatever the terminal)
    return subprocess.run([sys.executable, "-m", "poolx", "profile", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The control: the same program run by python itself."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))


# -- the program as python runs it -------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how, code", [("3", 3), ("message", 1), ("raise", 1), ("interrupt", 130)])
def test_argv_main_exit_code_and_traceback_are_the_programs(tmp_path, how, code):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "prog.py").write_text(OBSERVER)
    program = ["sub/prog.py", how, "--out", "x", "-m", "y"]  # (options after the script are the program's)
    control = python(*program, cwd=tmp_path)
    proc = profile_run("--profile", "none", "--out", "out", *program, cwd=tmp_path)

    # (python dies by SIGINT: a shell says 130)
    assert control.returncode == (-2 if how == "interrupt" else code)
    assert proc.returncode == code, proc.stderr
    # The program's stdout is passed through untouched, and it saw what python shows it.
    assert proc.stdout == control.stdout
    seen = json.loads(proc.stdout.splitlines()[0])
    assert seen["argv"] == program and seen["name"] == "__main__" and seen["main"]
    assert seen["file"] == str(tmp_path / "sub" / "prog.py") and seen["spec"] is None
    assert seen["path0"] == str((tmp_path / "sub").resolve())
    # Its error output as python writes it (the traceback without the boot's frames).
    assert control.stderr in proc.stderr
    if how in ("raise", "interrupt"):
        assert "Traceback" in control.stderr and "_boot" not in proc.stderr and "runpy" not in proc.stderr
    ran = results(tmp_path / "out")["program"]
    assert ran["exit_code"] == code and ran["argv"] == program
    if how == "raise":
        assert "ValueError: boom: raise --out x -m y" in ran["error"]


@pytest.mark.timeout(120)
def test_dash_m_runs_a_module_as_python_m_does(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "job.py").write_text(OBSERVER)
    control = python("-m", "pkg.job", "4", "-x", cwd=tmp_path)
    proc = profile_run("--profile", "none", "--out", "out", "-m", "pkg.job", "4", "-x", cwd=tmp_path)
    assert (control.returncode, proc.returncode) == (4, 4), proc.stderr
    assert proc.stdout == control.stdout
    seen = json.loads(proc.stdout)
    assert seen["spec"] == "pkg.job" and seen["argv"] == [str(tmp_path / "pkg" / "job.py"), "4", "-x"]
    assert seen["name"] == "__main__" and seen["path0"] == str(tmp_path)


# -- observed, on every start method -----------------------------------------------------


@pytest.mark.timeout(240)
def test_a_program_without_a_main_guard_is_observed_on_each_start_method(tmp_path, start_method):
    (tmp_path / "unguarded.py").write_text(UNGUARDED)
    proc = profile_run("--start-method", start_method, "--out", "out", "unguarded.py", cwd=tmp_path)  # (cpu)
    assert proc.returncode == 0, proc.stderr
    total_text, pid_text = proc.stdout.strip().split(" ", 1)
    assert int(total_text) == sum(x * x for x in range(20))
    pids = json.loads(pid_text)
    got = results(tmp_path / "out")
    assert got["program"]["exit_code"] == 0
    assert got["config"]["start_method"] == start_method
    [executor] = got["executors"]
    assert executor["max_workers"] == 2 and executor["tasks"] == 20
    assert got["summary"]["tasks"] == 20
    # The CPU profiles of the driver and of each worker (pyinstrument, the default --profile).
    cpu = got["profiles"]["program"]
    labels = sorted(p["label"].split(" (pid")[0] for p in cpu["processes"])
    workers = [f"worker {i}" for i in range(got["summary"]["lanes"])]  # (each process it started)
    assert labels == ["driver", *workers] and len(workers) >= len(pids) and not cpu["missing"]
    # No worker of the program is left behind once the command returns.
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if psutil.pid_exists(p)]


@pytest.mark.timeout(120)
def test_after_ctrl_c_the_pending_work_is_cancelled_as_under_python(tmp_path):
    """The session stops in python's exit order: after poolx's exit hook, which cancels the
    pending tasks of a program interrupted by Ctrl-C (instead of running them all first)."""
    (tmp_path / "stopped.py").write_text(textwrap.dedent('''
        import os, signal, sys, time
        from poolx import Executor

        def nap(i, folder):
            time.sleep(0.2)
            open(os.path.join(folder, f"{i}.done"), "w").close()

        ex = Executor(2)
        futures = [ex.submit(nap, i, sys.argv[1]) for i in range(40)]
        futures[0].result()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
    '''))
    done = {}
    for name in ("control", "profiled"):
        (tmp_path / name).mkdir()
    control = python("stopped.py", "control", cwd=tmp_path)
    proc = profile_run("--profile", "none", "--out", "out", "stopped.py", "profiled", cwd=tmp_path)
    assert (control.returncode, proc.returncode) == (-2, 130), proc.stderr
    for name in ("control", "profiled"):
        done[name] = len(list((tmp_path / name).iterdir()))
    assert 1 <= done["control"] < 40 and 1 <= done["profiled"] < 40, done
    got = results(tmp_path / "out")
    assert got["program"]["exit_code"] == 130 and "KeyboardInterrupt" in got["program"]["error"]


@pytest.mark.timeout(180)
def test_drop_in_observes_the_stdlib_pools_of_a_program_that_never_heard_of_poolx(tmp_path):
    (tmp_path / "stdlib_pools.py").write_text(textwrap.dedent('''
        import multiprocessing, sys
        from concurrent.futures import ProcessPoolExecutor

        def square(x):
            return x * x

        if __name__ == "__main__":
            with ProcessPoolExecutor(2) as ex:
                a = [ex.submit(square, i).result() for i in range(6)]
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                b = pool.map(square, range(6), chunksize=1)
            print(a == b, sum(a))
            sys.exit(4)
    '''))
    control = python("stdlib_pools.py", cwd=tmp_path)
    proc = profile_run("--drop-in", "--profile", "none", "--out", "out", "stdlib_pools.py", cwd=tmp_path)
    assert (control.returncode, proc.returncode) == (4, 4), proc.stderr
    assert proc.stdout == control.stdout == "True 55\n"
    got = results(tmp_path / "out")
    assert [(e["front_end"], e["tasks"]) for e in got["executors"]] == [("ProcessPoolExecutor (drop-in)", 6),
                                                                      ("multiprocessing.Pool (drop-in)", 6)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_start_method_reaches_the_pools_that_name_none(tmp_path, method):
    # The drop-in's executor and poolx.Pool take multiprocessing's default context: --start-method
    # must be that default, not only the start method of poolx executors made with none.
    (tmp_path / "how.py").write_text(textwrap.dedent('''
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        import poolx

        def how(_=None):
            with open("/proc/self/cmdline", "rb") as f:
                cmd = f.read()
            return "spawn" if b"spawn_main" in cmd else "forkserver" if b"forkserver" in cmd else "fork"

        if __name__ == "__main__":
            with ProcessPoolExecutor(1) as ex:
                a = ex.submit(how).result()
            with poolx.Pool(1) as pool:
                b = pool.apply(how)
            print(a, b)
    '''))
    proc = profile_run("--drop-in", "--profile", "none", "--start-method", method, "--out", "out",
                       "how.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{method} {method}\n"


# -- what if -----------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_what_if_puts_each_setting_side_by_side(tmp_path):
    (tmp_path / "unguarded.py").write_text(UNGUARDED)
    proc = profile_run("--profile", "none", "--backends", "serial,processes", "--workers", "1,2",
                       "--out", "out", "unguarded.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    top = results(out)
    assert top["kind"] == "whatif" and top["baseline"] == "serial-x1"
    labels = [s["label"] for s in top["settings"]]
    assert labels == ["serial-x1", "processes-x1", "processes-x2"]  # (serial once)
    for setting in top["settings"]:
        own = results(out / setting["label"])
        assert own["config"]["workers"] == setting["workers"]
        assert own["config"]["backend"] == setting["backend"]
        assert setting["wall"] == own["program"]["wall"] and setting["tasks"] == 20
    assert top["settings"][0]["speedup"] == 1.0
    assert any(v.startswith("parallelism") for v in top["verdicts"])
    page = (out / "report.html").read_text(encoding="utf-8")
    assert all(f'href="{label}/report.html"' in page for label in labels)
    assert "serial-x1" in proc.stderr and "speed-up" in proc.stderr  # (the terminal table)
    require_browser()  # (the page as a browser shows it)
    shown = load_page(out / "report.html", selectors=["table.whatif tbody tr", "ul.verdicts li",
                                                      "table.whatif a"])
    assert shown.console_errors == []
    assert shown.counts == {"table.whatif tbody tr": 3, "ul.verdicts li": len(top["verdicts"]),
                            "table.whatif a": 3}
    # compare takes two runs of one setting each, and says so for a what-if folder
    refused = subprocess.run([sys.executable, "-m", "poolx", "profile", "compare", "out", "out/serial-x1"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "what-if run" in refused.stderr, refused.stderr
    # A rerun into the same folder replaces it, and refuses one holding someone else's files.
    (out / "notes.txt").write_text("mine")
    again = profile_run("--profile", "none", "--out", "out", "unguarded.py", cwd=tmp_path)
    assert again.returncode == 2 and "notes.txt" in again.stderr


# -- the live view -----------------------------------------------------------------------


STATUS = {"t": 1.5, "executors": 1, "tasks_done": 7, "tasks_failed": 1, "tasks_queued": 3, "tasks_running": 2,
          "workers": 2, "workers_busy": 2, "throughput": 4.5,
          "memory": [{"label": "ex1 worker 0", "pid": 11, "rss": 45_000_000},
                     {"label": "ex1 worker 1", "pid": 12, "rss": 47_000_000}]}


def test_without_a_terminal_the_output_passes_through_and_status_lines_go_to_stderr(tmp_path, capfd):
    status = tmp_path / "status.json"
    status.write_text(json.dumps(STATUS))
    child = [sys.executable, "-c", "import time; print('program out', flush=True); time.sleep(1.5)"]
    assert live.watch(child, dict(os.environ), status, "test", live=False, every=0.3) == 0
    out, err = capfd.readouterr()
    assert out == "program out\n"
    lines = err.splitlines()
    assert len(lines) >= 2  # (one every 0.3 s of a 1.5 s run)
    assert lines[0] == ("poolx profile run: 1.5 s: 7 tasks done (1 failed), 3 queued, 2 running; 2/2 workers "
                        "busy; 4.5 tasks/s; memory: ex1 worker 0 45.0 MB, ex1 worker 1 47.0 MB")


def test_the_live_area_shows_the_status(tmp_path):
    rich_console = pytest.importorskip("rich.console")
    with open(os.devnull, "w") as sink:
        console = rich_console.Console(width=100, record=True, file=sink)
        console.print(live.render(STATUS, "poolx profile run train.py"))
    text = console.export_text()
    assert "7 done (1 failed), 3 queued, 2 running, 4.5/s" in text
    assert "2 of 2 busy" in text and "ex1 worker 1 (pid 12): 47.0 MB" in text


# -- the command line --------------------------------------------------------------------


def test_errors_name_the_culprit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog.py").write_text("")
    cases = {
        ("run", "missing.py"): "cannot find the script 'missing.py'",
        ("run", "-m", "no_such_module_here"): "no module named 'no_such_module_here'",
        ("run", "--backends", "serial,bogus", "prog.py"): "--backends: unknown backend 'bogus'",
    }
    for argv, message in cases.items():
        assert command.main(["profile", *argv]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "data.csv").write_text("x")
    assert command.main(["profile", "run", "--out", "full", "prog.py"]) == 2
    assert "holds files a profile did not write (data.csv)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        command.main(["profile", "run"])
    assert exit_.value.code == 2 and "give the program to run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command.main(["profile", "run", "--help"])
    assert "poolx profile run [options] -m module [args...]" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_on_a_terminal_the_program_output_is_relayed_above_the_live_area(tmp_path):
    pty = pytest.importorskip("pty")
    pytest.importorskip("rich")
    (tmp_path / "talk.py").write_text(textwrap.dedent('''
        import sys, time
        for i in range(3):
            print("line", i)
            time.sleep(0.6)
        print("to stderr", file=sys.stderr)
        sys.exit(5)
    '''))
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    command_line = [sys.executable, "-m", "poolx", "profile", "run", "--profile", "none", "--out", "out",
                    "talk.py"]
    proc = subprocess.Popen(command_line, cwd=tmp_path, env=env, stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # (the terminal's other end closed: the command ended)
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 5
    text = seen.decode(errors="replace")
    assert all(f"line {i}" in text for i in range(3)) and "to stderr" in text
    assert re.search(r"\d+ of \d+ busy", text) and "poolx profile run talk.py" in text  # (the live area)


def test_what_if_verdicts_say_whether_parallelism_pays_and_what_eats_the_rest():
    def setting(label, backend, workers, wall, **more):
        return {"label": label, "backend": backend, "used": backend, "workers": workers, "exit_code": 0,
                "wall": wall, "tasks": 8, "lanes": workers, "shares": {}, "cpu_per_wall": workers, **more}

    rows = [setting("serial-x1", "serial", 1, 4.0),
            setting("threads-x4", "threads", 4, 3.9, cpu_per_wall=1.02),
            setting("processes-x4", "processes", 4, 1.6,
                    shares={"startup": 0.3, "transfer": 0.05, "idle": 0.1}),
            setting("processes-x16", "processes", 16, 1.7)]
    found = whatif.combine("poolx profile run t.py", ["t.py"], rows)["verdicts"]
    assert found[0] == ("parallelism pays: processes-x4 took 1.60 s, 2.50x faster than serial-x1 (4.00 s), "
                        "62% of the ideal 4x")
    assert any(v.startswith("threads-x4: the GIL: 4 threads used 1.02 CPU-seconds per second") for v in found)
    assert any(v.startswith("processes-x4: startup took 30% of the worker time") for v in found)
    assert not any("processes-x4: transfer" in v or "processes-x4: idle" in v for v in found)  # (under 15%)
    assert any(v.startswith("processes-x16: more workers than tasks: 8 task(s) for 16") for v in found)
    assert not any("an executor that names its backend keeps it" in v for v in found)
    pinned = setting("threads-x2", "threads", 2, 1.0, used="processes")
    assert ("threads-x2: the program's executors ran on processes: an executor that names its backend keeps "
            "it (--backends sets only the default, POOLX_BACKEND)") in whatif.verdicts([rows[0], pinned])
    slower = whatif.verdicts([setting("serial-x1", "serial", 1, 1.0),
                              setting("threads-x1", "threads", 1, 0.6),  # (one worker: not parallelism)
                              setting("processes-x2", "processes", 2, 1.05, busy_share=0.8,
                                      cpu_per_wall=0.78)])
    assert slower[0].startswith("parallelism does not pay for this program: the fastest setting with more "
                                "than one worker, "
                                "processes-x2, took 1.05 s against 1.00 s for serial-x1")
    assert not any("rerun it on a quieter one" in v for v in found)  # (the baseline had its CPU)
    starved = [setting("serial-x1", "serial", 1, 1.0, cpu_per_wall=0.5),
               setting("threads-x2", "threads", 2, 0.6)]
    assert ("serial-x1 used only 0.50 CPU-seconds per second: the program waits (I/O, sleeps), or other work "
            "held the CPUs; if that, the speed-ups compare runs that got different shares of the machine: "
            "rerun it on a quieter one") in whatif.verdicts(starved)
    assert ("processes-x2: 2 workers busy 80% of their time used only 0.78 CPU-seconds per second: the tasks "
            "wait (I/O, sleeps, locks), or other work holds the machine's CPUs") in slower
