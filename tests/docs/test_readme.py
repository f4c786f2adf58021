"""The README's two commands stay true: CI runs the test command verbatim, and
the main job (``poolx profile pi``, tested in test_profile.py) and the demo work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_exactly_the_readme_test_command():
    commands = [b.strip() for b in _bash_blocks()]
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, f"{test_command!r} is not a line of .ci/run"


def test_the_readme_main_command_runs_the_profiling_harness_on_pi():
    commands = [b.strip() for b in _bash_blocks()]
    main = next(c for c in commands if "poolx profile" in c)
    assert main.endswith(".venv/bin/poolx profile pi")
    assert '".[examples,profile]"' in main  # numpy for pi; charts, profilers, progress bar


def test_the_output_shown_in_the_readme_is_the_harness_output():
    text = (ROOT / "README.md").read_text()
    shown = re.search(r"```text\n(poolx profile pi:.*?)```", text, re.S)
    assert shown, "the README shows the output of poolx profile pi"
    for needle in ("serial", "task x2", "actor x2", "where the worker time went", "verdicts"):
        assert needle in shown.group(1)


def test_poolx_demo_prints_both_times_and_the_speedup():
    pytest.importorskip("numpy")
    proc = subprocess.run(
        [sys.executable, "-m", "poolx", "demo", "--samples", "2000000", "--workers", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"serial\s+\d+\.\d+ s", out), out
    assert re.search(r"tasks \(processes, 2 workers\)\s+\d+\.\d+ s", out), out
    assert re.search(r"speedup\s+\d+\.\d+x", out), out
    estimates = re.findall(r"pi ~ (\d\.\d+)", out)
    assert len(estimates) == 2 and estimates[0] == estimates[1]
    assert abs(float(estimates[0]) - 3.14159) < 0.01


def test_poolx_without_arguments_explains_itself():
    proc = subprocess.run([sys.executable, "-m", "poolx"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    for command in ("profile", "bench", "info", "demo"):
        assert command in proc.stderr



def test_scenario_functions_travel_by_value(tmp_path, monkeypatch):
    # A worker started in a checkout imports the checkout's poolx, which has no
    # poolx.scenarios, even when the driver runs an installed wheel: a
    # scenario's functions, however the driver imported them, must not need
    # importing in the worker.
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "my_scenario.py").write_text("def work(x):\n    return x * 3\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    from poolx._serialization import dumps
    from poolx.harness.scenario import load_module as load

    data, _ = dumps(load("my_scenario").work)  # found by import, as a wheel's would be
    (tmp_path / "fn.pickle").write_bytes(data)
    proc = subprocess.run(  # an interpreter where my_scenario cannot be imported
        [sys.executable, "-c",
         f"import pickle; print(pickle.loads(open({str(tmp_path / 'fn.pickle')!r}, 'rb').read())(14))"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
