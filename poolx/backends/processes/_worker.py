"""The worker process: the child side of the processes engine.

``main`` is a plain function with explicit arguments; it imports the channel
and serialization modules only, never the driver.

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

A watchdog thread ends the process when the driver's end of the channel hangs
up, even while a task is running: workers never outlive their driver.
"""

from __future__ import annotations

import faulthandler
import logging
import mmap
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

from ... import _context, _fds, _shm
from ... import _serialization as ser
from ..._errors import (
    ActorDiedError,
    DeserializationError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
)
from ..._futures import worker_thread
from . import _channel, _lifetime

# Message kinds (frame 0 is a pickled tuple whose first item is the kind).
TASKS, STOP, CALLS = 1, 2, 3  # driver -> worker (TASKS) or actor (CALLS)
READY, INIT_FAILED, RESULTS = 11, 12, 13  # worker or actor -> driver
RETIRING = 14  # worker -> driver: over its memory cap, it exits after this message
# A task waiting in get()/wait() lends its worker's slot (see Worker.block):
BLOCKED, UNBLOCKED = 15, 16  # worker -> driver
ACK_BLOCKED = 4  # driver -> worker: every task sent before this one was taken back
# On a child's client channel (handles used inside tasks and actors):
C_CALL, C_GET_ACTOR, C_SUBMIT, C_GET = 21, 22, 24, 25  # child -> driver
C_RENDEZVOUS = 26  # child -> driver: an actor joins a collective group by name (init_collective_group)
ACTOR_INFO = 23  # driver -> child: the answer to C_GET_ACTOR or C_RENDEZVOUS (and RESULTS, from an actor)
# Result status codes.
OK, RAISED, UNPICKLABLE_EXCEPTION, BAD_TASK, BAD_RESULT, ACTOR_DIED = 0, 1, 2, 3, 4, 5

# Flush results once this many are pending ...
FLUSH_MAX = 512
# ... or once the oldest pending result has waited this long (seconds).  Small
# enough that a task's latency is not noticeably delayed by a slow neighbour in
# its batch, large enough that tiny tasks still travel hundreds per message.
FLUSH_SECONDS = 0.002

# The progress cell: four 8-byte words at the start of the first page of a
# per-worker unlinked temporary file (a fatal error's stack dump, from
# faulthandler, is written after them):
#   [0] the id of the task being run      [1] 1 once its outcome is recorded
#   [2] when it started (perf_counter, a double)
#   [3] the item of a map() chunk being run (-1: none): with it the driver
#       blames the one item that killed the worker, not the whole chunk (see
#       poolx._chunks), and task_timeout counts per item (the scheduler
#       restarts the clock when it sees the index change).
# Each word is stored and loaded whole, through memoryviews (one 8-byte move:
# never torn, unlike struct.pack_into, which writes a double piecewise), and
# in an order that is safe to read at any moment: the start time before the
# id, and the id before "not finished", so a reader may see a new task as
# finished (it is then only run again, if its worker died) but never an old
# one as unfinished.
#   [4] how many bytes of the results log (below) hold records not yet sent
RUNNING, FINISHED, STARTED, ITEM, LOG_END = 0, 1, 2, 3, 4
PROGRESS_BYTES = 4096
# The results log, after the cell in the same file: each result a task worker
# has not sent yet, as a u32 length and the pickled record.  A worker batches
# its results (FLUSH_SECONDS), so a crash would otherwise take the outcomes of
# tasks that already finished with it, and they would run a second time; the
# driver reads the log of a dead worker instead (``read_log``).  1 MiB holds
# thousands of small records; a result too large for what is left (or one
# with out-of-band buffers) is sent before its task counts as finished.
LOG_BYTES = 1 << 20
# Where a fatal error's stack dump (faulthandler) starts; the file's size before it.
DUMP_OFFSET = PROGRESS_BYTES + LOG_BYTES


class CellViews:
    """The progress cell's words as views: ``words`` (int64) and ``times`` (double)."""

    def __init__(self, cell: mmap.mmap) -> None:
        self.words = memoryview(cell)[:40].cast("q")
        self.times = memoryview(cell)[:40].cast("d")


