"""``map()``: items in chunks, one task each; Executor.map and Pool's maps share it.

The worker side (the task function of every chunk, with its per-item
quarantine, timeouts and retries) is ``_chunks``.

Driver side: the chunk runners kept per function (``Runners``), chunk sizing
(``ChunkSizer``), and for ``Executor.map`` the feeding of chunks (``Feeder``,
or ``results_buffered`` with ``buffersize``) and the iteration of results.
``Pool`` keeps the stdlib's chunking, ordering and errors, and uses the
runners and ``chunks`` only.  Chunks reach the engine through
``Executor.submit_task``; this module never sees a backend.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from ._chunks import ChunkError, chunk_runner
from ._errors import RemoteTraceback, SerializationError
from ._futures import Task
from ._retry import Retry

if TYPE_CHECKING:
    from ._executor import Executor

# Seconds of work a map() chunk should hold once the per-item cost is known: long
# enough that per-message costs vanish, short enough to balance the workers.
TARGET_CHUNK_SECONDS = 0.02
# Largest automatic chunk, in items.
MAX_AUTO_CHUNK = 65536
# Executor.map() runners kept per executor (each holds its function alive).
RUNNER_CACHE = 256
# Chunks of one map() kept in flight per worker when no buffersize is given.
MAP_INFLIGHT_PER_WORKER = 4


# -- driver side ---------------------------------------------------------------------


class Runners:
    """The chunk runner of each function, kept (at most ``capacity``, the oldest dropped first).

    The same runner object for the same function across maps: the engine
    then pickles it (with the function in its closure) once per worker and
    refers to it by key afterwards, as it does for ``submit(fn)``.  Each
    runner holds its function alive.
    """

    def __init__(self, capacity: int, retry: Retry | None, partial: bool) -> None:
        self.capacity = capacity
        self.retry = retry
        self.partial = partial
        self.cache: OrderedDict[tuple[Any, bool], Callable[..., Any]] = OrderedDict()

    def get(self, fn: Callable[..., Any], star: bool) -> Callable[..., Any]:
        try:
            runner = self.cache.get((fn, star))
        except TypeError:  # fn is not hashable
            return chunk_runner(fn, star, self.retry, self.partial)
        if runner is None:
            runner = self.cache[(fn, star)] = chunk_runner(fn, star, self.retry, self.partial)
            if len(self.cache) > self.capacity:
                self.cache.popitem(last=False)
        return runner


def length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """The length of the shortest input, or None when one has no ``len()``."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class ChunkSizer:
    """Chooses map() chunk sizes: fixed, or measured from completed chunks."""

    def __init__(self, chunksize: int | None, length: int | None, workers: int) -> None:
        self.fixed = chunksize
        self.cap = MAX_AUTO_CHUNK
        if length is not None:
            # The multiprocessing.Pool rule: at most 4 chunks per worker's share.
            self.cap = max(1, min(self.cap, math.ceil(length / (4 * workers))))
        self.per_item: float | None = None

    def next_size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            return 1
        return max(1, min(self.cap, int(TARGET_CHUNK_SECONDS / max(self.per_item, 1e-9))))

    def observe(self, task: Task, n: int) -> None:
        if task.t_end > task.t_start > 0:
            per_item = (task.t_end - task.t_start) / n
            prev = self.per_item
            self.per_item = per_item if prev is None else 0.5 * (prev + per_item)


def in_chunks(items: Iterator[Any], sizer: ChunkSizer) -> Iterator[tuple[int, list[Any]]]:
    """The input in chunks, each with the index of its first item."""
    start = 0
    while True:
        chunk = list(itertools.islice(items, sizer.next_size()))
        if not chunk:
            return
        yield start, chunk
        start += len(chunk)


def unsendable(fn: Callable[..., Any], error: SerializationError) -> Task:
    """A task that could not be pickled, never sent: its future failed with ``error``.

    ProcessPoolExecutor reports a call it cannot pickle through the call's
    future, not from submit() or map() (CPython's test_error_at_task_pickle):
    a loop that submits many items keeps the futures of the others.
    """
    task = Task(fn, (), {})
    task.future.set_running_or_notify_cancel()
    task.future.set_exception(error)
    return task


def submit_chunk(ex: Executor, runner: Callable[..., Any], chunk: tuple[int, list[Any]],
                 sizer: ChunkSizer, max_retries: int) -> Task:
    start, items = chunk
    try:
        task = ex.submit_task(runner, (items, start), {}, max_retries, chunk=True)
    except SerializationError as exc:  # an item cannot be pickled: map() raises it at its chunk
        return unsendable(runner, exc)
    # Measured when the chunk finishes, whether or not anyone consumes results yet.
    task.future.add_done_callback(lambda _f: sizer.observe(task, len(items)))
    return task


def _chunk_outcome(task: Task, timeout: float | None) -> tuple[list[Any], BaseException | None]:
    """The results of a finished chunk, and the item error that ended it, if any."""
    try:
        return task.future.result(timeout), None
    except ChunkError as exc:
        error = exc.error
        if isinstance(exc.__cause__, RemoteTraceback) and error.__cause__ is None:
            error.__cause__ = exc.__cause__
        return exc.results, error


