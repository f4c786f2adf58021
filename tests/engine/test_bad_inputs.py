"""Bad inputs thrown at every front end: research/reliability.md §3 ("the fuzz table").

For each input the user must get either a result, or an error of the right
type whose message names the culprit; and afterwards the SAME executor (pool,
actor system) still runs a normal task.  Most tables run each row on six front
ends: ``Executor.submit``, ``Executor.map``, ``Pool.apply_async``,
``Pool.map``, an actor method call and an actor constructor.  One executor
serves all the rows of a test; failures are collected and reported together,
by row and front end.

The bugs these tables found (an exception that cannot be changed killed the
worker; map reported its own wrapper or its chunk list instead of the item;
large actor constructor arguments; SystemExit from an actor argument's
__reduce__; a forked child taking a worker's place; a result lost to an
argument's __del__; initargs errors; untruncated tracebacks; async functions)
are fixed; their rows now assert the right outcome.  Constructor arguments
(worker counts, timeouts, contexts) are checked against the stdlib's types here
too; a scheduler thread that dies is in test_faults.py.

Covered elsewhere, not repeated here (§3 item: file::test; P = test_processes.py):

* 1-2 lambdas, closures, ``__main__`` functions under every start method:
  P::test_lambdas_and_closures_work_under_every_start_method,
  P::test_functions_and_classes_defined_in_main_work_under_every_start_method,
  test_pool.py::test_lambdas_and_main_functions_work_under_every_start_method;
  a script without the main guard:
  P::test_workers_that_die_while_starting_break_the_executor_even_during_shutdown.
* 5 a lock argument on ``submit``, named: P::test_unpicklable_argument_raises_at_submit_naming_it;
  a generator as an actor argument: test_actors.py::test_unpicklable_constructor_argument_is_named.
* 6 ``FailsToUnpickle`` on submit:
  P::test_task_that_cannot_be_unpickled_in_the_worker_fails_only_itself,
  P::test_crash_table[task-unloadable], P::test_unpickling_failures_are_broken_process_pool_errors_too.
* 9 > 2 GiB, larger than RAM, 10**6 tiny tasks: not here (too slow for the suite); many tiny
  tasks: P::test_tiny_tasks_travel_many_per_message, P::test_map_of_tiny_items_is_chunked_automatically.
* 12 large arrays out of band: P::test_large_arrays_cross_out_of_band_and_come_back_intact.
* 13 an initializer that raises:
  P::test_failing_initializer_breaks_the_executor_clearly_without_respawning,
  test_executor.py::test_failing_initializer_is_an_initializer_error_on_every_backend.
* 14 a lock result on submit: P::test_unpicklable_result_fails_only_that_task; ``SystemExit``
  in a result's ``__reduce__``: P::test_system_exit_while_pickling_a_result_comes_back_as_itself;
  a segfault there: P::test_a_crash_while_pickling_the_result_blames_that_task_and_runs_it_once;
  Pool's MaybeEncodingError: test_pool.py::test_errors_are_the_stdlibs.
* 15 ``FailsToUnpickle`` result, a class only the worker has:
  P::test_result_that_cannot_be_unpickled_in_the_driver_fails_only_itself.
* 16 an exception with a lock attribute:
  P::test_exception_that_cannot_be_pickled_comes_back_as_remote_error.
* 17 ``sys.exit(2)`` and ``KeyboardInterrupt`` on submit: P::test_crash_table.
* 18 C-stack overflow (SIGSEGV): the segfault row of P::test_crash_table stands for it.
* 19 ``os._exit``, SIGKILL, segfault in a task, killed from outside: P::test_crash_table,
  P::test_a_worker_killed_from_outside_fails_its_task_naming_the_oom_killer; actors:
  test_actors.py::test_crash_without_restart_fails_calls_and_names_the_exit.
* 20 SIGINT in workers: P::test_workers_ignore_sigint; a task that leaves a pool running:
  test_lifecycle.py::test_a_process_pool_left_running_by_a_task_ends_with_its_worker.
* 21 tasks calling back into their executor, nested pools: not covered here.
* 22 empty input and chunksize 0 on ``Executor.map``: test_executor.py::test_map_of_nothing,
  ::test_map_rejects_bad_arguments, ::test_map_with_explicit_chunksize; infinite input:
  ::test_map_consumes_an_infinite_input_lazily_with_buffersize.
* 23 a done-callback that raises Exception:
  test_executor.py::test_done_callbacks_run_and_their_errors_do_not_break_anything;
  a Pool callback that raises: test_pool.py::test_a_raising_callback_is_reported_and_the_pool_goes_on;
  concurrent submits: test_executor.py::test_submit_from_many_threads_at_once.
"""

from __future__ import annotations

import concurrent.futures as cf
import copyreg
import dataclasses
import faulthandler
import functools
import inspect
import logging
import multiprocessing.pool as mpp
import os
import pickle
import sys
import threading
import time
import unittest.mock
from collections.abc import Callable
from typing import Any

import pytest
from _bad_inputs import (
    BASE_EXCEPTIONS,
    CLASSMETHOD_OBJECT,
    STATIC_OBJECT,
    BrokenSetState,
    Caller,
    CrashAtGCInWorker,
    CrashAtUnpickle,
    ErrorAtUnpickle,
    ExitAtGCInWorker,
    ExitAtUnpickle,
    FrozenError,
    HashedKey,
    Holder,
    HoldsALock,
    InputBroke,
    LambdaAttrError,
    OsExitAtUnpickle,
    RaiseAtPickle,
    SlowToDeserialize,
    StrRaisesError,
    WithStatics,
    async_double,
    chdir_root,
    close_std_fds,
    dict_items,
    echo,
    exception_throwing_generator,
    first_is_self,
    fork_child,
    getcwd,
    leave_thread_running,
    make_result,
    nbytes,
    raise_bad,
    raise_base,
    recurse,
    return_os_exit_at_pickle,
    type_name,
)

import poolx
from poolx import (
    ActorDiedError,
    DeserializationError,
    InitializerError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    WorkerDiedError,
)

T = 20  # seconds: every wait in this file is bounded by it
# The worker's traceback, as a task exception's __cause__ (Pool gives multiprocessing's own class)
REMOTE_TB = (RemoteTraceback, mpp.RemoteTraceback)

FRONTS = ("submit", "map", "pool.apply_async", "pool.map", "actor.call", "actor.init")


