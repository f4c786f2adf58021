"""One ``map()`` chunk in the worker: the task function of every chunk.

The driver side of ``map()`` (chunk sizing, feeding, result iteration) is
``_map``; this module is what runs in the worker, so the worker loads only it
(a task worker imports it at boot: a forkserver preloads it).  Three things
happen per item rather than per chunk:

- **Quarantine** (processes backend).  Before each item the worker stores its
  index in the progress cell (``Worker.item_mark``).  If the worker dies, or is
  killed for running over ``task_timeout``, the driver knows which item it was
  in: it sends the chunk again with that item taken out (``Task.skip``).  The
  other items run again and complete; only the culprit fails, with the
  ``WorkerDiedError`` or ``TaskTimeoutError`` naming it.  Without it, every item
  of the chunk would fail with an error naming none of them.
- **Per-item timeouts**: the driver's scheduler sees the index change (it
  polls the cell while a timeout is set) and restarts the clock, so
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
import traceback
from collections.abc import Callable
from typing import Any

from . import _context
from ._errors import RemoteError, SerializationError, TaskTimeoutError, WorkerDiedError
from ._retry import Retry, is_one_of
from ._serialization import describe, dumps, loads


def chunk_runner(fn: Callable[..., Any], star: bool, retry: Retry | None,
                 partial: bool) -> Callable[[list[Any], int], list[Any]]:
    """The task function of a map over ``fn``, named after ``fn`` for messages and traces.

    It runs in the worker: ``run_chunk(chunk, start)`` gives the results of
    ``fn`` over the items, in order (``start``: the index of the chunk's
    first item in the whole map).  With one iterable the items are the
    arguments themselves (no 1-tuples to pickle); with ``star``, each item
    is a tuple of arguments.  An item's error ends the chunk: with
    ``partial`` (Executor.map) it comes as a ``ChunkError`` carrying the
    results before it; without (Pool, whose chunk fails whole, as the
    stdlib's) as itself.
    """
    if partial:
        def run_chunk(chunk: list[Any], start: int) -> list[Any]:
            results, error = run_items(fn, chunk, star, start, retry)
            if error is not None:
                raise ChunkError(results, error) from error
            return results
    else:
        def run_chunk(chunk: list[Any], start: int) -> list[Any]:
            results, error = run_items(fn, chunk, star, start, retry)
            if error is not None:
                raise error
            return results

    return named_after(run_chunk, fn)


def named_after(runner: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    """Name a map() chunk's task function after ``fn`` (for messages and traces), marked a chunk."""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    runner.__qualname__ = runner.__name__ = f"{name} [map]"
    runner.__module__ = getattr(fn, "__module__", None) or type(fn).__module__
    runner._poolx_chunk = True  # type: ignore[attr-defined]  # (its items can be quarantined)
    return runner


def run_items(fn: Callable[..., Any], chunk: list[Any], star: bool, start: int,
              retry: Retry | None) -> tuple[list[Any], BaseException | None]:
    """Call ``fn`` on each item; returns the results before the first failure, and it.

    ``start`` is the chunk's first item's index in the whole map (for messages);
    with ``star`` each item is a tuple of arguments.
    """
    worker = _context.here.worker
    if worker is None:  # threads, serial: nothing to mark
        return _run(fn, chunk, star, retry, None)
    mark = worker.item_mark  # the cell's item index (an int64 view): one store per item
    skip = worker.skip
    if skip:
        results, error = _run_skipping(fn, chunk, star, start, retry, mark, skip)
    else:
        results, error = _run(fn, chunk, star, retry, mark)
    mark[0] = -1  # pickling the results: a crash there is the chunk's, not its last item's
    return results, error


def _run(fn: Callable[..., Any], chunk: list[Any], star: bool, retry: Retry | None,
         mark: Any) -> tuple[list[Any], BaseException | None]:
    """The loop of a chunk: the hot path of a map of tiny items, kept as lean as it can be."""
    results: list[Any] = []
    append = results.append
    try:
        if retry is not None:
            for i, item in enumerate(chunk):
                if mark is not None:
                    mark[0] = i
                append(_call_with_retries(fn, item, star, retry))
        elif mark is None:
            if star:
                for args in chunk:
                    append(fn(*args))
            else:
                for arg in chunk:
                    append(fn(arg))
        elif star:
            for i, args in enumerate(chunk):
                mark[0] = i
                append(fn(*args))
        else:
            for i, arg in enumerate(chunk):
                mark[0] = i
                append(fn(arg))
    except BaseException as exc:
        return results, exc
    return results, None


def _run_skipping(fn: Callable[..., Any], chunk: list[Any], star: bool, start: int, retry: Retry | None,
                  mark: Any, skip: dict[int, tuple[Any, ...]]) -> tuple[list[Any], BaseException | None]:
    """A chunk sent again after one of its items killed its worker: every item but those."""
    results: list[Any] = []
    error: BaseException | None = None
    for i, item in enumerate(chunk):
        mark[0] = i
        if i in skip:
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
            results.append(value)
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


class ChunkError(Exception):
    """A map() item failed: carries the results before it and the error."""

    def __init__(self, results: list[Any], error: BaseException) -> None:
        super().__init__(results, error)
        self.results = results
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent from the worker.  Whatever the item's exception is, the driver
        # must get it (or its description), not a failure of this wrapper.
        error, results = self.error, self.results
        try:
            loads(*dumps(error))  # the round trip the driver will make
        except BaseException:
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            error = RemoteError(describe(type(error)), _safe_str(error), tb)
        try:
            dumps(results)
        except BaseException as exc:
            error = SerializationError(f"a result of this map() chunk could not be pickled: "
                                       f"{type(exc).__name__}: {exc}")
            results = []
        return (ChunkError, (results, error))


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except BaseException:
        return "<str() of the exception failed>"
