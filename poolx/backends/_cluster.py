"""What the cluster backends (dask, ray) share.

A cluster backend hands poolx's tasks and actors to an engine that owns the
worker processes.  Three parts live here:

- **On the workers**: ``run_task`` and ``ActorHost`` rebuild what the driver
  pickled and run it; the executor's initializer runs once per worker process
  before its first task, and the profiling hook wraps each task and call.
- **In the driver**: ``ClusterBackend`` keeps the stdlib's meaning of a
  future's states.  It hands the engine at most ``window`` tasks at a time
  (twice the cluster's CPUs, and up to 32 more while tasks are short); those
  are RUNNING, the rest wait in the driver, PENDING and cancellable, as
  ``ProcessPoolExecutor``'s call queue does.  An engine only needs ``send``,
  ``when_done``, ``outcome`` and ``close``.
- **Actors**: an actor is an ``ActorHost`` living as the engine's own actor;
  each engine's actor objects make the calls in the driver (``DaskActor``,
  ``RayActor``) and, through a handle passed into a task, on the workers
  (``DaskCaller``, ``RayCaller``).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import cloudpickle

from .. import _context
from .._errors import ActorDiedError, InitializerError, PoolxError, RemoteTraceback, SerializationError
from .._futures import Future, Task
from .._objects import resolve
from .._serialization import describe, unpicklable_argument
from .._telemetry import Telemetry
from ..actors.handle import ActorHandle
from . import Backend, BackendOptions

# -- on the workers ---------------------------------------------------------------

#: setups (initializer, profiling hook) this worker process has run, by key
_setups: dict[str, Setup] = {}
_setups_lock = threading.Lock()
#: per thread on a worker, while a poolx task or actor call runs: ``setup`` (its
#: executor's setup, for the tasks it submits) and ``calls`` (a task's actor calls)
_inside = threading.local()


class Setup:
    """What runs around each task of one executor on a worker: its initializer
    (once per worker process) and its profiling hook (around every task)."""

    def __init__(self, key: str, initializer: Any, initargs: tuple[Any, ...], hook: Any) -> None:
        self.key = key
        self.initializer = initializer
        self.initargs = initargs
        self.hook = hook
        self.error: BaseException | None = None


def _setup(payload: tuple[str, bytes] | None) -> Setup | None:
    if payload is None:
        return None
    key, data = payload
    with _setups_lock:
        setup = _setups.get(key)
        if setup is None:
            setup = _setups[key] = pickle.loads(data)
            if setup.initializer is not None:
                try:
                    setup.initializer(*setup.initargs)
                except BaseException as exc:
                    setup.error = exc
    if setup.error is not None:
        raise InitializerError(
            f"the initializer {describe(setup.initializer)} raised {type(setup.error).__name__}: "
            f"{setup.error} on the worker process {socket.gethostname()}:{os.getpid()}") from setup.error
    return setup


def where() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


class ClusterClient:
    """What poolx's front ends reach from inside a task or actor on a cluster's
    worker (``poolx._context.here.client``): the Ray-style API's nested tasks go
    to the engine directly; handles carry their own way to their actor."""

    def __init__(self, engine: str) -> None:
        import importlib

        self.engine = engine
        self._nested = importlib.import_module(f"poolx.backends.{engine}").nested_submit

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], retries: int) -> Future[Any]:
        # A future among the top-level arguments is waited for here (it cannot travel).
        args, kwargs = resolve(args, kwargs, prepickled=False)
        data, buffers = pickle_call(fn, args, kwargs, f"a task calling {describe(fn)}")
        return self._nested(data, buffers, getattr(_inside, "setup", None), retries)

    def get_actor(self, name: str) -> Any:
        import importlib

        caller, identity = importlib.import_module(f"poolx.backends.{self.engine}").find_actor(name)
        actor_id, label, methods = identity
        return ActorHandle(actor_id, label, name, methods, None, caller)

    def call(self, actor_id: int, label: str, method: str, args: Any, kwargs: Any) -> Any:
        raise PoolxError(f"the actor handle {label} reached this {self.engine} worker without its way to the "
                         "actor; pass handles to tasks as arguments")

    def fetch(self, ref: Any) -> None:
        raise PoolxError(f"a ref inside a container cannot be fetched on a {self.engine} worker")


_client_lock = threading.Lock()


def _become_worker(engine: str) -> None:
    """Make poolx's front ends in this worker process work through the engine (once)."""
    if _context.here.client is None:
        with _client_lock:
            if _context.here.client is None:
                _context.enter("worker", ClusterClient(engine))


