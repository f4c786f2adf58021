"""poolx.Executor: the one front door.

A drop-in ``concurrent.futures.ProcessPoolExecutor`` (same signature, same
semantics) whose work runs on a pluggable backend.  Every other front end
(Pool, the joblib backend, the Ray-style API, the profiling harness) is built
on this class and never talks to a backend directly: it uses the members of
the section "the front ends' interface" (``submit_task``, ``stop_tasks``,
``prestart``, ``for_front_end``...), never this class's underscore attributes.

Here: the Executor's own state, submitting, stopping, and the interpreter's
exit.  Elsewhere: the map machinery (poolx._map), reruns on exceptions
(poolx._retry), tasks waiting for their inputs (poolx._held), checks of the
constructor's arguments (poolx._arguments), the profiling session told of
each executor made and closing (poolx._observe); tasks run in a backend
(poolx.backends).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing.util
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, ParamSpec, TypeVar

from . import _arguments, _observe, _shm
from ._cpus import default_max_workers
from ._errors import ActorDiedError, InitializerError, SerializationError
from ._futures import Future, Task
from ._held import HeldTasks
from ._insights import Insights, insights
from ._map import (
    MAP_INFLIGHT_PER_WORKER,
    RUNNER_CACHE,
    ChunkSizer,
    Feeder,
    Runners,
    in_chunks,
    length,
    results_buffered,
    results_fed,
    unsendable,
)
from ._objects import PutRef, dependencies, when_done
from ._retry import Retry, retrying
from ._serialization import describe
from ._telemetry import TRACE_CAPACITY, Statistics, Telemetry
from .actors.directory import ActorDirectory
from .actors.handle import ActorHandle, actor_id, handle_of, label_of, owner_of
from .actors.options import ActorOptions
from .actors.pool import map_actors
from .backends import Backend, BackendOptions, get_backend

P = ParamSpec("P")
T = TypeVar("T")

# Seconds that the work an executor left running with shutdown(wait=False) may
# still take once the interpreter exits; then its workers and actors are killed
# (their futures fail with WorkerDiedError) and the program goes on exiting.
# The stdlib and loky wait for that work for ever.  Long enough for the tail of
# a batch to finish, as shutdown(wait=False) lets it; short enough that a stuck
# task cannot keep a program that said "do not wait" from ending.
EXIT_GRACE = 5.0
# Seconds to wait after that kill for the scheduler to reap the processes and
# fail their futures: SIGKILL takes milliseconds; this only bounds the worst case.
EXIT_KILL_WAIT = 5.0

_live: weakref.WeakSet[Executor] = weakref.WeakSet()


def _forget_the_parents_executors() -> None:
    """In a forked child, the copies of the parent's executors are not its own.

    Its exit hook (``_at_exit``, inherited too) would shut them down: a copy
    whose lock a parent thread held at the fork waits on it for ever, and
    the parent kills the worker after STOP_TIMEOUT (CPython's test_hang_gh94440
    under fork saw a 5 s shutdown).  An executor made in the child is its own.
    """
    global _live
    _live = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_the_parents_executors)
_interpreter_exiting = False
_exit_deadline: float | None = None  # the end of EXIT_GRACE (see _end_left_running)


def _at_exit() -> None:
    """Let pending work finish before the interpreter exits (the stdlib's rule).

    Work left running by ``shutdown(wait=False)`` gets EXIT_GRACE seconds, then
    its processes are killed (``_end_left_running``).  After an uncaught
    Ctrl-C, pending work is cancelled and workers stopped at once instead: the
    user asked the program to stop.
    """
    global _interpreter_exiting
    _interpreter_exiting = True
    interrupted = getattr(sys, "last_type", None) is KeyboardInterrupt
    executors = list(_live)
    left = [] if interrupted else [ex for ex in executors
                                   if ex._left_running and ex._backend.supports_terminate]
    try:
        _end_left_running(left)
    except Exception:
        pass
    for ex in executors:
        try:
            if interrupted:
                ex._interrupt()
            elif ex not in left:
                ex.shutdown(wait=True)
        except Exception:
            pass


def _end_left_running(executors: list[Executor]) -> None:
    """Give the work that ``executors`` were left running EXIT_GRACE seconds, then kill it.

    Issue 19, item 6: a program that called ``shutdown(wait=False)`` and ended
    while a long task (or actor call) ran never exited.  One deadline for all,
    so the exit waits at most EXIT_GRACE + EXIT_KILL_WAIT seconds however many
    executors there are.
    """
    global _exit_deadline
    if _exit_deadline is None:  # (the hook runs twice: from threading's exit, then multiprocessing's)
        _exit_deadline = time.monotonic() + EXIT_GRACE
    late = [ex for ex in executors if not ex._backend.wait_closed(_seconds_to(_exit_deadline))]
    for ex in late:
        ex._force(kill=True)
    for ex in late:
        ex._backend.wait_closed(_seconds_to(_exit_deadline + EXIT_KILL_WAIT))


def _seconds_to(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


# (threading's private hook, as concurrent.futures uses: it runs before non-daemon threads are joined)
threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
# In a multiprocessing child (a poolx executor started inside another library's
# worker process), Process._bootstrap joins the children before the threading
# exit hooks run: run ours from multiprocessing's exit too, first.
multiprocessing.util.Finalize(None, _at_exit, exitpriority=100)


class Executor(cf.Executor):
    """Run callables in parallel; a drop-in for ``ProcessPoolExecutor``.

    ``max_workers`` defaults to the CPUs this process may use; ``mp_context``
    (a multiprocessing context or a start-method name) defaults to forkserver
    on Linux and spawn elsewhere; ``initializer(*initargs)`` runs once in each
    worker; ``max_tasks_per_child`` replaces a worker after that many tasks.
    ``backend`` picks where tasks run: ``"processes"`` (default), ``"threads"``,
    ``"serial"``, or any registered backend.

    Beyond the stdlib (keyword-only; see docs/faults.md):

    - ``task_timeout``: seconds a task (a ``map()`` item) may run; its worker
      is then killed and replaced, the task fails with ``TaskTimeoutError``
      and the other tasks go on (processes backend);
    - ``max_retries``: times a task whose worker died (a crash, a kill) is run
      again before it fails with ``WorkerDiedError``; so a task kills at most
      ``max_retries + 1`` workers (default 0, as the stdlib: no retry);
    - ``retry_exceptions``: ``True`` (any ``Exception``) or a tuple of
      exception classes: a task that raises one of them is run again, up to
      ``max_retries`` times;
    - ``max_memory_per_child``: bytes (or "500MB", "2GiB"); a worker whose
      resident memory is above it after a task retires and is replaced,
      without losing tasks (processes backend);
    - ``init_timeout``: seconds a worker may take to start, its initializer
      included; a worker still starting then is killed and the executor breaks
      with ``InitializerError`` (processes backend);
    - ``trace_capacity``: the newest finished tasks kept for ``export_trace()``
      (default ``TRACE_CAPACITY``, 1,000; 0 keeps none, None every one);
      ``statistics()`` counts every task whatever it is.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        backend: str | None = None,
        address: str | None = None,
        task_timeout: float | None = None,
        max_retries: int = 0,
        retry_exceptions: bool | tuple[type[BaseException], ...] | list[type[BaseException]] = False,
        max_memory_per_child: int | str | None = None,
        init_timeout: float | None = None,
        trace_capacity: int | None = TRACE_CAPACITY,
    ) -> None:
        observer = self._observer = _observe.active()
        if observer is not None:  # a profiling session (poolx.profile) may change these first
            max_workers, mp_context, backend, trace_capacity, self._child_hook = _observe.configured(
                observer, max_workers, mp_context, backend, trace_capacity, self._child_hook)
        # In the stdlib's order where it checks the same (see _arguments).
        max_workers = default_max_workers() if max_workers is None else _arguments.worker_count(max_workers)
        _arguments.context(mp_context)
        initargs = _arguments.initializer(initializer, initargs)
        max_tasks_per_child = _arguments.tasks_per_child(max_tasks_per_child)
        max_retries = _arguments.retries(max_retries)
        task_timeout = _arguments.seconds(task_timeout, "task_timeout")
        init_timeout = _arguments.seconds(init_timeout, "init_timeout")
        retry_on = _arguments.retry_exceptions(retry_exceptions)
        max_memory = _arguments.byte_size(max_memory_per_child, "max_memory_per_child")
        if max_tasks_per_child is not None:
            mp_context = _arguments.context_for_tasks_per_child(mp_context, self._any_start_method)
        if backend is None:
            # POOLX_BACKEND moves an unchanged program (POOLX_BACKEND=dask).
            backend = os.environ.get("POOLX_BACKEND") or "processes"
        backend_cls = get_backend(backend)
        _arguments.backend_supports(backend_cls, backend, address=address,
                                    max_tasks_per_child=max_tasks_per_child, task_timeout=task_timeout,
                                    init_timeout=init_timeout, max_retries=max_retries, max_memory=max_memory)
        self._max_workers = max_workers
        self._max_retries = max_retries
        self._retry_on = retry_on
        self._retry_policy: Retry = (max_retries, retry_on)
        self._telemetry = Telemetry(trace_capacity)
        self._actors = ActorDirectory(self._telemetry)
        self._backend: Backend = backend_cls(
            BackendOptions(max_workers, mp_context, initializer, initargs, max_tasks_per_child,
                           actors=self._actors, child_hook=self._child_hook, task_timeout=task_timeout,
                           max_memory=max_memory, init_timeout=init_timeout,
                           extra={"address": address} if address is not None else {}),
            self._telemetry,
        )
        self._actors.backend = self._backend
        if self._backend.supports_shared_memory:
            _shm.keep_free_segments()
        self._shutdown_lock = threading.Lock()
        self.closed = False
        self._feeders: list[Feeder] = []  # map()'s, stopped or joined by shutdown()
        self._runners = Runners(RUNNER_CACHE, (max_retries, retry_on) if retry_on else None, partial=True)
        self._held = HeldTasks(self._backend, self._telemetry)  # tasks waiting for their inputs (_hold)
        self._left_running = False  # shut down without waiting: its work is bounded at exit (_at_exit)
        _live.add(self)
        # An executor dropped without shutdown() stops its workers once the
        # queued work is done (the backend never refers back to the executor).
        weakref.finalize(self, self._backend.shutdown, False, False)
        if observer is not None:
            _observe.tell_opened(observer, self)

    # -- introspection ---------------------------------------------------------

    @property
    def max_workers(self) -> int:
        """The number of workers this executor runs at most."""
        return self._max_workers

    @property
    def backend(self) -> str:
        """The name of the backend tasks run on."""
        return self._backend.name

    def statistics(self) -> Statistics:
        """A frozen snapshot: tasks, workers, bytes moved, busy time per worker."""
        return self._telemetry.snapshot(
            backend=self._backend.name, max_workers=self._max_workers, **self._backend.worker_counts()
        )

    def insights(self) -> Insights:
        """Per worker its start-up, waiting, working and transfer time, and the slowest tasks by
        function; ``print()`` it for tables (docs/executor.md)."""
        return insights(self)

    def export_trace(self, path: str | os.PathLike[str]) -> None:
        """Write the task timeline as Chrome/Perfetto trace JSON (one lane per worker).

        Open it at https://ui.perfetto.dev or chrome://tracing.
        """
        self._telemetry.export_trace(path, self._backend.name)

    # -- submitting -------------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns a Future for its result (failed with
        ``SerializationError`` if the call cannot be pickled, as the stdlib reports it)."""
        try:
            if self._retry_on:  # a future that reruns the task when it raises one of retry_exceptions
                return retrying(lambda budget: _attempt(self, fn, args, kwargs, budget), self._max_retries,
                                self._retry_on, lambda: self.closed)
            return self.submit_task(fn, args, kwargs, self._max_retries).future
        except SerializationError as exc:
            return unsendable(fn, exc).future

    def put(self, obj: Any) -> PutRef:
        """Store ``obj`` once; returns a ref to pass to tasks instead of the object.

        The object is pickled now (a snapshot: later changes to ``obj`` are
        not seen) and that pickle is what each task receives: a large object
        passed to many tasks is pickled once, not once per task.  On the
        processes backend its large buffers (numpy arrays' data) are written
        once into shared memory, and every task maps them without a copy.
        The ref is a finished future: ``ref.result()`` (or ``poolx.get(ref)``)
        gives the object back; numpy arrays in it are read-only, as with Ray.
        """
        if isinstance(obj, cf.Future):
            raise TypeError("put() of a future or ref: pass the ref itself to tasks instead "
                            "(a put of a ref is not allowed, as in Ray)")
        if self.closed:
            raise RuntimeError("cannot put objects after shutdown")
        shm = _shm.SHARED if self._backend.supports_shared_memory else _shm.NONE
        try:
            return PutRef(obj, shm)
        except Exception as exc:
            raise SerializationError(
                f"put() cannot pickle the {describe(type(obj))}: {type(exc).__name__}: {exc}"
            ) from exc

    def _hold(self, task: Task, deps: list[cf.Future[Any]]) -> None:
        """Keep ``task`` until the futures among its arguments are done, then submit it.

        The caller does not wait: a chain ``submit(g, submit(f, x))`` is
        queued at once and g starts when f's result is in.  A failed or
        cancelled dependency fails the task with that error.
        """
        self._held.add(task)
        # (the callback keeps this executor alive meanwhile: its backend must not be finalized)
        when_done(deps, lambda: self._held.release(task, deps))

    # -- the front ends' interface ---------------------------------------------------
    # poolx's other front ends (Pool, the joblib backend, the Ray-style API, the
    # profiling harness) reach the engine through these members only, never its
    # underscore attributes.  Not public API; each says who uses it and why.

    @classmethod
    def for_front_end(cls, *args: Any, child_hook: Any = None, any_start_method: bool = False,
                      **kwargs: Any) -> Executor:
        """An Executor with settings its constructor does not take; other arguments are the constructor's.

        - ``child_hook``: an object with ``start(label)``/``stop()`` run in every
          worker and actor process at its start and end (backends whose workers
          are processes honour it): the profiling harness's profilers
          (poolx.harness.measure);
        - ``any_start_method``: ``max_tasks_per_child`` under the fork start
          method, which ``ProcessPoolExecutor`` refuses and
          ``multiprocessing.Pool`` allows (poolx.Pool: its workers retire
          themselves).
        """
        executor = cls.__new__(cls)
        executor._child_hook = child_hook  # read by __init__ (the class's defaults otherwise)
        executor._any_start_method = any_start_method
        cls.__init__(executor, *args, **kwargs)
        return executor

    _child_hook: Any = None
    _any_start_method: bool = False
    _observer: _observe.Observer | None = None  # told when this executor closes (poolx._observe)

    def observe_closing(self) -> None:
        """Tell the profiling observer (poolx._observe), once, that this executor is closing, while
        its workers and actors can still be read: shutdown() and _force() do; the Ray-style API's
        shutdown does before it kills its actors (poolx._api.shutdown)."""
        with self._shutdown_lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            _observe.tell_closing(observer, self)

    def submit_task(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    max_retries: int = 0, readonly_args: bool = False, chunk: bool = False) -> Task:
        """``submit`` with the engine's settings per task; returns the ``Task`` (id, future, timings).

        ``max_retries``: runs again after its worker died (-1: no limit);
        ``readonly_args``: large arguments arrive read-only, mapped once per
        worker; ``chunk``: a map chunk, whose items can be quarantined
        (poolx._map).  Used by map and Pool's maps (chunks), the joblib
        backend (it keeps the Tasks to stop them) and the Ray-style API
        (per-function retries, read-only arguments, the id for ``cancel``).
        """
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__} {fn!r}")
        task = Task(fn, args, kwargs)
        task.max_retries = max_retries
        if chunk:
            task.skip = {}
        if readonly_args:  # the Ray-style API: large arguments arrive read-only, mapped once per worker
            task.shm = _shm.READONLY
        deps = dependencies(args, kwargs) if args or kwargs else None
        if deps:
            self._telemetry.task_submitted()
            self._hold(task, deps)
            return task
        self._backend.submit(task)
        self._telemetry.task_submitted()
        return task

    def stop_tasks(self, tasks: Iterable[Task]) -> None:
        """Stop these tasks: cancel the ones not started, and on backends that
        can (``supports_terminate``) kill the workers running the others, which
        are replaced; those futures fail with ``TaskCancelledError``.  Other
        tasks are not affected.  Used by joblib's abort and the Ray-style
        API's ``cancel(force=True)``; each task needs only ``id`` and ``future``."""
        tasks = [task for task in tasks if not task.future.done()]
        if tasks:
            self._backend.stop_tasks(tasks)

    @property
    def supports_terminate(self) -> bool:
        """Whether running tasks can be stopped (``stop_tasks``, ``terminate_workers``),
        the backend's flag: Pool's ``terminate``, joblib's abort and the Ray-style
        API's ``cancel(force=True)`` read it."""
        return self._backend.supports_terminate

    def prestart(self, ready_timeout: float | None = None, *, strict: bool = False) -> None:
        """Start every worker now, on backends that start them on demand (processes, threads).

        With ``ready_timeout``, wait at most that many seconds (``math.inf``: until ready or
        failed) for their initializers to run; with ``strict``, raise ``InitializerError`` if
        they are not then.  Used by Pool (its constructor starts the workers; with
        ``wait_for_workers=True`` it waits, strict) and the Ray-style API's ``init()``."""
        self._backend.prestart()
        if ready_timeout is not None and not self._backend.wait_ready(ready_timeout) and strict:
            raise InitializerError(getattr(self._backend, "broken", None) or f"the workers were not ready "
                                   f"within {ready_timeout} s: their initializer is slow, or never returns")

    @property
    def retry_policy(self) -> Retry:
        """``(max_retries, retry_exceptions as classes)``: Pool submits its map
        chunks (and builds their runners) under the executor's retry rule with it."""
        return self._retry_policy

    #: Whether ``shutdown`` (or ``terminate_workers``/``kill_workers``) was called;
    #: read only.  The joblib backend then starts another executor; a map with
    #: ``buffersize`` stops submitting (a plain attribute: it reads it per chunk).
    closed: bool

    @property
    def telemetry(self) -> Telemetry:
        """The task and worker records behind ``statistics()`` and ``export_trace()``:
        the profiling harness reads every task's record (poolx.harness.measure)."""
        return self._telemetry

    # -- mapping -------------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like ``concurrent.futures.Executor.map``, with automatic chunking.

        ``chunksize=None`` (the default) lets poolx size chunks itself: one item
        at a time until the cost of an item is measured (or from the start at
        the cost an earlier map of the same function measured), then chunks of
        about TARGET_CHUNK_SECONDS (at most a quarter of each worker's share when
        the input has a length; one chunk per worker when all its work is
        estimated under SMALL_MAP_SECONDS).  The input is consumed lazily: at most
        ``buffersize`` chunks are in flight (Python 3.14 semantics: the next
        chunk is submitted as a result is consumed); without ``buffersize``, a
        background feeder keeps a few chunks per worker in flight whether or
        not results are being consumed, so all the work runs as with the stdlib.
        """
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or > 0")
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        end_time = None if timeout is None else timeout + time.monotonic()
        star = len(iterables) != 1
        runner = self._runners.get(fn, star)
        sizer = ChunkSizer(chunksize, length(iterables), self._max_workers, self._runners.cost(runner))
        chunks = in_chunks(zip(*iterables) if star else iter(iterables[0]), sizer)
        if buffersize is not None or self._backend.runs_in_caller:
            # An in-process backend runs each chunk as it is consumed, in the caller.
            return results_buffered(self, runner, chunks, sizer, self._max_retries, buffersize or 1, end_time)
        feeder = Feeder(self, runner, chunks, sizer, self._max_retries,
                        MAP_INFLIGHT_PER_WORKER * self._max_workers, self._feeders)
        return results_fed(feeder, end_time)

    # -- actors -------------------------------------------------------------------

    def options(self, **options: Any) -> ActorFactory:
        """Actor options for the next ``actor()`` or ``map_actors()`` call.

        ``executor.options(name="tracker", max_restarts=2).actor(Tracker, ...)``;
        see ``poolx.ActorOptions`` for the options.  Kept apart from ``actor()``
        so that they never clash with the constructor's own keyword arguments.
        """
        return ActorFactory(self, ActorOptions.build(options))

    def actor(self, cls: type[T], /, *args: Any, **kwargs: Any) -> ActorHandle[T]:
        """Start an actor: a worker that owns ``cls(*args, **kwargs)`` and runs its methods.

        Returns at once with a handle; ``handle.method.remote(...)`` returns a
        Future.  On the processes backend the actor is a process of its own.
        """
        return _start_actor(self, cls, args, kwargs, ActorOptions())

    def get_actor(self, name: str) -> ActorHandle[Any]:
        """A handle to this executor's live actor named ``name``."""
        return handle_of(self._actors.get(name))

    def kill(self, handle: ActorHandle[Any], *, no_restart: bool = True) -> None:
        """Stop an actor now: its running and pending calls fail with ``ActorDiedError``.

        With ``no_restart=False`` the actor is started again (a fresh instance)
        if its ``max_restarts`` allows, as after a crash.
        """
        if not isinstance(handle, ActorHandle):
            raise TypeError(f"kill() needs an ActorHandle, got {type(handle).__name__}")
        actor = self._actors.by_id.get(actor_id(handle))
        if actor is None:
            if actor_id(handle) in _dead_or_foreign(self, handle):
                return  # already dead: nothing to do (as ray.kill)
            raise ValueError(f"the actor {label_of(handle)} does not belong to this executor")
        self._backend.stop_actor(actor, kill=True, restart=not no_restart)

    def map_actors(self, cls: type, iterable: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
        """Map a callable class over ``iterable`` on a pool of actors that grows and shrinks.

        See ``ActorFactory.map_actors``.
        """
        return ActorFactory(self, ActorOptions()).map_actors(cls, iterable, **kwargs)

    def __reduce__(self) -> Any:
        raise TypeError(
            "a poolx.Executor cannot be sent to a task or an actor: pass actor handles instead, "
            "or call poolx.get_actor(name) inside the task"
        )

    # -- stopping ---------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``wait``, return when all of it has finished."""
        feeders = list(self._feeders)
        if cancel_futures:
            for feeder in feeders:
                feeder.stop()
        if wait:
            for feeder in feeders:
                feeder.join()
        with self._shutdown_lock:
            self.closed = True
            self._left_running = not wait
        self.observe_closing()
        self._actors.close()
        if cancel_futures:
            self._held.cancel()
        if not self._held.shutdown_backend(wait, cancel_futures):
            return  # (without wait, and tasks still held: the last of them shuts the backend down)
        if wait and self._backend.supports_shared_memory:
            _release_shared_memory(self)

    def terminate_workers(self) -> None:
        """SIGTERM every worker now; pending work is cancelled (Python 3.14 API)."""
        self._force(kill=False)

    def kill_workers(self) -> None:
        """SIGKILL every worker now; pending work is cancelled (Python 3.14 API)."""
        self._force(kill=True)

    def _force(self, kill: bool) -> None:
        if not self._backend.supports_terminate:
            self._backend.terminate_workers(kill)  # raises, naming the backend
        for feeder in list(self._feeders):
            feeder.stop()
        with self._shutdown_lock:
            self.closed = True
            self._left_running = True  # a task that ignores SIGTERM: killed at exit (_at_exit)
        self.observe_closing()
        self._actors.close()
        self._held.cancel()
        self._backend.terminate_workers(kill)
        self._backend.shutdown(wait=False, cancel_futures=True)

    def _interrupt(self) -> None:
        """After Ctrl-C: cancel what is pending, stop workers, return promptly."""
        if self._backend.supports_terminate:
            self._force(kill=True)
            self._backend.shutdown(wait=True, cancel_futures=True)
        else:
            self.shutdown(wait=False, cancel_futures=True)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._interrupt()
        else:
            self.shutdown(wait=True)
        return False


class ActorFactory:
    """``Executor.options(...)``: starts actors with those options."""

    def __init__(self, executor: Executor, options: ActorOptions) -> None:
        self._executor = executor
        self.options = options

    def actor(self, cls: type[T], /, *args: Any, **kwargs: Any) -> ActorHandle[T]:
        """Start an actor of ``cls`` with these options (see ``Executor.actor``)."""
        return _start_actor(self._executor, cls, args, kwargs, self.options)

    def map_actors(self, cls: type, iterable: Iterable[Any], *, args: tuple[Any, ...] = (),
                   kwargs: dict[str, Any] | None = None, min_size: int = 1, max_size: int | None = None,
                   batch_size: int | None = None, ordered: bool = True,
                   idle_timeout: float = 1.0) -> Iterator[Any]:
        """Map ``cls(*args, **kwargs)(item)`` over ``iterable`` on an autoscaling pool of actors.

        Each actor builds one instance (load a model once, use it for many
        items).  The pool starts ``min_size`` actors, adds one whenever every
        actor is busy and items are waiting (up to ``max_size``, default
        ``max_workers``), and releases actors idle for ``idle_timeout`` seconds
        (down to ``min_size``); all are released at the end.  With
        ``batch_size``, each call receives a list of up to that many items and
        must return one result per item.  Results come in input order, or as
        they finish with ``ordered=False``.
        """
        return map_actors(self, cls, iterable, args=args, kwargs=kwargs or {}, min_size=min_size,
                          max_size=max_size if max_size is not None else self._executor.max_workers,
                          batch_size=batch_size, ordered=ordered, idle_timeout=idle_timeout,
                          kill=self._executor.kill)


def _start_actor(ex: Executor, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: ActorOptions) -> ActorHandle[Any]:
    """``Executor.actor()`` and ``options(...).actor()``: check, record and start the actor."""
    if not isinstance(cls, type):
        raise TypeError(
            f"actor() needs a class, got {type(cls).__name__} {cls!r}; for a function, "
            "use submit()"
        )
    if not ex._backend.supports_actors:
        raise ValueError(f"the {ex._backend.name!r} backend does not run actors")
    if (options.max_restarts or options.max_task_retries) and not ex._backend.supports_actor_restarts:
        raise ValueError(f"the {ex._backend.name!r} backend cannot restart an actor: max_restarts and "
                         "max_task_retries need backend='processes' or 'ray'")
    if options.call_timeout is not None and not ex._backend.supports_timeouts:
        raise ValueError(f"the {ex._backend.name!r} backend cannot stop a running call: call_timeout "
                         "needs backend='processes'")
    if ex.closed:
        raise RuntimeError("cannot create actors after shutdown")
    actor, new = ex._actors.create(cls, args, kwargs, options)
    if new:
        try:
            ex._backend.start_actor(actor)
        except BaseException as exc:
            with actor.lock:
                actor.mark_dead(ActorDiedError(f"the actor {actor.label} could not be started: {exc}",
                                               actor=actor.label))
            raise
    return handle_of(actor)


def _attempt(ex: Executor, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             budget: int) -> tuple[cf.Future[Any], Task]:
    """One attempt of a task that ``submit`` reruns on exceptions (see poolx._retry)."""
    task = ex.submit_task(fn, args, kwargs, budget)
    return task.future, task


def _release_shared_memory(closing: Executor) -> None:
    """After the last executor with shared memory stops: unmap the free segments kept for reuse."""
    if not any(ex is not closing and not ex.closed and ex._backend.supports_shared_memory
               for ex in list(_live)):
        _shm.release_memory()


def _dead_or_foreign(executor: Executor, handle: ActorHandle[Any]) -> set[int]:
    """Ids of actors of ``executor`` that have died (killing those again is a no-op)."""
    actor = owner_of(handle, look_up=False)
    if actor is not None and actor.directory is executor._actors:
        return {actor.id}
    return set()
