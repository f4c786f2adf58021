"""Starting, signalling and releasing child processes (task workers and actors alike).

``Spawner.spawn`` gives a new child its work channel, its client channel and
its progress cell (``_cell``), and starts it from the one thread that may
start children (``_lifetime``).  The entry points themselves (``child/``)
are handed in by ``_backend``: the driver never imports the child's modules.
Here too: the crash dump a dead child leaves after its progress cell, and
the driver ends of every channel, closed in any process forked from the
driver.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from .... import _fds
from .. import _lifetime
from .._cell import DUMP_OFFSET, PROGRESS_BYTES
from ..protocol import FdForChild

# A child's state, as the driver sees it (task workers and actor processes alike).
STARTING, READY, STOPPING = "starting", "ready", "stopping"
# How much of a dead worker's faulthandler dump goes into the error message.
CRASH_DUMP_BYTES = 8192
# Send buffer of the driver's end of a worker channel (see _widen).
SOCKET_BUFFER = 4 << 20

# Driver ends of every live channel: a process forked from the driver must not
# hold them, or a worker would not see its driver hang up (see child/_boot's watchdog).
driver_socks: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _closedriver_socks_in_child() -> None:
    for sock in list(driver_socks):
        try:
            sock.close()
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_closedriver_socks_in_child)


class ChildEntries(NamedTuple):
    """The entry points of the children (``child/``), handed in by ``_backend``."""

    worker: Callable[..., None]  # a task worker's main
    actor: Callable[..., None]  # an actor process's main
    with_main: Callable[..., None]  # spawn, forkserver: a stand-in for the driver's script, then one of them


class Spawner:
    """Starts children for one executor (any thread): see ``spawn``."""

    def __init__(self, ctx: Any, with_main: Callable[..., None]) -> None:
        self.ctx = ctx
        self.with_main = with_main  # the child's entry under spawn and forkserver
        # The script's path, for the stand-in module of a spawn or forkserver
        # child (which never runs the script: see _lifetime); read now, while
        # the script runs (CPython deletes __main__.__file__ as it ends).
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        self.main_file = main_file if isinstance(main_file, str) else None

    def spawn(self, target: Any, args: tuple[Any, ...], name: str) -> tuple[Any, ...]:
        """Start a child process (a task worker or an actor); any thread.

        It gets its work channel, its client channel and its progress cell
        before ``args``.  Returns (process, driver end of the work channel,
        driver end of the client channel, progress cell, its fd).
        """
        parent, child = _fds.socketpair()  # (above stdio, as every fd of poolx: see _fds)
        _widen(parent)
        client_parent, client_child = _fds.socketpair()
        fd, path = tempfile.mkstemp(prefix="poolx-progress-")
        cell = None
        try:
            fd = _fds.lift(fd)
            os.unlink(path)  # nothing to clean up, ever: the fds keep it alive
            os.ftruncate(fd, DUMP_OFFSET)  # sparse: the log's pages exist once written
            cell = _fds.mmap(fd, PROGRESS_BYTES)
            driver_socks.add(parent)
            driver_socks.add(client_parent)
            args = (child, client_child, FdForChild(fd), *args)
            if self.ctx.get_start_method() != "fork":  # (fork copies the script's module)
                target, args = self.with_main, (self.main_file, target, *args)
            process = self.ctx.Process(target=target, args=args, name=name)
            with _start_held(self.ctx):
                # (from a thread that never ends; never running the script: see _lifetime)
                _lifetime.start_process(process, run_main=False)
        except BaseException:  # no process: release what was made for it
            if cell is not None:
                cell.close()
            os.close(fd)
            for sock in (parent, client_parent):
                driver_socks.discard(sock)
                sock.close()
            raise
        finally:
            child.close()
            client_child.close()
        parent.setblocking(False)
        return process, parent, client_parent, cell, fd


def signal_process(process: Any, kill: bool) -> None:
    """SIGKILL (``kill``) or SIGTERM a child, if it is still there."""
    try:
        if kill:
            process.kill()
        else:
            process.terminate()
    except (OSError, AttributeError, ValueError):
        pass


def close_process(process: Any) -> None:
    """Release a finished process's resources.

    Inside a loky worker the global start method is loky's, whose Popen has
    no close(): its resources go with the object instead.
    """
    if process.exitcode is not None:
        try:
            process.close()
        except AttributeError:
            pass


def crash_dump_fd(fd: int) -> str:
    """A child's faulthandler output (after its progress cell and log), if a fatal error wrote one."""
    try:
        dump = os.pread(fd, CRASH_DUMP_BYTES, DUMP_OFFSET).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f"\n\nThe worker's Python stack when it died (faulthandler):\n{dump}" if dump else ""


def _start_held(ctx: Any) -> Any:
    """While multiprocessing starts a child: stdio held under spawn and forkserver (``_fds``).

    Their pipes (the data written to a spawned child, kept open until the
    Process is collected; the forkserver's liveness pipe, for the driver's
    life) would otherwise take a stdio number a driver had closed, and its
    print() would write into them.  Not under fork: the child would inherit
    the placeholders, and fork's only pipe left open in the driver is a read end.
    """
    return contextlib.nullcontext() if ctx.get_start_method() == "fork" else _fds.stdio_held()


def _widen(sock: socket.socket) -> None:
    """Let a whole task message of up to SOCKET_BUFFER bytes sit in the socket.

    With the default buffer (~208 KB) a 1 MB argument takes five trips through
    the scheduler loop, each of which may wait up to the 5 ms GIL switch
    interval behind a busy caller thread (joblib's); measured, a task with a
    1 MB argument then started ~4 ms after its dispatch instead of ~0.5 ms.
    The kernel caps the size at net.core.wmem_max without an error.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    except OSError:
        pass