@pytest.fixture(autouse=True)
def stdlib_pickling_rules(monkeypatch):
    """These tables state what pickles under the stdlib's rules.  Importing
    dask's distributed (the cluster tests run earlier in the same session)
    installs tblib's reducers process-wide, for tracebacks and for every
    exception class then defined, and a traceback argument then pickles:
    take them out of copyreg for the test, as in a program that never
    imported distributed."""
    for cls, reducer in list(copyreg.dispatch_table.items()):
        if getattr(getattr(reducer, "func", reducer), "__module__", "").startswith("tblib"):  # (or a partial)
            monkeypatch.delitem(copyreg.dispatch_table, cls)
POOL_FRONTS = ("pool.apply_async", "pool.map")
ACTOR_FRONTS = ("actor.call", "actor.init")


# -- the harness: one executor, pool and actor per test, six ways to call -------------------


class Fronts:
    """The front ends a row is run through, sharing one executor and one pool."""

    def __init__(self, mp_context: str | None = None) -> None:
        self.mp_context = mp_context
        self._ex: poolx.Executor | None = None
        self._pool: poolx.Pool | None = None
        self._caller: Any = None

    @property
    def ex(self) -> poolx.Executor:
        if self._ex is None:
            self._ex = poolx.Executor(2, mp_context=self.mp_context)
        return self._ex

    @property
    def pool(self) -> poolx.Pool:
        if self._pool is None:
            self._pool = poolx.Pool(2, context=self.mp_context)
        return self._pool

    def caller(self) -> Any:
        if self._caller is None:
            self._caller = self.ex.actor(Caller)
        return self._caller

    def run(self, front: str, fn: Any, args: tuple[Any, ...]) -> Any:
        if front == "submit":
            return self.ex.submit(fn, *args).result(timeout=T)
        if front == "map":
            (value,) = self.ex.map(fn, *[[a] for a in args], timeout=T)
            return value
        if front == "pool.apply_async":
            return self.pool.apply_async(fn, args).get(timeout=T)
        if front == "pool.map":
            if len(args) == 1:
                return self.pool.map_async(fn, list(args)).get(timeout=T)[0]
            return self.pool.starmap_async(fn, [args]).get(timeout=T)[0]
        if front == "actor.call":
            try:
                return self.caller().call.remote(fn, *args).result(timeout=T)
            except ActorDiedError:
                self.forget_caller()
                raise
        if front == "actor.init":
            handle = self.ex.actor(Holder, fn, *args)
            try:
                return handle.get.remote().result(timeout=T)
            finally:
                self.ex.kill(handle)
        raise AssertionError(front)

    def forget_caller(self) -> None:
        if self._caller is not None:
            self.ex.kill(self._caller)
            self._caller = None

    def health(self, front: str) -> str | None:
        """None if what ``front`` used still runs a normal task, else what is wrong."""
        try:
            if front.startswith("pool."):
                got = self.pool.apply_async(pow, (2, 3)).get(timeout=T)
            else:
                got = self.ex.submit(pow, 2, 3).result(timeout=T)
                if front in ACTOR_FRONTS and self.caller().ping.remote().result(timeout=T) != "pong":
                    return "an actor of this executor no longer answers"
        except BaseException as exc:
            return f"broken afterwards: a normal task raised {describe(exc)}"
        return None if got == 8 else f"broken afterwards: pow(2, 3) gave {got!r}"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
        if self._ex is not None:
            self._ex.shutdown(wait=True)

    def __enter__(self) -> Fronts:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def text(obj: object) -> str:
    """str() that cannot fail (some of the exceptions here refuse it)."""
    try:
        return str(obj)
    except BaseException as exc:
        return f"<str() failed: {type(exc).__name__}>"


