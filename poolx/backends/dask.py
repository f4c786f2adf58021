"""The ``dask`` backend: tasks and actors run on a Dask distributed cluster.

``Executor(backend="dask", address="tcp://host:8786")`` connects to a running
scheduler; without an address (and without ``POOLX_DASK_ADDRESS``) it starts a
local cluster of ``max_workers`` single-threaded worker processes, and stops
it at shutdown.  Everything above the backend protocol runs unchanged (submit,
map, futures as arguments, ``poolx.Pool``, the joblib backend, the Ray-style
API); what Dask cannot do is refused by the capability flags:

- timeouts, ``max_tasks_per_child``, ``max_memory_per_child``, terminating
  running tasks: Dask's workers are not poolx's to kill;
- ``max_retries``: Dask's scheduler reruns a task whose worker died by its own
  rule (``distributed.scheduler.allowed-failures``, 3 by default);
- actor restarts and actors running several calls at once: a Dask actor has
  one thread and is not restarted when its worker dies.

An actor is a Dask actor holding poolx's ``ActorHost``.  Dask does not keep
one caller's calls in order, so each caller sends the next call only after
the previous one has returned.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import uuid
from typing import Any

from .._errors import ActorDiedError, TaskCancelledError, WorkerDiedError
from .._futures import Future, Task
from .._serialization import describe
from .._telemetry import Telemetry
from ..actors.directory import DEAD
from . import BackendOptions
from ._cluster import (
    ActorHost,
    ClusterBackend,
    DeadCaller,
    EngineFuture,
    OrderedCaller,
    add_remote_traceback,
    local_future,
    pickle_call,
    run_task,
    track_call,
    window,
)

ADDRESS_VARIABLE = "POOLX_DASK_ADDRESS"


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError("backend='dask' needs Dask's distributed scheduler: "
                          "pip install 'poolx[dask]' (or 'dask[distributed]')") from exc
    return distributed


def _error(future: Any, what: str) -> BaseException:
    """The error of a finished Dask future, as poolx's backends give it."""
    import traceback

    if future.status == "cancelled":
        return TaskCancelledError(f"{what} was cancelled on the Dask cluster")
    error = future.exception()
    if type(error).__name__ == "KilledWorker":
        died = WorkerDiedError(f"{what}: the Dask workers running it died ({error}); Dask gave up after "
                               "its scheduler's allowed-failures")
        died.__cause__ = error
        return died
    tb = future.traceback()
    return add_remote_traceback(error, "".join(traceback.format_tb(tb)) if tb is not None else None)


