"""Running one actor: its instance and its method calls, wherever it lives.

Shared by the in-process backends (serial, threads: ``local``) and by the
actor process of the processes backend; it imports neither side of any
backend, nor the driver's records of actors (``directory``).

A ``Runner`` owns the instance.  It builds it (``cls(*args, **kwargs)``) before
running any call, then runs calls in the order ``submit`` received them:

* ``InlineRunner``: in the thread that calls ``submit``, at once (the serial
  backend; the actor process's main thread).
* ``ThreadRunner``: on ``max_concurrency`` threads of its own; with one
  thread, calls run strictly one after another.
* ``AsyncRunner``: for a class with at least one ``async def`` method (as
  Ray decides): every call runs on one event loop thread, at most
  ``max_concurrency`` at once, interleaving at ``await``.  Plain methods of
  such a class run on the loop too, blocking it while they run.

Each outcome is reported to ``on_done(ref, ok, value, t_start, t_end)`` from
the thread that ran the call; ``on_start(ref)`` is called just before a call
runs.  If the constructor raises, ``init_error`` holds the exception and every
call fails with ``ActorDiedError`` chained to it.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import ActorDiedError
from .options import is_async_class

if TYPE_CHECKING:
    import asyncio  # imported where used: it costs ~20 ms and most actors never need it

# The method every actor has (Ray's ``__ray_call__``): ``fn(instance, *args, **kwargs)`` on the
# actor's instance, in its turn among the calls.  poolx uses it to join actors to a collective group.
CALL_ON_INSTANCE = "__poolx_call__"

_current = threading.local()  # .runner: the Runner whose call this thread is running


def current_runner() -> Runner | None:
    """The runner of the actor whose method this thread is running, or None outside actors."""
    return getattr(_current, "runner", None)


# max_concurrency of an async actor when none is given (Ray's default).
ASYNC_DEFAULT_CONCURRENCY = 1000

OnDone = Callable[[Any, bool, Any, float, float], None]

# Results that cannot be awaitables, looked up before inspect.isawaitable (~2 us, an ABC check).
_NEVER_AWAITABLE = frozenset({type(None), int, float, bool, str, bytes, list, tuple, dict})


def make_runner(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any], max_concurrency: int | None,
                inline: bool, on_done: OnDone, on_start: Callable[[Any], None] | None = None,
                label: str = "", serial: bool = False) -> Runner:
    """The runner an actor of ``cls`` needs.

    ``inline``: a plain class with ``max_concurrency`` 1 runs its calls in the
    submitting thread.  ``serial``: every call runs there (the serial backend).
    """
    if serial:
        return InlineRunner(cls, args, kwargs, on_done, on_start, label)
    if is_async_class(cls):
        return AsyncRunner(cls, args, kwargs, max_concurrency or ASYNC_DEFAULT_CONCURRENCY,
                           on_done, on_start, label)
    if inline and (max_concurrency or 1) == 1:
        return InlineRunner(cls, args, kwargs, on_done, on_start, label)
    return ThreadRunner(cls, args, kwargs, max_concurrency or 1, on_done, on_start, label)


class Runner:
    def __init__(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any], on_done: OnDone,
                 on_start: Callable[[Any], None] | None, label: str) -> None:
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        self.on_done = on_done
        self.on_start = on_start
        self.label = label or cls.__qualname__
        self.instance: Any = None
        self.init_error: BaseException | None = None
        self.ready = threading.Event()  # set once the constructor has returned or raised
        self.on_built: Callable[[BaseException | None], None] | None = None
        self.stopped = False
        # init_collective_group inside this actor may meet the others in this process (threads backend)
        self.collectives = False
        self.collective_groups: dict[str, Any] = {}  # name -> this actor's collective._block.Member

    def build(self) -> None:
        try:
            self.instance = self.cls(*self.args, **self.kwargs)
        except BaseException as exc:
            self.init_error = exc
        finally:
            self.args, self.kwargs = (), {}
            self.ready.set()
        if self.on_built is not None:
            self.on_built(self.init_error)

    def died_error(self) -> ActorDiedError:
        exc = self.init_error
        error = ActorDiedError(
            f"the actor {self.label} could not be created: its constructor raised "
            f"{type(exc).__name__}: {exc}", actor=self.label)
        error.__cause__ = exc
        return error

    def method(self, name: str) -> Callable[..., Any]:
        if name == CALL_ON_INSTANCE:
            return lambda fn, *args, **kwargs: fn(self.instance, *args, **kwargs)
        try:
            return getattr(self.instance, name)  # type: ignore[no-any-return,unused-ignore]
        except AttributeError:
            raise AttributeError(f"the actor {self.label} has no method {name!r}") from None

    def run_sync(self, ref: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Run one call in this thread and report it."""
        if self.init_error is not None:
            self.on_done(ref, False, self.died_error(), 0.0, 0.0)
            return
        if self.on_start is not None:
            self.on_start(ref)
        outer, _current.runner = getattr(_current, "runner", None), self
        t_start = time.perf_counter()
        try:
            value = self.method(name)(*args, **kwargs)
            if (type(value) not in _NEVER_AWAITABLE and inspect.isawaitable(value)
                    and not isinstance(value, cf.Future)):  # a ref is returned as a ref
                value = self.loop().run_until_complete(_await(value))
        except BaseException as exc:
            _current.runner = outer
            self.on_done(ref, False, exc, t_start, time.perf_counter())
        else:
            _current.runner = outer
            self.on_done(ref, True, value, t_start, time.perf_counter())

    def loop(self) -> asyncio.AbstractEventLoop:
        raise TypeError(f"the actor {self.label} returned an awaitable from a method "
                        "of a class without async def methods")

    def start(self) -> None:
        """Start building the instance (at once, or on the runner's own thread)."""
        raise NotImplementedError

    def submit(self, ref: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Let the runner's threads end once the calls submitted so far have run."""
        self.stopped = True

    def join(self, timeout: float | None) -> None:
        """Wait for the runner's threads to end (after ``stop``)."""


async def _await(value: Any) -> Any:
    return await value


class InlineRunner(Runner):
    """Builds the instance and runs each call in the thread that submits it."""

    _loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.build()

    def submit(self, ref: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.run_sync(ref, name, args, kwargs)

    def loop(self) -> asyncio.AbstractEventLoop:
        # One loop for the actor's whole life: state made on it (locks, queues,
        # tasks) stays usable from call to call.
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
        return self._loop

    def stop(self) -> None:
        super().stop()
        if self._loop is not None:
            self._loop.close()
            self._loop = None


_STOP = object()


class ThreadRunner(Runner):
    """Runs calls on ``n`` threads of its own, started in submission order."""

    def __init__(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any], n: int,
                 on_done: OnDone, on_start: Callable[[Any], None] | None, label: str) -> None:
        super().__init__(cls, args, kwargs, on_done, on_start, label)
        self.calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._run, args=(i == 0,), name=f"poolx-actor-{self.label}-{i}",
                             daemon=True)
            for i in range(n)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, first: bool) -> None:
        if first:
            self.build()  # the instance is made on the thread that (with n=1) runs every call
        self.ready.wait()
        calls = self.calls
        while True:
            item = calls.get()
            if item is _STOP:
                calls.put(_STOP)  # for the other threads
                return
            self.run_sync(*item)

    def submit(self, ref: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.calls.put((ref, name, args, kwargs))

    def stop(self) -> None:
        super().stop()
        self.calls.put(_STOP)

    def join(self, timeout: float | None) -> None:
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout)


