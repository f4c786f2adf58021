"""From runs to the numbers and verdicts the report shows."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .measure import BUCKETS, Lane, Run

# Thresholds of the verdicts.
LOW_EFFICIENCY = 0.8
IMBALANCE = 1.5  # max/median tasks or busy time across lanes
NOISE = 0.05  # a difference under 5% is reported as within noise


@dataclass
class Row:
    """One mode at one worker count, from its unprofiled timing runs."""

    mode: str
    workers: int
    repeats: int
    wall: float  # median
    wall_min: float
    wall_max: float
    speedup: float | None = None
    efficiency: float | None = None
    tasks: int = 0
    tasks_per_s: float = 0.0
    task_p50: float | None = None
    task_p95: float | None = None
    dispatch_p50: float | None = None
    cpu_util: float | None = None
    peak_rss: int | None = None  # the largest process of the run
    bytes_out: int = 0
    bytes_in: int = 0
    lanes: int = 1
    seconds: dict[str, float] = field(default_factory=dict)  # BUCKETS summed over lanes
    per_lane: list[Lane] = field(default_factory=list)
    imbalance: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.mode} x{self.workers}" if self.mode not in ("serial", "program") else self.mode


def median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.wall)
    return ordered[(len(ordered) - 1) // 2]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    i = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[i]


def dispatch_latencies(run: Run) -> list[float]:
    """Per task: from the moment it could have started (submitted, and its
    process free) to the moment it did."""
    out = []
    by_lane: dict[int, list[tuple[Any, ...]]] = {}
    for t in run.tasks:
        by_lane.setdefault(t[1], []).append(t)
    ready = {lane.key: lane.ready for lane in run.lanes}
    for key, tasks in by_lane.items():
        free_at = ready.get(key, 0.0)
        for t in sorted(tasks, key=lambda t: t[4]):
            out.append(max(0.0, t[4] - max(t[2], free_at)))
            free_at = max(free_at, t[5] + t[11])
    return out


#: The order of the rows (a program's run, poolx.harness.session, has one row: "program").
MODE_ORDER = ("serial", "task", "actor", "program")


def summarize(runs: list[Run], *, profiled: bool = False) -> list[Row]:
    """One Row per (mode, workers), from the runs with repeat >= 0 and no profiler (with
    ``profiled``, those with a profiler too: a program runs once)."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        if run.repeat >= 0 and (profiled or run.profile == "none"):
            groups.setdefault((run.mode, run.workers), []).append(run)
    rows = []
    serial_wall = None
    for (mode, workers), group in groups.items():
        good = [r for r in group if r.ok] or group
        walls = [r.wall for r in good]
        med = median_run(good)
        row = Row(mode, workers, len(good), statistics.median(walls), min(walls), max(walls))
        row.errors = sorted({r.error for r in group if r.error})
        row.tasks = len(med.tasks)
        row.tasks_per_s = row.tasks / med.wall if med.wall and row.tasks else 0.0
        durations = [t[5] - t[4] for t in med.tasks]
        row.task_p50 = percentile(durations, 0.5)
        row.task_p95 = percentile(durations, 0.95)
        row.dispatch_p50 = percentile(dispatch_latencies(med), 0.5)
        cpus = [lane.cpu for lane in med.lanes if lane.cpu is not None]
        if cpus and len(cpus) == len(med.lanes) and med.wall > 0:
            row.cpu_util = sum(cpus) / (med.wall * len(med.lanes))
        peaks = [lane.peak_rss for lane in med.lanes if lane.peak_rss]
        row.peak_rss = max(peaks) if peaks else None
        row.bytes_out = sum(t[7] for t in med.tasks)
        row.bytes_in = sum(t[8] for t in med.tasks)
        row.lanes = len(med.lanes)
        row.seconds = {b: sum(lane.seconds.get(b, 0.0) for lane in med.lanes) for b in BUCKETS}
        row.per_lane = med.lanes
        row.imbalance = imbalance(med.lanes)
        rows.append(row)
        if mode == "serial":
            serial_wall = row.wall
    rows.sort(key=lambda r: (MODE_ORDER.index(r.mode), r.workers))
    for row in rows:
        if serial_wall and row.wall > 0:
            row.speedup = serial_wall / row.wall
            row.efficiency = row.speedup / row.workers
    return rows


