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
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, cast

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
# Largest chunk of an input without a length sized from an earlier map's cost
# of an item (``Runners.cost``), until this map's first chunk is measured: the
# earlier items may have been far cheaper than these.  With a length the
# multiprocessing.Pool cap (a quarter of a worker's share) bounds it instead.
# 256 items: 8 chunks in flight move 2,048 items in the first round trip,
# and a wrong guess costs at most 256 items on one worker.
UNMEASURED_MAX_CHUNK = 256
# Seconds of work (estimated) under which a map with a length goes in one chunk
# per worker instead of four: balance matters little when all the work is
# this short (at worst it all lands on one worker: 2 ms), and each chunk
# costs the driver and a worker tens of us.  A 2,000-item map of ``x + 1``
# (~0.7 ms of work) took 8 chunks and about 3x multiprocessing.Pool's time.
SMALL_MAP_SECONDS = 0.002


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
        self.costs: dict[Callable[..., Any], ItemCost] = {}  # per runner in the cache

    def get(self, fn: Callable[..., Any], star: bool) -> Callable[..., Any]:
        try:
            runner = self.cache.get((fn, star))
        except TypeError:  # fn is not hashable
            return chunk_runner(fn, star, self.retry, self.partial)
        if runner is None:
            runner = self.cache[(fn, star)] = chunk_runner(fn, star, self.retry, self.partial)
            self.costs[runner] = ItemCost()
            if len(self.cache) > self.capacity:
                self.costs.pop(self.cache.popitem(last=False)[1], None)
        return runner

    def cost(self, runner: Callable[..., Any]) -> ItemCost | None:
        """What the maps over ``runner``'s function measured an item to cost (None: not kept,
        as for an unhashable function, whose runner is not kept either)."""
        return self.costs.get(runner)


class ItemCost:
    """The cost of one item of a function's maps, as the last one measured it, shared by its maps:
    the next map of the same function starts with chunks of its size instead of single items."""

    __slots__ = ("per_item",)

    def __init__(self) -> None:
        self.per_item: float | None = None


def length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """The length of the shortest input, or None when one has no ``len()``."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class ChunkSizer:
    """Chooses map() chunk sizes: fixed, or measured from completed chunks.

    Before anything is measured a chunk is one item, so that slow items are
    spread over the workers; with ``known`` (the cost an earlier map of the same
    function measured, ``Runners.cost``) the first chunks are sized from it at
    once, bounded by the cap (the input's length known) or UNMEASURED_MAX_CHUNK
    (not) until this map measures its own.  Every measurement is written back
    to ``known`` for the next map.  A map with a length whose whole work is
    estimated under SMALL_MAP_SECONDS goes in one chunk per worker.
    """

    def __init__(self, chunksize: int | None, length: int | None, workers: int,
                 known: ItemCost | None = None) -> None:
        self.fixed = chunksize
        self.cap = MAX_AUTO_CHUNK
        self.length = length
        self.share = MAX_AUTO_CHUNK  # a worker's share of a small map (SMALL_MAP_SECONDS)
        if length is not None:
            # The multiprocessing.Pool rule: at most 4 chunks per worker's share.
            self.cap = max(1, min(self.cap, math.ceil(length / (4 * workers))))
            self.share = max(1, min(self.share, math.ceil(length / workers)))
        self.known = known
        self.per_item: float | None = known.per_item if known is not None else None
        self.unmeasured_cap = self.cap if length is not None else min(self.cap, UNMEASURED_MAX_CHUNK)
        self.measured = False

    def next_size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        per_item = self.per_item
        if per_item is None:
            return 1
        if self.length is not None and self.length * per_item <= SMALL_MAP_SECONDS:
            return self.share
        cap = self.cap if self.measured else self.unmeasured_cap
        return max(1, min(cap, int(TARGET_CHUNK_SECONDS / max(per_item, 1e-9))))

    def observe(self, task: Task, n: int) -> None:
        if task.t_end > task.t_start > 0:
            per_item = (task.t_end - task.t_start) / n
            prev = self.per_item
            self.per_item = per_item if prev is None else 0.5 * (prev + per_item)
            self.measured = True
            if self.known is not None:
                self.known.per_item = self.per_item


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
    # (Not a closure over ``items``: that would keep them alive after they are pickled.)
    n = len(items)
    task.future.add_done_callback(lambda _f: sizer.observe(task, n))
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
    """A chunk's results, each let go of as it is taken.

    The map() iterator must not keep a result the caller has dropped (the
    stdlib's test_free_reference, cpython#14406); the list is the chunk
    future's own result, so popping from it frees the reference there too.
    ``map`` over ``list.pop`` runs in C: a Python generator per item cost
    about 60 ns twice over (itself and the one of the chunks), a quarter of a
    map of tiny items' time in the caller (200,000 items: 13 ms of ~70).
    """
    values.reverse()
    return map(values.pop, itertools.repeat(-1, len(values)))


class MapResults(itertools.chain[Any]):
    """map()'s results: the chunks' results one after the other, taken in C
    (``itertools.chain`` over ``_drain``'s), and ``close()`` as a generator's.

    ``chunks`` is the generator of the chunks' iterators; it raises the error
    that ends the map after the results before it, and its ``finally`` cancels
    what is left when the map is closed or dropped.
    """

    __slots__ = ("_chunks",)
    _chunks: Generator[Iterator[Any], None, None]

    @classmethod
    def of(cls, chunks: Generator[Iterator[Any], None, None]) -> MapResults:
        results = cast(MapResults, cls.from_iterable(chunks))
        results._chunks = chunks
        return results

    def close(self) -> None:
        """Stop the map now (pending chunks are cancelled); the iterator ends."""
        self._chunks.close()
        for _ in self:  # (what is left of the chunk being read: a closed generator yields nothing more)
            pass


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

    def results() -> Generator[Iterator[Any], None, None]:
        try:
            while inflight:
                task = inflight.popleft()
                values, error = _chunk_outcome(task, _remaining(end_time))
                if error is not None:
                    yield _drain(values)
                    raise error
                if not ex.closed:
                    for chunk in itertools.islice(chunks, 1):
                        inflight.append(submit_chunk(ex, fn, chunk, sizer, max_retries))
                yield _drain(values)
        finally:
            _cancel_all(inflight)

    return MapResults.of(results())


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
        self.ahead: tuple[int, list[Any]] | None = None  # a chunk read, not yet submitted (feed)
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
                    # The first window is full: the thread takes over, unless the
                    # input ends here (read one chunk ahead to know; the stdlib's
                    # map reads the whole input at once): a map that fits in the
                    # window starts no thread (~100 us, a 2,000-item map's tenth).
                    self.ahead = next(self.chunks, None)
                    if self.ahead is None:
                        break
                    return
                if self.stopped:
                    return
                chunk, self.ahead = self.ahead or next(self.chunks, None), None
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
    def results() -> Generator[Iterator[Any], None, None]:
        try:
            while (task := feeder.next_task(end_time)) is not None:
                values, error = _chunk_outcome(task, _remaining(end_time))
                yield _drain(values)
                if error is not None:
                    raise error
        finally:
            if not feeder.finished or feeder.tasks:
                feeder.stop()
                _cancel_all(feeder.tasks)

    return MapResults.of(results())
