"""Run poolx and its peers side by side; write RESULTS.md and results.json.

    python benchmarks/run.py [--quick] [--repeats N] [--cases a,b|issue23] [--impls a,b]
                             [--out benchmarks/RESULTS.md] [--strict] [--wait-idle S] [--busy N]

Every (case, implementation, repeat) is one fresh ``python _case.py CASE IMPL``
subprocess with a time limit; the order of the implementations rotates from
one repeat to the next.  A failure or a timeout is recorded, never fatal.
See README.md in this folder for what each case measures.
"""

import argparse
import datetime
import importlib.metadata
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from poolx.harness.folders import load_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The sizes and the implementations' names live in _case.py beside this file
# (each measurement runs it as a script).  It is loaded by its path: this file
# runs as a script (`python benchmarks/run.py`) and is loaded by its path for
# `poolx bench`, and neither puts this folder on sys.path.
_case = load_file(HERE / "_case.py", "poolx_bench_case")
# What `poolx bench` reads: the implementations, and the sizes of a full and a --quick run.
IMPLS = _case.IMPLS
FULL = _case.FULL
QUICK = _case.QUICK

# Repeats of every (case, implementation): 5 gives a stable median and a
# min/max spread while a full run stays under ~10 minutes on 2 cores.
DEFAULT_REPEATS = 5
QUICK_REPEATS = 1

# The implementations that count as peers when looking for the best one.
PEERS = ["ProcessPoolExecutor", "multiprocessing.Pool", "loky"]
# The actor cases compare poolx with Ray and Dask (the stdlib pools have no actors).
ACTOR_PEERS = ["ray", "dask"]
# The pool cases compare poolx.Pool with multiprocessing.Pool (default context
# and forkserver) and Ray's clone, ray.util.multiprocessing.Pool.
POOL_PEERS = ["multiprocessing.Pool", "multiprocessing.Pool[forkserver]", "ray"]
# The stdlib rows of the pool cases: the goals ask poolx.Pool to match the better of them
# everywhere, and to beat it where poolx's engine should (apply_async one by one).
POOL_STDLIB = ["multiprocessing.Pool", "multiprocessing.Pool[forkserver]"]
POOL_FASTER_GOALS = ["pool_apply_async", "pool_apply_roundtrip"]
# The joblib cases compare poolx's joblib backend with joblib's own backends,
# Dask's and Ray's; loky, joblib's default, is the headline: the goals ask for
# a warm time at most JOBLIB_WARM_GOAL x loky's and a first fit no slower.
JOBLIB_PEERS = ["loky", "multiprocessing.Pool", "threading", "dask", "ray"]
JOBLIB_BASELINE = "loky"
JOBLIB_WARM_GOAL = 0.9
JOBLIB_GOALS = {"joblib_gridsearch_warm": ("joblib GridSearchCV fit, warm workers", JOBLIB_WARM_GOAL),
                "joblib_gridsearch_first": ("joblib GridSearchCV first fit, workers started inside", 1.0)}
# joblib_tiny has no goal (issue 6 asks for the case, to show auto-batching, not for a ratio).
# The transfer cases compare poolx (its shared-memory object store) with Ray's
# object store, joblib's memory-mapping and multiprocessing.Pool's pipes; the
# goals are absolute: the effective bandwidth (GB/s, the sums' own time
# excluded) of the default poolx row at least this much.
TRANSFER_PEERS = ["ray", "joblib", "multiprocessing.Pool[forkserver]"]
TRANSFER_GOALS = {"transfer_args": ("transfer: a large array as a task argument", 8.0),
                  "transfer_returns": ("transfer: a large array as a task result", 8.0),
                  "transfer_put": ("transfer: put once, its ref passed to tasks", 20.0)}

# Which implementations run each case.  serial only where it means something:
# it has no startup, no round trip, and runs retrieve's sleeps one after another.
# bare-fork (two os.fork()ed children splitting pi statically, no pool) is the
# machine's own ceiling for pi: a virtual machine's 2 vCPUs may not give 2x.
ALL_POOLS = ["poolx", "poolx[fork]", "ProcessPoolExecutor", "multiprocessing.Pool", "loky"]
# The floors (no pool: fresh interpreters, a pipe ping-pong) are rows of the
# cases they bound; they are never a "best peer".
STARTUP_FLOORS = ["floor:python-pass", "floor:import-poolx"]
ROUNDTRIP_FLOORS = ["floor:pipe-bytes", "floor:pipe-pickled"]
CASE_IMPLS = {
    "startup": [*ALL_POOLS, *STARTUP_FLOORS],
    "tasks": [*ALL_POOLS, "serial"],
    "map": [*ALL_POOLS, "serial"],
    # Issue 23's map at three sizes.  Not ProcessPoolExecutor and loky at 2M: their
    # default chunksize=1 runs about 13,000 items/s here, 150 s for 2M items.
    "map_2k": [*ALL_POOLS, "serial"],
    "map_200k": [*ALL_POOLS, "serial"],
    "map_2m": ["poolx", "poolx[fork]", "multiprocessing.Pool", "serial"],
    "roundtrip": [*ALL_POOLS, *ROUNDTRIP_FLOORS],
    "pi": [*ALL_POOLS, "serial", "bare-fork"],
    "retrieve": ALL_POOLS,
    # The next executor in the same process (issue 23); not second in this table:
    # `poolx bench` names startup and tasks first in its help and errors.
    "startup_next": ALL_POOLS,
    # poolx, Ray and Dask actors; Ray and Dask are optional (skipped, with the
    # reason, where they cannot be imported) and run nothing else.
    **{case: _case.ACTOR_IMPLS for case in _case.ACTOR_CASES},
    # poolx.Pool, multiprocessing.Pool (two start methods) and Ray's Pool clone;
    # Ray is optional (skipped, with the reason, where it cannot be imported).
    **{case: _case.POOL_IMPLS for case in _case.POOL_CASES},
    # One row per joblib backend (poolx's, joblib's loky, multiprocessing and
    # threading, Dask's, Ray's); Dask and Ray are optional as above, and so are
    # joblib and scikit-learn for these cases.
    **{case: _case.JOBLIB_IMPLS for case in _case.JOBLIB_CASES},
    # poolx, Ray, joblib (its loky backend, which memory-maps large arrays) and
    # multiprocessing.Pool (forkserver) moving a large numpy array; Ray and
    # joblib are optional as above, and numpy is needed.
    **{case: _case.TRANSFER_IMPLS for case in _case.TRANSFER_CASES},
}

# Seconds one measurement subprocess may run before its process tree is
# killed and the measurement recorded as 'timeout'.  map is the long one:
# ProcessPoolExecutor and loky default to chunksize=1 (about 15 s for 200,000
# items on 2 cores); past 90 s it is reported as a timeout, not waited for.
# The actor cases include starting a local Ray or Dask cluster (3 to 5 s for
# Ray on 2 cores, plus about 1.5 s for its shutdown) and Dask's 10,000 calls
# at under 1,000/s.
CASE_TIMEOUT_S = {"startup": 30, "tasks": 60, "map": 90, "roundtrip": 60, "pi": 60, "retrieve": 60,
                  # Two executors, one after the other; 2M items at about 5M/s take 0.4 s, but
                  # serial's list and the results' check take seconds on a busy machine.
                  "startup_next": 40, "map_2k": 60, "map_200k": 90, "map_2m": 120,
                  "actor_awaited": 90, "actor_pipelined": 90, "actor_retrieve": 60,
                  # Ray's Pool includes starting a local Ray cluster; its imap with
                  # chunksize=1 runs about 1,500 items/s (about 7 s for 10,000).
                  **{case: 60 for case in _case.POOL_CASES},
                  # Ray's joblib backend starts a Pool of Ray actors for every
                  # Parallel call (about 2 s each here: 6 fits, ~20 s with
                  # Ray's start and stop); threading and Dask run the 100,000
                  # tiny items at about 30,000/s.
                  "joblib_gridsearch_warm": 120, "joblib_gridsearch_first": 60, "joblib_tiny": 90,
                  # Ray's cluster (4 to 5 s, and 1.5 s to stop it); multiprocessing.Pool
                  # and joblib return a 200 MB array at about 0.2 GB/s: 6 calls take 6 s.
                  **{case: 90 for case in _case.TRANSFER_CASES}}
