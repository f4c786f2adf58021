"""``poolx.Pool`` and ``poolx.ThreadPool``: ``multiprocessing.pool`` drop-ins on an Executor.

The stdlib's semantics, kept exactly where code could tell the difference:
``AsyncResult`` / ``MapResult`` / ``IMapIterator`` behave as the stdlib's (a
callback runs before the result is ready, on a pool thread; ``MapResult`` is
ready once every chunk is done and carries the first error; ``imap`` goes on
after a failed item), the same default chunksize, the same exceptions
(``multiprocessing.TimeoutError``, ``ValueError("Pool not running")``,
``MaybeEncodingError``, ``multiprocessing.pool.RemoteTraceback`` as the cause
of a worker's exception), and ``with Pool() as p:`` terminates on exit.

Different on purpose (documented in docs/multiprocessing.md):

- a worker that dies fails only the task it ran (``WorkerDiedError``) instead
  of leaving its result pending forever (CPython gh-96062);
- ``terminate()`` fails the results still pending instead of leaving them
  pending forever;
- an exception raised by a callback is reported (``sys.excepthook``-style, on
  stderr) instead of killing the pool's result thread;
- lambdas, closures and ``__main__`` functions work under every start method.

The start method is the stdlib's too: ``multiprocessing``'s default context
(fork on Linux up to Python 3.13) unless ``context`` says otherwise.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import queue
import sys
import threading
import traceback
import types
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import TimeoutError as MPTimeoutError
from typing import Any

from . import _arguments
from ._errors import SerializationError
from ._executor import Executor
from ._map import Runners
from ._pool_futures import (
    ChunkItems,
    OrderedFutures,
    UnorderedFutures,
    as_stdlib,
    outcome,
    settle,
    terminated,
)

# The stdlib's state names (tests and users read pool._state against these).
INIT, RUN, CLOSE, TERMINATE = "INIT", "RUN", "CLOSE", "TERMINATE"

_job_counter = itertools.count()
# imap/imap_unordered keep at most this many chunks per worker in flight: enough
# to keep tiny tasks pipelined (throughput is in-flight tasks / round trip),
# few enough that an endless iterable is not read far ahead.
IMAP_WINDOW_PER_WORKER = 512
# Map runners kept per pool (each holds its function alive).
RUNNER_CACHE = 64


def _default_processes() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1


class Pool:
    """A drop-in for ``multiprocessing.Pool``, running on poolx's process engine.

    Keyword-only extras (the stdlib has none of these):

    - ``task_timeout``: seconds a task (a ``map`` item) may run; one that runs
      over is stopped with its worker, which is replaced; its result raises
      ``poolx.TaskTimeoutError`` (a ``TimeoutError`` and a
      ``multiprocessing.TimeoutError``); the other tasks go on;
    - ``max_retries`` and ``retry_exceptions``: as ``poolx.Executor``'s (run
      again a task whose worker died, or that raised one of these classes);
    - ``max_memory_per_child``: bytes (or "500MB", "2GiB") of resident memory;
      a worker above it after a task retires and is replaced, and the tasks it
      had been sent run on others;
    - ``progress=True`` on ``map``, ``starmap``, ``imap`` and
      ``imap_unordered``: a tqdm progress bar;
    - ``wait_for_workers=True``: the constructor returns once every worker
      has started and run its initializer (Ray's Pool waits so); an
      initializer that raises makes it raise ``InitializerError``.  By default
      it returns at once, as the stdlib's (its initializers run meanwhile).
    """

    _backend_name = "processes"

    def __init__(self, processes: int | None = None, initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
                 context: Any = None, *, task_timeout: float | None = None,
                 max_memory_per_child: int | str | None = None, max_retries: int = 0,
                 retry_exceptions: Any = False, init_timeout: float | None = None,
                 backend: str | None = None, address: str | None = None,
                 wait_for_workers: bool = False) -> None:
        self._state = INIT  # before anything can raise: __del__ reads it
        if backend is None:  # (POOLX_BACKEND=dask moves an unchanged program, as for Executor)
            backend = self._backend_name if type(self)._backend_name != "processes" else (
                os.environ.get("POOLX_BACKEND") or "processes")
        # multiprocessing.Pool's checks, its types and order (see _arguments)
        if processes is None:
            processes = _default_processes()
        processes = _arguments.worker_count(processes, "processes", pool=True)
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError(f"maxtasksperchild must be a positive int or None, got {maxtasksperchild!r}")
        _arguments.initializer(initializer, ())
        _arguments.context(context, "context")
        self._processes = processes
        self._terminated = False
        self._cache: dict[int, Any] = {}
        self._feeders: list[threading.Thread] = []
        self._callbacks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        if context is None and backend == "processes":
            # As multiprocessing.Pool: the default context, fork on Linux up to
            # Python 3.13 (workers inherit the program's state), forkserver from
            # 3.14, and whatever set_start_method() chose.
            context = multiprocessing.get_context()
        self._executor = Executor.for_front_end(
            processes, context, initializer, tuple(initargs), max_tasks_per_child=maxtasksperchild,
            backend=backend, address=address, any_start_method=True, task_timeout=task_timeout,
            max_memory_per_child=max_memory_per_child, max_retries=max_retries,
            retry_exceptions=retry_exceptions, init_timeout=init_timeout)
        self._max_retries, retry_on = self._executor.retry_policy
        # Map chunks run under the executor's retry rule; a failed item fails
        # its chunk whole, as the stdlib's (not partial: poolx._map).
        self._runners = Runners(RUNNER_CACHE, (self._max_retries, retry_on) if retry_on else None,
                                partial=False)
        # As the stdlib: every worker (and its initializer) starts now.  With
        # wait_for_workers, return once all are ready, as Ray's Pool does (its
        # poolx.util.multiprocessing alias passes it); a failed initializer raises.
        try:
            self._executor.prestart(math.inf if wait_for_workers else None, strict=True)
        except BaseException:
            self._executor.shutdown(wait=True, cancel_futures=True)
            raise
        # Callbacks run here, in order, as the stdlib runs them on its result
        # thread; the thread holds no reference to the pool.
        self._callback_thread = threading.Thread(target=_run_callbacks, args=(self._callbacks,),
                                                 name="poolx-pool-callbacks", daemon=True)
        self._callback_thread.start()
        weakref.finalize(self, self._callbacks.put, None)
        self._state = RUN

    # -- the stdlib's API ---------------------------------------------------------

    def apply(self, func: Callable[..., Any], args: tuple[Any, ...] = (),
              kwds: dict[str, Any] | None = None) -> Any:
        """``func(*args, **kwds)`` in a worker; blocks until the result is ready."""
        return self.apply_async(func, args, kwds or {}).get()

    def apply_async(self, func: Callable[..., Any], args: tuple[Any, ...] = (),
                    kwds: dict[str, Any] | None = None, callback: Callable[[Any], object] | None = None,
                    error_callback: Callable[[BaseException], object] | None = None) -> ApplyResult:
        """``func(*args, **kwds)`` in a worker; returns an ``AsyncResult``."""
        self._check_running()
        if callback is None and error_callback is None:
            # Nothing to run when it completes: the result reads the task's
            # future directly (no callback, no thread hop).
            # (a call that cannot be pickled gets a failed future: as_stdlib gives its pickling error)
            return _FutureResult(self._executor.submit(func, *args, **(kwds or {})))
        result = ApplyResult(self, callback, error_callback)
        self._submit(func, tuple(args), dict(kwds or {}), result._set, True)
        return result

    def map(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None, *,
            progress: bool = False) -> list[Any]:
        """``list(map(func, iterable))`` on the workers, in chunks."""
        return self._map_async(func, iterable, False, chunksize, progress=progress).get()

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None, *, progress: bool = False) -> list[Any]:
        """Like ``map`` with each item unpacked as arguments: ``func(*item)``."""
        return self._map_async(func, iterable, True, chunksize, progress=progress).get()

    def map_async(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None,
                  callback: Callable[[Any], object] | None = None,
                  error_callback: Callable[[BaseException], object] | None = None) -> MapResult:
        return self._map_async(func, iterable, False, chunksize, callback, error_callback)

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None, callback: Callable[[Any], object] | None = None,
                      error_callback: Callable[[BaseException], object] | None = None) -> MapResult:
        return self._map_async(func, iterable, True, chunksize, callback, error_callback)

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1, *,
             progress: bool = False) -> Iterator[Any]:
        """Results in order, as they come; the iterable is read on a pool thread."""
        return self._imap(func, iterable, chunksize, IMapIterator, progress)

    def imap_unordered(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1, *,
                       progress: bool = False) -> Iterator[Any]:
        """Results in the order they finish."""
        return self._imap(func, iterable, chunksize, IMapUnorderedIterator, progress)

    def close(self) -> None:
        """No more work: the workers exit once what was submitted is done."""
        if self._state == RUN:
            self._state = CLOSE

    def terminate(self) -> None:
        """Stop the workers now; results still pending fail.  Returns once they are gone."""
        self._state = TERMINATE
        if self._terminated:
            return
        self._terminated = True
        if self._executor.supports_terminate:
            self._executor.terminate_workers()
        self._executor.shutdown(wait=True, cancel_futures=True)
        for feeder in list(self._feeders):  # each sees TERMINATE at its next chunk
            feeder.join(5.0)
        self._stop_callbacks()

    def join(self) -> None:
        """Wait for the workers to exit (after ``close()`` or ``terminate()``)."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state == CLOSE:
            for feeder in list(self._feeders):
                feeder.join()
            # Returns once every task is done and its done-callback has run
            # (queueing what the callback thread still has to deliver).
            self._executor.shutdown(wait=True)
        self._stop_callbacks()

    def _stop_callbacks(self) -> None:
        """Run the callbacks still queued, then end the callback thread."""
        self._callbacks.put(None)
        if threading.current_thread() is not self._callback_thread:
            self._callback_thread.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        cls = type(self)
        return f"<{cls.__module__}.{cls.__qualname__} state={self._state} pool_size={self._processes}>"

    def __del__(self, _warn: Any = warnings.warn, RUN: str = RUN) -> None:
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    # -- inside -------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _submit(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                deliver: Callable[[bool, Any], None], threaded: bool) -> None:
        """Run one task; ``deliver(ok, value)`` runs when it is done: on the
        callback thread when ``threaded`` (it calls user code: a callback, a
        progress bar), else wherever the task completes (it only stores)."""
        try:
            future = self._start(func, args, kwargs)
        except SerializationError as exc:
            # As the stdlib: the pickling error becomes the task's outcome.
            self._finished(deliver, threaded, False, exc.__cause__ if exc.__cause__ is not None else exc)
            return
        except RuntimeError as exc:  # shut down (terminated) meanwhile
            self._finished(deliver, threaded, False, exc)
            return
        future.add_done_callback(lambda f: self._on_done(f, deliver, threaded))

    def _start(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if getattr(func, "_poolx_chunk", False):  # a map chunk: its items can be quarantined (poolx._chunks)
            return self._executor.submit_task(func, args, kwargs, self._max_retries, chunk=True).future
        return self._executor.submit(func, *args, **kwargs)

    def _on_done(self, future: Any, deliver: Callable[[bool, Any], None], threaded: bool) -> None:
        if future.cancelled():
            self._finished(deliver, threaded, False, terminated())
            return
        exc = future.exception()
        if exc is None:
            self._finished(deliver, threaded, True, future.result())
        else:
            self._finished(deliver, threaded, False, as_stdlib(exc))

    def _finished(self, deliver: Callable[[bool, Any], None], threaded: bool, ok: bool, value: Any) -> None:
        if threaded:
            self._callbacks.put(lambda: deliver(ok, value))
        else:
            deliver(ok, value)

    def _chunksize(self, items: list[Any], chunksize: int | None) -> int:
        if chunksize is not None:
            return chunksize
        chunksize, extra = divmod(len(items), self._processes * 4)
        return chunksize + 1 if extra else chunksize

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], star: bool, chunksize: int | None,
                   callback: Callable[[Any], object] | None = None,
                   error_callback: Callable[[BaseException], object] | None = None,
                   progress: bool = False) -> MapResult:
        self._check_running()
        items = list(iterable)
        size = self._chunksize(items, chunksize) if items else 0  # as the stdlib: empty input, chunksize 0
        runner = self._runners.get(func, star)
        bar = _progress_bar(progress, len(items), func)
        result = MapResult(self, size, len(items), callback, error_callback)
        if size > 0:
            for i, start in enumerate(range(0, len(items), size)):
                chunk = items[start:start + size]

                def deliver(ok: bool, value: Any, i: int = i, n: int = len(chunk)) -> None:
                    if bar is not None:  # (on the callback thread: one at a time)
                        bar.update(n)
                        if result._number_left == 1:
                            bar.close()
                    result._set(i, (ok, value))

                self._submit(runner, (chunk, start), {}, deliver,
                             bar is not None or callback is not None or error_callback is not None)
        elif bar is not None:
            bar.close()
        return result

    def _imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int,
              kind: type[IMapIterator], progress: bool = False) -> Iterator[Any]:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        try:
            total: int | None = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
        bar = _progress_bar(progress, total, func)
        if bar is None:
            # Nothing to run per result: the iterator reads the tasks' futures
            # directly, in order or as they complete.
            ordered: OrderedFutures = (OrderedFutures if kind is IMapIterator else UnorderedFutures)(
                chunksize == 1)
            feeder = threading.Thread(target=self._feed_futures,
                                      args=(func, iter(iterable), chunksize, ordered),
                                      name="poolx-pool-feeder", daemon=True)
            self._feeders.append(feeder)
            feeder.start()
            return ordered if chunksize == 1 else ChunkItems(ordered)
        result = kind(self)
        feeder = threading.Thread(target=self._feed, args=(func, iter(iterable), chunksize, result, bar),
                                  name="poolx-pool-feeder", daemon=True)
        self._feeders.append(feeder)
        feeder.start()
        return result if chunksize == 1 else ChunkItems(result)

    def _feed_futures(self, func: Callable[..., Any], items: Iterator[Any], chunksize: int,
                      ordered: OrderedFutures) -> None:
        """Read the iterable on this thread and submit its chunks; at most
        ``window`` in flight (the oldest is awaited, not consumed: every task
        runs even if nobody reads the results, as with the stdlib)."""
        window = IMAP_WINDOW_PER_WORKER * self._processes
        inflight: deque[Any] = deque()
        runner = self._runners.get(func, False)
        n = 0  # items read
        try:
            while True:
                try:
                    chunk = list(itertools.islice(items, chunksize))
                except Exception as exc:  # the iterable raised: that is the outcome at this place
                    ordered.add(exc)
                    break
                if not chunk:
                    break
                start, n = n, n + len(chunk)
                if len(inflight) >= window:
                    settle(inflight.popleft())
                if self._state == TERMINATE:
                    ordered.add(terminated())
                    break
                try:
                    future = self._start(runner, (chunk, start), {})
                except SerializationError as exc:
                    ordered.add(exc.__cause__ if exc.__cause__ is not None else exc)
                    continue
                except RuntimeError as exc:  # terminated meanwhile
                    ordered.add(exc)
                    break
                inflight.append(future)
                ordered.add_future(future)
        finally:
            ordered.end()
            self._feeders.remove(threading.current_thread())

    def _feed(self, func: Callable[..., Any], items: Iterator[Any], chunksize: int, result: IMapIterator,
              bar: Any = None) -> None:
        """Read the iterable on this thread and submit its chunks, a bounded number in flight."""
        window = threading.BoundedSemaphore(max(64, 8 * self._processes))
        runner = self._runners.get(func, False)
        n = 0  # chunks read
        start = 0  # items read
        try:
            while True:
                try:
                    chunk = list(itertools.islice(items, chunksize))
                except Exception as exc:  # the iterable raised: that is the outcome at this place
                    self._callbacks.put(lambda n=n, exc=exc: result._set(n, (False, exc)))
                    n += 1
                    break
                if not chunk:
                    break
                window.acquire()
                if self._state == TERMINATE:
                    window.release()
                    self._callbacks.put(lambda n=n: result._set(n, (False, terminated())))
                    n += 1
                    break

                def deliver(ok: bool, value: Any, n: int = n, size: int = len(chunk)) -> None:
                    window.release()
                    if bar is not None:
                        bar.update(size)
                    result._set(n, (ok, value if chunksize > 1 or not ok else value[0]))

                self._submit(runner, (chunk, start), {}, deliver, bar is not None)
                n += 1
                start += len(chunk)
        finally:
            if bar is not None:
                result._on_end = bar.close
            self._callbacks.put(lambda n=n: result._set_length(n))
            self._feeders.remove(threading.current_thread())


