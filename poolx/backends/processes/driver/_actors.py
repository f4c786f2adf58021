"""The driver side of actors on the processes backend.

Each actor is a process of its own (``child/_actor``), outside the task
workers, with one channel to the driver.  Calls made in the driver are sent
by the calling thread itself, and their results read by the scheduler thread,
or by the caller that waits for one (``_actor_calls``, the base of the
``ActorSupervisor``: sending, reading, the direct wait).  This module starts,
stops and restarts the processes, and decides what becomes of their calls.

Calls made inside a task or another actor arrive on that child's *client
channel* (``child/_client``); the scheduler forwards them to the actor and the
result bytes back, without unpickling them.

One actor across restarts is an ``ActorSlot`` (``actor.impl``); each process
it runs in is an ``ActorProcess``.  While there is no process (being
restarted after a kill), calls wait in the slot's backlog.

Which calls fail when an actor process dies: every call sent to it that had
not returned (running, queued in the process, or held back in the driver)
fails with ``ActorDiedError``, unless ``max_task_retries`` allows sending it
again to the restarted process.  Calls made after the death was noticed go to
the restarted process (or fail at once when there is no restart left).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import time
from typing import TYPE_CHECKING, Any

from ...._errors import ActorDiedError, RemoteTraceback, SerializationError, TaskTimeoutError, describe_exit
from ...._serialization import dumps, loads, unpicklable_argument
from ....actors.directory import DEAD, Actor, ActorCall
from .. import _channel, _lifetime
from .. import protocol as P
from .._cell import read_cell
from ._actor_calls import ActorChannels, ActorProcess, ActorSlot
from ._endpoint import Conn
from ._spawn import STOPPING, close_process, crash_dump_fd, signal_process

if TYPE_CHECKING:
    from ._state import SchedulerState

logger = logging.getLogger("poolx")


class ActorSupervisor(ActorChannels):
    """Actors of one processes backend: started, called, restarted; driven by its scheduler.

    ``s`` is the scheduler whose thread reads the actors' channels and
    watches their exits, seen through what ``SchedulerState`` declares: this
    object uses its selector, its telemetry, its results (completed in its
    pass), its answers to children (``_children``) and its spawner.
    """

    def __init__(self, scheduler: SchedulerState, actor_main: Any) -> None:
        super().__init__(scheduler)
        self.actor_main = actor_main  # the actor process's entry point (child/_actor.main)

    # -- starting ---------------------------------------------------------------

    def spawn(self, actor: Actor) -> ActorProcess:
        """Start a process for ``actor`` (any thread); it is registered by the scheduler."""
        slot: ActorSlot = actor.impl
        process, sock, client, cell, fd = self.s.spawner.spawn(
            self.actor_main, (slot.setup,), f"poolx-actor-{actor.id}")
        return ActorProcess(actor, process, sock, Conn(client, actor.label), cell, fd)

    def start(self, actor: Actor) -> None:
        """Caller's thread: start the actor's first process; calls may be sent to it at once."""
        slot = ActorSlot(actor_setup(actor, self.s.backend.hook_bytes), self)
        actor.impl = slot
        proc = self.spawn(actor)
        with actor.lock:
            slot.proc = proc
        self.s.request(self.register, proc)

    def register(self, proc: ActorProcess) -> None:
        """Scheduler thread: watch a new actor process (its socket, exit, client channel)."""
        self.procs[id(proc)] = proc
        self.watch(proc)  # (for room too if callers filled its socket before it was watched)
        self.s.sel.register(proc.process.sentinel, selectors.EVENT_READ, lambda k, m, p=proc: self.on_exit(p))
        self.s.register_client(proc.client)
        self.s.telemetry.actor_pids[proc.actor.id] = proc.pid

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
                if not proc.direct:  # (its reader waits in poll: never complete its call under it)
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
                    self.send_pending(proc)  # the calls held back run first
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
        if proc.direct:
            # Wake the caller reading its channel: the end of the process may be known only
            # from check_liveness (a grandchild it forked keeps its socket and sentinel open).
            try:
                proc.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
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
            if proc.waiter is not None and not proc.direct:  # (else its reader closes it)
                proc.waiter.close()
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

