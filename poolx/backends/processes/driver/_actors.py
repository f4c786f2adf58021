"""The driver side of actors on the processes backend.

Each actor is a process of its own (``child/_actor``), outside the task
workers, with one channel to the driver.  Calls made in the driver are sent
by the calling thread itself, under the actor's lock (so calls from one
thread arrive in order, and no thread switch sits on the latency path); the
scheduler thread reads the results, as it does for tasks.

Calls made inside a task or another actor arrive on that child's *client
channel* (``child/_client``); the scheduler forwards them to the actor and the
result bytes back, without unpickling them.

One actor across restarts is an ``ActorSlot`` (``actor.impl``); each process
it runs in is an ``ActorProcess``.  While there is no process (being
restarted after a kill), calls wait in the slot's backlog.

Which calls fail when an actor process dies: every call sent to it that had
not returned (running, or queued in the process) fails with
``ActorDiedError``, unless ``max_task_retries`` allows sending it again to
the restarted process.  Calls made after the death was noticed go to the
restarted process (or fail at once when there is no restart left).
"""

from __future__ import annotations

import logging
import mmap
import os
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .... import _shm
from ...._errors import ActorDiedError, RemoteTraceback, SerializationError, TaskTimeoutError, describe_exit
from ...._serialization import dumps, loads, unpicklable_argument
from ....actors.directory import DEAD, Actor, ActorCall
from .. import _channel, _lifetime
from .. import protocol as P
from .._cell import read_cell
from ._endpoint import Conn, Endpoint
from ._spawn import READY, STARTING, STOPPING, close_process, crash_dump_fd, signal_process

if TYPE_CHECKING:
    from ._state import SchedulerState

logger = logging.getLogger("poolx")


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
        self.inflight: dict[int, ActorCall] = {}
        self.state = STARTING
        self.init_error: tuple[Any, ...] | None = None
        self.killed: str | None = None  # why it was killed (executor.kill, terminate_workers)
        self.restart_after_kill = False
        self.timed_out = 0  # id of the call it was killed for running over call_timeout
        self.killed_for: str | None = None  # why poolx killed it for what its channels carried


class ActorSlot:
    """An actor across its restarts: ``actor.impl`` on the processes backend."""

    def __init__(self, setup: P.ActorSetup) -> None:
        self.setup = setup
        self.proc: ActorProcess | None = None
        self.backlog: list[ActorCall] = []
        self.gone = threading.Event()  # set when the actor is dead and its process reaped


