"""The threads backend: tasks run on a pool of threads in this process.

Right for work that releases the GIL (I/O, numpy, most C extensions) and on
free-threaded Python.  Nothing is pickled.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import threading
import time
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from .. import _shm
from .._errors import InitializerError
from .._futures import Task, worker_thread
from .._serialization import describe
from .._telemetry import Telemetry
from ..actors.local import LocalActorBackend
from . import BackendOptions


class ThreadBackend(LocalActorBackend):
    name = "threads"
    supports_collectives = _shm.AVAILABLE  # each actor has a thread: its calls run at once

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        super().__init__(options, telemetry)
        self._init_error: BaseException | None = None
        self._initialized = 0  # threads whose initializer returned (wait_ready)
        self._pool = cf.ThreadPoolExecutor(
            options.max_workers,
            thread_name_prefix="poolx-thread",
            initializer=self._initialize if options.initializer is not None else None,
        )
        self._index = threading.local()
        self._next_index = iter(range(1 << 62)).__next__
        self._pending: set[Task] = set()
        self._lock = threading.Lock()

    def _initialize(self) -> None:
        try:
            self.options.initializer(*self.options.initargs)
        except BaseException as exc:
            self._init_error = exc
            raise
        with self._lock:
            self._initialized += 1

    def prestart(self) -> None:
        """Start every thread now (ThreadPoolExecutor starts one per submit, while
        none is idle); each runs the initializer at its start (ThreadPool's
        ``wait_for_workers``)."""
        pool: Any = self._pool
        with self._lock:
            while len(pool._threads) < pool._max_workers:
                # A new thread counts itself idle (3.13's releases the pool's
                # semaphore once it waits for work), and the pool starts no
                # thread while one is idle: take those counts back first.
                while pool._idle_semaphore.acquire(timeout=0):
                    pass
                pool._adjust_thread_count()

    def wait_ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every thread has run the initializer; True if so."""
        deadline = time.monotonic() + timeout
        while self.options.initializer is not None and self._init_error is None:
            if self._initialized >= self.options.max_workers:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return self._init_error is None

    @property
    def broken(self) -> str | None:
        """Why the pool broke (an initializer raised), or None."""
        return None if self._init_error is None else str(self._broken())

    def _broken(self) -> InitializerError:
        exc = self._init_error
        error = InitializerError(
            f"the worker initializer {describe(self.options.initializer)} raised "
            f"{type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return error

    def submit(self, task: Task) -> None:
        if self._init_error is not None:
            raise self._broken()
        with self._lock:
            self._pending.add(task)
        inner = self._pool.submit(self._run, task)
        # If the pool breaks (initializer failed) or drops the call at shutdown,
        # the inner future fails or is cancelled and ours must follow.
        inner.add_done_callback(functools.partial(self._after, task=task))

    def _run(self, task: Task) -> None:
        index = getattr(self._index, "value", None)
        if index is None:
            index = self._index.value = self._next_index()
            worker_thread.lend = self.lend_slot  # waits for futures in tasks lend the thread
        task.worker = index
        task.run_here()

    def _after(self, inner: cf.Future[None], *, task: Task) -> None:
        with self._lock:
            self._pending.discard(task)
        fut = task.future
        if not fut.done():
            if inner.cancelled():
                fut.cancel()
            else:
                exc = inner.exception()
                if isinstance(exc, BrokenThreadPool) and self._init_error is not None:
                    exc = self._broken()
                if fut.set_running_or_notify_cancel() and exc is not None:
                    fut.set_exception(exc)
        if fut.cancelled():
            self.telemetry.task_cancelled()
        elif task.t_start:
            self.telemetry.task_done(task, fut.exception() is None)
        else:
            self.telemetry.task_done(task, False)

    def lend_slot(self) -> Any:
        """A task on one of this pool's threads waits for other tasks: allow one more thread.

        Without it, tasks that wait for tasks they submitted would deadlock
        once every thread waits.  The extra thread stays (idle) until shutdown.
        """
        pool = self._pool
        if threading.current_thread() not in pool._threads:
            return None
        with self._lock:
            pool._max_workers += 1
            # The pool counts idle threads with a semaphore that a thread
            # releases after each task but nothing takes back when it starts
            # the next: it overcounts, and would skip starting the thread.
            while pool._idle_semaphore.acquire(timeout=0):  # type: ignore[attr-defined,unused-ignore]
                pass
            pool._adjust_thread_count()  # type: ignore[attr-defined,unused-ignore]

        def end() -> None:
            with self._lock:
                pool._max_workers -= 1

        return end

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            with self._lock:
                pending = list(self._pending)
            for task in pending:
                if task.future.cancel():  # only succeeds for tasks not yet running
                    task.future.set_running_or_notify_cancel()  # (wait() counts it done only then)
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        # Actors stop once the tasks (which may call them) are done.
        self.stop_actors(wait)

    def worker_counts(self) -> dict[str, int]:
        n = len(self._pool._threads)
        return {"workers_alive": n, "workers_started": n, "workers_restarted": 0, "workers_died": 0}