def run_task(engine: str, data: bytes, buffers: list[bytes], setup_payload: tuple[str, bytes] | None
             ) -> tuple[Any, float, float, tuple[str, int]]:
    """On a worker: rebuild the call the driver pickled, and make it.

    Returns the result, when it ran (perf_counter: system-wide on Linux,
    comparable with the driver's on one machine) and on which process.
    """
    _become_worker(engine)
    setup = _setup(setup_payload)
    t_start = time.perf_counter()
    fn, args, kwargs = _loads(data, buffers)
    _inside.calls = []
    try:
        with _running(setup_payload, setup, "task"):
            result = fn(*args, **kwargs)
    finally:
        _settle_calls()
    return result, t_start, time.perf_counter(), where()


@contextlib.contextmanager
def _running(setup_payload: tuple[str, bytes] | None, setup: Setup | None, label: str) -> Iterator[None]:
    """Around a task or an actor's constructor or call on a worker: what it submits
    gets its executor's setup, and the profiling hook (if any) captures it."""
    _inside.setup = setup_payload
    hook = setup.hook if setup is not None else None
    if hook is not None:
        hook.start(label)
    try:
        yield
    finally:
        if hook is not None:
            hook.stop()


def track_call(future: Future[Any]) -> None:
    """Note an actor call made by the running task (see ``_settle_calls``)."""
    calls = getattr(_inside, "calls", None)
    if calls is not None:
        calls.append(future)


def _settle_calls() -> None:
    """Wait until the actor calls the task made have run, as on poolx's own
    backends, where they reach the actor before the task's result reaches the
    driver: a driver that waited for the task then sees their effect."""
    import concurrent.futures as cf

    calls, _inside.calls = getattr(_inside, "calls", None), None
    if calls:
        cf.wait(calls)


class ActorHost:
    """On a worker: the engine's actor that owns the user's object."""

    def __init__(self, engine: str, identity: tuple[int, str, frozenset[str]], spec: bytes,
                 buffers: list[bytes], setup_payload: tuple[str, bytes] | None) -> None:
        _become_worker(engine)
        self._identity = identity
        self.setup_payload = setup_payload
        self._setup = _setup(setup_payload)
        self._label = f"actor {identity[1]}"
        self._init_error: BaseException | None = None
        cls, args, kwargs = _loads(spec, buffers)
        try:
            with self._hooked():
                self._instance = cls(*args, **kwargs)
        except Exception as exc:  # (every call then says so; the driver stops the actor)
            self._init_error = exc

    def poolx_identity(self) -> tuple[int, str, frozenset[str]]:
        """The actor's id, label and method names (for a handle made on a worker)."""
        return self._identity

    def _hooked(self) -> Any:
        return _running(self.setup_payload, self._setup, self._label)

    def call(self, data: bytes, *buffers: Any) -> tuple[Any, float, float, tuple[str, int]]:
        """One method call: ``data`` pickles ``(method, args, kwargs)``.  (One argument
        for the engine to pass, and the buffers only when there are some: each
        argument costs Ray about 0.1 ms.)"""
        if self._init_error is not None:
            raise CreationFailed(self._init_error)
        t_start = time.perf_counter()
        method, args, kwargs = _loads(data, list(buffers))
        with self._hooked():
            value = getattr(self._instance, method)(*args, **kwargs)
        return value, t_start, time.perf_counter(), where()


class CreationFailed(Exception):
    """An actor's constructor raised ``error``: what each call of that actor raises."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class AsyncActorHost(ActorHost):
    """``ActorHost`` for a class with ``async def`` methods: its calls run on the
    engine's event loop (so the engine sees an async actor)."""

    async def call(self, data: bytes, *buffers: Any  # type: ignore[override]
                   ) -> tuple[Any, float, float, tuple[str, int]]:
        import inspect

        if self._init_error is not None:
            raise CreationFailed(self._init_error)
        t_start = time.perf_counter()
        method, args, kwargs = _loads(data, list(buffers))
        value = getattr(self._instance, method)(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return value, t_start, time.perf_counter(), where()


# -- pickling ---------------------------------------------------------------------


#: out-of-band buffers up to this size arrive writable (Ray's limit for objects
#: passed inline, 100 KiB); larger ones read-only, as Ray's zero-copy arrays
INLINE_BYTES = 100 * 1024


def _loads(data: bytes, buffers: list[Any]) -> Any:
    """On a worker: unpickle what ``_dumps`` made; small buffers writable (the
    engine may hand any buffer over read-only)."""
    return pickle.loads(data, buffers=[
        b if isinstance(b, bytearray) or memoryview(b).nbytes > INLINE_BYTES else bytearray(b)
        for b in buffers])


def _dumps(obj: Any) -> tuple[bytes, list[Any]]:
    buffers: list[pickle.PickleBuffer] = []
    data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return data, [bytearray(b.raw()) if b.raw().nbytes <= INLINE_BYTES else bytes(b.raw()) for b in buffers]


def pickle_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], what: str
                ) -> tuple[bytes, list[bytes]]:
    """``(fn, args, kwargs)`` as a pickle and its out-of-band buffers (``fn``:
    a task's callable, or an actor call's method name).

    Plain cloudpickle, not poolx's pickler: a cluster's workers have not
    imported the main script, so functions of ``__main__`` travel by value.  A
    future inside an argument cannot be fetched there (a top-level one is
    resolved in the driver before the call is sent).
    """
    try:
        return _dumps((fn, args, kwargs))
    except (Exception, SystemExit) as exc:
        culprit = unpicklable_argument(args, kwargs) or f"the callable {describe(fn)}"
        raise SerializationError(
            f"cannot pickle {culprit} of {what}: {type(exc).__name__}: {exc}. It runs on the "
            "cluster's workers, so callables and arguments must be picklable "
            "(futures only as top-level arguments)") from exc


