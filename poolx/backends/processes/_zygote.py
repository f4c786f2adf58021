"""poolx's own forkserver: a zygote forked from the driver, which already holds poolx.

The stdlib forkserver is a fresh interpreter: the first worker of a program
waits for it to start and import poolx's worker (~140 ms here, against
~30 ms for a fork).  When the driver is still small and plain, poolx forks
its forkserver from it instead, once, at its first executor (the *zygote*):
the copy has every module the worker needs already imported, and serves
forks with the stdlib forkserver's own loop (``multiprocessing.forkserver.main``)
and protocol, so its children are forkserver children in every respect that
``multiprocessing`` and the driver can see: the executor's start method
stays ``"forkserver"``, and so do its processes'.

Forkserver's isolation, kept: the zygote is forked while the driver has one
thread (so no other thread's lock is copied held), and then, before it
serves: every fd it got from the driver except stdio is pointed at
/dev/null (a file, pipe or socket of the program is not held open by the
workers; an object still naming the fd closes /dev/null, never a reused
number), signal handlers and logging handlers are reset, and the script's
module is replaced, so the workers get the script's functions by value
(``child._boot.with_main``) and never run the script; a module still being
imported at the fork is dropped, to be imported afresh.  The zygote dies
with its driver: SIGKILL from the kernel when the driver ends
(PR_SET_PDEATHSIG), and the forkserver loop's own exit when every holder of
its "alive" pipe (the driver; each worker closes its copy at boot) is gone.

It is used only when copying the driver costs nothing a user would notice
(``unsuitable`` says why not): one thread, a resident size under
``MAX_DRIVER_RSS`` (the zygote keeps those pages, copy-on-write, after the
driver frees them), and no extension module outside the standard library
and poolx's own dependencies (numpy's global random state, a CUDA context,
an MPI library: state a fresh worker must not share), and no stdlib
forkserver already running.  Otherwise the stdlib forkserver serves, as
before.  Modules the driver had imported before its first executor (pure
Python) are in the workers as the driver had them then, as under fork.  The
multiprocessing forkserver of the program's own pools is never touched.
``POOLX_ZYGOTE=0`` in the environment turns the zygote off.
"""

from __future__ import annotations

import gc
import io
import os
import signal
import socket
import sys
import threading
import types
from importlib.machinery import EXTENSION_SUFFIXES
from multiprocessing import connection, context, forkserver, popen_forkserver, reduction, spawn, util
from typing import Any

from . import _lifetime

# (multiprocessing's private helpers, which its typing stubs do not list)
_util: Any = util
_connection: Any = connection

# A driver larger than this gets the stdlib forkserver: the zygote would keep
# its pages (copy-on-write) after the driver frees or changes them.  A driver
# that has imported poolx is ~30 MB; a script that has already loaded data
# is not what the zygote is for.
MAX_DRIVER_RSS = 128 << 20
# Third-party packages poolx itself imports (extension modules among them: psutil's).
OWN_PACKAGES = frozenset({"poolx", "cloudpickle", "loky", "psutil"})
# linux/prctl.h: the process name ps and top show (so the zygote is told apart from its driver).
PR_SET_NAME = 15
ZYGOTE_NAME = b"poolx-zygote"


class Zygote(forkserver.ForkServer):
    """The forkserver of poolx's executors (one per driver), forked from the driver.

    ``ensure_running`` is the stdlib's: while the zygote lives it does
    nothing; if the zygote died, it starts a stdlib forkserver in its place
    (a fresh interpreter that preloads poolx's worker).
    """

    def __init__(self) -> None:
        super().__init__()
        self._preload_modules = ["poolx.backends.processes.child._worker"]
        self.owner = os.getpid()

    def fork(self) -> None:
        """Fork the zygote from this (single-threaded) driver; its pid, address and alive pipe are kept."""
        _lifetime.own_temp_dir()  # (the socket's folder: one the next driver can clean up)
        state: Any = self  # (the stdlib's private fields)
        with state._lock, socket.socket(socket.AF_UNIX) as listener:
            address = _connection.arbitrary_address("AF_UNIX")
            listener.bind(address)
            if not _util.is_abstract_socket_namespace(address):
                os.chmod(address, 0o600)
            listener.listen()
            alive_r, alive_w = os.pipe()
            driver = os.getpid()
            # What the driver printed and has not written yet would be copied into
            # every worker's buffer, and printed again by each (as fork's Popen does).
            _util._flush_std_streams()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(alive_w)
                    _serve(listener.fileno(), alive_r, driver)
                finally:
                    os._exit(0)
            os.close(alive_r)
            state._forkserver_address, state._forkserver_alive_fd = address, alive_w
            state._forkserver_pid = pid


_zygote: Zygote | None = None


def _forget_in_child() -> None:
    """A process forked from the driver (a worker, the user's fork) neither holds nor uses its zygote."""
    global _zygote
    server: Any = _zygote
    _zygote = None
    if server is not None and server._forkserver_alive_fd is not None:
        try:
            os.close(server._forkserver_alive_fd)
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def zygote_context() -> Any:
    """The forkserver context served by the zygote (started now if need be), or None when unsuitable."""
    global _zygote
    if _zygote is None:
        if unsuitable() is not None:
            return None
        server = Zygote()
        server.fork()
        _zygote = server
    return ZygoteContext()


