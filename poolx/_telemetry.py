"""What every task leaves behind: counters, per-worker busy time, the timeline.

Backends call ``Telemetry.task_done(task)`` once per finished task (completed,
failed or cancelled after dispatch).  That costs a lock, a tuple and a few
additions to running totals (per lane and per function, which cover every task
whatever ``trace_capacity`` keeps); the raw timestamps were already taken on the
``Task``.  ``statistics()``, ``insights()`` and ``export_trace()`` read what is
kept here.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._futures import Task

#: The fields of a task record (``Telemetry.task_records()``): the worker is a
#: worker index, or minus the actor's id for an actor call; times are
#: ``time.perf_counter()`` seconds, ``s_*`` durations in seconds.
RECORD_FIELDS = ("id", "fn", "worker", "t_submit", "t_dispatch", "t_start", "t_end", "t_done",
                 "bytes_out", "bytes_in", "ok", "s_unpickle", "s_pickle")

# Finished tasks kept for export_trace() when the executor is not told otherwise
# (Executor(trace_capacity=)): the newest TRACE_CAPACITY.  A record costs about
# 330 bytes (a tuple of 13 fields, its floats and ints), so 1,000 cost ~0.3 MB:
# the last stretch of a run, enough to look at in Perfetto.  It was 100,000
# (~32 MB held by every executor that had run that many tasks, traced or not:
# issue 19).  Counters, and so statistics(), cover every task regardless.
TRACE_CAPACITY = 1_000

# The running totals of one lane (a worker index, or minus an actor's id), a
# list updated in place by tasks_done: tasks run, seconds running them
# (t_start..t_end), of which unpickling their arguments, seconds pickling their
# results, seconds a task was on its way while the lane was free (dispatch to
# start), when the lane was last free (the end of its last task's pickling), and
# when its first task started (set once).
LANE_TASKS, LANE_RUN, LANE_UNPICKLE, LANE_PICKLE, LANE_TO_START, LANE_FREE_AT, LANE_FIRST = range(7)
# The running totals of one function (by name): tasks, seconds running them
# (unpickling their arguments not included, as in a lane's working time: a
# worker's first unpickling may import the function's module), the longest.
FN_TASKS, FN_TOTAL, FN_MAX = range(3)
# Distinct function names given their own totals; the tasks of any further
# ones share OTHER_FUNCTIONS.  Names come from the program's code, so a real
# program stays far below; the bound keeps a program that makes functions
# with generated names from growing the table for ever (an entry is ~200 bytes).
FUNCTIONS_KEPT = 1_000
OTHER_FUNCTIONS = "(other functions)"


@dataclass(frozen=True)
class Statistics:
    """A snapshot of an executor's activity (``Executor.statistics()``)."""

    backend: str
    max_workers: int
    tasks_submitted: int
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    workers_alive: int
    workers_started: int
    workers_restarted: int
    """Workers started to replace one that died or retired (max_tasks_per_child)."""
    workers_died: int
    """Workers that died unexpectedly (crash, signal, os._exit)."""
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    """Messages sent to workers (many tiny tasks travel in one)."""
    messages_received: int
    busy_time: dict[int, float] = field(default_factory=dict)
    """Seconds each worker (by index) spent running tasks."""
    actors_alive: int = 0
    actors_started: int = 0
    """Actors created (restarts not included)."""
    actors_restarted: int = 0
    """Times a crashed (or killed with ``no_restart=False``) actor was started again."""
    actors_died: int = 0
    """Actor processes that died unexpectedly (crash, signal, ``os._exit``)."""
    actor_calls_submitted: int = 0
    actor_calls_completed: int = 0
    actor_calls_failed: int = 0
    actor_busy_time: dict[str, float] = field(default_factory=dict)
    """Seconds each actor (by label, ``Class#id``) spent running method calls."""

    @property
    def tasks_pending(self) -> int:
        """Submitted tasks that have not finished yet."""
        return self.tasks_submitted - self.tasks_completed - self.tasks_failed - self.tasks_cancelled

    @property
    def actor_calls_pending(self) -> int:
        """Actor method calls made that have not finished yet."""
        return self.actor_calls_submitted - self.actor_calls_completed - self.actor_calls_failed

    def __str__(self) -> str:
        """The snapshot as tables (rich when installed); ``repr()`` stays the dataclass's."""
        return render_tables(f"poolx statistics: {self.backend} backend, max_workers {self.max_workers}",
                             self._tables())

    def _tables(self) -> list[Table]:
        tasks = Table("Tasks", ("", "tasks", "actor calls"), [
            ("submitted", str(self.tasks_submitted), str(self.actor_calls_submitted)),
            ("completed", str(self.tasks_completed), str(self.actor_calls_completed)),
            ("failed", str(self.tasks_failed), str(self.actor_calls_failed)),
            ("cancelled", str(self.tasks_cancelled), "-"),
            ("pending", str(self.tasks_pending), str(self.actor_calls_pending)),
        ])
        processes = Table("Processes", ("", "workers", "actors"), [
            ("alive", str(self.workers_alive), str(self.actors_alive)),
            ("started", str(self.workers_started), str(self.actors_started)),
            ("restarted", str(self.workers_restarted), str(self.actors_restarted)),
            ("died", str(self.workers_died), str(self.actors_died)),
        ])
        traffic = Table("Traffic", ("", "to workers", "from workers"), [
            ("bytes", f"{self.bytes_sent:,}", f"{self.bytes_received:,}"),
            ("messages", f"{self.messages_sent:,}", f"{self.messages_received:,}"),
        ])
        busy = Table("Busy (s running tasks)", ("lane", "seconds"),
                     [(f"worker {w}", f"{t:.3f}") for w, t in sorted(self.busy_time.items())]
                     + [(f"actor {a}", f"{t:.3f}") for a, t in self.actor_busy_time.items()])
        return [tasks, processes, traffic, busy] if busy.rows else [tasks, processes, traffic]


