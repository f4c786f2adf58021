"""Pools of actors: Ray's ``ActorPool``, and an autoscaling ``map_actors``.

``ActorPool`` keeps Ray's API and semantics (``ray.util.ActorPool``): ``fn``
is called as ``fn(actor, value)`` and returns a future; each actor runs one
call at a time; values wait for a free actor; ``get_next`` returns results in
submission order, ``get_next_unordered`` as they finish.  One difference: an
actor whose call failed with ``ActorDiedError`` leaves the pool (the error is
raised for that value) instead of being handed more work.

``map_actors`` (``Executor.map_actors``) is the Ray Data pattern
``map_batches(CallableClass, compute=ActorPoolStrategy(min_size, max_size))``:
a callable class is built once per actor and called on each item; the pool
grows while work is waiting and shrinks when actors sit idle.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._errors import ActorDiedError
from .handle import ActorHandle
from .options import method_names

if TYPE_CHECKING:
    from .._executor import ActorFactory

# Calls map_actors keeps in flight per actor: one running, one queued behind it,
# so an actor never waits for the driver between items.
CALLS_PER_ACTOR = 2
# Finished results map_actors holds back (waiting for a slow earlier item, in
# ordered mode) before it stops handing out more work.
MAX_HELD_RESULTS = 1024


class ActorPool:
    """Spread calls over a fixed set of actors, one call per actor at a time (Ray's API)."""

    def __init__(self, actors: Iterable[ActorHandle[Any]]) -> None:
        self._idle: list[ActorHandle[Any]] = list(actors)
        self._busy: dict[cf.Future[Any], tuple[int, ActorHandle[Any]]] = {}
        self._by_index: dict[int, cf.Future[Any]] = {}
        self._next_index = 0
        self._next_return = 0
        self._waiting: deque[tuple[Callable[..., Any], Any]] = deque()

    def submit(self, fn: Callable[[ActorHandle[Any], Any], cf.Future[Any]], value: Any) -> None:
        """Call ``fn(actor, value)`` on an idle actor, or once one is free."""
        if not self._idle:
            self._waiting.append((fn, value))
            return
        actor = self._idle.pop()
        future = fn(actor, value)
        if not isinstance(future, cf.Future):
            self._idle.append(actor)
            raise TypeError(
                f"ActorPool: fn(actor, value) must return the future of an actor call "
                f"(e.g. lambda a, v: a.method.remote(v)); it returned {type(future).__name__}"
            )
        self._busy[future] = (self._next_index, actor)
        self._by_index[self._next_index] = future
        self._next_index += 1

    def map(self, fn: Callable[[ActorHandle[Any], Any], cf.Future[Any]],
            values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` to each value; results in order.  Earlier pending results are dropped."""
        self._drop_pending()
        for value in values:
            self.submit(fn, value)
        return self._drain(self.get_next)

    def map_unordered(self, fn: Callable[[ActorHandle[Any], Any], cf.Future[Any]],
                      values: Iterable[Any]) -> Iterator[Any]:
        """Like ``map``, yielding results as they finish."""
        self._drop_pending()
        for value in values:
            self.submit(fn, value)
        return self._drain(self.get_next_unordered)

    def _drain(self, get: Callable[[], Any]) -> Iterator[Any]:
        while self.has_next():
            yield get()

    def _drop_pending(self) -> None:
        # As Ray: results submitted before a map() are not part of it.
        while self.has_next():
            try:
                self.get_next_unordered(timeout=None)
            except Exception:
                pass

    def has_next(self) -> bool:
        """Whether results are still to be fetched."""
        return bool(self._busy)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order; ``TimeoutError`` after ``timeout`` seconds.

        With ``ignore_if_timedout``, a result that timed out is skipped (its
        actor returns to the pool) before ``TimeoutError`` is raised.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return >= self._next_index or self._next_return not in self._by_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._by_index[self._next_return]
        done, _ = cf.wait([future], timeout=timeout)
        if not done and not ignore_if_timedout:
            raise TimeoutError("Timed out waiting for result")
        del self._by_index[self._next_return]
        self._next_return += 1
        self._finish(future)
        if not done:
            raise TimeoutError("Timed out waiting for result; it has been ignored")
        return future.result()

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result to finish, whatever its order; ``TimeoutError`` after ``timeout`` seconds."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        done, _ = cf.wait(list(self._busy), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        if not done:
            if not ignore_if_timedout:
                raise TimeoutError("Timed out waiting for result")
            future = min(self._busy, key=lambda f: self._busy[f][0])  # the oldest is dropped
        else:
            future = min(done, key=lambda f: self._busy[f][0])
        index = self._busy[future][0]
        del self._by_index[index]
        self._next_return = max(self._next_return, index + 1)
        self._finish(future)
        if not done:
            raise TimeoutError("Timed out waiting for result; it has been ignored")
        return future.result()

    def _finish(self, future: cf.Future[Any]) -> None:
        _, actor = self._busy.pop(future)
        if future.done() and not future.cancelled() and isinstance(future.exception(), ActorDiedError):
            pass  # a dead actor leaves the pool
        else:
            self._idle.append(actor)
        while self._waiting and self._idle:
            self.submit(*self._waiting.popleft())

    def has_free(self) -> bool:
        """Whether an actor is idle and no submitted value is waiting for one."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self) -> ActorHandle[Any] | None:
        """Take an idle actor out of the pool (None if none is free)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: ActorHandle[Any]) -> None:
        """Add an actor to the pool (it takes a waiting value at once, if any)."""
        if actor in self._idle or any(a == actor for _, a in self._busy.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._idle.append(actor)
        while self._waiting and self._idle:
            self.submit(*self._waiting.popleft())


class _Member:
    __slots__ = ("handle", "inflight", "last_done", "warm")

    def __init__(self, handle: ActorHandle[Any]) -> None:
        self.handle = handle
        self.inflight = 0
        self.warm = False  # has finished a call: its constructor is done
        self.last_done = time.monotonic()  # set by a done callback, from any thread

    def finished(self, future: cf.Future[Any]) -> None:
        self.last_done = time.monotonic()


def map_actors(factory: ActorFactory, cls: type, iterable: Iterable[Any], *, args: tuple[Any, ...],
               kwargs: dict[str, Any], min_size: int, max_size: int, batch_size: int | None,
               ordered: bool, idle_timeout: float, kill: Callable[[Any], None]) -> Iterator[Any]:
    """``ActorFactory.map_actors``' work; ``kill`` stops an actor at once (its executor's ``kill``)."""
    if not isinstance(cls, type) or "__call__" not in method_names(cls):
        raise TypeError(f"map_actors() needs a class whose instances are callable (define __call__), "
                        f"got {cls!r}")
    if not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be an integer >= 1, got {min_size!r}")
    if not isinstance(max_size, int) or max_size < min_size:
        raise ValueError(f"max_size must be an integer >= min_size ({min_size}), got {max_size!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    if idle_timeout < 0:
        raise ValueError(f"idle_timeout must be >= 0, got {idle_timeout!r}")
    if factory.options.name is not None:
        raise ValueError("map_actors() starts several actors: the name option cannot be used")
    pool = [_Member(factory.actor(cls, *args, **kwargs)) for _ in range(min_size)]
    return _run(factory, cls, args, kwargs, pool, iter(iterable), min_size, max_size, batch_size,
                ordered, idle_timeout, kill)


def _run(factory: ActorFactory, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any],
         pool: list[_Member], items: Iterator[Any], min_size: int, max_size: int,
         batch_size: int | None, ordered: bool, idle_timeout: float,
         kill: Callable[[Any], None]) -> Iterator[Any]:
    inflight: dict[cf.Future[Any], tuple[int, _Member, int | None]] = {}
    finished: dict[int, tuple[cf.Future[Any], int | None]] = {}
    next_index = next_yield = 0
    exhausted = False
    clean = False

    def collect(block: bool) -> None:
        if block:
            done, _ = cf.wait(list(inflight), timeout=idle_timeout or None, return_when=cf.FIRST_COMPLETED)
        else:
            done = {f for f in inflight if f.done()}
        for future in done:
            index, member, n = inflight.pop(future)
            member.inflight -= 1
            member.warm = True
            finished[index] = (future, n)

    def shrink() -> None:
        # Release actors idle for idle_timeout, down to min_size.
        now = time.monotonic()
        for member in list(pool):
            if len(pool) <= min_size:
                return
            if member.inflight == 0 and now - member.last_done >= idle_timeout:
                pool.remove(member)
                member.handle.release(wait=False)

    try:
        while True:
            # Hand out work: the least loaded actor first; grow when all are full.
            while not exhausted and len(finished) < MAX_HELD_RESULTS:
                if min(m.inflight for m in pool) >= CALLS_PER_ACTOR:
                    if len(pool) < max_size and all(m.warm for m in pool):
                        pool.append(_Member(factory.actor(cls, *args, **kwargs)))
                        continue
                    break
                if batch_size is None:
                    try:
                        item = next(items)  # may block: a slow source leaves the pool idle
                    except StopIteration:
                        exhausted = True
                        break
                else:
                    item = [x for _, x in zip(range(batch_size), items)]
                    if not item:
                        exhausted = True
                        break
                collect(block=False)
                shrink()
                member = min(pool, key=lambda m: m.inflight)
                future = member.handle.__call__.remote(item)
                member.inflight += 1
                future.add_done_callback(member.finished)
                inflight[future] = (next_index, member, None if batch_size is None else len(item))
                next_index += 1
            if not inflight and not finished:
                clean = True
                return
            if inflight:
                collect(block=True)
            # Yield what may be yielded.
            if ordered:
                while next_yield in finished:
                    yield from _results(*finished.pop(next_yield))
                    next_yield += 1
            else:
                for index in sorted(finished):
                    yield from _results(*finished.pop(index))
            shrink()
    finally:
        for member in pool:
            if clean or not member.inflight:
                member.handle.release(wait=True)
            else:  # stopped early (an error, or the consumer let go): do not finish the rest
                kill(member.handle)


def _results(future: cf.Future[Any], n: int | None) -> Iterator[Any]:
    value = future.result()
    if n is None:
        yield value
        return
    values = list(value)
    if len(values) != n:
        raise ValueError(f"map_actors: the call on a batch of {n} items returned {len(values)} results; "
                         "with batch_size, __call__ must return one result per item")
    yield from values
