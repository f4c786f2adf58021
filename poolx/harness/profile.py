"""``poolx profile``: one scenario, serially, as tasks and as actors, compared.

The plan of a run:

1. warm-up: each mode once at the largest worker count (not timed: the first
   run pays for importing and for starting the forkserver);
2. timing: ``--repeat`` rounds; each round runs every mode at every worker
   count once, unprofiled (rounds interleave configurations, so a slow spell
   of the machine spreads over all of them);
3. profiling (``--profile cpu`` or ``mem``): each mode once more at the
   largest worker count with the profiler in the driver and in every worker
   and actor process; its slowdown against the timing median is reported.

Then the terminal summary, and the files in ``--out``.

On a cluster backend (``--backend dask`` or ``ray``) each task or actor run
starts a fresh ``Executor`` too: a local cluster, or a connection to the one
at ``--address``.  The profilers then run around every task and actor call on
the cluster's workers (``_hook.ProfilerHook``); their files are read from the
``--out`` folder, so only workers that share this machine's filesystem leave
profiles, and the report names the workers that left none.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..backends import get_backend
from . import analyze, env, measure, profiles, report
from ._args import positive_int, positive_ints
from ._hook import ProfilerHook
from .scenario import MODES, Scenario, load

PROFILES = ("none", "cpu", "mem", "trace")
SCHEMA = "poolx.profile/1"
#: What a profile folder holds (a rerun into the same folder replaces them).
OWN_FILES = {"report.html", "results.json", "trace.json", "cpu", "mem"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="a built-in scenario (pi, retrieve), a .py file, or module[:attr]")
    p.add_argument(
        "--modes",
        default="serial,task,actor",
        help="comma-separated, from serial, task, actor (default: all three)",
    )
    p.add_argument(
        "--workers",
        type=positive_ints,
        default=None,
        help="comma-separated worker counts (default: the scenario's, or 1 and the usable CPUs)",
    )
    p.add_argument("--repeat", type=positive_int, default=3,
                   help="timed runs per mode and worker count (default 3)")
    p.add_argument(
        "--profile",
        default="none",
        choices=PROFILES,
        help="cpu: a sampling CPU profiler (saved as pyinstrument sessions); mem: memray; "
        "trace: the timeline of every run; none: timings only (the timeline of each median run is "
        "always written)",
    )
    p.add_argument(
        "--backend",
        default="processes",
        help="processes (default), threads, serial, dask, ray (the last two need Dask or Ray: "
        "poolx's dask and ray extras)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="dask or ray: the cluster to run on (a scheduler's tcp://host:8786, ray://host:10001 or "
        "'auto'); default: a local cluster started for each run",
    )
    p.add_argument(
        "--start-method",
        default=None,
        choices=("fork", "forkserver", "spawn"),
        help="for the processes backend (default: poolx's, forkserver on Linux)",
    )
    p.add_argument("--size", type=positive_int, default=None,
                   help="input size (default: the scenario's SIZE)")
    p.add_argument("--out", default=None, help="folder for the files (default: ./poolx-profile-SCENARIO)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_list(text: str, what: str, valid: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{what} is empty")
    if valid is not None:
        for item in items:
            if item not in valid:
                raise ValueError(f"--{what}: unknown value {item!r}; choose from {', '.join(valid)}")
    return items


def run(args: argparse.Namespace) -> int:
    try:
        config = _configure(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"poolx profile: error: {exc}", file=sys.stderr)
        return 2
    scenario: Scenario = config["scenario"]
    out: Path = config["out"]
    environment = env.collect()
    print(report.env_header(scenario, config, environment))
    try:
        runs, profiled, profiles = _execute(scenario, config)
    except measure.ExecutorError as exc:
        print(f"poolx profile: error: {exc}", file=sys.stderr)
        return 2
    rows = analyze.summarize(runs)
    findings = analyze.verdicts(rows, profiled)
    results = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["poolx", "profile", *sys.argv[2:]])
        if sys.argv[1:2] == ["profile"]
        else f"poolx profile {scenario.name}",
        "env": environment,
        "scenario": {"name": scenario.name, "doc": scenario.doc, "size": config["size"]},
        "config": {
            k: config[k]
            for k in ("modes", "workers", "repeat", "profile", "backend", "address", "start_method")
        },
        "rows": [report.row_dict(r) for r in rows],
        "verdicts": findings,
        "profiled": [
            {"mode": m, "workers": w, "wall": wall, "timing_median": t} for m, w, wall, t in profiled
        ],
        "profiles": profiles,
        "runs": [report.run_dict(r) for r in runs],
    }
    trace_runs = [r for r in runs if r.repeat >= 0 and r.profile == "none"]
    if config["profile"] != "trace":
        trace_runs = [
            analyze.median_run([r for r in trace_runs if (r.mode, r.workers) == (row.mode, row.workers)])
            for row in rows
        ]
    (out / "trace.json").write_text(json.dumps(report.trace(trace_runs)), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    (out / "report.html").write_text(report.html(results, rows, runs), encoding="utf-8")
    print(report.terminal(rows, findings, profiles, out))
    failed = any(r.errors for r in rows)
    return 1 if failed else 0


def _configure(args: argparse.Namespace) -> dict[str, Any]:
    scenario = load(args.scenario)
    modes = parse_list(args.modes, "modes", MODES)
    missing = [m for m in modes if not scenario.has(m)]
    if missing:
        raise ValueError(
            f"scenario {scenario.name!r} has no form for mode(s) {', '.join(missing)}; drop them from --modes"
        )
    # (--workers, --repeat and --size were checked by argparse: _args.py)
    workers = args.workers or sorted(set(scenario.workers or (1, env.usable_cpus())))
    size = args.size if args.size is not None else scenario.size
    if size < 1:
        raise ValueError(f"scenario {scenario.name!r}: its SIZE must be at least 1, not {size}; "
                         "fix SIZE or pass --size")
    address = getattr(args, "address", None)
    if args.backend in CLUSTER_BACKENDS:
        require_engine(args.backend)  # (before the backend's module is imported)
    backend_cls = get_backend(args.backend)  # ValueError names the known ones
    if args.backend in CLUSTER_BACKENDS:
        if args.start_method is not None:
            raise ValueError(f"--start-method is for the processes backend; the {args.backend} "
                             "cluster starts its own worker processes")
    elif address is not None:
        raise ValueError(f"--address is the cluster to run on, for --backend dask or ray; the "
                         f"{args.backend!r} backend runs on this machine")
    if args.profile in ("cpu", "mem"):
        require_profiler(args.profile)
        if address is not None:
            print(
                f"note: the {args.profile} profiles come only from the cluster's workers that share this "
                "machine's filesystem (the report names those that left none)",
                file=sys.stderr,
            )
        if not backend_cls.uses_processes:
            print(
                f"note: the {args.backend!r} backend runs tasks in this process: the "
                f"{args.profile} profile covers the driver only",
                file=sys.stderr,
            )
    out = _out_folder(args.out, scenario.name)
    return {
        "scenario": scenario,
        "modes": modes,
        "workers": workers,
        "repeat": args.repeat,
        "profile": args.profile,
        "backend": args.backend,
        "address": address,
        "start_method": args.start_method,
        "size": size,
        "out": out,
        "progress": not args.no_progress,
    }


def _out_folder(given: str | None, scenario: str) -> Path:
    """The folder for the files of ``poolx profile`` (``--out``), made ready (see ``prepare_out``)."""
    out = Path(given or f"poolx-profile-{Path(scenario).name.replace(':', '-')}")
    prepare_out(out, f"--out {out}")
    return out


def prepare_out(out: Path, named: str, runs: re.Pattern[str] | None = None) -> None:
    """Make ``out`` ready for a profile's files; old profiles in it are removed.

    Refused (ValueError, naming the folder as the user gave it: ``named``, such
    as ``--out x`` or ``out='x'``) when it is a file, holds files a profile did
    not write (nothing of the user's is overwritten), or cannot be made.
    ``runs``: the names of the per-run subfolders a what-if writes, also
    removed (a stale one would be read as this run's).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"{named} is a file, not a folder: a profile writes report.html, results.json and "
            "trace.json into a folder; give a folder's name (a new one is made)"
        )
    if out.exists():
        stale = [p for p in out.iterdir() if p.is_dir() and (
            p.name in ("cpu", "mem") or (runs is not None and runs.fullmatch(p.name)))]
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN_FILES and p not in stale)
        if foreign:
            raise ValueError(
                f"{named} exists and holds files a profile did not write "
                f"({', '.join(foreign[:3])}); choose another folder"
            )
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, no permission, a read-only disk
        raise ValueError(f"{named}: cannot make the folder ({exc.strerror or exc}); give another "
                         "folder") from None


