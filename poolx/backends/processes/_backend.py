"""poolx's own process engine, the default backend.

The caller's side lives here (pickling at submit, so a bad argument raises in
the caller); the scheduler thread is in ``driver/``, the children in
``child/``, the messages in ``protocol`` and their framing in ``_channel``.
This module is where the two sides meet: it hands the children's entry
points to the driver, which never imports them.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections import OrderedDict, deque
from typing import Any

from ... import _fds, _shm
from ..._errors import InitializerError, SerializationError
from ..._futures import Task
from ..._serialization import (
    IN_BAND,
    PROTOCOL,
    cacheable,
    describe,
    dumps,
    first_unpicklable,
    unpicklable_argument,
    unpicklable_global,
)
from ..._telemetry import Telemetry
from ...actors.directory import Actor, ActorCall
from .. import Backend, BackendOptions
from ._zygote import zygote_context
from .child._actor import main as actor_main
from .child._boot import with_main
from .child._worker import main as worker_main
from .driver import ChildEntries, Scheduler
from .protocol import WorkerSetup

# Functions kept pickled in the driver (by identity), newest first out.
DRIVER_FN_CACHE = 1024

# Argument types the C pickler writes on its own (no reducer, no buffer out of
# band, no future inside, nothing of the script): a call whose arguments are
# all of these is pickled by ``pickle.dumps`` directly, skipping poolx's
# pickler (cloudpickle's Python-level dump, the pins and shared-memory hooks),
# about 2 us per task.  ``bytes`` are not among them: a large one goes out of band.
_ATOMS = frozenset((int, float, str, bool, type(None), complex))
# The pickle of ``((), {})``: the arguments of a call without any, made once.
_NO_ARGUMENTS = pickle.dumps(((), {}), PROTOCOL)
_NO_BUFFERS: tuple[Any, ...] = ()


def default_start_method() -> str:
    """The start method used when ``mp_context`` is None.

    A start method the program chose with ``multiprocessing.set_start_method()``
    (as ProcessPoolExecutor honours it), when it differs from the platform's
    default; otherwise forkserver on Linux (Python 3.14's default; safe with
    threads) and spawn elsewhere.  (The platform's default itself cannot be told
    apart from an explicit choice: multiprocessing fixes the global start method
    to it the first time any spawn or forkserver process starts.  Pass
    ``mp_context="fork"`` to get fork.)
    """
    chosen = multiprocessing.get_start_method(allow_none=True)
    if chosen is not None and chosen != multiprocessing.get_all_start_methods()[0]:
        return chosen
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def default_context(initargs: tuple[Any, ...] = (), max_tasks: int | None = None) -> Any:
    """The context used when ``mp_context`` is None: ``default_start_method``'s,
    or fork when ``initargs`` hold a lock only fork can carry (``fork_only_lock``).

    tqdm's ``process_map`` hands every worker ``multiprocessing.RLock()``
    (made by the default context: fork on Linux up to Python 3.13), which a
    worker can only inherit through fork: under forkserver or spawn it cannot
    be sent at all (issue 21, item 6).  ProcessPoolExecutor forks there, so
    poolx does too, for this executor only.  The trade-off is fork's: a
    thread of the program that holds a lock at the fork (a logging handler, a
    C library's pool) leaves it held for ever in the worker, which is why
    poolx prefers forkserver otherwise.  Not with ``max_tasks_per_child``,
    which rules fork out for an Executor, as for ProcessPoolExecutor.
    Under forkserver the server is poolx's own zygote when the driver allows
    it (``_zygote``: a copy of the driver holding the worker's imports), else
    multiprocessing's, asked to preload the worker module.
    """
    method = default_start_method()
    if method != "fork" and max_tasks is None and "fork" in multiprocessing.get_all_start_methods() \
            and fork_only_lock(initargs) is not None:
        method = "fork"
    if method == "forkserver":
        zygote = zygote_context()  # (poolx's own forkserver, when the driver is small and plain)
        if zygote is not None:
            return zygote
        _preload_worker_module()
    return multiprocessing.get_context(method)


# How far fork_only_lock looks into the initargs: tqdm passes the lock itself,
# a Queue or a Condition holds its locks one level down, a user's object may
# hold one of those; deeper or wider (a large list, a model) would cost time
# at every executor's construction for locks nobody passes that way.
LOCK_SEARCH_DEPTH = 3
LOCK_SEARCH_WIDTH = 64


def fork_only_lock(obj: Any, depth: int = LOCK_SEARCH_DEPTH) -> Any:
    """A multiprocessing lock in ``obj`` made by the fork context, if any (else None).

    Such a lock (Lock, RLock, Semaphore; inside a Condition, Event, Queue or
    shared Value, which is returned then) can reach a child only through
    fork: multiprocessing unlinks its semaphore at once, so no other process
    can open it.
    """
    from multiprocessing.synchronize import SemLock

    if isinstance(obj, SemLock):
        return obj if _made_by_fork(obj) else None
    if depth == 0 or isinstance(obj, (str, bytes, bytearray, int, float)):
        return None
    if isinstance(obj, dict):
        items: Any = obj.values()
    elif isinstance(obj, (tuple, list, set, frozenset)):
        items = obj
    else:
        items = getattr(obj, "__dict__", {}).values()
    for i, item in enumerate(items):
        if i == LOCK_SEARCH_WIDTH:
            break
        found = fork_only_lock(item, depth - 1)
        if found is not None:  # (name the Queue, Event, ... that holds it, not its inner lock)
            return obj if type(obj).__module__.startswith("multiprocessing.") else found
    return None


def _made_by_fork(lock: Any) -> bool:
    made_by_fork = getattr(lock, "_is_fork_ctx", None)  # (Python 3.11+)
    if made_by_fork is not None:
        return bool(made_by_fork)
    try:  # Python 3.10: a fork context's semaphore was unlinked as it was made
        name = lock._semlock.name
        return bool(name) and not os.path.exists("/dev/shm/sem." + name.lstrip("/"))
    except (AttributeError, OSError):
        return False


def check_inherited_locks(ctx: Any, initargs: tuple[Any, ...], fork_allowed: bool) -> None:
    """Refuse (a one-line ValueError) initargs holding a fork-only lock for workers not forked."""
    method = ctx.get_start_method()
    lock = fork_only_lock(initargs) if method != "fork" else None
    if lock is None:
        return
    own = f"make it with multiprocessing.get_context({method!r}).{type(lock).__name__}()"
    fix = f"pass mp_context='fork', or {own}" if fork_allowed else \
        f"{own} (max_tasks_per_child rules out fork)"
    raise ValueError(
        f"initargs hold a {describe(type(lock))} made by the fork context (multiprocessing's default "
        f"on Linux before Python 3.14), which only a worker started with fork can inherit, but this "
        f"executor starts its workers with {method!r}: {fix}")


def _preload_worker_module() -> None:
    # Workers forked from a forkserver that has already imported the worker
    # module start in about a millisecond instead of importing poolx each time.
    # Only touched while the forkserver is not running and still has the stdlib
    # default preload, so a user's own set_forkserver_preload() wins.
    try:
        from multiprocessing import forkserver

        server: Any = forkserver._forkserver
        if server._forkserver_pid is None and server._preload_modules == ["__main__"]:
            server._preload_modules = ["__main__", "poolx.backends.processes.child._worker"]
    except AttributeError:
        pass


class ProcessBackend(Backend):
    name = "processes"
    uses_processes = True
    supports_worker_restart = True
    supports_terminate = True
    supports_max_tasks_per_child = True
    supports_actors = True
    supports_timeouts = True
    supports_shared_memory = _shm.AVAILABLE
    supports_collectives = _shm.AVAILABLE

    def __init__(self, options: BackendOptions, telemetry: Telemetry) -> None:
        super().__init__(options, telemetry)
        ctx = options.mp_context
        if ctx is None:
            ctx = default_context(options.initargs, options.max_tasks_per_child)
        elif isinstance(ctx, str):
            ctx = multiprocessing.get_context(ctx)
        check_inherited_locks(ctx, options.initargs,
                              options.mp_context is not None or options.max_tasks_per_child is None)
        self.context = ctx
        # Forked workers have the script's module: its functions go by name
        # (no pickling of the globals they read); others by value (_serialization).
        self._main_by_ref = ctx.get_start_method() == "fork"
        self.broken: str | None = None
        self.initializer_name = describe(options.initializer) if options.initializer else ""
        self.hook_bytes = dumps(options.child_hook, IN_BAND)[0] if options.child_hook is not None else None
        try:
            setup = WorkerSetup.build(options.initializer, options.initargs,
                                      options.max_tasks_per_child, self.hook_bytes, options.max_memory)
        except Exception as exc:
            raise SerializationError(
                f"the initializer {self.initializer_name} cannot be pickled to send it to "
                f"the workers: {type(exc).__name__}: {exc}"
            ) from exc
        self._fn_lock = threading.Lock()
        self._fn_cache: OrderedDict[Any, tuple[int, bytes]] = OrderedDict()
        # The function of the last submit and its entry: a loop submitting one
        # function skips the lock and the LRU update (the key stays valid).
        self._last_fn: tuple[Any, tuple[int, bytes]] = (None, (0, b""))
        self._next_key = 1
        self._incoming: deque[Any] = deque()
        # The hand-over to the scheduler thread, under incoming_lock: appends to
        # _incoming, ``stopped`` (why the scheduler no longer takes work, set by
        # it as it ends or dies) and the wake pipe's write end.  The scheduler
        # sets ``stopped`` and drains _incoming in one hold of the lock, so a
        # task is either drained (and failed) or refused here: never appended
        # to a queue nobody reads (issue 19: Pool(2.5).apply_async().get() hung).
        self.incoming_lock = threading.Lock()
        self.stopped: BaseException | None = None
        self.wake_pending = False
        self._wake_r, self._wake_w = _fds.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._scheduler = Scheduler(ctx, options.max_workers, setup, options.max_tasks_per_child,
                                    telemetry, self._incoming, self._wake_r, self,
                                    ChildEntries(worker_main, actor_main, with_main))
        self._scheduler.start()

    # -- the caller's side ------------------------------------------------------

    def submit(self, task: Task) -> None:
        if self.broken is not None:
            raise InitializerError(self.broken)
        self._raise_if_stopped()
        fn = task.fn
        last = self._last_fn  # (one read: another thread may replace it meanwhile)
        if last[0] is fn:
            key, fn_bytes = last[1]
        elif cacheable(fn):
            key, fn_bytes = entry = self._function(fn)
            self._last_fn = (fn, entry)
        else:
            key, fn_bytes = 0, None
        args, kwargs = task.args, task.kwargs
        if key and not kwargs and (not args or all(type(a) in _ATOMS for a in args)):
            payload = pickle.dumps((args, kwargs), PROTOCOL) if args else _NO_ARGUMENTS
            task.state = (key, fn_bytes, payload, _NO_BUFFERS)
            task.args = ()
            task.bytes_out = len(payload)
        else:
            self._pickle(task, key, fn_bytes)
        if not self._scheduler.try_direct(task) and not self._put(task):
            self._raise_if_stopped()

    def _pickle(self, task: Task, key: int, fn_bytes: bytes | None) -> None:
        """Pickle the call with poolx's pickler (any argument: buffers out of band, futures by id)."""
        fn = task.fn
        obj = (task.args, task.kwargs) if key else (fn, task.args, task.kwargs)
        pins: list[Any] = []
        try:
            payload, bufs = dumps(obj, task.shm or _shm.PRIVATE, pins, self._main_by_ref)
        except (Exception, SystemExit) as exc:  # (a __reduce__ calling sys.exit: loky's ExitAtPickle)
            raise _pickling_error(fn, task.args, task.kwargs, exc) from exc
        task.state = (key, fn_bytes, payload, bufs)
        # The pickle is what travels; let the caller's objects go, but keep the
        # futures sent by id (refs in containers) until the task is done.
        task.args, task.kwargs = tuple(pins), {}
        task.bytes_out = len(payload) + sum(b.raw().nbytes for b in bufs) if bufs else len(payload)

    def _raise_if_stopped(self) -> None:
        stopped = self.stopped
        if stopped is not None:  # a fresh copy: one exception raised in many threads mixes tracebacks
            raise type(stopped)(*stopped.args) from stopped.__cause__

    def _put(self, item: Any) -> bool:
        """Hand ``item`` to the scheduler thread; False if it has stopped (nothing was queued)."""
        with self.incoming_lock:
            if self.stopped is not None:
                return False
            self._incoming.append(item)
            self._wake_locked()
        return True

    def _function(self, fn: Any) -> tuple[int, bytes]:
        """The key and pickled bytes of ``fn``, pickling it the first time only."""
        with self._fn_lock:
            entry = self._fn_cache.get(fn)
            if entry is not None:
                self._fn_cache.move_to_end(fn)
                return entry
        try:
            # (in band: the worker loads it without buffers, and keeps it by key)
            data, _ = dumps(fn, IN_BAND, main_by_ref=self._main_by_ref)
        except Exception as exc:
            raise _function_error(fn, exc) from exc
        with self._fn_lock:
            entry = self._fn_cache.get(fn)
            if entry is None:
                entry = self._fn_cache[fn] = (self._next_key, data)
                self._next_key += 1
                if len(self._fn_cache) > DRIVER_FN_CACHE:
                    self._fn_cache.popitem(last=False)
            return entry

    def wake(self) -> None:
        """Any thread: wake the scheduler thread (the byte is written only if it may be asleep)."""
        if not self.wake_pending:
            with self.incoming_lock:
                self._wake_locked()

    def _wake_locked(self) -> None:
        # Order matters: the task is appended before the flag is read, and the
        # scheduler clears the flag before it drains ``incoming``, so a task is
        # never left behind with the scheduler asleep.  Under incoming_lock: the
        # scheduler closes the pipe under it too (scheduler_exited), so a byte
        # never goes to an fd number the process has since reused.
        if not self.wake_pending and self._wake_w >= 0:
            self.wake_pending = True
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        if not self._closed:
            self._closed = True
            self._put((self._scheduler.shutdown, cancel_futures))  # (dropped if the scheduler has stopped)
        if wait and self._scheduler.is_alive() and threading.current_thread() is not self._scheduler:
            self._scheduler.join()

    def wait_closed(self, timeout: float) -> bool:
        if threading.current_thread() is not self._scheduler:
            self._scheduler.join(timeout)
        return not self._scheduler.is_alive()

    def prestart(self) -> None:
        """Start every worker now and keep them all alive (multiprocessing.Pool's way:
        initializers run at once, and a worker that exits is replaced even when idle)."""
        self._put((self._scheduler.prestart, None))

    def wait_ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every prestarted worker is ready; True if they are."""
        deadline = time.monotonic() + timeout
        scheduler = self._scheduler
        while time.monotonic() < deadline:
            if self.broken is not None or not scheduler.is_alive():
                return False
            workers = list(scheduler.workers.values())
            if (scheduler.keep_workers and len(workers) >= scheduler.keep_workers
                    and all(w.state != "starting" for w in workers)):
                return True
            time.sleep(0.005)
        return False

    def stop_tasks(self, tasks: list[Task]) -> None:
        self._put((self._scheduler.stop_tasks, tasks))

    def terminate_workers(self, kill: bool) -> None:
        self._closed = True
        self._put((self._scheduler.terminate, kill))

    # -- actors (see driver/_actors) --------------------------------------------------

    def start_actor(self, actor: Actor) -> None:
        if not self._scheduler.is_alive() or self._closed:
            raise RuntimeError("cannot create actors after shutdown")
        self._scheduler.actors.start(actor)

    def call_actor(self, actor: Actor, call: ActorCall) -> None:
        self._scheduler.actors.call(actor, call)

    def stop_actor(self, actor: Actor, kill: bool, restart: bool) -> None:
        if kill:
            self._scheduler.actors.kill(actor, restart, "executor.kill")
        else:
            self._scheduler.actors.stop(actor, "was released")

    def wait_actor(self, actor: Actor, timeout: float | None) -> None:
        self._scheduler.actors.wait(actor, timeout)

    def actor_pid(self, actor: Actor) -> int | None:
        proc = actor.impl.proc if actor.impl is not None else None
        return proc.pid if proc is not None else None

    def scheduler_exited(self) -> None:
        with self.incoming_lock:  # (see _wake_locked)
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def worker_counts(self) -> dict[str, int]:
        s = self._scheduler
        return {
            "workers_alive": len(s.workers),
            "workers_started": s.started,
            "workers_restarted": s.restarted,
            "workers_died": s.died,
        }

    def worker_pids(self) -> list[int]:
        return [w.pid for w in list(self._scheduler.workers.values()) if w.pid]


def _function_error(fn: Any, exc: BaseException) -> SerializationError:
    culprit = unpicklable_global(fn)
    if culprit is not None:  # (a function of the script: it travels with its globals' values)
        return SerializationError(
            f"the callable {describe(fn)} cannot be pickled to send it to a worker: it reads "
            f"{culprit} of your script, which cannot be pickled ({type(exc).__name__}: {exc}). "
            "Workers do not run your script, so its functions travel with the globals they read: "
            "create the object in an initializer or in the task, or pass mp_context='fork'.")
    return SerializationError(
        f"the callable {describe(fn)} cannot be pickled to send it to a worker: "
        f"{type(exc).__name__}: {exc}. Define it at module level, or use "
        "backend='threads' for work that must share unpicklable state.")


def _pickling_error(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    exc: BaseException) -> SerializationError:
    """Name the argument that cannot be pickled."""
    if getattr(fn, "_poolx_chunk", False) and len(args) == 2 and isinstance(args[0], list):
        # A map() chunk: name the item, not "argument 0 (a list)".
        items, start = args
        found = first_unpicklable(items)
        if found is not None:
            index, item = found
            return SerializationError(
                f"cannot pickle map item {start + index} ({describe(type(item))}) of a map over "
                f"{describe(fn).removesuffix(' [map]')}: {type(exc).__name__}: {exc}. Tasks run in other "
                "processes, so the items must be picklable (or use backend='threads').")
    culprit = unpicklable_argument(args, kwargs) or f"the callable {describe(fn)}"
    return SerializationError(
        f"cannot pickle {culprit} of a task calling {describe(fn)}: {type(exc).__name__}: {exc}. "
        "Tasks run in other processes, so their arguments must be picklable: pass the data the "
        "object is built from and build it in the task (or in an initializer), or use "
        "backend='threads'."
    )

