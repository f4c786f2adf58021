"""poolx.profile (poolx.harness.session.Session): a program's block profiled as it is written.

Real executors on every backend that runs here; the files the session writes are
read back (results.json, trace.json, the profiles) and report.html is loaded in
a real browser.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _tasks import sleep_and_return, square

import poolx
from poolx import _observe
from poolx.harness import analyze, profiles
from poolx.harness.measure import BUCKETS
from poolx.harness.session import Session

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def _once_per_process_files_opened(tmp_path_factory):
    """matplotlib keeps its font files open once it has drawn, and memray a pipe once it has
    tracked: both once per process.  Open them before the leak guard's first look, so that
    they are not taken for this module's leaks."""
    from poolx.harness import report
    from poolx.harness.measure import Lane, Run

    report.chart_timelines([Run("program", 1, 0, "none", wall=1.0, lanes=[Lane(0, "worker 0", None, 0.1)])])
    try:
        import memray
    except ImportError:
        return
    with memray.Tracker(str(tmp_path_factory.mktemp("memray") / "warm.bin")):
        pass


def spin_for_the_profile(n: int) -> int:
    """CPU-bound work a sampling profiler sees (about 30 ms)."""
    deadline = time.process_time() + 0.03
    total = 0
    while time.process_time() < deadline:
        total += n * n
    return n


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def _check_lanes_add_up(results: dict) -> None:
    """Each lane's buckets add up to its lifetime, which lies inside the program's wall time."""
    wall = results["program"]["wall"]
    for lane in results["runs"][0]["lanes"]:
        end = wall if lane["end"] is None else lane["end"]
        assert 0 <= lane["start"] <= end <= wall + 1e-9, lane
        assert sum(lane["seconds"][b] for b in BUCKETS) == pytest.approx(end - lane["start"], abs=1e-6), lane


@pytest.mark.timeout(300)
def test_a_block_with_an_executor_and_a_pool(tmp_path, start_method):
    out = tmp_path / "out"
    with poolx.profile(out, start_method=start_method) as prof:
        time.sleep(0.2)  # the program's own work before it makes an executor
        with poolx.Executor(2) as ex:
            assert list(ex.map(spin_for_the_profile, range(8), chunksize=1)) == list(range(8))
        with poolx.Pool(2, context=start_method) as pool:
            assert pool.map(square, range(6), chunksize=2) == [0, 1, 4, 9, 16, 25]
        pool.join()
    results = _results(out)
    assert results["kind"] == "program" and results["schema"] == "poolx.profile/1"
    ex1, ex2 = results["executors"]
    assert (ex1["front_end"], ex1["backend"], ex1["max_workers"]) == ("Executor", "processes", 2)
    assert ex1["tasks"] == 8
    assert (ex2["front_end"], ex2["tasks"], ex2["failed"]) == ("Pool", 3, 0)  # three chunks of two
    assert 0.2 <= ex1["created"] < ex1["closed"] <= ex2["created"] < ex2["closed"]
    assert results["config"]["start_method"] == start_method and results["config"]["backend"] == "processes"
    summary = results["summary"]
    assert summary["tasks"] == 11 and summary["max_parallelism"] == 2
    _check_lanes_add_up(results)
    lanes = {lane["label"]: lane for lane in results["runs"][0]["lanes"]}
    # (Pool's exit terminates its workers, as the stdlib's: one still starting may have run nothing)
    assert {"ex1 worker 0", "ex1 worker 1"} <= set(lanes) <= {
        "ex1 worker 0", "ex1 worker 1", "ex2 worker 0", "ex2 worker 1"}
    assert {"ex2 worker 0", "ex2 worker 1"} & set(lanes)
    assert summary["lanes"] == len(lanes)
    # The first executor was made 0.2 s in: its workers' lifetime starts there, not at 0,
    # and those 0.2 s are not start-up.
    assert all(lanes[f"ex1 worker {i}"]["start"] >= 0.2 for i in (0, 1))
    for i in (0, 1):
        assert lanes[f"ex1 worker {i}"]["seconds"]["startup"] < lanes[f"ex1 worker {i}"]["ready"]
    # CPU read while the workers lived (spin_for_the_profile burns 30 ms a task)
    assert all(lanes[f"ex1 worker {i}"]["cpu"] >= 0.03 for i in (0, 1)), lanes
    assert all(lane["cpu"] is not None for lane in lanes.values() if lane["tasks"]), lanes
    # A CPU profile per worker process, each holding the task it ran.
    folder = out / "cpu" / "program"
    for label, lane in lanes.items():
        (path,) = folder.glob(f"{label.replace(' ', '-')}-p{lane['pid']}.pyisession")
        if label.startswith("ex1"):
            assert "spin_for_the_profile" in profiles.functions_in(path), path
    assert list(folder.glob("driver-p*.pyisession"))
    assert "spin_for_the_profile" in [h["function"] for h in results["profiles"]["program"]["hot"]]
    assert results["profiles"]["program"]["missing"] == []
    trace = json.loads((out / "trace.json").read_text(encoding="utf-8"))
    names = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert "compute" in names and "spin_for_the_profile [map]" in names, names
    threads = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert {f"{label} (pid {lane['pid']})" for label, lane in lanes.items()} | {"driver"} == threads
    spans = [e for e in trace["traceEvents"] if e.get("cat") == "executor"]
    assert [e["name"] for e in spans] == ["ex1 Executor (processes, 2 workers)",
                                          "ex2 Pool (processes, 2 workers)"]
    assert spans[0]["ts"] == pytest.approx(ex1["created"] * 1e6)
    assert "ex1" in prof.summary() and "verdicts" in prof.summary()


