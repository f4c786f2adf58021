"""Dispatch: which worker gets which queued tasks, and how their results come back.

Methods of the ``Scheduler`` (``_loop``), on its thread (``try_direct``
excepted: the caller's thread, under the scheduler's lock).  This is the hot
path: a batch of tasks goes out as one message (``send_tasks``), a batch of
results comes back as one (``on_results``), and the futures complete last in
the pass (``deliver``).

Why the window: a worker keeps ``1 + prefetch`` tasks in flight, where
prefetch covers PREFETCH_SECONDS of work at the current estimate of a task's
duration.  Tiny tasks therefore travel hundreds per message and a worker never
waits for the driver between them, while long tasks are not queued behind each
other on one worker when another is idle (no prefetch until the first
durations are known).
"""

from __future__ import annotations

import time
from typing import Any

from ...._errors import RemoteError
from ...._futures import Task
from .. import _channel
from .. import protocol as P
from . import _direct
from ._endpoint import Conn
from ._spawn import READY, STARTING, STOPPING
from ._state import SchedulerState
from ._workers import STOP_TIMEOUT, WorkerHandle

# Work in flight on one worker, beyond the running task, in seconds of
# estimated run time.  It must cover the driver's reaction time, which under
# GIL contention with a submitting thread can reach the 5 ms switch interval.
PREFETCH_SECONDS = 0.005
# Upper bound on prefetched tasks per worker, whatever the estimate.
MAX_PREFETCH = 2048
# At most this many tasks go into one message.
MAX_BATCH = 1024
# Weight of a new observation in the duration estimate (EWMA).
EST_ALPHA = 0.2
# Durations measured before the estimate may open the prefetch window: one
# instant first task (retrieve's item 0 sleeps 0 s) must not make six sleeps
# look tiny enough to queue behind each other.
EST_MIN_SAMPLES = 8
# Functions a worker keeps unpickled; the driver evicts the oldest beyond this.
WORKER_FN_CACHE = 1024
# After a worker death the prefetch window (see ``window``) closes to the
# running task alone, then opens again by one task per result received: under
# a steady crash rate each death sends back at most about as many tasks as
# ran since the last one, instead of up to MAX_PREFETCH every time.