class ActorSupervisor:
    """Actors of one processes backend: started, called, restarted; driven by its scheduler.

    ``s`` is the scheduler whose thread reads the actors' channels and
    watches their exits, seen through what ``SchedulerState`` declares: this
    object uses its selector, its telemetry, its results (completed in its
    pass), its answers to children (``_children``) and its spawner.
    """

    def __init__(self, scheduler: SchedulerState, actor_main: Any) -> None:
        self.s = scheduler
        self.actor_main = actor_main  # the actor process's entry point (child/_actor.main)
        self.procs: dict[int, ActorProcess] = {}  # live actor processes, by id() (scheduler thread)

    # -- starting ---------------------------------------------------------------

    def spawn(self, actor: Actor) -> ActorProcess:
        """Start a process for ``actor`` (any thread); it is registered by the scheduler."""
        slot: ActorSlot = actor.impl
        process, sock, client, cell, fd = self.s.spawner.spawn(
            self.actor_main, (slot.setup,), f"poolx-actor-{actor.id}")
        return ActorProcess(actor, process, sock, Conn(client, actor.label), cell, fd)

    def start(self, actor: Actor) -> None:
        """Caller's thread: start the actor's first process; calls may be sent to it at once."""
        slot = ActorSlot(actor_setup(actor, self.s.backend.hook_bytes))
        actor.impl = slot
        proc = self.spawn(actor)
        with actor.lock:
            slot.proc = proc
        self.s.request(self.register, proc)

    def register(self, proc: ActorProcess) -> None:
        """Scheduler thread: watch a new actor process (its socket, exit, client channel)."""
        sel = self.s.sel
        self.procs[id(proc)] = proc
        sel.register(proc.sock, selectors.EVENT_READ, lambda k, m, p=proc: self.on_socket(p, m))
        sel.register(proc.process.sentinel, selectors.EVENT_READ, lambda k, m, p=proc: self.on_exit(p))
        self.s.register_client(proc.client)
        self.s.telemetry.actor_pids[proc.actor.id] = proc.pid
        with proc.actor.lock:
            if proc.writing:  # callers filled its socket before it was watched
                self.want_write(proc)

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
        else:
            payload, bufs = b"", ()
        call.state = (payload, bufs)
        call.args, call.kwargs = (), {}
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
            if slot.proc is None:
                slot.backlog.append(call)
            else:
                self.send_calls(slot.proc, [call])
        return None

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
        _channel.queue(proc.outbox, [control, *frames], fds)
        if not pending:
            self.write(proc)

    def write(self, proc: ActorProcess) -> None:
        """Write as much of the outbox as the socket takes (under actor.lock)."""
        proc.write()
        if proc.outbox and not proc.writing:
            proc.writing = True
            self.s.request(self.want_write, proc)

    def want_write(self, proc: ActorProcess) -> None:
        """Scheduler thread: watch for room in ``proc``'s socket."""
        if not proc.open:
            return
        try:
            key = self.s.sel.get_key(proc.sock)
        except KeyError:
            return  # not registered yet: register() asks again
        self.s.sel.modify(proc.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, key.data)

    # -- reading (scheduler thread) -------------------------------------------------

    def on_socket(self, proc: ActorProcess, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            with proc.actor.lock:
                self.write(proc)
                done = not proc.outbox
                if done:
                    proc.writing = False
            if done and proc.open:
                self.s.sel.modify(proc.sock, selectors.EVENT_READ, self.s.sel.get_key(proc.sock).data)
        if mask & selectors.EVENT_READ:
            self.read(proc, limit=8)

    def read(self, proc: ActorProcess, limit: int | None) -> None:
        try:
            _channel.drain(proc.reader, self.on_message, proc, limit)
        except _channel.ChannelCorrupt as exc:
            self.drop_lying(proc, f"sent {exc}")
        except _channel.ChannelClosed:
            self.close_channel(proc)

    def drop_lying(self, proc: ActorProcess, what: str, channel: bool = True) -> None:
        """Kill an actor process whose channel carried something else than poolx messages.

        As Scheduler.drop_lying: never resynchronised; the actor restarts as
        after a crash, and its calls' error says why it died.
        """
        proc.killed_for = f"it {what} (likely a call wrote to its actor's channel socket)"
        logger.warning("poolx: the actor %s (pid %s) %s; killing it", proc.actor.label, proc.pid, what)
        if channel:
            self.close_channel(proc)
        signal_process(proc.process, kill=True)

    def check_stalls(self, limit: float) -> None:
        """Drop the actor channels on which a message started arriving, then stopped."""
        for proc in list(self.procs.values()):
            if proc.open and proc.reader.stall(time.monotonic(), limit) is not None:
                self.read(proc, limit=1)  # (see Scheduler.check_stalls)
                stall = proc.reader.stall(time.monotonic(), limit) if proc.open else None
                if stall is not None:
                    self.drop_lying(proc, f"sent {stall}")

    def drop_client(self, conn: Conn, exc: _channel.ChannelCorrupt) -> None:
        """The actor whose client channel ``conn`` lied (closed already) is killed."""
        for proc in self.procs.values():
            if proc.client is conn:
                self.drop_lying(proc, f"sent on its client channel {exc}", channel=False)
                return

    def close_channel(self, proc: ActorProcess) -> None:
        if proc.open:
            with proc.actor.lock:
                proc.open = False
                proc.outbox = []
            self.s.sel.unregister(proc.sock)

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
        # runs on this same thread.
        pop = proc.inflight.pop
        calls = [pop(r[0], None) for r in records]
        for call, record in zip(calls, records):
            # A protocol.ResultRecord:
            _, status, data, n_oob, t_start, t_end, info, s_unpickle, s_pickle = record
            bufs = msg[oob : oob + n_oob]
            oob += n_oob
            if call is None:
                continue
            call.t_start, call.t_end = t_start, t_end
            call.s_unpickle, call.s_pickle = s_unpickle, s_pickle
            call.bytes_in = len(data) + sum(len(b) for b in bufs)
            call.state = None
            if call.origin is not None:
                conn, child_id = call.origin
                recs, frames = forward.setdefault(conn, ([], []))
                recs.append((child_id, status, data, n_oob, t_start, t_end, info, s_unpickle, s_pickle))
                frames.extend(bufs)
                call.t_done = time.perf_counter()
                self.s.telemetry.task_done(call, status == P.OK)
                continue
            ok, value = P.decode_outcome(status, data, bufs, info, call.fn, True)
            self.s.results.append((call, ok, value))
        for conn, (recs, frames) in forward.items():
            self.s.send_results(conn, recs, frames)

    # -- calls from children (scheduler thread) ----------------------------------------

    def fail(self, call: ActorCall, error: BaseException) -> None:
        """Fail one call: complete its future, or tell the child that made it."""
        call.state = None
        if call.origin is None:
            if not call.future.done():
                self.s.results.append((call, False, error))
            return
        conn, child_id = call.origin
        if conn.open:
            if isinstance(error, ActorDiedError):
                self.s.reply_died(conn, child_id, error)
            else:
                self.s.reply_error(conn, child_id, error)
        call.t_done = time.perf_counter()
        self.s.telemetry.task_done(call, False)

    # -- stopping --------------------------------------------------------------------

    def kill(self, actor: Actor, restart: bool, why: str) -> None:
        """Any thread: SIGKILL the actor's process; pending calls fail (see on_exit)."""
        with actor.lock:
            slot: ActorSlot = actor.impl
            proc = slot.proc
            if actor.status == DEAD and proc is None:
                return
            if not restart:
                actor.mark_dead(ActorDiedError(f"the actor {actor.label} was killed ({why})",
                                               actor=actor.label))
            if proc is not None:
                proc.killed = why
                proc.restart_after_kill = restart
                slot.proc = None  # calls made from now on wait for the restart (or fail)
        if proc is not None:
            signal_process(proc.process, kill=True)
        else:
            self.s.request(self.settle, actor)

    def check_timeouts(self) -> None:
        """Scheduler thread: kill the actors whose running call is over ``call_timeout``.

        The call fails with TaskTimeoutError (on_exit); the actor restarts, or
        not, as after a kill with ``no_restart=False``.
        """
        now = time.perf_counter()
        for proc in list(self.procs.values()):
            limit = proc.actor.options.call_timeout
            if limit is None or proc.timed_out or proc.killed is not None or not proc.inflight:
                continue
            running_id, finished, started, _ = read_cell(proc.cell)
            if finished or running_id not in proc.inflight:
                continue
            if now - started > limit:
                proc.timed_out = running_id
                self.kill(proc.actor, restart=True, why=f"a call ran longer than call_timeout={limit:g} s")

    def timing(self) -> bool:
        """Whether an actor with a call_timeout has calls in flight (the loop must poll)."""
        return any(p.actor.options.call_timeout is not None and p.inflight for p in self.procs.values())

    def stop(self, actor: Actor, why: str) -> None:
        """Any thread: stop the actor once the calls sent so far have run."""
        with actor.lock:
            if actor.status == DEAD:
                return
            actor.mark_dead(ActorDiedError(f"the actor {actor.label} {why}", actor=actor.label))
            slot: ActorSlot = actor.impl
            proc = slot.proc
            if proc is not None:
                proc.state = STOPPING
                if proc.open:
                    pending = bool(proc.outbox)
                    _channel.queue(proc.outbox, [P.STOP_FRAME], [])
                    if not pending:
                        self.write(proc)
        if proc is None:
            self.s.request(self.settle, actor)

    def settle(self, actor: Actor) -> None:
        """Scheduler thread: an actor without a process that is now dead: fail its backlog."""
        slot: ActorSlot = actor.impl
        with actor.lock:
            if slot.proc is not None or actor.status != DEAD:
                return
            backlog, slot.backlog = slot.backlog, []
        for call in backlog:
            self.fail(call, actor.died_error())
        slot.gone.set()

    def on_exit(self, proc: ActorProcess) -> None:
        """Scheduler thread: an actor process ended; fail or retry its calls, restart it or not."""
        s = self.s
        if proc.open:
            self.read(proc, limit=None)
            self.close_channel(proc)
        proc.process.join(1.0)
        if proc.process.exitcode is None:
            signal_process(proc.process, kill=True)
            proc.process.join(1.0)
        s.sel.unregister(proc.process.sentinel)
        s.close_conn(proc.client)
        self.procs.pop(id(proc), None)
        exitcode = _lifetime.exit_code(proc.process)  # None: unknown (its forkserver died first)
        actor = proc.actor
        slot: ActorSlot = actor.impl
        error = death_error(proc, exitcode)
        crashed = proc.killed is None and proc.state != STOPPING and proc.init_error is None
        if crashed:
            s.telemetry.actor_crashed()
        retry: list[ActorCall] = []
        with actor.lock:
            if slot.proc is proc:
                slot.proc = None
            late = proc.inflight.pop(proc.timed_out, None) if proc.timed_out else None
            inflight = list(proc.inflight.values())
            proc.inflight.clear()
            again = False
            if actor.status != DEAD and proc.init_error is None and (crashed or proc.restart_after_kill):
                again = actor.may_restart()
            if again:
                retry = [c for c in inflight if actor.may_retry(c)]
            elif actor.status != DEAD:
                actor.mark_dead(error)
        failed = [c for c in inflight if c not in retry] if retry else inflight
        if late is not None:
            limit = actor.options.call_timeout
            self.fail(late, TaskTimeoutError(
                f"{late.fn}() ran longer than call_timeout={limit:g} s; the actor {actor.label} "
                f"(pid {proc.pid}) was killed" + (" and restarted" if again else ""),
                timeout=limit, pid=proc.pid))
        for call in failed:
            self.fail(call, _copy(error))
        try:
            if again:
                self.restart(actor, retry)
            else:
                self.settle(actor)
        finally:
            proc.sock.close()
            proc.cell.close()
            os.close(proc.fd)
            close_process(proc.process)

    def restart(self, actor: Actor, retry: list[ActorCall]) -> None:
        slot: ActorSlot = actor.impl
        with actor.lock:
            slot.backlog[:0] = retry  # retried calls first: they were made earlier
        try:
            proc = self.spawn(actor)
        except Exception as exc:
            with actor.lock:
                actor.mark_dead(ActorDiedError(
                    f"the actor {actor.label} could not be restarted: {type(exc).__name__}: {exc}",
                    actor=actor.label))
            self.settle(actor)
            return
        with actor.lock:
            if actor.status == DEAD:  # killed or stopped while restarting
                proc.killed = proc.killed or "it was stopped while restarting"
                signal_process(proc.process, kill=True)
            else:
                slot.proc = proc
                backlog, slot.backlog = slot.backlog, []
                if backlog:
                    self.send_calls(proc, backlog)
        self.register(proc)
        if actor.status == DEAD:
            self.settle(actor)

    def stop_all(self, why: str) -> None:
        """Scheduler thread, at shutdown: stop every actor after its pending calls."""
        directory = self.s.backend.options.actors
        for actor in directory.live():
            self.stop(actor, why)

    def kill_all(self, kill: bool) -> None:
        """Scheduler thread: kill every actor, those already told to stop included."""
        why = "terminate_workers" if not kill else "kill_workers"
        directory = self.s.backend.options.actors
        for actor in directory.live():
            self.kill(actor, restart=False, why=why)
        # An actor stopped by shutdown() has left the directory but may still be
        # in a long call: shutdown(wait=False) then the exit's kill (issue 19, item 6).
        for proc in list(self.procs.values()):
            if proc.killed is None:
                proc.killed = why
            signal_process(proc.process, kill=True)

    def wait(self, actor: Actor, timeout: float | None) -> None:
        slot: ActorSlot = actor.impl
        slot.gone.wait(timeout)


def actor_setup(actor: Actor, hook: bytes | None) -> P.ActorSetup:
    """What the actor's process gets at start (``hook``: the executor's child hook, pickled)."""
    try:
        # The spec travels among the process's start arguments (again at each
        # restart): its out-of-band buffers (large arrays) go with it as bytes.
        data, bufs = dumps((actor.cls, actor.args, actor.kwargs))
        spec = (data, [bytes(b.raw()) for b in bufs])
    except (Exception, SystemExit) as exc:
        raise _spec_error(actor, exc) from exc
    return P.ActorSetup(spec, actor.label, actor.max_concurrency, actor.options.num_cpus, hook)


def death_error(proc: ActorProcess, exitcode: int | None) -> ActorDiedError:
    """Why an actor process ended, as the error its calls fail with."""
    actor = proc.actor
    if proc.init_error is not None:
        type_name, message, tb, data = proc.init_error
        error = ActorDiedError(
            f"the actor {actor.label} could not be created: its constructor raised {type_name}: "
            f"{message}", actor=actor.label, exitcode=exitcode, pid=proc.pid)
        cause: BaseException | None = None
        if data is not None:
            try:
                cause = loads(data)
            except BaseException:
                cause = None
        if cause is not None:
            cause.__cause__ = RemoteTraceback(tb)
            error.__cause__ = cause
        else:
            error.__cause__ = RemoteTraceback(tb)
        return error
    if proc.killed is not None:
        return ActorDiedError(f"the actor {actor.label} was killed ({proc.killed})",
                              actor=actor.label, exitcode=exitcode, pid=proc.pid)
    if proc.state == STOPPING:
        death = actor.death
        return ActorDiedError(str(death) if death else f"the actor {actor.label} was stopped",
                              actor=actor.label, exitcode=exitcode, pid=proc.pid)
    running_id, finished, _, _ = read_cell(proc.cell)
    call = proc.inflight.get(running_id)
    where = f" while running {call.fn}()" if call is not None and not finished else ""
    how = describe_exit(exitcode, proc.killed_for)
    return ActorDiedError(
        f"the actor {actor.label} (pid {proc.pid}) died{where}: {how}{crash_dump_fd(proc.fd)}",
        actor=actor.label, exitcode=exitcode, pid=proc.pid)


def _copy(error: ActorDiedError) -> ActorDiedError:
    """A fresh exception per future: raising one object from several threads mixes tracebacks."""
    fresh = ActorDiedError(str(error), actor=error.actor, exitcode=error.exitcode, pid=error.pid)
    fresh.__cause__ = error.__cause__
    return fresh


def _spec_error(actor: Actor, exc: BaseException) -> SerializationError:
    """Name what cannot be pickled: the class, or one of the constructor's arguments."""
    culprit = (unpicklable_argument(actor.args, actor.kwargs)
               or f"the class {actor.cls.__module__}.{actor.cls.__qualname__}")
    return SerializationError(
        f"cannot pickle {culprit} to start the actor {actor.label}: {type(exc).__name__}: {exc}. "
        "An actor runs in its own process: its class and constructor arguments must be "
        "picklable (or use backend='threads')."
    )

