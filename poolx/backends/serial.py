"""The serial backend: every task (and actor call) runs in the calling thread, at submit.

For debugging (a breakpoint in a task just works) and as the baseline every
benchmark compares with.  Nothing is pickled.
"""

from __future__ import annotations

from .._actors import Actor, ActorCall
from .._futures import Task
from . import Backend, BackendOptions, Telemetry
from ._local_actors import LocalActors


class SerialBackend(Backend):
    name = "serial"
    runs_in_caller = True
    supports_actors = True
    _initialized = False

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        super().__init__(options, telemetry)
        self._actors = LocalActors(inline=True)

    def submit(self, task: Task) -> None:
        if not self._initialized:
            # The caller's thread is the one worker: initialize it at its first task.
            self._initialized = True
            if self.options.initializer is not None:
                self.options.initializer(*self.options.initargs)
        task.worker = 0
        task.run_here()
        if task.future.cancelled():
            self.telemetry.task_cancelled()
            return
        error = task.future.exception()
        self.telemetry.task_done(task, error is None)
        if isinstance(error, KeyboardInterrupt):
            raise error  # Ctrl-C while a task ran in this thread: stop, as serial code would

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        if self.options.actors is not None:
            self._actors.shutdown(self.options.actors.live(), wait)

    # -- actors -------------------------------------------------------------

    def start_actor(self, actor: Actor) -> None:
        self._actors.start(actor)

    def call_actor(self, actor: Actor, call: ActorCall) -> None:
        self._actors.call(actor, call)

    def stop_actor(self, actor: Actor, kill: bool, restart: bool) -> None:
        self._actors.stop(actor, kill, restart)

    def wait_actor(self, actor: Actor, timeout: float | None) -> None:
        self._actors.wait(actor, timeout)

    def worker_counts(self) -> dict[str, int]:
        return {"workers_alive": 1, "workers_started": 1, "workers_restarted": 0, "workers_died": 0}