class AsyncRunner(Runner):
    """Runs every call on one event loop thread, at most ``limit`` at once."""

    def __init__(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any], limit: int,
                 on_done: OnDone, on_start: Callable[[Any], None] | None, label: str) -> None:
        import asyncio

        super().__init__(cls, args, kwargs, on_done, on_start, label)
        self.limit = limit
        self._loop_obj = asyncio.new_event_loop()
        self.semaphore: asyncio.Semaphore | None = None
        self.pending = 0
        self.thread = threading.Thread(target=self._run, name=f"poolx-actor-{self.label}-loop",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        import asyncio

        loop = self._loop_obj
        asyncio.set_event_loop(loop)
        _current.runner = self
        self.build()
        self.semaphore = asyncio.Semaphore(self.limit)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def submit(self, ref: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self._loop_obj.call_soon_threadsafe(self._spawn, ref, name, args, kwargs)
        except RuntimeError:  # the loop is closed: the actor was stopped
            self.on_done(ref, False, ActorDiedError(f"the actor {self.label} was stopped",
                                                    actor=self.label), 0.0, 0.0)

    def _spawn(self, ref: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.pending += 1
        self._loop_obj.create_task(self._call(ref, name, args, kwargs))

    async def _call(self, ref: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            if self.init_error is not None:
                self.on_done(ref, False, self.died_error(), 0.0, 0.0)
                return
            assert self.semaphore is not None
            async with self.semaphore:
                if self.on_start is not None:
                    self.on_start(ref)
                t_start = time.perf_counter()
                try:
                    value = self.method(name)(*args, **kwargs)
                    if inspect.isawaitable(value) and not isinstance(value, cf.Future):
                        value = await value
                except BaseException as exc:
                    self.on_done(ref, False, exc, t_start, time.perf_counter())
                else:
                    self.on_done(ref, True, value, t_start, time.perf_counter())
        finally:
            self.pending -= 1
            if self.stopped and not self.pending:
                self._loop_obj.stop()

    def stop(self) -> None:
        def stop_when_idle() -> None:
            self.stopped = True
            if not self.pending:
                self._loop_obj.stop()

        try:
            self._loop_obj.call_soon_threadsafe(stop_when_idle)
        except RuntimeError:
            pass

    def join(self, timeout: float | None) -> None:
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)
