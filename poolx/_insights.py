"""Where an executor's time went, without a profiler: ``Executor.insights()``.

Built from what every finished task already leaves in the executor's telemetry
(poolx._telemetry): per lane (a worker, or an actor) the running totals of its
tasks, when its process was started and when it was ready; per function the
tasks, their total and longest time; and the kept task records (the newest
``trace_capacity``) for the slowest single tasks.  Nothing is measured here, and
nothing extra runs while tasks run.  The anchor is mpire's ``enable_insights``
(its documentation's "Worker insights" page), which reports per worker its
start-up, waiting and working time and the tasks it completed, and the longest
tasks; poolx's is always on, covers actors, and splits out the time tasks spent
travelling (dispatch to start, unpickling the arguments, pickling the result),
as the profiling harness does (poolx.harness.measure: start-up + waiting +
working + transfer add up, per lane, to the time from its start to the last
finished task).

This module reads only the executor's front-end members (``telemetry``,
``statistics()``, ``max_workers``, ``backend``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ._telemetry import (
    FN_MAX,
    FN_TASKS,
    FN_TOTAL,
    LANE_FIRST,
    LANE_FREE_AT,
    LANE_PICKLE,
    LANE_RUN,
    LANE_TASKS,
    LANE_TO_START,
    LANE_UNPICKLE,
    Statistics,
    Table,
    html_tables,
    render_tables,
)

if TYPE_CHECKING:
    from ._executor import Executor

# The slowest single tasks listed (from the kept records): enough to spot an
# outlier, few enough to read at a glance (mpire lists 5 too).
SLOWEST_SHOWN = 5
# The functions listed in the printed table (to_dict() and .functions have all).
FUNCTIONS_SHOWN = 10


@dataclass(frozen=True)
class LaneInsight:
    """One worker's or actor's time, in seconds, from its start to the run's last finished task."""

    label: str  # "worker 0", "actor Counter#1"
    kind: str  # "worker" or "actor"
    pid: int | None  # None: a thread, the caller's thread (serial), or a cluster's that said none
    startup: float | None  # started to ready (imports, initializer, actor __init__); None: not known
    waiting: float  # ready, nothing to do
    working: float  # running tasks, unpickling their arguments not included
    transfer: float  # to_start + unpickle + pickle
    to_start: float  # a task was on its way to this free lane (dispatch to start)
    unpickle: float  # unpickling the tasks' arguments
    pickle: float  # pickling the tasks' results
    tasks: int  # tasks (or actor calls) it ran, failed ones included


@dataclass(frozen=True)
class FunctionInsight:
    """The tasks of one function (by qualified name; a ``map()`` chunk is one task, "fn [map]")."""

    name: str
    tasks: int
    total: float  # seconds running them in the worker (unpickling their arguments not included)
    mean: float
    max: float


@dataclass(frozen=True)
class SlowTask:
    """One of the slowest single tasks among the kept records."""

    task_id: int
    function: str
    lane: str
    seconds: float


@dataclass(frozen=True)
class Insights:
    """Where an executor's time went: per lane, per function, the slowest tasks.

    ``print()`` it for tables (rich when installed); ``to_dict()`` for the data.
    """

    backend: str
    max_workers: int
    elapsed: float  # seconds from the executor's creation to its last finished task
    lanes: tuple[LaneInsight, ...]
    functions: tuple[FunctionInsight, ...]  # the most total time first; every task counted
    slowest: tuple[SlowTask, ...]  # from the kept records only (tasks_kept of tasks_finished)
    tasks_finished: int  # tasks and actor calls, failed ones included
    tasks_kept: int  # of which the records kept (the newest trace_capacity)
    trace_capacity: int | None
    startup_from_creation: bool  # start-up counted from the executor's creation (see notes)
    statistics: Statistics

    @property
    def notes(self) -> list[str]:
        """What the figures are based on, where it is less than everything."""
        notes = []
        if self.tasks_kept < self.tasks_finished:
            notes.append(f"The slowest tasks are of the newest {self.tasks_kept:,} of "
                         f"{self.tasks_finished:,} finished tasks (trace_capacity={self.trace_capacity}); "
                         "the other tables count every task.")
        if self.startup_from_creation:
            notes.append("Start-up is counted from the executor's creation: the backend does not say when "
                         "it started each worker.")
        if any(f.name.endswith(" [map]") for f in self.functions):
            notes.append("A map() chunk is one task (\"fn [map]\"): its time is its items' together.")
        return notes

    def to_dict(self) -> dict[str, Any]:
        """The data as plain dicts and lists (JSON-ready), the notes included."""
        data = asdict(self)
        data["statistics"] = asdict(self.statistics)
        data["notes"] = self.notes
        return data

    def _heading(self) -> str:
        total = sum(lane.startup or 0.0 for lane in self.lanes) + sum(
            lane.waiting + lane.working + lane.transfer for lane in self.lanes)
        share = ""
        if total > 0:
            parts = [("working", sum(lane.working for lane in self.lanes)),
                     ("transfer", sum(lane.transfer for lane in self.lanes)),
                     ("waiting", sum(lane.waiting for lane in self.lanes)),
                     ("start-up", sum(lane.startup or 0.0 for lane in self.lanes))]
            share = "; the lanes' time: " + ", ".join(f"{name} {t / total:.0%}" for name, t in parts)
        return (f"poolx insights: {self.backend} backend, max_workers {self.max_workers}, "
                f"{self.tasks_finished:,} tasks finished in {self.elapsed:.3f} s{share}")

    def _tables(self) -> list[Table]:
        lanes = Table("Time per lane (s)",
                      ("lane", "pid", "tasks", "start-up", "waiting", "working", "transfer"),
                      [(lane.label, str(lane.pid or "-"), str(lane.tasks), _s(lane.startup),
                        _s(lane.waiting), _s(lane.working), _s(lane.transfer)) for lane in self.lanes])
        transfer = Table("Transfer per lane (s)", ("lane", "to start", "unpickling", "pickling"),
                         [(lane.label, _s(lane.to_start), _s(lane.unpickle), _s(lane.pickle))
                          for lane in self.lanes if lane.transfer > 0])
        functions = Table("Tasks by function (s)",
                          ("function", "tasks", "total", "mean", "max"),
                          [(f.name, f"{f.tasks:,}", _s(f.total), _s(f.mean), _s(f.max))
                           for f in self.functions[:FUNCTIONS_SHOWN]])
        slowest = Table("Slowest tasks (s)", ("function", "lane", "task", "seconds"),
                        [(t.function, t.lane, str(t.task_id), _s(t.seconds)) for t in self.slowest], labels=2)
        return [table for table in (lanes, transfer, functions, slowest) if table.rows]

    def __str__(self) -> str:
        return render_tables(self._heading(), self._tables(), self.notes)

    def _repr_html_(self) -> str:
        return html_tables(self._heading(), self._tables(), self.notes)


