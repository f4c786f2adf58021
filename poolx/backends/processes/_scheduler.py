"""The driver side of the processes engine: one scheduler thread.

Data flow::

    user threads                    scheduler thread (this module)                 workers
    ------------                    ------------------------------                 -------
    Executor.submit                 +-------------------------------+
      pickle args (SerializationError
      raised here, in the caller)   |  take_incoming: tasks and      |
      incoming.append(task) ------->|  commands -> queue             |
      wake() (one byte, only if     |                                |   TASKS (a batch,
      the loop may be asleep)       |  dispatch: least-loaded ready  |   fn pickled once
                                    |  worker first, up to its       |   per worker)
                                    |  window; one message per       |------------------> worker 0
                                    |  worker per pass               |------------------> worker 1
    future.result() <---------------|                                |<------------------ RESULTS
      set_result / set_exception    |  on_message: complete futures, |   (batched)
                                    |  update the duration estimate  |
                                    |                                |
                                    |  on_exit (process sentinel):   |
                                    |  blame the task in the progress|
                                    |  cell, requeue the rest,       |
                                    |  start a replacement           |
                                    +-------------------------------+

The scheduler owns every socket; user threads only append to ``incoming``.
Sockets are non-blocking and writes are buffered per worker, so a worker that
is slow to read never stalls the others, and a large argument never deadlocks
against a large result.

Why the window: a worker keeps ``1 + prefetch`` tasks in flight, where
prefetch covers PREFETCH_SECONDS of work at the current estimate of a task's
duration.  Tiny tasks therefore travel hundreds per message and a worker never
waits for the driver between them, while long tasks are not queued behind each
other on one worker when another is idle (no prefetch until the first
durations are known).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import mmap
import os
import pickle
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from ... import _fds
from ..._errors import (
    DeserializationError,
    InitializerError,
    PoolxError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskCancelledError,
    TaskTimeoutError,
    WorkerDiedError,
    describe_exit,
)
from ..._futures import Task
from ..._serialization import describe, dumps, loads
from ..._telemetry import Telemetry
from . import _channel, _lifetime
from . import _worker as W
from ._actors import ActorHost, Conn, close_process

logger = logging.getLogger("poolx")

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
# A worker that dies between two tasks (its last one finished, the next not
# started) names no culprit: the task it would have run next is charged, and
# fails after this many such deaths.  It guards against a message that kills
# the worker reading it (a payload too large for its memory), which would
# otherwise go from worker to worker for ever; an innocent task would have to
# be next in line at that many idle deaths.  Tasks further back are never
# charged: they had not started.
MAX_REQUEUE = 16
# A task that ran on a worker that died before its outcome could be read (a
# task scribbled on the worker's channel or results log) runs again at most
# this many times, then fails: the scribbler would otherwise run for ever.
MAX_LOST = 2
# After a worker death the prefetch window (see ``window``) closes to the
# running task alone, then opens again by one task per result received: under
# a steady crash rate each death sends back at most about as many tasks as
# ran since the last one, instead of up to MAX_PREFETCH every time.
# Workers dying before they are ready this many times in a row break the executor.
MAX_START_FAILURES = 3
# How much of a dead worker's faulthandler dump goes into the error message.
CRASH_DUMP_BYTES = 8192
# Seconds between checks that every child is still alive (see check_liveness).
LIVENESS_POLL = 1.0
# Send buffer of the driver's end of a worker channel (see _widen).
SOCKET_BUFFER = 4 << 20
# Grace period for workers to exit after STOP, then SIGKILL.
STOP_TIMEOUT = 5.0
# How often (at most) the loop looks for tasks over task_timeout, in seconds.
TIMEOUT_POLL = 0.05

STARTING, READY, STOPPING = "starting", "ready", "stopping"

# Driver ends of every live channel: a process forked from the driver must not
# hold them, or a worker would not see its driver hang up (see _worker watchdog).
_driver_socks: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _close_driver_socks_in_child() -> None:
    for sock in list(_driver_socks):
        try:
            sock.close()
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_driver_socks_in_child)


class _Worker:
    """The driver's handle on one worker process."""

    def __init__(self, index: int, process: Any, sock: socket.socket, cell: mmap.mmap, fd: int,
                 tasks_left: int | None, client: Conn) -> None:
        self.index = index
        self.client = client  # its client channel (actor handles used in its tasks)
        self.fd = fd  # the file behind the progress cell, and the crash dump after it
        self.process = process
        self.sock = sock
        self.reader = _channel.FrameReader(sock)
        self.cell = cell
        self.outbox: list[memoryview] = []
        self.writing = False
        self.outstanding: dict[int, Task] = {}  # task id -> Task, in dispatch order
        self.known: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.state = STARTING
        self.pid = process.pid
        self.tasks_left = tasks_left  # tasks it may still be sent (max_tasks_per_child)
        self.init_error: tuple[str, str, str] | None = None
        self.channel_open = True
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

    def room(self, window: int) -> int:
        room = window - len(self.outstanding)
        if self.tasks_left is not None:
            room = min(room, self.tasks_left)
        return room