def add_remote_traceback(error: BaseException, text: str | None) -> BaseException:
    if text and error.__cause__ is None:
        error.__cause__ = RemoteTraceback(text)
    return error


# -- in the driver ---------------------------------------------------------------


def window(cpus: int) -> int:
    """How many tasks a cluster backend hands its engine at once, for a cluster
    of ``cpus``, at least: twice its CPUs.  (``ClusterBackend`` adds up to
    ``MAX_EXTRA`` more while tasks are shorter than a round trip through the
    engine.)"""
    return 2 * max(1, cpus)


#: The most tasks handed to the engine beyond ``window``: while tasks are shorter
#: than the engine's round trip, more in flight hide it (600 tasks of 1 ms on 2
#: Dask workers took 4.4 s with 4 in flight, 2.3 s with 64, 1.7 s natively).
#: Long tasks bring it back to 0, so that what waits stays cancellable.
MAX_EXTRA = 32


#: backends with tasks queued or running
_busy: set[ClusterBackend] = set()


class ClusterBackend(Backend):
    """The driver's side of a cluster backend: the engine-neutral part."""

    uses_processes = True
    supports_actors = True
    #: the engine runs several calls of one actor at once (max_concurrency, async classes)
    supports_concurrent_actors: ClassVar[bool] = True

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        super().__init__(options, telemetry)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._extra = 0  # handed to the engine beyond window (MAX_EXTRA)
        self._queue: collections.deque[Task] = collections.deque()  # PENDING, in the driver
        self._running: dict[int, tuple[Task, Any]] = {}  # handed to the engine: task id -> handle
        self._closed = False
        self._close_when_idle = False  # shutdown(wait=False) with work left
        self._broken: BaseException | None = None
        self._lanes: dict[tuple[str, int], int] = {}  # worker process -> lane in the telemetry
        self.window = window(options.max_workers)
        self.setup_payload: tuple[str, bytes] | None = None
        if options.initializer is not None or options.child_hook is not None:
            setup = Setup(uuid.uuid4().hex, options.initializer, tuple(options.initargs), options.child_hook)
            try:
                self.setup_payload = (setup.key, cloudpickle.dumps(setup))
            except Exception as exc:
                raise SerializationError(
                    f"cannot pickle the initializer {describe(options.initializer)} or its initargs "
                    f"for the {self.name} cluster's workers: {type(exc).__name__}: {exc}") from exc

    # engine-specific ---------------------------------------------------------------

    def send(self, data: bytes, buffers: list[bytes], setup: tuple[str, bytes] | None, task: Task) -> Any:
        """Hand the pickled call to the engine; return its handle."""
        raise NotImplementedError

    def when_done(self, handle: Any, callback: Any) -> None:
        """Call ``callback()`` (from any thread) once ``handle`` has finished."""
        raise NotImplementedError

    def outcome(self, handle: Any) -> Any:
        """``run_task``'s return value for a finished handle; raises the task's error."""
        raise NotImplementedError

    def close(self) -> None:
        """Disconnect from the engine, stopping what this backend started."""

    # the protocol ---------------------------------------------------------------------

    def submit(self, task: Task) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
        data, buffers = pickle_call(task.fn, task.args, task.kwargs, f"a task calling {describe(task.fn)}")
        task.bytes_out = len(data) + sum(len(b) for b in buffers)
        task.state = (data, buffers)
        task.args, task.kwargs = (), {}
        with self._lock:
            self._queue.append(task)
            _busy.add(self)  # (alive while it has work, even if its executor is dropped)
        self._pump()

    def _pump(self) -> None:
        """Hand queued tasks to the engine while fewer than ``window`` run there."""
        while True:
            with self._lock:
                if not self._queue or len(self._running) >= self.window + self._extra:
                    return
                task = self._queue.popleft()
                broken = self._broken
                if broken is None and task.future.set_running_or_notify_cancel():
                    self._running[task.id] = (task, None)
                    cancelled = False
                else:
                    cancelled = broken is None
            if cancelled:
                self.telemetry.task_cancelled()
                continue
            if broken is not None:
                self._finish(task, broken, None)
                continue
            data, buffers = task.state
            task.state = None
            task.t_dispatch = time.perf_counter()
            try:
                handle = self.send(data, buffers, self.setup_payload, task)
            except BaseException as exc:
                self._forget(task)
                self._finish(task, exc, None)
                continue
            with self._lock:
                if task.id in self._running:
                    self._running[task.id] = (task, handle)
            self.when_done(handle, functools.partial(self._done, task, handle))

    def _forget(self, task: Task) -> None:
        with self._lock:
            self._running.pop(task.id, None)
            if not self._running and not self._queue:
                self._idle.notify_all()
                _busy.discard(self)
                close = self._close_when_idle
                self._close_when_idle = False
            else:
                close = False
        if close:  # (not on the engine's callback thread, which closing may join)
            threading.Thread(target=self.close, name="poolx-cluster-close", daemon=True).start()

    def _done(self, task: Task, handle: Any) -> None:
        try:
            value, task.t_start, task.t_end, place = self.outcome(handle)
            task.worker = self._lane(place)
            error: BaseException | None = None
            ran = task.t_end - task.t_start
            trip = time.perf_counter() - task.t_dispatch - ran
            if ran < trip:  # (see MAX_EXTRA)
                self._extra = min(MAX_EXTRA, 2 * self._extra + 1)
            else:
                self._extra //= 2
        except BaseException as exc:
            error, value = exc, None
        self._forget(task)
        if isinstance(error, InitializerError):
            self._break(error)
        self._finish(task, error, value)
        self._pump()

    def _lane(self, place: tuple[str, int]) -> int:
        lane = self._lanes.get(place)
        if lane is None:
            with self._lock:
                lane = self._lanes.setdefault(place, len(self._lanes))
            self.telemetry.worker_ready(lane, place[1])
        return lane

    def _finish(self, task: Task, error: BaseException | None, value: Any) -> None:
        task.t_done = time.perf_counter()
        if task.worker < 0:
            task.worker = 0  # (where it failed is not known here)
        if error is not None:
            task.future.set_exception(error)
            self.telemetry.task_done(task, False)
        else:
            task.future.set_result(value)
            self.telemetry.task_done(task, True)

    def _break(self, error: InitializerError) -> None:
        """The initializer failed on a worker: the executor is broken, as
        ProcessPoolExecutor's is (queued tasks fail with the same error)."""
        with self._lock:
            if self._broken is None:
                self._broken = error

    def stop_tasks(self, tasks: list[Task]) -> None:
        for task in tasks:
            task.future.cancel()  # only those still queued in the driver can be

    def stop_actor(self, actor: Any, kill: bool, restart: bool,
                   why: str = "was released") -> None:
        impl = actor.impl
        if impl is not None:
            impl.stop(kill, restart, why)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            self._closed = True
            queued = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
        for task in queued:
            if task.future.cancel():
                self.telemetry.task_cancelled()
        self._pump()  # (a cancelled task frees nothing; this only settles the idle state)
        if wait:
            with self._lock:
                self._idle.wait_for(lambda: not self._running and not self._queue)
        else:
            with self._lock:
                if self._running or self._queue:
                    self._close_when_idle = True  # the last task to finish closes
        if self.options.actors is not None:
            actors = self.options.actors.live()
            for actor in actors:
                self.stop_actor(actor, kill=False, restart=False,
                                why="was stopped: its executor was shut down")
            if wait:
                for actor in actors:
                    self.wait_actor(actor, None)
        if not self._close_when_idle:
            self.close()

    def worker_counts(self) -> dict[str, int]:
        n = len(self._lanes)
        return {"workers_alive": n, "workers_started": n, "workers_restarted": 0, "workers_died": 0}

    # -- actors -----------------------------------------------------------------------

    def check_actor(self, actor: Any) -> None:
        """Refuse what this engine cannot do for an actor, naming the option."""
        opts = actor.options
        if opts.call_timeout is not None:
            raise ValueError(f"the {self.name!r} backend cannot stop a running actor call: call_timeout "
                             "needs backend='processes'")
        if not self.supports_concurrent_actors and (actor.is_async or (opts.max_concurrency or 1) > 1):
            what = ("has async methods" if actor.is_async
                    else f"asks for max_concurrency={opts.max_concurrency}")
            raise ValueError(
                f"{actor.cls.__qualname__} {what}, but the {self.name!r} backend runs one call of an actor "
                "at a time (a Dask actor has one thread); use backend='ray' or 'processes'")

    def actor_spec(self, actor: Any) -> tuple[tuple[int, str, frozenset[str]], bytes, list[bytes]]:
        """What ``ActorHost`` is built from: identity, pickled class and arguments, buffers."""
        spec, buffers = pickle_call(actor.cls, actor.args, actor.kwargs, f"the actor {actor.label}")
        return (actor.id, actor.label, actor.methods), spec, buffers

    def call_actor(self, actor: Any, call: Any) -> None:
        data, buffers = pickle_call(call.method, call.args, call.kwargs, f"the call {call.fn}()")
        call.bytes_out = len(data) + sum(len(b) for b in buffers)
        call.args, call.kwargs = (), {}
        call.t_dispatch = time.perf_counter()
        with actor.lock:
            impl = actor.impl
            dead = impl is None or actor.status == "dead"
        if dead:
            actor.fail(call, actor.died_error())
            return
        impl.call(call, data, buffers)

    def complete_call(self, actor: Any, call: Any, outcome: Any, gone: bool = False) -> None:
        """Complete an actor call from the engine's outcome: ``run``'s value tuple, or
        an error (with ``gone``, an ``ActorDiedError`` saying the actor is dead for good)."""
        call.t_done = time.perf_counter()
        if isinstance(outcome, CreationFailed):
            error = outcome.error
            outcome = ActorDiedError(f"the actor {actor.label} could not be created: its constructor raised "
                                     f"{type(error).__name__}: {error}", actor=actor.label)
            outcome.__cause__ = error
            with actor.lock:
                actor.mark_dead(outcome)
            # (not on the engine's callback thread, which stopping may wait for)
            threading.Thread(target=self.stop_actor, args=(actor, True, False), name="poolx-actor-stop",
                             daemon=True).start()
            outcome = actor.died_error()
        if isinstance(outcome, BaseException):
            if gone and isinstance(outcome, ActorDiedError):
                with actor.lock:
                    actor.mark_dead(outcome)
            actor.complete(call, False, outcome)
            return
        value, call.t_start, call.t_end, place = outcome
        if actor.id not in self.telemetry.actor_pids:
            self.telemetry.actor_ready(actor.id, place[1])
        actor.complete(call, True, value)


