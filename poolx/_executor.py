"""poolx.Executor: the one front door.

A drop-in ``concurrent.futures.ProcessPoolExecutor`` (same signature, same
semantics) whose work runs on a pluggable backend.  Every other front end
(Pool, the joblib backend, the Ray-style API, the profiling harness) is built
on this class and never talks to a backend directly.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import math
import multiprocessing.util
import operator
import os
import sys
import threading
import time
import traceback
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, ParamSpec, TypeVar

from . import _arguments
from . import _chunks as _chunks_mod
from ._actors import ActorDiedError, ActorDirectory, ActorHandle, ActorOptions
from ._chunks import Retry
from ._errors import RemoteError, RemoteTraceback, SerializationError, TaskCancelledError
from ._futures import Future, Task
from ._objects import PutRef, dependencies, send_resolved, when_done
from ._telemetry import TRACE_CAPACITY, Statistics, Telemetry
from .backends import Backend, BackendOptions, get_backend

P = ParamSpec("P")
T = TypeVar("T")

# Seconds of work a map() chunk should hold once the per-item cost is known: long
# enough that per-message costs vanish, short enough to balance the workers.
TARGET_CHUNK_SECONDS = 0.02
# Largest automatic chunk, in items.
MAX_AUTO_CHUNK = 65536
# map() runners kept per executor (each holds its function alive).
RUNNER_CACHE = 256
# Chunks of one map() kept in flight per worker when no buffersize is given.
MAP_INFLIGHT_PER_WORKER = 4

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


threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
# In a multiprocessing child (a poolx executor started inside another library's
# worker process), Process._bootstrap joins the children before the threading
# exit hooks run: run ours from multiprocessing's exit too, first.
multiprocessing.util.Finalize(None, _at_exit, exitpriority=100)


def default_max_workers() -> int:
    """The CPUs this process may use (affinity and cgroup quotas included)."""
    from loky import cpu_count

    return max(1, cpu_count())


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
        _child_hook: Any = None,
        _any_start_method: bool = False,
    ) -> None:
        # In the stdlib's order where it checks the same (see _arguments).
        max_workers = default_max_workers() if max_workers is None else _arguments.worker_count(max_workers)
        _arguments.context(mp_context)
        initargs = _arguments.initializer(initializer, initargs)
        max_tasks_per_child = _arguments.tasks_per_child(max_tasks_per_child)
        max_retries = _arguments.retries(max_retries)
        task_timeout = _arguments.seconds(task_timeout, "task_timeout")
        init_timeout = _arguments.seconds(init_timeout, "init_timeout")
        retry_on = retry_exceptions_tuple(retry_exceptions)
        max_memory = parse_bytes(max_memory_per_child, "max_memory_per_child")
        if max_tasks_per_child is not None:
            method = _start_method(mp_context)
            if _any_start_method:
                pass  # poolx.Pool: workers retire themselves, which fork allows (as the stdlib's Pool)
            elif method == "fork" and mp_context is None:
                mp_context = "spawn"  # as ProcessPoolExecutor does when no context was given
            elif method == "fork":
                raise ValueError(
                    "max_tasks_per_child is incompatible with the 'fork' multiprocessing "
                    "start method; supply a different mp_context."
                )
        if backend is None:
            # POOLX_BACKEND moves an unchanged program (POOLX_BACKEND=dask).
            backend = os.environ.get("POOLX_BACKEND") or "processes"
        backend_cls = get_backend(backend)
        if address is not None and backend not in ("dask", "ray"):
            raise ValueError(f"address= is the cluster to run on, for backend='dask' or 'ray'; the "
                             f"{backend!r} backend runs on this machine")
        if max_tasks_per_child is not None and not backend_cls.supports_max_tasks_per_child:
            raise ValueError(
                f"the {backend!r} backend does not support max_tasks_per_child; "
                "use backend='processes'"
            )
        if task_timeout is not None and not backend_cls.supports_timeouts:
            raise ValueError(f"the {backend!r} backend cannot stop a running task: task_timeout needs "
                             "backend='processes'")
        if init_timeout is not None and not backend_cls.supports_timeouts:
            raise ValueError(f"the {backend!r} backend cannot stop an initializer: init_timeout needs "
                             "backend='processes'")
        if max_retries and not backend_cls.supports_retries:
            raise ValueError(f"the {backend!r} backend does not take max_retries: its engine reruns a task "
                             "whose worker died by its own rule (Dask: the scheduler's allowed-failures "
                             "setting)")
        if max_memory is not None and not backend_cls.supports_worker_restart:
            raise ValueError(f"the {backend!r} backend cannot replace its workers: max_memory_per_child "
                             "needs backend='processes'")
        self._max_workers = max_workers
        self._max_retries = max_retries
        self._retry_on = retry_on
        self._telemetry = Telemetry(trace_capacity)
        self._actors = ActorDirectory(self._telemetry)
        self._backend: Backend = backend_cls(
            BackendOptions(max_workers, mp_context, initializer, initargs, max_tasks_per_child,
                           actors=self._actors, child_hook=_child_hook, task_timeout=task_timeout,
                           max_memory=max_memory, init_timeout=init_timeout,
                           extra={"address": address} if address is not None else {}),
            self._telemetry,
        )
        self._actors.backend = self._backend
        if self._backend.supports_shared_memory:
            from . import _shm

            _shm.keep_free_segments()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._feeders: list[_Feeder] = []
        self._runners: OrderedDict[tuple[Any, bool], Callable[..., Any]] = OrderedDict()
        # Tasks waiting for the futures among their arguments (see _hold).
        self._held: set[Task] = set()
        self._held_cond = threading.Condition()
        self._backend_shutdown: tuple[bool, bool] | None = None  # deferred until _held is empty
        self._left_running = False  # shut down without waiting: its work is bounded at exit (_at_exit)
        _live.add(self)
        # An executor dropped without shutdown() stops its workers once the
        # queued work is done (the backend never refers back to the executor).
        weakref.finalize(self, self._backend.shutdown, False, False)

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

    def export_trace(self, path: str | os.PathLike[str]) -> None:
        """Write the task timeline as Chrome/Perfetto trace JSON (one lane per worker).

        Open it at https://ui.perfetto.dev or chrome://tracing.
        """
        self._telemetry.export_trace(path, self._backend.name)

    # -- submitting -------------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns a Future for its result."""
        if self._retry_on:
            return self._retrying(fn, args, kwargs, self._max_retries, self._retry_on)
        return self._submit(fn, args, kwargs, self._max_retries).future

    def _retrying(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                  max_retries: int, retry_on: tuple[type[BaseException], ...],
                  readonly_args: bool = False) -> Future[Any]:
        """A future for ``fn``'s result that reruns the task when it raises one of ``retry_on``."""
        def submit(budget: int) -> tuple[cf.Future[Any], Task]:
            task = self._submit(fn, args, kwargs, budget, readonly_args)
            return task.future, task

        return retrying(submit, max_retries, retry_on, lambda: self._shutdown)

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                max_retries: int = 0, readonly_args: bool = False, chunk: bool = False) -> Task:
        if self._shutdown:
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
            from . import _shm

            task.shm = _shm.READONLY
        deps = dependencies(args, kwargs)
        if deps:
            self._telemetry.task_submitted()
            self._hold(task, deps)
            return task
        self._backend.submit(task)
        self._telemetry.task_submitted()
        return task

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
        if self._shutdown:
            raise RuntimeError("cannot put objects after shutdown")
        from . import _shm

        shm = _shm.SHARED if self._backend.supports_shared_memory else _shm.NONE
        try:
            return PutRef(obj, shm)
        except Exception as exc:
            from ._errors import SerializationError
            from ._serialization import describe

            raise SerializationError(
                f"put() cannot pickle the {describe(type(obj))}: {type(exc).__name__}: {exc}"
            ) from exc

    def _hold(self, task: Task, deps: list[cf.Future[Any]]) -> None:
        """Keep ``task`` until the futures among its arguments are done, then submit it.

        The caller does not wait: a chain ``submit(g, submit(f, x))`` is
        queued at once and g starts when f's result is in.  A failed or
        cancelled dependency fails the task with that error.
        """
        with self._held_cond:
            self._held.add(task)
        when_done(deps, lambda: self._release(task, deps))

    def _release(self, task: Task, deps: list[cf.Future[Any]]) -> None:
        try:
            future = task.future
            if future.cancelled():
                if future._state == "CANCELLED":  # cancelled by its caller while held: notify
                    future.set_running_or_notify_cancel()
                self._telemetry.task_cancelled()
                return
            def submit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                task.args, task.kwargs = args, kwargs
                self._backend.submit(task)

            error = send_resolved(deps, task.args, task.kwargs, self._backend.uses_processes,
                                  describe_callable(task.fn), submit)
            if error is None:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
                self._telemetry.task_done(task, False)
            else:
                self._telemetry.task_cancelled()
        finally:
            with self._held_cond:
                self._held.discard(task)
                deferred = self._backend_shutdown if not self._held else None
                if deferred is not None:
                    self._backend_shutdown = None
                self._held_cond.notify_all()
            if deferred is not None:
                self._backend.shutdown(*deferred)

    def _stop_tasks(self, tasks: Iterable[Task]) -> None:
        """Stop these tasks: cancel the ones not started, and on backends that
        can (``supports_terminate``) kill the workers running the others, which
        are replaced; those futures fail with ``TaskCancelledError``.  Other
        tasks are not affected.  (joblib's abort uses it; Ray's
        ``cancel(force=True)`` will.)"""
        tasks = [task for task in tasks if not task.future.done()]
        if tasks:
            self._backend.stop_tasks(tasks)

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
        at a time until the cost of an item is measured, then chunks of about
        TARGET_CHUNK_SECONDS (at most a quarter of each worker's share when the
        input has a length).  The input is consumed lazily: at most
        ``buffersize`` chunks are in flight (Python 3.14 semantics: the next
        chunk is submitted as a result is consumed); without ``buffersize``, a
        background feeder keeps a few chunks per worker in flight whether or
        not results are being consumed, so all the work runs as with the stdlib.
        """
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or > 0")
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        end_time = None if timeout is None else timeout + time.monotonic()
        sizer = _ChunkSizer(chunksize, _length(iterables), self._max_workers)
        star = len(iterables) != 1
        chunks = _chunks(zip(*iterables) if star else iter(iterables[0]), sizer)
        runner = self._runner(fn, star)
        if buffersize is not None or self._backend.runs_in_caller:
            # An in-process backend runs each chunk as it is consumed, in the caller.
            return _results_buffered(self, runner, chunks, sizer, buffersize or 1, end_time)
        feeder = _Feeder(self, runner, chunks, sizer, MAP_INFLIGHT_PER_WORKER * self._max_workers)
        return _results_fed(feeder, end_time)

    def _runner(self, fn: Callable[..., Any], star: bool) -> Callable[..., Any]:
        # The same runner object for the same fn across map() calls: the engine
        # then pickles it (with fn in its closure) once per worker and refers to
        # it by key afterwards, as it does for submit(fn).
        retry = (self._max_retries, self._retry_on) if self._retry_on else None
        try:
            runner = self._runners.get((fn, star))
        except TypeError:  # fn is not hashable
            return _chunk_runner(fn, star, retry)
        if runner is None:
            runner = self._runners[(fn, star)] = _chunk_runner(fn, star, retry)
            if len(self._runners) > RUNNER_CACHE:
                self._runners.popitem(last=False)
        return runner

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
        return ActorFactory(self, ActorOptions()).actor(cls, *args, **kwargs)

    def get_actor(self, name: str) -> ActorHandle[Any]:
        """A handle to this executor's live actor named ``name``."""
        return ActorHandle._of(self._actors.get(name))

    def kill(self, handle: ActorHandle[Any], *, no_restart: bool = True) -> None:
        """Stop an actor now: its running and pending calls fail with ``ActorDiedError``.

        With ``no_restart=False`` the actor is started again (a fresh instance)
        if its ``max_restarts`` allows, as after a crash.
        """
        if not isinstance(handle, ActorHandle):
            raise TypeError(f"kill() needs an ActorHandle, got {type(handle).__name__}")
        actor = self._actors.by_id.get(handle._id)
        if actor is None:
            if handle._id in _dead_or_foreign(self, handle):
                return  # already dead: nothing to do (as ray.kill)
            raise ValueError(f"the actor {handle._label} does not belong to this executor")
        self._backend.stop_actor(actor, kill=True, restart=not no_restart)

    def map_actors(self, cls: type, iterable: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
        """Map a callable class over ``iterable`` on a pool of actors that grows and shrinks.

        See ``ActorFactory.map_actors``.
        """
        return ActorFactory(self, ActorOptions()).map_actors(cls, iterable, **kwargs)

    def _start_actor(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
                     options: ActorOptions) -> ActorHandle[Any]:
        if not isinstance(cls, type):
            raise TypeError(
                f"actor() needs a class, got {type(cls).__name__} {cls!r}; for a function, "
                "use submit()"
            )
        if not self._backend.supports_actors:
            raise ValueError(f"the {self._backend.name!r} backend does not run actors")
        if (options.max_restarts or options.max_task_retries) and not self._backend.supports_actor_restarts:
            raise ValueError(f"the {self._backend.name!r} backend cannot restart an actor: max_restarts and "
                             "max_task_retries need backend='processes' or 'ray'")
        if options.call_timeout is not None and not self._backend.supports_timeouts:
            raise ValueError(f"the {self._backend.name!r} backend cannot stop a running call: call_timeout "
                             "needs backend='processes'")
        if self._shutdown:
            raise RuntimeError("cannot create actors after shutdown")
        actor, new = self._actors.create(cls, args, kwargs, options)
        if new:
            try:
                self._backend.start_actor(actor)
            except BaseException as exc:
                with actor.lock:
                    actor.mark_dead(ActorDiedError(f"the actor {actor.label} could not be started: {exc}",
                                                   actor=actor.label))
                raise
        return ActorHandle._of(actor)

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
            self._shutdown = True
            self._left_running = not wait
        self._actors.close()
        if cancel_futures:
            self._cancel_held()
        with self._held_cond:
            if self._held and not wait:
                # Tasks still waiting for their inputs are submitted when those
                # are done: the backend shuts down after the last of them.
                self._backend_shutdown = (False, cancel_futures)
                return
            while self._held:
                self._held_cond.wait()
        self._backend.shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait and self._backend.supports_shared_memory:
            _release_shared_memory(self)

    def _cancel_held(self) -> None:
        with self._held_cond:
            held = list(self._held)
        for task in held:
            if task.future.cancel():
                task.future.set_running_or_notify_cancel()  # wait() and as_completed() see it done

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
            self._shutdown = True
            self._left_running = True  # a task that ignores SIGTERM: killed at exit (_at_exit)
        self._actors.close()
        self._cancel_held()
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
        return self._executor._start_actor(cls, args, kwargs, self.options)

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
        from ._actor_pool import map_actors

        return map_actors(self, cls, iterable, args=args, kwargs=kwargs or {}, min_size=min_size,
                          max_size=max_size if max_size is not None else self._executor.max_workers,
                          batch_size=batch_size, ordered=ordered, idle_timeout=idle_timeout)


def _release_shared_memory(closing: Executor) -> None:
    """After the last executor with shared memory stops: unmap the free segments kept for reuse."""
    from . import _shm

    if not any(ex is not closing and not ex._shutdown and ex._backend.supports_shared_memory
               for ex in list(_live)):
        _shm.release_memory()


def describe_callable(fn: Any) -> str:
    from ._serialization import describe

    return describe(fn)


def _dead_or_foreign(executor: Executor, handle: ActorHandle[Any]) -> set[int]:
    """Ids of actors of ``executor`` that have died (killing those again is a no-op)."""
    actor = handle._actor
    if actor is not None and actor.directory is executor._actors:
        return {actor.id}
    return set()


def _start_method(mp_context: Any) -> str:
    if mp_context is None:
        from .backends.processes._backend import default_start_method

        return default_start_method()
    if isinstance(mp_context, str):
        return mp_context
    return str(mp_context.get_start_method())


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class _ChunkSizer:
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


def _chunks(items: Iterator[Any], sizer: _ChunkSizer) -> Iterator[tuple[int, list[Any]]]:
    """The input in chunks, each with the index of its first item."""
    start = 0
    while True:
        chunk = list(itertools.islice(items, sizer.next_size()))
        if not chunk:
            return
        yield start, chunk
        start += len(chunk)


class _ChunkError(Exception):
    """A map() item failed: carries the results before it and the error."""

    def __init__(self, results: list[Any], error: BaseException) -> None:
        super().__init__(results, error)
        self.results = results
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent from the worker.  Whatever the item's exception is, the driver
        # must get it (or its description), not a failure of this wrapper.
        from ._serialization import describe, dumps, loads

        error, results = self.error, self.results
        try:
            loads(*dumps(error))  # the round trip the driver will make
        except BaseException:
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            error = RemoteError(describe(type(error)), _safe_str(error), tb)
        try:
            dumps(results)
        except BaseException as exc:
            error = SerializationError(f"a result of this map() chunk could not be pickled: "
                                       f"{type(exc).__name__}: {exc}")
            results = []
        return (_ChunkError, (results, error))


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except BaseException:
        return "<str() of the exception failed>"


def _chunk_runner(fn: Callable[..., Any], star: bool,
                  retry: Retry | None) -> Callable[[list[Any], int], list[Any]]:
    """The task function of a map() over ``fn``, named after ``fn`` for traces.

    It runs in the worker (see poolx._chunks).  With one iterable the items are
    the arguments themselves (no 1-tuples to pickle); with several, each item
    is a tuple of arguments.
    """

    def run_chunk(chunk: list[Any], start: int) -> list[Any]:
        results, error = _chunks_mod.run_chunk(fn, chunk, star, start, retry)
        if error is not None:
            raise _ChunkError(results, error) from error
        return results

    return _chunks_mod.named_after(run_chunk, fn)


def _submit_chunk(ex: Executor, runner: Callable[..., Any], chunk: tuple[int, list[Any]],
                  sizer: _ChunkSizer) -> Task:
    start, items = chunk
    task = ex._submit(runner, (items, start), {}, ex._max_retries, chunk=True)
    # Measured when the chunk finishes, whether or not anyone consumes results yet.
    task.future.add_done_callback(lambda _f: sizer.observe(task, len(items)))
    return task


def _chunk_outcome(task: Task, timeout: float | None) -> tuple[list[Any], BaseException | None]:
    """The results of a finished chunk, and the item error that ended it, if any."""
    try:
        return task.future.result(timeout), None
    except _ChunkError as exc:
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


def _results_buffered(ex: Executor, fn: Callable[..., Any], chunks: Iterator[tuple[int, list[Any]]],
                      sizer: _ChunkSizer, buffersize: int, end_time: float | None) -> Iterator[Any]:
    """map() with ``buffersize``: the next chunk is submitted as one is consumed."""
    inflight: deque[Task] = deque()
    for chunk in itertools.islice(chunks, buffersize):
        inflight.append(_submit_chunk(ex, fn, chunk, sizer))

    def results() -> Iterator[Any]:
        try:
            while inflight:
                task = inflight.popleft()
                values, error = _chunk_outcome(task, _remaining(end_time))
                if error is not None:
                    yield from _drain(values)
                    raise error
                if not ex._shutdown:
                    for chunk in itertools.islice(chunks, 1):
                        inflight.append(_submit_chunk(ex, fn, chunk, sizer))
                yield from _drain(values)
        finally:
            _cancel_all(inflight)

    return results()


class _Feeder:
    """Submits map() chunks from a background thread, a bounded number in flight."""

    def __init__(self, ex: Executor, fn: Callable[..., Any], chunks: Iterator[tuple[int, list[Any]]],
                 sizer: _ChunkSizer, inflight: int) -> None:
        self.ex = ex
        self.fn = fn
        self.chunks = chunks
        self.sizer = sizer
        self.slots = threading.Semaphore(inflight)
        self.cond = threading.Condition()
        self.tasks: deque[Task] = deque()
        self.finished = False
        self.error: BaseException | None = None
        self.stopped = False
        ex._feeders.append(self)
        # Fill the first window here, so that errors in the input or at submit
        # surface from map() itself, as with the stdlib.
        self.feed(first=True)
        if not self.finished:
            self.thread: threading.Thread | None = threading.Thread(
                target=self.feed, name="poolx-map-feeder", daemon=True)
            try:
                self.thread.start()
            except BaseException:  # e.g. "can't start new thread": undo, then say so
                self.thread = None
                self.stop()
                _cancel_all(self.tasks)
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
                task = _submit_chunk(self.ex, self.fn, chunk, self.sizer)
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
            self.ex._feeders.remove(self)
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


def _results_fed(feeder: _Feeder, end_time: float | None) -> Iterator[Any]:
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
        if (error is not None and _chunks_mod.is_one_of(error, retry_on)
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


def retry_exceptions_tuple(value: Any) -> tuple[type[BaseException], ...]:
    """``retry_exceptions`` as a tuple of classes: False/None none, True any ``Exception``."""
    if value is False or value is None:
        return ()
    if value is True:
        return (Exception,)
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(t, type) and issubclass(t, BaseException)
                                               for t in value):
        return tuple(value)
    raise TypeError(f"retry_exceptions must be True, False or a list of exception classes, got {value!r}")


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(value: int | str | None, name: str) -> int | None:
    """Bytes from an int or a string such as "500MB" or "2GiB"."""
    if value is None:
        return None
    if not isinstance(value, str):
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)  # (a numpy integer too)
        except TypeError:
            raise TypeError(f"{name} must be a number of bytes (an int) or a size such as '500MB' or "
                            f"'2GiB', got {type(value).__name__} {value!r}") from None
        if value > 0:
            return value
    else:
        text = value.strip().upper().replace(" ", "")
        number = text.rstrip("KMGTIB")
        unit = text[len(number):]
        if unit in _UNITS:
            try:
                amount = float(number)
            except ValueError:
                amount = -1.0
            if amount > 0:
                return int(amount * _UNITS[unit])
    raise ValueError(f"{name} must be a positive number of bytes or a size such as '500MB' or '2GiB', "
                     f"got {value!r}")
