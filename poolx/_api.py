"""The Ray-style API: ``@poolx.remote``, ``get``, ``wait``, ``put`` and friends.

Code written in Ray's teaching style runs with ``import poolx as ray`` on one
machine, with no cluster.  Everything goes through one ``poolx.Executor``,
created by ``init()`` or at the first call that needs it.

Inside a task of the processes backend, ``f.remote()`` and ``get`` reach the
driver through the worker's connection to it (``_client``): tasks may submit
tasks and wait for them (a tree of tasks).  A worker blocked in ``get`` or
``wait`` gives its slot back while it waits, as Ray's do, so a tree deeper
than the number of workers does not deadlock (see ``blocking``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import functools
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import _arguments, _context, _shm
from ._errors import GetTimeoutError, PoolxError, RayTaskError, TaskCancelledError, WorkerDiedError
from ._executor import Executor
from ._futures import Future, Task, lent_slot
from ._objects import ObjectRef, PutRef, dependencies, request, resolve
from ._ray_calls import RayActorHandle, bad_call, mark_ref, method, signature_check, split
from ._ray_resources import Resources, declared, requested
from ._retry import retrying
from .actors.handle import ActorHandle, owner_of
from .actors.handle import get_actor as actor_named

__all__ = [
    "ObjectRef",
    "available_resources",
    "cancel",
    "cluster_resources",
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "kill",
    "method",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "wait",
]

# Seconds init() waits for the workers it starts to be ready (it goes on regardless).
INIT_READY_TIMEOUT = 30.0
# Ray's default for tasks: run again up to 3 times when the worker dies.
DEFAULT_MAX_RETRIES = 3

_lock = threading.RLock()
_executor: Any = None  # the Executor of init(), or of the first call that needed one
_resources = Resources({})  # the logical resources init() declared (num_gpus, resources)
# The actors made through this API, for shutdown() to kill (records: weakly).
_actors: weakref.WeakSet[Any] = weakref.WeakSet()

TASK_OPTIONS = ("max_retries", "name", "num_cpus", "num_gpus", "num_returns", "resources", "retry_exceptions")
ACTOR_OPTIONS = ("get_if_exists", "lifetime", "max_concurrency", "max_restarts", "max_task_retries",
                 "name", "num_cpus", "num_gpus", "resources")
# init() arguments of Ray's that mean nothing on one machine without an
# object store or a dashboard: accepted, no effect.
IGNORED_INIT = ("object_store_memory", "include_dashboard", "log_to_driver", "logging_level")


# -- the executor behind the API --------------------------------------------------


def init(num_workers: int | None = None, backend: str | None = None, *, num_cpus: int | None = None,
         num_gpus: float | None = None, resources: dict[str, float] | None = None,
         ignore_reinit_error: bool = False, local_mode: bool = False, **executor_options: Any) -> Any:
    """Start the executor the Ray-style API runs on; returns it (a ``poolx.Executor``).

    ``num_workers`` (or Ray's spelling ``num_cpus``) defaults to the CPUs this
    process may use; ``backend`` to ``"processes"`` (``local_mode=True``, Ray's
    debugging mode, means ``"serial"``).  The workers start now, and init()
    returns once they are ready, as Ray's does.  Other keyword arguments go to
    ``poolx.Executor`` (``mp_context``, ``initializer``, ``initargs``,
    ``max_tasks_per_child``, ``task_timeout``, ``max_memory_per_child``, ``init_timeout``);
    retries are per function, Ray's ``max_retries``/``retry_exceptions``.  Calling it twice raises, unless
    ``ignore_reinit_error=True``, as in Ray.

    ``num_gpus`` and ``resources`` (``{"name": amount}``) declare logical
    resources, counts as in Ray: tasks that ask for them
    (``@remote(num_gpus=1)``) run only as many at once as they allow
    (``poolx._ray_resources``).  Ray's ``object_store_memory``,
    ``include_dashboard``, ``log_to_driver`` and ``logging_level`` are
    accepted and have no effect.
    """
    global _executor
    if _in_worker():
        # Ray scripts call init() at their top level, which a poolx worker runs
        # again when it imports the script (spawn, forkserver): inside a worker
        # the API already reaches the executor running it.
        return None
    if num_cpus is not None:
        if num_workers is not None and num_workers != num_cpus:
            raise ValueError(f"init(num_workers={num_workers}, num_cpus={num_cpus}): give one of them "
                             "(num_cpus is Ray's name for the number of workers)")
        num_workers = num_cpus
    if num_workers is not None:  # checked here to name the argument given (see _arguments)
        name = "num_cpus" if num_cpus is not None else "num_workers"
        num_workers = _arguments.worker_count(num_workers, name)
    if local_mode:
        if backend not in (None, "serial"):
            raise ValueError(f"init(local_mode=True, backend={backend!r}): local mode is the serial backend")
        backend = "serial"
    for name in IGNORED_INIT:
        executor_options.pop(name, None)
    totals = declared(num_gpus, resources)
    allowed = {"mp_context", "initializer", "initargs", "max_tasks_per_child", "task_timeout",
               "max_memory_per_child", "init_timeout", "address"}
    unknown = sorted(set(executor_options) - allowed)
    if unknown:
        hint = ""
        raise TypeError(f"init() got unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}{hint}; it accepts num_workers (or num_cpus), "
                        f"backend, ignore_reinit_error, local_mode, {', '.join(sorted(allowed))}")
    with _lock:
        if is_initialized():
            if ignore_reinit_error:
                return _executor
            raise RuntimeError("poolx.init() was already called (or a remote call started the executor): "
                               "call poolx.shutdown() first, or pass ignore_reinit_error=True")
        global _resources
        _executor = Executor(num_workers, backend=backend, **executor_options)
        _resources = Resources(totals)
        # Workers start now, as Ray's do at init(): the first tasks do not wait for them.
        _executor.prestart(INIT_READY_TIMEOUT)
        return _executor


def is_initialized() -> bool:
    """Whether the executor of the Ray-style API is running (always true inside a task)."""
    return _executor is not None or _in_worker()


def _in_worker() -> bool:
    """Whether this is a poolx worker or actor process (also while it imports the main script)."""
    if _context.in_child():
        return True
    import multiprocessing

    return multiprocessing.current_process().name.startswith(("poolx-worker-", "poolx-actor-"))


def shutdown() -> None:
    """Stop the executor of the Ray-style API (no-op inside a task).

    As Ray's, it kills the actors made through this API at once, calls
    running or not (their refs fail with ``ActorDiedError``); the tasks
    already submitted run to the end first, and those still waiting for
    resources are cancelled.
    """
    global _executor
    with _lock:
        executor, _executor = _executor, None
        actors, resources = list(_actors), _resources
        _actors.clear()
    if executor is None:
        return
    resources.cancel_waiting()
    executor.observe_closing()  # (a profile reads the actors' processes before they are killed)
    for actor in actors:
        actor.directory.backend.stop_actor(actor, kill=True, restart=False)
    executor.shutdown(wait=True)


def _get_executor() -> Any:
    with _lock:
        if _executor is None:
            init()
        return _executor


def cluster_resources() -> dict[str, float]:
    """``{"CPU": workers}`` and the resources ``init`` declared (``GPU``, custom ones), as Ray reports."""
    return {"CPU": float(_get_executor().max_workers), **_resources.totals}


def available_resources() -> dict[str, float]:
    """``cluster_resources()`` less the ``GPU`` and custom resources running tasks hold.

    ``CPU`` stays the number of workers: poolx does not count tasks' CPUs.
    """
    return {"CPU": float(_get_executor().max_workers), **_resources.available()}


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """The finished tasks and actor calls as Chrome trace events (Ray's ``ray.timeline``).

    One lane per worker and per actor (``Executor.export_trace``).  With
    ``filename``, writes them there as JSON (open it in https://ui.perfetto.dev
    or chrome://tracing) and returns None; without, returns the list of events.
    """
    executor = _executor
    if executor is None:
        raise RuntimeError("poolx.timeline() needs the executor: call poolx.init() (or run a task) first")
    if filename is not None:
        executor.export_trace(filename)
        return None
    return executor.telemetry.trace_events(executor.backend)


# -- remote functions and classes --------------------------------------------------------


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote task, or a class an actor class (Ray's ``@ray.remote``).

    ``@poolx.remote`` or ``@poolx.remote(max_retries=1, num_returns=2)``.
    ``f.remote(*args)`` returns a future (an ``ObjectRef``); ``Cls.remote(*args)``
    starts an actor and returns its handle.  Futures among the arguments are
    resolved first (see ``poolx.Executor.submit``).
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise TypeError("@poolx.remote takes a function or a class, or only keyword options: "
                        "@poolx.remote(max_retries=1)")
    return lambda obj: _make(obj, options)


def _make(obj: Any, options: dict[str, Any]) -> Any:
    if isinstance(obj, type):
        return RemoteClass(obj, _check(options, ACTOR_OPTIONS, "an actor class"))
    if callable(obj):
        return RemoteFunction(obj, _check(options, TASK_OPTIONS, "a remote function"))
    raise TypeError(f"@poolx.remote needs a function or a class, got {type(obj).__name__} {obj!r}")


def _check(options: dict[str, Any], known: Sequence[str], what: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                        f"for {what}; poolx accepts: {', '.join(known)}")
    requested(options, what)  # (checks num_gpus and resources)
    n = options.get("num_returns", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_returns must be an integer >= 1, got {n!r}")
    r = options.get("max_retries", 0)
    if not isinstance(r, int) or isinstance(r, bool) or r < -1:
        raise ValueError(f"max_retries must be an integer >= 0, or -1 for no limit; got {r!r}")
    lifetime = options.get("lifetime")
    if lifetime not in (None, "non_detached", "detached"):
        raise ValueError(f"lifetime={lifetime!r}: Ray's lifetimes are None, 'non_detached' and 'detached'")
    # Every poolx actor lives until it is killed or the executor shuts down,
    # whatever becomes of its handles: what "detached" means within one
    # program.  Outliving the driver needs Ray itself (backend="ray").
    return dict(options)


class RemoteFunction:
    """A function made remote: call it with ``.remote(*args, **kwargs)``."""

    def __init__(self, function: Callable[..., Any], options: dict[str, Any]) -> None:
        self._function = function
        self._options = options
        self.__qualname__: str = getattr(function, "__qualname__", type(function).__qualname__)
        functools.update_wrapper(self, function)
        self._check = signature_check(function)
        self._where = f"{self.__qualname__}.remote()"

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function as a task; returns its future (a list of them with ``num_returns``).

        A call that does not fit the function's signature raises ``TypeError``
        here, as in Ray.  A task that asks for resources (``num_gpus``,
        ``resources``) waits for them in the driver (``poolx._ray_resources``).
        """
        check = self._check
        if check is not None:  # (inline: this is every task's path)
            try:
                check(*args, **kwargs)
            except TypeError as exc:
                raise bad_call(exc, self._where, self._function) from None
        options = self._options
        future: cf.Future[Any]
        if ("num_gpus" in options or "resources" in options) and (need := self._needs()):
            _get_executor()
            resources = _resources
            resources.check(need, self._where)
            future = resources.run(need, lambda: self._run(args, kwargs))
        else:
            future = self._run(args, kwargs)
        n_returns = options.get("num_returns", 1)
        return future if n_returns == 1 else split(future, n_returns, self.__qualname__)

    def _needs(self) -> dict[str, float]:
        """The resources a call holds while it runs: none inside a task (see poolx._ray_resources)."""
        return {} if _context.in_child() else requested(self._options, self._where)

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        options = self._options
        retries = options.get("max_retries", DEFAULT_MAX_RETRIES)
        retry_on = _arguments.retry_exceptions(options.get("retry_exceptions", False))
        if retry_on:
            fn = self._function
            future = mark_ref(retrying(lambda budget: _attempt(fn, args, kwargs, budget), retries, retry_on,
                                       lambda: not _context.in_child() and not is_initialized()))
        else:
            future = _submit(self._function, args, kwargs, retries)
        return future

    def options(self, **options: Any) -> RemoteFunction:
        """The same function with these options for the next calls (Ray's ``f.options(...)``)."""
        new = copy.copy(self)  # (keeps the signature check made once)
        new._options = {**self._options, **_check(options, TASK_OPTIONS, "a remote function")}
        return new

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"remote functions are called with .remote(): use {self.__qualname__}.remote(...) "
                        f"(it returns a future), or {self.__qualname__}._function(...) to run it here")

    def __repr__(self) -> str:
        return f"<poolx.RemoteFunction {self.__qualname__}>"


class RemoteClass:
    """A class made an actor class: ``Cls.remote(*args)`` starts an actor."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = options
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__
        self._check = signature_check(cls)
        self._where = f"{cls.__qualname__}.remote()"

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[Any]:
        """Start an actor owning ``Cls(*args, **kwargs)``; returns its handle.

        A call that does not fit the constructor raises ``TypeError`` here, as
        in Ray.  Futures among the arguments are waited for here before the
        actor starts (Ray starts it later, without waiting).  ``num_gpus`` and
        ``resources`` are checked against what ``init`` declared, not held.
        """
        if _context.in_child():
            raise PoolxError("poolx actors are created by the driver: create the actor there and pass "
                             "its handle to the task")
        if self._check is not None:
            try:
                self._check(*args, **kwargs)
            except TypeError as exc:
                raise bad_call(exc, self._where, self._cls) from None
        options = {k: v for k, v in self._options.items() if k not in ("lifetime", "num_gpus", "resources")}
        executor = _get_executor()
        _resources.check(requested(self._options, self._where), self._where)
        if dependencies(args, kwargs):
            args, kwargs = resolve(args, kwargs, prepickled=False)
        handle = executor.options(**options).actor(self._cls, *args, **kwargs)
        # The API's handle: its calls are checked and its refs print as Ray's (it pickles as a plain one).
        handle.__class__ = RayActorHandle
        record = owner_of(handle)
        if record is not None:
            _actors.add(record)
        return handle

    def options(self, **options: Any) -> RemoteClass:
        """The same class with these actor options (``name=``, ``max_restarts=``, ...)."""
        new = copy.copy(self)  # (keeps the signature check made once)
        new._options = {**self._options, **_check(options, ACTOR_OPTIONS, "an actor class")}
        return new

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actors cannot be instantiated directly: instead of {self.__qualname__}(...), "
                        f"use {self.__qualname__}.remote(...)")

    def __repr__(self) -> str:
        return f"<poolx.RemoteClass {self.__qualname__}>"


def _submit(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            retries: int) -> Future[Any]:
    return _attempt(fn, args, kwargs, retries)[0]


def _attempt(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             retries: int) -> tuple[Future[Any], Task | None]:
    """Submit one task; its future, and its Task where it is this process's (in the driver)."""
    if _context.in_child():
        return mark_ref(_context.here.client.submit(fn, args, kwargs, retries)), None
    executor = _get_executor()
    task = executor.submit_task(fn, args, kwargs, retries, readonly_args=True)
    task.future._poolx_task = task.id  # for cancel()
    return task.future, task


# -- get / wait / put / cancel / kill ------------------------------------------------------------


def _refs(value: Any, fn: str) -> list[cf.Future[Any]]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"{fn}() takes a list of refs (futures from .remote() or put()), got "
                        f"{type(value).__name__}")
    for i, ref in enumerate(value):
        if not isinstance(ref, cf.Future):
            raise TypeError(f"{fn}(): item {i} is a {type(ref).__name__}, not a ref (a future from "
                            ".remote() or put())")
    return list(value)


def get(refs: Any, *, timeout: float | None = None) -> Any:
    """The value of a ref, or a list of values for a list of refs (Ray's ``ray.get``).

    Waits for them.  A task's exception is raised here as Ray raises it: an
    instance of both ``RayTaskError`` and the exception's own class, so
    ``except ValueError`` still catches it (``poolx.RayTaskError`` says how
    close to Ray's it is); poolx's own errors are raised as themselves.  A
    task that called ``sys.exit()`` raises ``WorkerCrashedError`` (poolx's
    ``WorkerDiedError``), as in Ray.  With ``timeout`` (seconds), raises
    ``GetTimeoutError`` (a ``TimeoutError``) if they are not all ready by
    then; the tasks go on.
    """
    single = isinstance(refs, cf.Future)
    items = [refs] if single else _refs(refs, "get")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    values = []
    request(items)
    with blocking(items):
        for ref in items:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(ref.result(remaining))
            except TaskCancelledError:
                raise
            except cf.CancelledError:
                raise TaskCancelledError("get(): the task was cancelled before it ran") from None
            except (TimeoutError, cf.TimeoutError) as exc:  # (distinct classes on Python 3.10)
                if ref.done():
                    raise _task_error(exc) from exc.__cause__  # the task itself raised a TimeoutError
                pending = sum(1 for r in items if not r.done())
                raise GetTimeoutError(f"get() timed out after {timeout} s: {pending} of {len(items)} "
                                      "refs not ready") from None
            except (Exception, SystemExit) as exc:
                error = _task_error(exc)
                if error is exc:
                    raise
                raise error from exc.__cause__
    return values[0] if single else values


def _task_error(exc: BaseException) -> BaseException:
    """What ``get`` raises for a ref whose task raised ``exc`` (Ray's types)."""
    if isinstance(exc, SystemExit):
        return WorkerDiedError(
            f"the task called sys.exit({exc.code!r}): in Ray that ends its worker, and get() raises "
            "WorkerCrashedError, as here (poolx's worker lives on and the task is not run again). "
            "Return a value or raise an exception in the task instead",
            exitcode=exc.code if isinstance(exc.code, int) else 1)
    return RayTaskError.wrap(exc)


def wait(refs: Any, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[Any], list[Any]]:
    """Wait until ``num_returns`` of ``refs`` are ready, or ``timeout`` seconds have passed.

    Returns ``(ready, not_ready)``, each in the order of ``refs``; ``ready``
    holds at most ``num_returns`` refs (fewer after a timeout, possibly none;
    ``timeout=0`` just looks).  A failed task counts as ready: its error is
    raised by ``get``.  (Ray's ``ray.wait``; ``fetch_local`` is accepted and
    has no effect on one machine.)
    """
    if isinstance(refs, cf.Future):
        raise TypeError("wait() takes a list of refs, got a single ref: use wait([ref])")
    items = _refs(refs, "wait")
    if len({id(r) for r in items}) != len(items):
        raise ValueError("wait() needs a list of distinct refs; this one holds a ref more than once")
    if isinstance(num_returns, float) and num_returns >= 1:
        num_returns = int(num_returns)  # as Ray: len(refs) / 2 + 1 means its whole part
    if not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"num_returns must be an integer >= 1, got {num_returns!r}")
    if num_returns > len(items) and items:
        raise ValueError(f"num_returns={num_returns} is more than the {len(items)} refs given")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    if not items:
        return [], []
    deadline = None if timeout is None else time.monotonic() + timeout
    request(items)
    with blocking(items):
        while True:
            pending = [r for r in items if not r.done()]
            if len(items) - len(pending) >= num_returns:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            cf.wait(pending, timeout=remaining, return_when=cf.FIRST_COMPLETED)
    ready: list[Any] = []
    not_ready: list[Any] = []
    for ref in items:
        (ready if ref.done() and len(ready) < num_returns else not_ready).append(ref)
    return ready, not_ready