class ThreadPool(Pool):
    """A drop-in for ``multiprocessing.pool.ThreadPool``: the same API on threads."""

    _backend_name = "threads"

    def __init__(self, processes: int | None = None, initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = (), *, wait_for_workers: bool = False) -> None:
        super().__init__(processes, initializer, initargs, wait_for_workers=wait_for_workers)


def _progress_bar(progress: bool, total: int | None, func: Callable[..., Any]) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm (or 'poolx[progress]')") from None
    name = getattr(func, "__qualname__", None) or type(func).__name__
    return tqdm(total=total, desc=name, unit="item")


def _run_callbacks(callbacks: queue.SimpleQueue[Any]) -> None:
    while True:
        job = callbacks.get()
        if job is None:
            return
        try:
            job()
        except BaseException:  # a user's callback raised: report it, go on
            print("Exception in a poolx.Pool callback:", file=sys.stderr)
            traceback.print_exc()


class ApplyResult:
    """The stdlib's ``AsyncResult``: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(self, pool: Pool, callback: Callable[[Any], object] | None,
                 error_callback: Callable[[BaseException], object] | None) -> None:
        self._pool: Pool | None = pool
        self._event = threading.Event()
        self._job = next(_job_counter)
        self._cache = pool._cache
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None
        self._cache[self._job] = self

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if not self.ready():
            raise MPTimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, success: bool, value: Any) -> None:
        self._success, self._value = success, value
        try:
            if self._callback and success:
                self._callback(value)
            if self._error_callback and not success:
                self._error_callback(value)
        finally:  # a raising callback is reported by the callback thread; the result is ready
            self._event.set()
            self._cache.pop(self._job, None)
            self._pool = None

    __class_getitem__: Any = classmethod(types.GenericAlias)


AsyncResult = ApplyResult


class _FutureResult(ApplyResult):
    """An ``apply_async`` result with no callback: it reads the task's future."""

    def __init__(self, future: Any) -> None:
        self._future = future
        self._job = next(_job_counter)

    def ready(self) -> bool:
        return bool(self._future.done())

    def successful(self) -> bool:
        if not self._future.done():
            raise ValueError(f"{self!r} not ready")
        return not self._future.cancelled() and self._future.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        try:
            self._future.exception(timeout)
        except BaseException:  # timed out or cancelled: wait() says nothing
            pass

    def get(self, timeout: float | None = None) -> Any:
        return outcome(self._future, timeout)


