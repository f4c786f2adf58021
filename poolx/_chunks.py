"""Running one chunk of a ``map()`` in a worker: item marks, quarantine, retries.

``Executor.map`` and ``Pool.map``/``imap`` send their items in chunks, one task
each.  Three things happen per item rather than per chunk:

- **Quarantine** (processes backend).  Before each item the worker marks its
  index in the progress cell (``Worker.mark_item``).  If the worker dies, or is
  killed for running over ``task_timeout``, the driver knows which item it was
  in: it sends the chunk again with that item taken out (``Task.skip``).  The
  other items run again and complete; only the culprit fails, with the
  ``WorkerDiedError`` or ``TaskTimeoutError`` naming it.  Without it, every item
  of the chunk would fail with an error naming none of them.
- **Per-item timeouts**: the mark also resets the running task's start time, so
  ``task_timeout`` limits each item, not the whole chunk.
- **Exception retries**: an item that raises one of the executor's
  ``retry_exceptions`` is called again, up to ``max_retries`` times, in the
  same worker with the same argument objects.

An item that raises otherwise ends the chunk there, as with the stdlib (the
results before it are kept).  A quarantined item does not: the items after it
run too, though ``map()`` reports the failure at the culprit's position.
"""

from __future__ import annotations

import reprlib
import sys
from collections.abc import Callable
from typing import Any

from ._errors import TaskTimeoutError, WorkerDiedError

Retry = tuple[int, tuple[type[BaseException], ...]]  # (max_retries, exception classes)

_WORKER_MODULE = "poolx.backends.processes._worker"


def run_chunk(fn: Callable[..., Any], chunk: list[Any], star: bool, start: int,
              retry: Retry | None) -> tuple[list[Any], BaseException | None]:
    """Call ``fn`` on each item; returns the results before the first failure, and it.

    ``start`` is the chunk's first item's index in the whole map (for messages);
    with ``star`` each item is a tuple of arguments.
    """
    worker = getattr(sys.modules.get(_WORKER_MODULE), "current", None)
    mark = worker.mark_item if worker is not None else None
    skip = worker.skip if worker is not None else None
    results: list[Any] = []
    append = results.append
    error: BaseException | None = None
    for i, item in enumerate(chunk):
        if mark is not None:
            mark(i)
        if skip and i in skip:
            if error is None:
                error = _quarantined(skip[i], fn, item, star, start + i)
            continue
        try:
            if retry is None:
                value = fn(*item) if star else fn(item)
            else:
                value = _call_with_retries(fn, item, star, retry)
        except BaseException as exc:
            if error is None:
                error = exc
            break
        if error is None:
            append(value)
    if mark is not None:
        mark(-1)  # pickling the results: a crash there is the chunk's, not its last item's
    return results, error


def _call_with_retries(fn: Callable[..., Any], item: Any, star: bool, retry: Retry) -> Any:
    max_retries, retry_on = retry
    attempt = 0
    while True:
        try:
            return fn(*item) if star else fn(item)
        except BaseException as exc:
            if not is_one_of(exc, retry_on) or (max_retries != -1 and attempt >= max_retries):
                raise
            attempt += 1


def is_one_of(exc: BaseException, classes: tuple[type[BaseException], ...]) -> bool:
    """``isinstance(exc, classes)``, also when a class reached this process twice.

    A class defined in the main script exists in a spawn or forkserver worker
    as the script's own (module ``__mp_main__``, what the task's function
    sees) and as the copy cloudpickle sent by value (``__main__``, what
    ``retry_exceptions`` holds).  They are the same class to the user.
    """
    if isinstance(exc, classes):
        return True
    wanted = {(_module(c), c.__qualname__) for c in classes}
    return any((_module(k), k.__qualname__) in wanted for k in type(exc).__mro__)


def _module(cls: type) -> str:
    module = cls.__module__
    return "__main__" if module == "__mp_main__" else module


def describe_item(fn: Callable[..., Any], item: Any, star: bool, index: int) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    args = ", ".join(map(_short.repr, item)) if star else _short.repr(item)
    return f"map item {index}, {name}({args})"


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60


def _quarantined(why: tuple[Any, ...], fn: Callable[..., Any], item: Any, star: bool,
                 index: int) -> BaseException:
    """The error of an item taken out of its chunk after it killed (or timed out) its worker."""
    kind, message, number, pid = why
    text = f"{describe_item(fn, item, star, index)}: {message}"
    if kind == "timeout":
        return TaskTimeoutError(text, timeout=number, pid=pid)
    return WorkerDiedError(text, exitcode=number, pid=pid)