def describe(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {text(exc)[:400]!r}"


@dataclasses.dataclass
class Returns:
    """The call works; ``check`` is the value, or a predicate on it."""

    check: Any

    def judge(self, value: Any) -> str | None:
        ok = self.check(value) if callable(self.check) else value == self.check
        return None if ok else f"returned {text(value)[:200]!r}, expected {self.check!r}"


@dataclasses.dataclass
class Raises:
    """The call raises ``types``; ``names`` must appear in the message; ``cause``
    is the type of ``__cause__``; ``check`` a predicate on the exception."""

    types: type[BaseException] | tuple[type[BaseException], ...]
    names: tuple[str, ...] = ()
    cause: type[BaseException] | tuple[type[BaseException], ...] | None = None
    check: Callable[[BaseException], bool] | None = None

    def judge_error(self, exc: BaseException) -> str | None:
        if not isinstance(exc, self.types):
            return f"raised {describe(exc)}, expected {self.types}"
        message = text(exc)
        missing = [n for n in self.names if n not in message]
        if missing:
            return f"the message does not name {missing}: {message[:400]!r}"
        if self.cause is not None and not isinstance(exc.__cause__, self.cause):
            return f"__cause__ is {text(exc.__cause__)[:300]!r}, expected a {self.cause}"
        if self.check is not None and not self.check(exc):
            return f"check failed on {describe(exc)}"
        return None


@dataclasses.dataclass
class OneOf:
    """Any of these outcomes is right."""

    options: tuple[Returns | Raises, ...]


Expect = Returns | Raises | OneOf


def judge(expected: Expect, value: Any = None, exc: BaseException | None = None) -> str | None:
    """None if the outcome (``value``, or ``exc`` if it raised) is as expected, else the problem."""
    if isinstance(expected, OneOf):
        problems = [judge(option, value, exc) for option in expected.options]
        return None if None in problems else " / ".join(p for p in problems if p)
    if exc is not None:
        return expected.judge_error(exc) if isinstance(expected, Raises) else f"raised {describe(exc)}"
    if isinstance(expected, Returns):
        return expected.judge(value)
    return f"returned {text(value)[:200]!r}, expected {expected.types}"


@dataclasses.dataclass
class Row:
    """One bad input: call ``fn(*make())``; ``expect(front)`` says what must happen."""

    id: str
    fn: Any
    make: Callable[[], tuple[Any, ...]]
    expect: Callable[[str], Expect]
    fronts: tuple[str, ...] = FRONTS


def run_row(fronts: Fronts, row: Row, front: str) -> str | None:
    """Run one row on one front end; None if all is as expected, else the problem."""
    expected = row.expect(front)
    args = row.make()
    try:
        problem = judge(expected, value=fronts.run(front, row.fn, args))
    except BaseException as exc:
        problem = judge(expected, exc=exc)
    finally:
        for a in args:
            if inspect.iscoroutine(a):
                a.close()
    return problem or fronts.health(front)


def run_table(rows: list[Row], mp_context: str | None = None, fronts_filter=FRONTS) -> None:
    """Every row on every front end, with one executor and one pool."""
    problems = []
    with Fronts(mp_context) as fronts:
        for row in rows:
            for front in row.fronts:
                if front not in fronts_filter:
                    continue
                problem = run_row(fronts, row, front)
                if problem:
                    problems.append(f"[{row.id}] {front}: {problem}")
    assert not problems, "\n".join(problems)


# -- expectations shared by several rows --------------------------------------------------


def named(fn: Any) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def culprit(front: str, fn: Any) -> tuple[str, ...]:
    """What a poolx message must name for a task calling ``fn``.  (Pool.map's
    messages name poolx's chunk runner instead, and map's give poolx's module:
    test_messages_name_the_users_function.)"""
    if front in ("submit", "pool.apply_async"):
        return (named(fn),)
    if front == "map":
        return (fn.__qualname__,)
    if front == "actor.call":
        return ("Caller.call",)
    if front == "actor.init":
        return ("Holder",)
    return ()


def works(check: Any) -> Callable[[str], Expect]:
    return lambda front: Returns(check)


def cannot_pickle(raw: type[BaseException], fn: Any = type_name, *names: str) -> Callable[[str], Expect]:
    """The driver cannot pickle the call: SerializationError (a PicklingError)
    at the call site, its __cause__ the original error; Pool gives the original
    error itself, as multiprocessing does."""

    def expect(front: str) -> Expect:
        if front in POOL_FRONTS:
            return Raises(raw)
        return Raises(SerializationError, (*names, *culprit(front, fn)), cause=raw)

    return expect


def cannot_unpickle(raw: type[BaseException], fn: Any = type_name) -> Callable[[str], Expect]:
    """The worker cannot unpickle the call: DeserializationError for that task
    only (an actor that cannot rebuild its constructor's arguments is dead:
    ActorDiedError, the original error as its __cause__)."""

    def expect(front: str) -> Expect:
        if front == "actor.init":
            return Raises(ActorDiedError, ("Holder", raw.__name__), cause=raw)
        return Raises(DeserializationError, (raw.__name__, *culprit(front, fn)), cause=REMOTE_TB)

    return expect


def dies(how: str, fn: Any) -> Callable[[str], Expect]:
    """The process running the call dies: WorkerDiedError (a BrokenProcessPool)
    naming how, or ActorDiedError for an actor."""

    def expect(front: str) -> Expect:
        if front in ACTOR_FRONTS:
            return Raises(ActorDiedError, (how, "Holder" if front == "actor.init" else "Caller"))
        return Raises(WorkerDiedError, (how, *culprit(front, fn)),
                      check=lambda e: isinstance(e, cf.process.BrokenProcessPool))

    return expect


def delivered(exc_type: type[BaseException], args: tuple[Any, ...] | None = None) -> Callable[[str], Expect]:
    """The task raised ``exc_type``: it comes back as itself (same args, the
    worker's traceback as __cause__); an actor constructor's is the __cause__
    of ActorDiedError."""

    def same_args(e: BaseException) -> bool:
        return args is None or e.args == args

    def expect(front: str) -> Expect:
        if front == "actor.init":
            return Raises(ActorDiedError, ("Holder", exc_type.__name__), cause=exc_type,
                          check=lambda e: same_args(e.__cause__))
        return Raises(exc_type, cause=REMOTE_TB, check=same_args)

    return expect


# -- §3 items 1, 3, 4: callables ------------------------------------------------------------


def _closure():
    k = 3

    def add_k(x):
        return x + k

    return add_k


def _local_class():
    class Local:
        def __init__(self, x):
            self.x = x

    return Local


def not_callable(type_word: str) -> Callable[[str], Expect]:
    # submit() checks at once; map, Pool.map and actors call it in the worker (as the stdlib does)
    def expect(front: str) -> Expect:
        if front == "actor.init":
            return Raises(ActorDiedError, ("Holder", "not callable"), cause=TypeError)
        return Raises(TypeError, (type_word,))

    return expect


def _async_expect(front: str) -> Expect:
    if front in ACTOR_FRONTS:  # an actor runs a coroutine it is handed to completion
        return Returns(4)
    # a task is refused, naming the async function and saying what to do
    return Raises(TypeError, ("async_double", "async function", "asyncio.run"))

CALLABLES = [
    Row("lambda", lambda x: x + 1, lambda: (1,), works(2)),
    Row("closure", _closure(), lambda: (1,), works(4)),
    Row("partial of a lambda", functools.partial(lambda a, b: a * b, 3), lambda: (5,), works(15)),
    Row("local class", _local_class(), lambda: (4,),
        works(lambda v: type(v).__name__ == "Local" and v.x == 4)),
    Row("builtin id", id, lambda: (1,), works(lambda v: isinstance(v, int))),
    Row("builtin pow", pow, lambda: (2, 10), works(1024)),
    Row("time.sleep", time.sleep, lambda: (0,), works(None)),
    Row("staticmethod object", STATIC_OBJECT, lambda: (1,), works(2)),
    Row("bound classmethod", WithStatics.klass, lambda: (1,), works("WithStatics:1")),
    Row("Mock", unittest.mock.Mock(return_value=5), lambda: (1,), works(5)),
    Row("classmethod object", CLASSMETHOD_OBJECT, lambda: (1,), not_callable("classmethod")),
    Row("non-callable", 42, lambda: (1,), not_callable("int")),
    Row("None", None, lambda: (1,), not_callable("NoneType")),
    Row("method of an object holding a lock", HoldsALock().method, lambda: (1,),
        lambda front: Raises(TypeError, ("lock",)) if front in POOL_FRONTS
        else Raises(SerializationError, ("lock",), cause=TypeError)),
    Row("async def", async_double, lambda: (2,), _async_expect),
]


def test_callables():
    run_table(CALLABLES)


# -- §3 items 5, 6, 8, 9, 10: arguments -------------------------------------------------------


async def _coroutine_function():
    return None


def _coroutine():
    return (_coroutine_function(),)


def _frame():
    return (sys._getframe(),)


def _traceback():
    try:
        raise ValueError("for its traceback")
    except ValueError as exc:
        return (exc.__traceback__,)


def _deep(n=10**5):
    x: list[Any] = []
    for _ in range(n):
        x = [x]
    return (x,)


def _self_referential():
    x: list[Any] = []
    x.append(x)
    return (x,)


def _odd_keys():
    return ({(1, 2): 1, None: 2, float("nan"): 3, frozenset({1}): 4, "\ud800": 5, HashedKey(1): 6},)


ODD_KEYS = sorted([("(1, 2)", 1), ("None", 2), ("nan", 3), ("frozenset({1})", 4), ("'\\ud800'", 5),
                   ("HashedKey(1)", 6)])


ARGUMENTS = [
    # pickling fails in the driver
    Row("reduce raises ValueError", type_name, lambda: (RaiseAtPickle(ValueError),),
        cannot_pickle(ValueError, type_name, "RaiseAtPickle")),
    *[Row(f"reduce raises {e.__name__}", type_name, lambda e=e: (RaiseAtPickle(e),), cannot_pickle(raw))
      for e, raw in [(pickle.PicklingError, pickle.PicklingError), (TypeError, TypeError),
                     (RuntimeError, RuntimeError), (MemoryError, MemoryError),
                     (RecursionError, pickle.PicklingError)]],  # cloudpickle turns RecursionError into this
    Row("reduce raises SystemExit", type_name, lambda: (RaiseAtPickle(SystemExit),),
        cannot_pickle(SystemExit)),
    # a KeyboardInterrupt while pickling may be a real Ctrl-C: it may go through as itself
    Row("reduce raises KeyboardInterrupt", type_name, lambda: (RaiseAtPickle(KeyboardInterrupt),),
        lambda front: OneOf((cannot_pickle(KeyboardInterrupt)(front), Raises(KeyboardInterrupt)))),
    Row("generator", type_name, lambda: ((lambda: (yield 1))(),),
        cannot_pickle(TypeError, type_name, "generator")),
    Row("generator expression", type_name, lambda: ((i for i in range(3)),),
        cannot_pickle(TypeError, type_name, "generator")),
    Row("coroutine", type_name, _coroutine, cannot_pickle(TypeError, type_name, "coroutine")),
    Row("frame", type_name, _frame, cannot_pickle(TypeError, type_name, "frame")),
    Row("traceback", type_name, _traceback, cannot_pickle(TypeError, type_name, "traceback")),
    Row("list nested 10**5 deep", type_name, _deep,
        cannot_pickle(pickle.PicklingError, type_name, "recursion")),
    # unpickling fails in the worker (which lives on)
    *[Row(f"reconstructor raises {e.__name__}", type_name, lambda e=e: (ErrorAtUnpickle(e),),
          cannot_unpickle(e)) for e in (ValueError, SystemExit, KeyboardInterrupt)],
    Row("reconstructor is sys.exit", type_name, lambda: (ExitAtUnpickle(),), cannot_unpickle(SystemExit)),
    Row("__setstate__ raises", type_name, lambda: (BrokenSetState(),), cannot_unpickle(ValueError)),
    # these work
    Row("slow to unpickle", type_name, lambda: (SlowToDeserialize(),), works("SlowToDeserialize")),
    Row("iterator", type_name, lambda: (iter([1, 2]),), works("list_iterator")),
    Row("module", type_name, lambda: (os,), works("module")),
    Row("Mock", type_name, lambda: (unittest.mock.Mock(),), works("Mock")),
    Row("64 KiB + 1 bytes", nbytes, lambda: (b"x" * (64 * 1024 + 1),), works(64 * 1024 + 1)),
    Row("100 MB bytes", nbytes, lambda: (b"x" * 100_000_000,), works(100_000_000)),
    Row("self-referential list", first_is_self, _self_referential, works(True)),
    Row("dict with odd keys", dict_items, _odd_keys, works(ODD_KEYS)),
]


def test_arguments():
    run_table(ARGUMENTS)


def test_keyword_arguments_with_non_string_keys_fail_at_the_call_site():
    # Python itself refuses f(**{1: 2}); poolx's bookkeeping must not be hurt by it.
    with Fronts() as fronts:
        calls = {
            "submit": lambda: fronts.ex.submit(dict, **{1: 2}),  # type: ignore[misc]
            "pool.apply_async": lambda: fronts.pool.apply_async(dict, (), {1: 2}).get(timeout=T),
            "actor.call": lambda: fronts.caller().call.remote(dict, **{1: 2}),  # type: ignore[misc]
            "actor.init": lambda: fronts.ex.actor(Holder, dict, **{1: 2}),  # type: ignore[misc]
        }
        for front, call in calls.items():
            with pytest.raises(TypeError, match="keywords must be strings"):
                call()
            assert fronts.health(front) is None, front
        assert fronts.ex.statistics().tasks_pending == 0


# -- §3 item 12: numpy arrays -----------------------------------------------------------------

def _same_array(expected: Any) -> Callable[[Any], bool]:
    import numpy as np

    def check(value: Any) -> bool:
        if not isinstance(value, np.ndarray):
            return False
        if value.dtype != expected.dtype or value.shape != expected.shape:
            return False
        if expected.dtype == object:
            return list(value) == list(expected)
        return bool(np.array_equal(value, expected))

    return check


def test_numpy_arrays(tmp_path):
    np = pytest.importorskip("numpy")
    memmap = np.memmap(tmp_path / "a.dat", dtype=np.float64, mode="w+", shape=(100_000,))
    memmap[:] = np.arange(100_000)
    read_only = np.arange(10)
    read_only.flags.writeable = False
    arrays = {
        "object dtype": np.array([{"a": 1}, None, (1, 2)], dtype=object),
        "non-contiguous": np.arange(20)[::3],
        "non-contiguous, large": np.arange(200_000)[::2],
        "read-only": read_only,
        "zero-size": np.empty((0, 3)),
        "memmap": memmap,
        "large, contiguous": np.arange(100_000),
        "large, Fortran order": np.asfortranarray(np.arange(200_000.0).reshape(400, 500)),
        "large, read-only": np.frombuffer(bytes(800_000), dtype=np.int64),
    }
    rows = [Row(name, echo, lambda a=a: (a,), works(_same_array(a))) for name, a in arrays.items()]
    rows.append(Row("object dtype holding a lock", echo,
                    lambda: (np.array([threading.Lock()], dtype=object),),
                    cannot_pickle(TypeError, echo, "lock")))
    run_table(rows)


def test_a_large_array_can_be_an_actor_constructor_argument():
    np = pytest.importorskip("numpy")
    with poolx.Executor(1) as ex:
        handle = ex.actor(Holder, len, np.arange(100_000))
        assert handle.get.remote().result(timeout=T) == 100_000


# -- §3 items 14, 15: results -----------------------------------------------------------------


def cannot_send_result(raw_word: str) -> Callable[[str], Expect]:
    """The worker cannot pickle the result: SerializationError for that task only
    (MaybeEncodingError on Pool, as multiprocessing), naming the result's type."""

    def expect(front: str) -> Expect:
        if front in POOL_FRONTS:
            return Raises(mpp.MaybeEncodingError, (raw_word,))
        where = {"actor.call": "Caller.call", "actor.init": "Holder.get"}.get(front, "make_result")
        return Raises(SerializationError, (raw_word, where), cause=REMOTE_TB)

    return expect


def cannot_load_result(raw: type[BaseException]) -> Callable[[str], Expect]:
    """The driver cannot unpickle the result: DeserializationError for that future only."""

    def expect(front: str) -> Expect:
        where = {"actor.call": "Caller.call", "actor.init": "Holder.get", "pool.map": ""}.get(
            front, "make_result")
        return Raises(DeserializationError, (raw.__name__, where), cause=raw)

    return expect


RESULTS = [
    Row("lambda", make_result, lambda: ("lambda",), works(lambda v: v() == 42)),  # cloudpickle sends it
    Row("open file", make_result, lambda: ("open file",), works(lambda v: v.read() == "")),  # that too
    Row("lock", make_result, lambda: ("lock",), cannot_send_result("lock")),
    Row("generator", make_result, lambda: ("generator",), cannot_send_result("generator")),
    Row("__reduce__ raises ValueError", make_result, lambda: ("reduce raises ValueError",),
        cannot_send_result("RaiseAtPickle")),
    # as SystemExit there (test_processes.py): the stdlib re-raises a BaseException from pickling as is
    Row("__reduce__ raises KeyboardInterrupt", make_result, lambda: ("reduce raises KeyboardInterrupt",),
        lambda front: Raises(KeyboardInterrupt)),
    *[Row(f"reconstructor raises {e.__name__} in the driver", make_result,
          lambda e=e: (f"unpickle raises {e.__name__}",), cannot_load_result(e))
      for e in (ValueError, SystemExit, KeyboardInterrupt)],
    Row("__setstate__ raises in the driver", make_result, lambda: ("setstate raises",),
        cannot_load_result(ValueError)),
]


def test_results():
    run_table(RESULTS)


# -- §3 items 16, 17, 18: exceptions from tasks ------------------------------------------------



def remote_error(type_suffix: str, message: str | None = None) -> Callable[[str], Expect]:
    """The exception does not round-trip: RemoteError with its type name, message and the traceback."""

    def check(e: BaseException) -> bool:
        return (isinstance(e, RemoteError) and e.type_name.endswith(type_suffix) and "raise_bad" in e.tb
                and (message is None or e.message == message))

    def expect(front: str) -> Expect:
        if front == "actor.init":
            return Raises(ActorDiedError, ("Holder", type_suffix))
        return Raises(RemoteError, (type_suffix,), cause=REMOTE_TB, check=check)

    return expect


def itself_or_remote(exc_type: type[BaseException]) -> Callable[[str], Expect]:
    """Either it round-trips (cloudpickle can send a lambda attribute), or RemoteError names it."""
    name = exc_type.__name__

    def check(e: BaseException) -> bool:
        return isinstance(e, exc_type) or (isinstance(e, RemoteError) and e.type_name.endswith(name))

    def expect(front: str) -> Expect:
        if front == "actor.init":
            return Raises(ActorDiedError, ("Holder", name))
        return Raises((exc_type, RemoteError), cause=REMOTE_TB, check=check)

    return expect


EXCEPTIONS = [
    Row("__init__ signature mismatch", raise_bad, lambda: ("init signature",),
        remote_error("TwoArgError", "first")),
    Row("lambda attribute", raise_bad, lambda: ("lambda attribute",), itself_or_remote(LambdaAttrError)),
    Row("__reduce__ raises", raise_bad, lambda: ("reduce raises",),
        remote_error("ReduceRaisesError", "reduce raises")),
    Row("frozen dataclass", raise_bad, lambda: ("frozen dataclass",), itself_or_remote(FrozenError)),
    Row("unpicklable __cause__", raise_bad, lambda: ("unpicklable cause",),
        delivered(ValueError, ("has a bad cause",))),
    *([Row("ExceptionGroup holding an unpicklable exception", raise_bad, lambda: ("group",),
           remote_error("ExceptionGroup"))] if sys.version_info >= (3, 11) else []),  # (no groups in 3.10)
    Row("__str__ and __repr__ raise", raise_bad, lambda: ("str raises",),
        delivered(StrRaisesError, ("str raises",))),
    Row("10 MB message", raise_bad, lambda: ("10 MB message",), delivered(ValueError, ("x" * 10_000_000,))),
]


def test_exceptions_that_do_not_round_trip():
    run_table(EXCEPTIONS)


def test_a_huge_traceback_is_truncated():
    with poolx.Executor(1) as ex:
        with pytest.raises(ValueError) as info:
            ex.submit(raise_bad, "10 MB message").result(timeout=T)
        assert len(info.value.args[0]) == 10_000_000  # the exception itself is intact
        assert len(str(info.value.__cause__)) < 1_000_000


BASE = [Row(kind, raise_base, lambda kind=kind: (kind,),
            delivered(type(make()), make().args))
        for kind, make in BASE_EXCEPTIONS.items()]


def _recursion(front: str) -> Expect:
    if front == "actor.init":
        return delivered(RecursionError)(front)
    # the worker's traceback says where, without a thousand repeated frames
    return Raises(RecursionError, cause=REMOTE_TB,
                  check=lambda e: "recurse" in str(e.__cause__) and len(str(e.__cause__)) < 100_000)


BASE.append(Row("RecursionError in the task", recurse, lambda: (0,), _recursion))


def test_base_exceptions_and_recursion_errors_from_tasks_come_back_as_themselves():
    run_table(BASE)


def test_base_exceptions_do_not_cost_the_worker_its_life():
    with poolx.Executor(1) as ex:
        pid = ex.submit(os.getpid).result(timeout=T)
        for kind, make in BASE_EXCEPTIONS.items():
            with pytest.raises(type(make())):
                ex.submit(raise_base, kind).result(timeout=T)
        assert ex.submit(os.getpid).result(timeout=T) == pid
        assert ex.statistics().workers_died == 0


@pytest.mark.parametrize("front", ["submit", "map", "pool.apply_async", "pool.map"])
def test_messages_name_the_users_function(front):
    cases = [  # (fn, args, expected type)
        (type_name, (ErrorAtUnpickle(ValueError),), DeserializationError),
        (make_result, ("lock",), (SerializationError, mpp.MaybeEncodingError)),
        (make_result, ("unpickle raises ValueError",), DeserializationError),
    ]
    problems = []
    with Fronts() as fronts:
        for fn, args, error in cases:
            try:
                fronts.run(front, fn, args)
                problems.append(f"{fn.__name__}{args}: no error")
            except error as exc:
                if named(fn) not in text(exc):
                    problems.append(f"{fn.__name__}{args}: {named(fn)!r} not in {text(exc)[:300]!r}")
    assert not problems, "\n".join(problems)


# -- §3 items 6, 7, 14, 19: process-level crashes, under every start method ---------------------

CRASHES = [
    Row("reconstructor os._exit(0)s", type_name, lambda: (OsExitAtUnpickle(),), dies("code 0", type_name)),
    Row("reconstructor segfaults", type_name, lambda: (CrashAtUnpickle(),), dies("SIGSEGV", type_name)),
    Row("reconstructor is sys.exit", type_name, lambda: (ExitAtUnpickle(),), cannot_unpickle(SystemExit)),
    Row("result's __reduce__ os._exit(0)s", return_os_exit_at_pickle, lambda: (None,),
        dies("code 0", return_os_exit_at_pickle)),
    Row("task os._exit(0)s", os._exit, lambda: (0,), dies("code 0", os._exit)),
    Row("task segfaults", faulthandler._sigsegv, lambda: (False,), dies("SIGSEGV", faulthandler._sigsegv)),
    Row("task sys.exit('bye')", sys.exit, lambda: ("bye",), delivered(SystemExit, ("bye",))),
]


def test_process_level_crashes(start_method):
    # Pool.map and a second actor front add little here: submit, map,
    # Pool.apply_async and an actor call cover the four code paths.
    run_table(CRASHES, start_method, ("submit", "map", "pool.apply_async", "actor.call"))
    if start_method == "forkserver":  # the default: the other two fronts too
        run_table(CRASHES, start_method, ("pool.map", "actor.init"))


@pytest.mark.parametrize("bomb", [CrashAtGCInWorker, ExitAtGCInWorker], ids=["segfault", "os._exit"])
def test_a_crash_in_an_arguments_del_after_the_task_returned(start_method, bomb):
    # The task's result arrives (the worker drops arguments only after sending
    # results: loky's test_call_item_gc_crash_or_exit), and the executor goes on.
    # An actor call may lose it (the actor process dies with it): a clear death error.
    how = "SIGSEGV" if bomb is CrashAtGCInWorker else "code 0"
    problems, lost = [], []
    with Fronts(start_method) as fronts:
        for front in ("submit", "pool.apply_async", "actor.call"):
            try:
                value = fronts.run(front, id, (bomb(),))
                if not isinstance(value, int):
                    problems.append(f"{front}: returned {value!r}")
            except (WorkerDiedError, ActorDiedError) as exc:
                if how not in str(exc):
                    problems.append(f"{front}: {describe(exc)} does not say {how!r}")
                lost.append(front)
            problems.extend(f"{front}: {p}" for p in [fronts.health(front)] if p)
    assert not problems, "\n".join(problems)
    assert set(lost) <= {"actor.call"}, lost


# -- §3 item 20: tasks that misbehave with their process ------------------------------------------


def test_tasks_that_close_stdio_change_cwd_leave_threads_or_fork():
    cwd = os.getcwd()
    ex = poolx.Executor(1)  # one worker: each task runs where the previous one misbehaved
    try:
        pid = ex.submit(os.getpid).result(timeout=T)
        assert ex.submit(close_std_fds).result(timeout=T) == "closed"
        assert ex.submit(pow, 2, 3).result(timeout=T) == 8
        with pytest.raises(ValueError, match="invalid literal"):
            ex.submit(int, "x").result(timeout=T)
        assert list(ex.map(abs, range(-50, 0), timeout=T)) == list(range(50, 0, -1))
        assert ex.submit(os.getpid).result(timeout=T) == pid  # the same worker, still serving
        with pytest.raises(WorkerDiedError, match="SIGSEGV"):  # a crash is still reported with fd 2 gone
            ex.submit(faulthandler._sigsegv).result(timeout=T)
        assert ex.submit(chdir_root).result(timeout=T) == "/"
        assert ex.submit(getcwd).result(timeout=T) == "/"  # the worker keeps it (as the stdlib's would)...
        assert os.getcwd() == cwd  # ...the driver does not see it
        assert ex.submit(fork_child, "os._exit").result(timeout=T) == 0
        assert [ex.submit(pow, 2, i).result(timeout=T) for i in range(10)] == [2**i for i in range(10)]
        assert ex.submit(leave_thread_running).result(timeout=T) == "left"
        assert ex.submit(pow, 2, 3).result(timeout=T) == 8
    finally:
        started = time.monotonic()
        ex.shutdown(wait=True)
    # A non-daemon thread left in a worker delays its exit (poolx waits, then
    # kills it: about 5 s today) but never hangs shutdown.
    assert time.monotonic() - started < 10


def test_a_forked_child_that_calls_sys_exit_does_not_answer_for_its_parent():
    ex = poolx.Executor(1)
    try:
        pid = ex.submit(os.getpid).result(timeout=T)
        assert ex.submit(fork_child, "sys.exit").result(timeout=T) == 0  # the child's exit code
        assert ex.submit(os.getpid).result(timeout=T) == pid
    finally:
        ex.kill_workers()  # (a graceful shutdown waits 5 s for the stuck worker)
        ex.shutdown(wait=True)


# -- §3 item 13: initializers ---------------------------------------------------------------------

@pytest.mark.parametrize(("initializer", "initargs", "names"), [
    pytest.param(sys.exit, (3,), ("sys.exit", "SystemExit"), id="sys.exit"),
    pytest.param(raise_base, ("KeyboardInterrupt",), ("raise_base", "KeyboardInterrupt"),
                 id="KeyboardInterrupt"),
    pytest.param(os._exit, (0,), ("code 0",), id="os._exit(0)"),
    pytest.param(print, (threading.Lock(),), ("print", "initargs"), id="unpicklable initargs"),
    pytest.param(print, (ErrorAtUnpickle(ValueError),), ("print", "ValueError", "initargs"),
                 id="initargs fail to unpickle"),
])
def test_bad_initializers_break_the_executor_clearly(initializer, initargs, names):
    ex = poolx.Executor(1, initializer=initializer, initargs=initargs)
    try:
        with pytest.raises(InitializerError) as info:
            ex.submit(pow, 2, 3).result(timeout=T)
        missing = [n for n in names if n not in str(info.value)]
        assert not missing, f"{missing} not in {str(info.value)[:400]!r}"
    finally:
        ex.shutdown(wait=True)


def test_a_lambda_initializer_works():
    with poolx.Executor(1, initializer=lambda: None) as ex:
        assert ex.submit(pow, 2, 3).result(timeout=T) == 8


# -- constructor arguments (issue 19, item 5) ---------------------------------------------------
#
# Executor(2.5) used to be accepted, and its scheduler thread died on range(2.5).
# Every front end now refuses a bad argument in its constructor, with the
# stdlib's exception type (CPython 3.10 to 3.13, see poolx/_arguments.py): a
# message that names the argument, and nothing left running.

def _numpy_int(n: int) -> Any:
    np = pytest.importorskip("numpy")
    return np.int64(n)


# (value, what the stdlib does): ProcessPoolExecutor compares <= 0, then needs an index
WORKER_COUNTS = [
    pytest.param(2.5, TypeError, id="2.5"), pytest.param(2.0, TypeError, id="2.0"),
    pytest.param(0.5, TypeError, id="0.5"), pytest.param("2", TypeError, id="'2'"),
    pytest.param(0, ValueError, id="0"), pytest.param(-1, ValueError, id="-1"),
    pytest.param(-1.5, ValueError, id="-1.5"), pytest.param(False, ValueError, id="False"),
]


@pytest.mark.parametrize(("value", "error"), WORKER_COUNTS)
@pytest.mark.parametrize("backend", ["processes", "threads", "serial"])
def test_a_bad_max_workers_is_refused_as_process_pool_executor_refuses_it(value, error, backend):
    with pytest.raises(error, match="max_workers"):
        poolx.Executor(value, backend=backend)
    with pytest.raises(error):  # the oracle: the stdlib's own (no process starts before submit)
        cf.ProcessPoolExecutor(value).shutdown()


@pytest.mark.parametrize("value", [True, "numpy"])
def test_worker_counts_the_stdlib_accepts_are_accepted(value):
    value = _numpy_int(2) if value == "numpy" else value
    with poolx.Executor(value) as ex:
        assert ex.max_workers == int(value) and type(ex.max_workers) is int
        assert ex.submit(pow, 2, 3).result(timeout=T) == 8
    with poolx.Pool(value) as pool:
        assert pool.apply_async(pow, (2, 3)).get(timeout=T) == 8


# multiprocessing.Pool compares < 1 first (so 0.5 is a ValueError there), then counts with range()
POOL_COUNTS = [
    pytest.param(2.5, TypeError, id="2.5"), pytest.param(0.5, ValueError, id="0.5"),
    pytest.param("2", TypeError, id="'2'"), pytest.param(0, ValueError, id="0"),
    pytest.param(False, ValueError, id="False"),
]


@pytest.mark.parametrize(("value", "error"), POOL_COUNTS)
@pytest.mark.parametrize("pool_type", [poolx.Pool, poolx.ThreadPool])
def test_a_bad_number_of_processes_is_refused_as_multiprocessing_pool_refuses_it(value, error, pool_type):
    with pytest.raises(error, match="processes"):
        pool_type(value)
    stdlib = mpp.Pool if pool_type is poolx.Pool else mpp.ThreadPool
    with pytest.raises(error):  # the oracle (it raises before starting any worker)
        stdlib(value)


def test_a_bad_worker_count_given_to_init_names_the_argument():
    for name in ("num_cpus", "num_workers"):
        with pytest.raises(TypeError, match=name):
            poolx.init(**{name: 2.5})
        with pytest.raises(ValueError, match=name):
            poolx.init(**{name: 0})
        assert not poolx.is_initialized()


# Executor keywords: (value, error, words the message must hold).  max_tasks_per_child is
# ProcessPoolExecutor's check (isinstance int: a numpy integer is a TypeError there too);
# poolx's own arguments follow the same rule (a wrong type: TypeError; a wrong value: ValueError).
EXECUTOR_ARGUMENTS = {
    "max_tasks_per_child": [(2.5, TypeError), ("numpy", TypeError), (0, ValueError), (-1, ValueError)],
    "task_timeout": [("1", TypeError), (True, TypeError), (0, ValueError), (-1, ValueError),
                     (float("nan"), ValueError), (float("inf"), ValueError)],
    "init_timeout": [("1", TypeError), (0, ValueError), (float("nan"), ValueError)],
    "max_retries": [(1.5, TypeError), (True, TypeError), ("1", TypeError), (-1, ValueError)],
    "max_memory_per_child": [(2e9, TypeError), (True, TypeError), ([1], TypeError), (0, ValueError),
                             ("lots", ValueError), ("-5MB", ValueError)],
    "mp_context": [(42, TypeError), (threading, TypeError), ("nope", ValueError)],
    "initializer": [(42, TypeError)],
}


@pytest.mark.parametrize(("name", "value", "error"), [
    pytest.param(name, value, error, id=f"{name}={value!r}")
    for name, rows in EXECUTOR_ARGUMENTS.items() for value, error in rows])
def test_bad_executor_arguments_are_refused_with_the_right_type_naming_them(name, value, error):
    if value == "numpy":
        value = _numpy_int(2)
    with pytest.raises(error, match=name) as info:
        poolx.Executor(1, **{name: value})
    assert "got" in str(info.value) or name == "mp_context", str(info.value)  # what was given


def test_executor_arguments_of_other_numeric_types_are_accepted():
    np = pytest.importorskip("numpy")
    with poolx.Executor(1, task_timeout=np.float64(30), init_timeout=30, max_retries=np.int64(1),
                        max_memory_per_child=np.int64(10**10), max_tasks_per_child=True) as ex:
        assert ex.submit(pow, 2, 3).result(timeout=T) == 8


def test_the_joblib_backend_refuses_bad_executor_arguments_when_parallel_starts():
    # (n_jobs is joblib's to check: it takes 2.5 as 2 with every backend, poolx's too)
    joblib = pytest.importorskip("joblib")
    import poolx.joblib  # noqa: F401 - registers the backend

    for name, value, error in (("task_timeout", "1", TypeError), ("max_memory_per_child", 0, ValueError)):
        with pytest.raises(error, match=name), joblib.parallel_config(backend="poolx", **{name: value}):
            joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(i) for i in range(3))


