"""Parallel iterators: Ray's ``ray.util.iter`` teaching API, on poolx actors.

A ``ParallelIterator`` is a lazy, sharded sequence: ``from_range``,
``from_items`` and ``from_iterators`` split the data into shards, and
``for_each``, ``filter``, ``batch``, ``flatten`` and ``local_shuffle`` record
transforms that run per shard, where the shard is read.  Nothing runs until
something reads:

```
 driver                                        actors of poolx.init()'s executor
 ------                                        ---------------------------------
 from_range(...).for_each(f).filter(g)         (nothing runs: sources + recorded transforms)
     |
     | .gather_sync() / .gather_async()  -> LocalIterator in the driver
     v
 _Gather --- next_batch(256, 10 ms) ---->  _ShardReader 0:  source 0 -> f -> g
    |    `-- next_batch(256, 10 ms) ---->  _ShardReader 1:  source 1 -> f -> g
    |        (one call in flight per shard, sent again as soon as its batch arrives)
    v
 items round-robin (gather_sync) or as they arrive (gather_async)

 .shards() -> [LocalIterator, ...]  --pickled--> a task or an actor iterates its shard itself
```

Each gather starts one ``_ShardReader`` actor per shard (``poolx.remote`` on
the class: the executor of ``poolx.init()``, started at first use as the rest
of the Ray-style API does) and asks it for items in batches, keeping one call
in flight per shard while the driver consumes the last batch.  The actors are
released when the gathered iterator ends, is closed (``close()``, ``with``,
``take`` on the ParallelIterator) or is garbage-collected.

A reader's batch ends after ``batch_size`` items or ``batch_ms`` milliseconds,
whichever comes first, and the time is checked between items *before* a
filter drops them (a filter passes a marker, ``_SKIP``, instead of looping
on): so every call returns soon, even from an infinite shard whose items
a filter all drops, and releasing an actor never waits on an endless call.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, Generic, NoReturn, TypeVar

from . import _context
from ._api import get, remote, wait
from ._errors import PoolxError

__all__ = ["LocalIterator", "ParallelIterator", "from_items", "from_iterators", "from_range"]

T = TypeVar("T")
U = TypeVar("U")

# Most items one call to a shard's actor returns.  256 keeps the per-item cost of
# an actor call (tens of microseconds on the processes backend) under a
# microsecond, while a take(n) of an infinite shard computes at most two
# batches it does not need (the one returned and the one in flight).
BATCH_SIZE = 256
# Milliseconds a shard's actor fills one batch before it returns what it has:
# slow items reach the driver one by one instead of 256 at a time, and a call
# always ends soon (see the module docstring).
BATCH_MS = 10.0
# Seconds close() waits for each actor to finish the call it is running and stop.
CLOSE_TIMEOUT = 10.0


class _Skip:
    """What a stage yields for an item a filter dropped: lets readers look at the clock."""

    def __repr__(self) -> str:
        return "<skipped>"


_SKIP: Any = _Skip()

# A recorded transform: its stage name and its argument.
_Op = tuple[str, Any]


# -- where a shard's items come from --------------------------------------------------------------


class _Source:
    """One shard's data: a re-iterable (range, list), or a function returning an iterable.

    With ``repeat``, read again and again forever; a pass that yields nothing
    ends it (an empty shard stays empty, as ``itertools.cycle([])`` does).
    """

    def __init__(self, data: Any, call: bool, repeat: bool) -> None:
        self.data = data
        self.call = call
        self.repeat = repeat

    def __iter__(self) -> Iterator[Any]:
        while True:
            produced = False
            for item in (self.data() if self.call else self.data):
                produced = True
                yield item
            if not self.repeat or not produced:
                return


# -- the transforms, as generator stages ------------------------------------------------------


def _for_each(items: Iterator[Any], fn: Callable[[Any], Any]) -> Iterator[Any]:
    for item in items:
        yield item if item is _SKIP else fn(item)


def _filter(items: Iterator[Any], fn: Callable[[Any], Any]) -> Iterator[Any]:
    for item in items:
        yield item if item is _SKIP or fn(item) else _SKIP


def _batch(items: Iterator[Any], n: int) -> Iterator[Any]:
    batch: list[Any] = []
    for item in items:
        if item is _SKIP:
            yield item
            continue
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def _flatten(items: Iterator[Any], _: Any) -> Iterator[Any]:
    for item in items:
        if item is _SKIP:
            yield item
            continue
        try:
            inner = iter(item)
        except TypeError:
            raise TypeError(f"flatten() needs items that are iterables (the lists of batch(), ...); "
                            f"got {type(item).__name__} {_brief(item)}") from None
        yield from inner


def _local_shuffle(items: Iterator[Any], arg: tuple[int, int | None]) -> Iterator[Any]:
    # Ray's algorithm and draws, so that a seed gives the order Ray gives.
    size, seed = arg
    rng = random.Random(seed)
    buffer: list[Any] = []
    for item in items:
        if item is _SKIP:
            yield item
            continue
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(rng.randint(0, len(buffer) - 1))
    while buffer:
        yield buffer.pop(rng.randint(0, len(buffer) - 1))


_STAGES: dict[str, Callable[[Iterator[Any], Any], Iterator[Any]]] = {
    "for_each": _for_each, "filter": _filter, "batch": _batch, "flatten": _flatten,
    "local_shuffle": _local_shuffle,
}


def _pipeline(base: Iterable[Any], ops: Sequence[_Op]) -> Iterator[Any]:
    """``base`` read through the transforms ``ops``; yields ``_SKIP`` for each dropped item."""
    items = iter(base)
    for stage, arg in ops:
        items = _STAGES[stage](items, arg)
    return items


def _without_skips(items: Iterator[Any]) -> Generator[Any, None, None]:
    for item in items:
        if item is not _SKIP:
            yield item


# -- argument checks ----------------------------------------------------------------------------


def _count(value: Any, call: str, what: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{call}: {what} must be an integer >= {minimum}, got {value!r}")
    return value


def _callable(fn: Any, call: str, what: str) -> Callable[..., Any]:
    if not callable(fn):
        raise TypeError(f"{call} needs a function {what}, got {type(fn).__name__} {_brief(fn)}"
                        f"; e.g. {call.split('(')[0]}(lambda x: ...)")
    return fn


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


# -- LocalIterator -----------------------------------------------------------------------------


class LocalIterator(Generic[T]):
    """An iterator in this process: one shard, or the items gathered from all shards.

    A one-pass iterator, like a generator: ``for x in it``, ``next(it)``,
    ``take(n)`` (which consumes).  ``for_each``, ``filter``, ``batch``,
    ``flatten`` and ``local_shuffle`` return a new LocalIterator that applies
    the transform as it is read.  A shard from ``ParallelIterator.shards()``
    that has not started can be pickled: pass it to a task or an actor
    method, which reads it there (a task on the threads or serial backend
    receives the object itself, so give each shard to one reader).  An
    iterator from ``gather_sync``/``gather_async`` reads from actors of this
    driver: it cannot be sent, and ``close()`` (or a ``with`` block, or the
    end of the items) releases its actors.
    """

    def __init__(self, base: Iterable[Any], ops: tuple[_Op, ...] = (), name: str = "LocalIterator") -> None:
        self._base = base
        self._ops = ops
        self._name = name
        self._it: Generator[Any, None, None] | None = None
        self._closed = False

    def __iter__(self) -> LocalIterator[T]:
        return self

    def __next__(self) -> T:
        it = self._it
        if it is None:
            if self._closed:
                raise StopIteration
            it = self._it = _without_skips(_pipeline(self._base, self._ops))
        return next(it)

    def _with(self, op: _Op, label: str) -> LocalIterator[Any]:
        name = f"{self._name}.{label}"
        if self._it is None and not self._closed:
            return LocalIterator(self._base, (*self._ops, op), name)
        return LocalIterator(self, (op,), name)  # goes on from where this one is

    def for_each(self, fn: Callable[[T], U]) -> LocalIterator[U]:
        """Apply ``fn`` to each item."""
        return self._with(("for_each", _callable(fn, "for_each(fn)", "of one item")), "for_each()")

    def filter(self, fn: Callable[[T], Any]) -> LocalIterator[T]:
        """Keep the items for which ``fn(item)`` is true."""
        return self._with(("filter", _callable(fn, "filter(fn)", "of one item that returns a bool")),
                          "filter()")

    def batch(self, n: int) -> LocalIterator[list[T]]:
        """Lists of ``n`` consecutive items (the last one may be shorter)."""
        return self._with(("batch", _count(n, f"batch({n!r})", "n (items per list)")), f"batch({n})")

    def flatten(self) -> LocalIterator[Any]:
        """The items of each item (undoes ``batch``)."""
        return self._with(("flatten", None), "flatten()")

    def local_shuffle(self, shuffle_buffer_size: int, seed: int | None = None) -> LocalIterator[T]:
        """Shuffle through a buffer of ``shuffle_buffer_size`` items (perfect when it holds them all)."""
        size = _count(shuffle_buffer_size, f"local_shuffle({shuffle_buffer_size!r})", "shuffle_buffer_size")
        return self._with(("local_shuffle", (size, seed)), f"local_shuffle({size}, seed={seed})")

    def take(self, n: int) -> list[T]:
        """The next ``n`` items (fewer if the iterator ends first), consumed."""
        return list(itertools.islice(self, _count(n, f"take({n!r})", "n", minimum=0)))

    def close(self) -> None:
        """Stop reading: a gathered iterator releases its actors.  Later ``next()`` ends at once."""
        self._closed = True
        it, self._it = self._it, None
        if it is not None:
            it.close()
        closer = getattr(self._base, "close", None)
        if closer is not None:
            closer()

    def __enter__(self) -> LocalIterator[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if isinstance(self._base, _Source) and self._it is None and not self._closed:
            return (LocalIterator, (self._base, self._ops, self._name))
        root = self._base
        while isinstance(root, LocalIterator):
            root = root._base
        if isinstance(root, _Gather):
            raise TypeError(f"{self!r} reads from actors of this driver and cannot be sent to a task or "
                            "an actor; send the shards of ParallelIterator.shards() instead")
        raise TypeError(f"{self!r} has already been read from; a shard can be sent before it is read "
                        "(ParallelIterator.shards() makes new ones)")

    def __repr__(self) -> str:
        return f"LocalIterator[{self._name}]"


# -- the shard readers and the gathers ----------------------------------------------------------


class _ShardReader:
    """An actor reading one shard: its source and transforms run here, a batch per call."""

    def __init__(self, shard: LocalIterator[Any]) -> None:
        self._items = _pipeline(shard._base, shard._ops)
        self._error: Exception | None = None

    def next_batch(self, max_items: int, max_seconds: float) -> tuple[list[Any], bool]:
        """Up to ``max_items`` items, or those produced in ``max_seconds``; and whether the shard ended.

        An exception from the shard's functions is raised by the call after
        the one that returns the items before it, so it reaches the driver
        when the driver reaches that item.
        """
        error, self._error = self._error, None
        if error is not None:
            raise error
        batch: list[Any] = []
        deadline = time.perf_counter() + max_seconds
        try:
            for item in self._items:
                if item is not _SKIP:
                    batch.append(item)
                    if len(batch) >= max_items:
                        return batch, False
                if time.perf_counter() >= deadline:
                    return batch, False
        except Exception as exc:
            if not batch:
                raise
            self._error = exc
            return batch, False
        return batch, True


_READER = remote(_ShardReader)


class _Raised:
    """A shard's error, queued (gather_async) behind the items that came before it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Gather:
    """The driver's side of a gather: one reader actor per shard, one call in flight each.

    ``ordered``: round-robin across shards, one item of each in turn (a shard
    that ends leaves the round); otherwise items as the calls complete.  The
    actors start at the first ``next()``.  Any error or the end closes it.
    """

    def __init__(self, shards: Sequence[LocalIterator[Any]], ordered: bool, batch_size: int,
                 batch_ms: float, name: str) -> None:
        self._closed = False
        self._shards = list(shards)
        self._ordered = ordered
        self._batch_size = batch_size
        self._batch_seconds = batch_ms / 1000.0
        self._name = name
        self._handles: list[Any] | None = None
        self._futures: list[Any] = []  # per shard: the call in flight, or None once it ended
        self._buffers: list[deque[Any]] = []  # ordered: per shard, items received and not yet yielded
        self._ready: deque[Any] = deque()  # unordered: items received, in arrival order
        self._active: list[int] = []  # ordered: the shards not yet ended, in order
        self._turn = 0  # ordered: index in _active of the shard whose item comes next

    def __iter__(self) -> _Gather:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        try:
            if self._handles is None:
                self._start()
            return self._next_ordered() if self._ordered else self._next_unordered()
        except BaseException as exc:  # the end (StopIteration), a shard's error, or Ctrl-C
            self.close(wait=isinstance(exc, Exception))
            raise

    def _start(self) -> None:
        if _context.in_child():
            raise PoolxError(f"{self._name} reads the shards in actors, which only the driver can start: "
                             "inside a task, read a shard of ParallelIterator.shards() directly")
        self._handles = []
        for shard in self._shards:
            self._handles.append(_READER.remote(shard))
        n = len(self._shards)
        self._futures = [self._fetch(k) for k in range(n)]
        self._buffers = [deque() for _ in range(n)]
        self._active = list(range(n))

    def _fetch(self, k: int) -> Any:
        assert self._handles is not None
        return self._handles[k].next_batch.remote(self._batch_size, self._batch_seconds)

    def _receive(self, k: int) -> list[Any]:
        """Shard ``k``'s batch in flight (its error raised here), after sending the next call."""
        future, self._futures[k] = self._futures[k], None
        items, ended = get(future)
        if not ended:
            self._futures[k] = self._fetch(k)
        return items

    def _next_ordered(self) -> Any:
        active = self._active
        while active:
            if self._turn >= len(active):
                self._turn = 0
            k = active[self._turn]
            buffer = self._buffers[k]
            while not buffer and self._futures[k] is not None:
                buffer.extend(self._receive(k))
            if buffer:
                self._turn += 1
                return buffer.popleft()
            del active[self._turn]  # shard k ended: the next one takes its turn
        raise StopIteration

    def _next_unordered(self) -> Any:
        ready = self._ready
        while not ready:
            pending = [f for f in self._futures if f is not None]
            if not pending:
                raise StopIteration
            wait(pending, num_returns=1)
            for k, future in enumerate(self._futures):
                if future is not None and future.done():
                    try:
                        ready.extend(self._receive(k))
                    except Exception as exc:
                        ready.append(_Raised(exc))  # after the items other shards sent already
        item = ready.popleft()
        if type(item) is _Raised:
            raise item.error
        return item

    def close(self, wait: bool = True) -> None:
        """Release the actors: each finishes the call it is running (``wait``: within
        ``CLOSE_TIMEOUT`` seconds), then stops."""
        if self._closed:
            return
        self._closed = True
        handles, self._handles = self._handles or [], []
        self._futures, self._buffers, self._ready = [], [], deque()
        for handle in handles:
            try:
                handle.release(wait=wait, timeout=CLOSE_TIMEOUT)
            except Exception:  # the executor was shut down meanwhile: its actors are gone already
                pass

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{self._name} reads from actors of this driver and cannot be sent to a task")

    def __del__(self) -> None:
        try:
            self.close(wait=False)
        except Exception:
            pass


