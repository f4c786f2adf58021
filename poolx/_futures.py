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


# The states of concurrent.futures (its private names, the strings its code compares).
_PENDING, _RUNNING, _FINISHED = "PENDING", "RUNNING", "FINISHED"
_CANCELLED, _CANCELLED_AND_NOTIFIED = "CANCELLED", "CANCELLED_AND_NOTIFIED"
_DONE = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED))
_CANCELLED_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED))

# Guards every future that has no Condition yet: its state changes under this
# lock, and its Condition is made under it, so a change of state and a waiter's
# arrival are ordered (see _LeanFuture).  Held for a few bytecodes, never while
# anything is called out.
_NO_CONDITION_LOCK = threading.Lock()


class _LeanFuture(cf.Future[T]):
    """``concurrent.futures.Future`` whose Condition is made only when someone waits.

    The stdlib's Future makes a ``threading.Condition`` at once: with its
    RLock, its deque and the five bound methods it copies from the lock, eight
    objects the cyclic GC tracks, for every task, though most futures are never
    waited on before they are done (10,000 tasks submitted, then gathered: the
    GC took a third of the run, benchmarks/ANALYSIS.md).  Here a future starts
    with no Condition, no waiter list and no callback list:

    - reading the state (``done``, ``running``, ``cancelled``, ``result`` and
      ``exception`` of a finished future) takes no lock: one attribute read
      is atomic, and ``FINISHED`` is set after the outcome;
    - changing it (``set_result``, ``cancel``...) takes one process-wide lock
      while the future has no Condition, its own Condition once it has one;
    - ``_condition`` (what the stdlib's ``wait``/``as_completed`` and its own
      ``result(timeout)`` acquire, and what they put waiters under) makes the
      Condition under that same lock.  So a waiter either arrives before the
      change of state (which then sees the Condition and notifies it) or after
      it (and sees the new state): no wake-up is lost.

    The stdlib's own methods keep working unchanged on top (``_waiters`` and
    ``_done_callbacks`` are there when they look), so the semantics are the
    stdlib's, which CPython's test_future checks (tests/engine/test_tiny_tasks.py).
    """

    __slots__ = ("_callbacks", "_cond", "_exception", "_result", "_state", "_wait_list")

    def __init__(self) -> None:  # (not the stdlib's: no Condition, no lists)
        self._cond: threading.Condition | None = None
        self._wait_list: list[Any] | None = None
        self._callbacks: list[Callable[[Any], object]] | None = None
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None

    @property  # (read only: made here, never assigned)
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _NO_CONDITION_LOCK:
                cond = self._cond
                if cond is None:
                    cond = threading.Condition()
                    # threading.Condition keeps its waiters in a deque (760 bytes
                    # empty); a list does the same job here (append, remove, [0],
                    # iteration: all Condition uses, on 3.10 to 3.13) in 56.
                    cond._waiters = []  # type: ignore[attr-defined]
                    self._wait_list = []
                    self._cond = cond
        return cond

    @property  # (read only: made with the Condition)
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        """The stdlib's waiters (``wait``, ``as_completed``): made with the Condition."""
        self._condition  # noqa: B018
        return self._wait_list  # type: ignore[return-value]  # (set with the Condition)

    @property
    def _done_callbacks(self) -> list[Callable[[Any], object]]:
        callbacks = self._callbacks
        if callbacks is None:
            with _NO_CONDITION_LOCK:
                if self._callbacks is None:
                    self._callbacks = []
                callbacks = self._callbacks
        return callbacks

    def cancelled(self) -> bool:
        return self._state in _CANCELLED_STATES

    def running(self) -> bool:
        return self._state == _RUNNING

    def done(self) -> bool:
        return self._state in _DONE

    def result(self, timeout: float | None = None) -> T:
        state = self._state
        if state == _FINISHED:
            if self._exception:
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # (the stdlib's: no cycle through the traceback)
            return self._result
        if state in _CANCELLED_STATES:
            raise cf.CancelledError()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        state = self._state
        if state == _FINISHED:
            return self._exception
        if state in _CANCELLED_STATES:
            raise cf.CancelledError()
        return super().exception(timeout)

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        if self._cond is None:
            with _NO_CONDITION_LOCK:
                if self._cond is None:
                    if self._state not in _DONE:
                        if self._callbacks is None:
                            self._callbacks = [fn]
                        else:
                            self._callbacks.append(fn)
                        return
                    fn_now = True
                else:
                    fn_now = False
            if fn_now:
                try:
                    fn(self)
                except Exception:
                    _LOGGER.exception("exception calling callback for %r", self)
                return
        super().add_done_callback(fn)

    def set_running_or_notify_cancel(self) -> bool:
        if self._cond is None:
            with _NO_CONDITION_LOCK:
                if self._cond is None:
                    state = self._state
                    if state == _PENDING:
                        self._state = _RUNNING
                        return True
                    if state == _CANCELLED:  # (no waiters: they come with the Condition)
                        self._state = _CANCELLED_AND_NOTIFIED
                        return False
        return super().set_running_or_notify_cancel()  # (logs and raises for any other state)

    def set_result(self, result: T) -> None:
        if self._cond is None and self._finish_lean("_result", result):
            return
        super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if self._cond is None and self._finish_lean("_exception", exception):
            return
        super().set_exception(exception)

    def _finish_lean(self, field: str, value: Any) -> bool:
        """Finish a future that has no Condition; False if it has one, or is done (the stdlib's way then)."""
        with _NO_CONDITION_LOCK:
            if self._cond is not None or self._state in _DONE:
                return False
            setattr(self, field, value)
            self._state = _FINISHED
        if self._callbacks:
            self._invoke_callbacks()
        return True

    def cancel(self) -> bool:
        if self._cond is None:
            with _NO_CONDITION_LOCK:
                if self._cond is None:
                    state = self._state
                    if state in (_RUNNING, _FINISHED):
                        return False
                    if state in _CANCELLED_STATES:
                        return True
                    self._state = _CANCELLED
                    lean = True
                else:
                    lean = False
            if lean:
                if self._callbacks:
                    self._invoke_callbacks()
                return True
        return super().cancel()

    def _invoke_callbacks(self) -> None:
        # The stdlib logs a callback's Exception and lets SystemExit or
        # KeyboardInterrupt escape into whatever completed the future: in
        # poolx, a scheduler thread that all the executor's futures depend on.
        # The callbacks are let go once called (they never run twice; a callback
        # added now runs at once): one that refers to the future's task (map's
        # chunks do) would otherwise keep task and future in a cycle that only
        # the cyclic GC frees, with the task's arguments (a 2M-item map: 50
        # chunks' tasks, futures and closures, found by gc.get_objects()).
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback(self)
            except BaseException:
                _LOGGER.exception("exception calling callback for %r", self)

    def __repr__(self) -> str:
        # The stdlib's text, without taking the Condition (a repr need not make one).
        name, state = self.__class__.__name__, self._state
        if state == _FINISHED:
            if self._exception:
                return f"<{name} at {id(self):#x} state=finished raised {self._exception.__class__.__name__}>"
            return f"<{name} at {id(self):#x} state=finished returned {self._result.__class__.__name__}>"
        return f"<{name} at {id(self):#x} state={_DESCRIPTIONS[state]}>"


_DESCRIPTIONS = {_PENDING: "pending", _RUNNING: "running", _CANCELLED: "cancelled",
                 _CANCELLED_AND_NOTIFIED: "cancelled", _FINISHED: "finished"}


class Future(_LeanFuture[T]):
    """A ``concurrent.futures.Future`` that can also be awaited.

    Waiting for it inside a task lends the task's worker slot (``lent_slot``):
    a task may wait for a future of its own executor without deadlocking it.
    It makes its Condition only when someone waits (``_LeanFuture``).
    """

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