def imbalance(lanes: list[Lane]) -> str | None:
    """Why the work was unevenly spread over the lanes, or None: the busiest
    process was busy more than IMBALANCE times the median one (or the median
    one did nothing), having run more than one task."""
    # Compare like with like: task workers with each other, else actors with
    # each other (a tracker actor is not meant to be as busy as the workers).
    workers = [lane for lane in lanes if lane.key >= 0]
    actors = [lane for lane in lanes if lane.key < 0]
    lanes = workers if len(workers) >= 2 else actors
    if len(lanes) < 2:
        return None
    busy = [lane.busy for lane in lanes]
    med_count = statistics.median(lane.tasks for lane in lanes)
    med_busy = statistics.median(busy)
    top = max(lanes, key=lambda lane: lane.busy)
    # A busiest process that ran one long task is not imbalance: no scheduling
    # could have split it.
    if top.tasks > 1 and top.busy > 0 and (med_busy == 0 or top.busy / med_busy > IMBALANCE):
        return (
            f"{top.label} was busy {top.busy:.2f} s, the median process {med_busy:.2f} s "
            f"({top.tasks} tasks against a median of {med_count:g})"
        )
    # Uneven task counts alone are not flagged: tasks differ in length, and
    # what costs time is uneven busy time.
    return None


def verdicts(rows: list[Row], profiled: list[tuple[str, int, float, float]]) -> list[str]:
    """Short findings, each with its evidence.  ``profiled``: (mode, workers,
    profiled wall, timing median) of each profiled run."""
    out: list[str] = []
    parallel = [r for r in rows if r.mode != "serial" and not r.errors]
    serial = next((r for r in rows if r.mode == "serial"), None)
    for r in rows:
        for error in r.errors:
            out.append(f"{r.key} failed: {error}")
    if parallel:
        best = min(parallel, key=lambda r: r.wall)
        if serial is not None and best.speedup is not None:
            if best.speedup < 1 + NOISE:
                out.append(
                    f"serial is the fastest: no parallel mode beat {serial.wall:.3f} s "
                    f"(best: {best.key} at {best.wall:.3f} s). {_dominant(best)}"
                )
            else:
                out.append(
                    f"fastest: {best.key}, {best.wall:.3f} s, {best.speedup:.2f}x serial "
                    f"({best.efficiency:.0%} efficiency)"
                )
    by_key = {(r.mode, r.workers): r for r in parallel}
    for (mode, workers), task_row in sorted(by_key.items()):
        if mode != "task" or ("actor", workers) not in by_key:
            continue
        actor_row = by_key[("actor", workers)]
        faster, slower = sorted((task_row, actor_row), key=lambda r: r.wall)
        ratio = slower.wall / faster.wall
        # Within noise: each median inside the other's range, or under NOISE apart.
        if slower.wall_min <= faster.wall and faster.wall_max >= slower.wall:
            why = "each median lies in the other's range"
        elif ratio < 1 + NOISE:
            why = f"less than {NOISE:.0%} apart"
        else:
            why = ""
        if why:
            out.append(
                f"with {_workers(workers)}, task and actor modes are within noise "
                f"({task_row.wall:.3f} s and {actor_row.wall:.3f} s; {why})"
            )
            continue
        out.append(
            f"with {_workers(workers)}, {faster.mode} mode is {ratio:.2f}x faster than "
            f"{slower.mode} mode: {_difference(faster, slower)}"
        )
    serial_fastest = any(v.startswith("serial is the fastest") for v in out)
    slow: list[Row] = []
    if serial is not None:
        slow = [r for r in parallel if r.tasks and r.seconds.get("compute", 0.0) > 1.25 * serial.wall]
        if slow:
            worst = max(slow, key=lambda r: r.seconds["compute"])
            others = ", ".join(r.key for r in slow if r is not worst)
            out.append(
                f"the same work is slower in the workers: {worst.key} computed for "
                f"{worst.seconds['compute']:.3f} worker-seconds where the serial run took "
                f"{serial.wall:.3f} s in all" + (f" (also: {others})" if others else "") + ". "
                "Imports on the first call, CPU contention (more busy processes than cores) or "
                "BLAS threads per process are the usual causes"
            )
    inflated = {r.key for r in slow}
    waiting: list[Row] = []
    for r in parallel:
        if (
            not serial_fastest
            and r.efficiency is not None
            and r.efficiency < LOW_EFFICIENCY
            and r.workers > 1
        ):
            cause = "Most of the loss is the slower compute above." if r.key in inflated else _dominant(r)
            out.append(f"{r.key}: efficiency {r.efficiency:.0%} (< {LOW_EFFICIENCY:.0%}). {cause}")
        if (
            r.cpu_util is not None
            and r.seconds.get("compute", 0) > 0.5 * r.wall * r.lanes
            and r.cpu_util < 0.25
        ):
            waiting.append(r)
        if r.imbalance:
            out.append(f"{r.key}: load imbalance: {r.imbalance}")
    if waiting:
        r = waiting[0]
        others = ", ".join(x.key for x in waiting[1:])
        out.insert(
            1 if out and out[0].startswith(("fastest", "serial is")) else 0,
            f"the work waits more than it computes: {r.key}'s processes were in the task for "
            f"{_share(r, 'compute'):.0%} of their time but used the CPU {r.cpu_util:.0%} of it: "
            "the tasks wait on I/O, sleeps or locks"
            + (f" (so do {others})" if others else "")
            + ", so more workers than cores can still help",
        )
    for mode, workers, wall, timing in profiled:
        if timing > 0:
            out.append(
                f"profile overhead: the profiled {mode} x{workers} run took {wall:.3f} s, "
                f"{wall / timing:.2f}x its timing median ({timing:.3f} s); the profiles' "
                "percentages are relative, the timings above are not affected"
            )
    return out