# After a measurement exits, how long its leftover processes (e.g. a
# forkserver noticing its parent is gone) get to exit before they are
# recorded as leftovers and killed.
LINGER_GRACE_S = 2.0
# A measurement during which other processes on the machine kept more than
# this many cores busy is flagged in RESULTS.md: with 2 cores, that is a
# worker's worth of CPU taken away.
DISTURBED_CORES = 0.1
# With --wait-idle, the length of one look at how busy the rest of the machine is.
IDLE_PROBE_S = 0.5

# How each case reads: title, unit, and whether a bigger number is better.
CASE_INFO = {
    "startup": ("construction to the first result of a trivial task", "ms", False),
    "tasks": ("{tasks:,} no-op tasks submitted one by one, then all results", "tasks/s", True),
    "startup_next": ("the next executor in the same process (the first made, used once and shut down "
                     "before): construction to its first result", "ms", False),
    "map": ("map(inc) over {map_items:,} tiny items, default chunking", "items/s", True),
    "map_2k": ("map(inc) over {map_2k:,} tiny items, default chunking, after an untimed "
               "{map_warm:,}-item map", "items/s", True),
    "map_200k": ("map(inc) over {map_200k:,} tiny items, default chunking, after an untimed "
                 "{map_warm:,}-item map", "items/s", True),
    "map_2m": ("map(inc) over {map_2m:,} tiny items, default chunking, after an untimed "
               "{map_warm:,}-item map", "items/s", True),
    "roundtrip": ("{roundtrip:,} sequential submit(noop).result() after {roundtrip_warmup:,} untimed",
                  "us (median)", False),
    "pi": ("Monte Carlo pi, {pi_samples:,} samples in {pi_chunks} tasks", "s", False),
    "retrieve": ("6 items on 6 warm workers, item i sleeps i/10 s: time above the ideal 0.5 s",
                 "ms", False),
    "actor_awaited": ("{actor_calls:,} Counter.increment calls on one actor, each awaited before the next",
                      "calls/s", True),
    "actor_pipelined": ("{actor_calls:,} Counter.increment calls on one actor all made, then all results",
                        "calls/s", True),
    "actor_retrieve": ("retrieve with a DataTracker actor: 6 tasks on 6 warm slots, task i sleeps i/10 s "
                       "and calls tracker.increment; until all results are in and counts() == 6 "
                       "(ideal 0.5 s)", "s", False),
    "pool_map_tiny": ("pool.map(inc, range({pool_map_items:,})), default chunksize", "items/s", True),
    "pool_imap_tiny": ("list(pool.imap(inc, range({pool_imap_items:,}), chunksize=1))", "items/s", True),
    "pool_imap_unordered_tiny": ("list(pool.imap_unordered(inc, range({pool_imap_items:,}), chunksize=1))",
                                 "items/s", True),
    "pool_imap_chunked": ("list(pool.imap(inc, range({pool_imap_chunked_items:,}), "
                          "chunksize={pool_imap_chunksize}))", "items/s", True),
    "pool_apply_async": ("{pool_apply:,} pool.apply_async(inc, (i,)) all made, then every .get()",
                         "tasks/s", True),
    "pool_small_tasks": ("pool.map(small_task, range({pool_small_tasks:,})), ~1 ms of CPU each, default "
                         "chunksize (ray-project/ray#21343)", "s", False),
    "pool_apply_roundtrip": ("{pool_roundtrip:,} sequential pool.apply_async(noop).get() after "
                             "{pool_roundtrip_warmup:,} untimed", "us (median)", False),
    "joblib_gridsearch_warm": ("GridSearchCV(SVC(), {{'C': [1, 10, 100], 'gamma': [1e-3, 1e-4]}}, cv=3) "
                               "fit on load_digits ({joblib_digits:,} samples), warm workers: the median of "
                               "{joblib_fits} timed fits after an untimed one", "s", False),
    "joblib_gridsearch_first": ("the same GridSearchCV fit, first in a fresh process: from entering "
                                "parallel_config to the end of the fit (imports, data, Dask's and Ray's "
                                "cluster before the timer)", "s", False),
    "joblib_tiny": ("Parallel(n_jobs=2)(delayed(square)(i) for i in range({joblib_tiny_items:,})) after "
                    "one untimed call: joblib's automatic batching", "s", False),
    "transfer_args": ("a float64 array of {transfer_elements:,} elements as the argument of total(a) -> "
                      "float(a.sum()), {transfer_calls} calls one after another after one untimed: bytes "
                      "moved / (wall time - the same sums in the caller)", "GB/s", True),
    "transfer_returns": ("a task returning a float64 array of {transfer_elements:,} elements (cached in the "
                         "worker), {transfer_calls} calls one after another after one untimed, each result "
                         "summed in the caller and dropped: bytes moved / (wall time - the caller's "
                         "sums)", "GB/s", True),
    "transfer_put": ("a float64 array of {transfer_elements:,} elements put once, its ref passed to "
                     "total(a) {transfer_calls} times (joblib, multiprocessing.Pool: no put, the array "
                     "every time), after one untimed put and call: bytes moved / (wall time, the put "
                     "included, - the same sums in the caller)", "GB/s", True),
    "transfer_args_wall": ("the same float64 array of {transfer_elements:,} elements passed to total(a) "
                           "{transfer_calls} times, each awaited, on a warm reused system (joblib: one "
                           "Parallel kept open), after one untimed: bytes / wall time, the sums included",
                           "GB/s", True),
    "transfer_returns_fresh": ("a float64 array of {transfer_elements:,} elements built in the task and "
                               "returned, {transfer_calls} calls one after another after one untimed, each "
                               "summed in the caller: bytes / wall time, the sums included", "GB/s", True),
}

# Reference figures from the issue (Ray and Dask on the machine the suite was
# written for), shown beside the Ray goals; the goals themselves use the Ray
# median measured in the same run.
ISSUE_REFERENCE = {"actor_awaited": "Ray ~1.3k/s, Dask ~1.1k/s",
                   "actor_pipelined": "Ray ~6k/s, Dask ~0.6k/s"}
# poolx over Ray that the actor goals ask for.
ACTOR_GOAL_VS_RAY = 10.0


# -- running one measurement ---------------------------------------------------


