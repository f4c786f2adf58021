"""The ``ray`` backend: tasks run on a Ray cluster.

``Executor(backend="ray", address="ray://host:10001")`` (or ``"auto"``, or
``POOLX_RAY_ADDRESS``) connects to a running cluster; without an address it
starts a local Ray instance with ``max_workers`` CPUs, and stops it at shutdown
(a Ray instance the program had already started is used as it is, and left
running).  As on the dask backend, everything above the backend protocol runs
unchanged.

Work in progress (issue 9): actors, timeouts and shared memory are not
provided here; the capability flags say so.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any

from .._futures import Task
from .._telemetry import Telemetry
from . import Backend, BackendOptions
from ._cluster import pickle_call, unpickle_call

ADDRESS_VARIABLE = "POOLX_RAY_ADDRESS"


def _run(data: bytes, buffers: list[bytes]) -> tuple[Any, float, float, int]:
    """On a Ray worker: rebuild the call poolx pickled, and make it."""
    t_start = time.perf_counter()
    fn, args, kwargs = unpickle_call(data, buffers)
    result = fn(*args, **kwargs)
    return result, t_start, time.perf_counter(), os.getpid()


class RayBackend(Backend):
    name = "ray"
    uses_processes = True

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        super().__init__(options, telemetry)
        try:
            import ray
        except ImportError as exc:
            raise ImportError("backend='ray' needs Ray: pip install 'poolx[ray]' (or ray)") from exc
        if options.initializer is not None:
            raise ValueError("backend='ray' does not run initializers: set up workers in the task, or "
                             "use Ray's runtime_env / worker_process_setup_hook")
        self._ray = ray
        address = options.extra.get("address") or os.environ.get(ADDRESS_VARIABLE)
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            if address is None:
                ray.init(num_cpus=options.max_workers, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_run)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: dict[int, tuple[Task, Any]] = {}
        self._closed = False
        self._workers: dict[int, int] = {}  # worker pid -> lane in the telemetry

    def submit(self, task: Task) -> None:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        data, buffers = pickle_call(task)
        task.bytes_out = len(data) + sum(len(b) for b in buffers)
        ref = self._remote.remote(data, buffers)
        future = ref.future()
        with self._lock:
            self._pending[task.id] = (task, ref)
        future.add_done_callback(functools.partial(self._done, task))
        # Ray does not say when a task starts: the future stays pending (and
        # cancellable: Ray's task is cancelled with it) until it is done.
        task.future.add_done_callback(functools.partial(self._cancel_remote, task.id, ref))

    def _cancel_remote(self, task_id: int, ref: Any, future: Any) -> None:
        if not future.cancelled():
            return
        with self._lock:  # done as far as poolx is concerned, whatever Ray does with it now
            self._pending.pop(task_id, None)
            if not self._pending:
                self._idle.notify_all()
        try:
            self._ray.cancel(ref)
        except Exception:
            pass

    def _done(self, task: Task, future: Any) -> None:
        with self._lock:
            self._pending.pop(task.id, None)
            if not self._pending:
                self._idle.notify_all()
        try:
            value, task.t_start, task.t_end, pid = future.result()
            task.worker = self._workers.setdefault(pid, len(self._workers))
            error: BaseException | None = None
        except BaseException as exc:
            error, value = _unwrap(exc), None
        task.t_done = time.perf_counter()
        if task.worker < 0:
            task.worker = 0
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
            for _task, ref in pending:
                try:
                    self._ray.cancel(ref)
                except Exception:
                    pass
        if wait:
            with self._lock:
                self._idle.wait_for(lambda: not self._pending)
        if self._owns_ray:
            self._ray.shutdown()

    def worker_counts(self) -> dict[str, int]:
        n = len(self._workers)
        return {"workers_alive": n, "workers_started": n, "workers_restarted": 0, "workers_died": 0}


def _unwrap(exc: BaseException) -> BaseException:
    """Ray raises a RayTaskError that is also the task's exception type: give the task's own.

    Its ``cause`` is the exception the task raised; the traceback text Ray
    formatted becomes the RemoteTraceback cause, as on poolx's own backends.
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        from .._errors import RemoteTraceback

        text = getattr(exc, "traceback_str", None) or str(exc)
        if cause.__cause__ is None:
            cause.__cause__ = RemoteTraceback(text)
        return cause
    return exc
