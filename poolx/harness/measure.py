"""Running a scenario once, in one mode, and measuring where the time went.

Each run of a task or actor mode starts a fresh ``Executor``, so its wall time
includes starting the workers and actors, as a user's own run would; the serial
mode runs in this process.  What is measured (poolx's task records are always
on; nothing here slows the run down):

- per task or actor call: submit, dispatch, start, end and done times, the
  time spent unpickling the arguments and pickling the result, bytes each way;
- per worker or actor process (a *lane*): when it was ready, its CPU time and
  its peak resident memory, read from the live process at the end of the run
  (on a cluster backend only for worker processes that descend from this one:
  a local cluster's, not a remote one's).

``account()`` splits each lane's share of the run (the wall time) into
start-up, unpickling, compute, pickling, transfer and idle; the six add up to
the lane's window, its executor's lifetime: for a scenario's run the wall
time, so the lanes add up to wall x lanes; for a program (``session``) from
when the program made the executor to when it shut it down.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .. import Executor
from .scenario import Scenario

#: The buckets of a lane's time, in the order they are shown.
BUCKETS = ("startup", "unpickle", "compute", "pickle", "transfer", "idle")
BUCKET_HELP = {
    "startup": "before the process was ready (start, imports, initializer or actor __init__)",
    "unpickle": "unpickling arguments",
    "compute": "running the task or method",
    "pickle": "pickling results",
    "transfer": "a task was on its way to this idle process (dispatch to start)",
    "idle": "nothing to do (the rest of the wall time)",
}


@dataclass
class Lane:
    """One process's share of a run: a worker, an actor, or the driver (serial).

    Its window is its executor's lifetime, ``start`` to ``end`` (seconds after
    the run started; ``end`` None: the run's end): a scenario's executor lives
    as long as the run, a program's from when the program made it to when it
    was shut down.  ``account()`` splits that window, not the whole run.
    """

    key: int  # worker index, minus the actor's id, or -0 for the driver
    label: str
    pid: int | None
    ready: float  # seconds after the run started
    cpu: float | None = None  # CPU seconds
    peak_rss: int | None = None  # bytes
    tasks: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # BUCKETS
    start: float = 0.0
    end: float | None = None
    # When its start-up began, if later than ``start``: its process's birth, or for a
    # worker (started on demand) the first submit, if that was earlier.
    born: float | None = None

    @property
    def starting(self) -> float:
        """When its start-up began: ``born``, else its window's start."""
        return self.start if self.born is None else max(self.start, self.born)

    def window(self, wall: float) -> tuple[float, float]:
        """(start, end) of this lane's share of a run of ``wall`` seconds."""
        end = wall if self.end is None else min(self.end, wall)
        return min(self.start, end), end

    @property
    def busy(self) -> float:
        s = self.seconds
        return s.get("unpickle", 0.0) + s.get("compute", 0.0) + s.get("pickle", 0.0)


@dataclass
class Run:
    mode: str
    workers: int
    repeat: int  # -1: the warm-up run
    profile: str  # "none", "cpu" or "mem"
    wall: float = 0.0
    ok: bool = True
    error: str | None = None
    lanes: list[Lane] = field(default_factory=list)
    # Per task or actor call, times in seconds after the run started:
    # (name, lane key, submit, dispatch, start, end, done, bytes out, bytes in, ok, unpickle s, pickle s)
    tasks: list[tuple[Any, ...]] = field(default_factory=list)
    driver_cpu: float = 0.0
    driver_peak_rss: int = 0


class ExecutorError(Exception):
    """The ``Executor`` of a run could not be created (a missing extra, a
    cluster that cannot be reached, an option the backend refuses)."""