class DaskBackend(ClusterBackend):
    name = "dask"
    supports_concurrent_actors = False
    supports_actor_restarts = False
    supports_retries = False

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        distributed = _import_distributed()
        super().__init__(options, telemetry)
        address = options.extra.get("address") or os.environ.get(ADDRESS_VARIABLE)
        self._cluster: Any = None
        if address is None:
            self._cluster = distributed.LocalCluster(
                n_workers=options.max_workers, threads_per_worker=1, processes=True,
                dashboard_address=None, silence_logs=logging.CRITICAL)  # (poolx reports task errors)
            address = self._cluster
        try:
            self._client = distributed.Client(address, set_as_default=False)
        except BaseException:
            if self._cluster is not None:
                self._cluster.close()
            raise
        self._engine_closed = False
        self._values: dict[str, Any] = {}
        self._collector: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._collector_thread = threading.Thread(target=self._collect, name="poolx-dask-results",
                                                  daemon=True)
        self._collector_thread.start()
        threads = sum(self._client.nthreads().values())
        self.window = window(max(threads, options.max_workers if self._cluster is not None else 1))

    # -- tasks ---------------------------------------------------------------------

    def send(self, data: bytes, buffers: list[bytes], setup: tuple[str, bytes] | None, task: Task) -> Any:
        key = f"poolx-{task.id}-{uuid.uuid4().hex[:8]}"
        return self._client.submit(run_task, "dask", data, buffers, setup, key=key, pure=False)

    def when_done(self, handle: Any, callback: Any) -> None:
        # Fetching results one by one on Dask's one callback thread costs a round
        # trip each (6-9 ms measured): the collector fetches what is done in batches.
        handle.add_done_callback(lambda f: self._collector.put((f, callback)))

    def outcome(self, handle: Any) -> Any:
        if handle.key in self._values:
            return self._values.pop(handle.key)
        raise _error(handle, "the task")

    def _collect(self) -> None:
        """The collector thread: gather the results of the tasks that are done, in batches."""
        while True:
            first = self._collector.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    item = self._collector.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._collector.put(None)
                    break
                batch.append(item)
            finished = [f for f, _cb in batch if f.status == "finished"]
            try:
                values = self._client.gather(finished, errors="skip") if finished else []
                self._values.update(zip((f.key for f in finished), values, strict=False))
            except BaseException:  # (each one's outcome() then says what went wrong)
                pass
            for _f, callback in batch:
                callback()

    def close(self) -> None:
        with self._lock:
            if self._engine_closed:
                return
            self._engine_closed = True
        self._collector.put(None)
        if self._collector_thread is not threading.current_thread():
            self._collector_thread.join(30)
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def worker_counts(self) -> dict[str, int]:
        counts = super().worker_counts()
        try:
            n = len(self._client.scheduler_info().get("workers", {}))
        except Exception:
            return counts
        return {**counts, "workers_alive": n}

    # -- actors ----------------------------------------------------------------------

    def start_actor(self, actor: Any) -> None:
        self.check_actor(actor)
        identity, spec, buffers = self.actor_spec(actor)
        key = f"poolx-actor-{actor.id}-{uuid.uuid4().hex[:8]}"
        future = self._client.submit(ActorHost, "dask", identity, spec, buffers, self.setup_payload,
                                     actor=True, pure=False, key=key)
        if actor.name is not None:  # (tasks find it by name: find_actor)
            self._client.publish_dataset(**{_dataset(actor.name): [future, identity]}, override=True)
        actor.impl = DaskActor(self, actor, future)

    def wait_actor(self, actor: Any, timeout: float | None) -> None:
        impl: DaskActor | None = actor.impl
        if impl is not None:
            impl.caller.join(timeout)

    def portable_handle(self, actor: Any) -> Any:
        impl: DaskActor | None = actor.impl
        if actor.status == DEAD:
            return DeadCaller(str(actor.died_error()))
        if impl is None:
            return None
        impl.constructed.wait(60)
        return DaskCaller(impl.proxy) if impl.proxy is not None else None


def _dataset(name: str) -> str:
    return f"poolx-actor:{name}"


#: seconds between looks at whether a killed actor's call may be abandoned
_POLL = 0.2