def test_bad_initargs_and_pool_arguments_are_refused():
    with pytest.raises(TypeError, match=r"initargs must be a tuple.*\(x,\)"):
        poolx.Executor(1, initializer=print, initargs=5)
    with pytest.raises(ValueError, match="maxtasksperchild"):  # multiprocessing.Pool's type for both
        poolx.Pool(1, maxtasksperchild=2.5)
    with pytest.raises(TypeError, match="context must be a multiprocessing context"):
        poolx.Pool(1, context=42)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        poolx.ThreadPool(1, initializer=42)


# -- §3 item 22: input iterables ----------------------------------------------------------------


def _read_until_broken(make: Callable[[], Any]) -> tuple[list[Any], BaseException]:
    got = []
    with pytest.raises(InputBroke) as info:
        for x in make():  # map() itself may raise: it reads ahead in the caller, as the stdlib's does
            got.append(x)
    return got, info.value


def test_an_input_iterable_that_raises_partway_raises_as_is():
    with Fronts() as fronts:
        ex, pool = fronts.ex, fronts.pool
        cases = {  # name: (call, all the results before the failure are delivered first)
            "Executor.map": (lambda: ex.map(abs, exception_throwing_generator(10, 5), timeout=T), False),
            "Executor.map chunksize=1": (
                lambda: ex.map(abs, exception_throwing_generator(10, 5), chunksize=1, timeout=T), False),
            # (as the stdlib's: the read-ahead items' results are dropped, those before come in order)
            "Executor.map buffersize=2": (
                lambda: ex.map(abs, exception_throwing_generator(10, 5), chunksize=1, buffersize=2,
                               timeout=T), False),
            "Pool.imap": (lambda: pool.imap(abs, exception_throwing_generator(10, 5)), True),
            "Pool.imap chunksize=3": (
                lambda: pool.imap(abs, exception_throwing_generator(10, 5), chunksize=3), False),
            "Pool.imap_unordered": (
                lambda: pool.imap_unordered(abs, exception_throwing_generator(10, 5)), False),
            "Pool.map": (lambda: pool.map(abs, exception_throwing_generator(10, 5)), False),
        }
        for name, (make, ordered) in cases.items():
            got, exc = _read_until_broken(make)
            assert exc.__cause__ is None, name  # the caller's own error: no RemoteTraceback
            assert str(exc) == "input broke at 5", name
            if "unordered" not in name:
                assert got == [0, 1, 2, 3, 4][:len(got)], name  # in order
            if ordered:
                assert got == [0, 1, 2, 3, 4], name
            assert fronts.health("submit") is None and fronts.health("pool.map") is None, name


