"""``poolx bench`` (poolx.harness.bench): listing, a tiny real run, and the usage errors.

Speed is measured in benchmarks/, not asserted here: the real run is the
smallest case (startup) with one repeat.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from poolx.harness import bench

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="poolx bench")
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(list(argv)))


@pytest.mark.timeout(20)
def test_list_names_every_case_and_peer(capsys, monkeypatch):
    real = bench.installed
    monkeypatch.setattr(bench, "installed", lambda module: module != "ray" and real(module))
    assert run_bench("--list") == 0
    out = capsys.readouterr().out
    suite = bench.load_suite()
    for name in [*suite.CASE_IMPLS, *suite.IMPLS]:
        assert name in out
    ray_line = next(line for line in out.splitlines() if line.strip().startswith("ray "))
    assert "not available" in ray_line and "pip install ray" in ray_line


@pytest.mark.timeout(60)
def test_tiny_run_prints_ratios_and_writes_results(tmp_path, capsys, monkeypatch):
    real = bench.installed
    monkeypatch.setattr(bench, "installed", lambda module: module != "ray" and real(module))
    out_dir = tmp_path / "out"
    code = run_bench("--cases", "startup", "--peers", "poolx,loky,ray", "--repeats", "1",
                     "--out", str(out_dir))
    out = capsys.readouterr().out
    assert code == 0, out
    # ray is asked for but "not installed": one line with how to install it, and no ray row.
    assert "skipping ray: ray is not installed (pip install ray)" in out
    assert re.search(r"\d+ usable CPU cores?", out)
    assert "poolx median / this peer's median" in out
    row = next(line for line in out.splitlines() if line.startswith("startup "))
    assert re.search(r"\[\d[\d.e+-]*x\]", row), row  # loky's cell carries poolx / loky
    data = json.loads((out_dir / "results.json").read_text())
    entry = data["side_by_side"]["startup"]
    assert set(entry["medians"]) == {"poolx", "loky"}
    assert entry["poolx_over"]["loky"] == pytest.approx(entry["medians"]["poolx"] / entry["medians"]["loky"])
    assert data["config"]["impls"] == ["poolx", "loky"]
    text = (out_dir / "results.md").read_text()
    assert "## Side by side" in text and "| **poolx** | loky |" in text


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("argv", "named", "valid"), [
    (["--cases", "startup,nosuchcase"], "unknown case: nosuchcase", "valid cases: startup, tasks"),
    (["--peers", "poolx,nosuchpeer"], "unknown peer: nosuchpeer", "valid peers: poolx, poolx[fork]"),
])
def test_unknown_case_or_peer_is_named_with_the_valid_ones(capsys, tmp_path, monkeypatch, argv, named, valid):
    monkeypatch.chdir(tmp_path)
    assert run_bench(*argv) == 2
    err = capsys.readouterr().err
    assert named in err and valid in err
    assert not list(tmp_path.iterdir())  # nothing ran, no folder made


@pytest.mark.timeout(20)
def test_never_writes_into_the_suite_folder(capsys):
    suite = bench.load_suite()
    assert run_bench("--cases", "startup", "--peers", "poolx", "--out", str(suite.HERE)) == 2
    assert "never overwrites its RESULTS.md" in capsys.readouterr().err
