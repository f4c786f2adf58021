"""The profilers that run inside each worker and actor process.

``ProfilerHook`` is the ``Executor(_child_hook=...)`` object of a profiled run:
the processes backend unpickles it in every child, calls ``start(label)``
before any user code and ``stop()`` when the child ends normally.  For the
other ways a child ends:

- SIGTERM (``terminate_workers()``): a handler turns it into ``SystemExit``,
  so the child unwinds and ``stop()`` runs;
- a hard exit that skips ``finally`` blocks but not multiprocessing's exit
  handlers: a ``multiprocessing.util.Finalize`` calls ``stop()`` too;
- SIGKILL, a segfault, ``os._exit``: nothing can run.  The CPU profile of that
  process is lost (the report says so); memray's capture file is written as
  the process goes (``FileFormat.ALL_ALLOCATIONS``), so it stays readable.

CPU and memory profilers never run in the same process at once: pyinstrument's
hook makes memray lose Python stacks (../shared/research/profiling.md).

Child-safe: imports only the profiler it needs, when it starts.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

#: pyinstrument's sampling interval (seconds).
CPU_INTERVAL = 0.001


def slug(label: str) -> str:
    """A file-name-safe form of a worker or actor label ("actor Sampler#3" -> "actor-Sampler-3")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


class ProfilerHook:
    """Start a CPU (pyinstrument) or memory (memray) profiler in a child process."""

    def __init__(self, kind: str, directory: str) -> None:
        if kind not in ("cpu", "mem"):
            raise ValueError(f"unknown profiler kind {kind!r}: expected 'cpu' or 'mem'")
        self.kind = kind
        self.directory = directory
        self.driver_pid = os.getpid()
        self._profiler: Any = None
        self._tracker: Any = None
        self._path = ""

    def path_for(self, label: str, pid: int) -> str:
        ext = "pyisession" if self.kind == "cpu" else "bin"
        return str(Path(self.directory) / f"{slug(label)}-p{pid}.{ext}")

    def start(self, label: str) -> None:
        from multiprocessing import util

        self._path = self.path_for(label, os.getpid())
        if self.kind == "cpu":
            from pyinstrument import Profiler

            self._profiler = Profiler(interval=CPU_INTERVAL, async_mode="disabled")
            self._profiler.start(target_description=label)
        else:
            import memray

            self._tracker = memray.Tracker(self._path, file_format=memray.FileFormat.ALL_ALLOCATIONS)
            self._tracker.__enter__()
        if os.getpid() != self.driver_pid:  # a child: SIGTERM unwinds, so stop() runs
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        util.Finalize(self, self.stop, exitpriority=10)

    def stop(self) -> None:
        """Write what was captured (once; later calls do nothing)."""
        profiler, self._profiler = self._profiler, None
        tracker, self._tracker = self._tracker, None
        if profiler is not None:
            session = profiler.stop()
            session.save(self._path)
        if tracker is not None:
            tracker.__exit__(None, None, None)



def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)