def run_once(scenario: Scenario, mode: str, workers: int, size: int, *, backend: str,
             mp_context: Any, repeat: int, expected: Any = None, hook: Any = None,
             profile: str = "none", address: str | None = None) -> tuple[Run, Any]:
    """Run ``scenario`` once in ``mode``; returns the run and the result (None on error).

    Raises ``ExecutorError`` when the run's ``Executor`` cannot be created.
    """
    run = Run(mode, workers if mode != "serial" else 1, repeat, profile)
    cpu0 = time.process_time()
    result: Any = None
    if mode == "serial":
        t0 = time.perf_counter()
        try:
            result = scenario.run(mode, None, size)
        except Exception as exc:
            run.ok, run.error = False, _error(exc)
        run.wall = time.perf_counter() - t0
        run.driver_cpu = time.process_time() - cpu0
        run.driver_peak_rss = own_peak_rss()
        lane = Lane(0, "driver", os.getpid(), 0.0, run.driver_cpu, run.driver_peak_rss,
                    seconds={"compute": run.wall})
        run.lanes = [lane]
    else:
        t0 = time.perf_counter()
        try:
            # Every task's record: the accounting below splits each lane's time from all of them.
            ex = Executor.for_front_end(workers, mp_context, backend=backend, address=address,
                                        trace_capacity=None, child_hook=hook)
        except Exception as exc:
            raise ExecutorError(f"cannot start the {backend!r} backend: {_error(exc)}") from exc
        try:
            try:
                result = scenario.run(mode, ex, size)
            except Exception as exc:
                run.ok, run.error = False, _error(exc)
            run.wall = time.perf_counter() - t0
            run.lanes, run.tasks = lanes_and_tasks(ex, t0, run.wall)
        finally:
            try:
                ex.shutdown(wait=True, cancel_futures=True)
            except Exception as exc:  # the run fails; the next ones still run
                if run.ok:
                    run.ok, run.error = False, f"shutting down the executor failed: {_error(exc)}"
        run.driver_cpu = time.process_time() - cpu0
        run.driver_peak_rss = own_peak_rss()
        account(run)
    if run.ok and expected is not None and not scenario.check(result, expected):
        run.ok = False
        run.error = f"the {mode} result differs from the serial one: {_short(result)} != {_short(expected)}"
    return run, result


#: What is read of a worker or actor process while it lives: (CPU seconds, peak resident
#: bytes, when it was born as a time.perf_counter() value); None where unknown.
Facts = tuple[float | None, int | None, float | None]


def read_processes(ex: Any) -> dict[int, Facts]:
    """The facts of ``ex``'s worker and actor processes that can be read from here: the
    processes backend's, and a cluster's only when they descend from this process (a
    local cluster), not when they run on a cluster it connected to."""
    tel = ex.telemetry
    pids = [*tel.worker_pids.values(), *tel.actor_pids.values()]
    if not pids:  # (the threads and serial backends: no process of their own)
        return {}
    local: set[int] | None = None if ex.backend == "processes" else _descendants()
    return {pid: (*process_facts(pid), process_born(pid)) for pid in pids
            if pid and (local is None or pid in local)}


