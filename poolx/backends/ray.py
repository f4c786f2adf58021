"""The ``ray`` backend: tasks and actors run on a Ray cluster.

``Executor(backend="ray", address="ray://host:10001")`` (or ``"auto"``, or
``POOLX_RAY_ADDRESS``) connects to a running cluster; without an address it
starts a local Ray instance with ``max_workers`` CPUs, and stops it at shutdown
(a Ray instance the program had already started is used as it is, and left
running).  As on the dask backend, everything above the backend protocol runs
unchanged.  Ray reruns a task whose worker died (``max_retries``) and
restarts actors (``max_restarts``, ``max_task_retries``) itself; timeouts,
``max_tasks_per_child``, ``max_memory_per_child`` and terminating running
tasks are refused by the capability flags.

An actor is a Ray actor holding poolx's ``ActorHost``; Ray keeps one caller's
calls in order.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from typing import Any

from .._errors import ActorDiedError, TaskCancelledError, WorkerDiedError
from .._futures import Future, Task
from .._telemetry import Telemetry
from . import BackendOptions
from ._cluster import (
    ActorHost,
    AsyncActorHost,
    ClusterBackend,
    EngineFuture,
    add_remote_traceback,
    local_future,
    pickle_call,
    run_task,
    track_call,
    window,
)

ADDRESS_VARIABLE = "POOLX_RAY_ADDRESS"

# Ray's remote versions of run_task and the hosts, made once per process (each
# ray.remote() exports a definition to the cluster).
_remote: dict[Any, Any] = {}
_remote_lock = threading.Lock()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("backend='ray' needs Ray: pip install 'poolx[ray]' (or ray)") from exc
    return ray


def _remote_of(target: Any) -> Any:
    with _remote_lock:
        remote = _remote.get(target)
        if remote is None:
            remote = _remote[target] = _import_ray().remote(target)
        return remote


def _translate(exc: BaseException, what: str) -> tuple[BaseException, bool]:
    """Ray's error for a task or call as poolx gives it, and whether an actor is gone for good.

    A task's own exception arrives as a ``RayTaskError`` that is also of the
    task's exception type: its ``cause`` is the exception itself, and Ray's
    formatted traceback becomes the ``RemoteTraceback`` cause, as on poolx's
    own backends.
    """
    from ray import exceptions as rx

    if isinstance(exc, rx.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return add_remote_traceback(cause, getattr(exc, "traceback_str", None) or str(exc)), False
        return exc, False
    if isinstance(exc, rx.ActorDiedError):
        died = ActorDiedError(f"{what}: the actor died ({_first_line(exc)})", actor=what)
        died.__cause__ = exc
        return died, True
    if isinstance(exc, rx.ActorUnavailableError | rx.RayActorError):
        died = ActorDiedError(f"{what}: the actor is unavailable ({_first_line(exc)})", actor=what)
        died.__cause__ = exc
        return died, False
    if isinstance(exc, rx.WorkerCrashedError | rx.NodeDiedError | rx.OutOfMemoryError):
        crashed = WorkerDiedError(f"{what}: the Ray worker running it died ({_first_line(exc)})")
        crashed.__cause__ = exc
        return crashed, False
    if isinstance(exc, rx.TaskCancelledError):
        return TaskCancelledError(f"{what} was cancelled on the Ray cluster"), False
    return exc, False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Results:
    """Ray results fetched in batches on one thread (``ray.wait``, then one
    ``ray.get`` for all that are ready) into plain futures, instead of
    ``ObjectRef.future()`` per ref: that costs the driver ~0.1 ms of CPU a ref,
    a third of what a small actor call costs natively."""

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[Any, cf.Future[Any]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="poolx-ray-results", daemon=True)
        self._thread.start()

    def future(self, ref: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                future.set_exception(RuntimeError("the ray backend was shut down"))
                return future
            self._pending[ref] = future
            self._wake.notify()
        return future

    def close(self) -> None:
        """Stop once what is pending has come (failing it if Ray goes first); not waited for."""
        with self._lock:
            self._closed = True
            self._wake.notify()

    def _loop(self) -> None:
        ray = self._ray
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                refs = list(self._pending)
            try:
                ready, _ = ray.wait(refs, num_returns=1, timeout=0.05)
                if ready and len(refs) > 1:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                if not ready:
                    continue
                try:
                    outcomes: list[tuple[Any, BaseException | None]] = [(v, None) for v in ray.get(ready)]
                except BaseException:
                    outcomes = []
                    for ref in ready:
                        try:
                            outcomes.append((ray.get(ref), None))
                        except BaseException as exc:
                            outcomes.append((None, exc))
            except BaseException as exc:  # Ray itself is gone: what is pending fails
                ready, outcomes = refs, [(None, exc)] * len(refs)
            with self._lock:
                futures = [self._pending.pop(ref) for ref in ready]
            for future, (value, error) in zip(futures, outcomes, strict=True):
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)


class RayBackend(ClusterBackend):
    name = "ray"

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        ray = _import_ray()
        super().__init__(options, telemetry)
        self._ray = ray
        address = options.extra.get("address") or os.environ.get(ADDRESS_VARIABLE)
        self._engine_closed = False
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            with _remote_lock:  # (definitions made for an earlier Ray instance are stale)
                _remote.clear()
            if address is None:
                ray.init(address="local", num_cpus=options.max_workers, include_dashboard=False,
                         log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        self.window = window(int(ray.cluster_resources().get("CPU", options.max_workers)))
        self._task_options: dict[int, Any] = {}  # max_retries -> run_task with those options
        self.results = _Results(ray)

    # -- tasks ---------------------------------------------------------------------

    def send(self, data: bytes, buffers: list[bytes], setup: tuple[str, bytes] | None, task: Task) -> Any:
        remote = self._task_options.get(task.max_retries)
        if remote is None:
            remote = self._task_options[task.max_retries] = _remote_of(run_task).options(
                num_cpus=1, max_retries=task.max_retries, retry_exceptions=False)
        ref = remote.remote("ray", data, buffers, setup)
        return self.results.future(ref)

    def when_done(self, handle: Any, callback: Any) -> None:
        handle.add_done_callback(lambda _f: callback())

    def outcome(self, handle: Any) -> Any:
        try:
            return handle.result()
        except BaseException as exc:
            error = _translate(exc, "the task")[0]
        raise error

    def close(self) -> None:
        # Once only: a later call (the executor's finalizer at garbage collection)
        # must not stop a Ray that another executor has started since.
        with self._lock:
            owns, self._owns_ray = self._owns_ray, False
            first, self._engine_closed = not self._engine_closed, True
        if first:
            self.results.close()
        if owns:
            self._ray.shutdown()

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        try:
            super().shutdown(wait, cancel_futures)
        finally:
            if not self._close_when_idle:
                self.close()

    # -- actors ----------------------------------------------------------------------

    def start_actor(self, actor: Any) -> None:
        self.check_actor(actor)
        actor.impl = RayActor(self, actor)

    def wait_actor(self, actor: Any, timeout: float | None) -> None:
        impl: RayActor | None = actor.impl
        if impl is not None and impl.last is not None:  # (its last call done: what it had to do is)
            try:
                self._ray.wait([impl.last], timeout=timeout)
            except Exception:
                pass

    def portable_handle(self, actor: Any) -> Any:
        impl: RayActor | None = actor.impl
        return RayCaller(impl.handle) if impl is not None else None


def _ray_name(name: str) -> str:
    """Ray's name of a poolx actor named ``name``, less its id: a new actor of that
    name may start before Ray has freed the old one's."""
    return f"poolx-actor:{len(name)}:{name}:"


