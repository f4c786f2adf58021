"""What ``poolx profile run`` shows while the program runs.

The session in the program's interpreter rewrites a small status file every
half second (``session.py``; its format in the Session's docstring): tasks
done, failed, queued and running, workers busy, throughput, and each worker's
memory.  This parent reads it and shows it one of two ways:

- **live** (stdout is a terminal, ``CI`` is not set, rich is installed, no
  ``--no-live``): one ``rich.live`` area at the bottom of the terminal; the
  program's stdout and stderr come through pipes and are relayed, line by
  line, above it (the program runs with ``PYTHONUNBUFFERED``, so its lines
  arrive as it writes them);
- **plain**: the program's stdio is its own, untouched (this process does not
  touch the bytes), and a status line goes to stderr every ``STATUS_EVERY``
  seconds.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .report import size

#: Seconds between two plain status lines: often enough to see a long run move,
#: rarely enough not to bury the program's own output.
STATUS_EVERY = 5.0
#: Seconds between two redraws of the live area (the session writes every 0.5 s).
REFRESH_EVERY = 0.25
#: Seconds to keep relaying after the program's interpreter ended: a process it left
#: behind may hold the pipes open, and the command must not wait for it.
PIPE_GRACE = 2.0


def wanted(no_live: bool) -> bool:
    """Whether a live area can be shown: a terminal, not CI, rich installed, not --no-live."""
    if no_live or os.environ.get("CI") or not sys.stdout.isatty():
        return False
    try:
        import rich.live  # noqa: F401
    except ImportError:
        return False
    return True


def read_status(path: Path) -> dict[str, Any] | None:
    """The last status the session wrote, or None (not yet written, or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status_line(status: dict[str, Any]) -> str:
    """One plain line: time, tasks, workers, throughput and memory per worker."""
    line = (f"poolx profile run: {status.get('t', 0.0):.1f} s: {status.get('tasks_done', 0)} tasks done"
            f" ({status.get('tasks_failed', 0)} failed), {status.get('tasks_queued', 0)} queued, "
            f"{status.get('tasks_running', 0)} running; {status.get('workers_busy', 0)}/"
            f"{status.get('workers', 0)} workers busy; {status.get('throughput', 0.0):.1f} tasks/s")
    memory = status.get("memory") or []
    if memory:
        line += "; memory: " + ", ".join(f"{m.get('label', '?')} {size(m.get('rss'))}" for m in memory)
    return line


def render(status: dict[str, Any] | None, title: str) -> Any:
    """The live area (a rich renderable) for ``status``."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("poolx", title)
    if status is None:
        grid.add_row("", "starting (no executor observed yet)")
        return grid
    grid.add_row("time", f"{status.get('t', 0.0):.1f} s, {status.get('executors', 0)} executor(s)")
    grid.add_row("tasks", f"{status.get('tasks_done', 0)} done ({status.get('tasks_failed', 0)} failed), "
                 f"{status.get('tasks_queued', 0)} queued, {status.get('tasks_running', 0)} running, "
                 f"{status.get('throughput', 0.0):.1f}/s")
    grid.add_row("workers", f"{status.get('workers_busy', 0)} of {status.get('workers', 0)} busy")
    for m in status.get("memory") or []:
        grid.add_row("", f"{m.get('label', '?')} (pid {m.get('pid', '?')}): {size(m.get('rss'))}")
    return grid


def watch(command: list[str], env: dict[str, str], status: Path, title: str, *, live: bool,
          every: float = STATUS_EVERY) -> int:
    """Run ``command`` to its end, showing its status; its return code (negative: a signal)."""
    if live:
        return _watch_live(command, env, status, title)
    proc = subprocess.Popen(command, env=env)
    try:
        while True:
            try:
                return proc.wait(timeout=every)
            except subprocess.TimeoutExpired:
                current = read_status(status)
                if current is not None:
                    print(status_line(current), file=sys.stderr, flush=True)
    finally:
        _reap(proc)


def _watch_live(command: list[str], env: dict[str, str], status: Path, title: str) -> int:
    from rich.live import Live

    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
    readers = [threading.Thread(target=_pump, args=(pipe, name, lines), daemon=True)
               for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
    for reader in readers:
        reader.start()
    open_pipes = len(readers)
    try:
        # (redirect_stdout/stderr: what is written to sys.stdout/err goes above the area)
        with Live(render(None, title), refresh_per_second=1 / REFRESH_EVERY, transient=True,
                  redirect_stdout=True, redirect_stderr=True) as area:
            ended: float | None = None
            while open_pipes and (ended is None or time.monotonic() - ended < PIPE_GRACE):
                open_pipes -= _relay(lines, REFRESH_EVERY)
                area.update(render(read_status(status), title))
                if ended is None and proc.poll() is not None:
                    ended = time.monotonic()
        return proc.wait()
    finally:
        _reap(proc)


def _pump(pipe: Any, name: str, lines: queue.Queue[tuple[str, bytes] | None]) -> None:
    for line in iter(pipe.readline, b""):
        lines.put((name, line))
    pipe.close()
    lines.put(None)


def _relay(lines: queue.Queue[tuple[str, bytes] | None], wait: float) -> int:
    """Write the lines waiting (``wait`` seconds at most for the first); how many pipes closed."""
    closed = 0
    deadline = time.monotonic() + wait
    while True:
        try:
            item = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return closed
        if item is None:
            closed += 1
            continue
        name, line = item
        target: IO[str] = getattr(sys, name)  # (now: the live area's redirect, which writes above it)
        target.write(line.decode(errors="replace"))
        target.flush()


def _reap(proc: subprocess.Popen[Any]) -> None:
    """Never leave the program behind: this process is leaving (an error, a second Ctrl-C)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
