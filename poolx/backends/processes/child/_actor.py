"""The actor process: the child side of one actor on the processes backend.

It boots like a task worker (SIGINT ignored, progress cell, watchdog, client
channel), builds the instance, says READY (or INIT_FAILED with the
constructor's exception), then reads CALLS messages and runs each call through
the runner that fits the class (``poolx.actors.runner``): in this main thread,
one after another, for a plain class; on ``max_concurrency`` threads; or on
an event loop for a class with ``async def`` methods.  Results go back batched
as a task worker's do (``_worker.Worker``), sent once no complete message waits
in what was read; a runner on other threads flushes each result at once.

The per-call path is the actor's own (``loop``, ``done``, ``add``, ``flush``):
an awaited call costs the actor one blocking read and one write, and a
result that is a plain number or string is pickled without the pickler that
looks for shared-memory buffers and refs.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import time
from typing import Any

from .... import _context, _shm
from .... import _serialization as ser
from ....actors.runner import InlineRunner, make_runner
from .. import _channel
from .. import protocol as P
from .._cell import FINISHED, RUNNING, STARTED
from ._boot import boot, run_exit_hooks, start_hook, stop_hook
from ._worker import FLUSH_MAX, FLUSH_SECONDS, Worker

# Results of these exact types pickle the same with the plain pickler as with
# poolx's (which looks for large buffers and refs inside, a few us per call).
PLAIN = frozenset({int, float, bool, str, bytes, complex})

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

    def loop(self) -> None:
        """Read messages and run their calls until STOP.

        Results go back once no complete message waits in what was read (a
        batch of calls gets one message of results); no non-blocking read
        first, as a task worker does: calls come in batches (the driver holds
        them back while earlier ones run), and an awaited call's result should
        not wait for a system call.
        """
        reader = self.reader
        while True:
            msg = reader.next_message()
            if msg is None:
                if self.results:
                    self.flush()
                reader.fill(nonblocking=False)
                continue
            control = pickle.loads(msg[0])
            if control[0] == P.STOP:
                self.flush()
                return
            self.run_batch(control, msg)

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
        unpickle_s = self.unpickle_s.pop(call_id, 0.0) if self.unpickle_s else 0.0
        t_start -= unpickle_s
        if not ok:
            self.add_exception(call_id, value, t_start, t_end, unpickle_s)
            return
        if value is None:
            self.add(call_id, P.OK, b"", (), t_start, t_end, None, unpickle_s)
            return
        if type(value) in PLAIN:
            self.add(call_id, P.OK, pickle.dumps(value, ser.PROTOCOL), (), t_start, t_end, None,
                     unpickle_s, time.perf_counter() - t_end)
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

    def add(self, call_id: int, status: int, data: bytes, bufs: Any, t_start: float,
            t_end: float, info: Any, unpickle_s: float = 0.0, pickle_s: float = 0.0) -> None:
        """Queue one result record (as ``Worker.add``, without a task worker's results log:
        an actor's death fails its calls in flight)."""
        self.running = 0
        self.views.words[FINISHED] = 1  # its call is over (call_timeout) once its outcome is pickled
        # A protocol.ResultRecord, as a plain tuple (see protocol: the hot path).
        record = (call_id, status, data, len(bufs), t_start, t_end, info, unpickle_s, pickle_s)
        with self.lock:
            if not self.results:
                self.first_pending = t_end
            self.results.append(record)
            if bufs:
                _channel.out_frames(bufs, self.frames, self.fds, self.fd_keys)
            due = (self.eager or len(self.results) >= FLUSH_MAX or len(self.fds) >= _shm.MAX_FDS // 2
                   or t_end - self.first_pending >= FLUSH_SECONDS)
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if not self.results:
                return
            # With the count of actor calls this process has sent so far: the
            # driver forwards those before it completes these results.
            client = _context.here.client
            control = P.control(P.RESULTS, self.results, client.sent if client is not None else 0)
            self.results = []
            if not self.frames:  # the common case: one bytes object, one write
                self.sock.sendall(_channel.encode_single(control))
                return
            frames, self.frames = [control, *self.frames], []
            fds, self.fds, self.fd_keys = self.fds, [], {}
            _channel.send_all(self.sock, _channel.encode(frames, len(fds)), fds)