def _name(fn: Any) -> str:
    # Only the name is kept: holding the callable would keep its closure alive.
    # (An actor call's fn is already its label, "Class.method".)
    if type(fn) is str:
        return fn
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def check_capacity(capacity: Any) -> int | None:
    """``trace_capacity`` as given to the Executor: an int >= 0, or None (every task)."""
    if capacity is None:
        return None
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"trace_capacity must be an int (the newest tasks export_trace() keeps) or None "
                        f"(every task), got {type(capacity).__name__} {capacity!r}")
    if capacity < 0:
        raise ValueError(f"trace_capacity must be >= 0 (0 keeps no task for export_trace(); "
                         f"statistics() counts them all the same), got {capacity}")
    return capacity


class Telemetry:
    def __init__(self, trace_capacity: int | None = TRACE_CAPACITY) -> None:
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # ``submitted`` only (task_submitted)
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0  # written under the scheduler's lock only
        self.messages_received = 0
        self.records: deque[tuple[Any, ...]] = deque(maxlen=check_capacity(trace_capacity))
        self.worker_pids: dict[int, int] = {}
        # When the executor was created (this object is made in its __init__).
        self.created = time.perf_counter()
        # Running totals that every finished task adds to (LANE_*, FN_*).
        self.lanes: dict[int, list[float]] = {}
        self.functions: dict[str, list[float]] = {}
        # When each lane's process was started (worker_started, actor_started):
        # its start-up is from then until it was ready.
        self.started_at: dict[int, float] = {}
        # When each worker (index) and actor (minus its id) said READY, by lane:
        # the profiling harness counts the time before as start-up.
        self.ready_at: dict[int, float] = {}
        # Actors: their calls are Tasks whose ``worker`` is minus the actor's id.
        self.actor_labels: dict[int, str] = {}
        self.actor_pids: dict[int, int] = {}
        self.actors_alive = 0
        self.actors_started = 0
        self.actors_restarted = 0
        self.actors_died = 0
        self.calls_submitted = 0
        self.calls_completed = 0
        self.calls_failed = 0

    @property
    def busy(self) -> dict[int, float]:
        """Seconds each worker (by index) spent running tasks."""
        return {lane: totals[LANE_RUN] for lane, totals in list(self.lanes.items()) if lane >= 0}

    @property
    def actor_busy(self) -> dict[int, float]:
        """Seconds each actor (by id) spent running method calls."""
        return {-lane: totals[LANE_RUN] for lane, totals in list(self.lanes.items()) if lane < 0}

    def worker_started(self, index: int) -> None:
        """A backend started the process of worker ``index`` (its start-up runs until worker_ready)."""
        self.started_at[index] = time.perf_counter()

    def worker_ready(self, index: int, pid: int) -> None:
        self.worker_pids[index] = pid
        self.ready_at.setdefault(index, time.perf_counter())

    def actor_ready(self, actor_id: int, pid: int) -> None:
        self.actor_pids[actor_id] = pid
        self.ready_at.setdefault(-actor_id, time.perf_counter())

    def task_records(self) -> list[tuple[Any, ...]]:
        """The kept records of finished tasks and actor calls, oldest first
        (fields: ``RECORD_FIELDS``)."""
        with self._lock:
            return list(self.records)

    def totals(self) -> dict[str, Any]:
        """A consistent copy of the running totals, the lanes' facts and the kept
        records, taken at one moment (``insights()`` reads it)."""
        with self._lock:
            return {
                "created": self.created, "now": time.perf_counter(),
                "lanes": {lane: tuple(t) for lane, t in self.lanes.items()},
                "functions": {name: tuple(t) for name, t in self.functions.items()},
                "started_at": dict(self.started_at), "ready_at": dict(self.ready_at),
                "worker_pids": dict(self.worker_pids), "actor_pids": dict(self.actor_pids),
                "actor_labels": dict(self.actor_labels), "records": list(self.records),
                "trace_capacity": self.records.maxlen,
                "finished": self.completed + self.failed + self.calls_completed + self.calls_failed,
            }

    def actor_started(self, actor_id: int, label: str) -> None:
        with self._lock:
            self.actor_labels[actor_id] = label
            self.started_at.setdefault(-actor_id, time.perf_counter())
            self.actors_started += 1
            self.actors_alive += 1

    def actor_restarted(self) -> None:
        with self._lock:
            self.actors_restarted += 1

    def actor_crashed(self) -> None:
        with self._lock:
            self.actors_died += 1

    def actor_ended(self, actor_id: int) -> None:
        with self._lock:
            self.actors_alive -= 1

    def actor_call_submitted(self) -> None:
        with self._lock:
            self.calls_submitted += 1

    def task_submitted(self) -> None:
        # Its own lock, not ``_lock``: the scheduler holds that for a whole batch
        # of results (tasks_done), and a submitting caller waited for it there.
        with self._submit_lock:
            self.submitted += 1

    def task_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def task_done(self, task: Task, ok: bool) -> None:
        self.tasks_done(((task, ok),))

    def tasks_done(self, finished: Iterable[tuple[Task, bool]]) -> None:
        """Record finished tasks: one lock for a whole batch of results.

        Besides the record, a task that ran adds to its lane's and its
        function's running totals (LANE_*, FN_*): lists updated in place,
        written out here rather than in a helper, as a call per task costs more
        than the additions (this loop is on every task's way back).
        """
        with self._lock:
            lanes = self.lanes
            functions = self.functions
            append = self.records.append
            for task, ok in finished:
                worker = task.worker
                call = task.fn
                if worker >= 0 or type(call) is not str:
                    # A task (worker -1: it never reached one, e.g. its input failed).
                    if ok:
                        self.completed += 1
                    else:
                        self.failed += 1
                elif ok:  # an actor call (its fn is its label, "Class.method")
                    self.calls_completed += 1
                else:
                    self.calls_failed += 1
                bytes_out, bytes_in = task.bytes_out, task.bytes_in
                self.bytes_sent += bytes_out
                self.bytes_received += bytes_in
                # (_name, written out: a call per task costs more than its work)
                name = call if type(call) is str else \
                    getattr(call, "__qualname__", None) or type(call).__qualname__
                t_dispatch, t_start, t_end = task.t_dispatch, task.t_start, task.t_end
                s_unpickle, s_pickle = task.s_unpickle, task.s_pickle
                append((task.id, name, worker, task.t_submit, t_dispatch,
                        t_start, t_end, task.t_done, bytes_out, bytes_in, ok,
                        s_unpickle, s_pickle))
                if not t_start:
                    continue  # it never ran: no lane's time
                run = t_end - t_start
                lane = lanes.get(worker) or self._lane(worker, task)
                lane[0] += 1  # LANE_TASKS ... (see LANE_*)
                lane[1] += run
                lane[2] += s_unpickle
                lane[3] += s_pickle
                # On its way while the lane was free: from the later of its dispatch
                # and the end of the lane's task before (a task sent ahead waits).
                free_at = lane[5]
                begin = t_dispatch
                if free_at > begin:
                    begin = free_at
                if t_start > begin:
                    lane[4] += t_start - begin
                if t_end + s_pickle > free_at:
                    lane[5] = t_end + s_pickle
                fn = functions.get(name) or self._function(name)
                fn[0] += 1  # FN_TASKS, FN_TOTAL, FN_MAX
                run -= s_unpickle
                fn[1] += run
                if run > fn[2]:
                    fn[2] = run

    def _lane(self, worker: int, first: Task) -> list[float]:
        # Free from when it was ready, or (no READY: threads, clusters) from its first task's submission.
        free_at = max(self.ready_at.get(worker, 0.0), first.t_submit)
        lane = self.lanes[worker] = [0, 0.0, 0.0, 0.0, 0.0, free_at, first.t_start]
        return lane

    def _function(self, name: str) -> list[float]:
        if len(self.functions) >= FUNCTIONS_KEPT and name not in self.functions:
            name = OTHER_FUNCTIONS
        return self.functions.setdefault(name, [0, 0.0, 0.0])

    def snapshot(self, **workers: Any) -> Statistics:
        with self._lock:
            return Statistics(
                tasks_submitted=self.submitted,
                tasks_completed=self.completed,
                tasks_failed=self.failed,
                tasks_cancelled=self.cancelled,
                bytes_sent=self.bytes_sent,
                bytes_received=self.bytes_received,
                messages_sent=self.messages_sent,
                messages_received=self.messages_received,
                busy_time=self.busy,
                actors_alive=self.actors_alive,
                actors_started=self.actors_started,
                actors_restarted=self.actors_restarted,
                actors_died=self.actors_died,
                actor_calls_submitted=self.calls_submitted,
                actor_calls_completed=self.calls_completed,
                actor_calls_failed=self.calls_failed,
                actor_busy_time={self.actor_labels.get(a, f"actor#{a}"): t
                                 for a, t in self.actor_busy.items()},
                **workers,
            )

    def trace_events(self, backend: str) -> list[dict[str, Any]]:
        """The Chrome/Perfetto trace events: one lane (tid) per worker and per actor."""
        with self._lock:
            # Not a task that never reached a worker (its input failed): it has no
            # lane (its worker stayed -1, which is no actor's when none has id 1).
            records = [r for r in self.records if r[2] >= 0 or -r[2] in self.actor_labels]
        if not records:
            return []
        t0 = min(r[3] for r in records)
        pid = os.getpid()
        events: list[dict[str, Any]] = [
            {"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
             "args": {"name": f"poolx executor ({backend})"}},
        ]
        for worker in sorted({r[2] for r in records}):
            if worker >= 0:
                wpid = self.worker_pids.get(worker)
                label = f"worker {worker}" + (f" (pid {wpid})" if wpid else "")
            else:
                apid = self.actor_pids.get(-worker)
                label = (f"actor {self.actor_labels.get(-worker, -worker)}"
                         + (f" (pid {apid})" if apid else ""))
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": _lane(worker),
                           "args": {"name": label}})
        for tid, fn, worker, t_sub, t_disp, t_start, t_end, t_done, b_out, b_in, ok, s_un, s_pi in records:
            kind = "task" if worker >= 0 else "actor call"
            events.append({
                "ph": "X", "cat": kind if ok else f"{kind},failed", "name": fn,
                "pid": pid, "tid": _lane(worker),
                # (a task that failed before it started, e.g. its worker died: when that was known)
                "ts": ((t_start or t_done) - t0) * 1e6,
                "dur": max(t_end - t_start, 0.0) * 1e6 if t_start else 0.0,
                "args": {
                    "task": tid, "ok": ok,
                    "queued_us": round((t_disp - t_sub) * 1e6, 1),
                    "to_start_us": round((t_start - t_disp) * 1e6, 1),
                    "result_back_us": round((t_done - t_end) * 1e6, 1),
                    "bytes_out": b_out, "bytes_in": b_in,
                    "unpickle_us": round(s_un * 1e6, 1), "pickle_us": round(s_pi * 1e6, 1),
                },
            })
        return events

    def trace_kept(self) -> dict[str, Any]:
        """What the trace holds: its capacity, the tasks in it, and the older ones it let go."""
        with self._lock:
            finished = self.completed + self.failed + self.calls_completed + self.calls_failed
            kept = len(self.records)
            return {"trace_capacity": self.records.maxlen, "tasks_kept": kept,
                    "tasks_not_kept": finished - kept}

    def export_trace(self, path: str | os.PathLike[str], backend: str) -> None:
        import json
        # ("otherData" is the trace format's place for facts about the trace itself.)
        trace = {"traceEvents": self.trace_events(backend), "displayTimeUnit": "ms",
                 "otherData": {"poolx": self.trace_kept()}}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(trace, f)


