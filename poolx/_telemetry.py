"""What every task leaves behind: counters, per-worker busy time, the timeline.

Backends call ``Telemetry.task_done(task)`` once per finished task (completed,
failed or cancelled after dispatch).  That costs a lock and a tuple; the raw
timestamps were already taken on the ``Task``.  ``statistics()`` and
``export_trace()`` read what is kept here.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._futures import Task

# Completed tasks kept for the trace: the newest TRACE_CAPACITY (about 150 bytes
# each, so 100k tasks cost ~15 MB).  Counters cover every task regardless.
TRACE_CAPACITY = 100_000


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

    @property
    def tasks_pending(self) -> int:
        """Submitted tasks that have not finished yet."""
        return self.tasks_submitted - self.tasks_completed - self.tasks_failed - self.tasks_cancelled


def _name(fn: Any) -> str:
    # Only the name is kept: holding the callable would keep its closure alive.
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


class Telemetry:
    def __init__(self) -> None:
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
        self.records: deque[tuple[Any, ...]] = deque(maxlen=TRACE_CAPACITY)
        self.worker_pids: dict[int, int] = {}

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
                if ok:
                    self.completed += 1
                else:
                    self.failed += 1
                self.bytes_sent += task.bytes_out
                self.bytes_received += task.bytes_in
                busy[task.worker] = busy.get(task.worker, 0.0) + (task.t_end - task.t_start)
                append((task.id, _name(task.fn), task.worker, task.t_submit, task.t_dispatch,
                        task.t_start, task.t_end, task.t_done, task.bytes_out, task.bytes_in, ok))

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
                **workers,
            )

    def trace_events(self, backend: str) -> list[dict[str, Any]]:
        """The Chrome/Perfetto trace events: one lane (tid) per worker."""
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
            wpid = self.worker_pids.get(worker)
            label = f"worker {worker}" + (f" (pid {wpid})" if wpid else "")
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": worker + 1,
                           "args": {"name": label}})
        for tid, fn, worker, t_sub, t_disp, t_start, t_end, t_done, b_out, b_in, ok in records:
            events.append({
                "ph": "X", "cat": "task" if ok else "task,failed", "name": fn,
                "pid": pid, "tid": worker + 1,
                "ts": (t_start - t0) * 1e6, "dur": max(t_end - t_start, 0.0) * 1e6,
                "args": {
                    "task": tid, "ok": ok,
                    "queued_us": round((t_disp - t_sub) * 1e6, 1),
                    "to_start_us": round((t_start - t_disp) * 1e6, 1),
                    "result_back_us": round((t_done - t_end) * 1e6, 1),
                    "bytes_out": b_out, "bytes_in": b_in,
                },
            })
        return events

    def export_trace(self, path: str | os.PathLike[str], backend: str) -> None:
        import json
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"traceEvents": self.trace_events(backend), "displayTimeUnit": "ms"}, f)
