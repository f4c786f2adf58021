"""The serial backend: every task (and actor call) runs in the calling thread, at submit.

For debugging (a breakpoint in a task just works) and as the baseline every
benchmark compares with.  Nothing is pickled.
"""

from __future__ import annotations

from .._futures import Task
from ..actors.local import LocalActorBackend


class SerialBackend(LocalActorBackend):
    name = "serial"
    runs_in_caller = True
    actors_inline = True
    _initialized = False

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
        self.stop_actors(wait)

    def worker_counts(self) -> dict[str, int]:
        return {"workers_alive": 1, "workers_started": 1, "workers_restarted": 0, "workers_died": 0}