# -- ParallelIterator ------------------------------------------------------------------------


class ParallelIterator(Generic[T]):
    """A lazy, sharded sequence: each shard is read where it is needed, through the recorded transforms.

    ``for_each``, ``filter``, ``batch``, ``flatten``, ``local_shuffle`` and
    ``union`` return a new ParallelIterator and run nothing.  Read it with
    ``gather_sync()`` (items round-robin across shards, in a deterministic
    order), ``gather_async()`` (items as shards produce them), ``take(n)``, or
    hand its ``shards()`` to tasks and actors.
    """

    def __init__(self, shards: Sequence[tuple[_Source, tuple[_Op, ...]]], name: str) -> None:
        self._shards = tuple(shards)
        self._name = name

    def _with(self, op: _Op, label: str) -> ParallelIterator[Any]:
        shards = [(source, (*ops, op)) for source, ops in self._shards]
        return ParallelIterator(shards, f"{self._name}.{label}")

    def for_each(self, fn: Callable[[T], U]) -> ParallelIterator[U]:
        """Apply ``fn`` to each item, in the shard's reader."""
        return self._with(("for_each", _callable(fn, "for_each(fn)", "of one item")), "for_each()")

    def filter(self, fn: Callable[[T], Any]) -> ParallelIterator[T]:
        """Keep the items for which ``fn(item)`` is true."""
        return self._with(("filter", _callable(fn, "filter(fn)", "of one item that returns a bool")),
                          "filter()")

    def batch(self, n: int) -> ParallelIterator[list[T]]:
        """Lists of ``n`` consecutive items of each shard (a shard's last list may be shorter)."""
        return self._with(("batch", _count(n, f"batch({n!r})", "n (items per list)")), f"batch({n})")

    def flatten(self) -> ParallelIterator[Any]:
        """The items of each item (undoes ``batch``)."""
        return self._with(("flatten", None), "flatten()")

    def local_shuffle(self, shuffle_buffer_size: int, seed: int | None = None) -> ParallelIterator[T]:
        """Shuffle each shard on its own, through a buffer of ``shuffle_buffer_size`` items.

        With ``seed``, every shard shuffles with ``random.Random(seed)``: the
        same order every run.
        """
        size = _count(shuffle_buffer_size, f"local_shuffle({shuffle_buffer_size!r})", "shuffle_buffer_size")
        return self._with(("local_shuffle", (size, seed)), f"local_shuffle({size}, seed={seed})")

    def union(self, other: ParallelIterator[U]) -> ParallelIterator[T | U]:
        """The shards of this iterator, then those of ``other``."""
        if not isinstance(other, ParallelIterator):
            raise TypeError(f"union() takes a ParallelIterator, got {type(other).__name__}")
        return ParallelIterator([*self._shards, *other._shards], f"{self._name}.union({other._name})")

    def num_shards(self) -> int:
        """How many shards."""
        return len(self._shards)

    def shards(self) -> list[LocalIterator[T]]:
        """One new, unread LocalIterator per shard: pass them to tasks or actor methods."""
        return [self.get_shard(i) for i in range(len(self._shards))]

    def get_shard(self, shard_index: int) -> LocalIterator[T]:
        """A new, unread LocalIterator over shard ``shard_index``."""
        if not isinstance(shard_index, int) or not 0 <= shard_index < len(self._shards):
            raise IndexError(f"get_shard({shard_index!r}): this iterator has shards 0 to "
                             f"{len(self._shards) - 1}")
        source, ops = self._shards[shard_index]
        return LocalIterator(source, ops, f"{self._name}.shard[{shard_index}]")

    def gather_sync(self, batch_size: int = BATCH_SIZE, batch_ms: float = BATCH_MS) -> LocalIterator[T]:
        """A LocalIterator reading every shard in parallel, each in an actor; items round-robin.

        The order is deterministic: the first item of each shard in shard
        order, then the second of each, and so on (a shard that ends drops
        out).  Each actor sends up to ``batch_size`` items per call, or what
        it produced in ``batch_ms`` milliseconds.  Nothing starts until the
        first ``next()``.
        """
        return self._gather(True, batch_size, batch_ms, "gather_sync()")

    def gather_async(self, batch_size: int = BATCH_SIZE, batch_ms: float = BATCH_MS) -> LocalIterator[T]:
        """A LocalIterator yielding items as soon as any shard's actor has sent them.

        Items of one shard keep their order; the order across shards depends
        on timing.  ``batch_size`` and ``batch_ms`` as for ``gather_sync``.
        """
        return self._gather(False, batch_size, batch_ms, "gather_async()")

    def _gather(self, ordered: bool, batch_size: int, batch_ms: float, label: str) -> LocalIterator[T]:
        call = f"{label[:-2]}(batch_size={batch_size!r}, batch_ms={batch_ms!r})"
        _count(batch_size, call, "batch_size")
        if not isinstance(batch_ms, int | float) or isinstance(batch_ms, bool) or batch_ms < 0:
            raise ValueError(f"{call}: batch_ms must be a number of milliseconds >= 0")
        name = f"{self._name}.{label}"
        gather = _Gather(self.shards(), ordered, batch_size, batch_ms, f"{self!r}.{label}")
        return LocalIterator(gather, (), name)

    def take(self, n: int) -> list[T]:
        """The first ``n`` items of ``gather_sync()``; the actors are released before it returns."""
        _count(n, f"take({n!r})", "n", minimum=0)
        with self.gather_sync() as it:
            return it.take(n)

    def __iter__(self) -> NoReturn:
        raise TypeError("a ParallelIterator is read with .gather_sync() or .gather_async() (or "
                        "take(n), or its shards() passed to tasks), not iterated directly")

    def __repr__(self) -> str:
        return f"ParallelIterator[{self._name}]"


