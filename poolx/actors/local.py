"""Actors for the in-process backends (serial and threads).

On ``serial`` an actor is a plain object: each call runs in the caller's
thread when it is made.  On ``threads`` an actor has threads of its own: one
(calls run one after another), ``max_concurrency`` of them, or an event loop
thread for a class with ``async def`` methods.  There is no process to crash:
an actor ends when it is released, killed, or at shutdown.  A kill cannot
interrupt a method that is running on a thread; its future fails at once and
what it returns later is dropped.

``LocalActorBackend`` is the base class of ``backends.serial`` and
``backends.threads``; the runner (``runner``) runs the calls, this module only
keeps the books (which calls are in flight, kills, restarts, shutdown).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from .._errors import ActorDiedError
from ..backends import Backend, BackendOptions, Telemetry
from .directory import Actor, ActorCall
from .runner import Runner, make_runner


class LocalActor:
    """One incarnation of an actor in this process."""

    def __init__(self, actor: Actor, inline: bool) -> None:
        self.actor = actor
        self.inline = inline
        self.inflight: dict[int, ActorCall] = {}
        self.closed = False
        # serial: every call in the caller's thread; threads: the actor's own thread(s)
        self.runner: Runner = make_runner(actor.cls, actor.args, actor.kwargs, actor.max_concurrency,
                                          inline, self._done, label=actor.label, serial=inline)
        self.runner.on_built = self._built
        # init_collective_group inside this actor meets the others in this process
        self.runner.collectives = actor.directory.backend.supports_collectives

    def start(self) -> None:
        self.runner.start()

    def _built(self, error: BaseException | None) -> None:
        if error is not None:
            with self.actor.lock:
                self.actor.mark_dead(self.runner.died_error())
            self.close(None)  # calls already queued fail (run_sync sees init_error); threads end

    def call(self, call: ActorCall) -> None:
        actor = self.actor
        with actor.lock:
            if self.closed or actor.impl is not self:
                error = actor.died_error()
            else:
                error = None
                self.inflight[call.id] = call
                call.t_dispatch = time.perf_counter()
                if not self.inline:  # queued under the lock: in order with stop()'s sentinel
                    self.runner.submit(call.id, call.method, call.args, call.kwargs)
        if error is not None:
            actor.fail(call, error)
        elif self.inline:
            self.runner.submit(call.id, call.method, call.args, call.kwargs)

    def _done(self, ref: int, ok: bool, value: Any, t_start: float, t_end: float) -> None:
        with self.actor.lock:
            call = self.inflight.pop(ref, None)
        if call is None:
            return  # killed meanwhile: its future has failed already
        now = time.perf_counter()
        call.t_start, call.t_end = (t_start, t_end) if t_start else (now, now)
        call.t_done = now
        call.args, call.kwargs = (), {}
        self.actor.complete(call, ok, value)
        if self.inline and isinstance(value, KeyboardInterrupt):
            raise value  # Ctrl-C during a call in this thread: stop, as serial code would

    def close(self, error: ActorDiedError | None) -> list[ActorCall]:
        """Take no more calls; with ``error`` (a kill), fail the pending ones now."""
        with self.actor.lock:
            self.closed = True
            failed = list(self.inflight.values()) if error is not None else []
            if error is not None:
                self.inflight.clear()
            self.runner.stop()
        for call in failed:
            self.actor.fail(call, error)  # type: ignore[arg-type]
        return failed


class LocalActors:
    """The actor side of the serial and threads backends."""

    def __init__(self, inline: bool) -> None:
        self.inline = inline

    def start(self, actor: Actor) -> None:
        impl = actor.impl = LocalActor(actor, self.inline)
        impl.start()

    def call(self, actor: Actor, call: ActorCall) -> None:
        impl: LocalActor = actor.impl
        impl.call(call)

    def stop(self, actor: Actor, kill: bool, restart: bool, why: str = "was released") -> None:
        impl: LocalActor = actor.impl
        if impl is None:
            return
        if kill:
            error = ActorDiedError(f"the actor {actor.label} was killed (executor.kill)", actor=actor.label)
            impl.close(error)
            with actor.lock:
                again = restart and actor.status != "dead" and actor.may_restart()
                if not again:
                    actor.mark_dead(error)
            if again:
                self.start(actor)
        else:
            with actor.lock:
                actor.mark_dead(ActorDiedError(f"the actor {actor.label} {why}", actor=actor.label))
            impl.close(None)

    def wait(self, actor: Actor, timeout: float | None) -> None:
        impl: LocalActor | None = actor.impl
        if impl is not None:
            impl.runner.join(timeout)

    def shutdown(self, actors: list[Actor], wait: bool) -> None:
        """Release every actor (calls made so far still run); with ``wait``, join them."""
        for actor in actors:
            self.stop(actor, kill=False, restart=False, why="was stopped: its executor was shut down")
        if wait:
            for actor in actors:
                self.wait(actor, None)


class LocalActorBackend(Backend):
    """A backend whose actors live in this process (the base of serial and threads)."""

    supports_actors = True
    #: calls run in the caller's thread (serial) instead of the actor's own thread(s)
    actors_inline: ClassVar[bool] = False

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        super().__init__(options, telemetry)
        self._actors = LocalActors(inline=self.actors_inline)

    def start_actor(self, actor: Actor) -> None:
        self._actors.start(actor)

    def call_actor(self, actor: Actor, call: ActorCall) -> None:
        self._actors.call(actor, call)

    def stop_actor(self, actor: Actor, kill: bool, restart: bool) -> None:
        self._actors.stop(actor, kill, restart)

    def wait_actor(self, actor: Actor, timeout: float | None) -> None:
        self._actors.wait(actor, timeout)

    def stop_actors(self, wait: bool) -> None:
        """At shutdown: release every actor (the calls made so far still run)."""
        if self.options.actors is not None:
            self._actors.shutdown(self.options.actors.live(), wait)