def run_measurement(case, impl, quick, timeout):
    """One fresh subprocess; returns the record of what happened."""
    cmd = [sys.executable, str(HERE / "_case.py"), case, impl] + (["--quick"] if quick else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE), env.get("PYTHONPATH", "")] if p)
    before = cpu_snapshot(exclude_session=None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    timed_out = exited_in_time = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Either the measurement ran too long, or it exited but processes it
        # left behind still hold its output pipes open.
        timed_out = True
        exited_in_time = proc.poll() is not None
        kill_group(proc.pid)
        out, err = proc.communicate()
    except BaseException:  # Ctrl-C or SIGTERM: the measurement (a session of its own) dies with us
        kill_group(proc.pid)
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    foreign = foreign_cpu_seconds(before, cpu_snapshot(exclude_session=proc.pid))
    leftovers = reap_group(proc.pid)
    record = make_record(case, impl, proc.returncode, timed_out and not exited_in_time, out, err, wall,
                         leftovers)
    if exited_in_time:
        record["note"] = "exited, but processes it left held its output open until the time limit (killed)"
    record["foreign_cpu_s"] = round(foreign, 3)
    return record


def make_record(case, impl, returncode, timed_out, out, err, wall, leftovers):
    lines = [parsed for parsed in map(json_or_none, out.splitlines()) if isinstance(parsed, dict)]
    result = next((line for line in lines if "value" in line), None)
    closed = next((line for line in lines if "shutdown_ms" in line), None)
    skipped = next((line for line in lines if "skipped" in line), None)
    record = {"case": case, "impl": impl, "wall_s": round(wall, 3), "returncode": returncode}
    if skipped is not None and result is None and returncode == 0:
        # An optional library (Ray, Dask) that cannot be imported: not a failure.
        record.update(status="skipped", skip_reason=skipped["skipped"])
        if leftovers:
            record["leftover_processes"] = leftovers
        return record
    if result is not None:
        record.update(result)
    if closed is not None:
        record["shutdown_ms"] = closed["shutdown_ms"]
    if leftovers:
        record["leftover_processes"] = leftovers
    if result is None:
        record["status"] = "timeout" if timed_out else "error"
    elif timed_out or closed is None:
        # The number was measured, but shutdown hung or failed afterwards.
        record["status"] = "ok"
        record["note"] = "shutdown timed out (killed)" if timed_out else "shutdown failed"
    else:
        record["status"] = "ok" if returncode == 0 else "error"
    if record["status"] != "ok" or "note" in record or returncode != 0:
        record["stderr_tail"] = err[-2000:]
    return record


def proc_stats():
    """(pid, fields after the command name) of every process, from Linux /proc."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        yield int(entry), fields


def cpu_snapshot(exclude_session):
    """{(pid, start time): CPU ticks} of every process but this one and session ``exclude_session``.

    A measurement runs in a session of its own; the session, not the process
    group, holds all its processes (Ray's workers each have a group of their own).
    """
    me = os.getpid()
    snapshot = {}
    for pid, fields in proc_stats():
        if pid == me or pid in BURNER_PIDS or int(fields[3]) == exclude_session:
            continue
        utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
        snapshot[(pid, start)] = utime + stime
    return snapshot


def foreign_cpu_seconds(before, after):
    """CPU seconds other processes used between two snapshots (the machine is shared)."""
    ticks = sum(used - before.get(key, 0) for key, used in after.items())
    return max(0, ticks) / os.sysconf("SC_CLK_TCK")


def json_or_none(line):
    try:
        return json.loads(line)
    except ValueError:
        return None


def group_members(sid):
    """Live processes of the measurement's session ``sid`` (Linux /proc; [] elsewhere).

    The session (started with ``start_new_session``) holds every process the
    measurement started, including those that moved to a process group of
    their own, as Ray's worker processes do.
    """
    return [pid for pid, fields in proc_stats()
            if (int(fields[2]) == sid or int(fields[3]) == sid) and fields[0] not in ("Z", "X")]


def kill_group(sid):
    """SIGKILL the measurement's process group, then whatever else is left in its session."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in group_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def reap_group(sid):
    """Give leftover processes a grace period, then kill them; returns how many were left."""
    deadline = time.monotonic() + LINGER_GRACE_S
    while time.monotonic() < deadline:
        if not group_members(sid):
            return 0
        time.sleep(0.05)
    left = len(group_members(sid))
    kill_group(sid)
    return left


# -- a busy machine (--busy N) ----------------------------------------------------

# A burner: a pure-Python loop that keeps one core busy and looks at its parent
# every few milliseconds, so it exits on its own if run.py dies without killing
# it (SIGKILL, a crash): none is ever left behind.
BURNER = ("import os\n"
          "parent = os.getppid()\n"
          "while os.getppid() == parent:\n"
          "    for _ in range(100_000):\n"
          "        pass\n")
# The burners' pids: their CPU is the load asked for, not other processes' (the
# "others' CPU" column and --wait-idle leave it out).
BURNER_PIDS = set()


def start_burners(count):
    """``count`` CPU-bound processes in a session of their own (Ctrl-C reaches run.py, which kills them)."""
    burners = []
    for _ in range(count):
        proc = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        burners.append(proc)
        BURNER_PIDS.add(proc.pid)
    return burners


def stop_burners(burners):
    """Kill the burners and reap them."""
    for proc in burners:
        proc.kill()
    for proc in burners:
        proc.wait()
        BURNER_PIDS.discard(proc.pid)


def exit_on_sigterm(signum, frame):
    """SIGTERM (``timeout``, a CI job's end) unwinds like Ctrl-C, so the burners and the measurement die."""
    raise SystemExit(128 + signum)


# -- the schedule ----------------------------------------------------------------


def rotated(items, shift):
    """``items`` rotated left by ``shift``: repeat r starts with the r-th one."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def wait_until_idle(max_wait):
    """Wait (at most ``max_wait`` s) until other processes use under DISTURBED_CORES."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        before = cpu_snapshot(exclude_session=None)
        time.sleep(IDLE_PROBE_S)
        if foreign_cpu_seconds(before, cpu_snapshot(exclude_session=None)) / IDLE_PROBE_S < DISTURBED_CORES:
            break
    return time.monotonic() - t0


def run_all(cases, impls, repeats, quick, timeout_override, wait_idle):
    records = []
    for repeat in range(repeats):
        for case in cases:
            chosen = [i for i in CASE_IMPLS[case] if i in impls]
            for position, impl in enumerate(rotated(chosen, repeat)):
                timeout = timeout_override or CASE_TIMEOUT_S[case]
                waited = wait_until_idle(wait_idle) if wait_idle else 0.0
                record = run_measurement(case, impl, quick, timeout)
                record.update(repeat=repeat + 1, position=position + 1, timeout_s=timeout,
                              waited_for_idle_s=round(waited, 1))
                records.append(record)
                print(progress_line(record), flush=True)
    return records


def progress_line(r):
    value = f"{r['value']:.6g} {r['unit']}" if r["status"] == "ok" else r["status"].upper()
    extra = f"  [{r['skip_reason']}]" if "skip_reason" in r else ""
    extra += f"  [{r['note']}]" if "note" in r else ""
    extra += f"  [{r['leftover_processes']} leftover processes killed]" if r.get("leftover_processes") else ""
    return f"  repeat {r['repeat']}  {r['case']:<24} {r['impl']:<32} {value:<24} ({r['wall_s']:.1f} s){extra}"


# -- summarising -------------------------------------------------------------------


def summarise(records, cases):
    """Per case and implementation: median, min, max of the headline value and extras."""
    summary = {}
    for case in cases:
        rows = {}
        for impl in CASE_IMPLS[case]:
            mine = [r for r in records if r["case"] == case and r["impl"] == impl]
            if not mine:
                continue
            ok = [r for r in mine if r["status"] == "ok"]
            row = {"runs": len(mine), "ok": len(ok),
                   "failures": sorted({r["status"] for r in mine if r["status"] != "ok"}),
                   "start_method": next((r["start_method"] for r in ok), None)}
            reasons = sorted({r["skip_reason"] for r in mine if "skip_reason" in r})
            if reasons:
                row["skip_reason"] = "; ".join(reasons)
            if ok:
                values = [r["value"] for r in ok]
                row.update(median=statistics.median(values), min=min(values), max=max(values))
                if case in ("roundtrip", "pool_apply_roundtrip"):
                    row["p99_us"] = statistics.median(r["p99_us"] for r in ok)
                if case == "startup_next":
                    row["first_ms"] = statistics.median(r["first_ms"] for r in ok)
                if case == "pool_small_tasks":
                    row["ideal_s"] = statistics.median(r["ideal_s"] for r in ok)
                if case == "joblib_gridsearch_warm":  # the fastest single fit of every run
                    row["min_fit_s"] = min(r["min_s"] for r in ok)
                if case == "joblib_tiny":
                    row["items_per_s"] = statistics.median(r["items_per_s"] for r in ok)
                    row["batches"] = statistics.median(r["batches"] for r in ok)
                if case in _case.TRANSFER_CASES:  # the headline without the baseline, the cold call
                    for key in ("wall_gb_s", "warmup_s", "seconds", "baseline_s"):
                        row[key] = statistics.median(r[key] for r in ok)
                    row["clamped"] = sum(1 for r in ok if r.get("clamped"))
                starts = [r["runtime_start_s"] for r in ok if r.get("runtime_start_s") is not None]
                if starts:  # actor cases: starting the executor / Ray / the Dask cluster; joblib: Ray, Dask
                    row["runtime_start_s"] = statistics.median(starts)
                row["others_cores"] = statistics.median(others_cores(r) for r in ok)
                shutdowns = [r["shutdown_ms"] for r in ok if "shutdown_ms" in r]
                if shutdowns:
                    row["shutdown_ms"] = statistics.median(shutdowns)
            rows[impl] = row
        add_ratios(case, rows)
        summary[case] = rows
    return summary


def peers_of(case):
    if case in _case.ACTOR_CASES:
        return ACTOR_PEERS
    if case in _case.JOBLIB_CASES:
        return JOBLIB_PEERS
    if case in _case.TRANSFER_CASES:
        return TRANSFER_PEERS
    return POOL_PEERS if case in _case.POOL_CASES else PEERS


def best_peer(case, rows):
    """(name, median) of the best peer that produced a number, or (None, None)."""
    higher = CASE_INFO[case][2]
    measured = [(rows[p]["median"], p) for p in peers_of(case) if p in rows and "median" in rows[p]]
    if not measured:
        return None, None
    value, name = max(measured) if higher else min(measured)
    return name, value


def add_ratios(case, rows):
    name, best = best_peer(case, rows)
    serial = rows.get("serial", {}).get("median")
    for row in rows.values():
        if "median" not in row:
            continue
        if best:
            row["vs_best_peer"] = row["median"] / best
            row["best_peer"] = name
        if case == "pi" and serial:
            row["speedup_vs_serial"] = serial / row["median"]
    mine = rows.get("poolx", {}).get("median")
    if (case in _case.POOL_CASES or case in _case.TRANSFER_CASES) and mine:
        for row in rows.values():
            if row.get("median"):
                row["poolx_over_this"] = mine / row["median"]
    loky = rows.get(JOBLIB_BASELINE, {}).get("median")
    if case in _case.JOBLIB_CASES and loky:
        for row in rows.values():
            if "median" in row:
                row["vs_loky"] = row["median"] / loky


# -- goals (from the issue), computed from the data ------------------------------


def goals(summary, cpus):
    """[(goal, target, measured, status)] for the default poolx row."""

    def poolx(case, key="median"):
        return summary.get(case, {}).get("poolx", {}).get(key)

    def peer(case):
        return best_peer(case, summary[case]) if case in summary else (None, None)

    out = []

    def add(goal, target, measured, reached):
        status = "n/a (no data)" if measured is None else ("reached" if reached else "not reached")
        out.append({"goal": goal, "target": target, "measured": measured or "-", "status": status,
                    "reached": bool(reached) if measured is not None else None})

    name, best = peer("tasks")
    value = poolx("tasks")
    ratio = value / best if value and best else None
    add("tasks submitted one by one", ">= 3x the best peer",
        f"{ratio:.2f}x {name} ({value:,.0f} vs {best:,.0f} tasks/s)" if ratio else None, ratio and ratio >= 3)

    name, best = peer("map")
    value = poolx("map")
    ratio = value / best if value and best else None
    add("map items/s", ">= the best peer",
        f"{ratio:.2f}x {name} ({value:,.0f} vs {best:,.0f} items/s)" if ratio else None, ratio and ratio >= 1)

    name, best = peer("roundtrip")
    value = poolx("roundtrip")
    ratio = value / best if value and best else None
    add("median round trip", "< 0.5x the best peer's",
        f"{ratio:.2f}x {name} ({value:.1f} vs {best:.1f} us)" if ratio else None, ratio and ratio < 0.5)

    value = poolx("retrieve")
    add("retrieve overhead above 0.5 s", "< 1 ms", None if value is None else f"{value:.2f} ms",
        value is not None and value < 1.0)

    value = poolx("pi", "speedup_vs_serial")
    ceiling = summary.get("pi", {}).get("bare-fork", {}).get("speedup_vs_serial")
    add(f"pi speedup over serial ({cpus} usable CPUs)", ">= 1.9 on 2 cores",
        (f"{value:.2f}x" + (f" (machine ceiling, bare-fork: {ceiling:.2f}x)" if ceiling else ""))
        if value else None, value and value >= 1.9)

    value = poolx("startup")
    method = poolx("startup", "start_method")
    add(f"startup with {method or 'forkserver'}", "< 30 ms", None if value is None else f"{value:.1f} ms",
        value is not None and value < 30 and method == "forkserver")

    # Actors: poolx against Ray measured in the same run (not the issue's figures).
    for case, what in (("actor_awaited", "actor calls awaited one by one"),
                       ("actor_pipelined", "actor calls pipelined")):
        value = poolx(case)
        ray = summary.get(case, {}).get("ray", {}).get("median")
        ratio = value / ray if value and ray else None
        measured = (f"{ratio:.1f}x ray ({value:,.0f} vs {ray:,.0f} calls/s; issue: "
                    f"{ISSUE_REFERENCE[case]})") if ratio else None
        add(what, f">= {ACTOR_GOAL_VS_RAY:g}x ray (same run)", measured, ratio and ratio >= ACTOR_GOAL_VS_RAY)

    # poolx.Pool against the better multiprocessing.Pool row (default context or
    # forkserver) of the same run; only where the pool cases ran.
    for case in _case.POOL_CASES:
        if case not in summary:
            continue
        _title, unit, higher = CASE_INFO[case]
        rows = summary[case]
        stdlib = [(rows[p]["median"], p) for p in POOL_STDLIB if "median" in rows.get(p, {})]
        value = poolx(case)
        faster = case in POOL_FASTER_GOALS
        target = "faster than" if faster else "as fast as"
        measured = reached = None
        if value and stdlib:
            best, name = max(stdlib) if higher else min(stdlib)
            speed = value / best if higher else best / value  # > 1: poolx.Pool is faster
            measured = f"{speed:.2f}x the speed of {name} ({fmt(value, unit)} vs {fmt(best, unit)} {unit})"
            reached = speed > 1 if faster else speed >= 1
        add(f"poolx.Pool {case}", f"{target} multiprocessing.Pool", measured, reached)

    # poolx's joblib backend against joblib's default, loky, in the same run
    # (times: below 1x poolx is faster); only where the joblib cases ran.
    for case, (what, most) in JOBLIB_GOALS.items():
        if case not in summary:
            continue
        value = poolx(case)
        loky = summary[case].get(JOBLIB_BASELINE, {}).get("median")
        ratio = value / loky if value and loky else None
        measured = f"{ratio:.2f}x loky ({value:.3f} vs {loky:.3f} s)" if ratio else None
        target = f"<= {most:g}x loky's time" if most != 1 else "<= loky's time"
        add(what, target, measured, ratio and ratio <= most)

    # Transfer: the default poolx row's effective bandwidth, an absolute target;
    # only where the transfer cases ran.
    for case, (what, least) in TRANSFER_GOALS.items():
        if case not in summary:
            continue
        row = summary[case].get("poolx", {})
        value = row.get("median")
        name, best = peer(case)
        measured = None
        if value:
            measured = (f"{value:.1f} GB/s (wall, sums included: {row['wall_gb_s']:.1f} GB/s"
                        + (f"; best peer {name} {best:.2f} GB/s, poolx {value / best:.1f}x" if best else "")
                        + (f"; clamped in {row['clamped']} run(s)" if row.get("clamped") else "") + ")")
        add(what, f">= {least:g} GB/s effective", measured, value is not None and value >= least)
    return out


# -- issue 23's goal table, computed from the data --------------------------------------

# One row per row of issue 23's table: (case, what, the peer, how to judge, target).
# The peer is an implementation's name, or None for the best of the case's peers.
# "ratio>=" and "ratio<=" judge poolx's median / the peer's (a rate: higher is
# better; a time: lower is better); "at most" judges poolx's median itself.
ISSUE_GOALS = [
    ("tasks", "10,000 no-op tasks submitted one by one, then gathered", None, "ratio>=", 3.0),
    ("map_2k", "`map` over 2,000 tiny items, default chunking (after a 2,000-item map)", None,
     "ratio>=", 1.2),
    ("map_200k", "`map` over 200,000 tiny items, default chunking (after a 2,000-item map)", None,
     "ratio>=", 1.2),
    ("map_2m", "`map` over 2,000,000 tiny items, default chunking (after a 2,000-item map)", None,
     "ratio>=", 1.2),
    ("roundtrip", "one `submit(noop).result()` after another, median", None, "ratio<=", 0.5),
    ("actor_awaited", "actor method call awaited one by one", "ray", "ratio>=", 10.0),
    ("actor_pipelined", "actor method calls pipelined (all made, then every result)", "ray", "ratio>=", 20.0),
    ("retrieve", "six sleeps (i/10 s) on six workers: time above the ideal 0.5 s", None, "at most", 1.0),
    ("transfer_args_wall", "200 MB array passed to `submit(total)`, 5 calls each awaited, wall time "
     "including the sums", "joblib", "ratio>=", 1.0),
    ("transfer_returns_fresh", "200 MB array created in the task and returned, 5 calls, wall time", "ray",
     "ratio>=", 2.0),
    ("startup", "construction to first result, default start method (forkserver), first executor", None,
     "at most", 30.0),
    ("startup_next", "construction to first result, forkserver, the next executor in the same program",
     None, "at most", 30.0),
    ("joblib_gridsearch_warm", "scikit-learn GridSearchCV, warm, joblib backend \"poolx\"", "loky",
     "ratio<=", 0.9),
]
# The floors shown beside a goal: no library can go below them on this machine.
FLOORS = {"startup": STARTUP_FLOORS, "startup_next": STARTUP_FLOORS, "roundtrip": ROUNDTRIP_FLOORS}


def issue_goals(summary):
    """Issue 23's table for the cases that ran: goal, poolx, best peer, ratio, reached."""
    out = []
    for case, what, against, judge, target in ISSUE_GOALS:
        rows = summary.get(case)
        if not rows:
            continue
        unit = CASE_INFO[case][1]
        poolx = rows.get("poolx", {})
        mine = poolx.get("median")
        name, theirs = ((against, rows.get(against, {}).get("median")) if against
                        else best_peer(case, rows))
        ratio = mine / theirs if mine and theirs else None
        if judge == "at most":
            reached = mine is not None and mine <= target
            if case.startswith("startup"):  # the goal is for forkserver, poolx's default
                reached = reached and poolx.get("start_method") == "forkserver"
            goal = f"<= {target:g} {unit}"
        else:
            reached = ratio is not None and (ratio >= target if judge == "ratio>=" else ratio <= target)
            goal = f"{judge[5:]} {target:g}x {against or 'the best peer'}"
        # The startup_next floors are startup's rows: a fresh interpreter either way.
        floor_rows = summary.get("startup", {}) if case == "startup_next" else rows
        floors = [f"{f} {fmt(floor_rows[f]['median'], unit)}" for f in FLOORS.get(case, [])
                  if "median" in floor_rows.get(f, {})]
        out.append({"case": case, "goal": what, "target": goal, "unit": unit,
                    "poolx": mine, "peer": name, "peer_value": theirs, "ratio": ratio,
                    "floors": floors, "reached": None if mine is None else bool(reached)})
    return out


def issue_goal_lines(rows):
    """The markdown table of ``issue_goals``; no lines when none of its cases ran."""
    if not rows:
        return []
    lines = ["## Issue 23's goals", "",
             "The issue's table, computed from the medians below for the default `poolx` row; the best peer "
             "is the best of the case's peers in the same run (the one the goal names, where it names one); "
             "ratio: poolx's median / the peer's (a rate: above 1x poolx is faster; a time: below 1x poolx "
             "is faster); the floors are measured in the same run (no library goes below them here).", "",
             "| goal | poolx | best peer (same run) | ratio | target | reached? | floor (same run) |",
             "|---|---|---|---|---|---|---|"]
    for g in rows:
        unit = g["unit"]
        mine = "-" if g["poolx"] is None else f"{fmt(g['poolx'], unit)} {unit.split(' (')[0]}"
        peer = f"{g['peer']} {fmt(g['peer_value'], unit)}" if g["peer_value"] is not None else "-"
        ratio = ratio_text(g["ratio"]) if g["ratio"] is not None else "-"
        reached = {True: "yes", False: "no", None: "n/a (no poolx figure)"}[g["reached"]]
        lines.append(f"| {g['goal']} | {mine} | {peer} | {ratio} | {g['target']} | {reached} | "
                     f"{'; '.join(g['floors']) or '-'} |")
    return [*lines, ""]


# -- environment ---------------------------------------------------------------------


def version_of(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def poolx_version():
    try:
        import poolx

        return poolx.__version__
    except Exception as exc:
        return f"import failed: {exc}"


def git_revision():
    """The commit measured, '+dirty' when poolx/ has uncommitted changes."""
    if not (REPO / "poolx" / "__init__.py").is_file():
        # Installed as poolx.benchmarks: no checkout here (a git repository
        # above site-packages would be some other project's).
        return "n/a (installed package)"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "poolx"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def load_average():
    """1, 5 and 15 minute load: other work on the machine skews every number."""
    try:
        return os.getloadavg()
    except OSError:
        return ()


def environment():
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version() + " (" + platform.python_implementation() + ")",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "workers": _case.WORKERS,
        "retrieve_workers": _case.RETRIEVE_WORKERS,
        "default_start_method": multiprocessing.get_start_method(),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in load_average()),
        "poolx": poolx_version(),
        "poolx_git": git_revision(),
        "loky": version_of("loky"),
        "ray": version_of("ray"),
        "dask": version_of("dask"),
        "distributed": version_of("distributed"),
        "cloudpickle": version_of("cloudpickle"),
        "numpy": version_of("numpy"),
    }


# -- writing ---------------------------------------------------------------------------


def fmt(value, unit):
    if value is None:
        return "-"
    if unit in ("tasks/s", "items/s", "calls/s"):
        return f"{value:,.0f}"
    if unit == "GB/s" and value < 10:
        return f"{value:.2f}"
    if unit == "s":
        return f"{value:.3f}"
    if unit == "ms" and abs(value) < 10:
        return f"{value:.2f}"
    return f"{value:,.1f}"


def ratio_text(ratio):
    """Two decimals, or three significant digits below 0.1 (0.00257x, not 0.00x)."""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3g}x"