def test_empty_inputs_and_odd_chunksizes():
    with Fronts() as fronts:
        ex, pool = fronts.ex, fronts.pool
        assert list(ex.map(abs, [], chunksize=5, timeout=T)) == []
        assert list(ex.map(pow, [], [], timeout=T)) == []
        assert pool.map(abs, []) == [] and pool.starmap(pow, []) == []
        assert list(pool.imap(abs, [])) == [] and list(pool.imap_unordered(abs, [])) == []
        assert pool.map_async(abs, []).get(timeout=T) == []
        # a chunksize larger than the input
        assert list(ex.map(abs, [1, -2], chunksize=100, timeout=T)) == [1, 2]
        assert pool.map(abs, [1, -2], chunksize=100) == [1, 2]
        assert list(pool.imap(abs, [1, -2], chunksize=100)) == [1, 2]
        assert sorted(pool.imap_unordered(abs, [1, -2], chunksize=100)) == [1, 2]
        # chunksize 0 and -1
        for chunksize in (0, -1):
            with pytest.raises(ValueError, match="chunksize"):
                ex.map(abs, [1], chunksize=chunksize)
            with pytest.raises(ValueError, match="Chunksize"):
                pool.imap(abs, [1], chunksize=chunksize)
            with pytest.raises(ValueError, match="Chunksize"):
                pool.imap_unordered(abs, [1], chunksize=chunksize)
        assert fronts.health("submit") is None and fronts.health("pool.map") is None