def _share(r: Row, bucket: str) -> float:
    total = r.wall * r.lanes
    return r.seconds.get(bucket, 0.0) / total if total else 0.0


#: What each cost besides compute is, and what to do about it.
#: The share of the unpickling time spent in each lane's first task above which it is read as
#: imports (start-up), not as big arguments: a first task's function brings its modules in.
FIRST_UNPICKLE_SHARE = 0.6
COST_HINTS = {
    "startup": "starting the processes (reuse one executor across calls, or give each process more work)",
    "unpickle": "unpickling arguments (send big inputs once: an actor's state, or poolx.put)",
    "pickle": "pickling results (return less, or smaller types)",
    "transfer": "tasks in transit to idle processes (tasks are too small: batch them with chunksize)",
    "idle": "processes waiting for work (too few tasks for the workers, or uneven tasks)",
}


def _dominant(r: Row) -> str:
    """The largest cost that is not compute, as evidence."""
    overheads = {b: _share(r, b) for b in BUCKETS if b != "compute"}
    bucket = max(overheads, key=lambda b: overheads[b])
    text = COST_HINTS[bucket]
    return (
        f"The largest cost besides compute is {bucket}, {overheads[bucket]:.0%} of the worker time: {text}."
    )


def _difference(faster: Row, slower: Row) -> str:
    """Which bucket explains most of the gap between two rows, with figures.

    Idle counts only when both rows ran as many processes (an extra, mostly
    idle tracker actor is not a scheduling problem).  A bucket explains the gap
    only if it covers at least a quarter of it (in worker-seconds)."""
    gaps = {b: slower.seconds.get(b, 0.0) - faster.seconds.get(b, 0.0) for b in BUCKETS}
    if slower.lanes != faster.lanes:
        gaps.pop("idle", None)
    bucket = max(gaps, key=lambda b: gaps[b])
    gap = (slower.wall - faster.wall) * max(slower.lanes, 1)
    if gaps[bucket] <= 0 or gaps[bucket] < 0.25 * gap:
        hint = f"; {slower.key}: {slower.imbalance}" if slower.imbalance else ""
        return f"no single cost explains it: compare the two timelines{hint}"
    s_share, f_share = _share(slower, bucket), _share(faster, bucket)
    extra = ""
    if bucket == "unpickle" and slower.tasks:
        extra = f"; {slower.bytes_out / max(slower.tasks, 1) / 1e6:.2f} MB of arguments per call"
    if bucket == "idle":
        extra = "; its processes waited for work" + (f" ({slower.imbalance})" if slower.imbalance else "")
    return (
        f"{slower.mode} mode spent {gaps[bucket]:.3f} worker-seconds more on {bucket} "
        f"({slower.seconds[bucket]:.3f} s, {s_share:.1%} of its worker time, against "
        f"{faster.seconds[bucket]:.3f} s, {f_share:.1%}{extra})"
    )


