"""The profilers that run inside each worker and actor process.

``ProfilerHook`` is the ``Executor.for_front_end(child_hook=...)`` object of a profiled run.
A backend calls ``start(label)`` before user code and ``stop()`` after it, in
the process (and the thread) that runs that code.  Two ways of using it:

- **once per process** (the processes backend): the backend unpickles the
  hook in every worker and actor process it starts, calls ``start("worker
  0")`` or ``start("actor Sampler#3")`` before any user code, and ``stop()``
  when the child ends normally;
- **once per call** (the cluster backends, dask and ray): a cluster's worker
  processes are not poolx's and outlive the executor, so the backend calls
  ``start("task")`` (or the actor's label) before each task, actor method
  call and actor constructor, and ``stop()`` in a ``finally`` after it.

Every ``start`` writes a file of its own in ``directory``:
``<label>-p<pid>.<ext>`` for a process's first capture there, then
``<label>-p<pid>-1.<ext>``, ``-2`` and so on; ``profiles.py`` combines the
files of one process.  Captures are kept per thread (a Dask worker runs tasks
in threads); a ``start`` inside a running capture of the same thread only
nests (the outer capture covers it).

For the other ways a child ends, while a capture runs:

- SIGTERM (``terminate_workers()``): in a process whose main thread starts a
  capture with no SIGTERM handler of its own (a poolx child does not install
  one), a handler turns SIGTERM into ``SystemExit``, so the child unwinds and
  ``stop()`` runs; ``stop()`` puts the previous handler back.  A process with
  a handler of its own (a Ray worker) keeps it;
- a hard exit that skips ``finally`` blocks but not multiprocessing's exit
  handlers: a ``multiprocessing.util.Finalize`` calls ``stop()`` too (and
  ``stop()`` cancels it, so a long-lived worker collects none);
- SIGKILL, a segfault, ``os._exit``: nothing can run.  The CPU profile of that
  process is lost (the report says so); memray's capture file is written as
  the process goes (``FileFormat.ALL_ALLOCATIONS``), so it stays readable.

CPU and memory profilers never run in the same process at once (a run asks for
one: the sampler's stack walks would show in memray's allocations).  memray
tracks one capture per process at a time: a call that starts while another
thread of the process is captured is not captured itself (its allocations are
in the running capture, which tracks every thread).

A process where ``directory`` does not exist (a cluster worker on another
machine) captures nothing: the driver reads the profiles from that folder.

Child-safe: imports only the profiler it needs, when it starts.  A profiler
that fails to start or to write is reported on stderr, never raised: profiling
must not break the user's call.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _sampler

#: The CPU sampler's interval (seconds; the trade-off is in ``_sampler``).
CPU_INTERVAL = _sampler.INTERVAL


def slug(label: str) -> str:
    """A file-name-safe form of a worker or actor label ("actor Sampler#3" -> "actor-Sampler-3")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


# Captures started in this process, per folder (per pid: a forked child starts again at 0).
_seq_lock = threading.Lock()
_seq_pid = 0
_seqs: dict[str, Any] = {}
# memray allows one active Tracker per process.
_memray_busy = threading.Lock()


def _next_seq(directory: str) -> int:
    global _seq_pid
    with _seq_lock:
        if _seq_pid != os.getpid():
            _seq_pid = os.getpid()
            _seqs.clear()
        return int(next(_seqs.setdefault(directory, itertools.count())))


@dataclass
class _Capture:
    path: str
    depth: int = 1
    profiler: Any = None  # a _sampler.Recording
    tracker: Any = None
    finalizer: Any = None
    old_sigterm: Any = None  # the handler to put back (None: not replaced)


class ProfilerHook:
    """Start a CPU (``_sampler``: pyinstrument sessions) or memory (memray) profiler in a worker process."""

    def __init__(self, kind: str, directory: str) -> None:
        if kind not in ("cpu", "mem"):
            raise ValueError(f"unknown profiler kind {kind!r}: expected 'cpu' or 'mem'")
        self.kind = kind
        self.directory = directory
        self.driver_pid = os.getpid()
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, _Capture] = {}  # by thread ident

    # The hook is pickled to the workers (poolx's pickler, or cloudpickle on a
    # cluster): only its settings travel.
    def __getstate__(self) -> dict[str, Any]:
        return {"kind": self.kind, "directory": self.directory, "driver_pid": self.driver_pid}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def path_for(self, label: str, pid: int, seq: int = 0) -> str:
        ext = "pyisession" if self.kind == "cpu" else "bin"
        suffix = f"-{seq}" if seq else ""
        return str(Path(self.directory) / f"{slug(label)}-p{pid}{suffix}.{ext}")

    def start(self, label: str) -> None:
        """Start capturing this thread's work (a new file); never raises."""
        key = threading.get_ident()
        with self._lock:
            running = self._active.get(key)
            if running is not None:  # nested in a capture of this thread: it covers this call
                running.depth += 1
                return
        try:
            capture = self._start(label)
        except Exception as exc:
            print(f"poolx profile: cannot start the {self.kind} profiler in pid {os.getpid()}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            capture = None
        with self._lock:
            # (a failed start still counts its nesting, so that stop() pairs up)
            self._active[key] = capture if capture is not None else _Capture("")
        if capture is not None:
            from multiprocessing import util

            capture.finalizer = util.Finalize(self, functools.partial(self._finish, key),
                                              exitpriority=10)

    def _start(self, label: str) -> _Capture | None:
        if not os.path.isdir(self.directory):
            # A worker on another machine: the driver's folder is not here, and nothing
            # written here would reach the report (the report names the worker).
            return None
        capture = _Capture(self.path_for(label, os.getpid(), _next_seq(self.directory)))
        if self.kind == "cpu":
            # (the sampler, not pyinstrument's Profiler: its per-call hook made
            # call-heavy programs several times slower; see _sampler)
            capture.profiler = _sampler.start(label, sys._getframe())
        else:
            import memray

            if not _memray_busy.acquire(blocking=False):
                return None  # another thread's capture is running (and tracks this one too)
            try:
                capture.tracker = memray.Tracker(capture.path,
                                                 file_format=memray.FileFormat.ALL_ALLOCATIONS)
                capture.tracker.__enter__()
            except BaseException:
                _memray_busy.release()
                raise
        if (os.getpid() != self.driver_pid and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
            # a child with no SIGTERM handler: SIGTERM unwinds, so stop() runs
            capture.old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return capture

    def stop(self) -> None:
        """Write what this thread captured (once; an unmatched call does nothing)."""
        key = threading.get_ident()
        with self._lock:
            capture = self._active.get(key)
            if capture is None:
                return
            capture.depth -= 1
            if capture.depth > 0:
                return
        self._finish(key)

    def _finish(self, key: int) -> None:
        with self._lock:
            capture = self._active.pop(key, None)
        if capture is None:
            return
        finalizer, capture.finalizer = capture.finalizer, None
        if finalizer is not None:
            finalizer.cancel()  # (when called by it, it is already out of the registry)
        if capture.old_sigterm is not None:
            try:
                signal.signal(signal.SIGTERM, capture.old_sigterm)
            except ValueError:  # not in the main thread (the finalizer at exit)
                pass
        try:
            if capture.profiler is not None:
                _sampler.stop(capture.profiler).save(capture.path)
            if capture.tracker is not None:
                try:
                    capture.tracker.__exit__(None, None, None)
                finally:
                    _memray_busy.release()
        except Exception as exc:  # (never the user's call's error)
            print(f"poolx profile: cannot write {capture.path}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)
