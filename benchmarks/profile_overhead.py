"""What `poolx profile run` costs a program: its wall time plain and profiled.

    python benchmarks/profile_overhead.py [--quick] [--repeats 5] [--programs a,b]
                                          [--ways python,none,cpu,mem] [--wait-idle S]
                                          [--out benchmarks/RESULTS-profile.md]

The programs are the unchanged ones of profiling/programs/.  Each runs, in a
fresh process of its own, in these ways:

* ``python``: the plain interpreter, ``python prog.py args``.  For a program
  on poolx's own API (ray_style) this is the baseline.  For a stdlib program
  (mp_pool, futures_noguard, sklearn_search) it runs the stdlib's own pool
  (or loky), another engine: its row is a reference, not a baseline;
* ``none``: ``poolx profile run --profile none`` (with ``--drop-in`` for the
  stdlib programs): the harness, the observer and the report, no profiler.
  For a stdlib program this is the baseline: the same program on the same
  engine (poolx), unprofiled;
* ``cpu``: ``--profile cpu``, pyinstrument in the driver and in every worker;
* ``mem``: ``--profile mem``, memray in the driver and in every worker.

Two times per run: the *command* wall time (from starting the process to its
exit, what the user waits for: interpreter start-up, imports, the program,
and for the harness the report), and the *program* wall time (the harness's
own measure of the program, from results.json: from running the script to its
end, without the harness's start-up or the report).  The ratios are medians
over medians: each way's median against the program's baseline (command wall),
and the profiled ways against ``none`` (program wall: the profiler's own cost,
the harness held constant).

One warm-up round (not counted), then ``--repeats`` rounds; each round runs
every program once in every way, the ways rotated from round to round, so a
slow spell of the shared machine is spread over all of them.  Each run's
process is a session of its own; other processes' CPU during the run is read
from /proc (``foreign_cpu_s``), and ``--wait-idle S`` waits up to S seconds
for a quiet moment before each run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import (  # the suite's own, beside this script
    cpu_snapshot,
    foreign_cpu_seconds,
    git_revision,
    kill_group,
    load_average,
    reap_group,
    rotated,
    usable_cpus,
    version_of,
    wait_until_idle,
)

import poolx

HERE = Path(__file__).resolve().parent
PROGRAMS_DIR = HERE.parent / "profiling" / "programs"

# name: (its own arguments, the same for --quick, whether it is a stdlib program
# that needs --drop-in).  The defaults take a few seconds each on 2 cores; --quick
# sizes take well under a second of work, for a smoke test.
PROGRAMS: dict[str, tuple[list[str], list[str], bool]] = {
    "mp_pool": ([], ["100000", "8"], True),
    "futures_noguard": ([], ["6"], True),
    "sklearn_search": ([], ["400"], True),
    "ray_style": ([], ["4"], False),
}
WAYS = ("python", "none", "cpu", "mem")
# Seconds one run may take before it is killed and recorded as failed: a
# program takes a few seconds; the shared machine can make that many times more.
RUN_TIMEOUT_S = 300


def command(program: str, way: str, args: list[str], out: Path) -> list[str]:
    script = str(PROGRAMS_DIR / f"{program}.py")
    if way == "python":
        return [sys.executable, script, *args]
    dropin = ["--drop-in"] if PROGRAMS[program][2] else []
    return [sys.executable, "-m", "poolx", "profile", "run", "--no-live", "--profile", way,
            *dropin, "--out", str(out), script, *args]


def run_once(program: str, way: str, args: list[str], scratch: Path) -> dict:
    """One run in a session of its own: its command and program wall times, others' CPU."""
    out = scratch / f"{program}-{way}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = command(program, way, args, out)
    env = dict(os.environ, CI="true")  # plain lines, no live view or progress bar
    before = cpu_snapshot(exclude_session=None)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.communicate()
        return {"program": program, "way": way, "ok": False, "error": f"timed out after {RUN_TIMEOUT_S} s"}
    wall = time.perf_counter() - start
    foreign = foreign_cpu_seconds(before, cpu_snapshot(exclude_session=proc.pid))
    left = reap_group(proc.pid)  # a run must leave no process behind to disturb the next
    record = {"program": program, "way": way, "ok": proc.returncode == 0 and not left,
              "command_wall_s": round(wall, 4), "foreign_cpu_s": round(foreign, 3)}
    if left:
        record["error"] = f"left {left} process(es) running after it exited (killed)"
    if proc.returncode != 0:
        record["error"] = f"exit code {proc.returncode}: {stderr.strip()[-2000:]}"
    if way != "python" and (out / "results.json").is_file():
        results = json.loads((out / "results.json").read_text())
        record["program_wall_s"] = results["program"]["wall"]
        record["tasks"] = results["summary"]["tasks"]
    record["stdout"] = stdout.strip()[-200:]
    shutil.rmtree(out, ignore_errors=True)
    return record