#: The cluster backends: the module each needs, and the message when it is missing
#: (as the backends say it, before any run starts).
CLUSTER_BACKENDS = {
    "dask": ("distributed", "--backend dask needs Dask's distributed scheduler: pip install "
             "'dask[distributed]' (once poolx is published: pip install 'poolx[dask]')"),
    "ray": ("ray", "--backend ray needs Ray: pip install ray (once poolx is published: "
            "pip install 'poolx[ray]')"),
}


def require_engine(backend: str) -> None:
    import importlib.util

    module, message = CLUSTER_BACKENDS[backend]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ImportError(message)


def require_profiler(kind: str, asked: str | None = None, instead: str = "") -> None:
    """ImportError, naming the option ``asked`` (default ``--profile KIND``), when the profiler of
    ``kind`` is not installed; ``instead`` ends the message with the way to go on without it."""
    module = "pyinstrument" if kind == "cpu" else "memray"
    try:
        __import__(module)
    except ImportError:
        # (the package's own name: it installs from the index today, as the extra will once
        # poolx is published)
        raise ImportError(f"{asked or f'--profile {kind}'} needs {module}: pip install {module} (poolx's "
                          f"'profile' extra){instead}") from None


def _plan(config: dict[str, Any]) -> tuple[list[tuple[str, int, int]], list[tuple[str, int]]]:
    """(timed runs as (mode, workers, repeat) incl. warm-ups with repeat -1, profiled runs)."""
    modes, workers = config["modes"], config["workers"]
    top = max(workers)
    configs = [(m, w) for m in modes for w in ([1] if m == "serial" else workers)]
    timed = [(m, top if m != "serial" else 1, -1) for m in modes]
    timed += [(m, w, rep) for rep in range(config["repeat"]) for m, w in configs]
    profiled = (
        [(m, top if m != "serial" else 1) for m in modes] if config["profile"] in ("cpu", "mem") else []
    )
    return timed, profiled


