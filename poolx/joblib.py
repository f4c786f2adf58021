"""The ``"poolx"`` joblib backend: ``joblib.Parallel``, and so scikit-learn's ``n_jobs``, on poolx.

::

    import joblib
    import poolx.joblib  # registers the backend as "poolx"

    with joblib.parallel_config(backend="poolx", n_jobs=2):
        search.fit(X, y)  # scikit-learn's n_jobs now runs on poolx

or run on an executor you already have (processes, threads, or any backend)::

    with poolx.Executor(4) as ex, joblib.parallel_config(backend="poolx", executor=ex):
        joblib.Parallel()(joblib.delayed(f)(i) for i in range(100))

What it does, and where it goes beyond joblib's own process backends, is in
docs/joblib.md.  In short: results, errors and batching are joblib's own
(its ``AutoBatchingMixin`` sizes the batches); workers stay warm across
``Parallel`` calls (``idle_worker_timeout``, 300 s as loky); BLAS/OpenMP
thread pools in the workers are capped at their share of the CPUs
(``inner_max_num_threads``); the first error stops only this call's work:
pending batches are cancelled and the workers running its batches are
replaced, so other work on the same executor is left alone.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:
    import joblib
    from joblib._parallel_backends import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
        ThreadingBackend,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "poolx.joblib needs joblib 1.4 or later: pip install 'joblib>=1.4' (poolx's 'joblib' extra)"
    ) from exc

from . import _context
from ._executor import Executor
from ._futures import Future, Task
from ._joblib.batch import Batch, Memmapping, np

__all__ = ["BACKEND_NAME", "IDLE_WORKER_TIMEOUT", "PoolxBackend", "register", "shutdown_workers"]

BACKEND_NAME = "poolx"
#: Seconds the backend's own workers stay alive after the last ``Parallel``
#: call that used them (loky's default too).
IDLE_WORKER_TIMEOUT = 300.0
#: Parallel's default max_nbytes (its "1M"): larger array arguments are memory-mapped.
MAX_NBYTES = 1_000_000
# Seconds abort_everything waits for the stopped batches' callbacks (see _wait_for_callbacks).
ABORT_WAIT = 5.0
#: Environment variable that caps what ``joblib.cpu_count()`` (and so
#: ``n_jobs=-1``) means inside a worker: its share of the CPUs.
CPU_SHARE_VAR = "LOKY_MAX_CPU_COUNT"
#: Keyword arguments the backend takes (``parallel_config(backend="poolx", **these)``).
BACKEND_KWARGS = ("executor", "idle_worker_timeout", "mp_context", "initializer", "initargs",
                  "max_tasks_per_child", "task_timeout", "max_retries", "retry_exceptions",
                  "max_memory_per_child", "init_timeout", "engine", "address",
                  # memory-mapping (Parallel's own, which win, as loky takes them too)
                  "max_nbytes", "mmap_mode", "temp_folder")


def register() -> None:
    """Register the backend with joblib as ``"poolx"`` (``import poolx.joblib`` does it)."""
    joblib.register_parallel_backend(BACKEND_NAME, PoolxBackend)


def shutdown_workers(wait: bool = True) -> None:
    """Stop the backend's own warm workers now instead of after ``idle_worker_timeout``.

    The next ``Parallel`` call starts new ones.  Executors handed to the
    backend (``executor=``) are the caller's to shut down.
    """
    _shared.close(wait)


class PoolxBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's backend interface on a ``poolx.Executor``.

    Keyword arguments (through ``parallel_config(backend="poolx", ...)`` or
    directly): ``executor`` runs the batches on that executor (any poolx
    backend; it is not shut down here); otherwise the backend keeps its own
    executor of ``n_jobs`` worker processes, warm across ``Parallel`` calls
    for ``idle_worker_timeout`` seconds, started with ``mp_context``,
    ``initializer(*initargs)`` and ``max_tasks_per_child`` when given.
    Nesting is joblib's default (``get_nested_backend``: threads one level
    down, sequential below).
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    default_n_jobs = 1

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 **backend_kwargs: Any) -> None:
        unknown = sorted(set(backend_kwargs) - set(BACKEND_KWARGS))
        if unknown:
            raise TypeError(
                f"the poolx joblib backend got unexpected keyword argument(s) {', '.join(unknown)}; "
                f"it takes {', '.join(BACKEND_KWARGS)}"
            )
        executor = backend_kwargs.get("executor")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(
                f"executor= must be a poolx.Executor, got {type(executor).__name__}; "
                "for other executors use joblib's own backends"
            )
        timeout = backend_kwargs.get("idle_worker_timeout", IDLE_WORKER_TIMEOUT)
        if timeout is not None and not (isinstance(timeout, int | float) and timeout >= 0):
            raise ValueError(f"idle_worker_timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        # joblib 1.4's base class neither keeps backend_kwargs nor accepts them.
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.backend_kwargs = dict(backend_kwargs)
        self._given: Executor | None = executor
        self._executor: Executor | None = None
        self._lease: _Lease | None = None
        self._tasks: set[Task] = set()
        self._tasks_lock = threading.Lock()
        self._call_kwargs: dict[str, Any] = {}
        self._memmapping: Memmapping | None = None
        self._wrap = False  # batches go as Batch (the executor pickles them to other processes)
        self.parallel: Any = None
        if executor is not None:
            # All of the executor's workers unless told otherwise; joblib's
            # threading rules when the executor runs in this process.
            self.default_n_jobs = -1
            in_process = executor.backend in ("threads", "serial")
            self.uses_threads = in_process
            self.supports_sharedmem = in_process

    # -- joblib's interface ------------------------------------------------------

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if self._given is None and n_jobs != 1 and multiprocessing.current_process().daemon:
            # A multiprocessing.Pool worker may not start processes (as loky says too).
            warnings.warn("poolx-backed parallel loops cannot start processes in a daemonic "
                          "process (a multiprocessing.Pool worker), setting n_jobs=1", stacklevel=3)
            return 1
        if (self._given is None and n_jobs != 1 and not (self.in_main_thread() or not self.nesting_level)
                and not _context.in_child()):
            # In a batch of joblib's threading backend: as loky, no processes
            # started from such a thread.
            warnings.warn("poolx-backed parallel loops cannot be nested below threads, "
                          "setting n_jobs=1", stacklevel=3)
            return 1
        size = self._given.max_workers if self._given is not None else joblib.cpu_count()
        if n_jobs < 0:
            n_jobs = max(size + 1 + n_jobs, 1)
        if self._given is not None:
            n_jobs = min(n_jobs, size)
        return int(n_jobs)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **parallel_kwargs: Any) -> int:
        """Called by ``Parallel`` before each call: find or start the executor."""
        # parallel_kwargs are Parallel's own (max_nbytes, mmap_mode, temp_folder,
        # verbose, context, ...): memory-mapping as loky's; context ignored, poolx
        # picks its start method itself (mp_context= to choose); and any keyword
        # given to Parallel(...), which win over parallel_config's, as for loky.
        if "executor" in parallel_kwargs:
            raise TypeError("pass executor= to parallel_config(backend='poolx', executor=...) "
                            "or to PoolxBackend(executor=...), not to Parallel")
        self._call_kwargs = {k: v for k, v in parallel_kwargs.items() if k in BACKEND_KWARGS}
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        if self._given is not None:
            self._executor = self._given
            self._start_memmapping(parallel, parallel_kwargs)
            return n
        if n == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        if _context.in_child():
            # Inside a poolx worker (a nested Parallel, or a Parallel in a task):
            # threads, as joblib's own backends do one level down; n_jobs=-1
            # there means the worker's share of the CPUs (CPU_SHARE_VAR).
            raise FallbackToBackend(ThreadingBackend(nesting_level=(self.nesting_level or 0) + 1))
        self._lease = _shared.acquire(self._settings(n))
        self._executor = self._lease.executor
        self._start_memmapping(parallel, parallel_kwargs)
        return n

    def _start_memmapping(self, parallel: Any, kwargs: dict[str, Any]) -> None:
        """joblib's memory-mapping of large arrays, as loky's, when batches go to other processes.

        One temp folder per Parallel instance (its ``_id``, as loky's context):
        a managed ``with Parallel(...)`` is configured once, so its calls share it.
        """
        self._close_memmapping()
        assert self._executor is not None
        self._wrap = self._executor.backend == "processes"
        if not self._wrap or np is None:
            return
        context_id = getattr(parallel, "_id", None) or uuid.uuid4().hex
        kwargs = {**self.backend_kwargs, **kwargs}
        self._memmapping = Memmapping(context_id, kwargs.get("temp_folder"),
                                      kwargs.get("max_nbytes", MAX_NBYTES), kwargs.get("mmap_mode", "r"),
                                      kwargs.get("verbose", 0))

    def _close_memmapping(self) -> None:
        memmapping, self._memmapping = self._memmapping, None
        if memmapping is not None:
            memmapping.close()

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Future[Any]:
        executor = self._executor
        if executor is None:
            raise RuntimeError("the poolx joblib backend was not configured: use it through joblib.Parallel")
        if self._wrap:
            func = Batch(func, self._memmapping)
        task = executor.submit_task(func, (), {})
        with self._tasks_lock:
            self._tasks.add(task)

        def done(future: cf.Future[Any]) -> None:
            with self._tasks_lock:
                self._tasks.discard(task)
            if callback is not None:
                callback(future)

        task.future.add_done_callback(done)
        return task.future

    apply_async = submit  # joblib 1.4 calls apply_async

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop this call's work: pending batches cancelled, running ones stopped.

        Only the workers running this call's batches are killed (and replaced);
        other work on the same executor goes on.  On an executor that cannot
        stop a running task (threads), those batches run to their end, their
        results discarded, as with joblib's threading backend.
        """
        with self._tasks_lock:
            tasks, self._tasks = list(self._tasks), set()
        executor = self._executor
        if executor is None or not tasks:
            return
        executor.stop_tasks(tasks)
        if executor.supports_terminate and threading.current_thread().name != "poolx-scheduler":
            _wait_for_callbacks(tasks, ABORT_WAIT)

    def terminate(self) -> None:
        """End of a Parallel call: the workers stay warm for the next one."""
        self.reset_batch_stats()
        lease, self._lease = self._lease, None
        self._executor = None
        self._close_memmapping()
        if lease is not None:
            lease.release()

    def __reduce__(self) -> Any:
        # A backend travels (in a BatchedCalls) only as a fresh one of its kind.
        return (PoolxBackend, (self.nesting_level, self.inner_max_num_threads))

    # -- the backend's own executor ---------------------------------------------

    def _settings(self, n: int) -> _Settings:
        kwargs = {**self.backend_kwargs, **self._call_kwargs}
        share = self.inner_max_num_threads or max(joblib.cpu_count() // n, 1)
        env = self._prepare_worker_env(n_jobs=n)
        if CPU_SHARE_VAR not in os.environ:
            env[CPU_SHARE_VAR] = str(share)
        return _Settings(
            n=n,
            env=tuple(sorted(env.items())),
            threads=int(env.get("OMP_NUM_THREADS", share)),
            mp_context=kwargs.get("mp_context"),
            initializer=kwargs.get("initializer"),
            initargs=tuple(kwargs.get("initargs", ())),
            max_tasks_per_child=kwargs.get("max_tasks_per_child"),
            idle_timeout=kwargs.get("idle_worker_timeout", IDLE_WORKER_TIMEOUT),
            faults=tuple((name, kwargs[name]) for name in _FAULT_OPTIONS if name in kwargs)
            # engine="dask"/"ray": the executor's backend (joblib's own "backend" names poolx)
            + ((("backend", kwargs["engine"]),) if "engine" in kwargs else ()),
        )


# Passed to the executor as they are (docs/faults.md).
_FAULT_OPTIONS = ("task_timeout", "max_retries", "retry_exceptions", "max_memory_per_child", "init_timeout",
                  "address")


@dataclass(frozen=True)
class _Settings:
    """What the backend's own executor is started with; equal settings share it."""

    n: int
    env: tuple[tuple[str, str], ...]
    threads: int
    mp_context: Any
    initializer: Any
    initargs: tuple[Any, ...]
    max_tasks_per_child: int | None
    idle_timeout: float | None
    faults: tuple[tuple[str, Any], ...] = ()

    def key(self) -> tuple[Any, ...]:
        return (self.n, self.env, self.threads, _identity(self.mp_context), _identity(self.initializer),
                _identity(self.initargs), self.max_tasks_per_child, _identity(self.faults))

    def start(self) -> Executor:
        return Executor(
            self.n,
            mp_context=self.mp_context,
            initializer=_worker_setup,
            initargs=(dict(self.env), self.threads, self.initializer, self.initargs),
            max_tasks_per_child=self.max_tasks_per_child,
            **dict(self.faults),
        )


def _identity(obj: Any) -> Any:
    try:
        hash(obj)
    except TypeError:
        return id(obj)
    return obj


def _worker_setup(env: dict[str, str], threads: int, initializer: Any, initargs: tuple[Any, ...]) -> None:
    """First thing in each of the backend's workers: cap the thread pools, then the user's initializer.

    The variables reach libraries loaded from now on.  Libraries already loaded
    (inherited from a forkserver that imported the main module, or by fork)
    read them too late: threadpoolctl (scikit-learn's dependency) caps those.
    """
    os.environ.update(env)
    if any(name in sys.modules for name in ("numpy", "scipy", "sklearn", "torch")):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            threadpool_limits(limits=threads)
    if initializer is not None:
        initializer(*initargs)


class _Lease:
    def __init__(self, shared: _Shared, executor: Executor) -> None:
        self.shared = shared
        self.executor = executor
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.shared.release(self.executor)


class _Shared:
    """The backend's own executor, kept warm between ``Parallel`` calls.

    One at a time (as loky's reusable executor): a call with other settings
    (another ``n_jobs``) replaces it; the old one finishes what it was given
    and stops.  It stops after ``idle_timeout`` seconds with no call using it,
    and at interpreter exit.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: Executor | None = None
        self.key: tuple[Any, ...] | None = None
        self.users = 0
        self.idle_timeout: float | None = IDLE_WORKER_TIMEOUT
        self.timer: threading.Timer | None = None

    def acquire(self, settings: _Settings) -> _Lease:
        with self.lock:
            self._cancel_timer()
            key = settings.key()
            if self.executor is not None and (key != self.key or self.executor.closed):
                old, self.executor = self.executor, None
                old.shutdown(wait=False)  # its running work (another thread's call) still completes
                self.users = 0
            if self.executor is None:
                self.executor = settings.start()
                self.key = key
            self.idle_timeout = settings.idle_timeout
            self.users += 1
            return _Lease(self, self.executor)

    def release(self, executor: Executor) -> None:
        with self.lock:
            if executor is not self.executor:
                return
            self.users = max(self.users - 1, 0)
            if self.users == 0 and self.idle_timeout is not None:
                self._cancel_timer()
                self.timer = threading.Timer(self.idle_timeout, self._expire, args=(executor,))
                self.timer.name = "poolx-joblib-idle"
                self.timer.daemon = True
                self.timer.start()

    def _expire(self, executor: Executor) -> None:
        with self.lock:
            if executor is not self.executor or self.users:
                return
            self.executor = self.key = None  # the key holds initargs: let them go
            self.timer = None
        executor.shutdown(wait=False)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self, wait: bool) -> None:
        with self.lock:
            self._cancel_timer()
            executor, self.executor = self.executor, None
            self.key = None
            self.users = 0
        if executor is not None:
            executor.shutdown(wait=wait)


_shared = _Shared()

register()


def _wait_for_callbacks(tasks: list[Any], timeout: float) -> None:
    """Wait until the stopped tasks' futures are done and joblib's callbacks on them have run.

    joblib's ``Parallel.__call__`` resets its abort flag before it takes a new
    call id, so a callback of the aborted call that runs in between passes
    the id check and aborts the next call on the same (managed) Parallel: it
    then returns an empty list.  loky's abort waits for its workers; ours
    waits for these callbacks (ours, added last, runs after joblib's).
    """
    pending = [t.future for t in tasks]
    done = threading.Semaphore(0)
    for future in pending:
        future.add_done_callback(lambda _f: done.release())
    deadline = time.monotonic() + timeout
    for _ in pending:
        if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return
