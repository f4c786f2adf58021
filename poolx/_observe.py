"""Watching every executor a program makes: the hook behind ``poolx.profile``.

A profiling session (``poolx.harness.session.Session``) installs itself here as
the one *observer* of this process.  Every ``Executor`` then tells it three
things, and every front end (Pool, ThreadPool, the joblib backend, the
Ray-style API) is built on ``Executor``, so all of them are seen through these
calls alone:

- ``configure(settings)``, first thing in ``Executor.__init__``, before any
  check: the observer may change, in place, ``max_workers`` (a what-if of the
  worker count), ``mp_context`` (a start method, when the program left it
  None), ``backend``, ``trace_capacity`` (None: keep every task's record) and
  ``child_hook`` (the profilers run in each worker and actor process);
- ``opened(executor)``, at the end of ``__init__``;
- ``closing(executor)``, once, when ``shutdown()``, ``terminate_workers()`` or
  ``kill_workers()`` begins, before the workers stop: their pids and their
  /proc facts (CPU time, peak memory) can still be read.

The observer's own failures are reported on stderr, never raised into the
program (``tell_opened``, ``tell_closing``; ``configured`` keeps the program's
settings).  With no observer, an executor pays one read of a module global when it is
made, and nothing per task.  The engine side imports nothing of the harness:
the observer is any object with these three methods.

A forked child starts with no observer: the parent's session is not its own
(its files, its thread and its executors are in the parent), and a task that
makes an executor inside a forked worker must not report to a copy of it.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Protocol


class Observer(Protocol):
    """What ``install`` takes (see the module docstring)."""

    def configure(self, settings: dict[str, Any]) -> None: ...

    def opened(self, executor: Any) -> None: ...

    def closing(self, executor: Any) -> None: ...


_active: Observer | None = None
_lock = threading.Lock()


def active() -> Observer | None:
    """The observer of this process, or None (a global read: what an executor pays)."""
    return _active


def install(observer: Observer) -> None:
    """Make ``observer`` see every executor made from now on in this process.

    RuntimeError if another is active: two sessions would each change the
    executors' settings and each claim their workers' profiles.
    """
    global _active
    with _lock:
        if _active is not None and _active is not observer:
            raise RuntimeError(
                f"another poolx profiling session is active in this process ({_active!r}): "
                "sessions do not nest; stop() that one first, or profile the whole block with it")
        _active = observer


def uninstall(observer: Observer) -> None:
    """Stop ``observer`` seeing new executors (nothing if it is not the active one)."""
    global _active
    with _lock:
        if _active is observer:
            _active = None


def configured(observer: Observer, max_workers: Any, mp_context: Any, backend: Any,
               trace_capacity: Any, child_hook: Any) -> tuple[Any, Any, Any, Any, Any]:
    """The Executor's settings after ``observer.configure`` (called by ``Executor.__init__``)."""
    settings = {"max_workers": max_workers, "mp_context": mp_context, "backend": backend,
                "trace_capacity": trace_capacity, "child_hook": child_hook}
    try:
        observer.configure(settings)
    except Exception as exc:  # (the program's own settings, unchanged)
        _report("configure a new executor", exc)
        return max_workers, mp_context, backend, trace_capacity, child_hook
    return (settings["max_workers"], settings["mp_context"], settings["backend"],
            settings["trace_capacity"], settings["child_hook"])


def tell_opened(observer: Observer, executor: Any) -> None:
    """``observer.opened(executor)``; its failure is reported, never raised (as ``tell_closing``)."""
    try:
        observer.opened(executor)
    except Exception as exc:
        _report("record a new executor", exc)


def tell_closing(observer: Observer, executor: Any) -> None:
    """``observer.closing(executor)``; its failure is reported, never raised: a profiler's
    error must not stop an executor from shutting down (its workers would be left running)."""
    try:
        observer.closing(executor)
    except Exception as exc:
        _report("read a closing executor", exc)


def _report(what: str, exc: Exception) -> None:
    print(f"poolx: the profiling session failed to {what}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _forget_in_child() -> None:
    global _active, _lock
    _active = None
    _lock = threading.Lock()  # (a parent thread may have held it at the fork)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
