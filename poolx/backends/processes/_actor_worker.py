"""The actor process: the child side of one actor on the processes backend.

It boots like a task worker (SIGINT ignored, progress cell, watchdog, client
channel), builds the instance, says READY (or INIT_FAILED with the
constructor's exception), then reads CALLS messages and runs each call through
the runner that fits the class (``poolx._actor_core``): in this main thread,
one after another, for a plain class; on ``max_concurrency`` threads; or on
an event loop for a class with ``async def`` methods.  Results go back batched
as a task worker's do (``Worker.add``/``flush``); a runner on other threads
flushes each result at once.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import time
from typing import Any

from ... import _serialization as ser
from ... import _shm
from ..._actor_core import make_runner
from . import _channel
from . import _worker as W

# Thread-pool sizes of the common numeric libraries, capped by num_cpus.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


class ActorSetup:
    """What an actor process needs at start: the pickled (cls, args, kwargs) and its options."""

    def __init__(self, spec: tuple[bytes, list[bytes]], label: str, max_concurrency: int | None,
                 num_cpus: float | None, hook: bytes | None = None) -> None:
        self.spec = spec
        self.label = label
        self.max_concurrency = max_concurrency
        self.num_cpus = num_cpus
        self.hook = hook


def main(sock: socket.socket, client: socket.socket, progress: Any, setup: ActorSetup) -> None:
    """Entry point of an actor process."""
    sock, client, cell = W.boot(sock, client, progress, "actor")
    hook = W.start_hook(setup.hook, f"actor {setup.label}")
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
        _channel.send_all(sock, _channel.encode([pickle.dumps((W.READY, os.getpid()))]))
        worker.loop()
        runner.stop()
        runner.join(None)
        worker.flush()
    except (_channel.ChannelClosed, BrokenPipeError, ConnectionResetError):
        pass  # the driver is gone
    finally:
        W.stop_hook(hook)
    W.run_exit_hooks()


def _inline(runner: Any) -> bool:
    from ..._actor_core import InlineRunner

    return isinstance(runner, InlineRunner)


class ActorWorker(W.Worker):
    def __init__(self, sock: socket.socket, cell: Any) -> None:
        super().__init__(sock, cell, None)
        self.runner: Any = None
        self.unpickle_s: dict[int, float] = {}  # by call id, until the call is done

    def init_failed(self, exc: BaseException) -> None:
        info = W._info(exc)
        W.forget_traceback(exc)
        try:
            data: bytes | None = ser.dumps(exc)[0]
        except BaseException:
            data = None
        _channel.send_all(self.sock, _channel.encode([pickle.dumps((W.INIT_FAILED, *info, data))]))
        self.sock.close()
        sys.exit(1)

    def run_batch(self, control: tuple[Any, ...], msg: list[Any]) -> None:
        _, records = control
        oob = 1
        runner = self.runner
        for call_id, method, payload, n_oob in records:
            if payload:
                buffers = msg[oob : oob + n_oob]
                oob += n_oob
                t0 = time.perf_counter()
                try:
                    args, kwargs = ser.loads(payload, buffers)
                except BaseException as exc:
                    now = time.perf_counter()
                    self.add(call_id, W.BAD_TASK, b"", (), t0, now, W._info(exc), now - t0)
                    continue
                self.unpickle_s[call_id] = time.perf_counter() - t0
            else:
                args, kwargs = (), {}
            runner.submit(call_id, method, args, kwargs)

    def started(self, call_id: int) -> None:
        self.views.times[W.STARTED] = time.perf_counter()  # (call_timeout)
        self.views.words[W.RUNNING] = call_id
        self.views.words[W.FINISHED] = 0
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
            self.add(call_id, W.OK, b"", (), t_start, t_end, None, unpickle_s)
            return
        try:
            data, bufs = ser.dumps(value, _shm.EXCLUSIVE)
        except Exception as exc:
            info = (*W._info(exc), ser.describe(type(value)))
            self.add(call_id, W.BAD_RESULT, b"", (), t_start, t_end, info, unpickle_s)
            return
        except BaseException as exc:
            self.add_exception(call_id, exc, t_start, t_end, unpickle_s)
            return
        self.add(call_id, W.OK, data, bufs, t_start, t_end, None, unpickle_s,
                 time.perf_counter() - t_end)

