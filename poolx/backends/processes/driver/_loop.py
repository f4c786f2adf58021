"""The driver side of the processes engine: one scheduler thread, its loop.

Data flow::

    user threads                    scheduler thread (this package)                workers
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

The ``Scheduler`` is one thread and one object, written in parts by job:

- ``_loop`` (this module): the loop, the commands from user threads, the
  end (shutdown, terminate, abort);
- ``_dispatch``: which worker gets which tasks (the prefetch window), and
  the results coming back;
- ``_workers``: starting workers, their messages, their exits;
- ``_blame``: what becomes of a dead worker's tasks;
- ``_children``: what children ask on their client channels (actor calls
  from tasks, tasks submitted in tasks, refs, collective rendezvous);
- ``_actors``: the actor processes (``ActorSupervisor``, an object of its own:
  user threads call actors directly, under each actor's lock);
- ``_endpoint``: the driver's end of a channel (the non-blocking write path),
  ``_spawn``: starting children.

The wire format is ``protocol`` (records) over ``_channel`` (frames); the
child's side is ``child/``, which this package never imports.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .... import _fds
from ...._errors import InitializerError, PoolxError, TaskCancelledError, WorkerDiedError
from ...._futures import Task
from ...._serialization import describe
from ...._telemetry import Telemetry
from .. import protocol as P
from . import _direct
from ._actors import ActorSupervisor
from ._blame import Blame
from ._children import Children
from ._dispatch import MAX_PREFETCH, Dispatch
from ._endpoint import Conn
from ._spawn import STARTING, STOPPING, ChildEntries, Spawner, close_process, signal_process
from ._workers import STOP_TIMEOUT, WorkerHandle, Workers

logger = logging.getLogger("poolx")

# Seconds between checks that every child is still alive (see check_liveness).
LIVENESS_POLL = 1.0
# How often (at most) the loop looks for tasks over task_timeout, in seconds.
TIMEOUT_POLL = 0.05
# Tasks beyond max_workers that shutdown(cancel_futures=True) counts as already
# handed out, and so runs: the stdlib's EXTRA_QUEUED_CALLS (its call queue holds
# max_workers + 1 calls, marked running as they enter it).  Matching it makes
# which futures get cancelled the same as with ProcessPoolExecutor (CPython's
# test_cancel_futures), whether or not poolx's workers have started yet.
EXTRA_QUEUED_CALLS = 1


class Scheduler(Dispatch, Workers, Blame, Children, threading.Thread):
    """The scheduler thread of one processes backend: owns every socket and every child."""

    def __init__(self, ctx: Any, max_workers: int, setup: P.WorkerSetup, max_tasks: int | None,
                 telemetry: Telemetry, incoming: deque[Any], wake_fd: int, backend: Any,
                 entries: ChildEntries) -> None:
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
        self.spawner = Spawner(ctx, entries.with_main)
        self.worker_main = entries.worker
        self.sel = _fds.selector()
        self.sel.register(wake_fd, selectors.EVENT_READ, self.on_wake)
        self.queue: deque[Task] = deque()
        self.results: list[tuple[Any, bool, Any]] = []  # read, not yet delivered
        self.workers: dict[int, WorkerHandle] = {}
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
        self.actors = ActorSupervisor(self, entries.actor)
        self.conns: set[Conn] = set()  # client channels of live children
        self.actors_stopping = False
        self.next_liveness = time.monotonic() + LIVENESS_POLL
        self.borrowed = 0  # workers started beyond max_workers while tasks wait in get()
        self.borrowed_back = False  # a loan ended: extra idle workers may retire (retire_extra)
        self.collectives: Any = None  # the actors' collective.Rendezvous, made at first use
        self.delivering = 0  # callers' threads completing futures they read (_direct)
        self.direct_claimed = False  # a caller read the last direct task itself (_direct.note)
        self.napping = True  # its sleep in select() may be long (see _direct.note)
        self.direct_at = 0.0  # when a task last went to a worker from a caller's thread

    def run(self) -> None:
        try:
            with self.lock:
                timeout = _direct.nap(self, self.select_timeout())
            while True:
                events = self.sel.select(timeout)
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
                    if self.direct_at:
                        _direct.hand_back(self)
                    # Under the lock: try_direct reads what it says about the sleep (napping).
                    timeout = _direct.nap(self, self.select_timeout())
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
            if type(item) is tuple:  # a command: (a method to run on this thread, its argument)
                item[0](item[1])
            else:
                self.queue.append(item)

    def request(self, command: Callable[[Any], None], arg: Any) -> None:
        """Any thread: have the loop run ``command(arg)`` on its thread, in its next pass.

        The commands are the methods that say "on the scheduler thread" (of
        this object or its ``actors``); ``ProcessBackend`` hands them over the
        same way, through ``incoming``.
        """
        self.incoming.append((command, arg))
        self.backend.wake()

    # -- commands (scheduler thread, handed over through ``incoming``) ------------------

    def shutdown(self, cancel_futures: bool) -> None:
        self.closing = True
        if cancel_futures:
            in_flight = sum(len(w.outstanding) for w in self.workers.values())
            self.cancel_queued(handed_out=self.max_workers + EXTRA_QUEUED_CALLS - in_flight)

    def prestart(self, _: Any = None) -> None:
        # Start them now, not in a later pass: a close() right after the
        # constructor must still see every initializer run, as the stdlib's.
        self.keep_workers = self.max_workers
        self.start_workers()

    def terminate(self, kill: bool) -> None:
        self.closing = self.terminating = True
        self.cancel_queued()
        for w in list(self.workers.values()):
            self.signal(w, kill=kill)
        self.actors.kill_all(kill)

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

    def cancel_queued(self, handed_out: int = 0) -> None:
        """Cancel the queued tasks not yet sent, but for the first ``handed_out``
        (shutdown's, see EXTRA_QUEUED_CALLS): those are marked running, as the
        stdlib's call queue marks them, and run."""
        keep: deque[Task] = deque()
        for task in self.queue:
            if handed_out > 0 and not task.t_dispatch and not task.future.done():
                handed_out -= 1
                if task.future.set_running_or_notify_cancel():
                    task.t_dispatch = time.perf_counter()  # (dispatch() then sends it as it is)
                    keep.append(task)
                else:
                    self.telemetry.task_cancelled()
                continue
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
        if self.delivering:  # a caller completes futures it read: shutdown() returns after them
            return False
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
                w.send(self.sel, [P.STOP_FRAME])
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
            signal_process(proc.process, kill=True)
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

    def cleanup(self) -> None:
        if self.collectives is not None:
            self.collectives.close()
        with self.lock:  # (a caller reading a worker's channel itself reads under it: _direct)
            for w in list(self.workers.values()):
                self.signal(w, kill=True)
                w.process.join(1.0)
                w.open = False
                _direct.forget(w)
                if not w.owner:
                    w.close_files()  # (its sentinel pipes: workers are left here only after abort)
                else:  # a caller waits on its socket and sentinel: it closes them as it lets go
                    w.gone = True
        for proc in list(self.actors.procs.values()):
            signal_process(proc.process, kill=True)
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