class DaskActor:
    """The driver's side of one actor on Dask: its calls, one after another."""

    def __init__(self, backend: DaskBackend, actor: Any, future: Any) -> None:
        self.backend = backend
        self.actor = actor
        self.future = future
        self.proxy: Any = None
        self.constructed = threading.Event()
        self.pending: dict[int, Any] = {}
        self.lock = threading.Lock()
        self.killed = False
        self.caller = OrderedCaller(f"poolx-dask-actor-{actor.id}")
        self.caller.put(self._construct)

    def _construct(self) -> None:
        try:
            with self.backend._client.as_current():  # (the proxy binds to this client)
                self.proxy = self.future.result()
        except BaseException as exc:  # (not the constructor's error: ActorHost keeps that)
            error = ActorDiedError(f"the actor {self.actor.label} could not be created: "
                                   f"{type(exc).__name__}: {exc}", actor=self.actor.label)
            error.__cause__ = exc
            with self.actor.lock:
                self.actor.mark_dead(error)
            self.caller.close()
        finally:
            self.constructed.set()

    def call(self, call: Any, data: bytes, buffers: list[bytes]) -> None:
        with self.lock:
            self.pending[call.id] = call
        if not self.caller.put(functools.partial(self._call, call, data, buffers)):
            with self.lock:
                self.pending.pop(call.id, None)
            self.actor.fail(call, self.actor.died_error())

    def _call(self, call: Any, data: bytes, buffers: list[bytes]) -> None:
        with self.lock:
            if call.id not in self.pending:
                return  # killed meanwhile: its future has failed already
        if self.proxy is None:
            outcome: Any = self.actor.died_error()
        else:
            try:
                running = self.proxy.call(data, *buffers)
                while True:  # (a kill abandons the call; Dask cannot stop it)
                    try:
                        outcome = running.result(timeout=_POLL)
                        break
                    except TimeoutError:
                        if self.killed:
                            return
            except BaseException as exc:
                outcome = _actor_error(exc, self.actor.label)
        with self.lock:
            if self.pending.pop(call.id, None) is None:
                return
        self.backend.complete_call(self.actor, call, outcome)

    def stop(self, kill: bool, restart: bool, why: str) -> None:
        actor = self.actor
        if self.killed:
            return
        if kill:
            why = "was killed (executor.kill)"
        with actor.lock:
            actor.mark_dead(ActorDiedError(f"the actor {actor.label} {why}", actor=actor.label))
        if actor.name is not None:
            try:
                self.backend._client.unpublish_dataset(_dataset(actor.name))
            except Exception:
                pass
        if kill:
            self.killed = True
            self.caller.close(drop=True)
            with self.lock:
                failed = list(self.pending.values())
                self.pending.clear()
            for call in failed:
                actor.fail(call, actor.died_error())
            self.future.release()
        else:  # after the calls made so far
            self.caller.put(self.future.release)
            self.caller.close()


def _actor_error(exc: BaseException, label: str) -> BaseException:
    if isinstance(exc, RuntimeError) and "Worker holding Actor was lost" in str(exc):
        died = ActorDiedError(f"the actor {label} died with its Dask worker", actor=label)
        died.__cause__ = exc
        return died
    return exc


class DaskCaller:
    """An actor handle's way to its actor from inside a task on a Dask worker:
    calls one after another, each sent when the previous one has returned."""

    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy
        self._caller: OrderedCaller | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (DaskCaller, (self._proxy,))

    def call(self, label: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        data, buffers = pickle_call(method, args, kwargs, f"a call of {label}.{method}")
        future = local_future()
        track_call(future)

        def run() -> None:
            try:
                value = self._proxy.call(data, *buffers).result()[0]
            except BaseException as exc:
                future.set_exception(_actor_error(exc, label))
            else:
                future.set_result(value)

        if self._caller is None:
            self._caller = OrderedCaller(f"poolx-dask-caller-{describe(label)}", idle=5.0)
        self._caller.put(run)
        return future


def find_actor(name: str) -> tuple[DaskCaller, tuple[int, str, frozenset[str]]]:
    """On a worker: the actor the driver published under ``name``."""
    client = _import_distributed().get_client()
    try:
        future, identity = client.get_dataset(_dataset(name))
    except KeyError:
        raise ValueError(f"no live actor named {name!r} on this Dask cluster") from None
    return DaskCaller(future.result()), identity


class _NestedFuture(EngineFuture):
    """Waiting for a nested task on Dask secedes from the worker's thread pool."""

    def __init__(self, dask_future: Any) -> None:
        super().__init__()
        self._dask_future = dask_future

    def engine_wait(self, timeout: float | None) -> None:
        import distributed

        try:
            with distributed.worker_client():
                distributed.wait(self._dask_future, timeout=timeout)
        except Exception:
            pass  # (the done-callback gives the outcome; a timeout is raised by result())


def nested_submit(data: bytes, buffers: list[bytes], setup: tuple[str, bytes] | None,
                  retries: int) -> Future[Any]:
    """A task submitted by a task on a Dask worker (the Ray-style API's nested tasks)."""
    distributed = _import_distributed()
    client = distributed.get_client()
    dask_future = client.submit(run_task, "dask", data, buffers, setup, pure=False)
    future = _NestedFuture(dask_future)
    future.set_running_or_notify_cancel()

    def done(f: Any) -> None:
        if f.status == "finished":
            future.set_result(f.result()[0])
        else:
            future.set_exception(_error(f, "the task"))

    dask_future.add_done_callback(done)
    return future