@pytest.mark.parametrize("backend", ["threads", "serial"])
def test_in_process_backends(tmp_path, backend):
    out = tmp_path / "out"
    with poolx.profile(out, profile="none"):
        with poolx.Executor(2, backend=backend) as ex:
            futures = [ex.submit(sleep_and_return, 0.05, i) for i in range(4)]
            assert [f.result() for f in futures] == [0, 1, 2, 3]
    results = _results(out)
    (ex,) = results["executors"]
    assert (ex["backend"], ex["tasks"]) == (backend, 4)
    _check_lanes_add_up(results)
    lanes = results["runs"][0]["lanes"]
    assert sum(lane["tasks"] for lane in lanes) == 4
    # (no process of their own: no CPU per lane; the driver's CPU covers them)
    assert all(lane["pid"] is None or lane["cpu"] is None for lane in lanes)
    assert not (out / "cpu").exists()


def test_threads_backend_names_the_profile_it_cannot_take(tmp_path):
    with poolx.profile(tmp_path / "out"):
        with poolx.ThreadPool(2) as pool:
            pool.map(square, range(4))
        pool.join()
    results = _results(tmp_path / "out")
    assert results["executors"][0]["front_end"] == "ThreadPool"
    assert any("the tasks in worker threads are not in it" in n for n in results["notes"]), results["notes"]