@pytest.mark.parametrize("chunksize", [0, -1])
def test_pool_map_with_chunksize_below_one_is_the_stdlibs_quirk(chunksize):
    # multiprocessing.Pool.map(..., chunksize=0) runs nothing and returns [None, ...]
    # (3.10 to 3.13; imap raises ValueError).  poolx.Pool is a drop-in: the same,
    # on purpose (docs/multiprocessing.md).
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as stdlib, poolx.Pool(1) as pool:
        for p in (stdlib, pool):
            assert p.map(abs, [1, -2], chunksize=chunksize) == [None, None]
            assert p.map_async(abs, [1, -2], chunksize=chunksize).get(timeout=T) == [None, None]
            with pytest.raises(ValueError, match=r"[Cc]hunksize"):
                list(p.imap(abs, [1, -2], chunksize=chunksize))


# -- §3 item 23: done-callbacks --------------------------------------------------------------------


def test_done_callbacks_that_raise_are_logged_and_ones_that_submit_work(caplog):
    with poolx.Executor(2) as ex:
        with caplog.at_level(logging.ERROR):
            fut = ex.submit(pow, 2, 3)
            fut.add_done_callback(lambda f: 1 / 0)
            assert fut.result(timeout=T) == 8
            deadline = time.monotonic() + 5
            while "ZeroDivisionError" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
        assert "ZeroDivisionError" in caplog.text  # logged (by concurrent.futures), not lost
        chained: list[cf.Future] = []
        done = threading.Event()
        fut = ex.submit(pow, 2, 3)
        fut.add_done_callback(lambda f: (chained.append(ex.submit(pow, f.result(), 2)), done.set()))
        assert fut.result(timeout=T) == 8
        assert done.wait(T)
        assert chained[0].result(timeout=T) == 64
        assert ex.submit(pow, 2, 3).result(timeout=T) == 8


