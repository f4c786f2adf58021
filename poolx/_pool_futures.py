"""poolx.Pool's results read straight from its tasks' futures, with the stdlib's errors.

When nothing runs per result (no callback, no progress bar), ``apply_async``
and ``imap``/``imap_unordered`` need no result thread: their results read the
tasks' futures (``OrderedFutures``, ``UnorderedFutures``, fed by the pool's
feeder thread through ``add``, ``add_future`` and ``end``).  ``outcome`` and
``as_stdlib`` give a task's outcome as ``multiprocessing.Pool`` would.

What this module does not do: submit tasks or read the input (poolx._pool).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as _FutureTimeout
from multiprocessing import TimeoutError as MPTimeoutError
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from multiprocessing.pool import RemoteTraceback as MPRemoteTraceback  # type: ignore[attr-defined]
from typing import Any

from ._errors import PoolxError, RemoteTraceback, SerializationError, TaskTimeoutError


def terminated() -> BaseException:
    """The error of a task that ``terminate()`` stopped (the stdlib leaves it pending for ever)."""
    return PoolxError("the pool was terminated before this task finished")


def as_stdlib(exc: BaseException) -> BaseException:
    """A worker's exception as multiprocessing.Pool would give it."""
    cause = exc.__cause__
    if isinstance(exc, SerializationError):
        if "could not be pickled in the worker" in str(exc):
            return MaybeEncodingError(exc, "the result")
        if cause is not None and not isinstance(cause, RemoteTraceback):
            return cause  # a task that could not be sent: the pickling error itself, as the stdlib's
    if isinstance(cause, RemoteTraceback):
        exc.__cause__ = MPRemoteTraceback(cause.tb)
    return exc


def settle(future: Any) -> None:
    """Wait until ``future`` is done, whatever its outcome."""
    try:
        future.exception()
    except BaseException:  # cancelled
        pass


def outcome(future: Any, timeout: float | None) -> Any:
    """``future``'s result as multiprocessing.Pool gives it, or its error as the
    stdlib raises it; ``multiprocessing.TimeoutError`` if not done in time."""
    try:
        return future.result(timeout)
    except TaskTimeoutError:
        raise
    except _FutureTimeout:
        if not future.done():
            raise MPTimeoutError from None
        error = future.exception()  # the task raised a TimeoutError of its own
    except CancelledError:
        raise terminated() from None
    except BaseException as exc:
        error = exc
    raise as_stdlib(error)  # keeps __cause__: the worker's traceback


class OrderedFutures:
    """``imap``'s iterator when nothing runs per result: the tasks' futures, in order.

    ``_pending`` holds futures (or an error at that place); ``next()`` waits
    for the first, then for its outcome."""

    def __init__(self, single: bool) -> None:
        self._single = single  # chunks of one item: yield the item, not a list
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[Any] = deque()  # futures, or an error at that place
        self._ended = False

    def __iter__(self) -> OrderedFutures:
        return self

    def add(self, entry: Any) -> None:
        with self._cond:
            self._pending.append(entry)
            self._cond.notify()

    def add_future(self, future: Any) -> None:
        self.add(future)

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify()

    def _exhausted(self) -> bool:
        return self._ended

    def _wait_pending(self, deadline: float | None) -> None:
        """Hold ``_cond`` and wait until ``_pending`` has an entry; StopIteration
        when there will be none, ``multiprocessing.TimeoutError`` at ``deadline``."""
        while not self._pending:
            if self._exhausted():
                raise StopIteration
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise MPTimeoutError
            self._cond.wait(remaining)

    def next(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._wait_pending(deadline)
            head = self._pending[0]
        if isinstance(head, BaseException):
            self._pending.popleft()
            raise head
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            value = outcome(head, remaining)
        except MPTimeoutError:
            if not head.done():
                raise  # still running: the item stays next
            self._pending.popleft()
            raise
        except BaseException:
            self._pending.popleft()
            raise
        self._pending.popleft()
        return value[0] if self._single else value

    __next__ = next


class UnorderedFutures(OrderedFutures):
    """``imap_unordered``'s iterator when nothing runs per result: futures as they complete.

    A future enters ``_pending`` when it is done (its done-callback puts it
    there); ``_left`` counts those submitted and not yet done."""

    def __init__(self, single: bool) -> None:
        super().__init__(single)
        self._left = 0

    def add_future(self, future: Any) -> None:
        with self._cond:
            self._left += 1
        future.add_done_callback(self._done)

    def _done(self, future: Any) -> None:
        with self._cond:
            self._left -= 1
            self._pending.append(future)
            self._cond.notify()

    def _exhausted(self) -> bool:
        return self._ended and not self._left

    def next(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._wait_pending(deadline)
            head = self._pending.popleft()
        if isinstance(head, BaseException):
            raise head
        value = outcome(head, 0)
        return value[0] if self._single else value

    __next__ = next


class ChunkItems:
    """``imap``'s iterator with ``chunksize > 1``: the items of its chunks, one at a time.

    The stdlib returns a generator here, without ``next(timeout)``; this
    iterator has it too (raising ``multiprocessing.TimeoutError``), as Ray's
    Pool has for any chunksize.  Like the generator, it ends after the first
    error it raises (a failed chunk); a timeout does not end it.
    """

    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks  # an iterator of lists, with next(timeout)
        self._items: deque[Any] = deque()
        self._ended = False

    def __iter__(self) -> ChunkItems:
        return self

    def next(self, timeout: float | None = None) -> Any:
        while not self._items:
            if self._ended:
                raise StopIteration
            try:
                self._items.extend(self._chunks.next(timeout))
            except MPTimeoutError:
                raise
            except BaseException:
                self._ended = True
                raise
        return self._items.popleft()

    __next__ = next