def read_log(cell: mmap.mmap, fd: int) -> list[tuple[Any, ...]]:
    """The result records a dead worker logged and had not sent (the driver's side).

    A record cut short by the death is not counted: the worker moves LOG_END
    past a record only once it is written whole.
    """
    with memoryview(cell) as whole, whole[:40] as part, part.cast("q") as words:
        end = words[LOG_END]
    if not 0 < end <= LOG_BYTES:
        return []
    log = os.pread(fd, end, PROGRESS_BYTES)
    records, pos = [], 0
    while pos + 4 <= len(log):
        size = int.from_bytes(log[pos:pos + 4], "little")
        pos += 4
        try:
            record = pickle.loads(log[pos:pos + size])
        except Exception:  # (a task that scribbled over the log: its records are lost, no more)
            break
        pos += size
        if type(record) is tuple and len(record) == 9 and type(record[0]) is int and record[3] == 0:
            records.append(record)
    return records


def read_cell(cell: mmap.mmap) -> tuple[int, bool, float, int]:
    """(running task id, finished, started, map item) from a progress cell (the driver's side)."""
    with memoryview(cell) as whole, whole[:32] as part, part.cast("q") as words, part.cast("d") as times:
        running, finished, item = words[RUNNING], words[FINISHED], words[ITEM]
        started = times[STARTED]
    return running, bool(finished), started, item


