"""Bad inputs for tests/engine/test_bad_inputs.py (research/reliability.md §3).

Everything a worker must rebuild lives at module level here, so that every
start method finds it by name.  The objects that misbehave only do so in the
process the test means: a "crash at unpickle" object pickles fine in the
driver, a "crash at GC" object is armed only once it was unpickled (so only
the worker's copy crashes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import os
import sys
import threading
import time

# -- tasks ------------------------------------------------------------------------------


def type_name(x):
    """What arrived: a picklable summary of any argument."""
    return type(x).__name__


def nbytes(x):
    return len(x)


def first_is_self(x):
    return x[0] is x


def dict_items(d):
    """A dict with odd keys, as (repr(key), value) pairs (nan != nan, so no dict ==)."""
    return sorted((repr(k), v) for k, v in d.items())


def echo(x):
    return x


# -- callables --------------------------------------------------------------------------


class WithStatics:
    @staticmethod
    def static(x):
        return x + 1

    @classmethod
    def klass(cls, x):
        return f"{cls.__name__}:{x}"


STATIC_OBJECT = WithStatics.__dict__["static"]  # the staticmethod object itself
CLASSMETHOD_OBJECT = WithStatics.__dict__["klass"]  # the classmethod object itself


async def async_double(x):
    return 2 * x


class HoldsALock:
    def __init__(self):
        self.lock = threading.Lock()

    def method(self, x):
        return x


# -- arguments that fail on the driver's side (pickling) --------------------------------


class RaiseAtPickle:
    """``__reduce__`` raises ``exc_type`` (in whichever process pickles it)."""

    def __init__(self, exc_type):
        self.exc_type = exc_type

    def __reduce__(self):
        if self.exc_type is SystemExit:
            sys.exit("refused to be pickled")
        raise self.exc_type("refused to be pickled")


class OsExitAtPickle:
    """``__reduce__`` ends the process that pickles it (use as a result only)."""

    def __reduce__(self):
        os._exit(0)


def return_os_exit_at_pickle(_=None):
    return OsExitAtPickle()


# -- arguments that fail in the worker (unpickling) -------------------------------------


def _raise(exc_type, message):
    raise exc_type(message)


class ErrorAtUnpickle:
    """Pickles fine; its reconstructor raises ``exc_type`` wherever it is unpickled."""

    def __init__(self, exc_type):
        self.exc_type = exc_type

    def __reduce__(self):
        return (_raise, (self.exc_type, "raised by the reconstructor of ErrorAtUnpickle"))


class ExitAtUnpickle:
    """Its reconstructor is ``sys.exit``."""

    def __reduce__(self):
        return (sys.exit, ("sys.exit from ExitAtUnpickle",))


class OsExitAtUnpickle:
    """Its reconstructor is ``os._exit(0)``: the unpickling process ends, exit code 0."""

    def __reduce__(self):
        return (os._exit, (0,))


class CrashAtUnpickle:
    """Its reconstructor segfaults the unpickling process."""

    def __reduce__(self):
        return (faulthandler._sigsegv, ())


class BrokenSetState:
    """Rebuilt, then ``__setstate__`` raises (Dask's BrokenSetState)."""

    def __init__(self):
        self.x = 1

    def __setstate__(self, state):
        raise ValueError("BrokenSetState.__setstate__ refuses")


class SlowToDeserialize:
    def __reduce__(self):
        return (_slow_rebuild, (0.3,))


def _slow_rebuild(seconds):
    time.sleep(seconds)
    return SlowToDeserialize()


class _GCBomb:
    """Harmless in the driver; armed when unpickled: its ``__del__`` then crashes the process."""

    armed = False

    def __reduce__(self):
        return (_armed, (type(self),))

    def __del__(self):
        if self.armed:
            self.explode()


def _armed(cls):
    obj = cls()
    obj.armed = True
    return obj


class CrashAtGCInWorker(_GCBomb):
    def explode(self):
        faulthandler._sigsegv()


class ExitAtGCInWorker(_GCBomb):
    def explode(self):
        os._exit(0)


class HashedKey:
    """A dict key with its own ``__hash__``/``__eq__``."""

    def __init__(self, v):
        self.v = v

    def __hash__(self):
        return hash(("HashedKey", self.v))

    def __eq__(self, other):
        return isinstance(other, HashedKey) and other.v == self.v

    def __repr__(self):
        return f"HashedKey({self.v!r})"


# -- results (worker -> driver) ---------------------------------------------------------


def _gen():
    yield 1


def make_result(kind):
    """Return an awkward result: built in the worker, by name."""
    if kind == "lambda":
        return lambda: 42
    if kind == "lock":
        return threading.Lock()
    if kind == "generator":
        return _gen()
    if kind == "open file":
        return open(os.devnull)
    if kind == "reduce raises ValueError":
        return RaiseAtPickle(ValueError)
    if kind == "reduce raises KeyboardInterrupt":
        return RaiseAtPickle(KeyboardInterrupt)
    if kind == "unpickle raises ValueError":
        return ErrorAtUnpickle(ValueError)
    if kind == "unpickle raises SystemExit":
        return ErrorAtUnpickle(SystemExit)
    if kind == "unpickle raises KeyboardInterrupt":
        return ErrorAtUnpickle(KeyboardInterrupt)
    if kind == "setstate raises":
        return BrokenSetState()
    raise AssertionError(kind)


# -- exceptions that do not round-trip --------------------------------------------------


class TwoArgError(Exception):
    """gh-103061: ``__init__`` takes two arguments but passes one to ``Exception``."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


class LambdaAttrError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.fn = lambda: message


class LockAttrError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class ReduceRaisesError(Exception):
    def __reduce__(self):
        raise TypeError("ReduceRaisesError.__reduce__ refuses")


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    code: int


class StrRaisesError(Exception):
    def __str__(self):
        raise RuntimeError("StrRaisesError.__str__ refuses")

    def __repr__(self):
        raise RuntimeError("StrRaisesError.__repr__ refuses")


class CustomBaseException(BaseException):
    pass


def raise_bad(kind):
    if kind == "init signature":
        raise TwoArgError("first", "second")
    if kind == "lambda attribute":
        raise LambdaAttrError("has a lambda")
    if kind == "reduce raises":
        raise ReduceRaisesError("reduce raises")
    if kind == "frozen dataclass":
        raise FrozenError(7)
    if kind == "unpicklable cause":
        raise ValueError("has a bad cause") from LockAttrError("the cause")
    if kind == "group":
        raise ExceptionGroup("a group", [LockAttrError("in a group"), ValueError("fine")])  # noqa: F821
    if kind == "str raises":
        raise StrRaisesError("str raises")
    if kind == "10 MB message":
        raise ValueError("x" * 10_000_000)
    raise AssertionError(kind)


BASE_EXCEPTIONS = {
    "SystemExit(0)": lambda: SystemExit(0),
    "SystemExit(1)": lambda: SystemExit(1),
    "SystemExit('msg')": lambda: SystemExit("msg"),
    "KeyboardInterrupt": lambda: KeyboardInterrupt("ki"),
    "GeneratorExit": lambda: GeneratorExit("ge"),
    "asyncio.CancelledError": lambda: asyncio.CancelledError("cancelled"),
    "custom BaseException": lambda: CustomBaseException("custom"),
}


def raise_base(kind):
    """Raise one of BASE_EXCEPTIONS."""
    raise BASE_EXCEPTIONS[kind]()


def recurse(n=0):
    return recurse(n + 1) + 1


# -- process-level misbehaviour ---------------------------------------------------------


def close_std_fds():
    for fd in (0, 1, 2):
        os.close(fd)
    return "closed"


def chdir_root():
    os.chdir("/")
    return os.getcwd()


def getcwd():
    return os.getcwd()


_stop_threads = threading.Event()


def leave_thread_running():
    threading.Thread(target=_stop_threads.wait, args=(3600,), name="left-behind", daemon=False).start()
    return "left"


def fork_child(how):
    """Fork; the child ends ``how`` ("os._exit" or "sys.exit"); the parent reaps it."""
    pid = os.fork()
    if pid == 0:
        if how == "os._exit":
            os._exit(0)
        sys.exit(0)  # the child unwinds through the worker's own code
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# -- actors -----------------------------------------------------------------------------


class Caller:
    """An actor whose method calls whatever it is given."""

    def call(self, fn, *args):
        return fn(*args)

    def ping(self):
        return "pong"


class Holder:
    """An actor built from ``fn, *args``: its constructor calls them, ``get`` returns what came out."""

    def __init__(self, fn, *args):
        self.value = fn(*args)

    def get(self):
        return self.value


# -- iterables --------------------------------------------------------------------------


class InputBroke(Exception):
    pass


def exception_throwing_generator(total, when):
    for i in range(total):
        if i == when:
            raise InputBroke(f"input broke at {i}")
        yield i