def _drain(values: list[Any]) -> Iterator[Any]:
    """Yield a chunk's results, letting go of each as it is yielded.

    The map() iterator must not keep a result the caller has dropped (the
    stdlib's test_free_reference, cpython#14406); the list is the chunk
    future's own result, so popping from it frees the reference there too.
    """
    values.reverse()
    while values:
        yield values.pop()


def _remaining(end_time: float | None) -> float | None:
    return None if end_time is None else end_time - time.monotonic()


def _cancel_all(tasks: Iterable[Task]) -> None:
    for task in tasks:
        task.future.cancel()


def results_buffered(ex: Executor, fn: Callable[..., Any], chunks: Iterator[tuple[int, list[Any]]],
                     sizer: ChunkSizer, max_retries: int, buffersize: int,
                     end_time: float | None) -> Iterator[Any]:
    """map() with ``buffersize``: the next chunk is submitted as one is consumed."""
    inflight: deque[Task] = deque()
    for chunk in itertools.islice(chunks, buffersize):
        inflight.append(submit_chunk(ex, fn, chunk, sizer, max_retries))

    def results() -> Iterator[Any]:
        try:
            while inflight:
                task = inflight.popleft()
                values, error = _chunk_outcome(task, _remaining(end_time))
                if error is not None:
                    yield from _drain(values)
                    raise error
                if not ex.closed:
                    for chunk in itertools.islice(chunks, 1):
                        inflight.append(submit_chunk(ex, fn, chunk, sizer, max_retries))
                yield from _drain(values)
        finally:
            _cancel_all(inflight)

    return results()


class Feeder:
    """Submits map() chunks from a background thread, a bounded number in flight.

    It is in ``feeders`` (the executor's list, which ``shutdown`` stops or
    joins) while it runs.
    """

    def __init__(self, ex: Executor, fn: Callable[..., Any], chunks: Iterator[tuple[int, list[Any]]],
                 sizer: ChunkSizer, max_retries: int, inflight: int, feeders: list[Feeder]) -> None:
        self.ex = ex
        self.fn = fn
        self.chunks = chunks
        self.sizer = sizer
        self.max_retries = max_retries
        self.feeders = feeders
        self.slots = threading.Semaphore(inflight)
        self.cond = threading.Condition()
        self.tasks: deque[Task] = deque()
        self.finished = False
        self.error: BaseException | None = None
        self.stopped = False
        feeders.append(self)
        # Fill the first window here, so that errors in the input or at submit
        # surface from map() itself, as with the stdlib.
        self.feed(first=True)
        if not self.finished:
            self.thread: threading.Thread | None = threading.Thread(
                target=self.feed, name="poolx-map-feeder", daemon=True)
            try:
                self.thread.start()
            except BaseException as exc:  # e.g. "can't start new thread": undo, then say so
                self.thread = None
                self.stop()
                _cancel_all(self.tasks)
                if isinstance(exc, RuntimeError):  # (the stdlib raises it then too: gh-109047)
                    raise BrokenProcessPool(
                        f"map() could not start its feeder thread ({exc}): the interpreter is exiting, "
                        "or this process has run out of threads. The executor's other work is "
                        "unaffected; call map() again once threads can start.") from exc
                raise
        else:
            self.thread = None
            self.retire()

    def feed(self, first: bool = False) -> None:
        try:
            while not self.stopped:
                if not self.slots.acquire(blocking=not first):
                    return  # the first window is full: the thread takes over
                if self.stopped:
                    return
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                task = submit_chunk(self.ex, self.fn, chunk, self.sizer, self.max_retries)
                task.future.add_done_callback(lambda _f: self.slots.release())
                with self.cond:
                    self.tasks.append(task)
                    self.cond.notify_all()
        except BaseException as exc:
            if first:
                self.retire()
                raise
            self.error = exc
        with self.cond:
            self.finished = True
            self.cond.notify_all()
        if not first:
            self.retire()

    def retire(self) -> None:
        try:
            self.feeders.remove(self)
        except ValueError:
            pass

    def stop(self) -> None:
        self.stopped = True
        self.slots.release()
        with self.cond:
            self.finished = True
            self.cond.notify_all()
        self.retire()

    def join(self) -> None:
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()

    def next_task(self, end_time: float | None) -> Task | None:
        with self.cond:
            while not self.tasks:
                if self.finished:
                    if self.error is not None:
                        raise self.error
                    return None
                remaining = _remaining(end_time)
                if remaining is not None and remaining <= 0:
                    raise TimeoutError()
                self.cond.wait(remaining)
            return self.tasks.popleft()


def results_fed(feeder: Feeder, end_time: float | None) -> Iterator[Any]:
    """map()'s results from the chunks ``feeder`` submits, in order."""
    def results() -> Iterator[Any]:
        try:
            while (task := feeder.next_task(end_time)) is not None:
                values, error = _chunk_outcome(task, _remaining(end_time))
                if error is not None:
                    yield from _drain(values)
                    raise error
                yield from _drain(values)
        finally:
            if not feeder.finished or feeder.tasks:
                feeder.stop()
                _cancel_all(feeder.tasks)

    return results()
