"""The actor process: the child side of one actor on the processes backend.

It boots like a task worker (SIGINT ignored, progress cell, watchdog, client
channel), builds the instance, says READY (or INIT_FAILED with the
constructor's exception), then reads CALLS messages and runs each call through
the runner that fits the class (``poolx.actors.runner``): in this main thread,
one after another, for a plain class; on ``max_concurrency`` threads; or on
an event loop for a class with ``async def`` methods.  Results go back batched
as a task worker's do (``_worker.Worker.add``/``flush``); a runner on other threads
flushes each result at once.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

from .... import _serialization as ser
from .... import _shm
from ....actors.runner import InlineRunner, make_runner
from .. import _channel
from .. import protocol as P
from .._cell import FINISHED, RUNNING, STARTED
from ._boot import boot, run_exit_hooks, start_hook, stop_hook
from ._worker import Worker

# Thread-pool sizes of the common numeric libraries, capped by num_cpus.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def main(sock: socket.socket, client: socket.socket, progress: Any, setup: P.ActorSetup) -> None:
    """Entry point of an actor process."""
    sock, client, cell = boot(sock, client, progress, "actor")
    hook = start_hook(setup.hook, f"actor {setup.label}")
    if setup.num_cpus is not None:
        for name in THREAD_ENV:
            os.environ.setdefault(name, str(max(1, int(setup.num_cpus))))
    worker = ActorWorker(sock, cell)
    try:
        try:
            cls, args, kwargs = ser.loads(*setup.spec)
        except BaseException as exc:
            worker.init_failed(exc)
            return
        runner = make_runner(cls, args, kwargs, setup.max_concurrency, inline=True,
                             on_done=worker.done, on_start=worker.started, label=setup.label)
        del args, kwargs
        worker.runner = runner
        worker.eager = not _inline(runner)
        runner.start()
        runner.ready.wait()
        if runner.init_error is not None:
            worker.init_failed(runner.init_error)
            return
        _channel.send_all(sock, _channel.encode([P.control(P.READY, os.getpid())]))
        worker.loop()
        runner.stop()
        runner.join(None)
        worker.flush()
    except (_channel.ChannelClosed, BrokenPipeError, ConnectionResetError):
        pass  # the driver is gone
    finally:
        stop_hook(hook)
    run_exit_hooks()


def _inline(runner: Any) -> bool:
    return isinstance(runner, InlineRunner)


class ActorWorker(Worker):
    def __init__(self, sock: socket.socket, cell: Any) -> None:
        super().__init__(sock, cell, None)
        self.runner: Any = None
        self.unpickle_s: dict[int, float] = {}  # by call id, until the call is done

    def init_failed(self, exc: BaseException) -> None:
        info = P.error_info(exc)
        P.forget_traceback(exc)
        try:
            data: bytes | None = ser.dumps(exc)[0]
        except BaseException:
            data = None
        _channel.send_all(self.sock, _channel.encode([P.control(P.INIT_FAILED, *info, data)]))
        self.sock.close()
        sys.exit(1)

    def run_batch(self, control: tuple[Any, ...], msg: list[Any]) -> None:
        _, records = control
        oob = 1
        runner = self.runner
        for call_id, method, payload, n_oob in records:  # protocol.CallRecord
            if payload:
                buffers = msg[oob : oob + n_oob]
                oob += n_oob
                t0 = time.perf_counter()
                try:
                    args, kwargs = ser.loads(payload, buffers)
                except BaseException as exc:
                    now = time.perf_counter()
                    self.add(call_id, P.BAD_TASK, b"", (), t0, now, P.error_info(exc), now - t0)
                    continue
                self.unpickle_s[call_id] = time.perf_counter() - t0
            else:
                args, kwargs = (), {}
            runner.submit(call_id, method, args, kwargs)

    def started(self, call_id: int) -> None:
        self.views.times[STARTED] = time.perf_counter()  # (call_timeout)
        self.views.words[RUNNING] = call_id
        self.views.words[FINISHED] = 0
        self.running = call_id
        if self.results and not self.wake.is_set():
            self.wake.set()

    def done(self, call_id: int, ok: bool, value: Any, t_start: float, t_end: float) -> None:
        if not t_start:
            t_start = t_end = time.perf_counter()
        # Unpickling the arguments came before the call (in run_batch): the
        # record's span covers it, as a task's does.
        unpickle_s = self.unpickle_s.pop(call_id, 0.0)
        t_start -= unpickle_s
        if not ok:
            self.add_exception(call_id, value, t_start, t_end, unpickle_s)
            return
        if value is None:
            self.add(call_id, P.OK, b"", (), t_start, t_end, None, unpickle_s)
            return
        try:
            data, bufs = ser.dumps(value, _shm.EXCLUSIVE)
        except Exception as exc:
            info = (*P.error_info(exc), ser.describe(type(value)))
            self.add(call_id, P.BAD_RESULT, b"", (), t_start, t_end, info, unpickle_s)
            return
        except BaseException as exc:
            self.add_exception(call_id, exc, t_start, t_end, unpickle_s)
            return
        self.add(call_id, P.OK, data, bufs, t_start, t_end, None, unpickle_s,
                 time.perf_counter() - t_end)