class MapResult(ApplyResult):
    """A ``map_async`` result: ready once every chunk is done; the first error wins."""

    def __init__(self, pool: Pool, chunksize: int, length: int, callback: Callable[[Any], object] | None,
                 error_callback: Callable[[BaseException], object] | None) -> None:
        super().__init__(pool, callback, error_callback)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        self._set_lock = threading.Lock()
        if chunksize <= 0:
            self._number_left = 0
            self._event.set()
            self._cache.pop(self._job, None)
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    def _set(self, i: int, success_result: tuple[bool, Any]) -> None:
        with self._set_lock:  # chunks may complete on several threads at once
            self._number_left -= 1
            last = self._number_left == 0
            self._store(i, success_result)
        if last:
            self._complete()

    def _store(self, i: int, success_result: tuple[bool, Any]) -> None:
        success, result = success_result
        if success and self._success:
            self._value[i * self._chunksize:(i + 1) * self._chunksize] = result
        elif not success and self._success:
            self._success = False
            self._value = result  # only the first exception is kept

    def _complete(self) -> None:
        try:
            if self._success and self._callback:
                self._callback(self._value)
            elif not self._success and self._error_callback:
                self._error_callback(self._value)
        finally:
            self._cache.pop(self._job, None)
            self._event.set()
            self._pool = None


