"""Worker lifecycle: starting task workers, their messages, their exits.

Methods of the ``Scheduler`` (``_loop``), on its thread.  A worker is
started when tasks wait and a place is free (``start_workers``), becomes
READY when it says so, lends its slot while its task waits in ``get()``
(``on_blocked``), and is killed when its task runs over ``task_timeout``
or its channel carries something that is not poolx's (``drop_lying``).
When its process ends (``on_exit``) the outcomes it sent or logged are taken
in, and ``_blame`` decides what becomes of the tasks it still held.
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import pickle
import selectors
import signal
import socket
import time
from typing import Any

from ...._futures import Task
from .. import _channel, _lifetime
from .. import protocol as P
from .._cell import read_cell, read_log
from . import _direct
from ._endpoint import Conn, Endpoint
from ._spawn import READY, STARTING, STOPPING, close_process, signal_process
from ._state import SchedulerState

logger = logging.getLogger("poolx")

# Grace period for workers to exit after STOP, then SIGKILL.
STOP_TIMEOUT = 5.0


class WorkerHandle(Endpoint):
    """The driver's handle on one worker process, and its end of the worker's channel."""

    def __init__(self, index: int, process: Any, sock: socket.socket, cell: mmap.mmap, fd: int,
                 tasks_left: int | None, client: Conn) -> None:
        self.index = index
        self.client = client  # its client channel (actor handles used in its tasks)
        self.fd = fd  # the file behind the progress cell, and the crash dump after it
        super().__init__(sock)
        self.process = process
        self.cell = cell
        self.outstanding: dict[int, Task] = {}  # task id -> Task, in dispatch order
        self.known: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.state = STARTING
        self.pid = process.pid
        self.tasks_left = tasks_left  # tasks it may still be sent (max_tasks_per_child)
        self.init_error: tuple[str, str, str] | None = None
        self.stop_deadline = 0.0
        self.timed_out = 0  # id of the task it was killed for running over task_timeout
        # Why poolx killed it for what came through its channels ("it sent ..."): see drop_lying.
        self.killed_for: str | None = None
        self.spawned = time.monotonic()  # (init_timeout)
        self.init_timed_out = False  # killed for taking longer than init_timeout to start
        # (task id, map item index, since when): the running task's clock for task_timeout
        self.clock: tuple[int, int, float] = (0, -1, 0.0)
        self.timed_out_item = -1  # the map item it was killed for (with timed_out)
        self.retiring = False  # said RETIRING (over its memory cap): exits by itself
        self.cancelled: set[int] = set()  # ids of its tasks it was killed to stop (stop_tasks)
        self.blocked = False  # its task waits in get(): its slot is lent (see on_blocked)
        # The direct read (``_direct``): the future of the last task sent to it from
        # a caller's thread, the poll object a caller waits on, and whether its
        # exit was handled while a caller read its channel (who then closes its files).
        self.direct_future: Any = None
        self.poller: Any = None
        self.gone = False
        self.owner = False  # a caller's thread is reading its channel
        self.reserved = 0.0  # since when its channel waits, unwatched, for the caller of its task

    def close_files(self) -> None:
        """After its exit: its socket, progress cell, crash-dump file and process handle."""
        self.sock.close()
        self.cell.close()
        os.close(self.fd)
        close_process(self.process)

    def room(self, window: int) -> int:
        room = window - len(self.outstanding)
        if self.tasks_left is not None:
            room = min(room, self.tasks_left)
        return room


class Workers(SchedulerState):
    """The Scheduler's worker lifecycle (a part of ``Scheduler``, see ``_loop``)."""

    def start_workers(self) -> None:
        # Not while closing only: shutdown() runs what is already queued, even
        # when no worker had started yet.
        if self.terminating or self.backend.broken is not None:
            return
        # A retiring worker (over its memory cap or its max_tasks_per_child)
        # holds no place: it takes no more tasks and is on its way out.
        staying = [w for w in self.workers.values() if not w.retiring]
        busy = sum(1 for w in staying if w.outstanding or w.state == STARTING)
        idle = len(staying) - busy
        want = min(self.max_workers + self.borrowed - len(staying), len(self.queue) - idle)
        if self.keep_workers and (not self.closing or not self.started):  # poolx.Pool: every worker up
            want = max(want, self.keep_workers - len(staying))
        for _ in range(max(want, 0)):
            try:
                self.start_worker()
            except Exception as exc:  # e.g. EMFILE, or the forkserver died
                hint = ""
                if self.backend.options.initargs and isinstance(exc, (TypeError, pickle.PicklingError)):
                    hint = (f" (the initargs of the initializer {self.backend.initializer_name} travel "
                            "to each worker as it starts: they must be picklable, or objects "
                            "multiprocessing shares at start, such as a multiprocessing.Queue)")
                self.break_executor(f"could not start a worker process: {type(exc).__name__}: {exc}{hint}")
                return

    def start_worker(self) -> None:
        index = self.next_index
        self.next_index += 1
        self.telemetry.worker_started(index)  # its start-up runs from here to READY (insights)
        process, parent, client, cell, fd = self.spawner.spawn(
            self.worker_main, (index, self.setup), f"poolx-worker-{index}")
        w = WorkerHandle(index, process, parent, cell, fd, self.max_tasks, Conn(client, f"worker {index}"))
        self.workers[index] = w
        self.sel.register(parent, selectors.EVENT_READ, lambda k, m, w=w: self.on_socket(w, m))
        self.sel.register(process.sentinel, selectors.EVENT_READ, lambda k, m, w=w: self.on_exit(w))
        self.register_client(w.client)
        self.started += 1
        if self.to_replace:
            self.to_replace -= 1
            self.restarted += 1

    def check_starting(self) -> None:
        """Kill the workers still starting (initializer included) after ``init_timeout``."""
        limit = self.init_timeout
        assert limit is not None
        now = time.monotonic()
        for w in self.workers.values():
            if w.state == STARTING and not w.init_timed_out and now - w.spawned > limit:
                w.init_timed_out = True
                self.signal(w, kill=True)

    def check_timeouts(self) -> None:
        """Kill the workers whose running task is over ``task_timeout``.

        The progress cell says which task a worker is running and since when;
        the task fails with TaskTimeoutError once the worker's exit is seen
        (``blame``), and the worker is replaced like one that died.
        """
        limit = self.task_timeout
        assert limit is not None
        now = time.perf_counter()
        for w in self.workers.values():
            if w.state != READY or not w.outstanding or w.timed_out:
                continue
            running_id, finished, started, item = read_cell(w.cell)
            if finished or running_id not in w.outstanding:
                continue
            if w.clock[0] != running_id:  # a new task: its clock started when it did
                w.clock = (running_id, item, started)
            elif w.clock[1] != item:  # the next item of a map chunk: a new clock, from now
                w.clock = (running_id, item, now)
            if now - w.clock[2] > limit:
                w.timed_out = running_id
                w.timed_out_item = w.clock[1]
                self.signal(w, kill=True)

    def signal(self, w: WorkerHandle, kill: bool) -> None:
        signal_process(w.process, kill)

    def on_socket(self, w: WorkerHandle, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            w.flush(self.sel)
        if mask & selectors.EVENT_READ and w.reading:  # (else a caller reads it: _direct)
            self.read(w, limit=8)

    def read(self, w: WorkerHandle, limit: int | None) -> None:
        try:
            _channel.drain(w.reader, self.on_message, w, limit)
        except _channel.ChannelCorrupt as exc:
            self.drop_lying(w, f"sent {exc}")
        except _channel.ChannelClosed:
            self.close_channel(w)

    def drop_lying(self, w: WorkerHandle, what: str, channel: bool = True) -> None:
        """Kill a worker whose channel carried something else than poolx messages.

        Something wrote to the worker's socket (a task, through the fd it
        inherited): nothing it sends can be trusted any more, and the channel
        is never resynchronised.  Its exit blames the task it was running, as
        for a crash; ``killed_for`` says why it died (not the OOM killer).
        """
        w.killed_for = f"it {what} (likely a task wrote to its worker's channel socket)"
        logger.warning("poolx: worker %s (pid %s) %s; killing and replacing it", w.index, w.pid, what)
        if channel:
            self.close_channel(w)
        self.signal(w, kill=True)

    def check_stalls(self) -> None:
        """Drop every channel on which a message started arriving, then stopped (FRAME_STALL_SECONDS)."""
        limit = _channel.FRAME_STALL_SECONDS
        for w in list(self.workers.values()):
            if w.open and w.reader.stall(time.monotonic(), limit) is not None:
                self.read(w, limit=1)  # bytes that came while this loop was busy are progress too
                stall = w.reader.stall(time.monotonic(), limit) if w.open else None
                if stall is not None:
                    self.drop_lying(w, f"sent {stall}")
        for conn in list(self.conns):
            if conn.open and conn.reader.stall(time.monotonic(), limit) is not None:
                self.on_client(conn, selectors.EVENT_READ)
                stall = conn.reader.stall(time.monotonic(), limit) if conn.open else None
                if stall is not None:
                    self.drop_client(conn, _channel.ChannelCorrupt(stall))
        self.actors.check_stalls(limit)

    def close_channel(self, w: WorkerHandle) -> None:
        if w.open:
            w.open = False
            if self.sel.get_map().get(w.sock) is not None:  # (not while a caller reads it: _direct)
                self.sel.unregister(w.sock)
            w.outbox = []

    def on_message(self, w: WorkerHandle, msg: list[Any]) -> None:
        control = _channel.decode_control(msg[0])
        kind = control[0]
        self.telemetry.messages_received += 1
        if kind == P.RESULTS:
            if control[2] != w.client.seen:
                self.catch_up(w.client, control[2])
            self.on_results(w, control[1], msg)
        elif kind == P.READY:
            w.state = READY if w.state == STARTING else w.state
            w.pid = control[1]
            self.telemetry.worker_ready(w.index, control[1])
            self.start_failures = 0
        elif kind == P.INIT_FAILED:
            w.init_error = control[1:]
        elif kind == P.BLOCKED:
            self.on_blocked(w, control[1])
        elif kind == P.UNBLOCKED:
            self.end_loan(w)
        elif kind == P.RETIRING:  # over its memory cap: no more tasks; it exits now
            w.retiring = True
            w.state = STOPPING
            w.stop_deadline = time.monotonic() + STOP_TIMEOUT

    def on_blocked(self, w: WorkerHandle, running_id: int) -> None:
        """``w``'s task waits for other tasks in get()/wait(): lend its slot.

        Another worker may start in its place (``borrowed``), as Ray does for
        a task blocked in ``ray.get``, so a tree of tasks deeper than
        max_workers cannot deadlock.  Every task sent to ``w`` besides the
        running one is taken back and queued again (one of them may be what
        the task waits for); ``w`` skips them (see the child's ``Worker.block``).
        """
        back = [t for tid, t in w.outstanding.items() if tid != running_id]
        for task in back:
            del w.outstanding[task.id]
        if w.tasks_left is not None:
            w.tasks_left += len(back)
        self.queue.extendleft(reversed(back))
        w.send(self.sel, [P.control(P.ACK_BLOCKED)])
        if not w.blocked:
            w.blocked = True
            self.borrowed += 1

    def end_loan(self, w: WorkerHandle) -> None:
        """``w``'s task no longer waits (or ``w`` is gone): its lent slot comes back."""
        if w.blocked:
            w.blocked = False
            self.borrowed -= 1
            self.borrowed_back = True

    def retire_extra(self) -> None:
        """Stop idle workers started while others were blocked, once those are back."""
        active = sum(1 for w in self.workers.values() if w.state != STOPPING)
        extra = active - self.max_workers - self.borrowed
        if extra <= 0:
            self.borrowed_back = False
            return
        for w in list(self.workers.values()):
            if extra <= 0:
                return
            if w.state == READY and not w.outstanding and not w.blocked:
                w.state = STOPPING
                w.stop_deadline = time.monotonic() + STOP_TIMEOUT
                w.send(self.sel, [P.STOP_FRAME])
                extra -= 1

    def on_exit(self, w: WorkerHandle) -> None:
        # The sentinel fires as the process closes its fds, a moment before it
        # can be reaped: join() with a bound, not join(0).  (It also fires
        # while the process lives on when a task closed the fd behind it.)
        w.process.join(1.0)
        if w.process.exitcode is None:
            self.signal(w, kill=True)
            w.process.join(1.0)
        exitcode = _lifetime.exit_code(w.process)  # None: unknown (its forkserver died first)
        if w.timed_out and exitcode != -signal.SIGKILL:
            # It died on its own before the timeout's kill landed (seen when the
            # loop, busy or starved of CPU, noticed the death late): a crash of
            # the task it ran, not a timeout (the soak's crashing tasks got
            # TaskTimeoutError on a machine under a load of 12).
            w.timed_out = 0
        if w.open:
            # The process is gone: take what it sent before it exited.  Reads do
            # not block: a grandchild that inherited the socket cannot stall us.
            self.read(w, limit=None)
            self.close_channel(w)
        if w.outstanding:
            # The outcomes it logged and had not sent: a finished task never
            # runs again.  Read once the process is gone for sure (its sentinel
            # also fires when a task closes the fd behind it), except for a task
            # killed for running over task_timeout: it fails even if it
            # finished in the meantime (see blame).
            logged = [r for r in read_log(w.cell, w.fd) if r[0] != w.timed_out]
            self.on_results(w, logged, [None])
        self.sel.unregister(w.process.sentinel)
        del self.workers[w.index]
        _direct.forget(w)
        self.close_conn(w.client)
        try:
            self.after_exit(w, exitcode)
        finally:
            if not w.owner:
                w.close_files()
            else:  # a caller waits on its socket and sentinel: it closes them as it lets go
                w.gone = True