@pytest.mark.timeout(240)
def test_report_html_loads_in_a_browser(tmp_path):
    from _browser import load_page, require_browser

    out = tmp_path / "out"
    with poolx.profile(out, title="poolx profile run job.py", argv=["job.py", "--fast"]):
        with poolx.Executor(2) as ex:
            list(ex.map(spin_for_the_profile, range(4), chunksize=1))
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<link" not in page and "url(http" not in page and "job.py --fast" in page
    require_browser()
    result = load_page(out / "report.html", selectors=[
        "table.program tbody tr", "table.executors tbody tr", "table.lanes tbody tr", "#chart-timelines svg",
        "ul.verdicts li", "table.hot tbody tr"])
    assert result.console_errors == []
    assert result.title == "poolx profile run job.py"
    counts = result.counts
    assert counts["table.executors tbody tr"] == 1 and counts["table.lanes tbody tr"] == 2
    assert counts["#chart-timelines svg"] == 1 and counts["ul.verdicts li"] >= 1
    assert counts["table.program tbody tr"] >= 5 and counts["table.hot tbody tr"] >= 1
    # A program that failed before making any executor: its error, and what to try
    failed = tmp_path / "failed"
    with pytest.raises(KeyError), poolx.profile(failed, profile="none"):
        raise KeyError("no such column")
    result = load_page(failed / "report.html", selectors=["pre.error", "table.executors", "ul.verdicts li"])
    assert result.console_errors == []
    assert result.counts == {"pre.error": 1, "table.executors": 0, "ul.verdicts li": 2}
    assert "KeyError: &#x27;no such column&#x27;" in result.dom or "KeyError: 'no such column'" in result.dom
    assert "made no poolx executor" in result.dom


def test_a_block_that_raises_keeps_the_error_and_writes_the_files(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError):
        with poolx.profile(out, profile="none"):
            with poolx.Executor(1) as ex:
                ex.submit(square, 3).result()
                raise ZeroDivisionError("division by zero")
    results = _results(out)
    assert "ZeroDivisionError: division by zero" in results["program"]["error"]
    assert results["verdicts"][0].startswith("the program ended with an error: ZeroDivisionError")
    assert results["executors"][0]["tasks"] == 1
    assert (out / "trace.json").is_file() and (out / "report.html").is_file()
    assert "ZeroDivisionError" in (out / "report.html").read_text(encoding="utf-8")


def test_the_live_file_follows_the_tasks(tmp_path):
    live = tmp_path / "live.json"
    seen: list[dict] = []

    def read() -> dict | None:
        try:
            return json.loads(live.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    with poolx.profile(tmp_path / "out", profile="none", live=live):
        with poolx.Executor(2) as ex:
            futures = [ex.submit(spin_and_sleep, 0.3) for _ in range(8)]  # (1.2 s: 2 writes or more)
            deadline = time.monotonic() + 60
            while not all(f.done() for f in futures) and time.monotonic() < deadline:
                status = read()
                if status and status not in seen:
                    seen.append(status)
                time.sleep(0.1)
            assert all(f.done() for f in futures)
    final = read()
    assert final is not None and final["tasks_done"] == 8 and final["tasks_queued"] == 0
    assert len({s["t"] for s in seen}) >= 2, seen  # rewritten while the tasks ran
    assert any(s["executors"] == 1 and s["workers"] >= 1 and s["tasks_queued"] + s["tasks_running"] > 0
               for s in seen), seen
    assert any(0 < s["tasks_done"] < 8 for s in seen), seen
    memory = next(s["memory"] for s in seen if s["memory"])
    assert {m["label"] for m in memory} <= {"worker 0", "worker 1"} and all(m["rss"] > 0 for m in memory)
    assert not list(tmp_path.glob("*.tmp"))


def spin_and_sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_stop_is_idempotent_and_a_session_runs_once(tmp_path):
    prof = poolx.profile(tmp_path / "out", profile="none")
    with pytest.raises(RuntimeError, match="stop\\(\\) before start\\(\\)"):
        prof.stop()
    prof.start()
    with pytest.raises(RuntimeError, match="another poolx profiling session is active"):
        Session(tmp_path / "other", profile="none").start()
    first = prof.stop()
    assert prof.stop() is first and _observe.active() is None
    with pytest.raises(RuntimeError, match="runs once"):
        prof.start()
    assert "<iframe srcdoc=" in prof._repr_html_()


def test_a_program_that_made_no_executor_is_told_to_try_drop_in(tmp_path):
    with poolx.profile(tmp_path / "out", profile="none"):
        sum(range(1000))
    results = _results(tmp_path / "out")
    assert results["executors"] == [] and results["summary"]["tasks"] == 0
    assert any("made no poolx executor" in v and "--drop-in" in v for v in results["verdicts"])


def test_what_if_workers_and_the_front_ends_of_joblib_and_the_ray_style_api(tmp_path):
    joblib = pytest.importorskip("joblib")
    import poolx.joblib

    with poolx.profile(tmp_path / "out", profile="none", workers=1):
        with joblib.parallel_config(backend="poolx", n_jobs=2):
            joblib.Parallel()(joblib.delayed(square)(i) for i in range(3))
        poolx.joblib.shutdown_workers()
        poolx.init(num_cpus=2)
        try:
            assert poolx.get(poolx.remote(square).remote(4)) == 16
        finally:
            poolx.shutdown()
    executors = _results(tmp_path / "out")["executors"]
    assert [(e["front_end"], e["max_workers"]) for e in executors] == [("joblib", 1), ("Ray-style API", 1)]


def test_at_the_programs_end_executors_left_open_are_shut_down_and_profiled(tmp_path):
    prof = poolx.profile(tmp_path / "out").start()
    ex = poolx.Executor(1)
    ex.submit(spin_for_the_profile, 1).result()
    results = prof.stop(exit_code=0)
    assert ex.closed
    (lane,) = results["runs"][0]["lanes"]
    assert results["executors"][0]["closed"] is not None
    assert results["profiles"]["program"]["missing"] == []
    (path,) = (tmp_path / "out" / "cpu" / "program").glob(f"worker-0-p{lane['pid']}.pyisession")
    assert "spin_for_the_profile" in profiles.functions_in(path)


def test_a_block_leaves_its_open_executors_running_and_says_so(tmp_path):
    prof = poolx.profile(tmp_path / "out", profile="none").start()
    ex = poolx.Executor(1)
    try:
        ex.submit(square, 2).result()
        results = prof.stop()
        assert not ex.closed and ex.submit(square, 3).result() == 9
    finally:
        ex.shutdown()
    assert results["executors"][0]["closed"] is None
    assert any("ex1 (Executor) was still open" in n for n in results["notes"])
    _check_lanes_add_up(results)


def test_out_holding_other_files_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds files a profile did not write"):
        poolx.profile(tmp_path).start()
    assert _observe.active() is None and (tmp_path / "mine.txt").read_text() == "keep me"


def test_poolx_profile_is_loaded_on_first_use():
    code = ("import sys, poolx; print(any(m.startswith('poolx.harness') for m in sys.modules)); "
            "print(type(poolx.profile('x')).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "Session"]


# -- the verdicts, on made-up programs ---------------------------------------------------


def _summary(**kw) -> dict:
    base = {"tasks": 8, "lanes": 2, "buckets": dict.fromkeys(BUCKETS, 0.0) | {"compute": 2.0},
            "busy_share": 1.0, "busy": 2.0, "cpu_total": 2.0, "imbalance": None, "max_parallelism": 2,
            "parallel_seconds": 1.0}
    return base | kw


def _program(wall=1.0, **kw) -> dict:
    return {"argv": ["x.py"], "exit_code": 0, "error": None, "wall": wall, "driver_cpu": 0.1,
            "driver_peak_rss": 1} | kw


def _executor(backend="processes", tasks=8, workers=2) -> dict:
    return {"index": 1, "backend": backend, "max_workers": workers, "front_end": "Executor", "created": 0.0,
            "closed": 1.0, "tasks": tasks, "failed": 0}


def test_verdict_parallelism_paid_with_its_figures():
    (v,) = analyze.program_verdicts(_program(), [_executor()], _summary())
    assert v.startswith("parallelism paid: while tasks ran (1.00 s of the program's 1.00 s), 2.00 ran at "
                        "once")


@pytest.mark.parametrize("cpu", [1.0, 0.6])  # (0.6: a busy machine gave the process less than one CPU)
def test_verdict_threads_serialised_by_the_gil(cpu):
    (v,) = analyze.program_verdicts(_program(), [_executor("threads")], _summary(cpu_total=cpu))
    assert v.startswith("parallelism did not pay for the CPU") and "the GIL" in v and "processes backend" in v


def test_verdict_threads_that_wait_are_not_blamed_on_the_gil():
    (v,) = analyze.program_verdicts(_program(), [_executor("threads")], _summary(cpu_total=0.1))
    assert v.startswith("parallelism paid in waiting") and "GIL" not in v


def test_verdicts_costs_few_tasks_and_the_serial_part():
    buckets = dict.fromkeys(BUCKETS, 0.0) | {"compute": 1.0, "startup": 3.0}
    out = analyze.program_verdicts(_program(wall=10.0), [_executor(tasks=3, workers=8)],
                                   _summary(tasks=3, buckets=buckets, busy=1.0, parallel_seconds=1.0))
    assert out[0].startswith("parallelism did not pay")
    assert any(v.startswith("startup took 3.00 of the workers' 4.00 s (75%)") for v in out), out
    assert any("ran 3 task(s) on 8 workers" in v for v in out), out
    assert any(v.startswith("no task ran for 9.00 s of the program's 10.00 s (90%)") and "1.1x" in v
               for v in out), out


def test_covered_and_max_parallelism_count_overlaps():
    tasks = [("f", 0, 0, 0, start, end, end, 0, 0, True, 0, 0) for start, end in [(0, 2), (1, 3), (5, 6)]]
    assert analyze.covered(tasks, 10.0) == 4.0
    assert analyze.max_parallelism(tasks) == 2


def test_live_status_counts_across_threads(tmp_path):
    """The live thread and the program's threads do not race on the session's records."""
    prof = poolx.profile(tmp_path / "out", profile="none", live=tmp_path / "live.json").start()
    try:
        makers = [threading.Thread(target=_make_one) for _ in range(3)]
        for t in makers:
            t.start()
        for t in makers:
            t.join(60)
    finally:
        results = prof.stop()
    assert sorted(e["index"] for e in results["executors"]) == [1, 2, 3]
    assert json.loads((tmp_path / "live.json").read_text())["executors"] == 0  # all closed at the end


def _make_one() -> None:
    with poolx.Executor(1, backend="threads") as ex:
        ex.submit(square, 1).result()


def test_executors_made_by_the_drop_in_are_named_for_the_stdlib_class(tmp_path):
    import concurrent.futures
    import multiprocessing

    from poolx.harness import dropin

    installed = dropin.install()
    try:
        with poolx.profile(tmp_path / "out", profile="none", start_method="forkserver"):
            with concurrent.futures.ProcessPoolExecutor(2) as ex:
                assert ex.submit(square, 5).result() == 25
            with multiprocessing.Pool(1) as pool:
                assert pool.apply(square, (6,)) == 36
            pool.join()
    finally:
        installed.uninstall()
    executors = _results(tmp_path / "out")["executors"]
    assert [(e["front_end"], e["tasks"]) for e in executors] == [
        ("ProcessPoolExecutor (drop-in)", 1), ("multiprocessing.Pool (drop-in)", 1)]


def allocate_for_the_profile(megabytes: int) -> int:
    block = bytearray(megabytes * 1_000_000)
    return len(block)


@pytest.mark.timeout(300)
def test_memory_profiles_of_every_worker(tmp_path):
    pytest.importorskip("memray")
    out = tmp_path / "out"
    with poolx.profile(out, profile="mem"):
        with poolx.Executor(2, mp_context="spawn") as ex:
            assert list(ex.map(allocate_for_the_profile, [30, 30, 30, 30], chunksize=1)) == [30_000_000] * 4
    results = _results(out)
    info = results["profiles"]["program"]
    assert info["kind"] == "mem" and info["missing"] == []
    rows = {p["label"]: p for p in info["processes"]}
    lanes = [lane for lane in results["runs"][0]["lanes"] if lane["tasks"]]
    for lane in lanes:  # each worker that ran a task: its own capture, its peak is that block
        assert rows[lane["label"]]["peak"] >= 30_000_000, rows
        assert "allocate_for_the_profile" in rows[lane["label"]]["top_site"]
    assert "driver" in rows
    assert (out / "mem" / "program").is_dir() and not (out / "cpu").exists()


def test_a_program_with_more_tasks_than_kept_says_so(tmp_path, monkeypatch):
    from poolx.harness import session

    monkeypatch.setattr(session, "TASK_RECORDS", 5)
    with poolx.profile(tmp_path / "out", profile="none"):
        with poolx.Executor(2, backend="threads") as ex:
            futures = [ex.submit(square, i) for i in range(12)]
            assert [f.result() for f in futures] == [i * i for i in range(12)]
    results = _results(tmp_path / "out")
    assert results["executors"][0]["tasks"] == 12 and results["summary"]["tasks"] == 5
    assert any("ran more than 5 tasks: its 7 oldest were not kept" in n for n in results["notes"])
    _check_lanes_add_up(results)


def test_work_still_queued_at_shutdown_counts_in_the_workers_cpu(tmp_path):
    out = tmp_path / "out"
    with poolx.profile(out, profile="none"):
        with poolx.Executor(2) as ex:
            ex.prestart(60)
            futures = [ex.submit(burn_cpu, 0.15) for _ in range(6)]
        # (left the block at once: shutdown(wait=True) ran the six tasks, 0.9 s of CPU in all)
        assert all(f.done() for f in futures)
    lanes = _results(out)["runs"][0]["lanes"]
    assert sum(lane["tasks"] for lane in lanes) == 6
    assert sum(lane["cpu"] for lane in lanes) >= 0.8, lanes  # read until the workers were gone
    _check_lanes_add_up(_results(out))


def burn_cpu(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


def test_a_profile_that_cannot_be_written_does_not_hide_the_blocks_error(tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="the block's own"), poolx.profile(out, profile="none"):
        shutil.rmtree(out)  # (so the files cannot be written)
        (tmp_path / "out").write_text("a file where the folder was")
        raise ValueError("the block's own")
    assert "poolx.profile: the profile could not be written" in capsys.readouterr().err
    assert _observe.active() is None


def test_account_splits_each_lanes_own_lifetime():
    """An executor made 3 s into a 10 s program and shut down at 7 s: its worker's 4 s are
    split, not the program's 10; a worker started on demand at 5 s starts up from then."""
    from poolx.harness.measure import Lane, Run, account

    run = Run("program", 2, 0, "none", wall=10.0)
    early = Lane(0, "worker 0", 1, ready=3.5, start=3.0, end=7.0)
    late = Lane(1, "worker 1", 2, ready=5.5, start=3.0, end=7.0, born=5.0)
    run.lanes = [early, late]
    # (name, lane, submit, dispatch, start, end, done, bytes out, bytes in, ok, unpickle s, pickle s)
    run.tasks = [("f", 0, 4.0, 4.0, 4.0, 5.0, 5.0, 0, 0, True, 0.0, 0.0),
                 ("f", 1, 4.9, 5.0, 6.0, 6.5, 6.5, 0, 0, True, 0.0, 0.0)]
    account(run)
    assert early.seconds == {"startup": 0.5, "unpickle": 0.0, "compute": 1.0, "pickle": 0.0, "transfer": 0.0,
                             "idle": 2.5}
    assert late.seconds == {"startup": 0.5, "unpickle": 0.0, "compute": 0.5, "pickle": 0.0, "transfer": 0.5,
                            "idle": 2.5}


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def test_actors_are_lanes_labelled_with_their_executor(tmp_path):
    with poolx.profile(tmp_path / "out", profile="none"):
        with poolx.Executor(1, backend="threads") as ex:
            ex.submit(square, 1).result()
        with poolx.Executor(1) as ex:
            counter = ex.actor(Counter)
            assert [counter.add.remote(k).result() for k in (1, 2, 3)] == [1, 3, 6]
    results = _results(tmp_path / "out")
    actors = [lane for lane in results["runs"][0]["lanes"] if lane["label"].startswith("ex2 actor Counter#")]
    assert len(actors) == 1 and actors[0]["tasks"] == 3 and actors[0]["key"] < 0
    assert results["executors"][1]["tasks"] == 3
    _check_lanes_add_up(results)


def test_verdict_no_executor_suggests_the_drop_in_only_when_it_was_not_used():
    (without,) = analyze.program_verdicts(_program(), [], _summary())
    (used,) = analyze.program_verdicts(dict(_program(), drop_in=True), [], _summary())
    assert "profile it with --drop-in" in without
    assert "even with --drop-in" in used and "profile it with --drop-in" not in used


def test_verdict_unpickling_in_each_first_task_is_named_as_imports():
    # (name, lane, submit, dispatch, start, end, done, bytes out, bytes in, ok, unpickle s, pickle s)
    tasks = [("fit", lane, 0, 0, start, start + 0.5, start + 0.5, 10, 10, True, un, 0.0)
             for lane, start, un in [(0, 0.0, 0.9), (0, 1.0, 0.01), (1, 0.0, 0.8), (1, 1.0, 0.01)]]
    first = analyze.first_unpickles(tasks)
    assert round(first, 2) == 1.7
    costly = _summary(buckets=dict.fromkeys(BUCKETS, 0.0) | {"compute": 2.0, "unpickle": 1.72},
                      unpickle_first=first)
    (verdict,) = [v for v in analyze.program_verdicts(_program(), [_executor()], costly) if "unpickle" in v]
    assert "first task" in verdict and "imports" in verdict and "poolx.put" not in verdict
    big_args = dict(costly, unpickle_first=0.02)
    (verdict,) = [v for v in analyze.program_verdicts(_program(), [_executor()], big_args) if "unpickle" in v]
    assert "poolx.put" in verdict


def test_a_missing_profiler_is_named_with_the_option_and_the_way_on(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_memray(name, *args, **kwargs):
        if name == "memray":
            raise ImportError("No module named 'memray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_memray)
    session = Session(tmp_path / "out", profile="mem")
    with pytest.raises(ImportError, match=r"profile='mem' needs memray: pip install memray .*profile='none'"):
        session.start()
