"""The ``dask`` backend: tasks run on a Dask distributed cluster.

``Executor(backend="dask", address="tcp://host:8786")`` connects to a running
scheduler; without an address (and without ``POOLX_DASK_ADDRESS``) it starts a
local cluster of ``max_workers`` single-threaded worker processes, and stops
it at shutdown.  Everything above the backend protocol runs unchanged: submit,
map (its chunks are tasks), futures as arguments (resolved in the driver),
``poolx.Pool``, the joblib backend, the Ray-style API.

Work in progress (issue 9): actors, timeouts, worker-death retries and shared
memory are not provided here; the capability flags say so, and the Executor
refuses those options with a clear error.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import traceback
import uuid
from typing import Any

from .._errors import RemoteTraceback
from .._futures import Task
from .._serialization import describe
from .._telemetry import Telemetry
from . import Backend, BackendOptions
from ._cluster import pickle_call, unpickle_call

ADDRESS_VARIABLE = "POOLX_DASK_ADDRESS"


def _run(data: bytes, buffers: list[bytes]) -> tuple[Any, float, float, str]:
    """On a Dask worker: rebuild the call poolx pickled, and make it.

    Returns the result with when it ran (perf_counter: system-wide on Linux,
    comparable with the driver's on one machine) and on which worker.
    """
    from distributed import get_worker

    t_start = time.perf_counter()
    fn, args, kwargs = unpickle_call(data, buffers)
    result = fn(*args, **kwargs)
    return result, t_start, time.perf_counter(), get_worker().address


class DaskBackend(Backend):
    name = "dask"
    uses_processes = True

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        super().__init__(options, telemetry)
        try:
            import distributed
        except ImportError as exc:
            raise ImportError("backend='dask' needs Dask's distributed scheduler: "
                              "pip install 'poolx[dask]' (or dask[distributed])") from exc
        if options.initializer is not None:
            raise ValueError("backend='dask' does not run initializers: use a Dask WorkerPlugin "
                             "(client.register_plugin) for per-worker setup")
        address = options.extra.get("address") or os.environ.get(ADDRESS_VARIABLE)
        self._cluster: Any = None
        if address is None:
            self._cluster = distributed.LocalCluster(
                n_workers=options.max_workers, threads_per_worker=1, processes=True,
                dashboard_address=None, silence_logs=logging.CRITICAL)  # (poolx reports task errors)
            address = self._cluster
        self._client = distributed.Client(address, set_as_default=False)
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Task, Any]] = {}
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._workers: dict[str, int] = {}  # worker address -> lane in the telemetry

    def submit(self, task: Task) -> None:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        data, buffers = pickle_call(task)
        task.bytes_out = len(data) + sum(len(b) for b in buffers)
        key = f"poolx-{task.id}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            future = self._client.submit(_run, data, buffers, key=key, pure=False)
            self._pending[key] = (task, future)
        future.add_done_callback(self._done)
        # Dask does not say when a task starts: the future stays pending (and
        # cancellable: the cluster's task is cancelled with it) until it is done.
        task.future.add_done_callback(functools.partial(self._cancel_remote, key, future))

    def _cancel_remote(self, key: str, future: Any, poolx_future: Any) -> None:
        if not poolx_future.cancelled():
            return
        with self._lock:  # done as far as poolx is concerned, whatever Dask does with it now
            self._pending.pop(key, None)
            if not self._pending:
                self._idle.notify_all()
        future.cancel()

    def _done(self, future: Any) -> None:
        with self._lock:
            entry = self._pending.pop(future.key, None)
            if not self._pending:
                self._idle.notify_all()
        if entry is None:
            return
        task = entry[0]
        try:
            if future.status == "cancelled":
                error: BaseException | None = ser_cancelled(task)
                value = None
            else:
                error = future.exception()
                if error is not None:
                    tb = future.traceback()
                    if tb is not None and error.__cause__ is None:
                        error.__cause__ = RemoteTraceback("".join(traceback.format_tb(tb)))
                    value = None
                else:
                    value, task.t_start, task.t_end, address = future.result()
                    task.worker = self._workers.setdefault(address, len(self._workers))
        except BaseException as exc:  # the client is gone, or the result cannot be unpickled here
            error, value = exc, None
        task.t_done = time.perf_counter()
        if task.worker < 0:
            task.worker = 0  # (not an actor call; where it failed is unknown here)
        if not task.future.set_running_or_notify_cancel():
            self.telemetry.task_cancelled()
            return
        if error is not None:
            task.future.set_exception(error)
            self.telemetry.task_done(task, False)
        else:
            task.future.set_result(value)
            self.telemetry.task_done(task, True)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            self._closed = True
            pending = list(self._pending.values())
        if cancel_futures:
            for _task, future in pending:
                future.cancel()
        if wait:
            with self._lock:
                self._idle.wait_for(lambda: not self._pending)
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def worker_counts(self) -> dict[str, int]:
        try:
            n = len(self._client.scheduler_info().get("workers", {}))
        except Exception:
            n = 0
        return {"workers_alive": n, "workers_started": n, "workers_restarted": 0, "workers_died": 0}


def ser_cancelled(task: Task) -> BaseException:
    from .._errors import TaskCancelledError

    return TaskCancelledError(f"{describe(task.fn)} was cancelled on the Dask cluster")