def lanes_and_tasks(ex: Any, t0: float, wall: float, *, start: float = 0.0,
                    facts: dict[int, Facts] | None = None) -> tuple[list[Lane], list[tuple[Any, ...]]]:
    """The lanes of ``ex`` and its task records, in seconds after ``t0``.

    ``start``: when ``ex`` was made (seconds after ``t0``); ``facts``: its processes'
    facts read earlier (``read_processes``, while they lived), else read now.
    """
    tel = ex.telemetry
    tasks = [
        (fn, worker, t_sub - t0, (t_disp or t_sub) - t0, t_start - t0, t_end - t0, t_done - t0,
         b_out, b_in, ok, s_un, s_pi)
        for (_id, fn, worker, t_sub, t_disp, t_start, t_end, t_done, b_out, b_in, ok, s_un, s_pi)
        in tel.task_records() if t_start
    ]
    if facts is None:
        facts = read_processes(ex)
    keys = set(tel.ready_at) | {t[1] for t in tasks}
    # Workers start on demand: they were asked for at the first submit at the latest.
    asked = min((t[2] for t in tasks), default=wall)
    lanes = []
    for key in sorted(keys, key=lambda k: (k < 0, abs(k))):
        if key >= 0:
            pid = tel.worker_pids.get(key)
            label = f"worker {key}"
        else:
            pid = tel.actor_pids.get(-key)
            label = f"actor {tel.actor_labels.get(-key, -key)}"
        ready = tel.ready_at.get(key)
        ready_s = min(wall, ready - t0) if ready else start
        # A cluster backend learns of a worker when its first task comes back: the
        # worker was ready by the time that task started.
        ready_s = min([ready_s, *(t[4] for t in tasks if t[1] == key)])
        cpu, peak, born = facts.get(pid, (None, None, None)) if pid else (None, None, None)
        # A worker started on demand (at the first submit, maybe seconds after the executor
        # was made) was starting up from then, or from its birth if earlier; not from the
        # executor's making: the executor had nothing for it to do before.
        lane = Lane(key, label, pid, max(start, ready_s), cpu, peak, start=start)
        if born is not None:  # (an actor's process is started when the program makes the actor)
            lane.born = min(max(start, min(born - t0, asked) if key >= 0 else born - t0), lane.ready)
        lanes.append(lane)
    return lanes, tasks


def _descendants() -> set[int]:
    """The pids of this process's descendants (a local cluster's workers are among them)."""
    try:
        import psutil

        return {p.pid for p in psutil.Process().children(recursive=True)}
    except Exception:
        return set()


def account(run: Run) -> None:
    """Split each lane's window (its executor's lifetime) into BUCKETS (see the module docstring)."""
    by_lane: dict[int, list[tuple[Any, ...]]] = {}
    for t in run.tasks:
        by_lane.setdefault(t[1], []).append(t)
    for lane in run.lanes:
        mine = sorted(by_lane.get(lane.key, ()), key=lambda t: t[4])
        lo, hi = lane.window(run.wall)
        s = dict.fromkeys(BUCKETS, 0.0)
        # (before its process was born, a worker started on demand had nothing to do: idle)
        s["startup"] = _overlap(lane.starting, lane.ready, lo, hi)
        free_at = lane.ready  # when the lane last finished something
        for _fn, _w, submit, dispatch, start, end, _done, _bo, _bi, _ok, s_un, s_pi in mine:
            # Phases are clipped to the window: a result pickled after the caller
            # already had what it needed (an actor's last call) is past its end.
            s["unpickle"] += _overlap(start, start + s_un, lo, hi)
            s["compute"] += _overlap(start + s_un, end, lo, hi)
            s["pickle"] += _overlap(end, end + s_pi, lo, hi)
            waiting_from = max(dispatch, free_at, submit)
            s["transfer"] += _overlap(waiting_from, start, lo, hi)
            free_at = max(free_at, end + s_pi)
        used = sum(s.values())
        s["idle"] = max(0.0, (hi - lo) - used)
        lane.tasks = len(mine)
        lane.seconds = s


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    """Length of [a, b] within [lo, hi]."""
    return max(0.0, min(b, hi) - max(a, lo))


def process_facts(pid: int) -> tuple[float | None, int | None]:
    """(CPU seconds, peak resident bytes) of a live process; None where unknown."""
    cpu: float | None = None
    peak: int | None = None
    try:
        import psutil

        proc = psutil.Process(pid)
        times = proc.cpu_times()
        cpu = times.user + times.system
        peak = proc.memory_info().rss
    except Exception:
        pass
    try:  # Linux: the high-water mark, not just the current size
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return cpu, peak


def process_born(pid: int) -> float | None:
    """When process ``pid`` started, as a ``time.perf_counter()`` value (Linux: its start
    in clock ticks since boot, against CLOCK_BOOTTIME; to 1/100 s); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # (after the command, which may hold spaces)
        ticks = int(fields[19])  # field 22, starttime; fields[0] is field 3
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.perf_counter() - age


def own_peak_rss() -> int:
    """This process's peak resident memory, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
