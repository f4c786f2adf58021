"""poolx profile: the scenarios, the measurements, the profiles inside the
workers, the files, and the errors a user sees."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import poolx
from poolx.harness import analyze, measure, profiles, scenario
from poolx.harness._hook import ProfilerHook

pytest.importorskip("numpy")

PI_SIZE = "2000000"


def poolx_cmd(*args: str, cwd: Path | None = None, timeout: float = 240,
              **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CI="true", **env_vars)  # CI: no progress bar in the captured output
    return subprocess.run(
        [sys.executable, "-m", "poolx", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def pi_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One unprofiled run of pi, all three modes, shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("pi")
    proc = poolx_cmd(
        "profile", "pi", "--size", PI_SIZE, "--workers", "1,2", "--repeat", "3", "--out", str(out)
    )
    return out, proc


# -- scenarios -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_three_forms_of_each_builtin_scenario_agree():
    pi = scenario.load("pi")
    retrieve = scenario.load("retrieve")
    expected_pi = pi.run("serial", None, 1_000_000)
    expected_retrieve = retrieve.run("serial", None, 3)
    assert expected_retrieve == [(0, "learning"), (1, "Ray"), (2, "for")]
    with poolx.Executor(2) as ex:
        assert pi.run("task", ex, 1_000_000) == expected_pi
        assert pi.run("actor", ex, 1_000_000) == expected_pi
        assert retrieve.run("task", ex, 3) == expected_retrieve
        assert retrieve.run("actor", ex, 3) == expected_retrieve
    assert abs(expected_pi - 3.1416) < 0.01


def test_a_scenario_may_be_a_file_or_module_attribute(tmp_path, monkeypatch):
    path = tmp_path / "squares.py"
    path.write_text(
        textwrap.dedent('''
        """squares: sum of squares."""
        SIZE = 50

        def serial(size):
            return sum(i * i for i in range(size))

        def tasks(executor, size):
            return sum(executor.map(pow, range(size), [2] * size))

        class Namespace:
            SIZE = 7
            serial = staticmethod(serial)
    ''')
    )
    loaded = scenario.load(str(path))
    assert loaded.name == "squares" and loaded.size == 50 and loaded.doc == "squares: sum of squares."
    assert loaded.has("serial") and loaded.has("task") and not loaded.has("actor")
    monkeypatch.syspath_prepend(str(tmp_path))
    attr = scenario.load("squares:Namespace")
    assert attr.size == 7 and attr.has("serial") and not attr.has("task")


def test_bad_scenarios_are_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        scenario.load("nope")
    with pytest.raises(FileNotFoundError, match=r"missing\.py"):
        scenario.load(str(tmp_path / "missing.py"))
    empty = tmp_path / "empty.py"
    empty.write_text("SIZE = 3\n")
    with pytest.raises(ValueError, match="defines none of serial"):
        scenario.load(str(empty))
    nosize = tmp_path / "nosize.py"
    nosize.write_text("def serial(size):\n    return size\n")
    with pytest.raises(ValueError, match="needs an integer SIZE"):
        scenario.load(str(nosize))
    with pytest.raises(ValueError, match="has no attribute 'nothing'"):
        scenario.load("json:nothing")


# -- measuring -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_worker_time_adds_up_to_wall_times_processes():
    pi = scenario.load("pi")
    for mode in ("task", "actor"):
        run, _ = measure.run_once(pi, mode, 2, 2_000_000, backend="processes", mp_context=None, repeat=0)
        assert run.ok, run.error
        assert len(run.lanes) == 2
        assert sum(lane.tasks for lane in run.lanes) == len(run.tasks) >= 16
        for lane in run.lanes:
            assert lane.pid and lane.cpu is not None and lane.peak_rss and lane.peak_rss > 10_000_000
            assert sum(lane.seconds.values()) == pytest.approx(run.wall, rel=0.02)
            assert lane.seconds["compute"] > 0


@pytest.mark.timeout(120)
def test_a_run_gets_every_task_record_however_many_the_default_trace_keeps(tmp_path):
    from poolx._telemetry import TRACE_CAPACITY

    path = tmp_path / "many.py"
    path.write_text(textwrap.dedent('''
        """many: one task per item, so one record each."""
        SIZE = 10

        def serial(size):
            return sum(i * i for i in range(size))

        def tasks(executor, size):
            return sum(f.result() for f in [executor.submit(pow, i, 2) for i in range(size)])
    '''))
    n = TRACE_CAPACITY + 300
    run, result = measure.run_once(scenario.load(str(path)), "task", 2, n, backend="processes",
                                   mp_context=None, repeat=0)
    assert run.ok, run.error
    assert result == sum(i * i for i in range(n))
    assert len(run.tasks) == sum(lane.tasks for lane in run.lanes) == n


def test_accounting_splits_a_made_up_run_exactly():
    run = measure.Run("task", 1, 0, "none", wall=1.0)
    run.lanes = [measure.Lane(0, "worker 0", 1, ready=0.1)]
    # (name, lane, submit, dispatch, start, end, done, out, in, ok, unpickle, pickle)
    run.tasks = [
        ("f", 0, 0.0, 0.05, 0.2, 0.5, 0.55, 10, 10, True, 0.05, 0.01),
        ("f", 0, 0.0, 0.15, 0.51, 0.8, 0.85, 10, 10, True, 0.0, 0.02),
    ]
    measure.account(run)
    s = run.lanes[0].seconds
    assert s["startup"] == pytest.approx(0.1)
    assert s["unpickle"] == pytest.approx(0.05)
    assert s["compute"] == pytest.approx(0.25 + 0.29)
    assert s["pickle"] == pytest.approx(0.03)
    assert s["transfer"] == pytest.approx(0.1)  # 0.1..0.2: dispatched, waiting; then busy
    assert sum(s.values()) == pytest.approx(1.0)
    assert analyze.dispatch_latencies(run) == pytest.approx([0.1, 0.0])


def test_verdicts_name_the_cost_that_explains_a_difference():
    def row(mode, wall, unpickle):
        r = analyze.Row(mode, 2, 3, wall, wall * 0.99, wall * 1.01, lanes=2, tasks=10, bytes_out=120_000_000)
        r.seconds = {
            "startup": 0.1,
            "unpickle": unpickle,
            "compute": 1.0,
            "pickle": 0,
            "transfer": 0,
            "idle": 0,
        }
        r.speedup, r.efficiency = 2.0 / wall, 1.0 / wall
        return r

    serial = analyze.Row("serial", 1, 3, 2.0, 1.99, 2.01, lanes=1)
    found = analyze.verdicts([serial, row("task", 1.5, 0.9), row("actor", 1.1, 0.01)], [])
    text = "\n".join(found)
    assert "fastest: actor x2" in text
    assert "actor mode is 1.36x faster than task mode" in text
    assert "0.890 worker-seconds more on unpickle" in text and "12.00 MB of arguments per call" in text


def test_imbalance_is_uneven_busy_time_that_scheduling_could_have_avoided():
    def lane(key, tasks, busy):
        return measure.Lane(key, f"worker {key}" if key >= 0 else "actor Tracker#1", key + 100, 0.0,
                            tasks=tasks, seconds={"compute": busy})

    flagged = analyze.imbalance([lane(0, 4, 1.0), lane(1, 1, 0.3), lane(2, 1, 0.3)])
    assert flagged and flagged.startswith("worker 0 was busy 1.00 s, the median process 0.30 s")
    assert analyze.imbalance([lane(0, 3, 0.7), lane(1, 0, 0.0), lane(2, 0, 0.0)])  # median did nothing
    assert analyze.imbalance([lane(0, 1, 0.5), lane(1, 1, 0.1), lane(2, 1, 0.1)]) is None  # one long task
    assert analyze.imbalance([lane(0, 2, 0.4), lane(1, 1, 0.4), lane(2, 3, 0.4)]) is None  # even busy time
    # A tracker actor beside the workers is not compared with them.
    assert analyze.imbalance([lane(0, 6, 1.5), lane(-1, 7, 0.0)]) is None


def test_within_noise_says_which_test_passed():
    def row(mode, wall, lo, hi):
        r = analyze.Row(mode, 2, 3, wall, lo, hi, lanes=2, tasks=6)
        r.seconds = dict.fromkeys(measure.BUCKETS, 0.1)
        return r

    close = analyze.verdicts([row("task", 1.00, 0.99, 1.01), row("actor", 1.03, 1.02, 1.04)], [])
    assert any("within noise (1.000 s and 1.030 s; less than 5% apart)" in v for v in close), close
    wide = analyze.verdicts([row("task", 1.0, 0.8, 1.4), row("actor", 1.2, 0.9, 1.5)], [])
    assert any("each median lies in the other's range" in v for v in wide), wide
    apart = analyze.verdicts([row("task", 1.0, 0.99, 1.01), row("actor", 1.2, 1.19, 1.21)], [])
    assert any("task mode is 1.20x faster than actor mode" in v for v in apart), apart


def test_a_gap_no_single_cost_explains_is_said_so_and_idle_counts_with_equal_processes():
    def row(mode, wall, idle):
        r = analyze.Row(mode, 2, 3, wall, wall * 0.99, wall * 1.01, lanes=2, tasks=6)
        r.seconds = {
            "startup": 0.05,
            "unpickle": 0,
            "compute": 1.0,
            "pickle": 0,
            "transfer": 0.001,
            "idle": idle,
        }
        return r

    idle_gap = analyze.verdicts([row("task", 0.75, 0.45), row("actor", 0.55, 0.05)], [])
    assert any(
        "task mode spent 0.400 worker-seconds more on idle" in v and "waited for work" in v for v in idle_gap
    ), idle_gap
    fewer = row("actor", 0.55, 0.05)
    fewer.lanes = 3  # an extra process: idle no longer compares
    fewer.seconds["transfer"] = 0.0
    unexplained = analyze.verdicts([row("task", 0.75, 0.45), fewer], [])
    assert any("no single cost explains it" in v for v in unexplained), unexplained


# -- the command -----------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_profile_pi_prints_every_mode_and_writes_the_files(pi_run):
    out, proc = pi_run
    assert proc.returncode == 0, proc.stderr + proc.stdout
    text = proc.stdout
    for needle in (
        "poolx profile pi",
        "usable CPUs",
        "timings come from unprofiled runs",
        "serial",
        "task x1",
        "task x2",
        "actor x1",
        "actor x2",
        "speedup",
        "dispatch p50",
        "where the worker time went",
        "= wall x processes",
        "per process, actor x2",
        "actor Sampler#",
        "verdicts",
        "report.html",
    ):
        assert needle in text, needle
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "poolx.profile/1"
    assert [r["key"] for r in results["rows"]] == ["serial", "task x1", "task x2", "actor x1", "actor x2"]
    for r in results["rows"]:
        assert r["repeats"] == 3 and not r["errors"]
        if r["mode"] != "serial":
            assert sum(r["seconds"].values()) == pytest.approx(r["wall"] * r["lanes"], rel=0.05)
    assert len([run for run in results["runs"] if run["repeat"] == -1]) == 3  # warm-ups, kept apart
    trace = json.loads((out / "trace.json").read_text())
    lanes = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert any(name.startswith("worker 1 (pid") for name in lanes)
    assert any(name.startswith("actor Sampler#") for name in lanes)
    assert {"compute", "count_inside [map]", "Sampler.add"} <= {
        e["name"] for e in trace["traceEvents"] if e["ph"] == "X"
    }


@pytest.mark.timeout(120)
def test_report_html_is_self_contained_and_loads_in_a_browser(pi_run):
    out, proc = pi_run
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.html").read_text()
    # Nothing fetched from anywhere: no remote src/href, stylesheet links or CSS urls.
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) is None
    assert "<link" not in page and "url(http" not in page
    from _browser import load_page, require_browser

    require_browser()
    result = load_page(
        out / "report.html",
        selectors=[
            "table.results tbody tr",
            "table.accounting tbody tr",
            "table.lanes",
            "#chart-scaling svg",
            "#chart-accounting svg",
            "#chart-timelines svg",
            "ul.verdicts li",
        ],
    )
    assert result.console_errors == []
    counts = result.counts
    assert counts["table.results tbody tr"] == 5
    assert counts["table.accounting tbody tr"] == 4
    assert counts["table.lanes"] == 4
    assert counts["#chart-scaling svg"] == 1
    assert counts["#chart-accounting svg"] == 1
    assert counts["#chart-timelines svg"] == 1
    assert counts["ul.verdicts li"] >= 1


@pytest.mark.timeout(240)
def test_profile_cpu_merges_the_workers_and_actors_sessions(tmp_path):
    proc = poolx_cmd(
        "profile",
        "pi",
        "--size",
        PI_SIZE,
        "--workers",
        "2",
        "--repeat",
        "1",
        "--profile",
        "cpu",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "cpu profile, task x2" in proc.stdout and "profile overhead" in proc.stdout
    for mode, prefix in (("task", "worker-"), ("actor", "actor-Sampler-")):
        sessions = sorted((tmp_path / "cpu" / mode).glob(f"{prefix}*.pyisession"))
        assert len(sessions) == 2, sessions
        for path in sessions:  # each process's own profile holds the work it did
            assert "count_inside" in profiles.functions_in(path), path
        html = (tmp_path / "cpu" / f"{mode}.html").read_text()
        assert "fonts.googleapis.com" not in html
        speedscope = json.loads((tmp_path / "cpu" / f"{mode}.speedscope.json").read_text())
        names = [p["name"] for p in speedscope["profiles"]]
        assert len(names) == 3 and any(n.startswith("driver") for n in names)
        n_frames = len(speedscope["shared"]["frames"])
        assert all(e["frame"] < n_frames for p in speedscope["profiles"] for e in p["events"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert "count_inside" in [h["function"] for h in results["profiles"]["task"]["hot"]]
    assert {p["mode"] for p in results["profiled"]} == {"serial", "task", "actor"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_profile_mem_captures_every_worker_and_actor(tmp_path, method):
    proc = poolx_cmd(
        "profile",
        "retrieve",
        "--size",
        "3",
        "--workers",
        "2",
        "--repeat",
        "1",
        "--modes",
        "task,actor",
        "--profile",
        "mem",
        "--start-method",
        method,
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    labels = {p["label"] for p in results["profiles"]["actor"]["processes"]}
    assert {"driver", "worker 0", "worker 1"} <= labels
    assert any(x.startswith("actor Tracker") for x in labels), labels
    for mode in ("task", "actor"):
        for p in results["profiles"][mode]["processes"]:
            assert "error" not in p, p
            assert p["peak"] > 0
            page = (tmp_path / p["flamegraph"]).read_text()
            assert "cdn.jsdelivr.net" not in page  # --no-web: opens offline
        assert results["profiles"][mode]["missing"] == []


def _allocate_and_die(n: int) -> None:
    block = bytearray(n)  # noqa: F841 (held while the process dies)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_memory_capture_survives_a_worker_killed_mid_run(tmp_path):
    hook = ProfilerHook("mem", str(tmp_path))
    with poolx.Executor.for_front_end(1, child_hook=hook) as ex:
        with pytest.raises(poolx.WorkerDiedError):
            ex.submit(_allocate_and_die, 30_000_000).result(timeout=30)
    rows = {r["label"]: r for r in profiles.mem_reports(tmp_path)}
    killed = [r for r in rows.values() if r.get("peak", 0) >= 30_000_000]
    assert killed, rows  # the killed worker's capture is readable and holds its 30 MB


def _nap(seconds: float, started: str | None = None) -> None:
    import pathlib
    import time

    if started is not None:
        pathlib.Path(started).touch()
    time.sleep(seconds)


@pytest.mark.timeout(60)
def test_a_cpu_profile_is_written_when_the_worker_is_terminated(tmp_path):
    import time

    hook = ProfilerHook("cpu", str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    started = tmp_path / "started"
    with poolx.Executor.for_front_end(1, child_hook=hook) as ex:
        ex.submit(_nap, 30, str(started))
        deadline = time.monotonic() + 30  # the worker imports this module first: slow under load
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a few samples inside _nap
        ex.terminate_workers()  # SIGTERM: the hook turns it into SystemExit, and writes
    files = list((tmp_path / "out").glob("worker-0-p*.pyisession"))
    assert len(files) == 1 and "_nap" in profiles.functions_in(files[0])


@pytest.mark.timeout(120)
def test_compare_two_runs(pi_run, tmp_path):
    out, proc = pi_run
    assert proc.returncode == 0, proc.stderr
    other = tmp_path / "b"
    other.mkdir()
    data = json.loads((out / "results.json").read_text())
    for r in data["rows"]:  # the same run, twice as slow
        r["wall"], r["wall_min"], r["wall_max"] = 2 * r["wall"], 2 * r["wall_min"], 2 * r["wall_max"]
    (other / "results.json").write_text(json.dumps(data))
    cmp = poolx_cmd("profile", "compare", str(out), str(other / "results.json"))
    assert cmp.returncode == 0, cmp.stderr
    assert "task x2" in cmp.stdout and "2.00x" in cmp.stdout and "slower" in cmp.stdout
    same = poolx_cmd("profile", "compare", str(out), str(out))
    assert "1.00x" in same.stdout and "within noise" in same.stdout
    bad = poolx_cmd("profile", "compare", str(out), str(tmp_path))
    assert bad.returncode == 2 and "results.json" in bad.stderr


@pytest.mark.timeout(60)
def test_command_line_errors_name_the_culprit(tmp_path):
    cases = [
        (["profile", "nope"], "unknown scenario 'nope'"),
        (["profile", "pi", "--modes", "serial,tasks"], "unknown value 'tasks'"),
        (["profile", "pi", "--workers", "two"], "argument --workers: takes comma-separated"),
        (["profile", "pi", "--backend", "gpu"], "unknown backend 'gpu'"),
        (["profile", "pi", "--repeat", "0"], "argument --repeat: must be at least 1"),
    ]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    cases.append((["profile", "pi", "--out", str(foreign)], "notes.txt"))
    for args, message in cases:
        proc = poolx_cmd(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.timeout(120)
def test_a_users_scenario_file_with_two_forms(tmp_path):
    path = tmp_path / "squares.py"
    path.write_text(
        textwrap.dedent('''
        """squares: a sum of squares."""
        SIZE = 200

        def square(x):
            return x * x

        def serial(size):
            return sum(square(i) for i in range(size))

        def tasks(executor, size):
            return sum(executor.map(square, range(size), chunksize=50))
    ''')
    )
    proc = poolx_cmd("profile", str(path), "--workers", "2", "--repeat", "1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no form for mode(s) actor" in proc.stderr
    proc = poolx_cmd(
        "profile",
        str(path),
        "--modes",
        "serial,task",
        "--workers",
        "2",
        "--repeat",
        "1",
        "--out",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "task x2" in proc.stdout


@pytest.mark.timeout(60)
def test_a_mode_whose_result_differs_fails_the_run(tmp_path):
    path = tmp_path / "wrong.py"
    path.write_text("SIZE = 3\ndef serial(size):\n    return 1\ndef tasks(executor, size):\n    return 2\n")
    proc = poolx_cmd(
        "profile",
        str(path),
        "--modes",
        "serial,task",
        "--workers",
        "1",
        "--repeat",
        "1",
        "--out",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 1
    assert "task x1 failed: the task result differs from the serial one: 2 != 1" in proc.stdout


@pytest.mark.timeout(60)
def test_info_names_the_environment():
    proc = poolx_cmd("info")
    assert proc.returncode == 0, proc.stderr
    for needle in ("python", "CPUs", "start method", "cloudpickle", "pyinstrument", "OMP_NUM_THREADS"):
        assert needle in proc.stdout, needle


@pytest.mark.timeout(300)
def test_the_built_wheel_runs_poolx_profile_pi_outside_the_checkout(tmp_path):
    # The scenarios and the benchmark suite live in profiling/ and benchmarks/;
    # the wheel must carry them, as data files (not packages) that the harness
    # finds through the distribution's RECORD: here the wheel is unzipped, not
    # installed, and RECORD points at its .data folder.
    import zipfile

    root = Path(__file__).resolve().parents[2]
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(root)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("poolx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = "-".join(wheel.name.split("-")[:2]) + ".data/data/share/poolx"  # poolx-VERSION.data/...
    for name in (
        f"{data}/profiling/pi.py",
        f"{data}/profiling/retrieve.py",
        "poolx/harness/profile.py",
        f"{data}/benchmarks/run.py",
        "poolx/py.typed",
    ):
        assert name in names, name
    assert not [n for n in names if n.startswith(("poolx/scenarios/", "poolx/benchmarks/", "profiling/",
                                                   "benchmarks/"))], names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), CI="true")
    where = subprocess.run(
        [sys.executable, "-c", "import poolx; print(poolx.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert where.stdout.startswith(str(tmp_path / "site")), where.stdout + where.stderr
    proc = poolx_cmd("profile", "pi", "--size", PI_SIZE, "--workers", "2", "--repeat", "1", "--out", "out",
                     cwd=tmp_path, PYTHONPATH=str(tmp_path / "site"))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "actor x2" in proc.stdout and (tmp_path / "out" / "report.html").exists()
