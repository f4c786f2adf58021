"""The benchmark suite runs (a smoke test: speed is measured in benchmarks/, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
