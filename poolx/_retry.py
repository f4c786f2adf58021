"""Running a task again when it raises one of chosen exceptions (``retry_exceptions``).

Two places rerun on an exception: the driver, for a task of its own
(``retrying``: ``Executor.submit`` and the Ray-style API's ``f.remote()``), and
the worker, for one ``map()`` item (``poolx._chunks``, which calls ``is_one_of``).
Reruns after a worker's death are the engine's, not this module's: a task's
``max_retries`` budget is passed down with each attempt.  What this module
does not do is parse the option: ``poolx._arguments.retry_exceptions`` does.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

from ._errors import TaskCancelledError
from ._futures import Future, Task

Retry = tuple[int, tuple[type[BaseException], ...]]  # (max_retries, exception classes)


def is_one_of(exc: BaseException, classes: tuple[type[BaseException], ...]) -> bool:
    """``isinstance(exc, classes)``, also when a class reached this process twice.

    A class defined in the main script exists in a spawn or forkserver worker
    as the script's own (module ``__mp_main__``, what the task's function
    sees) and as the copy cloudpickle sent by value (``__main__``, what
    ``retry_exceptions`` holds).  They are the same class to the user.
    """
    if isinstance(exc, classes):
        return True
    wanted = {(_module(c), c.__qualname__) for c in classes}
    return any((_module(k), k.__qualname__) in wanted for k in type(exc).__mro__)


def _module(cls: type) -> str:
    module = cls.__module__
    return "__main__" if module == "__mp_main__" else module


def retrying(submit: Callable[[int], tuple[cf.Future[Any], Task | None]], max_retries: int,
             retry_on: tuple[type[BaseException], ...], closed: Callable[[], bool]) -> Future[Any]:
    """A future for a task's outcome that submits it again when it raises one of ``retry_on``.

    ``submit(budget)`` sends one attempt (a task of its own, sent with the
    arguments kept by the caller, so a rerun sees them as the first run did)
    that may itself be run again ``budget`` times if its worker dies; it
    returns the attempt's future and, where known, its Task.  The returned
    future takes the outcome of the last attempt.  ``max_retries`` (-1: no
    limit) bounds the reruns of both kinds together, as Ray's does; none
    starts once ``closed()``.
    """
    outer = _RetryingFuture()
    attempts = 0  # reruns so far: for exceptions, and for deaths of finished attempts' workers
    current: list[Task | None] = [None]

    def launch() -> None:
        budget = -1 if max_retries == -1 else max_retries - attempts
        attempt, current[0] = submit(budget)
        outer._attempt = attempt
        attempt.add_done_callback(on_done)

    def on_done(inner: cf.Future[Any]) -> None:
        nonlocal attempts
        if outer.done() or outer._cancelling:
            return
        if inner.cancelled():
            outer._finish(None, TaskCancelledError("the task was cancelled"))
            return
        error = inner.exception()
        task = current[0]
        if task is not None:
            attempts += task.retries  # its worker died under it and it ran again
        if (error is not None and is_one_of(error, retry_on)
                and (max_retries == -1 or attempts < max_retries) and not closed()):
            attempts += 1
            try:
                launch()
                return
            except BaseException:
                pass  # shut down meanwhile: the last attempt's error stands
        outer._finish(None if error is not None else inner.result(), error)

    launch()
    return outer


class _RetryingFuture(Future[Any]):
    """The future of a task run again on chosen exceptions: it follows the current attempt."""

    def __init__(self) -> None:
        super().__init__()
        self._attempt: cf.Future[Any] | None = None
        self._cancelling = False

    def cancel(self) -> bool:
        attempt = self._attempt
        self._cancelling = True  # the attempt's callback must not finish this future meanwhile
        try:
            if attempt is not None and not attempt.done() and not attempt.cancel():
                return False
            return super().cancel()
        finally:
            self._cancelling = False

    def running(self) -> bool:
        attempt = self._attempt
        return attempt is not None and attempt.running() and not self.done()

    def _finish(self, result: Any, error: BaseException | None) -> None:
        if not self.set_running_or_notify_cancel():
            return
        if error is not None:
            self.set_exception(error)
        else:
            self.set_result(result)
