"""The benchmark suite runs (a smoke test: speed is measured in benchmarks/, not asserted here)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_run_writes_results(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--strict",
         "--cases", "startup,tasks,retrieve", "--impls", "poolx,multiprocessing.Pool",
         "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "| **poolx** |" in text and "multiprocessing.Pool" in text
    data = json.loads((tmp_path / "results.json").read_text())
    assert data  # every measurement is recorded


JOBLIB_CASES = "joblib_gridsearch_warm,joblib_gridsearch_first,joblib_tiny"


def run_suite(*argv, env=None):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), *argv],
                          capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)


@pytest.mark.timeout(300)
def test_quick_joblib_cases_write_their_own_results(tmp_path):
    pytest.importorskip("joblib")
    have_sklearn = importlib.util.find_spec("sklearn") is not None
    out = tmp_path / "RESULTS-joblib.md"
    proc = run_suite("--quick", "--strict", "--cases", JOBLIB_CASES, "--impls", "poolx,loky,threading",
                     "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results-joblib.json").read_text())
    assert {(r["case"], r["impl"]) for r in data["measurements"]} == {
        (c, i) for c in JOBLIB_CASES.split(",") for i in ("poolx", "loky", "threading")}
    for r in data["measurements"]:
        if r["case"] != "joblib_tiny" and not have_sklearn:
            assert r["status"] == "skipped" and "sklearn" in r["skip_reason"], r
        else:
            assert r["status"] == "ok" and r["unit"] == "s", r
    text = out.read_text()
    assert "| **poolx** |" in text and "÷ loky" in text and "## What poolx reached" not in text


@pytest.mark.timeout(300)
def test_joblib_cases_without_sklearn_are_skipped(tmp_path):
    pytest.importorskip("joblib")
    fake = tmp_path / "fake" / "sklearn"  # shadows scikit-learn in the measurement processes
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'sklearn'\", name='sklearn')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake.parent),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = run_suite("--quick", "--strict", "--cases", "joblib_gridsearch_first,joblib_tiny",
                     "--impls", "poolx", "--out", str(tmp_path / "RESULTS.md"), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = {r["case"]: r for r in json.loads((tmp_path / "results.json").read_text())["measurements"]}
    assert status["joblib_gridsearch_first"]["status"] == "skipped"
    assert "sklearn cannot be imported" in status["joblib_gridsearch_first"]["skip_reason"]
    assert status["joblib_tiny"]["status"] == "ok"
    assert "## Skipped" in (tmp_path / "RESULTS.md").read_text()


TRANSFER_CASES = "transfer_args,transfer_returns,transfer_put"
TRANSFER_IMPLS = ("poolx", "joblib", "multiprocessing.Pool[forkserver]")  # not ray: its cluster takes seconds


@pytest.mark.timeout(300)
def test_quick_transfer_cases_write_their_own_results(tmp_path):
    pytest.importorskip("numpy")
    have_joblib = importlib.util.find_spec("joblib") is not None
    out = tmp_path / "RESULTS-transfer.md"
    proc = run_suite("--quick", "--strict", "--cases", TRANSFER_CASES, "--impls", ",".join(TRANSFER_IMPLS),
                     "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results-transfer.json").read_text())
    assert {(r["case"], r["impl"]) for r in data["measurements"]} == {
        (c, i) for c in TRANSFER_CASES.split(",") for i in TRANSFER_IMPLS}
    for r in data["measurements"]:
        if r["impl"] == "joblib" and not have_joblib:
            assert r["status"] == "skipped" and "joblib" in r["skip_reason"], r
            continue
        assert r["status"] == "ok" and r["unit"] == "GB/s", r
        assert r["bytes"] == r["calls"] * r["array_bytes"] and len(r["calls_s"]) == r["calls"], r
        assert r["value"] >= r["wall_gb_s"] > 0 and r["baseline_s"] > 0 and r["warmup_s"] > 0, r
        # Only poolx (of these) has a put; the others get the array itself in transfer_put.
        assert r["put"] == (r["case"] == "transfer_put" and r["impl"] == "poolx"), r
    text = out.read_text()
    assert "| **poolx** |" in text and "poolx ÷ this" in text and "wall GB/s" in text
    assert "transfer: put once, its ref passed to tasks | >= 20 GB/s effective" in text
    assert "## What poolx reached" not in text


def test_transfer_bandwidth_is_clamped_where_the_calls_took_no_longer_than_the_sums():
    from poolx.harness import folders

    case = folders.load_file(ROOT / "benchmarks" / "_case.py", "poolx_bench_case")
    fine = case.transfer_figures(10**9, 0.5, 0.1)
    assert fine["value"] == pytest.approx(2.5) and fine["wall_gb_s"] == pytest.approx(2.0)
    assert not fine["clamped"] and fine["moved_s"] == pytest.approx(0.4)
    for baseline in (0.5, 0.6):  # wall - baseline <= 0: the floor, flagged
        clamped = case.transfer_figures(10**9, 0.5, baseline)
        assert clamped["clamped"] and clamped["moved_s"] == case.TRANSFER_FLOOR_S > 0
        assert clamped["value"] == pytest.approx(10**9 / case.TRANSFER_FLOOR_S / 1e9)


@pytest.mark.timeout(180)
@pytest.mark.skipif(not sys.platform.startswith("linux") or importlib.util.find_spec("numpy") is None,
                    reason="collectives need Linux; the benchmark needs numpy")
def test_collectives_benchmark_runs_and_checks_its_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "collectives.py"), "--quick", "--ranks", "2,3",
         "--json", str(tmp_path / "c.json"), "--markdown", str(tmp_path / "c.md")],
        capture_output=True, text=True, timeout=150, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "c.json").read_text())
    assert sorted(data["results"]) == ["2", "3"]
    for ways in data["results"].values():
        assert sorted(ways) == ["driver", "poolx.collective"]
        assert all(w["gbps"] > 0 and len(w["runs"]) == 1 for w in ways.values())
    assert "| 3 | **poolx.collective** |" in (tmp_path / "c.md").read_text()


# -- issue 23: the goal table's cases, the floors, --busy, the scaling sweep ------------------

ISSUE_CASES = "startup,startup_next,roundtrip,map_2k,map_2m"
FLOOR_IMPLS = ("floor:python-pass", "floor:import-poolx", "floor:pipe-bytes", "floor:pipe-pickled")


@pytest.mark.timeout(300)
def test_quick_issue_cases_measure_poolx_its_peer_and_the_floors_in_one_run(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = run_suite("--quick", "--strict", "--cases", ISSUE_CASES,
                     "--impls", ",".join(["poolx", "multiprocessing.Pool", *FLOOR_IMPLS]), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    ran = {(r["case"], r["impl"]): r for r in data["measurements"]}
    # Each floor is a row of the case it bounds only; the pools run every case.
    expected = {(c, i) for c in ISSUE_CASES.split(",") for i in ("poolx", "multiprocessing.Pool")}
    expected |= {("startup", "floor:python-pass"), ("startup", "floor:import-poolx"),
                 ("roundtrip", "floor:pipe-bytes"), ("roundtrip", "floor:pipe-pickled")}
    assert set(ran) == expected
    assert all(r["status"] == "ok" for r in ran.values()), [r for r in ran.values() if r["status"] != "ok"]
    for floor in ("floor:pipe-bytes", "floor:pipe-pickled"):
        r = ran[("roundtrip", floor)]
        assert r["unit"] == "us" and 0 < r["min_us"] <= r["value"] <= r["p99_us"] <= r["max_us"], r
    for floor in ("floor:python-pass", "floor:import-poolx"):
        r = ran[("startup", floor)]
        assert r["unit"] == "ms" and r["value"] == sorted(r["runs_ms"])[len(r["runs_ms"]) // 2], r
    nxt = ran[("startup_next", "poolx")]
    assert nxt["unit"] == "ms" and nxt["value"] > 0 and nxt["first_ms"] > 0
    assert ran[("map_2m", "poolx")]["n"] == data["config"]["sizes"]["map_2m"]
    goals = {g["case"]: g for g in data["issue_goals"]}
    assert set(goals) == set(ISSUE_CASES.split(","))
    assert goals["map_2k"]["peer"] == "multiprocessing.Pool" and goals["map_2k"]["ratio"] > 0
    floors = {case: [f.split()[0] for f in g["floors"]] for case, g in goals.items()}
    assert floors["roundtrip"] == ["floor:pipe-bytes", "floor:pipe-pickled"]
    assert floors["startup_next"] == floors["startup"] == ["floor:python-pass", "floor:import-poolx"]
    text = out.read_text()
    assert "## Issue 23's goals" in text and "| goal | poolx | best peer (same run) | ratio |" in text
    # A floor is never the "best peer" of the old goal table either.
    assert all("floor:" not in g["measured"] for g in data["goals"])


def test_a_floor_refuses_the_cases_it_does_not_bound():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_case.py"), "tasks", "floor:pipe-bytes",
                           "--quick"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert "floor:pipe-bytes is a floor of roundtrip alone, not of tasks" in proc.stderr


@pytest.mark.timeout(300)
def test_quick_issue_transfer_forms_report_wall_bandwidth(tmp_path):
    pytest.importorskip("numpy")
    pytest.importorskip("joblib")
    cases = "transfer_args_wall,transfer_returns_fresh"
    proc = run_suite("--quick", "--strict", "--cases", cases, "--impls", "poolx,joblib",
                     "--out", str(tmp_path / "RESULTS.md"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert {(r["case"], r["impl"]) for r in data["measurements"]} == {
        (c, i) for c in cases.split(",") for i in ("poolx", "joblib")}
    for r in data["measurements"]:
        assert r["status"] == "ok" and r["unit"] == "GB/s", r
        # The issue's figure is the wall time's, the sums included: no baseline taken off.
        assert r["value"] == r["wall_gb_s"] <= r["effective_gb_s"] and not r["put"], r
    joblib_args = next(r for r in data["measurements"]
                       if r["case"] == "transfer_args_wall" and r["impl"] == "joblib")
    assert "with joblib.Parallel" in joblib_args["config"]  # one Parallel kept open: joblib reuses its dump
    goals = {g["case"]: g for g in data["issue_goals"]}
    assert goals["transfer_args_wall"]["peer"] == "joblib" and goals["transfer_args_wall"]["ratio"] > 0
    fresh = goals["transfer_returns_fresh"]
    assert fresh["peer"] == "ray" and fresh["ratio"] is None  # Ray was not run


def test_issue_goals_judge_rates_times_and_absolute_targets():
    from poolx.harness import folders

    suite = folders.load_file(ROOT / "benchmarks" / "run.py", "poolx_bench_run_goals")

    def row(median, method="forkserver"):
        return {"median": median, "start_method": method}

    summary = {
        "tasks": {"poolx": row(90_000), "multiprocessing.Pool": row(30_000), "loky": row(10_000)},
        "roundtrip": {"poolx": row(60.0), "multiprocessing.Pool": row(150.0), "floor:pipe-bytes": row(16.0)},
        "startup": {"poolx": row(25.0), "loky": row(140.0), "floor:python-pass": row(26.0)},
        "startup_next": {"poolx": row(20.0, "fork")},
        "actor_pipelined": {"poolx": row(60_000), "ray": row(4_000)},
    }
    goals = {g["case"]: g for g in suite.issue_goals(summary)}
    assert set(goals) == set(summary)
    assert goals["tasks"]["peer"] == "multiprocessing.Pool" and goals["tasks"]["ratio"] == 3.0
    assert goals["tasks"]["reached"] is True
    assert goals["roundtrip"]["ratio"] == pytest.approx(0.4) and goals["roundtrip"]["reached"] is True
    assert goals["roundtrip"]["floors"] == ["floor:pipe-bytes 16.0"]  # a floor is not the best peer
    assert goals["startup"]["reached"] is True and goals["startup"]["peer"] == "loky"
    assert goals["startup_next"]["reached"] is False  # under 30 ms, but not with forkserver
    assert goals["actor_pipelined"]["ratio"] == 15.0 and goals["actor_pipelined"]["reached"] is False  # 20x
    text = "\n".join(suite.issue_goal_lines(suite.issue_goals(summary)))
    assert "| 10,000 no-op tasks submitted one by one, then gathered | 90,000 tasks/s |" in text
    assert suite.issue_goal_lines([]) == []
    # --cases issue23 names every row of the table (and nothing twice with the cases beside it).
    assert {g[0] for g in suite.ISSUE_GOALS} == set(suite.CASE_GROUPS["issue23"])
    assert suite.parse_args(["--cases", "pi,issue23"]).cases == [
        c for c in suite.CASE_IMPLS if c in {"pi", *suite.CASE_GROUPS["issue23"]}]


def _children_of(pid):
    return [p for p in psutil.process_iter(["ppid", "cmdline"]) if p.info["ppid"] == pid]


def _burners_of(pid):
    return [p for p in _children_of(pid) if "os.getppid() == parent" in " ".join(p.info["cmdline"] or [])]


@contextlib.contextmanager
def busy_run(tmp_path, busy):
    """run.py --busy ``busy`` on three repeats of roundtrip: (its Popen, the burners it started).

    Whatever the test asserts, the run and its burners are ended and reaped on the way out.
    """
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--busy", str(busy),
                             "--cases", "roundtrip", "--impls", "poolx", "--repeats", "3",
                             "--out", str(tmp_path / "RESULTS.md")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    burners = []
    try:
        deadline = time.monotonic() + 60
        while len(burners) < busy and time.monotonic() < deadline and proc.poll() is None:
            burners = _burners_of(proc.pid)
            time.sleep(0.05)
        yield proc, burners
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        for b in burners:
            with contextlib.suppress(psutil.NoSuchProcess):
                b.kill()
        _gone(burners)


def _burns(process, within=30.0):
    """Whether ``process`` uses CPU time within ``within`` seconds (on a loaded machine, a little)."""
    start = sum(process.cpu_times()[:2])
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if sum(process.cpu_times()[:2]) > start:
            return True
    return False


def _gone(processes, within=15.0):
    _ended, alive = psutil.wait_procs(processes, timeout=within)
    return not alive


@pytest.mark.timeout(300)
def test_busy_burners_run_for_the_whole_run_are_recorded_and_killed_at_the_end(tmp_path):
    with busy_run(tmp_path, 2) as (proc, burners):
        assert len(burners) == 2, "run.py --busy 2 did not start 2 burner processes"
        assert all(_burns(b) for b in burners)  # each spends CPU (how much depends on the machine's load)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        assert _gone(burners)
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# poolx benchmark results (busy machine: 2 CPU-bound processes beside the "
                           "benchmark)")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["config"]["busy"] == 2 and data["environment"]["busy"].startswith("2 CPU-bound process")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_busy_run_interrupted_leaves_no_burner_nor_measurement_behind(tmp_path, how):
    members = []
    try:
        with busy_run(tmp_path, 2) as (proc, burners):
            assert len(burners) == 2
            deadline = time.monotonic() + 60  # until a measurement (a session of its own) is running
            measurements = []
            while not measurements and time.monotonic() < deadline:
                measurements = [p for p in _children_of(proc.pid) if p not in burners]
                time.sleep(0.02)
            assert measurements, "no measurement started"
            members = [p for p in psutil.process_iter() if _sid(p) == measurements[0].pid]
            proc.send_signal(getattr(signal, how))
            proc.communicate(timeout=60)
            # SIGKILL gives run.py no chance: the burners notice their parent is gone by themselves.
            assert _gone(burners), f"burners left after {how}"
            if how != "SIGKILL":  # SIGKILL: the measurement, with no run.py, is ended below
                assert _gone(members), f"measurement processes left after {how}"
    finally:
        for p in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _gone(members)


def _sid(p):
    try:
        return os.getsid(p.pid)
    except OSError:
        return None


@pytest.mark.timeout(240)
def test_quick_scaling_sweep_writes_its_tables_charts_and_json(tmp_path):
    pytest.importorskip("numpy")
    have_mpl = importlib.util.find_spec("matplotlib") is not None
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--quick",
                           "--impls", "poolx,multiprocessing.Pool", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=200, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results-scaling.json").read_text())
    sizes = data["sizes"]
    expected = {("workers", i, v) for i in ("poolx", "multiprocessing.Pool") for v in sizes["workers"]}
    expected |= {("pending", i, v) for i in ("poolx", "multiprocessing.Pool") for v in sizes["pending"]}
    expected |= {("args", i, v) for i in ("poolx", "multiprocessing.Pool") for v in sizes["args"]}
    assert {(r["sweep"], r["impl"], r["value"]) for r in data["records"]} == expected
    assert all(r["status"] == "ok" for r in data["records"]), data["records"]
    assert max(sizes["workers"]) > data["environment"]["usable_cpus"]  # oversubscribed
    for r in data["records"]:
        if r["sweep"] == "pending":
            assert r["rss_after"] > r["rss_before"] and r["bytes_per_task"] > 0, r
        if r["sweep"] == "args":
            assert r["gb_per_s"] == pytest.approx(r["bytes"] / r["call_s"] / 1e9), r
    text = (tmp_path / "RESULTS-scaling.md").read_text()
    assert "## Workers" in text and "## Pending tasks" in text and "## Argument size" in text
    charts = ["scaling-workers.png", "scaling-pending.png", "scaling-args.png"]
    if have_mpl:
        for name in charts:
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({name})" in text