def insights(executor: Executor) -> Insights:
    """Where ``executor``'s time went so far: its finished tasks, per lane and per function."""
    data = executor.telemetry.totals()
    lanes = data["lanes"]
    # The run so far: until the last task's end in its lane (now if none finished).
    end = max((t[LANE_FREE_AT] for t in lanes.values()), default=data["now"])
    keys = sorted(set(lanes) | set(data["ready_at"]), key=lambda k: (k < 0, abs(k)))
    labels = {key: _label(key, data) for key in keys}
    from_creation = any(key in data["ready_at"] and key not in data["started_at"] for key in keys)
    return Insights(
        backend=executor.backend,
        max_workers=executor.max_workers,
        elapsed=max(0.0, end - data["created"]),
        lanes=tuple(_lane(key, labels[key], data, end) for key in keys),
        functions=_functions(data["functions"]),
        slowest=_slowest(data["records"], labels),
        tasks_finished=data["finished"],
        tasks_kept=len(data["records"]),
        trace_capacity=data["trace_capacity"],
        startup_from_creation=from_creation,
        statistics=executor.statistics(),
    )


def _label(key: int, data: dict[str, Any]) -> str:
    if key >= 0:
        return f"worker {key}"
    return f"actor {data['actor_labels'].get(-key, -key)}"


def _lane(key: int, label: str, data: dict[str, Any], end: float) -> LaneInsight:
    totals: tuple[float, ...] = data["lanes"].get(key) or (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    first: float | None = totals[LANE_FIRST] if totals[LANE_TASKS] else None  # its first task's start
    ready: float | None = data["ready_at"].get(key)
    if ready is not None and first is not None and first < ready:
        ready = first  # a cluster's worker is known at its first result: it was ready by its start
    startup = None
    if ready is not None:
        startup = max(0.0, ready - data["started_at"].get(key, data["created"]))
    # Waiting: from ready (or, where the backend does not say, its first task's
    # start: a thread, the caller) to the end, less what it spent on tasks.
    since = ready if ready is not None else first
    run, unpickle, pickle, to_start = (totals[LANE_RUN], totals[LANE_UNPICKLE], totals[LANE_PICKLE],
                                       totals[LANE_TO_START])
    waiting = max(0.0, end - since - run - pickle - to_start) if since is not None else 0.0
    pid = data["worker_pids"].get(key) if key >= 0 else data["actor_pids"].get(-key)
    return LaneInsight(label=label, kind="worker" if key >= 0 else "actor", pid=pid, startup=startup,
                       waiting=waiting, working=max(0.0, run - unpickle),
                       transfer=to_start + unpickle + pickle, to_start=to_start, unpickle=unpickle,
                       pickle=pickle, tasks=int(totals[LANE_TASKS]))


def _functions(functions: dict[str, tuple[float, ...]]) -> tuple[FunctionInsight, ...]:
    found = [FunctionInsight(name, int(t[FN_TASKS]), t[FN_TOTAL], t[FN_TOTAL] / t[FN_TASKS], t[FN_MAX])
             for name, t in functions.items() if t[FN_TASKS]]
    return tuple(sorted(found, key=lambda f: (-f.total, f.name)))


def _slowest(records: list[tuple[Any, ...]], labels: dict[int, str]) -> tuple[SlowTask, ...]:
    # Record fields: RECORD_FIELDS (id, fn, worker, t_submit, t_dispatch, t_start, t_end, ...).
    ran = [r for r in records if r[5]]
    # (their working time, as the functions': t_end - t_start - s_unpickle)
    ran.sort(key=lambda r: r[6] - r[5] - r[11], reverse=True)
    return tuple(SlowTask(r[0], r[1], labels.get(r[2], f"lane {r[2]}"), r[6] - r[5] - r[11])
                 for r in ran[:SLOWEST_SHOWN])


def _s(seconds: float | None) -> str:
    """Seconds as table text: "-" when not known, milliseconds below one second."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0"
    if seconds >= 1:
        return f"{seconds:.2f}"
    return f"{seconds:.3f}" if seconds >= 0.001 else f"{seconds:.4f}"
