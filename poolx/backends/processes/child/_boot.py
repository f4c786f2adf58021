"""What every child process does first, task worker and actor alike.

``boot`` makes the process a poolx child: it dies with its driver (the
kernel's parent-death signal, and a watchdog thread that exits when the
driver hangs up), ignores Ctrl-C (the driver's to handle), lifts its
channels above stdio, maps its progress cell (``_cell``) and arms
faulthandler after it, and sets ``poolx._context`` (its kind and its
``ChildClient``).  ``with_main`` is the entry point under spawn and
forkserver: it gives the child a stand-in for the driver's script, which the
child never runs.  The exit hooks
and the executor's child hook (the profiling harness) are here too.

The task worker's loop is in ``_worker``, the actor's in ``_actor``.
"""

from __future__ import annotations

import builtins
import faulthandler
import logging
import mmap
import os
import select
import signal
import socket
import sys
import threading
import time
import types
from typing import Any

from .... import _context, _fds, _shm
from .... import _serialization as ser
from .. import _lifetime
from .._cell import DUMP_OFFSET
from ..protocol import FdForChild
from ._client import ChildClient


def with_main(main_file: str | None, target: Any, *args: Any) -> None:
    """Entry point of a spawn or forkserver child: a stand-in for the driver's script, then run.

    The child does not run the script (see ``_lifetime``: multiprocessing
    would, and a script without the ``if __name__ == "__main__":`` guard
    then started executors in every child, which failed or recursed).  The
    script's functions arrive by value (``_serialization``) and live in this
    empty module, ``__main__`` here as spawn names it (``__mp_main__``), with
    the script's ``__file__``: the globals they use are added to it as they
    arrive, and what an initializer sets in it the tasks see.  If the child
    already has the script (a forkserver that imported it), that is kept.
    """
    main = sys.modules.get("__main__")
    if main_file is None or getattr(main, "__file__", None) != main_file:
        main = types.ModuleType("__mp_main__")
        main.__dict__["__builtins__"] = builtins
        if main_file is not None:
            main.__file__ = main_file
        sys.modules["__main__"] = sys.modules["__mp_main__"] = main
    ser.adopt_script_namespace(main.__dict__)
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
    start_watchdog(sock)
    # Actor handles unpickled in this process call through the client channel.
    _context.enter(kind, ChildClient(client))
    if getattr(sys.modules.get("__main__"), "__name__", None) == "__main__":  # forked (see with_main)
        ser.forked_from_driver()
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


def start_watchdog(sock: socket.socket) -> None:
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

