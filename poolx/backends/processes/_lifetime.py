"""How long poolx's child processes live: never longer than their driver.

The watchdog thread of each child (``child._boot.start_watchdog``) ends it when
the driver hangs up, but it is a Python thread: a task stuck in a C call
that holds the GIL keeps it from running, and the child outlived a driver
killed with ``kill -9`` until that call returned (issue 19, item 8), with
the forkserver and the resource tracker that it kept alive.  So, on Linux,
the kernel ends the child instead: ``PR_SET_PDEATHSIG`` sends it SIGKILL
when its parent ends.  Three things make that hold:

- The "parent" is the *thread* that forked the child: a child started from
  a thread that later ends would be killed with it.  Every child is started
  from the main thread or from one thread that lives as long as the process
  (``start_process``).
- Under forkserver the parent is the forkserver, which stays up while any
  process holds the write end of its "alive" pipe; every forkserver child
  inherits one, so a stuck worker kept the forkserver up and the forkserver
  kept the worker up.  Each poolx child closes its copy
  (``leave_forkserver_alive_pipe``; the stdlib's children never use it: a
  forkserver child that starts processes starts a forkserver of its own), so
  the forkserver ends with the driver and its children with it.  poolx's own
  forkserver (``_zygote``, forked from the driver) works the same way, and
  has the death signal itself.
- A parent that ended before the child set the signal sends none: the child
  checks right after (``die_with_parent``).

The resource tracker ends by itself once every process holding its pipe
(the driver, the workers) has ended, after releasing what they leaked.

The forkserver listens on a socket inside a temporary folder that
``multiprocessing`` removes at a normal exit only; a driver killed with
``kill -9`` or SIGTERM left it behind.  poolx gives multiprocessing a folder
of its own instead (``own_temp_dir``), locked for as long as the driver (or a
process forked from it) lives; the next driver to start a forkserver removes
the folders whose lock nobody holds.

Last, the exit code of a forkserver child comes back through the
forkserver; once the forkserver is dead, ``multiprocessing`` says 255 for a
child it never heard about.  ``exit_code`` tells that apart.
"""

from __future__ import annotations

import functools
import os
import queue
import select
import signal
import socket
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any

# linux/prctl.h
PR_SET_PDEATHSIG = 1
# The folders poolx makes for multiprocessing's temporary files (the
# forkserver's socket) start with this; "pymp-" is multiprocessing's own prefix.
TEMP_PREFIX = "pymp-poolx-"
# linux/sched.h: set in /proc/<pid>/stat's flags from the start of a process's
# exit, before its fds are closed (which is when a forkserver's children see
# their status pipe end) and until it is reaped.
PF_EXITING = 0x4


# -- the child's side ----------------------------------------------------------------

def die_with_parent(sock: socket.socket) -> None:
    """Have the kernel kill this process (SIGKILL) when its parent ends (Linux).

    ``sock`` is the worker's end of its channel to the driver.  If the parent
    ended before the signal was set, no signal will come: exit now.
    """
    if not set_parent_death_signal():
        return
    if _driver_hung_up(sock) or _parent_changed():
        os._exit(0)