def _workers(n: int) -> str:
    return f"{n} worker" + ("" if n == 1 else "s")


# -- a program's run (poolx.harness.session) ---------------------------------------------

#: Tasks running at once, on average over the program's wall time (busy worker-seconds /
#: wall), below which parallelism is said not to have paid: 1.2 leaves room for the noise of
#: a short program; a program whose tasks overlapped less than that ran nearly serially.
PAYS = 1.2
#: The threads backend: the process used at most this many CPUs on average while its tasks
#: overlapped PAYS or more: CPU-bound Python in threads runs one at a time (the GIL).
#: Above it, something ran in parallel (C code that releases the GIL, NumPy).
GIL_CPUS = 1.3
#: ... and at least this many: below, the threads mostly waited (I/O, sleeps), which threads do
#: overlap.  Half a CPU, not one: on a busy machine the process gets less than the CPU it could use.
GIL_FLOOR = 0.5
#: A cost besides compute is named when it takes more than this share of the workers' time.
LARGE_SHARE = 0.2
#: The serial part of a program (no task running) is named above this share of its wall.
SERIAL_SHARE = 0.3


def program_summary(lanes_by_executor: list[list[Lane]], tasks: list[tuple[Any, ...]],
                    wall: float, driver_cpu: float) -> dict[str, Any]:
    """results.json's "summary" of a program: its lanes' buckets summed, busy share, CPU."""
    lanes = [lane for group in lanes_by_executor for lane in group]
    buckets = {b: sum(lane.seconds.get(b, 0.0) for lane in lanes) for b in BUCKETS}
    total = sum(buckets.values())
    found = (imbalance(group) for group in lanes_by_executor)
    return {
        "tasks": len(tasks),
        "lanes": len(lanes),
        "buckets": buckets,
        "busy_share": sum(lane.busy for lane in lanes) / total if total else 0.0,
        "busy": sum(lane.busy for lane in lanes),
        "cpu_total": driver_cpu + sum(lane.cpu for lane in lanes if lane.cpu is not None),
        "imbalance": next((text for text in found if text), None),
        "max_parallelism": max_parallelism(tasks),
        "parallel_seconds": covered(tasks, wall),
        "unpickle_first": first_unpickles(tasks),
    }


def first_unpickles(tasks: list[tuple[Any, ...]]) -> float:
    """Seconds spent unpickling the first task of each lane: where a new process imports the
    modules the task's function needs (scikit-learn, numpy), start-up in all but name."""
    first: dict[Any, tuple[float, float]] = {}
    for t in tasks:
        if t[1] not in first or t[4] < first[t[1]][0]:
            first[t[1]] = (t[4], t[10])
    return sum(unpickle for _start, unpickle in first.values())


def max_parallelism(tasks: list[tuple[Any, ...]]) -> int:
    """The most tasks that ran at the same moment."""
    edges = sorted([(t[4], 1) for t in tasks] + [(t[5], -1) for t in tasks])
    running = top = 0
    for _t, step in edges:  # (an end sorts before a start at the same instant)
        running += step
        top = max(top, running)
    return top


def covered(tasks: list[tuple[Any, ...]], wall: float) -> float:
    """Seconds of [0, wall] during which at least one task ran."""
    total, reach = 0.0, 0.0
    for start, end in sorted((max(0.0, t[4]), min(wall, t[5])) for t in tasks):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def program_verdicts(program: dict[str, Any], executors: list[dict[str, Any]],
                     summary: dict[str, Any]) -> list[str]:
    """Short findings about a program's run, each with its figures."""
    out = _ending(program)
    wall = program["wall"]
    if not executors:
        ran = (f"the program made no poolx executor, so nothing in it ran in parallel under poolx "
               f"({wall:.2f} s of wall, {program['driver_cpu']:.2f} s of CPU, all in the driver)")
        if program.get("drop_in"):
            out.append(f"{ran}, even with --drop-in: its pools stayed on the stdlib (the notes say "
                       "why), or it made none")
        else:
            out.append(f"{ran}. If it uses concurrent.futures.ProcessPoolExecutor, multiprocessing.Pool "
                       "or joblib, profile it with --drop-in (poolx profile run --drop-in ...) to run those "
                       "on poolx")
        return out
    if not summary["tasks"]:
        out.append(f"the program made {len(executors)} poolx executor(s) but ran no task on them")
        return out
    out.append(_pays(program, executors, summary))
    out += _costs(summary)
    if summary["imbalance"]:
        out.append(f"load imbalance: {summary['imbalance']}")
    for ex in executors:
        if ex["max_workers"] > 1 and 0 < ex["tasks"] < ex["max_workers"]:
            out.append(
                f"{_named(ex, executors)} ran {ex['tasks']} task(s) on {ex['max_workers']} workers: at most "
                f"{ex['tasks']} of them had work. Split the work into more, smaller tasks (at least "
                "as many as the workers), or use fewer workers")
    serial = wall - summary["parallel_seconds"]
    if wall > 0 and serial / wall > SERIAL_SHARE:
        out.append(
            f"no task ran for {serial:.2f} s of the program's {wall:.2f} s ({serial / wall:.0%}): that part "
            f"runs in the driver alone, so more workers cannot speed it up; at most {wall / serial:.1f}x "
            "faster with infinitely many (Amdahl's law). The driver's profile shows where it went")
    return out