class Scheduler(threading.Thread):
    def __init__(self, ctx: Any, max_workers: int, setup: W.WorkerSetup, max_tasks: int | None,
                 telemetry: Telemetry, incoming: deque[Any], wake_fd: int, backend: Any) -> None:
        super().__init__(name="poolx-scheduler", daemon=True)
        self.ctx = ctx
        self.max_workers = max_workers
        self.setup = setup
        self.max_tasks = max_tasks
        self.task_timeout: float | None = backend.options.task_timeout
        self.init_timeout: float | None = backend.options.init_timeout
        self.keep_workers = 0  # workers kept alive even when idle (prestart)
        self.telemetry = telemetry
        self.incoming = incoming
        self.wake_fd = wake_fd
        self.backend = backend  # for its wake flag and broken state
        # Workers import the main script by its path (spawn, forkserver); the
        # path is read now, while the script runs (see _main_file_restored).
        main = sys.modules.get("__main__")
        self.main_file = getattr(main, "__file__", None)
        # Only a script is imported by its path (spawn imports a module run
        # with -m by its name, and a package's __main__ not at all: ``python
        # -m poolx`` must not run its command again in every child).
        self.main_script = self.main_file if getattr(main, "__spec__", None) is None else None
        self.sel = _fds.selector()
        self.sel.register(wake_fd, selectors.EVENT_READ, self.on_wake)
        self.queue: deque[Task] = deque()
        self.results: list[tuple[Task, bool, Any]] = []  # read, not yet delivered
        self.workers: dict[int, _Worker] = {}
        self.next_index = 0
        self.est: float | None = None
        self.est_samples = 0
        self.prefetch_cap = MAX_PREFETCH  # lowered by a worker death, raised by results (window)
        self.closing = False
        self.terminating = False
        self.start_failures = 0
        # Held by the loop while it works (never while it waits in select), and
        # by a caller handing a task straight to an idle worker (try_direct).
        self.lock = threading.Lock()
        self.started = 0
        self.restarted = 0
        self.died = 0
        self.to_replace = 0  # exits (crash or retirement) not yet followed by a new start
        self.actors = ActorHost(self)
        self.conns: set[Conn] = set()  # client channels of live children
        self.actors_stopping = False
        self.next_liveness = time.monotonic() + LIVENESS_POLL
        self.borrowed = 0  # workers started beyond max_workers while tasks wait in get()
        self.borrowed_back = False  # a loan ended: extra idle workers may retire (retire_extra)
        self.collectives: Any = None  # the actors' collective.Rendezvous, made at first use

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                events = self.sel.select(self.select_timeout())
                with self.lock:
                    for key, mask in events:
                        key.data(key, mask)
                    self.take_incoming()
                    if self.task_timeout is not None:
                        self.check_timeouts()
                    if self.actors.procs:
                        self.actors.check_timeouts()
                    if self.init_timeout is not None:
                        self.check_starting()
                    if time.monotonic() >= self.next_liveness:
                        self.check_liveness()
                        self.check_stalls()
                    if self.backend.broken is not None:
                        self.fail_queue(InitializerError(self.backend.broken))
                    self.start_workers()
                    self.dispatch()
                    if self.borrowed_back:
                        self.retire_extra()
                    if self.results:
                        self.deliver()
                    if self.closing and self.wind_down():
                        return
        except BaseException as exc:  # never leave futures hanging on a bug here
            logger.exception("poolx scheduler failed")
            error = PoolxError(
                f"the executor's scheduler thread failed ({type(exc).__name__}: {exc}), so this "
                "executor runs no more tasks: create a new one. This is a bug in poolx (its traceback "
                "is logged as 'poolx scheduler failed', and is this error's __cause__): please report it")
            error.__cause__ = exc
            self.abort(error)
        finally:
            self.cleanup()

    def select_timeout(self) -> float | None:
        if any(w.state == STOPPING for w in self.workers.values()):
            return 0.05
        if self.task_timeout is not None and any(w.outstanding for w in self.workers.values()):
            return min(TIMEOUT_POLL, self.task_timeout / 4)
        if self.actors.procs and self.actors.timing():
            return TIMEOUT_POLL
        if self.init_timeout is not None and any(w.state == STARTING for w in self.workers.values()):
            return TIMEOUT_POLL
        if self.workers or self.actors.procs:
            return max(self.next_liveness - time.monotonic(), 0.0)
        return None

    def check_liveness(self) -> None:
        """Notice children that died without their sentinel saying so.

        A process's sentinel (and its channel) reach end-of-file only when every
        copy of them is closed: under fork, a grandchild that a task forked and
        left running keeps them open after the worker itself has died or been
        killed, and the exit would never be seen (its tasks pending, shutdown
        waiting for ever).  A poll every LIVENESS_POLL seconds reaps it.
        """
        now = time.monotonic()
        self.next_liveness = now + LIVENESS_POLL
        for w in list(self.workers.values()):
            if not w.process.is_alive():
                self.on_exit(w)
            elif w.state == STOPPING and now > w.stop_deadline and not self.closing:
                # A worker that retired (max_memory_per_child, or idle after a
                # loan) and is stuck on its way out: its place, and the tasks
                # sent after its last batch, wait for its exit (wind_down does
                # this at shutdown).
                logger.warning("poolx: worker %s (pid %s) did not exit within %g s of stopping; "
                               "killing it", w.index, w.pid, STOP_TIMEOUT)
                self.signal(w, kill=True)
        for proc in list(self.actors.procs.values()):
            if not proc.process.is_alive():
                self.actors.on_exit(proc)

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
            running_id, finished, started, item = W.read_cell(w.cell)
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

    def on_wake(self, key: Any, mask: int) -> None:
        # Drain first, then clear the flag, then (in run) take the incoming
        # tasks.  Clearing before draining could swallow the byte of a wake()
        # that set the flag again in between, leaving the flag set and the
        # loop asleep for good.
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        self.backend.wake_pending = False

    def take_incoming(self) -> None:
        incoming = self.incoming
        while incoming:
            item = incoming.popleft()
            if type(item) is tuple:
                self.command(*item)
            else:
                self.queue.append(item)

    def request(self, item: tuple[str, Any]) -> None:
        """Any thread: hand the loop a command (see ``command``)."""
        self.incoming.append(item)
        self.backend._wake()

    def command(self, name: str, arg: Any) -> None:
        if name == "actor_register":
            self.actors.register(arg)
        elif name == "actor_write":
            self.actors.want_write(arg)
        elif name == "actor_settle":
            self.actors.settle(arg)
        elif name == "shutdown":
            self.closing = True
            if arg:  # cancel_futures
                self.cancel_queued()
        elif name == "stop_tasks":
            self.stop_tasks(arg)
        elif name == "ref_ready":
            self.reply_ref(*arg)
        elif name == "prestart":
            # Start them now, not in a later pass: a close() right after the
            # constructor must still see every initializer run, as the stdlib's.
            self.keep_workers = self.max_workers
            self.start_workers()
        elif name == "terminate":
            self.closing = self.terminating = True
            self.cancel_queued()
            for w in list(self.workers.values()):
                self.signal(w, kill=arg)
            self.actors.kill_all(arg)

    def stop_tasks(self, tasks: list[Task]) -> None:
        """Cancel the queued ones; kill the workers holding the others.

        A worker holding one of them (running it, or sent it ahead) is killed
        and replaced; on its exit those tasks fail with TaskCancelledError and
        its other tasks run again elsewhere (``after_exit``).
        """
        wanted = {task.id for task in tasks if not task.future.done()}
        if not wanted:
            return
        keep: deque[Task] = deque()
        for task in self.queue:
            if task.id not in wanted:
                keep.append(task)
            elif task.future.cancel():
                self.telemetry.task_cancelled()
            else:
                self.fail(task, TaskCancelledError(f"{describe(task.fn)} was stopped before it ran"))
        self.queue = keep
        for w in self.workers.values():
            hit = wanted.intersection(w.outstanding)
            if hit:
                w.cancelled |= hit
                self.signal(w, kill=True)

    # -- workers ------------------------------------------------------------

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
        process, parent, client, cell, fd = self.spawn_child(
            W.main, (index, self.setup), f"poolx-worker-{index}")
        w = _Worker(index, process, parent, cell, fd, self.max_tasks, Conn(client, f"worker {index}"))
        self.workers[index] = w
        self.sel.register(parent, selectors.EVENT_READ, lambda k, m, w=w: self.on_socket(w, m))
        self.sel.register(process.sentinel, selectors.EVENT_READ, lambda k, m, w=w: self.on_exit(w))
        self.register_client(w.client)
        self.started += 1
        if self.to_replace:
            self.to_replace -= 1
            self.restarted += 1

    def spawn_child(self, target: Any, args: tuple[Any, ...], name: str) -> tuple[Any, ...]:
        """Start a child process (a task worker or an actor); any thread.

        It gets its work channel, its client channel and its progress cell
        before ``args``.  Returns (process, driver end of the work channel,
        driver end of the client channel, progress cell, its fd).
        """
        parent, child = _fds.socketpair()  # (above stdio, as every fd of poolx: see _fds)
        _widen(parent)
        client_parent, client_child = _fds.socketpair()
        fd, path = tempfile.mkstemp(prefix="poolx-progress-")
        cell = None
        try:
            fd = _fds.lift(fd)
            os.unlink(path)  # nothing to clean up, ever: the fds keep it alive
            os.ftruncate(fd, W.DUMP_OFFSET)  # sparse: the log's pages exist once written
            cell = _fds.mmap(fd, W.PROGRESS_BYTES)
            _driver_socks.add(parent)
            _driver_socks.add(client_parent)
            args = (child, client_child, W.FdForChild(fd), *args)
            if self.main_script is not None and self.ctx.get_start_method() != "fork":
                # The child imports the script itself if its start raced the
                # script's end (see _main_file_restored): fork copies __main__.
                target, args = W.with_main, (self.main_script, target, *args)
            process = self.ctx.Process(target=target, args=args, name=name)
            with _main_file_restored(self.main_file), _start_held(self.ctx):
                _lifetime.start_process(process)  # (from a thread that never ends: see _lifetime)
        except BaseException:  # no process: release what was made for it
            if cell is not None:
                cell.close()
            os.close(fd)
            for sock in (parent, client_parent):
                _driver_socks.discard(sock)
                sock.close()
            raise
        finally:
            child.close()
            client_child.close()
        parent.setblocking(False)
        return process, parent, client_parent, cell, fd

    # -- client channels (actor handles used inside children) -----------------------

    def register_client(self, conn: Conn) -> None:
        self.conns.add(conn)
        self.sel.register(conn.sock, selectors.EVENT_READ, lambda k, m, c=conn: self.on_client(c, m))

    def on_client(self, conn: Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush_conn(conn)
        if mask & selectors.EVENT_READ and conn.open:
            try:
                _channel.drain(conn.reader, self.actors.on_client_message, conn, limit=8)
            except _channel.ChannelCorrupt as exc:
                self.drop_client(conn, exc)
            except _channel.ChannelClosed:
                self.close_conn(conn)

    def drop_client(self, conn: Conn, exc: _channel.ChannelCorrupt) -> None:
        """A child's client channel lied (see drop_lying): close it and kill the child."""
        self.close_conn(conn)
        for w in self.workers.values():
            if w.client is conn:
                self.drop_lying(w, f"sent on its client channel {exc}", channel=False)
                return
        self.actors.drop_client(conn, exc)

    def catch_up(self, conn: Conn, sent: int) -> None:
        """Forward the actor calls a child sent before the results being read.

        A task's actor calls were sent before its result: forwarding them first
        means a call the driver makes once the result is in reaches the actor
        after them (the lecture's pattern: tasks call ``tracker.increment``, then
        the driver asks ``tracker.counts``).
        """
        deadline = time.monotonic() + 1.0
        while conn.open and conn.seen < sent and time.monotonic() < deadline:
            self.on_client(conn, selectors.EVENT_READ)

    def send_results(self, conn: Conn, records: list[Any], bufs: Sequence[Any] = ()) -> None:
        """Send a child RESULTS records (answers to its calls, tasks and refs) and their buffers.

        ``bufs`` are the records' buffers in order; a shared-memory one goes as
        a descriptor with its fd (one fd per segment in the message).
        """
        frames: list[Any] = [pickle.dumps((W.RESULTS, records, 0), 5)]
        fds: list[int] = []
        _channel.out_frames(bufs, frames, fds, {})
        self.send_conn(conn, frames, fds)

    def send_conn(self, conn: Conn, frames: list[Any], fds: list[int] | None = None) -> None:
        if not conn.open:
            _channel.Fds(fds or []).close()
            return
        _channel.queue(conn.outbox, frames, fds or [])
        self.flush_conn(conn)

    def flush_conn(self, conn: Conn) -> None:
        try:
            _channel.write_some(conn.sock, conn.outbox)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            conn.outbox = []
        want_write = bool(conn.outbox)
        if want_write != conn.writing and conn.open:
            conn.writing = want_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self.sel.modify(conn.sock, events, self.sel.get_key(conn.sock).data)

    def close_conn(self, conn: Conn) -> None:
        if conn.open:
            conn.open = False
            conn.outbox = []
            self.sel.unregister(conn.sock)
        if conn in self.conns:
            self.conns.discard(conn)
            _driver_socks.discard(conn.sock)
            conn.sock.close()

    def signal_process(self, process: Any, kill: bool) -> None:
        try:
            if kill:
                process.kill()
            else:
                process.terminate()
        except (OSError, AttributeError, ValueError):
            pass

    def signal(self, w: _Worker, kill: bool) -> None:
        try:
            if kill:
                w.process.kill()
            else:
                w.process.terminate()
        except (OSError, AttributeError):
            pass

    # -- sending ------------------------------------------------------------

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
                self.send_tasks(w, batch)
            if not queue:
                return

    def try_direct(self, task: Task) -> bool:
        """Send ``task`` from the caller's thread if a worker is idle; else False.

        The latency path: with nothing queued and a worker waiting, waking the
        scheduler thread to forward one task costs a thread switch (~20 us on
        the CI machine) for nothing.  Under load workers are busy and tasks go
        through the loop, which batches them.
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
            return True
        finally:
            self.lock.release()

    def send_tasks(self, w: _Worker, batch: list[Task]) -> None:
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
            records.append((task.id, key, fn_bytes, payload, len(bufs), task.skip))
            if bufs:
                _channel.out_frames(bufs, frames, fds, fd_keys)
        control = pickle.dumps((W.TASKS, evict, records), 5)
        self.telemetry.messages_sent += 1
        self.send(w, [control, *frames], fds)

    def send(self, w: _Worker, frames: list[Any], fds: list[int] | None = None) -> None:
        if not w.channel_open:
            _channel.Fds(fds or []).close()
            return
        _channel.queue(w.outbox, frames, fds or [])
        self.flush(w)

    def flush(self, w: _Worker) -> None:
        try:
            _channel.write_some(w.sock, w.outbox)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the worker is gone; its sentinel will tell us how
            w.outbox = []
        want_write = bool(w.outbox)
        if want_write != w.writing and w.channel_open:
            w.writing = want_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self.sel.modify(w.sock, events, self.sel.get_key(w.sock).data)

    # -- receiving ----------------------------------------------------------

    def on_socket(self, w: _Worker, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush(w)
        if mask & selectors.EVENT_READ:
            self.read(w, limit=8)

    def read(self, w: _Worker, limit: int | None) -> None:
        try:
            _channel.drain(w.reader, self.on_message, w, limit)
        except _channel.ChannelCorrupt as exc:
            self.drop_lying(w, f"sent {exc}")
        except _channel.ChannelClosed:
            self.close_channel(w)

    def drop_lying(self, w: _Worker, what: str, channel: bool = True) -> None:
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
            if w.channel_open and w.reader.stall(time.monotonic(), limit) is not None:
                self.read(w, limit=1)  # bytes that came while this loop was busy are progress too
                stall = w.reader.stall(time.monotonic(), limit) if w.channel_open else None
                if stall is not None:
                    self.drop_lying(w, f"sent {stall}")
        for conn in list(self.conns):
            if conn.open and conn.reader.stall(time.monotonic(), limit) is not None:
                self.on_client(conn, selectors.EVENT_READ)
                stall = conn.reader.stall(time.monotonic(), limit) if conn.open else None
                if stall is not None:
                    self.drop_client(conn, _channel.ChannelCorrupt(stall))
        self.actors.check_stalls(limit)

    def close_channel(self, w: _Worker) -> None:
        if w.channel_open:
            w.channel_open = False
            self.sel.unregister(w.sock)
            w.outbox = []

    def on_message(self, w: _Worker, msg: list[Any]) -> None:
        control = _channel.decode_control(msg[0])
        kind = control[0]
        self.telemetry.messages_received += 1
        if kind == W.RESULTS:
            if control[2] != w.client.seen:
                self.catch_up(w.client, control[2])
            self.on_results(w, control[1], msg)
        elif kind == W.READY:
            w.state = READY if w.state == STARTING else w.state
            w.pid = control[1]
            self.telemetry.worker_ready(w.index, control[1])
            self.start_failures = 0
        elif kind == W.INIT_FAILED:
            w.init_error = control[1:]
        elif kind == W.BLOCKED:
            self.on_blocked(w, control[1])
        elif kind == W.UNBLOCKED:
            self.end_loan(w)
        elif kind == W.RETIRING:  # over its memory cap: no more tasks; it exits now
            w.retiring = True
            w.state = STOPPING
            w.stop_deadline = time.monotonic() + STOP_TIMEOUT

    def on_blocked(self, w: _Worker, running_id: int) -> None:
        """``w``'s task waits for other tasks in get()/wait(): lend its slot.

        Another worker may start in its place (``borrowed``), as Ray does for
        a task blocked in ``ray.get``, so a tree of tasks deeper than
        max_workers cannot deadlock.  Every task sent to ``w`` besides the
        running one is taken back and queued again (one of them may be what
        the task waits for); ``w`` skips them (see ``Worker.block``).
        """
        back = [t for tid, t in w.outstanding.items() if tid != running_id]
        for task in back:
            del w.outstanding[task.id]
        if w.tasks_left is not None:
            w.tasks_left += len(back)
        self.queue.extendleft(reversed(back))
        self.send(w, [pickle.dumps((W.ACK_BLOCKED,))])
        if not w.blocked:
            w.blocked = True
            self.borrowed += 1

    def end_loan(self, w: _Worker) -> None:
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
                self.send(w, [pickle_stop()])
                extra -= 1

    # -- tasks submitted inside children (tasks that submit tasks) ------------------

    def submit_from_child(self, conn: Conn, control: tuple[Any, ...], msg: list[Any]) -> None:
        """Queue a task that a task or an actor submitted; its result goes back to it unread."""
        _, child_id, what, payload, n_oob, max_retries = control
        bufs = msg[1 : 1 + n_oob]
        task = Task(_Named(what), (), {})
        task.state = (0, None, payload, bufs)
        task.bytes_out = len(payload) + sum(len(b) for b in bufs)
        task.max_retries = max_retries
        task.origin = (conn, child_id)
        task.future.add_done_callback(lambda _f: self.reply_origin(task))
        self.telemetry.task_submitted()
        self.queue.append(task)

    def get_for_child(self, conn: Conn, req_id: int, ref_id: int) -> None:
        """A child asks for the value of a ref it received inside a container."""
        from ... import _objects

        future = _objects.lookup(ref_id)
        if future is None:
            self.reply_error(conn, req_id, ValueError(
                f"the ref #{ref_id} is no longer held in the driver: a ref inside a container stays "
                "valid while the driver holds it or the task that received it runs"))
            return
        future.add_done_callback(lambda f: self.request(("ref_ready", (conn, req_id, f))))

    def reply_ref(self, conn: Conn, req_id: int, future: Any) -> None:
        from ... import _objects, _shm

        if future.cancelled():
            self.reply_error(conn, req_id, TaskCancelledError("the task of this ref was cancelled"))
            return
        error = future.exception()
        if error is not None:
            self.reply_error(conn, req_id, error)
            return
        bufs: Sequence[Any]
        try:
            if isinstance(future, _objects.PutRef):
                data, bufs = future._blob  # stored once: sent as it is
            else:
                data, bufs = dumps(future.result(), _shm.EXCLUSIVE)
        except Exception as exc:
            self.reply_error(conn, req_id, SerializationError(
                f"the value of ref #{req_id} cannot be pickled to send it to the worker: {exc}"))
            return
        self.send_results(conn, [(req_id, W.OK, data, len(bufs), 0.0, 0.0, None, 0.0, 0.0)], bufs)

    def reply_error(self, conn: Conn, child_id: int, error: BaseException) -> None:
        """Send a child the error its request (a task it submitted, a ref it asked for) ended with."""
        if not conn.open:
            return
        info = (describe(type(error)), str(error), "".join(traceback.format_exception(error)))
        try:
            error.__traceback__ = None
            data, bufs = dumps(error)
            status = W.RAISED
        except BaseException:
            data, bufs, status = b"", (), W.UNPICKLABLE_EXCEPTION
        self.send_results(conn, [(child_id, status, data, len(bufs), 0.0, 0.0, info, 0.0, 0.0)], bufs)

    def reply_origin(self, task: Task) -> None:
        """A task from a child ended without a result to forward: send the child its error."""
        if task.origin is None:
            return
        conn, child_id = task.origin
        task.origin = None
        future = task.future
        error = (TaskCancelledError(f"{describe(task.fn)} was cancelled: its executor was shut down")
                 if future.cancelled() else future.exception())
        if error is not None:
            self.reply_error(conn, child_id, error)

    def on_results(self, w: _Worker, records: list[Any], msg: list[Any]) -> None:
        oob = 1
        est = self.est
        forward: dict[Conn, tuple[list[Any], list[Any]]] = {}  # records and buffers per child
        for record in records:
            task_id, status, data, n_oob, t_start, t_end, info, s_unpickle, s_pickle = record
            bufs = msg[oob : oob + n_oob]
            oob += n_oob
            task = w.outstanding.pop(task_id, None)
            if task is None:
                continue
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
                self.results.append((task, status == W.OK, None if status == W.OK else
                                     RemoteError(*info[:3])))
                continue
            self.complete(task, status, data, bufs, info)
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

    def complete(self, task: Task, status: int, data: bytes, bufs: list[Any], info: Any) -> bool:
        """Decode a result record and queue its outcome for deliver(); True if it succeeded."""
        ok = False
        value: Any = None
        if status == W.OK:
            try:
                value = loads(data, bufs)
            except BaseException as exc:
                error: BaseException = DeserializationError(
                    f"the result of {describe(task.fn)} could not be unpickled in the driver: "
                    f"{type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
            else:
                ok = True
        elif status == W.RAISED:
            try:
                error = loads(data, bufs)
            except BaseException:
                error = RemoteError(*info)
            error.__cause__ = RemoteTraceback(info[2])
        elif status == W.UNPICKLABLE_EXCEPTION:
            error = RemoteError(*info)
            error.__cause__ = RemoteTraceback(info[2])
        elif status == W.BAD_TASK:
            error = DeserializationError(
                f"the worker could not unpickle the task {describe(task.fn)}: {info[0]}: {info[1]}. "
                "An argument's class may not be importable in the worker (define it in a module, "
                "not in __main__ of a notebook), or its __reduce__/__setstate__ raised."
            )
            error.__cause__ = RemoteTraceback(info[2])
        else:  # BAD_RESULT
            error = SerializationError(
                f"the result of {describe(task.fn)} (a {info[3]}) could not be pickled in the worker "
                f"to send it back: {info[0]}: {info[1]}. Return plain data instead."
            )
            error.__cause__ = RemoteTraceback(info[2])
        task.state = None  # the pickled arguments are no longer needed
        self.results.append((task, ok, value if ok else error))
        return ok

    def deliver(self) -> None:
        """Complete the futures of the results read in this pass of the loop.

        Done last, just before the loop waits in select() and so lets go of the
        GIL: a caller woken by set_result() gets the GIL at once instead of
        waiting for the rest of the pass (measured: ~20 us less per round trip
        on the CI machine).
        """
        results, self.results = self.results, []
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

    # -- worker exit ----------------------------------------------------------

    def on_exit(self, w: _Worker) -> None:
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
        if w.channel_open:
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
            logged = [r for r in W.read_log(w.cell, w.fd) if r[0] != w.timed_out]
            self.on_results(w, logged, [None])
        self.sel.unregister(w.process.sentinel)
        del self.workers[w.index]
        self.close_conn(w.client)
        try:
            self.after_exit(w, exitcode)
        finally:
            w.sock.close()
            w.cell.close()
            os.close(w.fd)
            close_process(w.process)

    def after_exit(self, w: _Worker, exitcode: int | None) -> None:
        self.end_loan(w)  # first: a worker killed however it died (stop_tasks too) lends no more
        if w.init_timed_out:
            what = (f"the worker initializer {self.backend.initializer_name}"
                    if self.backend.initializer_name else "starting a worker")
            self.break_executor(
                f"{what} did not finish within init_timeout={self.init_timeout:g} s; the worker (pid "
                f"{w.process.pid}) was killed, and no more are started: a hanging initializer would hang "
                f"every worker the same way.{crash_dump(w)}")
            return
        if w.init_error is not None:
            type_name, message, tb = w.init_error
            self.break_executor(
                f"the worker initializer {self.backend.initializer_name} raised {type_name}: "
                f"{message}\n\nWorker traceback:\n{tb}"
            )
            return
        if w.state == STARTING:  # (a worker told to stop is STOPPING, not STARTING)
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                self.break_executor(
                    f"{self.start_failures} workers in a row died while starting; the last one: "
                    f"{describe_exit(exitcode)}"
                )
        if w.cancelled and not self.terminating:  # killed by stop_tasks
            self.to_replace += 1
            requeue = []
            for task in w.outstanding.values():
                if task.id in w.cancelled:
                    self.fail(task, TaskCancelledError(
                        f"{describe(task.fn)} was stopped: its worker (pid {w.pid}) was killed and "
                        "replaced", pid=w.pid))
                else:
                    requeue.append(task)  # not its fault: as if never sent
            self.queue.extendleft(reversed(requeue))
            w.outstanding.clear()
            return
        if w.retiring:  # tasks sent after its last batch run elsewhere, as if never sent
            self.to_replace += 1
            self.queue.extendleft(reversed(list(w.outstanding.values())))
            w.outstanding.clear()
            return
        if w.state == STOPPING:
            return
        self.to_replace += 1
        if not w.outstanding:
            if not (w.tasks_left == 0 and exitcode == 0):
                self.died += 1  # died while idle; else it retired after max_tasks_per_child
            return
        if self.terminating:
            for task in w.outstanding.values():
                self.fail(task, WorkerDiedError(
                    f"the executor was forcefully shut down (terminate_workers/kill_workers) while "
                    f"{describe(task.fn)} was running", exitcode=exitcode, pid=w.pid))
            return
        if not w.timed_out:
            self.died += 1
        self.blame(w, exitcode)

    def blame(self, w: _Worker, exitcode: int | None) -> None:
        """Charge the task that killed ``w``; send back the ones it had not started.

        ``on_exit`` has taken in every outcome the worker sent or logged, so
        what ``w`` still holds is, in dispatch order (the order it runs
        them): tasks that finished but whose outcomes were lost (only when
        their records were unreadable: a corrupt channel, a scribbled log),
        then the task it was running (named by the progress cell, if not
        finished), then tasks it had not started.  Only the running one is
        charged: it fails, or runs again within its ``max_retries``.  Tasks
        not started go back to the queue, uncharged: a death never fails a
        task that was only waiting behind the culprit.  A death between two
        tasks has no culprit; the task that was next in line is the suspect
        (see MAX_REQUEUE).
        """
        running_id, finished, _, item = W.read_cell(w.cell)
        self.prefetch_cap = 0
        timed_out = bool(w.timed_out)
        # An unknown exit code: its forkserver died, and took every worker it
        # had started with it (they die with their parent, see _lifetime).
        # The task one of them ran killed the forkserver; the others were
        # only there: each runs again, at most MAX_LOST times (see lost).
        # Likewise when poolx killed it for what its channel carried: the task
        # that wrote there ran earlier (its outcome lost with the channel).
        bystander = (exitcode is None or w.killed_for is not None) and not timed_out
        if timed_out:
            # Killed for the task (and map item) seen over task_timeout.  That
            # one fails, even if it finished between the check and the kill
            # (on_exit drops its logged outcome: it did run over); whatever
            # the worker had moved on to is innocent.
            culprit, item = w.timed_out, w.timed_out_item
        else:
            culprit = 0 if finished else running_id
        ran = running_id in w.outstanding  # else every task it still holds comes after the running one
        suspect = not timed_out and culprit not in w.outstanding
        requeue = []
        for task in w.outstanding.values():
            at_running = task.id == running_id
            if task.id == culprit:
                if (self.lost(w, task, exitcode) if bystander
                        else self.charge(w, task, exitcode, item, timed_out)):
                    requeue.append(task)
            elif ran and (finished or not at_running):  # it ran to the end, and its outcome is lost
                if self.lost(w, task, exitcode):
                    requeue.append(task)
            elif suspect and not ran:  # the first task it had not started, after a death with no culprit
                suspect = False
                if self.suspected(w, task, exitcode):
                    requeue.append(task)
            else:  # not started (or killed for another's timeout): not its fault, as if never sent
                requeue.append(task)
            if at_running:
                ran = False
        self.queue.extendleft(reversed(requeue))

    def suspected(self, w: _Worker, task: Task, exitcode: int | None) -> bool:
        """The next task of a worker that died between tasks: True to run it again (MAX_REQUEUE)."""
        task.requeues += 1
        return self.again(w, task, exitcode, task.requeues <= MAX_REQUEUE, (
            f"was the next task of {MAX_REQUEUE + 1} workers that died between tasks", "the message "
            "carrying it may be what kills a worker (an argument too large for its memory?)"))

    def lost(self, w: _Worker, task: Task, exitcode: int | None) -> bool:
        """A task whose outcome died with ``w`` through no fault that can be pinned on it: True to
        run it again, at most MAX_LOST times, then fail it."""
        task.lost += 1
        return self.again(w, task, exitcode, task.lost <= MAX_LOST, (
            f"ran {task.lost} times on workers that died before its outcome reached the driver",
            "a task that kills poolx's forkserver, or writes to file descriptors it did not open (its "
            "worker's channel or results log), loses what its worker reports"))

    def again(self, w: _Worker, task: Task, exitcode: int | None, within: bool,
              why: tuple[str, str]) -> bool:
        """True if ``task`` may run again (``within`` its bound); else fail it, saying ``why``."""
        if within:
            return True
        what, hint = why
        self.fail(task, WorkerDiedError(
            f"{describe(task.fn)} {what} (the last: {describe_exit(exitcode, w.killed_for)}); giving up "
            f"on it: {hint}", exitcode=exitcode, pid=w.pid))
        return False

    def charge(self, w: _Worker, task: Task, exitcode: int | None, item: int, timed_out: bool) -> bool:
        """The task that killed ``w``: True to run it again (retries, a map chunk's other items)."""
        if not timed_out and (task.max_retries == -1 or task.retries < task.max_retries):
            task.retries += 1  # max_retries: run it again
            return True
        if timed_out:
            message = (f"ran longer than task_timeout={self.task_timeout:g} s; its worker (pid {w.pid}) "
                       "was killed and replaced, and the other tasks go on")
            why: tuple[Any, ...] = ("timeout", message, self.task_timeout, w.pid)
        else:
            message = (f"the worker process (pid {w.pid}) running it died: "
                       f"{describe_exit(exitcode, w.killed_for)}. "
                       f"The worker was replaced; other tasks are unaffected.{crash_dump(w)}")
            why = ("died", message, exitcode, w.pid)
        if task.skip is not None and item >= 0 and item not in task.skip:
            # A map() chunk: only the item it was in fails; the chunk runs
            # again without it (poolx._chunks).
            task.skip[item] = why
            return True
        if timed_out:
            self.fail(task, TaskTimeoutError(f"{describe(task.fn)} {message}",
                                             timeout=self.task_timeout, pid=w.pid))
        else:
            self.fail(task, WorkerDiedError(
                f"the worker process (pid {w.pid}) running {describe(task.fn)} died: "
                f"{describe_exit(exitcode, w.killed_for)}. The worker was replaced; other tasks are "
                f"unaffected.{crash_dump(w)}", exitcode=exitcode, pid=w.pid))
        return False

    def break_executor(self, message: str) -> None:
        if self.backend.broken is None:
            self.backend.broken = message
        error = InitializerError(message)
        self.fail_queue(error)
        for w in self.workers.values():
            for task in w.outstanding.values():
                self.fail(task, error)
            w.outstanding.clear()

    # -- ending -------------------------------------------------------------

    def cancel_queued(self) -> None:
        keep: deque[Task] = deque()
        for task in self.queue:
            if not task.t_dispatch and task.future.cancel():
                # Notified too, unlike the stdlib's cancel_futures: wait() and
                # as_completed() count a cancelled future only once notified.
                task.future.set_running_or_notify_cancel()
                self.telemetry.task_cancelled()
            elif not task.future.done():
                keep.append(task)
        self.queue = keep

    def fail_queue(self, error: BaseException) -> None:
        while self.queue:
            self.fail(self.queue.popleft(), error)

    def wind_down(self) -> bool:
        """Stop idle workers once all work is done; True when the loop may end."""
        if self.queue and not self.terminating and self.backend.broken is None:
            return False
        if self.terminating or self.backend.broken is not None:
            self.fail_queue(WorkerDiedError("the executor was shut down before this task ran"))
        if any(w.outstanding for w in self.workers.values()):
            return False
        now = time.monotonic()
        for w in self.workers.values():
            if w.state != STOPPING:
                w.state = STOPPING
                w.stop_deadline = now + STOP_TIMEOUT
                self.send(w, [pickle_stop()])
            elif now > w.stop_deadline:
                self.signal(w, kill=True)
        if self.workers:
            return False
        # Actors last: tasks may call them until the end.  Each runs the calls
        # it was sent, then stops.
        if not self.actors_stopping:
            self.actors_stopping = True
            self.actors.stop_all("was stopped: its executor was shut down")
        return not self.actors.procs

    def abort(self, error: BaseException) -> None:
        # First refuse new work: try_direct (under self.lock) sees closing, and
        # ProcessBackend.submit sees ``stopped``; what was queued before fails below.
        with self.lock:
            self.closing = True
            self.close_incoming(error)
        results, self.results = self.results, []
        for task, _, _ in results:
            if not task.future.done():
                self.fail(task, error)
        for w in list(self.workers.values()):
            self.signal(w, kill=True)
            for task in w.outstanding.values():
                if not task.future.done():
                    self.fail(task, error)
        for task in self.queue:
            if not task.future.done():
                self.fail(task, error)
        for proc in list(self.actors.procs.values()):
            self.signal_process(proc.process, kill=True)
            for call in proc.inflight.values():
                if not call.future.done():
                    self.fail(call, error)

    def close_incoming(self, error: BaseException) -> None:
        """Take no more work: from now on ProcessBackend.submit raises ``error``
        (a copy), and the tasks handed over but not yet taken fail with it.

        ``stopped`` is set and ``incoming`` drained in one hold of the lock that
        every hand-over holds while it appends (ProcessBackend._put): a task
        appended after the drain would wait for ever (issue 19).
        """
        backend = self.backend
        with backend.incoming_lock:
            if backend.stopped is None:
                backend.stopped = error
            late = list(self.incoming)
            self.incoming.clear()
        for item in late:
            if isinstance(item, Task) and not item.future.done():
                self.fail(item, backend.stopped)

    def rendezvous(self) -> Any:
        """Where this executor's actors meet to form collective groups by name (made at first use)."""
        if self.collectives is None:
            from ...collective import Rendezvous

            self.collectives = Rendezvous()
        return self.collectives

    def cleanup(self) -> None:
        if self.collectives is not None:
            self.collectives.close()
        for w in list(self.workers.values()):
            self.signal(w, kill=True)
            w.process.join(1.0)
            w.sock.close()
            w.cell.close()
            os.close(w.fd)
            close_process(w.process)  # (its sentinel pipes: workers are left here only after abort)
        for proc in list(self.actors.procs.values()):
            self.signal_process(proc.process, kill=True)
            proc.process.join(1.0)
            proc.sock.close()
            proc.cell.close()
            os.close(proc.fd)
            close_process(proc.process)
            proc.actor.impl.gone.set()
        for conn in list(self.conns):
            self.close_conn(conn)
        self.sel.close()
        self.closing = True  # try_direct() refuses from now on
        # After a normal end too: a submit that raced with shutdown() fails, as the stdlib's would.
        self.close_incoming(RuntimeError("cannot schedule new futures after shutdown"))
        self.backend.scheduler_exited()
        self.backend = None  # break the backend <-> scheduler cycle: both can go without the GC


@contextlib.contextmanager
def _main_file_restored(path: str | None) -> Iterator[None]:
    """Give ``__main__`` back its ``__file__`` while a worker starts, if it lost it.

    CPython deletes ``__main__.__file__`` once the script has run
    (_PyRun_SimpleFileObject), before the threading atexit hooks that let
    pending work finish.  A worker started then would not import the script,
    and functions sent by reference as ``__main__.f`` would not be found.
    The check and the start race the deletion (the main thread runs on):
    a child that started without the script imports it (``W.with_main``).
    """
    main = sys.modules.get("__main__")
    if path is None or main is None or hasattr(main, "__file__"):
        yield
        return
    main.__file__ = path
    try:
        yield
    finally:
        del main.__file__


def _start_held(ctx: Any) -> Any:
    """While multiprocessing starts a child: stdio held under spawn and forkserver (``_fds``).

    Their pipes (the data written to a spawned child, kept open until the
    Process is collected; the forkserver's liveness pipe, for the driver's
    life) would otherwise take a stdio number a driver had closed, and its
    print() would write into them.  Not under fork: the child would inherit
    the placeholders, and fork's only pipe left open in the driver is a read end.
    """
    return contextlib.nullcontext() if ctx.get_start_method() == "fork" else _fds.stdio_held()


def _widen(sock: socket.socket) -> None:
    """Let a whole task message of up to SOCKET_BUFFER bytes sit in the socket.

    With the default buffer (~208 KB) a 1 MB argument takes five trips through
    the scheduler loop, each of which may wait up to the 5 ms GIL switch
    interval behind a busy caller thread (joblib's); measured, a task with a
    1 MB argument then started ~4 ms after its dispatch instead of ~0.5 ms.
    The kernel caps the size at net.core.wmem_max without an error.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    except OSError:
        pass


def crash_dump(w: _Worker) -> str:
    """The worker's faulthandler output, if a fatal error wrote one."""
    return crash_dump_fd(w.fd)


def crash_dump_fd(fd: int) -> str:
    """A child's faulthandler output (after its progress cell and log), if a fatal error wrote one."""
    try:
        dump = os.pread(fd, CRASH_DUMP_BYTES, W.DUMP_OFFSET).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f"\n\nThe worker's Python stack when it died (faulthandler):\n{dump}" if dump else ""


class _Named:
    """The ``fn`` of a task submitted in a child: the driver knows only its name."""

    __module__ = ""

    def __init__(self, qualname: str) -> None:
        self.__qualname__ = qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self.__qualname__} runs in a worker only")


def pickle_stop() -> bytes:
    return pickle.dumps((W.STOP,))