# -- constructors --------------------------------------------------------------------------


def from_range(n: int, num_shards: int = 2, repeat: bool = False) -> ParallelIterator[int]:
    """A ParallelIterator over ``range(n)``, split into ``num_shards`` contiguous slices.

    As Ray splits it: each shard holds ``n // num_shards`` numbers and the last
    one also the rest (``from_range(10, 4)``: 0-1, 2-3, 4-5, 6-9).  With
    ``repeat``, each shard cycles over its slice forever.
    """
    _count(n, f"from_range({n!r})", "n", minimum=0)
    _count(num_shards, f"from_range({n!r}, num_shards={num_shards!r})", "num_shards (the number of shards)")
    size = n // num_shards
    bounds = [(i * size, n if i == num_shards - 1 else (i + 1) * size) for i in range(num_shards)]
    name = f"from_range[{n}, shards={num_shards}{', repeat=True' if repeat else ''}]"
    return ParallelIterator([(_Source(range(a, b), False, bool(repeat)), ()) for a, b in bounds], name)


def from_items(items: Iterable[T], num_shards: int = 2, repeat: bool = False) -> ParallelIterator[T]:
    """A ParallelIterator over ``items``, dealt round-robin to ``num_shards`` shards (as Ray does).

    Shard ``i`` holds items ``i``, ``i + num_shards``, ``i + 2 * num_shards``...
    The items are copied into a list now, and travel with each shard.  With
    ``repeat``, each shard cycles over its items forever.
    """
    _count(num_shards, f"from_items(num_shards={num_shards!r})", "num_shards (the number of shards)")
    if not isinstance(items, Iterable):
        raise TypeError(f"from_items() takes an iterable of items (a list, a tuple...), got "
                        f"{type(items).__name__} {_brief(items)}")
    values = list(items)
    name = f"from_items[{len(values)}, shards={num_shards}{', repeat=True' if repeat else ''}]"
    return ParallelIterator([(_Source(values[i::num_shards], False, bool(repeat)), ())
                             for i in range(num_shards)], name)