def _ending(program: dict[str, Any]) -> list[str]:
    code, error = program.get("exit_code"), program.get("error")
    if error or code not in (None, 0):
        last = (error or "").strip().splitlines()[-1:] or [""]
        what = f"exit code {code}" if code not in (None, 0) else "an error"
        return [f"the program ended with {what}{': ' + last[0] if last[0] else ''}; "
                f"what ran until then is below"]
    return []


def _pays(program: dict[str, Any], executors: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Whether the parallel part of the program ran in parallel: tasks at once while any ran,
    and the CPUs used then (the serial rest is Amdahl's verdict, apart)."""
    span = summary["parallel_seconds"]
    at_once = summary["busy"] / span if span else 0.0
    # (all the CPU put in the span: an upper bound when the driver computed outside it)
    cpus = summary["cpu_total"] / span if span else 0.0
    figures = (f"while tasks ran ({span:.2f} s of the program's {program['wall']:.2f} s), {at_once:.2f} "
               f"ran at once on average (at most {summary['max_parallelism']}); the workers were busy "
               f"{summary['busy_share']:.0%} of their lifetime; every process together used "
               f"{summary['cpu_total']:.2f} s of CPU")
    threads = [ex for ex in executors if ex["backend"] == "threads" and ex["tasks"]]
    if threads and at_once >= PAYS and GIL_FLOOR <= cpus <= GIL_CPUS:
        return (f"parallelism did not pay for the CPU: {figures}, at most about one CPU. The tasks ran in "
                f"threads ({_named(threads[0], executors)}) and the GIL lets one of them run Python at a "
                "time: use the processes backend (the default) for CPU-bound Python")
    if at_once < PAYS:
        return (f"parallelism did not pay: {figures}. The tasks rarely overlapped: see the costs below "
                "and the timeline")
    if cpus < 0.5 * at_once:
        return (f"parallelism paid in waiting, not in computing: {figures}. The tasks wait (I/O, sleeps, "
                "locks) more than they compute, so more workers than cores can still help; or other "
                "programs held the CPUs")
    return f"parallelism paid: {figures}"


def _costs(summary: dict[str, Any]) -> list[str]:
    buckets = summary["buckets"]
    total = sum(buckets.values())
    if not total:
        return []
    out = []
    for bucket in sorted(COST_HINTS, key=lambda b: -buckets.get(b, 0.0)):
        share = buckets.get(bucket, 0.0) / total
        if share > LARGE_SHARE:
            out.append(f"{bucket} took {buckets[bucket]:.2f} of the workers' {total:.2f} s ({share:.0%}): "
                       f"{_hint(bucket, summary)}")
    return out


def _hint(bucket: str, summary: dict[str, Any]) -> str:
    first = summary.get("unpickle_first", 0.0)
    if bucket == "unpickle" and first >= FIRST_UNPICKLE_SHARE * summary["buckets"]["unpickle"]:
        return (f"{first:.2f} s of it in each process's first task, where unpickling the function imports "
                "the modules it needs: start-up in effect (reuse one executor across calls, or use fewer "
                "processes for short runs)")
    return COST_HINTS[bucket]


def _named(ex: dict[str, Any], executors: list[dict[str, Any]]) -> str:
    name = f"the {ex['front_end']} ({ex['backend']})"
    return f"ex{ex['index']}, {name}" if len(executors) > 1 else name