class FdForChild:
    """An fd to hand to the worker at start, under any start method.

    Under spawn/forkserver the Process arguments are pickled while the child is
    being started, which is when multiprocessing can duplicate an fd into it;
    under fork the object is inherited as is and the fd number stays valid.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[object, ...]:
        from multiprocessing.reduction import DupFd

        return (_detach, (DupFd(self.fd),))

    def take(self) -> int:
        return self.fd


class WorkerSetup:
    """What a worker needs at start: the initializer, its initargs, max_tasks.

    The initializer travels cloudpickled (a lambda works under every start
    method).  The initargs too when cloudpickle can take them; otherwise they
    stay as objects among the Process arguments, which multiprocessing pickles
    itself at process start: a multiprocessing.Queue, Lock or Event in initargs
    then works as with the stdlib (such objects may only be shared that way).
    """

    def __init__(self, initializer: bytes, initargs: bytes | tuple[Any, ...],
                 max_tasks: int | None, hook: bytes | None = None, max_memory: int | None = None) -> None:
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks
        self.hook = hook
        self.max_memory = max_memory

    @classmethod
    def build(cls, initializer: Any, initargs: tuple[Any, ...], max_tasks: int | None,
              hook: bytes | None = None, max_memory: int | None = None) -> WorkerSetup:
        fn, _ = ser.dumps(initializer)  # a SerializationError here names the initializer
        try:
            args: bytes | tuple[Any, ...] = ser.dumps(initargs)[0]
        except Exception:
            args = initargs
        return cls(fn, args, max_tasks, hook, max_memory)

    def unpack(self) -> tuple[Any, tuple[Any, ...], int | None]:
        args = ser.loads(self.initargs) if isinstance(self.initargs, bytes) else self.initargs
        return ser.loads(self.initializer), args, self.max_tasks


def _detach(dup: Any) -> int:
    return int(dup.detach())


def with_main(main_file: str, target: Any, *args: Any) -> None:
    """Entry point of a spawn or forkserver child: import the script if spawn did not, then run.

    Functions defined in the driver's script travel by reference
    (``__main__.f``), so the child must import the script, which spawn does
    when ``__main__.__file__`` is set as the child starts.  CPython deletes it
    once the script ends, and a start racing that deletion (a worker started
    as a program ends with work pending, on a loaded machine) got no script:
    every task then failed to unpickle and the program exited without running
    them (issue 19, item 9).  ``main_file`` was read while the script ran.
    """
    if getattr(sys.modules["__main__"], "__file__", None) is None:
        from multiprocessing import process, spawn

        start_dir = getattr(process, "ORIGINAL_DIR", None)  # the driver's, as spawn sets it
        if not os.path.isabs(main_file) and start_dir is not None:
            main_file = os.path.join(start_dir, main_file)
        spawn.import_main_path(os.path.normpath(main_file))  # as spawn would (as __mp_main__)
    target(*args)


def boot(sock: socket.socket, client: socket.socket, progress: Any,
         kind: _context.Kind) -> tuple[socket.socket, socket.socket, mmap.mmap]:
    """What every child does first (task worker and actor alike).

    Returns its channels and its progress cell, their fds above stdio: under
    forkserver they arrive on the lowest free numbers, 0 to 2 when the driver
    (whose stdio the forkserver inherits) had closed its own (see ``_fds``).
    """
    # The kernel ends this process when its parent does, even in a C call that
    # holds the GIL, where the watchdog cannot run (see _lifetime).
    _lifetime.leave_forkserver_alive_pipe()
    _lifetime.die_with_parent(sock)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    # A forked worker must die of SIGTERM, not run a handler it inherited from the
    # driver (Ray's ray.init() installs one that raises SystemExit).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _shm.raise_fd_limit()  # a process of poolx's own: see raise_fd_limit
    sock, client = _fds.lift_socket(sock), _fds.lift_socket(client)
    fd = _fds.lift(progress.take() if isinstance(progress, FdForChild) else int(progress))
    cell = _fds.mmap(fd, DUMP_OFFSET)  # the cell and the results log
    # A fatal error (SIGSEGV, SIGABRT, ...) dumps the crashing thread's Python
    # stack after the log; the driver puts it in the task's WorkerDiedError.
    os.lseek(fd, DUMP_OFFSET, os.SEEK_SET)
    faulthandler.enable(fd, all_threads=False)
    sock.setblocking(True)
    _start_watchdog(sock)
    # Actor handles unpickled in this process call through the client channel.
    from ._client import ChildClient

    _context.enter(kind, ChildClient(client))
    return sock, client, cell


def start_hook(hook: bytes | None, label: str) -> Any:
    """Start the executor's child hook (the profiling harness's profilers), if any.

    The hook is any picklable object with ``start(label)`` and ``stop()``: it
    starts before the user's code and stops when the process ends normally
    (the hook itself arranges what happens on SIGTERM).
    """
    if hook is None:
        return None
    obj = ser.loads(hook)
    obj.start(label)
    return obj


def stop_hook(hook: Any) -> None:
    if hook is not None:
        hook.stop()


def main(sock: socket.socket, client: socket.socket, progress: Any, index: int, setup: WorkerSetup) -> None:
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
            _channel.send_all(sock, _channel.encode([pickle.dumps((INIT_FAILED, *info))]))
            sock.close()
            sys.exit(1)
    try:
        _channel.send_all(sock, _channel.encode([pickle.dumps((READY, os.getpid()))]))
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


def run_exit_hooks() -> None:
    """Run what the interpreter runs at exit before multiprocessing's own exit.

    After the target returns, ``Process._bootstrap`` joins the process's
    children, and under fork and forkserver the process then ends with
    ``os._exit``: the ``threading`` exit hooks (which shut down executors that
    tasks started here: loky's, concurrent.futures', poolx's) would run too
    late or never, and the join would wait for their workers for ever.  Run
    them now, as an interpreter exiting normally would.
    """
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None and threading.current_thread() is threading.main_thread():
        try:
            shutdown()
        except Exception:
            logging.getLogger("poolx").exception("an exit hook failed in a poolx worker")


def _start_watchdog(sock: socket.socket) -> None:
    """Exit when the driver hangs up, whatever the main thread is doing."""
    rdhup = getattr(select, "POLLRDHUP", 0)
    ppid = os.getppid()

    def watch() -> None:
        if rdhup:
            poller = select.poll()
            poller.register(sock.fileno(), rdhup | select.POLLHUP)
            while True:
                if any(ev & (rdhup | select.POLLHUP | select.POLLERR | select.POLLNVAL)
                       for _, ev in poller.poll()):
                    os._exit(0)
        while os.getppid() == ppid:  # no POLLRDHUP (macOS): notice reparenting
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="poolx-watchdog", daemon=True).start()


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
            if control[0] == STOP:
                self.flush()
                return
            if control[0] == ACK_BLOCKED:
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
                _channel.send_all(self.sock, _channel.encode([pickle.dumps((RETIRING, os.getpid()))]))
                return

    def run_batch(self, control: tuple[Any, ...], msg: list[Any]) -> None:
        _, evict, records = control
        for key in evict:
            self.functions.pop(key, None)
        oob = 1
        for task_id, key, fn_bytes, payload, n_oob, skip in records:
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
            _channel.send_all(self.sock, _channel.encode([pickle.dumps((BLOCKED, task_id))]))
        self.give_back = True
        self.acks_pending += 1

        def unblock() -> None:
            with self.lock:
                _channel.send_all(self.sock, _channel.encode([pickle.dumps((UNBLOCKED, task_id))]))

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
            self.add(task_id, BAD_TASK, b"", (), t_start, time.perf_counter(), _info(exc))
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
            info = (*_info(exc), _culprit(result))
            self.add(task_id, BAD_RESULT, b"", (), t_start, t_end, info)
            return
        except BaseException as exc:  # SystemExit in __reduce__: the stdlib re-raises it as is
            self.add_exception(task_id, exc, t_start, t_end, t_call - t_start)
            return
        self.add(task_id, OK, data, bufs, t_start, t_end, None, t_call - t_start,
                 time.perf_counter() - t_end)

    def add_exception(self, task_id: int, exc: BaseException, t_start: float, t_end: float,
                      unpickle_s: float = 0.0) -> None:
        info = _info(exc)
        forget_traceback(exc)  # the text is in info
        try:
            data, bufs = ser.dumps(exc)
        except BaseException:
            self.add(task_id, UNPICKLABLE_EXCEPTION, b"", (), t_start, t_end, info, unpickle_s)
        else:
            self.add(task_id, RAISED, data, bufs, t_start, t_end, info, unpickle_s)

    def add(self, task_id: int, status: int, data: bytes, bufs: Any, t_start: float,
            t_end: float, info: Any, unpickle_s: float = 0.0, pickle_s: float = 0.0) -> None:
        """Queue one result record.  ``t_start``..``t_end`` spans unpickling the
        arguments and the call; ``unpickle_s`` is the unpickling part, and
        ``pickle_s`` the time spent pickling the result after ``t_end``."""
        self.running = 0
        if self.log is None:  # an actor: its call is over (call_timeout) once its outcome is pickled
            self.views.words[FINISHED] = 1
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
            control = pickle.dumps((RESULTS, self.results, _client_calls()), ser.PROTOCOL)
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


def forget_traceback(exc: BaseException) -> None:
    """Let an exception's frames go (its text was formatted already), if it can be changed."""
    try:
        exc.__traceback__ = None
    except AttributeError:  # an exception that cannot be changed (a frozen dataclass)
        pass


def _culprit(result: Any) -> str:
    """What in a result cannot be pickled: its type, or the type of the first such item of a list."""
    if isinstance(result, list | tuple) and len(result) <= 100_000:
        found = ser.first_unpicklable(result)
        if found is not None:
            i, item = found
            return f"{ser.describe(type(item))}, item {i} of a {type(result).__name__}"
    return ser.describe(type(result))


# A worker's traceback text is cut to this many characters (its start and its
# end, where the exception is): a 10 MB message must not travel twice.
MAX_TRACEBACK = 64 * 1024


def _info(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, formatted traceback) of an exception being handled."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(tb) > MAX_TRACEBACK:
        half = MAX_TRACEBACK // 2
        tb = f"{tb[:half]}\n[... {len(tb) - 2 * half} characters of the traceback left out ...]\n{tb[-half:]}"
    try:
        message = str(exc)
    except BaseException:
        message = "<str() of the exception failed>"
    return ser.describe(type(exc)), message, tb


def outcome(status: int, data: Any, bufs: list[Any], info: Any, what: str) -> tuple[bool, Any]:
    """Decode one result record of an actor call into (ok, value or exception).

    ``what`` names the call in messages ("Counter.increment").
    """
    if status == OK:
        if not data:
            return True, None
        try:
            return True, ser.loads(data, bufs)
        except BaseException as exc:
            error: BaseException = DeserializationError(
                f"the result of {what} could not be unpickled: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return False, error
    if status == ACTOR_DIED:
        message, actor, exitcode, pid = info
        return False, ActorDiedError(message, actor=actor, exitcode=exitcode, pid=pid)
    if status == RAISED:
        try:
            error = ser.loads(data, bufs)
        except BaseException:
            error = RemoteError(*info[:3])
        error.__cause__ = RemoteTraceback(info[2])
    elif status == UNPICKLABLE_EXCEPTION:
        error = RemoteError(*info[:3])
        error.__cause__ = RemoteTraceback(info[2])
    elif status == BAD_TASK:
        error = DeserializationError(
            f"the actor could not unpickle the arguments of {what}: {info[0]}: {info[1]}. "
            "An argument's class may not be importable in the actor process, or its "
            "__reduce__/__setstate__ raised.")
        error.__cause__ = RemoteTraceback(info[2])
    else:  # BAD_RESULT
        error = SerializationError(
            f"the result of {what} (a {info[3]}) could not be pickled in the actor to send it "
            f"back: {info[0]}: {info[1]}. Return plain data instead.")
        error.__cause__ = RemoteTraceback(info[2])
    return False, error