def put(obj: Any) -> PutRef:
    """Store ``obj`` once and return a ref to pass to tasks (Ray's ``ray.put``); see ``Executor.put``."""
    if _context.in_child():
        if isinstance(obj, cf.Future):
            raise TypeError("put() of a ref is not allowed (as in Ray): pass the ref itself")
        return PutRef(obj, _shm.SHARED if _shm.AVAILABLE else _shm.NONE)
    return _get_executor().put(obj)  # type: ignore[no-any-return,unused-ignore]


def cancel(ref: Any, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel a task (Ray's ``ray.cancel``).

    A task that has not started is cancelled (``get`` raises
    ``TaskCancelledError``).  A running one is stopped only with ``force=True``:
    its worker is killed and replaced (other tasks go on).  Without ``force``
    a running task finishes.  Actor calls cannot be stopped with ``force``,
    as in Ray; ``recursive`` is accepted (tasks the task submitted are not
    cancelled).
    """
    if not isinstance(ref, cf.Future):
        raise TypeError(f"cancel() takes a ref (a future from .remote()), got {type(ref).__name__}")
    if isinstance(ref, PutRef):
        raise TypeError("cancel(): this ref comes from put(), not from a task")
    ref = ref.__dict__.get("_poolx_inner", ref)  # (a task that waited for resources: its own future)
    if ref.done() or ref.cancel():
        return
    task_id = getattr(ref, "_poolx_task", None)
    if task_id is None:
        if force:
            raise ValueError("cancel(force=True) is not supported for actor calls (as in Ray); use "
                             "poolx.kill(actor) to stop the actor")
        return
    if force:
        executor = _executor
        if executor is None:
            return
        if not executor.supports_terminate:
            raise ValueError(f"cancel(force=True): the {executor.backend!r} backend cannot stop a running "
                             "task; use the processes backend (poolx.init(backend='processes'))")
        executor.stop_tasks([_TaskRef(task_id, ref)])


class _TaskRef:
    """What ``Executor.stop_tasks`` reads of a task: its id and future."""

    __slots__ = ("future", "id")

    def __init__(self, task_id: int, future: cf.Future[Any]) -> None:
        self.id = task_id
        self.future = future


def kill(actor: ActorHandle[Any], *, no_restart: bool = True) -> None:
    """Stop an actor at once (Ray's ``ray.kill``): its pending calls fail with ``ActorDiedError``.

    With ``no_restart=False`` it is started again if its ``max_restarts`` allows.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, got {type(actor).__name__}")
    if _context.in_child():
        raise PoolxError("kill() is called by the driver, which owns the actors")
    owner = owner_of(actor)
    if owner is None:
        return  # already dead and forgotten
    owner.directory.backend.stop_actor(owner, kill=True, restart=not no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle[Any]:
    """A handle to the live actor named ``name`` (Ray's ``ray.get_actor``).

    In the driver: the actor of that name in this process's executors; in a
    task or an actor: the one in the executor running it.  ``namespace`` is
    accepted for Ray's signature and must be None.
    """
    if namespace is not None:
        raise ValueError("get_actor(namespace=...): poolx has no namespaces; actor names are per executor")
    handle = actor_named(name)
    if owner_of(handle) is not None:  # (in the driver: the API's handle, as Cls.remote() gives)
        handle.__class__ = RayActorHandle
    return handle


@contextlib.contextmanager
def blocking(refs: Sequence[cf.Future[Any]]) -> Iterator[None]:
    """Around a wait for ``refs``: lend this worker's slot while it waits.

    In a task worker of the processes backend the driver starts another
    worker for as long as this one waits; on the threads backend the pool
    gets one more thread.  Nothing is done when every ref is already done.
    """
    if all(r.done() for r in refs):
        yield
        return
    with lent_slot():
        yield