class OrderedCaller:
    """Calls made one after another on one thread, each waited for before the
    next is sent: for an engine that does not keep one caller's calls in order
    (Dask).  The thread starts with the first call and ends after ``idle``
    seconds without one, or at ``close()``."""

    def __init__(self, name: str, idle: float | None = None) -> None:
        self._name = name
        self._idle = idle
        self._lock = threading.Lock()
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False

    def put(self, job: Any) -> bool:
        """Queue ``job`` (a callable); False once closed."""
        with self._lock:
            if self._closed:
                return False
            self._queue.append(job)
            self._wake.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
        return True

    def close(self, drop: bool = False) -> None:
        """Take no more jobs; with ``drop``, forget the queued ones instead of running them."""
        with self._lock:
            self._closed = True
            if drop:
                self._queue.clear()
            self._wake.notify()

    def join(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._wake.wait_for(lambda: self._queue or self._closed, self._idle)
                if not self._queue:
                    if self._closed or self._idle is not None:
                        self._thread = None
                        return
                    continue
                job = self._queue.popleft()
            job()


class EngineFuture(Future[Any]):
    """A task's future for a task it submitted itself on a cluster worker:
    ``result()`` and ``exception()`` first wait in the engine's own way
    (``engine_wait``), which lets the engine run the nested task meanwhile."""

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            self.engine_wait(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            self.engine_wait(timeout)
        return super().exception(timeout)

    def engine_wait(self, timeout: float | None) -> None:
        raise NotImplementedError


def local_future() -> Future[Any]:
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()
    return future


class DeadCaller:
    """The way to an actor that was dead when its handle was pickled: every call fails as it would
    in the driver, with the actor's ActorDiedError."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (DeadCaller, (self.message,))

    def call(self, label: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        future = local_future()
        future.set_exception(ActorDiedError(self.message, actor=label))
        return future