def set_parent_death_signal() -> bool:
    """PR_SET_PDEATHSIG with SIGKILL (Linux); whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return bool(prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0)


def _driver_hung_up(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), getattr(select, "POLLRDHUP", 0) | select.POLLHUP)
    return bool(poller.poll(0))


def _parent_changed() -> bool:
    """Under fork and spawn the parent is the driver: has a reaper taken its place?

    (A forkserver child's parent is the forkserver, whose pid it does not
    know; the forkserver ends only after the driver, which _driver_hung_up sees.)
    """
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None or _is_forkserver_child():
        return False
    return os.getppid() != parent.pid


def _is_forkserver_child() -> bool:
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    # The forkserver sets its address, never its pid (that is its driver's state).
    return server._forkserver_address is not None and server._forkserver_pid is None


def leave_forkserver_alive_pipe() -> None:
    """Close this forkserver child's copy of the forkserver's "alive" pipe.

    The forkserver exits when every holder of the pipe's write end has ended:
    without this, a child stuck with the GIL held keeps its forkserver, and
    so itself (through PR_SET_PDEATHSIG), alive after the driver died.
    """
    if not _is_forkserver_child():
        return
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    fd, server._forkserver_alive_fd = server._forkserver_alive_fd, None
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


# -- the driver's side: starting children ------------------------------------------------

_Job = tuple[Callable[[], Any], list[Any], threading.Event]


class _Starter:
    """The thread every child is started from, unless the main thread starts it.

    A child's PR_SET_PDEATHSIG fires when the thread that forked it ends, so
    children must not be started from a thread that may end before the
    process does (the scheduler's, a caller's).  This one is never stopped;
    it waits for work with the GIL released.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is threading.main_thread():
            return fn()  # the main thread lives as long as the process
        box: list[Any] = []
        done = threading.Event()
        thread = self._thread()
        self.jobs.put((fn, box, done))
        while not done.wait(1.0):
            if not thread.is_alive():  # (only at interpreter exit)
                raise RuntimeError("poolx cannot start a process: the interpreter is exiting")
        ok, value = box
        if not ok:
            raise value
        return value

    def _thread(self) -> threading.Thread:
        with self.lock:
            if self.thread is None or self.pid != os.getpid():  # (a forked child has no such thread)
                self.jobs = queue.SimpleQueue()
                self.thread = threading.Thread(target=self._run, args=(self.jobs,),
                                               name="poolx-starter", daemon=True)
                self.thread.start()
                self.pid = os.getpid()
            return self.thread

    @staticmethod
    def _run(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            fn, box, done = jobs.get()
            try:
                box[:] = [True, fn()]
            except BaseException as exc:
                box[:] = [False, exc]
            finally:
                del fn
                done.set()


_starter = _Starter()
# The forkserver that started each forkserver child (its pid), for exit_code.
_forkserver_of: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def starter_thread() -> threading.Thread:
    """The thread children are started from (started on first use; tests start it early)."""
    return _starter._thread()


def start_process(process: Any, run_main: bool = True) -> None:
    """``process.start()``, from a thread that lives as long as this process.

    Without ``run_main`` (poolx's own children), a spawn or forkserver child
    does not run the program's main module first (see ``_start_without_main``).
    """
    forkserver = getattr(process, "_start_method", None) == "forkserver"
    if forkserver:
        own_temp_dir()
    if run_main:
        _starter.call(process.start)
    else:
        _filter_preparation_data()
        _starter.call(functools.partial(_start_without_main, process))
    if forkserver:
        from multiprocessing import forkserver as fs

        # (poolx's zygote, or the stdlib's forkserver: see _zygote)
        pid = getattr(process, "server_pid", getattr(fs._forkserver, "_forkserver_pid", None))
        if pid is not None:
            _forkserver_of[process] = pid


# -- the driver's side: children that do not run the script -------------------------------
#
# A spawn or forkserver child of multiprocessing first runs the program's main
# module again (as __mp_main__), from the "preparation data" the parent sends
# it, so that functions pickled by name as __main__.f are found; hence the
# stdlib's rule that a script guards its top level with
# ``if __name__ == "__main__":``.  A script without the guard created an
# executor in every child, whose workers did the same, until poolx gave up
# with InitializerError after some 230 lines of tracebacks (issue 21, item 1);
# under fork, the stdlib's default on Linux up to 3.13, such scripts run.
# poolx's children need no script: its functions travel by value (see
# _serialization), as loky's.  So the preparation data of a poolx child names
# no main module, and the child never runs one, guard or no guard; spawn too,
# where the stdlib requires the guard.  multiprocessing offers no way to say
# so for one process: its Popen classes read the data from
# ``multiprocessing.spawn.get_preparation_data``, which poolx wraps once; the
# wrapper changes the data only on a thread that is starting a poolx child.

_preparing = threading.local()  # .poolx: this thread is starting a poolx child
_filter_lock = threading.Lock()
_filter_installed: list[bool] = []


def _start_without_main(process: Any) -> None:
    _preparing.poolx = True
    try:
        process.start()
    finally:
        _preparing.poolx = False


def _filter_preparation_data() -> None:
    """Wrap multiprocessing's ``get_preparation_data`` (once per process): see above."""
    from multiprocessing import spawn

    with _filter_lock:
        if _filter_installed:
            return
        original = spawn.get_preparation_data

        def get_preparation_data(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
            data: dict[str, Any] = original(name, *args, **kwargs)
            if getattr(_preparing, "poolx", False):
                data.pop("init_main_from_path", None)
                data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = get_preparation_data
        _filter_installed.append(True)


# -- the driver's side: how a child ended -------------------------------------------------

def exit_code(process: Any) -> int | None:
    """The exit code of an ended child as far as it is known; None when it is not.

    ``process.exitcode``, except for a forkserver child whose forkserver died:
    the forkserver reports each child's exit code through a pipe, and when it
    dies first ``multiprocessing`` says 255 (a placeholder) for a child it
    never heard about.  Then the real code is unknown: the child was not this
    process's child, so nothing else here can learn it.  (A real exit with
    255 under a forkserver that died afterwards is reported as unknown too.)
    """
    code = process.exitcode
    if code != 255 or process not in _forkserver_of:
        return code
    return None if _ended(_forkserver_of[process]) else 255


def _ended(pid: int) -> bool:
    """Has our child ``pid`` ended, or begun to end?  Never reaps it."""
    try:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True  # a zombie, not reaped yet
    except ChildProcessError:
        return True  # reaped (multiprocessing does, before starting another forkserver)
    except (AttributeError, OSError):
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return bool(int(fields[6]) & PF_EXITING)  # (field 9, the flags: the 7th after the name)
    except (OSError, IndexError, ValueError):
        return False


# -- the driver's side: multiprocessing's temporary folder ------------------------------

_temp_lock: list[int] = []  # the fd that holds this process's folder's lock (never closed)
_temp_dir_lock = threading.Lock()


def own_temp_dir() -> None:
    """Give multiprocessing a temporary folder that the next run can clean up.

    Only while multiprocessing has none yet (a running forkserver keeps the
    folder it has).  The folder is locked (flock) for as long as this process,
    or a process forked from it, lives; first, the folders of ended drivers
    (whose lock nobody holds) are removed.
    """
    from multiprocessing import process, util

    config = process.current_process()._config  # type: ignore[attr-defined]
    with _temp_dir_lock:  # (a worker and an actor may start at once, from two threads)
        if config.get("tempdir") is not None or not hasattr(os, "O_DIRECTORY"):
            return
        base = tempfile.gettempdir()
        sweep_temp_dirs(base)
        path = _new_locked_dir(base)
        if path is None:
            return  # multiprocessing makes its own, as before
        util.Finalize(None, _remove_dir, args=(path,), exitpriority=-100)
        config["tempdir"] = path


def _new_locked_dir(base: str) -> str | None:
    import fcntl

    for _ in range(3):  # a sweep by another driver may take it between mkdtemp and flock
        path = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=base)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            _temp_lock.append(fd)
            return path
        os.close(fd)
    return None


def sweep_temp_dirs(base: str) -> list[str]:
    """Remove the poolx temporary folders in ``base`` that no live process holds; returns them.

    Only this user's own folders (a real directory, not a link), and only
    those whose lock can be taken: their driver, and every process forked
    from it, has ended.
    """
    import fcntl
    import shutil
    import stat

    removed: list[str] = []
    try:
        names = [e.name for e in os.scandir(base) if e.name.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its driver is alive
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _remove_dir(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