class RayActor:
    """The driver's side of one actor on Ray."""

    def __init__(self, backend: RayBackend, actor: Any) -> None:
        self.backend = backend
        self.actor = actor
        self.ending: Any = None  # __ray_terminate__'s ref once released
        self.last: Any = None  # the ref of the last call made
        self.handle = self._start()

    def _start(self) -> Any:
        actor = self.actor
        opts = actor.options
        ray_options: dict[str, Any] = {
            "max_restarts": opts.max_restarts,
            "max_task_retries": opts.max_task_retries,
            "max_concurrency": opts.max_concurrency or (1000 if actor.is_async else 1),
        }
        if opts.num_cpus is not None:
            ray_options["num_cpus"] = opts.num_cpus
        if actor.name is not None:  # (tasks find it by name: find_actor)
            ray_options["name"] = f"{_ray_name(actor.name)}{actor.id}"
        identity, spec, buffers = self.backend.actor_spec(actor)
        host = _remote_of(AsyncActorHost if actor.is_async else ActorHost)
        return host.options(**ray_options).remote("ray", identity, spec, buffers, self.backend.setup_payload)

    def call(self, call: Any, data: bytes, buffers: list[bytes]) -> None:
        ref = self.last = self.handle.call.remote(data, *buffers)
        self.backend.results.future(ref).add_done_callback(lambda f: self._done(call, f))

    def _done(self, call: Any, future: Any) -> None:
        try:
            outcome, gone = future.result(), False
        except BaseException as exc:
            outcome, gone = _translate(exc, f"the actor {self.actor.label}")
            if isinstance(outcome, ActorDiedError):
                if self.actor.status == "dead" and self.actor.death is not None:
                    death = self.actor.died_error()  # killed or released: say so
                    death.__cause__ = outcome
                    outcome = death
                elif "creation task" in str(exc):
                    outcome = ActorDiedError(f"the actor {self.actor.label} could not be created: "
                                             f"{_creation_error(exc)}", actor=self.actor.label)
                    outcome.__cause__ = getattr(exc, "cause", None) or exc
                    gone = True
        self.backend.complete_call(self.actor, call, outcome, gone)

    def stop(self, kill: bool, restart: bool, why: str) -> None:
        actor = self.actor
        ray = self.backend._ray
        if kill:
            with actor.lock:
                again = restart and actor.status != "dead" and actor.may_restart()
                if not again:
                    actor.mark_dead(ActorDiedError(f"the actor {actor.label} was killed (executor.kill)",
                                                   actor=actor.label))
            old = self.handle
            if again:  # a fresh actor now, so that the calls made after kill() reach it
                self.handle = self._start()
            try:
                ray.kill(old, no_restart=True)
            except Exception:
                pass  # (gone already)
            return
        with actor.lock:
            actor.mark_dead(ActorDiedError(f"the actor {actor.label} {why}", actor=actor.label))
        if self.ending is None:
            try:
                self.ending = self.handle.__ray_terminate__.remote()  # after the calls made so far
            except Exception:
                self.ending = False  # (gone already)