def _execute(
    scenario: Scenario, config: dict[str, Any]
) -> tuple[list[measure.Run], list[Any], dict[str, Any]]:
    timed, to_profile = _plan(config)
    bar = _progress(len(timed) + len(to_profile), config["progress"])
    runs: list[measure.Run] = []
    expected: Any = None
    size, backend, ctx = config["size"], config["backend"], config["start_method"]
    try:
        for mode, workers, repeat in timed:
            bar.set_description(f"{mode} x{workers}" + (" warm-up" if repeat < 0 else f" run {repeat + 1}"))
            run, result = measure.run_once(
                scenario,
                mode,
                workers,
                size,
                backend=backend,
                mp_context=ctx,
                repeat=repeat,
                expected=expected,
                address=config.get("address"),
            )
            if mode == "serial" and expected is None and run.ok:
                expected = result
            runs.append(run)
            bar.update(1)
        profiled: list[tuple[str, int, float, float]] = []
        profiles: dict[str, Any] = {}
        for mode, workers in to_profile:
            bar.set_description(f"{mode} x{workers} {config['profile']} profile")
            run, info = _profiled_run(scenario, mode, workers, config, expected)
            runs.append(run)
            profiles[mode] = info
            timing = [
                r.wall
                for r in runs
                if (r.mode, r.workers) == (mode, workers) and r.repeat >= 0 and r.profile == "none"
            ]
            if timing and run.ok:
                profiled.append((mode, workers, run.wall, sorted(timing)[(len(timing) - 1) // 2]))
            bar.update(1)
    finally:
        bar.close()
    return runs, profiled, profiles


def _profiled_run(
    scenario: Scenario, mode: str, workers: int, config: dict[str, Any], expected: Any
) -> tuple[measure.Run, dict[str, Any]]:
    kind = config["profile"]
    directory = config["out"] / kind / mode
    directory.mkdir(parents=True, exist_ok=True)
    # (absolute: a cluster's worker processes need not share this working directory)
    hook = ProfilerHook(kind, str(directory.resolve()))
    driver = ProfilerHook(kind, str(directory))
    uses_processes = _uses_processes(config["backend"])
    driver.start("driver")
    try:
        run, _ = measure.run_once(
            scenario,
            mode,
            workers,
            config["size"],
            backend=config["backend"],
            mp_context=config["start_method"],
            repeat=0,
            expected=expected,
            hook=hook if uses_processes else None,
            profile=kind,
            address=config.get("address"),
        )
    finally:
        driver.stop()
    info: dict[str, Any] = {
        "kind": kind,
        "mode": mode,
        "workers": workers,
        "wall": run.wall,
        "folder": str(directory.relative_to(config["out"])),
    }
    title = f"poolx profile {scenario.name}: {mode} x{workers}"
    lanes = run.lanes if mode != "serial" and uses_processes else []  # (in-process backends: none)
    info.update(collect_profiles(kind, directory, title, lanes, config["backend"] in CLUSTER_BACKENDS))
    return run, info


def collect_profiles(kind: str, directory: Path, title: str, lanes: list[measure.Lane],
                     cluster: bool) -> dict[str, Any]:
    """Read the profiles in ``directory`` of a run whose processes were ``lanes``;
    name the processes that left none (``missing``)."""
    info: dict[str, Any] = {}
    expected_labels = {lane.label for lane in lanes}
    # A cluster worker's task captures are labelled "task": its pid names its lane.
    pids = {lane.pid: lane.label for lane in lanes if lane.key >= 0 and lane.pid}
    if kind == "cpu":
        info.update(profiles.cpu_reports(directory, title, expected_labels, pids))
        got = {p["label"].rsplit(" (pid", 1)[0] for p in info["processes"]}
    else:
        info["processes"] = profiles.mem_reports(directory, expected_labels, pids=pids)
        got = {p["label"] for p in info["processes"]}
    # Processes that left no profile: on the processes backend, one that died (SIGKILL,
    # crash) before writing it; on a cluster, also a worker on another machine.
    info["missing"] = sorted(expected_labels - got)
    if cluster:
        info["missing_note"] = (
            "left no profile file: its worker may run on another machine (profiles are collected "
            "only from workers that share this machine's filesystem), have died, or the backend "
            "did not run the profiler"
        )
    return info


def _uses_processes(backend: str) -> bool:
    return bool(get_backend(backend).uses_processes)


class _NoBar:
    def set_description(self, text: str) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(
        total=total,
        unit="run",
        file=sys.stderr,
        leave=False,
        disable=None if os.environ.get("CI") is None else True,
    )
