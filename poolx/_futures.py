"""poolx's Future and the task record behind it.

``Future`` subclasses ``concurrent.futures.Future``, so the stdlib's ``wait``,
``as_completed`` and ``asyncio.wrap_future`` accept it; it is also awaitable.
``Task`` is the driver-side work item (CPython's ``_WorkItem``): the callable,
its arguments, the future it completes, and the timestamps the telemetry reads.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_task_ids = itertools.count(1)  # next() on a count is atomic under the GIL


_LOGGER = logging.getLogger("concurrent.futures")  # where the stdlib logs a callback's error

#: Per thread: on a thread that runs tasks (a threads-backend thread, a
#: processes worker's main thread), ``lend`` is the backend's ``lend_slot``.
worker_thread = threading.local()

#: The direct read (set by ``backends/processes/driver/_direct`` when it loads):
#: ``direct_wait(future, timeout)``, called by ``result()``/``exception()`` on an
#: unfinished future outside a task, may wait for it in the calling thread by
#: reading the worker's channel itself; it returns the part of ``timeout`` left
#: for the ordinary wait (``timeout`` itself when it does not apply).
direct_wait: Callable[[Future[Any], float | None], float | None] | None = None


@contextlib.contextmanager
def lent_slot() -> Iterator[None]:
    """Around a wait inside a task: lend the task's worker slot while it waits.

    The backend runs one more worker (thread or process) meanwhile, so a task
    that waits for tasks of its own executor cannot deadlock it, even when
    every worker waits.  Nothing happens outside a task, or when this thread
    already lends its slot.
    """
    lend = getattr(worker_thread, "lend", None)
    if lend is None or getattr(worker_thread, "lending", False):
        yield
        return
    worker_thread.lending = True
    try:
        release = lend()
        try:
            yield
        finally:
            if release is not None:
                release()
    finally:
        worker_thread.lending = False


class Future(cf.Future[T]):
    """A ``concurrent.futures.Future`` that can also be awaited.

    Waiting for it inside a task lends the task's worker slot (``lent_slot``):
    a task may wait for a future of its own executor without deadlocking it.
    """

    def __init__(self) -> None:
        super().__init__()
        # threading.Condition keeps its waiters in a deque (760 bytes empty);
        # a list does the same job here (append, remove, [0], iteration: all
        # Condition uses, on 3.10 to 3.13) in 56.  A task's future is the bulk
        # of its memory in the driver, and 10,000 pending tasks are common.
        self._condition._waiters = []  # type: ignore[attr-defined]

    def result(self, timeout: float | None = None) -> T:
        if self._state == "FINISHED":
            return super().result(timeout)
        if getattr(worker_thread, "lend", None) is None:
            if direct_wait is not None:
                timeout = direct_wait(self, timeout)
            return super().result(timeout)
        with lent_slot():
            return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == "FINISHED":
            return super().exception(timeout)
        if getattr(worker_thread, "lend", None) is None:
            if direct_wait is not None:
                timeout = direct_wait(self, timeout)
            return super().exception(timeout)
        with lent_slot():
            return super().exception(timeout)

    def _invoke_callbacks(self) -> None:
        # The stdlib logs a callback's Exception and lets SystemExit or
        # KeyboardInterrupt escape into whatever completed the future: in
        # poolx, a scheduler thread that all the executor's futures depend on.
        for callback in self._done_callbacks:  # type: ignore[attr-defined]
            try:
                callback(self)
            except BaseException:
                _LOGGER.exception("exception calling callback for %r", self)

    def __repr__(self) -> str:
        # A ref of the Ray-style API (marked by it: poolx._ray_calls.mark_ref,
        # _api._attempt) prints as Ray's ObjectRef does; the hex is this
        # ref's id in this process.  Other futures keep the stdlib's repr.
        if "_poolx_task" in self.__dict__:
            return f"ObjectRef({id(self):016x})"
        return super().__repr__()

    def __await__(self) -> Generator[Any, None, T]:
        import asyncio  # lazily: asyncio costs ~20 ms to import and most users never await

        return asyncio.wrap_future(self).__await__()


class Task:
    """One unit of work on its way through a backend.

    Timestamps are ``time.perf_counter()`` seconds (system-wide monotonic on
    Linux and macOS, so a worker's clock compares with the driver's):
    ``t_submit`` when the caller submitted it, ``t_dispatch`` when it was sent to
    a worker, ``t_start``/``t_end`` around the call in the worker, ``t_done`` when
    the driver completed the future.  Of ``t_start``..``t_end``, the first
    ``s_unpickle`` seconds went to unpickling the arguments; pickling the result
    took ``s_pickle`` more after ``t_end``.  ``bytes_out``/``bytes_in`` are the pickled
    sizes each way (0 for in-process backends).
    """

    __slots__ = (
        "args",
        "bytes_in",
        "bytes_out",
        "fn",
        "future",
        "id",
        "kwargs",
        "lost",
        "max_retries",
        "origin",
        "requeues",
        "retries",
        "s_pickle",
        "s_unpickle",
        "shm",
        "skip",
        "state",
        "t_dispatch",
        "t_done",
        "t_end",
        "t_start",
        "t_submit",
        "worker",
    )

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.id = next(_task_ids)
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future: Future[Any] = Future()
        self.t_submit = time.perf_counter()
        self.t_dispatch = self.t_start = self.t_end = self.t_done = 0.0
        self.s_unpickle = self.s_pickle = 0.0
        self.worker = -1
        self.bytes_out = self.bytes_in = 0
        self.retries = 0  # times run again after it killed its worker (max_retries)
        self.requeues = 0  # times it was next in line on a worker that died between tasks
        self.lost = 0  # times it ran on a worker that died before its outcome could be read
        self.max_retries = 0  # times it may run again after dying with its worker (-1: no limit)
        self.origin: Any = None  # processes backend: where a task submitted in a child came from
        self.shm = 0  # how large arguments travel (poolx._shm mode; 0: the backend's default)
        # A map() chunk's items not to run again (poolx._chunks): index -> why.
        # None: not a chunk; {}: a chunk nothing was taken out of yet.
        self.skip: dict[int, tuple[Any, ...]] | None = None
        self.state: Any = None  # backend-private

    def run_here(self) -> None:
        """Run in the calling thread and complete the future (in-process backends)."""
        if not self.future.set_running_or_notify_cancel():
            return
        self.t_dispatch = self.t_start = time.perf_counter()
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.t_end = time.perf_counter()
            self.future.set_exception(exc)
        else:
            self.t_end = time.perf_counter()
            self.future.set_result(result)
        self.t_done = time.perf_counter()