def case_table(case, rows, sizes):
    title, unit, higher = CASE_INFO[case]
    better = "higher is better" if higher else "lower is better"
    lines = [f"### {case}: {title.format(**sizes)}", "",
             f"Unit: {unit}, {better}.  Ratio: this median / the best peer's median "
             f"(peers: {', '.join(peers_of(case))})"
             + ("; \"poolx ÷ this\": the poolx row's median / this row's median"
                if case in _case.POOL_CASES or case in _case.TRANSFER_CASES else "")
             + ("; \"÷ loky\": this row's median / loky's (joblib's default backend)"
                if case in _case.JOBLIB_CASES else "") + ".", ""]
    actors = case in _case.ACTOR_CASES
    pools = case in _case.POOL_CASES
    joblib = case in _case.JOBLIB_CASES
    transfer = case in _case.TRANSFER_CASES
    extra = {"roundtrip": ["p99 us (median)"], "pi": ["speedup vs serial"],
             "startup_next": ["first executor ms (median)"],
             "pool_apply_roundtrip": ["p99 us (median)"],
             "pool_small_tasks": ["ideal s (median)"]}.get(case, [])
    if actors:
        extra = ["runtime start s (median, not timed)"]
    if pools:
        extra = ["poolx ÷ this", *extra]
    if joblib:
        extra = ["÷ loky", *{"joblib_gridsearch_warm": ["fastest fit s"],
                             "joblib_tiny": ["items/s (median)", "batches (median)"]}.get(case, []),
                 "cluster start s (median, not timed)"]
    if transfer:
        extra = ["poolx ÷ this", "wall GB/s (median)", "warm-up call s (median, not in the headline)",
                 "wall s (median)", "baseline s (median)", "pool start s (median, not timed)"]
    header = ["implementation", "start method", "median", "min", "max", "÷ best peer", *extra,
              "ok runs", "others' CPU"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for impl, row in rows.items():
        if "median" in row:
            cells = [fmt(row["median"], unit), fmt(row["min"], unit), fmt(row["max"], unit),
                     ratio_text(row["vs_best_peer"]) if "vs_best_peer" in row else "-"]
        else:
            failed = ", ".join(row["failures"]).upper() or "-"
            if row.get("skip_reason"):
                failed += f" ({row['skip_reason']})"
            cells = [failed, "-", "-", "-"]
        if actors:
            cells.append(f"{row['runtime_start_s']:.2f}" if "runtime_start_s" in row else "-")
        if pools or transfer:
            cells.append(ratio_text(row["poolx_over_this"]) if "poolx_over_this" in row else "-")
        if transfer:
            cells.append(fmt(row.get("wall_gb_s"), unit))
            for key in ("warmup_s", "seconds", "baseline_s", "runtime_start_s"):
                cells.append(f"{row[key]:.3f}" if key in row else "-")
        if joblib:
            cells.append(ratio_text(row["vs_loky"]) if "vs_loky" in row else "-")
            if case == "joblib_gridsearch_warm":
                cells.append(fmt(row.get("min_fit_s"), "s"))
            if case == "joblib_tiny":
                cells.append(fmt(row.get("items_per_s"), "items/s"))
                cells.append(f"{row['batches']:,.0f}" if "batches" in row else "-")
            cells.append(f"{row['runtime_start_s']:.2f}" if "runtime_start_s" in row else "-")
        if case in ("roundtrip", "pool_apply_roundtrip"):
            cells.append(fmt(row.get("p99_us"), unit))
        if case == "startup_next":
            cells.append(fmt(row.get("first_ms"), "ms"))
        if case == "pool_small_tasks":
            cells.append(fmt(row.get("ideal_s"), "s"))
        if case == "pi":
            cells.append(f"{row['speedup_vs_serial']:.2f}x" if "speedup_vs_serial" in row else "-")
        failures = f" ({', '.join(row['failures'])})" if row["failures"] else ""
        if row.get("clamped"):
            failures += f" ({row['clamped']} clamped: wall <= baseline)"
        cells.append(f"{row['ok']}/{row['runs']}{failures}")
        cells.append(f"{row['others_cores']:.2f}" if "others_cores" in row else "-")
        name = f"**{impl}**" if impl.startswith("poolx") else impl
        lines.append("| " + " | ".join([name, row["start_method"] or "-", *cells]) + " |")
    return lines


JOBLIB_GOALS_TEXT = (
    "the joblib goals compare the `poolx` row (poolx's joblib backend) with `loky`, joblib's default "
    "backend, in the same run: the warm fit (joblib_gridsearch_warm) at most "
    f"{JOBLIB_WARM_GOAL:g}x loky's time, the first fit (joblib_gridsearch_first) no slower than loky's "
    "(measured: poolx's median / loky's; below 1x poolx is faster); joblib_tiny has no goal")


TRANSFER_GOALS_TEXT = (
    "the transfer goals are absolute, for the default `poolx` row's effective bandwidth (bytes moved / "
    "(wall time - the same sums in the caller), 1e9 bytes a GB): "
    + ", ".join(f"{case} >= {least:g} GB/s" for case, (_what, least) in TRANSFER_GOALS.items())
    + "; the wall figure, sums included, and the best peer are given beside it")


def transfer_method_notes(env, sizes):
    """What the transfer cases run and, exactly, what their timers count."""
    n = env["workers"]
    mb = sizes["transfer_elements"] * 8 / 1e6
    calls = sizes["transfer_calls"]
    return [
        f"- Transfer cases (transfer_*): a float64 `np.arange` of {sizes['transfer_elements']:,} elements "
        f"({mb:,.0f} MB), built in the caller before any timer.  {calls} calls one after another, each "
        "waited for before the next, with the same task functions for every row (`_workloads.total`: "
        "`float(a.sum())`; `_workloads.cached_array`: the worker's own array, built on its first call "
        f"in that process and returned as is afterwards).  Rows, {n} workers each: `poolx` "
        f"`poolx.Executor({n})` (forkserver), `ex.submit(fn, arr).result()`, put: `ref = ex.put(arr)`, "
        f"then `ex.submit(total, ref).result()`; `ray` `ray.init(num_cpus={n}, include_dashboard=False, "
        "log_to_driver=False, configure_logging=False)` (usage stats off), `ray.get(total.remote(arr))`, "
        "put: `ray.put(arr)`, then `total.remote(ref)`; `joblib` "
        f"`joblib.Parallel(n_jobs={n}, backend=\"loky\")([delayed(total)(arr)])`, one Parallel per call "
        "on joblib's warm loky workers, default `max_nbytes=\"1M\"` (the array is dumped to a "
        "memory-mapped file the workers open); `multiprocessing.Pool[forkserver]` "
        f"`multiprocessing.get_context(\"forkserver\").Pool({n})`, `pool.apply(total, (arr,))`.  "
        "joblib and multiprocessing.Pool have no put: in transfer_put they get the array itself every "
        "call, so their transfer_put is their transfer_args again.",
        "- Not timed, in this order: the array; the pool or cluster (\"pool start\"); one warm-up call "
        "exactly as a timed one (transfer_put: a put and one call on its ref, the ref then dropped), "
        "timed by itself (\"warm-up call\": the cold cost, with whatever the library starts on its first "
        "call, and for transfer_returns the worker building its array); every worker readied "
        f"({2 * n} calls at once, each importing numpy, building the cached array for transfer_returns, "
        "and sleeping 50 ms); the baseline.",
        f"- The headline is the effective bandwidth: {calls} x the array's bytes / (wall time of the "
        f"{calls} calls - the baseline), with 1e9 bytes a GB.  The baseline is the median of "
        f"{_case.TRANSFER_BASELINE_RUNS} runs, just before the timer, of {calls} `float(arr.sum())` in "
        "the caller on the array in memory: the sums' own time, which the calls also contain (in the "
        "worker for transfer_args and transfer_put, in the caller for transfer_returns), so the "
        "headline counts the moving alone.  \"wall GB/s\" is the same bytes over the whole wall time, "
        "sums included.  Where wall - baseline is under "
        f"{_case.TRANSFER_FLOOR_S * 1e3:g} ms it is clamped to that and the run counted as clamped.",
    ]


def markdown(env, config, summary, goal_rows, records, json_name="results.json"):
    sizes = config["sizes"]
    only_joblib = bool(summary) and all(c in _case.JOBLIB_CASES for c in summary)
    has_joblib = any(c in summary for c in _case.JOBLIB_CASES)
    only_transfer = bool(summary) and all(c in _case.TRANSFER_CASES for c in summary)
    has_transfer = any(c in summary for c in _case.TRANSFER_CASES)
    title = ("# poolx benchmark results: the joblib backend beside joblib's own, Dask's and Ray's"
             if only_joblib else
             "# poolx benchmark results: a large numpy array between processes, beside Ray, joblib and "
             "multiprocessing.Pool" if only_transfer else "# poolx benchmark results")
    busy = config.get("busy") or 0
    if busy:
        title += f" (busy machine: {busy} CPU-bound process{'es' if busy > 1 else ''} beside the benchmark)"
    lines = [title, "",
             f"Generated by `{config['command']}` in {config['total_s']:.0f} s "
             f"({config['repeats']} repeat(s) of every measurement).  Every number comes from "
             f"`{json_name}` beside this file; rerun the command to refresh both.", "",
             "## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in env.items()]
    lines += ["", *load_lines(records)]
    if only_joblib:
        intro = "Computed from the medians below: " + JOBLIB_GOALS_TEXT + "."
        joblib_goals = {what for what, _most in JOBLIB_GOALS.values()}
        goal_rows = [g for g in goal_rows if g["goal"] in joblib_goals]  # the others have no data here
    elif only_transfer:
        intro = "Computed from the medians below: " + TRANSFER_GOALS_TEXT + "."
        transfer_goals = {what for what, _least in TRANSFER_GOALS.values()}
        goal_rows = [g for g in goal_rows if g["goal"] in transfer_goals]
    else:
        intro = ("Computed from the medians below for the default `poolx` row "
                 "(forkserver); the best peer is the best of " + ", ".join(PEERS) + "; the actor "
                 "goals compare with the Ray median of the same run"
                 + ("; the poolx.Pool goals with the better of the two multiprocessing.Pool rows "
                    "(default context, forkserver) of the same run (speed: their median / poolx's for "
                    "times, poolx's / theirs for rates; above 1x poolx.Pool is faster)"
                    if any(c in summary for c in _case.POOL_CASES) else "")
                 + ("; " + JOBLIB_GOALS_TEXT if has_joblib else "")
                 + ("; " + TRANSFER_GOALS_TEXT if has_transfer else "") + ".")
    lines += ["", *issue_goal_lines(issue_goals(summary))]
    lines += ["## Goals", "", intro, "",
              "| goal | target | measured | status |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {g['measured']} | {g['status']} |" for g in goal_rows]
    lines += ["", "## Results", ""]
    for case, rows in summary.items():
        lines += [*case_table(case, rows, sizes), ""]
    if only_joblib:
        lines += ["## Methodology", "", *common_method_notes(), *joblib_method_notes(env)]
    elif only_transfer:
        lines += ["## Methodology", "", *common_method_notes(), *transfer_method_notes(env, sizes)]
    else:
        lines += method_notes(env, pools=any(c in summary for c in _case.POOL_CASES))
        if has_joblib:
            lines += joblib_method_notes(env)
        if has_transfer:
            lines += transfer_method_notes(env, sizes)
    lines += issue_method_notes(summary, sizes, config.get("busy") or 0)
    skipped = [r for r in records if r["status"] == "skipped"]
    if skipped:
        lines += ["", "## Skipped", ""]
        for reason in sorted({r["skip_reason"] for r in skipped}):
            which = sorted({(r["impl"], r["case"]) for r in skipped if r["skip_reason"] == reason})
            lines.append(f"- {', '.join(f'{i} / {c}' for i, c in which)}: {reason}")
    failed = [r for r in records
              if r["status"] not in ("ok", "skipped") or "note" in r or r.get("leftover_processes")]
    if failed:
        lines += ["", "## Failures, timeouts and leftovers", ""]
        for r in failed:
            what = r["status"] + (f" (limit {r['timeout_s']:g} s)" if r["status"] == "timeout" else "")
            what += f", {r['note']}" if "note" in r else ""
            if r.get("leftover_processes"):
                what += f", {r['leftover_processes']} leftover process(es) killed"
            tail = (r.get("stderr_tail") or "").strip().splitlines()[-3:]
            lines.append(f"- {r['case']} / {r['impl']} (repeat {r['repeat']}): {what}"
                         + (": `" + " / ".join(tail).replace("`", "'") + "`" if tail else ""))
    return "\n".join(lines) + "\n"


def others_cores(record):
    return record.get("foreign_cpu_s", 0) / max(record["wall_s"], 1e-9)


def load_lines(records):
    """How busy the rest of the machine was while each measurement ran."""
    total = sum(r.get("foreign_cpu_s", 0) for r in records)
    wall = sum(r["wall_s"] for r in records)
    disturbed = [r for r in records if others_cores(r) > DISTURBED_CORES]
    waited = sum(r.get("waited_for_idle_s", 0) for r in records)
    return ["## Machine load", "",
            f"Other processes used {total:.1f} CPU-seconds while the measurements ran "
            f"({total / max(wall, 1e-9):.2f} cores on average, read from /proc).  "
            f"{len(disturbed)} of {len(records)} measurements ran while they kept more than "
            f"{DISTURBED_CORES} core busy"
            + (f"; the run waited {waited:.0f} s in all for quieter moments" if waited else "")
            + ".  The \"others' CPU\" column gives the median cores other processes used "
            "during each row's runs (`foreign_cpu_s` per measurement in results.json)."]


def common_method_notes():
    return [
        "- Every (case, implementation, repeat) ran in a fresh `python benchmarks/_case.py CASE IMPL` "
        "subprocess; the order of the implementations rotates by one place each repeat.",
        "- Shutdown is not timed (its median is in results.json as `shutdown_ms`).",
        "- The table shows the median of the repeats that succeeded, and their min and max.",
    ]


def joblib_method_notes(env):
    """What the joblib cases run and, exactly, what their timers count."""
    n = env["workers"]
    return [
        f"- joblib cases (joblib_*): every row is `with joblib.parallel_config(backend=B, n_jobs={n}):` "
        "around the joblib code; GridSearchCV's own `n_jobs` is left at None, so it takes the "
        "config's.  B per row: `poolx` \"poolx\" (after `import poolx.joblib`: the backend's own "
        f"executor of {n} worker processes, forkserver, kept warm between Parallel calls); `loky` "
        f"\"loky\", joblib's default (its reusable loky executor of {n} workers, kept warm); "
        f"`multiprocessing.Pool` \"multiprocessing\" (a new `multiprocessing.Pool({n})`, default "
        f"context, for every Parallel call); `threading` \"threading\" (a new pool of {n} threads for "
        "every call); `dask` \"dask\" on `distributed.Client(LocalCluster(n_workers="
        f"{n}, threads_per_worker=1, processes=True, dashboard_address=None))`; `ray` \"ray\" "
        f"after `ray.util.joblib.register_ray()` and `ray.init(num_cpus={n}, include_dashboard=False, "
        f"log_to_driver=False, configure_logging=False)` (a new Pool of {n} Ray actors for every "
        "Parallel call).",
        "- Before any timer, in every joblib case: the imports (joblib, scikit-learn, and "
        "poolx.joblib, distributed or ray as the row needs), `load_digits`, one serial fit outside "
        "parallel_config (the reference: every fit's `best_score_` must equal it exactly), and for "
        f"dask and ray the cluster: `LocalCluster` + `Client` + `client.wait_for_workers({n})`, or "
        "`ray.init(...)`; its median is the \"cluster start\" column, never counted.",
        "- joblib_gridsearch_first counts, from entering parallel_config to the end of the first fit: "
        f"poolx: starting the backend's executor (the forkserver and {n} worker processes) and the "
        "workers' first imports (scikit-learn, as they unpickle the first tasks); loky: starting "
        f"joblib's loky executor ({n} workers) and the same imports; multiprocessing.Pool: forking "
        "the Pool (its workers inherit the caller's imports); threading: starting the threads; dask: "
        f"none of the cluster (its {n} workers are up and connected): joblib's dask backend set-up, "
        "the data sent with the tasks and the Dask workers' first imports of scikit-learn; ray: "
        f"none of `ray.init`: the Pool of {n} Ray actors the backend starts for the call (worker "
        "processes from the raylet, their imports) and the data sent to them.",
        "- Warm (joblib_gridsearch_warm, joblib_tiny): one untimed call in the same parallel_config "
        "first.  poolx's and loky's workers stay up between calls, as do Dask's; joblib's "
        "multiprocessing and threading backends and Ray's start a new pool for every Parallel call "
        "(GridSearchCV makes one per fit), so their warm figures still include that start.",
        "- joblib_tiny: `joblib.Parallel(n_jobs=2)` with its default `batch_size=\"auto\"`; \"batches\" "
        "is how many batches the timed call dispatched (the threading backend does not batch: one "
        "task per item).",
    ]


def method_notes(env, pools=False):
    return [
        "## Methodology", "",
        "- Every (case, implementation, repeat) ran in a fresh `python benchmarks/_case.py CASE IMPL` "
        "subprocess; the order of the implementations rotates by one place each repeat.",
        "- Library imports happen before any timer starts: startup excludes import time.",
        f"- Pools have {env['workers']} workers (retrieve: {env['retrieve_workers']}), each library's "
        "default settings and start method (the column above); `poolx[fork]` is poolx with "
        "`mp_context=\"fork\"`, the start method the stdlib peers use on this Python.",
        "- tasks, map, roundtrip, pi and retrieve warm the pool first (every worker has run a "
        "task; for pi, numpy is imported in every worker): their numbers exclude pool startup.",
        "- Shutdown is not timed (its median is in results.json as `shutdown_ms`).",
        "- Actor cases: poolx `Executor(max_workers=2)` (actor_retrieve: 6), Ray "
        "`ray.init(num_cpus=2)` (6) with `include_dashboard=False, log_to_driver=False, "
        "configure_logging=False`, Dask `LocalCluster(n_workers=2)` (6) with one thread per worker "
        "process; a fresh Ray or Dask cluster per measurement, whose start is not timed.  "
        "The actor is created and called 100 times before the timer starts.",
        "- The table shows the median of the repeats that succeeded, and their min and max.",
    ] + ([
        "- Pool cases (pool_*): `poolx.Pool(2)` (the `poolx` row; `poolx[fork]`: `context=\"fork\"`), "
        "`multiprocessing.Pool(2)` (default context) and `multiprocessing.get_context(\"forkserver\")"
        ".Pool(2)`, and `ray.util.multiprocessing.Pool(2)` (the `ray` row) on a fresh local Ray "
        "cluster started as for the actor cases (`num_cpus=2`); the same call, with the same chunksize "
        "argument or none, for every pool.  Pool construction is not timed; every pool is warmed "
        "first (every worker has run a task, ten apply_async round trips, then a 100-item map).",
    ] if pools else [])


def issue_method_notes(summary, sizes, busy):
    """What issue 23's cases, the floors and --busy add, for the ones in this run."""
    notes = []
    if "startup_next" in summary:
        notes.append("- startup_next: in one process, the first executor is made, gets one trivial task and "
                     "is shut down (\"first executor ms\"), then the next is timed from construction to its "
                     "first result.")
    if any(c in summary for c in _case.MAP_SIZE_CASES):
        notes.append(f"- map_2k, map_200k, map_2m: on the warm pool, an untimed map of {sizes['map_warm']:,} "
                     "items, then the timed map with the library's default chunking.  map_2m leaves out "
                     "ProcessPoolExecutor and loky (chunksize=1: minutes for 2M items).")
    if any(c in summary for c in _case.TRANSFER_WALL_CASES):
        notes.append("- transfer_args_wall and transfer_returns_fresh (the issue's forms): the headline is "
                     "the wall bandwidth, the sums included (`effective_gb_s` in results.json is the other); "
                     "the joblib row of transfer_args_wall keeps one `joblib.Parallel` open for every call, "
                     "so its memory-mapping dumps the array once; transfer_returns_fresh's task builds a new "
                     "array every call.")
    floors = sorted({i for rows in summary.values() for i in rows if i in _case.FLOOR_CASES})
    if floors:
        notes.append(f"- Floors ({', '.join(floors)}): no pool; fresh `python -c` interpreters (the median "
                     f"of {sizes['floor_runs']} after one untimed) and a forked child echoing through pipes "
                     f"({sizes['pingpong']:,} round trips after {sizes['pingpong_warmup']:,}); never a peer.")
    if busy:
        notes.append(f"- Busy machine: {busy} CPU-bound processes (a pure-Python loop each) ran from the "
                     "first measurement to the last; their CPU is left out of \"others' CPU\".")
    return notes


# Hand-written analysis appended to RESULTS.md: what poolx reached, what limits
# it.  It cites figures from a specific run; re-read it when the numbers move.
ANALYSIS = Path(__file__).with_name("ANALYSIS.md")


def json_path(out_md):
    """The JSON beside the markdown: results.json, or results-NAME.json beside RESULTS-NAME.md."""
    stem = out_md.stem.lower()
    return out_md.with_name((stem if stem.startswith("results") else "results") + ".json")


def write_outputs(out_md, env, config, summary, goal_rows, records):
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_json = json_path(out_md)
    data = {"environment": env, "config": config, "goals": goal_rows, "issue_goals": issue_goals(summary),
            "summary": summary, "measurements": records}
    out_json.write_text(json.dumps(data, indent=2) + "\n")
    text = markdown(env, config, summary, goal_rows, records, json_name=out_json.name)
    # The engineers' reading of the main run's figures, kept across runs; not
    # appended to the separate files (RESULTS-pool.md, RESULTS-joblib.md, ...).
    if ANALYSIS.exists() and out_md.name == "RESULTS.md":
        text = text.rstrip("\n") + "\n\n" + ANALYSIS.read_text()
    out_md.write_text(text)
    return out_json


# -- command line -------------------------------------------------------------------------


def busy_text(count):
    """The environment table's line for --busy."""
    if not count:
        return "no (nothing started beside the benchmark)"
    return (f"{count} CPU-bound process(es) (a pure-Python loop each) ran beside the benchmark for its whole "
            "duration (--busy); their CPU is not in the \"others' CPU\" column")


# Names --cases accepts for a set of cases: issue23 is every row of issue 23's goal
# table (and the floors' cases), the figures its "Issue 23's goals" table is made of.
CASE_GROUPS = {"issue23": ["startup", "startup_next", "tasks", "map_2k", "map_200k", "map_2m", "roundtrip",
                           "retrieve", "actor_awaited", "actor_pipelined", "transfer_args_wall",
                           "transfer_returns_fresh", "joblib_gridsearch_warm"]}


def expand_groups(text):
    """--cases with each group name (CASE_GROUPS) replaced by its cases."""
    if not text:
        return text
    names = [t.strip() for t in text.split(",") if t.strip()]
    return ",".join(c for name in names for c in CASE_GROUPS.get(name, [name]))


def parse_args(argv):
    p = argparse.ArgumentParser(description="Benchmark poolx against its peers.")
    p.add_argument("--quick", action="store_true", help="smaller sizes, one repeat: a smoke test")
    p.add_argument("--repeats", type=int, help=f"repeats per measurement (default {DEFAULT_REPEATS}, "
                                               f"--quick {QUICK_REPEATS})")
    p.add_argument("--cases", help="comma-separated subset of: " + ",".join(CASE_IMPLS) + "; or a group: "
                                   + ", ".join(f"{g} ({','.join(c)})" for g, c in CASE_GROUPS.items()))
    p.add_argument("--impls", help="comma-separated subset of: " + ",".join(_case.IMPLS))
    p.add_argument("--timeout", type=float, help="seconds per measurement, overriding the per-case limits")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"),
                   help="markdown output; the JSON is written beside it (results.json; "
                        "results-NAME.json beside RESULTS-NAME.md)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each measurement, wait up to S seconds for the rest of the machine "
                        f"to use under {DISTURBED_CORES} core (default 0: do not wait)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any poolx measurement failed")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="run N CPU-bound processes beside the benchmark for its whole duration (a busy "
                        "machine); recorded in the environment table and the title, killed at the end")
    args = p.parse_args(argv)
    args.cases = pick(expand_groups(args.cases), list(CASE_IMPLS), "case", p)
    args.impls = pick(args.impls, _case.IMPLS, "implementation", p)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.busy < 0:
        p.error("--busy must be >= 0")
    return args


