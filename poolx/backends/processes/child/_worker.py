"""The task worker process: the child side of the processes engine's tasks.

``main`` is a plain function with explicit arguments; the child imports the
channel, the protocol and serialization modules, never the driver.

The loop, in order:

1. receive: parse the next message from what the socket has delivered; when
   nothing complete is buffered, flush pending results and block on the socket.
2. run: for each task of a TASKS message, mark the progress cell (so that, if
   this process dies, the driver knows which task killed it), look up the
   function by key (it arrives pickled once per worker), unpickle the
   arguments, call, pickle the result on its own (an unpicklable result fails
   only that task).
3. send: results go back batched; a batch is flushed when no more input is
   waiting, when FLUSH_MAX results are pending, or when the oldest has waited
   FLUSH_SECONDS.  If a task is still running FLUSH_SECONDS after it started
   with results pending, a flusher thread sends them, so a slow task never
   holds back the results of the fast tasks before it.

A watchdog thread (``_boot``) ends the process when the driver's end of the
channel hangs up, even while a task is running: workers never outlive their
driver.  ``Worker`` is also the base of the actor process's ``ActorWorker``
(``_actor``), which shares its batching of results.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from typing import Any

from .... import (
    _chunks,  # noqa: F401  (every map() chunk runs it: loaded at boot, so a forkserver preloads it)
    _context,
    _shm,
)
from .... import _serialization as ser
from ...._futures import worker_thread
from .. import _channel
from .. import protocol as P
from .._cell import (
    DUMP_OFFSET,
    FINISHED,
    ITEM,
    LOG_BYTES,
    LOG_END,
    PROGRESS_BYTES,
    RUNNING,
    STARTED,
    CellViews,
)
from ._boot import boot, run_exit_hooks, start_hook, stop_hook

# Flush results once this many are pending ...
FLUSH_MAX = 512
# ... or once the oldest pending result has waited this long (seconds).  Small
# enough that a task's latency is not noticeably delayed by a slow neighbour in
# its batch, large enough that tiny tasks still travel hundreds per message.
FLUSH_SECONDS = 0.002


def main(sock: socket.socket, client: socket.socket, progress: Any, index: int, setup: P.WorkerSetup) -> None:
    """Entry point of a worker process."""
    sock, client, cell = boot(sock, client, progress, "worker")
    hook = start_hook(setup.hook, f"worker {index}")
    try:
        initializer, initargs, max_tasks = setup.unpack()
    except BaseException as exc:  # reported as an initializer failure: no worker could start
        initializer, initargs, max_tasks = _fail_unpack, (exc,), None
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            # Logged where the stdlib logs it, for handlers that expect it there.
            logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
            info = (type(exc).__qualname__, str(exc), traceback.format_exc())
            _channel.send_all(sock, _channel.encode([P.control(P.INIT_FAILED, *info)]))
            sock.close()
            sys.exit(1)
    try:
        _channel.send_all(sock, _channel.encode([P.control(P.READY, os.getpid())]))
        worker = Worker(sock, cell, max_tasks, getattr(setup, "max_memory", None), log=True)
        _context.set_worker(worker)
        # A task waiting for a future (a nested task's, a ref's) lends this worker's slot.
        worker_thread.lend = _lend_slot
        worker.loop()
    except (_channel.ChannelClosed, BrokenPipeError, ConnectionResetError):
        pass  # the driver is gone: nothing to report to, nobody to report it
    finally:
        stop_hook(hook)
    run_exit_hooks()


def _fail_unpack(exc: BaseException) -> None:
    raise RuntimeError(f"the initializer or its initargs could not be unpickled in the worker: "
                       f"{type(exc).__name__}: {exc}") from exc


def _lend_slot() -> Any:
    return _context.here.client.lend_slot()



class Worker:
    def __init__(self, sock: socket.socket, cell: mmap.mmap, max_tasks: int | None,
                 max_memory: int | None = None, log: bool = False) -> None:
        self.sock = sock
        self.max_memory = max_memory  # bytes of resident memory; over it, the worker retires
        self.reader = _channel.FrameReader(sock)
        self.cell = cell
        self.functions: dict[int, Any] = {}
        self.results: list[tuple[Any, ...]] = []
        self.frames: list[Any] = []
        self.fds: list[int] = []  # locks on the shared-memory segments of the pending results
        self.fd_keys: dict[Any, int] = {}
        self.first_pending = 0.0
        self.tasks_left = max_tasks
        self.lock = threading.Lock()  # results/frames and the socket's write side
        self.running = 0  # id of the task being run, 0 between tasks
        # The items of the running map() chunk not to run again, with why
        # (index -> (kind, message, exitcode, pid)): see poolx._chunks.
        self.skip: dict[int, tuple[Any, ...]] | None = None
        # Where a map() chunk stores the index of the item it runs (poolx._chunks).
        self.views = CellViews(cell)
        # The results log (task workers only: an actor's death fails its calls in flight).
        self.log = memoryview(cell)[PROGRESS_BYTES:DUMP_OFFSET] if log else None
        self.log_end = 0
        self.item_mark = memoryview(cell)[ITEM * 8:ITEM * 8 + 8].cast("q")
        self.eager = False  # flush every result at once (results come from other threads)
        self.give_back = False  # the rest of the current batch was handed back (block)
        self.acks_pending = 0  # BLOCKED messages whose ACK_BLOCKED has not been read yet
        # The arguments of tasks whose results are not sent yet: dropped only
        # after the send, so that an argument whose __del__ kills the process
        # cannot take a finished task's result with it (loky's CrashAtGCInWorker).
        self.spent: list[Any] = []
        # Set in a child that a task forked: it must never act as this worker.
        self.forked = False
        os.register_at_fork(after_in_child=self._forked)
        self.wake = threading.Event()
        threading.Thread(target=self._flusher, name="poolx-flusher", daemon=True).start()

    def _forked(self) -> None:
        self.forked = True

    def _leave_forked_child(self, exc: BaseException | None) -> None:
        """A child forked by the task returned or raised into poolx's loop: end it there.

        Otherwise it would send the task's outcome as its own and go on taking
        tasks, while its parent (the real worker) waits for it.
        """
        if isinstance(exc, SystemExit):
            code = exc.code
            os._exit(code if isinstance(code, int) else (0 if code is None else 1))
        if exc is not None:
            traceback.print_exception(exc)
            sys.stderr.flush()
        os._exit(0 if exc is None else 1)

    def _flusher(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            task_id = self.running
            time.sleep(FLUSH_SECONDS)
            if task_id and self.running == task_id:
                self.flush()

    def loop(self) -> None:
        reader = self.reader
        while True:
            msg = reader.next_message()
            if msg is None:
                if self.results and reader.fill(nonblocking=True) == 0:
                    self.flush()
                elif not self.results:
                    reader.fill(nonblocking=False)
                continue
            control = pickle.loads(msg[0])
            if control[0] == P.STOP:
                self.flush()
                return
            if control[0] == P.ACK_BLOCKED:
                self.acks_pending -= 1
                continue
            if self.acks_pending:
                continue  # tasks sent before the driver took them back: they run elsewhere
            self.run_batch(control, msg)
            if self.tasks_left is not None and self.tasks_left <= 0:
                self.flush()  # max_tasks_per_child reached: retire
                return
            if self.max_memory is not None and resident_bytes() > self.max_memory:
                # Over the memory cap: say so (the driver sends the tasks it
                # had queued here to other workers) and exit; a fresh worker
                # replaces this one.
                self.flush()
                _channel.send_all(self.sock, _channel.encode([P.control(P.RETIRING, os.getpid())]))
                return

    def run_batch(self, control: tuple[Any, ...], msg: list[Any]) -> None:
        _, evict, records = control
        for key in evict:
            self.functions.pop(key, None)
        oob = 1
        for task_id, key, fn_bytes, payload, n_oob, skip in records:  # protocol.TaskRecord
            buffers = msg[oob : oob + n_oob]
            oob += n_oob
            self.skip = skip
            self.run_one(task_id, key, fn_bytes, payload, buffers)
            if self.tasks_left is not None:
                self.tasks_left -= 1
            if self.give_back:  # the task blocked: the driver took the rest of the batch back
                self.give_back = False
                return

    def block(self) -> Any:
        """A task in this process waits for other tasks: lend this worker's slot.

        Main thread, inside the running task.  The driver starts another
        worker while this one waits, and takes back every task it had sent
        here beyond the running one (they could be what this task waits for):
        the rest of the current batch is skipped, and so is every TASKS message
        read before the driver's ACK_BLOCKED.  Returns the function that ends
        the loan.
        """
        task_id = self.running
        self.flush()  # results first: the driver must not take back tasks that finished
        with self.lock:
            _channel.send_all(self.sock, _channel.encode([P.control(P.BLOCKED, task_id)]))
        self.give_back = True
        self.acks_pending += 1

        def unblock() -> None:
            with self.lock:
                _channel.send_all(self.sock, _channel.encode([P.control(P.UNBLOCKED, task_id)]))

        return unblock

    def run_one(self, task_id: int, key: int, fn_bytes: bytes | None, payload: bytes,
                buffers: list[Any]) -> None:
        t_start = time.perf_counter()
        words = self.views.words
        self.views.times[STARTED] = t_start
        words[ITEM] = -1
        words[RUNNING] = task_id
        words[FINISHED] = 0
        self.running = task_id
        if self.results and not self.wake.is_set():
            self.wake.set()
        try:
            if key:
                fn = self.functions.get(key)
                if fn is None:
                    fn = self.functions[key] = ser.loads(fn_bytes)  # type: ignore[arg-type]
                args, kwargs = ser.loads(payload, buffers)
            else:
                fn, args, kwargs = ser.loads(payload, buffers)
        except BaseException as exc:
            self.add(task_id, P.BAD_TASK, b"", (), t_start, time.perf_counter(), P.error_info(exc))
            return
        t_call = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if self.forked:
                self._leave_forked_child(exc)
            t_end = time.perf_counter()
            self.add_exception(task_id, exc, t_start, t_end, t_call - t_start)
            return
        finally:
            self.running = 0
            if args or kwargs:
                self.spent.append((args, kwargs))
            del args, kwargs
        if self.forked:
            self._leave_forked_child(None)
        t_end = time.perf_counter()
        try:
            data, bufs = ser.dumps(result, _shm.EXCLUSIVE)
        except Exception as exc:
            coroutines = [r for r in (result if isinstance(result, list) else [result])
                          if type(r).__name__ == "coroutine" and hasattr(r, "close")]
            if coroutines:  # (a map() chunk's result is a list)
                for coroutine in coroutines:
                    coroutine.close()  # (no "never awaited" warning)
                self.add_exception(task_id, TypeError(
                    f"{ser.describe(fn).removesuffix(' [map]')} is an async function: a task runs a plain "
                    "function. Run the coroutine in it (def task(x): return asyncio.run(fetch(x))), or "
                    "make it a method of an actor, whose async methods run on its event loop"),
                    t_start, t_end)
                return
            info = (*P.error_info(exc), _culprit(result))
            self.add(task_id, P.BAD_RESULT, b"", (), t_start, t_end, info)
            return
        except BaseException as exc:  # SystemExit in __reduce__: the stdlib re-raises it as is
            self.add_exception(task_id, exc, t_start, t_end, t_call - t_start)
            return
        self.add(task_id, P.OK, data, bufs, t_start, t_end, None, t_call - t_start,
                 time.perf_counter() - t_end)

    def add_exception(self, task_id: int, exc: BaseException, t_start: float, t_end: float,
                      unpickle_s: float = 0.0) -> None:
        status, data, bufs, info = P.exception_outcome(exc)
        self.add(task_id, status, data, bufs, t_start, t_end, info, unpickle_s)

    def add(self, task_id: int, status: int, data: bytes, bufs: Any, t_start: float,
            t_end: float, info: Any, unpickle_s: float = 0.0, pickle_s: float = 0.0) -> None:
        """Queue one result record.  ``t_start``..``t_end`` spans unpickling the
        arguments and the call; ``unpickle_s`` is the unpickling part, and
        ``pickle_s`` the time spent pickling the result after ``t_end``."""
        self.running = 0
        if self.log is None:  # an actor: its call is over (call_timeout) once its outcome is pickled
            self.views.words[FINISHED] = 1
        # A protocol.ResultRecord, as a plain tuple (see protocol: the hot path).
        record = (task_id, status, data, len(bufs), t_start, t_end, info, unpickle_s, pickle_s)
        with self.lock:
            if not self.results:
                self.first_pending = t_end
            self.results.append(record)
            if bufs:
                _channel.out_frames(bufs, self.frames, self.fds, self.fd_keys)
            # A task worker sends at once what it cannot log (an actor logs nothing: its
            # death fails its calls in flight anyway).
            lost = self.log is not None and (bool(bufs) or not self.logged(record))
            due = (lost or self.eager or len(self.results) >= FLUSH_MAX
                   or len(self.fds) >= _shm.MAX_FDS // 2 or t_end - self.first_pending >= FLUSH_SECONDS)
        if due:
            self.flush()
        # A task is finished only now that its outcome is logged or sent: a
        # crash while pickling the result (a __reduce__ that segfaults) blames
        # it, and a crash after it (a thread it left behind) cannot take the
        # outcome with it.
        self.views.words[FINISHED] = 1

    def logged(self, record: tuple[Any, ...]) -> bool:
        """Write ``record`` to the results log if it fits; under ``lock``."""
        log = self.log
        if log is None:
            return False
        blob = pickle.dumps(record, ser.PROTOCOL)
        start = self.log_end + 4
        end = start + len(blob)
        if end > LOG_BYTES:
            return False
        log[start - 4:start] = len(blob).to_bytes(4, "little")
        log[start:end] = blob
        self.log_end = end
        self.views.words[LOG_END] = end  # after the bytes: a torn record is never counted
        return True

    def flush(self) -> None:
        with self.lock:
            if not self.results:
                return
            # With the count of actor calls this process has sent so far: the
            # driver forwards those before it completes these results.
            control = P.control(P.RESULTS, self.results, _client_calls())
            frames, self.results, self.frames = [control, *self.frames], [], []
            fds, self.fds, self.fd_keys = self.fds, [], {}
            _channel.send_all(self.sock, _channel.encode(frames, len(fds)), fds)
            if self.log_end:  # sent: the driver has them even if this process dies now
                self.log_end = self.views.words[LOG_END] = 0
            spent, self.spent = self.spent, []
        del spent  # the arguments of the tasks just reported (see __init__)


def resident_bytes() -> int:
    """This process's resident memory now (Linux), or its peak where that is unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _client_calls() -> int:
    client = _context.here.client
    return client.sent if client is not None else 0


def _culprit(result: Any) -> str:
    """What in a result cannot be pickled: its type, or the type of the first such item of a list."""
    if isinstance(result, list | tuple) and len(result) <= 100_000:
        found = ser.first_unpicklable(result)
        if found is not None:
            i, item = found
            return f"{ser.describe(type(item))}, item {i} of a {type(result).__name__}"
    return ser.describe(type(result))