class Dispatch(SchedulerState):
    """The Scheduler's dispatch and results (a part of ``Scheduler``, see ``_loop``)."""

    def window(self) -> int:
        if self.est is None or self.est_samples < EST_MIN_SAMPLES:
            return 1
        return 1 + min(self.prefetch_cap, int(PREFETCH_SECONDS / max(self.est, 1e-7)))

    def dispatch(self) -> None:
        """Hand queued tasks to ready workers, least loaded first, one message each.

        Each worker with room gets an equal share of the queue (at least one
        task), capped by its room and MAX_BATCH: six slow tasks on six idle
        workers go one per worker, ten thousand tiny ones go in large batches.
        """
        queue = self.queue
        if not queue:
            return
        window = self.window()
        # Workers still starting get their share when they are ready: without
        # them in the count, the first worker up would take the whole queue
        # (found by poolx profile retrieve: five sleeps queued on one worker
        # while two more came up idle).  For the same reason nothing is
        # prefetched while they start and there are no more tasks than workers:
        # each task waits for a worker of its own.
        starting = sum(1 for w in self.workers.values() if w.state == STARTING)
        if starting and len(queue) <= len(self.workers):
            window = 1
        ready = sorted((w for w in self.workers.values()
                        if w.state == READY and not w.blocked and w.room(window) > 0),
                       key=lambda w: len(w.outstanding))
        now = time.perf_counter()
        for i, w in enumerate(ready):
            share = -(-len(queue) // (len(ready) - i + starting))  # ceil: what is left over those left
            take = min(share, w.room(window), MAX_BATCH)
            batch: list[Task] = []
            while queue and len(batch) < take:
                task = queue.popleft()
                if not task.t_dispatch:  # first dispatch (a requeued task is already running)
                    if not task.future.set_running_or_notify_cancel():
                        self.telemetry.task_cancelled()
                        continue
                    task.t_dispatch = now
                task.worker = w.index
                w.outstanding[task.id] = task
                batch.append(task)
            if batch:
                if w.tasks_left is not None:
                    w.tasks_left -= len(batch)
                if not w.reading and not w.owner:  # its channel was left to a caller: watch it again
                    _direct.unpark(self, w)
                self.send_tasks(w, batch)
            if not queue:
                return

    def try_direct(self, task: Task) -> bool:
        """Send ``task`` from the caller's thread if a worker is idle; else False.

        The latency path: with nothing queued and a worker waiting, waking the
        scheduler thread to forward one task costs a thread switch (~20 us on
        the CI machine) for nothing.  Under load workers are busy and tasks go
        through the loop, which batches them.  A caller that then waits on
        the task's future reads its result from the worker's socket itself
        (``_direct``): no scheduler-thread hop on the way back either.
        """
        if self.queue or self.incoming or not self.lock.acquire(blocking=False):
            return False
        try:
            if self.queue or self.incoming or self.closing or self.backend.broken is not None:
                return False
            for w in self.workers.values():
                if w.state == READY and not w.outstanding and w.room(1) > 0:
                    break
            else:
                return False
            if not task.future.set_running_or_notify_cancel():
                return False
            task.t_dispatch = time.perf_counter()
            task.worker = w.index
            w.outstanding[task.id] = task
            if w.tasks_left is not None:
                w.tasks_left -= 1
            self.send_tasks(w, [task])
            _direct.note(self, w, task)  # its caller may read the result itself
            return True
        finally:
            self.lock.release()

    def send_tasks(self, w: WorkerHandle, batch: list[Task]) -> None:
        records = []
        frames: list[Any] = []
        fds: list[int] = []
        fd_keys: dict[Any, int] = {}
        known = w.known
        evict: list[int] = []
        for task in batch:
            key, fn_bytes, payload, bufs = task.state
            if key:
                if key in known:
                    known.move_to_end(key)
                    fn_bytes = None
                else:
                    known[key] = None
                    if len(known) > WORKER_FN_CACHE:
                        evict.append(known.popitem(last=False)[0])
            records.append((task.id, key, fn_bytes, payload, len(bufs), task.skip))  # a protocol.TaskRecord
            if bufs:
                _channel.out_frames(bufs, frames, fds, fd_keys)
        control = P.control(P.TASKS, evict, records)
        self.telemetry.messages_sent += 1
        w.send(self.sel, [control, *frames], fds)

    def on_results(self, w: WorkerHandle, records: list[Any], msg: list[Any]) -> None:
        oob = 1
        est = self.est
        direct = w.direct_future  # (dropped once its task is read: the future holds its result)
        forward: dict[Conn, tuple[list[Any], list[Any]]] = {}  # records and buffers per child
        for record in records:
            # A protocol.ResultRecord:
            task_id, status, data, n_oob, t_start, t_end, info, s_unpickle, s_pickle = record
            bufs = msg[oob : oob + n_oob]
            oob += n_oob
            task = w.outstanding.pop(task_id, None)
            if task is None:
                continue
            if task.future is direct:
                _direct.forget(w)
            task.t_start, task.t_end = t_start, t_end
            task.s_unpickle, task.s_pickle = s_unpickle, s_pickle
            task.bytes_in = len(data) + sum(len(b) for b in bufs) if n_oob else len(data)
            duration = t_end - t_start
            est = duration if est is None else est + EST_ALPHA * (duration - est)
            if task.origin is not None:  # submitted in a child: the result goes there, unread
                conn, child_id = task.origin
                task.origin = None
                recs, frames = forward.setdefault(conn, ([], []))
                recs.append((child_id, *record[1:]))
                frames.extend(bufs)
                task.state = None
                self.results.append((task, status == P.OK, None if status == P.OK else
                                     RemoteError(*info[:3])))
                continue
            task.state = None  # the pickled arguments are no longer needed
            ok, outcome = P.decode_outcome(status, data, bufs, info, task.fn, False)
            self.results.append((task, ok, outcome))
        if w.tasks_left == 0 and not w.outstanding and w.state == READY:
            # Its last task is done (max_tasks_per_child): it exits now, and
            # its place is free for a fresh worker at once, even if its exit
            # is slow or stuck (a non-daemon thread a task left running:
            # check_liveness kills it after STOP_TIMEOUT).
            w.state = STOPPING
            w.stop_deadline = time.monotonic() + STOP_TIMEOUT
            w.retiring = True
        self.est = est
        self.est_samples += len(records)
        if self.prefetch_cap < MAX_PREFETCH:
            self.prefetch_cap = min(MAX_PREFETCH, self.prefetch_cap + len(records))
        for conn, (recs, frames) in forward.items():
            self.send_results(conn, recs, frames)

    def deliver(self) -> None:
        """Complete the futures of the results read in this pass of the loop.

        Done last, just before the loop waits in select() and so lets go of the
        GIL: a caller woken by set_result() gets the GIL at once instead of
        waiting for the rest of the pass (measured: ~20 us less per round trip
        on the CI machine).
        """
        results, self.results = self.results, []
        self.complete(results)

    def complete(self, results: list[tuple[Any, bool, Any]]) -> None:
        """Complete the futures of ``results`` (records read, taken out of ``results``)."""
        finished = []
        for task, ok, outcome in results:
            task.t_done = time.perf_counter()
            if ok:
                task.future.set_result(outcome)
            else:
                task.future.set_exception(outcome)
            finished.append((task, ok))
        self.telemetry.tasks_done(finished)

    def fail(self, task: Task, error: BaseException) -> None:
        task.t_done = time.perf_counter()
        task.state = None
        if not task.t_dispatch and not task.future.set_running_or_notify_cancel():
            self.telemetry.task_cancelled()
            return
        task.future.set_exception(error)
        self.telemetry.task_done(task, False)
