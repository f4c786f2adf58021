"""Actor calls on the processes backend: sending them, reading their results, the direct wait.

The driver's half of an actor's channel (``_actors`` holds the rest of the
``ActorSupervisor``: starting, stopping, deaths, restarts).

**Sending.**  A call made in the driver is pickled and written to the actor's
channel by the calling thread itself, under the actor's lock: calls from one
thread arrive in order, and no thread switch sits between ``.remote()`` and
the socket.  A sequential actor (one call at a time) that is still running
earlier calls does not need the next ones yet: they wait in ``pending`` and go
as one message when the results of all it was sent have come back, when a
caller waits for one of them, or when CALL_BATCH have gathered.  A pipelined
caller so writes one message per batch instead of one per call, and the actor
wakes (and answers) once per batch.  Threaded and async actors get every call
at once: a call may need another to run beside it.

**Reading.**  The scheduler thread reads the results, as it does for tasks,
and completes the futures, except while a caller reads them itself: a thread
that waits for the result of a call made in the driver (``ActorFuture.result``)
and finds nobody else reading that actor's channel takes it over.  It tells
the scheduler's selector to stop watching the socket for reading, waits in
``poll`` on the socket and the process's sentinel (duplicates of both, so that
the scheduler may close the originals at any time), and reads and completes
the futures under the scheduler's lock (``s.lock``, which the scheduler holds
whenever it reads): the reply comes to the waiting thread without the
scheduler thread's wake-up and the Condition hand-over after it.  It gives the
channel back (the selector watches it again) once its own future is done,
the process has ended (the scheduler's ``on_exit`` does the rest) or the
timeout has passed.  Lock order: ``s.lock`` before ``actor.lock``, never the
other way round.
"""

from __future__ import annotations

import mmap
import os
import select
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .... import _shm
from ...._errors import ActorDiedError, SerializationError
from ...._futures import Future, worker_thread
from ...._serialization import dumps, unpicklable_argument
from ....actors.directory import DEAD, Actor, ActorCall
from .. import _channel
from .. import protocol as P
from ._endpoint import Conn, Endpoint
from ._spawn import READY, STARTING

if TYPE_CHECKING:
    from ._state import SchedulerState

# Calls a sequential actor is sent in one message when they pile up behind a
# running call.  Larger batches mean fewer writes and wake-ups (one per batch,
# ~10 us each here); smaller ones hand the actor its next calls sooner when a
# caller makes calls faster than the actor runs them.
CALL_BATCH = 32
_FINISHED = "FINISHED"  # concurrent.futures._base.FINISHED
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class ActorProcess(Endpoint):
    """One process an actor runs in, and the driver's end of its channel."""

    def __init__(self, actor: Actor, process: Any, sock: socket.socket, client: Conn, cell: mmap.mmap,
                 fd: int) -> None:
        super().__init__(sock)  # its outbox is written under actor.lock: callers write too
        self.actor = actor
        self.process = process
        self.pid = process.pid
        self.client = client
        self.cell = cell
        self.fd = fd
        self.inflight: dict[int, ActorCall] = {}  # sent or pending, not returned
        self.state = STARTING
        self.init_error: tuple[Any, ...] | None = None
        self.killed: str | None = None  # why it was killed (executor.kill, terminate_workers)
        self.restart_after_kill = False
        self.timed_out = 0  # id of the call it was killed for running over call_timeout
        self.killed_for: str | None = None  # why poolx killed it for what its channels carried
        # Calls held back behind running ones (a sequential actor only; see the module docstring).
        self.pending: list[ActorCall] = []
        self.batching = not actor.is_async and (actor.max_concurrency or 1) == 1
        self.watched = 0  # what the selector watches its socket for (0: not registered)
        self.direct = False  # a caller reads its channel (the selector does not)
        self.waiter: Waiter | None = None  # that caller's poll, made at the first direct wait


class ActorSlot:
    """An actor across its restarts: ``actor.impl`` on the processes backend."""

    def __init__(self, setup: P.ActorSetup, channels: ActorChannels) -> None:
        self.setup = setup
        self.channels = channels
        self.proc: ActorProcess | None = None
        self.backlog: list[ActorCall] = []
        self.gone = threading.Event()  # set when the actor is dead and its process reaped


class Waiter:
    """What a caller reading an actor's channel directly waits on: its socket and its sentinel.

    Duplicates of both fds, owned here: the scheduler closes the originals
    when the process ends, possibly while a caller is still in ``poll``.
    """

    def __init__(self, proc: ActorProcess) -> None:
        self.fds = [os.dup(proc.sock.fileno())]
        try:
            self.fds.append(os.dup(proc.process.sentinel))
        except OSError:
            self.close()
            raise
        self.poller = select.poll()
        for fd in self.fds:
            self.poller.register(fd, select.POLLIN)

    def wait(self, seconds: float | None) -> bool:
        """Wait until the socket has bytes or the process ended; True if it ended."""
        events = self.poller.poll(None if seconds is None else seconds * 1000.0)
        return any(fd == self.fds[1] for fd, _ in events)

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def __del__(self) -> None:  # (the scheduler failed and its cleanup dropped the process)
        try:
            self.close()
        except Exception:  # (at interpreter exit, os may be gone already)
            pass