def test_pool_callbacks_that_call_sys_exit_are_reported_and_the_pool_goes_on(capfd):
    with poolx.Pool(2) as pool:
        r = pool.apply_async(pow, (2, 3), callback=lambda v: sys.exit(5))
        assert r.get(timeout=T) == 8
        r = pool.apply_async(int, ("x",), error_callback=lambda e: sys.exit(6))
        with pytest.raises(ValueError):
            r.get(timeout=T)
        assert pool.apply_async(pow, (2, 3), callback=lambda v: None).get(timeout=T) == 8
        assert pool.map_async(abs, [-1, -2]).get(timeout=T) == [1, 2]
    assert "SystemExit: 5" in capfd.readouterr().err


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_a_done_callback_that_exits_is_logged_and_does_not_break_the_executor(exc, caplog):
    def callback(_future):
        raise exc("from a done-callback")

    # (concurrent.futures only catches Exception around callbacks: one that exits
    # used to kill poolx's scheduler thread, and with it the executor)
    with poolx.Executor(1) as ex, caplog.at_level(logging.ERROR):
        fut = ex.submit(pow, 2, 3)
        fut.add_done_callback(callback)
        assert fut.result(timeout=T) == 8
        time.sleep(0.2)
        assert ex.submit(pow, 2, 3).result(timeout=T) == 8
        assert list(ex.map(pow, [2, 3], [2, 2], timeout=T)) == [4, 9]
    assert "from a done-callback" in caplog.text