class IMapIterator:
    """Results of ``imap`` in order; ``next(timeout)`` raises ``multiprocessing.TimeoutError``."""

    def __init__(self, pool: Pool) -> None:
        self._pool: Pool | None = pool
        self._cond = threading.Condition(threading.Lock())
        self._job = next(_job_counter)
        self._cache = pool._cache
        self._items: deque[tuple[bool, Any]] = deque()
        self._index = 0
        self._length: int | None = None
        self._unsorted: dict[int, tuple[bool, Any]] = {}
        self._on_end: Callable[[], object] | None = None  # closes a progress bar
        self._cache[self._job] = self

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        with self._cond:
            if not self._items and self._index != self._length:
                self._cond.wait(timeout)
            if not self._items:
                if self._index == self._length:
                    self._pool = None
                    raise StopIteration
                raise MPTimeoutError
            success, value = self._items.popleft()
        if success:
            return value
        raise value

    __next__ = next

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        with self._cond:
            if self._index == i:
                self._items.append(obj)
                self._index += 1
                while self._index in self._unsorted:
                    self._items.append(self._unsorted.pop(self._index))
                    self._index += 1
                self._cond.notify()
            else:
                self._unsorted[i] = obj
            if self._index == self._length:
                self._cache.pop(self._job, None)
                self._pool = None
        self._end_if_done()

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            if self._index == self._length:
                self._cond.notify()
                self._cache.pop(self._job, None)
                self._pool = None
        self._end_if_done()

    def _end_if_done(self) -> None:
        # Runs on the callback thread only: every result and the length arrive there.
        if self._on_end is not None and self._index == self._length:
            end, self._on_end = self._on_end, None
            end()


class IMapUnorderedIterator(IMapIterator):
    """Results of ``imap_unordered``, in the order they finish."""

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        with self._cond:
            self._items.append(obj)
            self._index += 1
            self._cond.notify()
            if self._index == self._length:
                self._cache.pop(self._job, None)
                self._pool = None
        self._end_if_done()
