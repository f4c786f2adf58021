"""Tasks held back until the futures among their arguments are done.

``Executor.submit(g, fut)`` with a future (or a ref) among the arguments does
not wait: the task is held here, off the engine, and sent to the backend
when every such future is done, with their results in place of the futures
(``poolx._objects.send_resolved``).  A failed or cancelled input fails the
task with that error.  The executor's shutdown waits for the held tasks, or,
without ``wait``, leaves the backend's shutdown to the last of them.

What this module does not do: find the futures among arguments, or resolve
them (``poolx._objects``); run tasks (the backend).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any

from ._futures import Task
from ._objects import send_resolved
from ._serialization import describe
from ._telemetry import Telemetry
from .backends import Backend


class HeldTasks:
    """The tasks of one executor that wait for their inputs, and its backend's deferred shutdown."""

    def __init__(self, backend: Backend, telemetry: Telemetry) -> None:
        self.backend = backend
        self.telemetry = telemetry
        self.tasks: set[Task] = set()
        self.cond = threading.Condition()
        self.deferred_shutdown: tuple[bool, bool] | None = None  # until no task is held

    def add(self, task: Task) -> None:
        with self.cond:
            self.tasks.add(task)

    def release(self, task: Task, deps: list[cf.Future[Any]]) -> None:
        """``deps`` are done: send ``task`` with their results, or fail it with their error."""
        try:
            future = task.future
            if future.cancelled():
                # (the stdlib's state name: cancelled by its caller while held, not yet notified)
                if future._state == "CANCELLED":
                    future.set_running_or_notify_cancel()
                self.telemetry.task_cancelled()
                return
            def submit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                task.args, task.kwargs = args, kwargs
                self.backend.submit(task)

            error = send_resolved(deps, task.args, task.kwargs, self.backend.uses_processes,
                                  describe(task.fn), submit)
            if error is None:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
                self.telemetry.task_done(task, False)
            else:
                self.telemetry.task_cancelled()
        finally:
            with self.cond:
                self.tasks.discard(task)
                deferred = self.deferred_shutdown if not self.tasks else None
                if deferred is not None:
                    self.deferred_shutdown = None
                self.cond.notify_all()
            if deferred is not None:
                self.backend.shutdown(*deferred)

    def cancel(self) -> None:
        """Cancel every held task (``shutdown(cancel_futures=True)``, ``terminate_workers``)."""
        with self.cond:
            held = list(self.tasks)
        for task in held:
            if task.future.cancel():
                task.future.set_running_or_notify_cancel()  # wait() and as_completed() see it done

    def shutdown_backend(self, wait: bool, cancel_futures: bool) -> bool:
        """Shut the backend down once no task is held; False if that is left to the last one.

        With ``wait``, wait for the held tasks to be sent first; without,
        tasks still waiting for their inputs are submitted when those are
        done, and the backend shuts down after the last of them.
        """
        with self.cond:
            if self.tasks and not wait:
                self.deferred_shutdown = (False, cancel_futures)
                return False
            while self.tasks:
                self.cond.wait()
        self.backend.shutdown(wait=wait, cancel_futures=cancel_futures)
        return True