def _lane(worker: int) -> int:
    """Trace lane of a worker index (1, 2, ...) or of an actor (-id: 100001, 100002, ...)."""
    return worker + 1 if worker >= 0 else 100_000 - worker


# -- tables: what str(statistics()) and str(insights()) print -------------------

# The width tables are laid out for when the terminal's is unknown (output to a
# file or a pipe): wide enough for the insights' widest table, 8 columns.
TABLE_WIDTH = 100


@dataclass(frozen=True)
class Table:
    """A titled table of text cells: the first ``labels`` columns are labels
    (left-aligned), the others figures (right-aligned)."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    labels: int = 1


def render_tables(heading: str, tables: Sequence[Table], notes: Sequence[str] = ()) -> str:
    """``heading``, the tables and the notes as text: drawn by rich when it is
    installed, plain aligned columns otherwise."""
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        return _plain(heading, tables, notes)
    out = io.StringIO()
    console = Console(file=out, width=shutil.get_terminal_size((TABLE_WIDTH, 24)).columns,
                      highlight=False, emoji=False, markup=False)
    console.print(heading)
    for table in tables:
        # (no vertical rules, no wrapping: a narrow terminal shortens labels, not rows)
        drawn = RichTable(title=table.title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for i, column in enumerate(table.columns):
            drawn.add_column(column, justify="left" if i < table.labels else "right", no_wrap=True)
        for row in table.rows:
            drawn.add_row(*row)
        console.print(drawn)
    for note in notes:
        console.print(note)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def _plain(heading: str, tables: Sequence[Table], notes: Sequence[str]) -> str:
    lines = [heading]
    for table in tables:
        cells = [list(table.columns), *(list(row) for row in table.rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
        lines += ["", table.title]
        for n, row in enumerate(cells):
            lines.append("  " + "  ".join(cell.ljust(w) if i < table.labels else cell.rjust(w)
                                          for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
            if n == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def html_tables(heading: str, tables: Sequence[Table], notes: Sequence[str] = ()) -> str:
    """The same as HTML (Jupyter's ``_repr_html_``)."""
    import html  # (only here: html.entities' tables need not load at import poolx)

    e = html.escape
    parts = [f"<p><b>{e(heading)}</b></p>"]
    for table in tables:
        head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table.rows)
        parts.append(f"<table><caption>{e(table.title)}</caption><thead><tr>{head}</tr></thead>"
                     f"<tbody>{body}</tbody></table>")
    parts += [f"<p>{e(note)}</p>" for note in notes]
    return "\n".join(parts)
