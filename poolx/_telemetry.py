"""What every task leaves behind: counters, per-worker busy time, the timeline.

Backends call ``Telemetry.task_done(task)`` once per finished task (completed,
failed or cancelled after dispatch).  That costs a lock and a tuple; the raw
timestamps were already taken on the ``Task``.  ``statistics()`` and
``export_trace()`` read what is kept here.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterable
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
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0  # written under the scheduler's lock only
        self.messages_received = 0
        self.busy: dict[int, float] = {}
        self.records: deque[tuple[Any, ...]] = deque(maxlen=check_capacity(trace_capacity))
        self.worker_pids: dict[int, int] = {}
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
        self.actor_busy: dict[int, float] = {}

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

    def actor_started(self, actor_id: int, label: str) -> None:
        with self._lock:
            self.actor_labels[actor_id] = label
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
        with self._lock:
            self.submitted += 1

    def task_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def task_done(self, task: Task, ok: bool) -> None:
        self.tasks_done(((task, ok),))

    def tasks_done(self, finished: Iterable[tuple[Task, bool]]) -> None:
        """Record finished tasks: one lock for a whole batch of results."""
        with self._lock:
            busy = self.busy
            append = self.records.append
            for task, ok in finished:
                worker = task.worker
                if worker < 0:  # an actor call
                    if ok:
                        self.calls_completed += 1
                    else:
                        self.calls_failed += 1
                    self.actor_busy[-worker] = self.actor_busy.get(-worker, 0.0) + (task.t_end - task.t_start)
                else:
                    if ok:
                        self.completed += 1
                    else:
                        self.failed += 1
                    busy[worker] = busy.get(worker, 0.0) + (task.t_end - task.t_start)
                self.bytes_sent += task.bytes_out
                self.bytes_received += task.bytes_in
                append((task.id, _name(task.fn), task.worker, task.t_submit, task.t_dispatch,
                        task.t_start, task.t_end, task.t_done, task.bytes_out, task.bytes_in, ok,
                        task.s_unpickle, task.s_pickle))

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
                busy_time=dict(self.busy),
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
            records = list(self.records)
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
                "ts": (t_start - t0) * 1e6, "dur": max(t_end - t_start, 0.0) * 1e6,
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