def pick(text, known, what, parser):
    if not text:
        return list(known)
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        parser.error(f"unknown {what}(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [k for k in known if k in chosen]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env = environment()
    sizes = _case.QUICK if args.quick else _case.FULL
    print(f"poolx benchmarks: {', '.join(args.cases)}; {args.repeats} repeat(s); "
          f"{env['usable_cpus']} usable CPUs; Python {env['python']}", flush=True)
    env["busy"] = busy_text(args.busy)
    t0 = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    burners = start_burners(args.busy)
    try:
        records = run_all(args.cases, args.impls, args.repeats, args.quick, args.timeout, args.wait_idle)
    finally:
        stop_burners(burners)
        signal.signal(signal.SIGTERM, previous)
    config = {"command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "quick": args.quick, "repeats": args.repeats, "cases": args.cases, "impls": args.impls,
              "wait_idle_s": args.wait_idle, "busy": args.busy, "sizes": sizes,
              "timeouts_s": {c: args.timeout or CASE_TIMEOUT_S[c] for c in args.cases},
              "total_s": time.perf_counter() - t0}
    env["load_average_at_end"] = " ".join(f"{x:.2f}" for x in load_average())
    summary = summarise(records, args.cases)
    goal_rows = goals(summary, env["usable_cpus"])
    out_json = write_outputs(args.out, env, config, summary, goal_rows, records)
    print(f"wrote {args.out} and {out_json} ({config['total_s']:.0f} s)")
    for g in [g for g in goal_rows if g["reached"] is not None] or goal_rows:  # those with data
        print(f"  goal: {g['goal']:<40} {g['target']:<24} {g['status']:<12} {g['measured']}")
    for g in issue_goals(summary):
        ratio = ratio_text(g["ratio"]) if g["ratio"] is not None else "-"
        print(f"  issue 23: {g['case']:<24} {g['target']:<32} ratio {ratio:<8} reached: {g['reached']}")
    # Skipped (an optional library such as scikit-learn not installed) is not a failure.
    poolx_failed = any(r["status"] not in ("ok", "skipped") for r in records if r["impl"].startswith("poolx"))
    return 1 if args.strict and poolx_failed else 0


if __name__ == "__main__":
    sys.exit(main())