def _creation_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"its constructor raised {type(cause).__name__}: {cause}"
    return _first_line(exc)


class RayCaller:
    """An actor handle's way to its actor from inside a task on a Ray worker."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayCaller, (self._handle,))

    def call(self, label: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        data, buffers = pickle_call(method, args, kwargs, f"a call of {label}.{method}")
        future = local_future()
        track_call(future)

        def done(f: Any) -> None:
            try:
                value = f.result()[0]
            except BaseException as exc:
                future.set_exception(_translate(exc, f"the actor {label}")[0])
            else:
                future.set_result(value)

        self._handle.call.remote(data, *buffers).future().add_done_callback(done)
        return future


def find_actor(name: str) -> tuple[RayCaller, tuple[int, str, frozenset[str]]]:
    """On a worker: the actor the driver started under ``name``."""
    ray = _import_ray()
    prefix = _ray_name(name)
    ids = [int(n[len(prefix):]) for n in ray.util.list_named_actors() if n.startswith(prefix)]
    for actor_id in sorted(ids, reverse=True):  # (the newest first)
        try:
            handle = ray.get_actor(f"{prefix}{actor_id}")
            return RayCaller(handle), ray.get(handle.poolx_identity.remote())
        except Exception:
            continue  # (gone meanwhile)
    raise ValueError(f"no live actor named {name!r} on this Ray cluster")


class _NestedFuture(EngineFuture):
    """Waiting for a nested task on Ray goes through ``ray.wait``, which tells Ray
    that this worker is blocked (its CPU is lent)."""

    def __init__(self, ref: Any) -> None:
        super().__init__()
        self._ref = ref

    def engine_wait(self, timeout: float | None) -> None:
        _import_ray().wait([self._ref], timeout=timeout)


def nested_submit(data: bytes, buffers: list[bytes], setup: tuple[str, bytes] | None,
                  retries: int) -> Future[Any]:
    """A task submitted by a task on a Ray worker (the Ray-style API's nested tasks)."""
    ref = _remote_of(run_task).options(num_cpus=1, max_retries=retries).remote("ray", data, buffers, setup)
    future = _NestedFuture(ref)
    future.set_running_or_notify_cancel()

    def done(f: Any) -> None:
        try:
            value = f.result()[0]
        except BaseException as exc:
            future.set_exception(_translate(exc, "the task")[0])
        else:
            future.set_result(value)

    ref.future().add_done_callback(done)
    return future
