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
the wall time, so the lanes add up to wall x lanes.
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
    """One process's share of a run: a worker, an actor, or the driver (serial)."""

    key: int  # worker index, minus the actor's id, or -0 for the driver
    label: str
    pid: int | None
    ready: float  # seconds after the run started
    cpu: float | None = None  # CPU seconds
    peak_rss: int | None = None  # bytes
    tasks: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # BUCKETS

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
        run.driver_peak_rss = _own_peak_rss()
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
            run.lanes, run.tasks = _lanes_and_tasks(ex, t0, run.wall)
        finally:
            try:
                ex.shutdown(wait=True, cancel_futures=True)
            except Exception as exc:  # the run fails; the next ones still run
                if run.ok:
                    run.ok, run.error = False, f"shutting down the executor failed: {_error(exc)}"
        run.driver_cpu = time.process_time() - cpu0
        run.driver_peak_rss = _own_peak_rss()
        account(run)
    if run.ok and expected is not None and not scenario.check(result, expected):
        run.ok = False
        run.error = f"the {mode} result differs from the serial one: {_short(result)} != {_short(expected)}"
    return run, result


def _lanes_and_tasks(ex: Any, t0: float, wall: float) -> tuple[list[Lane], list[tuple[Any, ...]]]:
    tel = ex.telemetry
    records = tel.task_records()
    tasks = [
        (fn, worker, t_sub - t0, (t_disp or t_sub) - t0, t_start - t0, t_end - t0, t_done - t0,
         b_out, b_in, ok, s_un, s_pi)
        for (_id, fn, worker, t_sub, t_disp, t_start, t_end, t_done, b_out, b_in, ok, s_un, s_pi)
        in records if t_start
    ]
    keys = set(tel.ready_at) | {t[1] for t in tasks}
    # The processes backend's workers are this machine's; a cluster's only when they descend
    # from this process (a local cluster), not when they run on a cluster it connected to.
    local: set[int] | None = None if ex.backend == "processes" else _descendants()
    lanes = []
    for key in sorted(keys, key=lambda k: (k < 0, abs(k))):
        if key >= 0:
            pid = tel.worker_pids.get(key)
            label = f"worker {key}"
        else:
            pid = tel.actor_pids.get(-key)
            label = f"actor {tel.actor_labels.get(-key, -key)}"
        ready = tel.ready_at.get(key)
        ready_s = min(wall, ready - t0) if ready else 0.0
        # A cluster backend learns of a worker when its first task comes back: the
        # worker was ready by the time that task started.
        ready_s = min([ready_s, *(t[4] for t in tasks if t[1] == key)])
        lane = Lane(key, label, pid, max(0.0, ready_s))
        if pid and (local is None or pid in local):
            lane.cpu, lane.peak_rss = process_facts(pid)
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
    """Split each lane's wall time into BUCKETS (see the module docstring)."""
    by_lane: dict[int, list[tuple[Any, ...]]] = {}
    for t in run.tasks:
        by_lane.setdefault(t[1], []).append(t)
    for lane in run.lanes:
        mine = sorted(by_lane.get(lane.key, ()), key=lambda t: t[4])
        s = dict.fromkeys(BUCKETS, 0.0)
        s["startup"] = lane.ready
        free_at = lane.ready  # when the lane last finished something
        wall = run.wall
        for _fn, _w, submit, dispatch, start, end, _done, _bo, _bi, _ok, s_un, s_pi in mine:
            # Phases are clipped to the run: a result pickled after the caller
            # already had what it needed (an actor's last call) is past its end.
            s["unpickle"] += _overlap(start, start + s_un, wall)
            s["compute"] += _overlap(start + s_un, end, wall)
            s["pickle"] += _overlap(end, end + s_pi, wall)
            waiting_from = max(dispatch, free_at, submit)
            s["transfer"] += _overlap(waiting_from, start, wall)
            free_at = max(free_at, end + s_pi)
        used = sum(s.values())
        s["idle"] = max(0.0, run.wall - used)
        lane.tasks = len(mine)
        lane.seconds = s


def _overlap(a: float, b: float, wall: float) -> float:
    """Length of [a, b] within [0, wall]."""
    return max(0.0, min(b, wall) - max(a, 0.0))


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


def _own_peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
