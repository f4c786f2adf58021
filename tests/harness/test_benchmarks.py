"""The benchmark suite runs (a smoke test: speed is measured in benchmarks/, not asserted here)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

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