def from_iterators(generators: Iterable[Iterable[T] | Callable[[], Iterable[T]]], repeat: bool = False,
                   name: str | None = None) -> ParallelIterator[T]:
    """A ParallelIterator with one shard per item of ``generators``.

    Each item is an iterable that can be read again (a range, a list) or a
    function taking no argument that returns an iterable (a generator
    function, ``lambda: gen(...)``), called where the shard is read, and
    again each pass with ``repeat``.  A generator or iterator object is
    refused: it can be read only once and cannot be sent to another process.
    """
    if not isinstance(generators, Iterable) or isinstance(generators, str | bytes):
        raise TypeError(f"from_iterators() takes a list of iterables or functions, got "
                        f"{type(generators).__name__} {_brief(generators)}")
    sources = []
    for i, g in enumerate(generators):
        if callable(g):
            sources.append(_Source(g, True, bool(repeat)))
        elif isinstance(g, Iterator):
            raise TypeError(f"from_iterators(): item {i} is a {type(g).__name__}, an iterator that can be "
                            "read only once and cannot be sent to a worker; pass the function that makes "
                            "it instead (e.g. lambda: gen(...), or the generator function itself)")
        elif isinstance(g, Iterable):
            sources.append(_Source(g, False, bool(repeat)))
        else:
            raise TypeError(f"from_iterators(): item {i} is a {type(g).__name__} {_brief(g)}, neither an "
                            "iterable nor a function returning one")
    if not sources:
        raise ValueError("from_iterators() needs at least one iterable (one per shard)")
    label = name or f"from_iterators[shards={len(sources)}{', repeat=True' if repeat else ''}]"
    return ParallelIterator([(source, ()) for source in sources], label)