def run_all(programs: list[str], ways: list[str], repeats: int, quick: bool, wait_idle: float) -> list[dict]:
    records = []
    scratch = Path(tempfile.mkdtemp(prefix="poolx-profile-overhead-"))
    try:
        for repeat in range(repeats + 1):  # round 0 is the warm-up
            for program in programs:
                args = PROGRAMS[program][1] if quick else PROGRAMS[program][0]
                for way in rotated(list(ways), repeat):
                    waited = wait_until_idle(wait_idle) if wait_idle else 0.0
                    record = run_once(program, way, args, scratch)
                    record.update(repeat=repeat, waited_for_idle_s=round(waited, 1))
                    records.append(record)
                    shown = f"{record['command_wall_s']:.2f} s" if "command_wall_s" in record else "-"
                    print(f"round {repeat}{' (warm-up)' if repeat == 0 else ''}  {program:16s} {way:7s} "
                          f"{shown}{'' if record['ok'] else '  FAILED: ' + record['error'][:200]}",
                          flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return records


def summarize(records: list[dict], programs: list[str], ways: list[str]) -> dict:
    """Per program and way: medians, ranges and the ratios against the baseline and against none."""
    out: dict[str, dict] = {}
    for program in programs:
        rows: dict[str, dict] = {}
        for way in ways:
            runs = [r for r in records if r["program"] == program and r["way"] == way and r["repeat"] > 0]
            good = [r for r in runs if r["ok"]]
            row: dict = {"runs": len(runs), "failed": len(runs) - len(good)}
            if good:
                walls = [r["command_wall_s"] for r in good]
                row.update(command_median_s=statistics.median(walls), command_min_s=min(walls),
                           command_max_s=max(walls),
                           foreign_cores=statistics.median(r["foreign_cpu_s"] / r["command_wall_s"]
                                                           for r in good))
                inner = [r["program_wall_s"] for r in good if "program_wall_s" in r]
                if inner:
                    row.update(program_median_s=statistics.median(inner), program_min_s=min(inner),
                               program_max_s=max(inner))
            rows[way] = row
        base = "none" if PROGRAMS[program][2] else "python"
        for row in rows.values():
            if "command_median_s" in row and "command_median_s" in rows.get(base, {}):
                row["vs_baseline"] = row["command_median_s"] / rows[base]["command_median_s"]
            if "program_median_s" in row and "program_median_s" in rows.get("none", {}):
                row["vs_none"] = row["program_median_s"] / rows["none"]["program_median_s"]
        out[program] = {"baseline": base, "ways": rows}
    return out


def _seconds(row: dict, kind: str) -> str:
    if f"{kind}_median_s" not in row:
        return "-"
    return (f"{row[f'{kind}_median_s']:.2f} s ({row[f'{kind}_min_s']:.2f}..{row[f'{kind}_max_s']:.2f})")


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        "# What `poolx profile run` costs a program: wall time plain and profiled",
        "",
        f"Generated by `{meta['command']}` in {meta['elapsed_s']:.0f} s: a warm-up round, then "
        f"{meta['repeats']} interleaved round(s); medians, with the fastest and slowest run in brackets. "
        f"Every number comes from `{meta['json']}` beside this file; rerun the command to refresh both. "
        "How it measures: the docstring of `benchmarks/profile_overhead.py`.",
        "",
        f"{meta['usable_cpus']} usable CPUs ({meta['cpu_count']} in all); Python {meta['python']}; "
        f"{meta['platform']}; poolx {meta['poolx']} (git {meta['git']}); "
        f"pyinstrument {meta['pyinstrument']}, memray {meta['memray']}, "
        f"scikit-learn {meta['scikit-learn']}; {meta['date']}; load average "
        f"{meta['load_start']} at the start, {meta['load_end']} at the end.",
        "",
        "*command* is the whole command's wall time (interpreter, imports, program, and for the harness "
        "the report); *program* is the harness's own measure of the program (results.json's "
        "`program.wall`). *vs baseline* divides the command medians by the baseline's: the plain "
        "interpreter for a program on poolx's API, `--profile none` (with `--drop-in`) for a stdlib "
        "program, whose `python` row runs the stdlib's own pool and is only a reference. *vs none* "
        "divides the program medians by `--profile none`'s: the profiler's own cost.",
        "",
        "| program | way | command | program | vs baseline | vs none | others' CPU | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for program, entry in summary.items():
        for way, row in entry["ways"].items():
            label = {"python": "`python prog.py`", "none": "`--profile none`", "cpu": "`--profile cpu`",
                     "mem": "`--profile mem`"}[way]
            if way == entry["baseline"]:
                label += " (baseline)"
            elif way == "python":
                label += " (the stdlib's pool: reference)"
            ratio = f"{row['vs_baseline']:.2f}x" if "vs_baseline" in row else "-"
            vs_none = f"{row['vs_none']:.2f}x" if "vs_none" in row else "-"
            cores = f"{row['foreign_cores']:.2f}" if "foreign_cores" in row else "-"
            lines.append(f"| {program} | {label} | {_seconds(row, 'command')} | {_seconds(row, 'program')} | "
                         f"{ratio} | {vs_none} | {cores} | {row['failed']} of {row['runs']} |")
    return "\n".join(lines) + "\n"


def _meta(argv: list[str], args: argparse.Namespace, elapsed: float, load_start: str) -> dict:
    def fmt(load: tuple) -> str:
        return " ".join(f"{x:.2f}" for x in load) or "n/a"

    return {"command": "python benchmarks/profile_overhead.py " + " ".join(argv), "elapsed_s": elapsed,
            "repeats": args.repeats, "json": args.json.name, "usable_cpus": usable_cpus(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "poolx": poolx.__version__, "git": git_revision(), "pyinstrument": version_of("pyinstrument"),
            "memray": version_of("memray"), "scikit-learn": version_of("scikit-learn"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_start": load_start, "load_end": fmt(load_average())}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--programs", default=",".join(PROGRAMS), help=f"of {', '.join(PROGRAMS)}")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"of {', '.join(WAYS)}")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS-profile.md",
                        help="the markdown; results-profile.json goes beside it")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    programs = [p for p in args.programs.split(",") if p]
    ways = [w for w in args.ways.split(",") if w]
    unknown = sorted(set(programs) - set(PROGRAMS)) + sorted(set(ways) - set(WAYS))
    if unknown or args.repeats < 1:
        parser.error(f"unknown program or way: {', '.join(unknown)}" if unknown else "--repeats must be >= 1")
    args.json = args.out.with_name("results-profile.json" if args.out.name == "RESULTS-profile.md"
                                   else args.out.stem + ".json")
    load_start = " ".join(f"{x:.2f}" for x in load_average()) or "n/a"
    t0 = time.perf_counter()
    records = run_all(programs, ways, args.repeats, args.quick, args.wait_idle)
    summary = summarize(records, programs, ways)
    meta = _meta(argv, args, time.perf_counter() - t0, load_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(summary, meta))
    args.json.write_text(json.dumps({"meta": meta, "summary": summary, "records": records}, indent=1) + "\n")
    print()
    print(args.out.read_text())
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