_here = threading.local()  # .reading: this thread reads an actor's channel (no nested direct wait)


class ActorFuture(Future[Any]):
    """The future of an actor call made in the driver: ``result()`` may read the reply itself.

    ``ActorChannels.call`` makes a call's future one of these (by class; no
    new object) and sets ``_poolx_direct`` to ``(slot, call id)``.
    """

    __slots__ = ()

    def result(self, timeout: float | None = None) -> Any:
        if self._state != _FINISHED and getattr(worker_thread, "lend", None) is None:
            timeout = wait_direct(self, timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != _FINISHED and getattr(worker_thread, "lend", None) is None:
            timeout = wait_direct(self, timeout)
        return super().exception(timeout)


def wait_direct(future: ActorFuture, timeout: float | None) -> float | None:
    """Wait for ``future`` by reading its actor's channel in this thread, while that is possible.

    Returns the timeout left for the usual wait, which follows (at once, when
    the future is done).
    """
    slot, call_id = future._poolx_direct  # type: ignore[attr-defined]
    if getattr(_here, "reading", False):
        return timeout  # a callback of a future this thread is completing: never nest
    deadline = None if timeout is None else time.monotonic() + timeout
    slot.channels.wait_direct(slot, call_id, future, deadline)
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class ActorChannels:
    """Sending calls and reading results: the part of ``ActorSupervisor`` that callers share.

    ``s`` is the scheduler whose thread reads the actors' channels, seen
    through what ``SchedulerState`` declares.
    """

    def __init__(self, scheduler: SchedulerState) -> None:
        self.s = scheduler
        self.procs: dict[int, ActorProcess] = {}  # live actor processes, by id() (scheduler thread)

    # -- calling (any thread, under actor.lock) -----------------------------------

    def call(self, actor: Actor, call: ActorCall) -> None:
        args, kwargs = call.args, call.kwargs
        if args or kwargs:
            try:
                payload, bufs = dumps((args, kwargs), _shm.PRIVATE)
            except (Exception, SystemExit) as exc:
                culprit = unpicklable_argument(args, kwargs)
                raise SerializationError(
                    f"cannot pickle {culprit + ' of' if culprit else 'the arguments of'} {call.fn}(): "
                    f"{type(exc).__name__}: {exc}. "
                    "Actors run in other processes, so arguments must be picklable."
                ) from exc
            call.bytes_out = len(payload) + sum(b.raw().nbytes for b in bufs)
            call.args, call.kwargs = (), {}
        else:
            payload, bufs = b"", ()
        call.state = (payload, bufs)
        future = call.future
        future.__class__ = ActorFuture  # (same layout: a class of methods only)
        future._poolx_direct = (actor.impl, call.id)  # type: ignore[attr-defined]
        error = self.route(actor, call)
        if error is not None:
            actor.fail(call, error)

    def route(self, actor: Actor, call: ActorCall) -> ActorDiedError | None:
        """Send ``call`` to the actor's process, or queue it while there is none.

        Any thread.  Returns the error to fail it with when the actor is dead.
        """
        with actor.lock:
            slot: ActorSlot = actor.impl
            if actor.status == DEAD:
                return actor.died_error()
            proc = slot.proc
            if proc is None:
                slot.backlog.append(call)
            elif proc.inflight and proc.batching:  # it runs earlier calls: this one can wait
                proc.inflight[call.id] = call
                proc.pending.append(call)
                if len(proc.pending) >= CALL_BATCH:
                    self.send_pending(proc)
            else:
                self.send_calls(proc, [call])
        return None

    def send_pending(self, proc: ActorProcess) -> None:
        """Send the calls held back on ``proc`` (under actor.lock)."""
        calls, proc.pending = proc.pending, []
        if calls:
            self.send_calls(proc, calls)

    def release_pending(self, proc: ActorProcess) -> None:
        """Any thread: send the calls held back on ``proc`` now (their results are wanted)."""
        if proc.pending:
            with proc.actor.lock:
                self.send_pending(proc)

    def send_calls(self, proc: ActorProcess, calls: list[ActorCall]) -> None:
        """Queue ``calls`` on ``proc``'s channel and write what the socket takes (under actor.lock)."""
        if len(calls) == 1 and not calls[0].state[1] and not proc.outbox and proc.open:
            # The common case, a small call on an idle channel: one bytes object, one send().
            call = calls[0]
            message = _channel.encode_single(P.control(P.CALLS, [(call.id, call.method, call.state[0], 0)]))
            proc.inflight[call.id] = call
            call.t_dispatch = time.perf_counter()
            try:
                sent = proc.sock.send(message)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the process is gone; its sentinel will tell
                return
            if sent < len(message):
                proc.outbox.append(memoryview(message)[sent:])
                self.write(proc)
            return
        records = []
        frames: list[Any] = []
        fds: list[int] = []
        keys: dict[Any, int] = {}
        now = time.perf_counter()
        for call in calls:
            payload, bufs = call.state
            records.append((call.id, call.method, payload, len(bufs)))  # a protocol.CallRecord
            if bufs:
                _channel.out_frames(bufs, frames, fds, keys)
            proc.inflight[call.id] = call
            call.t_dispatch = now
        control = P.control(P.CALLS, records)
        if not proc.open:
            _channel.Fds(fds).close()
            return  # it is dying: on_exit fails (or retries) these calls
        pending = bool(proc.outbox)
        if not frames and not pending:
            message = _channel.encode_single(control)
            try:
                sent = proc.sock.send(message)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return
            if sent < len(message):
                proc.outbox.append(memoryview(message)[sent:])
                self.write(proc)
            return
        _channel.queue(proc.outbox, [control, *frames], fds)
        if not pending:
            self.write(proc)

    def write(self, proc: ActorProcess) -> None:
        """Write as much of the outbox as the socket takes (under actor.lock)."""
        proc.write()
        if proc.outbox and not proc.writing:
            proc.writing = True
            self.s.request(self.watch, proc)

    # -- watching (scheduler thread, or a caller holding s.lock) ------------------------

    def watch(self, proc: ActorProcess) -> None:
        """Have the selector watch ``proc``'s socket for what it needs now.

        For reading unless a caller reads it directly; for room while its
        outbox holds bytes.  Not registered at all when neither (a selector
        takes no empty set of events).
        """
        if not proc.open:
            return
        want = (0 if proc.direct else _READ) | (_WRITE if proc.writing else 0)
        have = proc.watched
        if want == have:
            return
        sel = self.s.sel
        if not have:
            sel.register(proc.sock, want, lambda k, m, p=proc: self.on_socket(p, m))
        elif not want:
            sel.unregister(proc.sock)
        else:
            sel.modify(proc.sock, want, sel.get_key(proc.sock).data)
        proc.watched = want

    def on_socket(self, proc: ActorProcess, mask: int) -> None:
        if mask & _WRITE:
            with proc.actor.lock:
                self.write(proc)
                if not proc.outbox:
                    proc.writing = False
            self.watch(proc)
        if mask & _READ and not proc.direct:  # (a caller took it over after select() saw bytes)
            self.read(proc, limit=8)

    # -- reading (scheduler thread, or a caller holding s.lock) ----------------------------

    def read(self, proc: ActorProcess, limit: int | None) -> None:
        try:
            _channel.drain(proc.reader, self.on_message, proc, limit)
        except _channel.ChannelCorrupt as exc:
            self.drop_lying(proc, f"sent {exc}")
        except _channel.ChannelClosed:
            self.close_channel(proc)

    def drop_lying(self, proc: ActorProcess, what: str, channel: bool = True) -> None:
        raise NotImplementedError  # ActorSupervisor's

    def close_channel(self, proc: ActorProcess) -> None:
        if proc.open:
            with proc.actor.lock:
                proc.open = False
                proc.outbox = []
                proc.pending = []  # (still in inflight: on_exit fails or retries them)
            if proc.watched:
                self.s.sel.unregister(proc.sock)
                proc.watched = 0

    def on_message(self, proc: ActorProcess, msg: list[Any]) -> None:
        control = _channel.decode_control(msg[0])
        kind = control[0]
        self.s.telemetry.messages_received += 1
        if kind == P.RESULTS:
            if control[2] != proc.client.seen:
                self.s.catch_up(proc.client, control[2])  # its own calls first (see Scheduler)
            self.on_results(proc, control[1], msg)
        elif kind == P.READY:
            if proc.state == STARTING:
                proc.state = READY
            proc.pid = control[1]
            self.s.telemetry.actor_ready(proc.actor.id, proc.pid)
        elif kind == P.INIT_FAILED:
            proc.init_error = control[1:]

    def on_results(self, proc: ActorProcess, records: list[Any], msg: list[Any]) -> None:
        oob = 1
        forward: dict[Conn, tuple[list[Any], list[Any]]] = {}  # records and buffers per child
        # No lock: a dict pop is atomic, and on_exit (which takes what is left)
        # runs under s.lock, as this does.
        pop = proc.inflight.pop
        calls = [pop(r[0], None) for r in records]
        if proc.pending and len(proc.inflight) == len(proc.pending):
            self.release_pending(proc)  # it has run all it was sent: send it what waited
        results = self.s.results
        for call, record in zip(calls, records):
            # A protocol.ResultRecord:
            _, status, data, n_oob, t_start, t_end, info, s_unpickle, s_pickle = record
            if n_oob:
                bufs = msg[oob : oob + n_oob]
                oob += n_oob
            else:
                bufs = []
            if call is None:
                continue
            call.t_start, call.t_end = t_start, t_end
            call.s_unpickle, call.s_pickle = s_unpickle, s_pickle
            call.bytes_in = len(data) + sum(len(b) for b in bufs) if n_oob else len(data)
            call.state = None
            if call.origin is not None:
                conn, child_id = call.origin
                recs, frames = forward.setdefault(conn, ([], []))
                recs.append((child_id, status, data, n_oob, t_start, t_end, info, s_unpickle, s_pickle))
                frames.extend(bufs)
                call.t_done = time.perf_counter()
                self.s.telemetry.task_done(call, status == P.OK)
                continue
            if status == P.OK and not data:  # a call that returned None
                results.append((call, True, None))
                continue
            results.append((call, *P.decode_outcome(status, data, bufs, info, call.fn, True)))
        for conn, (recs, frames) in forward.items():
            self.s.send_results(conn, recs, frames)

    # -- the direct wait (the caller's thread) ----------------------------------------------

    def wait_direct(self, slot: ActorSlot, call_id: int, future: ActorFuture, deadline: float | None) -> None:
        """Read ``slot``'s channel in this thread until ``future`` is done, if nobody else does.

        Returns at once when another thread reads it, when the call has not
        been sent to a process (it waits for a restart), on the scheduler
        thread, or once the scheduler has ended; then, and when the process
        ends or ``deadline`` passes, the caller waits as usual.
        """
        proc = slot.proc
        if proc is None:
            return
        self.release_pending(proc)  # (its result may be behind calls held back)
        scheduler: Any = self.s
        if threading.current_thread() is scheduler or not scheduler.is_alive():
            return  # a callback on the scheduler thread; a forked child's copy of a future
        lock = self.s.lock
        if not lock.acquire(timeout=_left(deadline, -1)):
            return
        try:
            if not self.take_over(proc, call_id, future):
                return
        finally:
            lock.release()
        reading = True
        try:
            waiter = proc.waiter
            assert waiter is not None
            while reading:
                left = _left(deadline, None)
                if left is not None and left <= 0:
                    return
                ended = waiter.wait(left)
                if not lock.acquire(timeout=_left(deadline, -1)):
                    return
                try:
                    reading = self.read_direct(proc, future) and not ended
                    if not reading:
                        self.give_back(proc)
                finally:
                    lock.release()
        finally:
            if reading:
                with lock:
                    self.give_back(proc)

    def take_over(self, proc: ActorProcess, call_id: int, future: ActorFuture) -> bool:
        """Under s.lock: make this thread ``proc``'s reader, unless it cannot or need not be.

        Reads nothing: the reply of a call just sent is rarely there yet, and
        ``poll`` returns at once if it is.
        """
        if (future._state == _FINISHED or proc.direct or not (proc.watched & _READ)
                or call_id not in proc.inflight):
            return False
        if proc.waiter is None:
            try:
                proc.waiter = Waiter(proc)
            except OSError:  # out of fds: the usual wait
                return False
        proc.direct = True
        try:
            self.watch(proc)
        except (OSError, ValueError):  # (the selector was closed: the scheduler has ended)
            proc.direct = False
            return False
        return True

    def read_direct(self, proc: ActorProcess, future: ActorFuture) -> bool:
        """Under s.lock: read what ``proc`` sent and complete those futures here.

        True while this thread should go on reading (the future is not done,
        the channel is open).
        """
        if not proc.open:
            return False
        results = self.s.results
        mark = len(results)
        self.read(proc, limit=8)
        if len(results) > mark:
            mine = results[mark:]
            del results[mark:]
            _here.reading = True
            try:
                self.s.complete(mine)  # (the scheduler's own completion: futures, telemetry)
            finally:
                _here.reading = False
        return proc.open and future._state != _FINISHED

    def give_back(self, proc: ActorProcess) -> None:
        """Under s.lock: the scheduler reads ``proc``'s channel again (or, once it is closed, nobody)."""
        proc.direct = False
        if not proc.open:  # (on_exit leaves the waiter to the reader)
            if proc.waiter is not None:
                proc.waiter.close()
            return
        try:
            self.watch(proc)
        except (OSError, ValueError):  # (the selector was closed: the scheduler has ended)
            pass


def _left(deadline: float | None, none: Any) -> Any:
    """Seconds to ``deadline`` (at least 0), or ``none`` without one."""
    if deadline is None:
        return none
    return max(0.0, deadline - time.monotonic())