def running() -> Zygote | None:
    """This driver's zygote, if it has started one."""
    return _zygote


def unsuitable() -> str | None:
    """Why this driver may not fork a zygote now, or None when it may."""
    if os.environ.get("POOLX_ZYGOTE", "1") == "0":
        return "POOLX_ZYGOTE=0"
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return "not Linux"
    if hasattr(forkserver.ForkServer(), "_forkserver_authkey"):
        return "this Python's forkserver authenticates its clients"
    if getattr(forkserver._forkserver, "_forkserver_pid", None) is not None:
        return "multiprocessing's forkserver is running already (started by an earlier executor)"
    if threading.current_thread() is not threading.main_thread() or _threads() != 1:
        return "the driver has more than one thread"
    if _resident_bytes() > MAX_DRIVER_RSS:
        return f"the driver's resident size is over {MAX_DRIVER_RSS >> 20} MiB"
    foreign = _foreign_extension()
    if foreign is not None:
        return f"the driver has loaded the extension module {foreign}"
    return None


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0  # (unknown: not 1, so no zygote)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return MAX_DRIVER_RSS + 1


def _foreign_extension() -> str | None:
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    suffixes = tuple(EXTENSION_SUFFIXES)
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top in stdlib or top in OWN_PACKAGES:
            continue
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(suffixes):
            return name
    return None


# -- the driver's side: processes started through the zygote -----------------------------

class ZygotePopen(popen_forkserver.Popen):
    """``popen_forkserver.Popen`` talking to the zygote instead of the stdlib's forkserver."""

    def _launch(self, process_obj: Any) -> None:
        server: Any = _zygote
        mine: Any = self  # (the stdlib's private fields)
        if server is None:
            raise RuntimeError("poolx's zygote is gone in this process (it was forked from its driver); "
                               "start the executor here anew")
        data = io.BytesIO()
        context.set_spawning_popen(self)  # (the fds the pickles name are passed with the request)
        try:
            reduction.dump(spawn.get_preparation_data(process_obj._name), data)
            reduction.dump(process_obj, data)
        finally:
            context.set_spawning_popen(None)
        self.sentinel, writer = server.connect_to_new_process(mine._fds)
        # The child watches a copy of the write end to learn that its parent ended.
        held = os.dup(writer)
        self.finalizer = _util.Finalize(self, _util.close_fds, (held, self.sentinel))
        with open(writer, "wb", closefd=True) as f:
            f.write(data.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class ZygoteProcess(context.ForkServerProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> ZygotePopen:
        return ZygotePopen(process_obj)

    @property
    def server_pid(self) -> int | None:
        """The pid of the process that forked this one (for ``_lifetime.exit_code``)."""
        server: Any = _zygote
        return server._forkserver_pid if server is not None else None


class ZygoteContext(context.ForkServerContext):
    """multiprocessing's forkserver context, its processes forked by the zygote."""

    _name = "forkserver"
    Process = ZygoteProcess


# -- the zygote's side ----------------------------------------------------------------------

def _serve(listener: int, alive_r: int, driver: int) -> None:
    """Become the zygote: die with the driver, shed what it holds, then serve forks (never returns)."""
    _name_process()
    if not _lifetime.set_parent_death_signal() or os.getppid() != driver:
        return  # (no death signal, or the driver already gone: do not outlive it)
    _reset_signals()
    _isolate_fds(keep={0, 1, 2, listener, alive_r})
    _fresh_modules()
    _reset_logging()
    stdlib_server: Any = forkserver._forkserver  # (the workers' view of their forkserver: see _lifetime)
    stdlib_server._forkserver_pid = stdlib_server._forkserver_alive_fd = None
    # The driver's objects stay shared: no worker's collection walks (so writes to) their pages.
    # (No collection first: it took 17 ms, on the first worker's path.)
    gc.freeze()
    try:
        forkserver.main(listener, alive_r, [])
    except SystemExit:
        pass  # every holder of the alive pipe has gone


def _name_process() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_NAME, ZYGOTE_NAME, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _reset_signals() -> None:
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)) and sig != signal.SIGINT:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _isolate_fds(keep: set[int]) -> None:
    """Point every fd inherited from the driver (but ``keep``) at /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep or fd == null:
            continue
        try:
            os.fstat(fd)  # (the listing's own fd is closed by now)
        except OSError:
            continue
        os.dup2(null, fd, inheritable=os.get_inheritable(fd))
    os.close(null)


def _fresh_modules() -> None:
    """No script module (the workers get a stand-in: see with_main), no half-imported module."""
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            del sys.modules[name]
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    sys.modules.pop("__mp_main__", None)


def _reset_logging() -> None:
    """A fresh interpreter's workers have no log handlers; the driver's write to fds now /dev/null."""
    logging = sys.modules.get("logging")
    if logging is None:
        return
    loggers = [logging.root, *(x for x in logging.root.manager.loggerDict.values()
                               if isinstance(x, logging.Logger))]
    for logger in loggers:
        logger.handlers.clear()
