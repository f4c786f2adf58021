"""poolx's exceptions.

Each one subclasses the stdlib type that existing ``except`` clauses already
catch, so code written for ``concurrent.futures`` keeps working::

    Exception
    ├── PoolxError                                   everything raised by poolx itself
    │   ├── WorkerDiedError      (+ BrokenProcessPool)  a worker process died running the task
    │   ├── InitializerError     (+ BrokenProcessPool)  the worker initializer raised; executor broken
    │   ├── TaskTimeoutError     (+ TimeoutError, multiprocessing.TimeoutError)  ran over task_timeout
    │   ├── TaskCancelledError   (+ concurrent.futures.CancelledError)  stopped while it ran
    │   ├── GetTimeoutError      (+ TimeoutError)        poolx.get(timeout=) ran out (Ray's name)
    │   ├── SerializationError   (+ pickle.PicklingError)  a callable, argument or result cannot be pickled
    │   ├── DeserializationError (+ UnpicklingError, BrokenProcessPool)  a task or result cannot be unpickled
    │   ├── ActorError                               an actor could not finish a call (Ray's RayActorError)
    │   │   └── ActorDiedError                       the actor a call was made on is dead (crash, kill,
    │   │                                            constructor error, stopped)
    │   ├── ObjectLostError      (+ ValueError)      a ref's value is no longer held by the driver
    │   ├── CollectiveError                          a collective operation among actors failed
    │   │   └── CollectiveTimeoutError (+ TimeoutError)  a rank waited longer than the group's timeout
    │   └── RemoteError                              a task's exception that could not travel as itself
    └── RemoteTraceback      (= concurrent.futures.process._RemoteTraceback)  the ``__cause__``
                                                     of a re-raised task exception: the worker's
                                                     formatted traceback

A task's own exception is re-raised in the caller as its original type, with
the worker's traceback attached as ``__cause__`` (a ``RemoteTraceback``), as
``concurrent.futures`` and ``multiprocessing`` do.

Ray's names for the same failures are in ``poolx.exceptions`` (``RayError`` is
``PoolxError``, ``WorkerCrashedError`` is ``WorkerDiedError``, ``RayActorError``
is ``ActorError``, ...); there too is ``RayTaskError``, which ``poolx.get``
wraps a task's exception in, as Ray does.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import pickle
import signal
import types
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from typing import TYPE_CHECKING, Any


class PoolxError(Exception):
    """Base class of the errors poolx raises itself."""


# The ``__cause__`` of a re-raised task exception, carrying the worker's
# formatted traceback (``.tb``): the stdlib's own class, which
# ProcessPoolExecutor attaches, so code (and CPython's test_traceback, which
# checks the exact type) written for the stdlib sees the same thing.
if TYPE_CHECKING:  # (typeshed types the stdlib's __init__ with a traceback object, not its text)
    class RemoteTraceback(Exception):
        tb: str

        def __init__(self, tb: str) -> None: ...
else:
    RemoteTraceback = _RemoteTraceback


class WorkerDiedError(PoolxError, BrokenProcessPool):
    """The worker process running this task died (crash, signal, ``os._exit``).

    Only the task the worker was running fails; the worker is replaced and the
    executor keeps serving other tasks.  ``exitcode`` is the process's exit code
    (negative: killed by that signal) and ``pid`` its process id.
    """

    def __init__(self, message: str, *, exitcode: int | None = None, pid: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.pid = pid

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_worker_died, (str(self), self.exitcode, self.pid))


def _rebuild_worker_died(message: str, exitcode: int | None, pid: int | None) -> WorkerDiedError:
    return WorkerDiedError(message, exitcode=exitcode, pid=pid)


# concurrent.futures.TimeoutError is the builtin TimeoutError from Python 3.11 on.
_TIMEOUTS = (TimeoutError,) if cf.TimeoutError is TimeoutError else (TimeoutError, cf.TimeoutError)


class TaskTimeoutError(PoolxError, *_TIMEOUTS, multiprocessing.TimeoutError):  # type: ignore[misc]
    """The task ran longer than its executor's or pool's ``task_timeout``.

    Its worker was killed and replaced; the other tasks go on.  It is a
    ``TimeoutError`` (and ``concurrent.futures.TimeoutError`` on 3.10, where
    that is another class) and a ``multiprocessing.TimeoutError``.
    """

    def __init__(self, message: str, *, timeout: float | None = None, pid: int | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.pid = pid

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_task_timeout, (str(self), self.timeout, self.pid))


def _rebuild_task_timeout(message: str, timeout: float | None, pid: int | None) -> TaskTimeoutError:
    return TaskTimeoutError(message, timeout=timeout, pid=pid)


class TaskCancelledError(PoolxError, cf.CancelledError):
    """The task was stopped while it ran (its worker was killed and replaced).

    A task that had not started is cancelled the ``concurrent.futures`` way
    instead (``future.cancelled()`` is true).  joblib's abort on the first error
    stops the rest of a ``Parallel`` call this way.
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_task_cancelled, (str(self), self.pid))


def _rebuild_task_cancelled(message: str, pid: int | None) -> TaskCancelledError:
    return TaskCancelledError(message, pid=pid)


class GetTimeoutError(PoolxError, *_TIMEOUTS):  # type: ignore[misc]
    """``poolx.get(refs, timeout=...)`` ran out of time before every ref was ready.

    The tasks go on; ``get`` may be called again.  (Ray's ``GetTimeoutError``,
    also a ``TimeoutError``.)
    """


class InitializerError(PoolxError, BrokenProcessPool):
    """Workers cannot start: the initializer raised, or no process could be started.

    The executor is broken: pending and later tasks fail with this error.
    """


class SerializationError(PoolxError, pickle.PicklingError):
    """A callable, argument or result could not be pickled."""


class DeserializationError(PoolxError, pickle.UnpicklingError, BrokenProcessPool):
    """A task could not be unpickled in the worker, or a result in the driver.

    Also a ``BrokenProcessPool``, the error ``ProcessPoolExecutor`` raises in
    these cases, so existing handlers catch it; unlike there, only this task
    fails and the executor keeps working.
    """


class ActorError(PoolxError):
    """An actor could not finish a call (Ray's ``RayActorError``); see ``ActorDiedError``."""


class ActorDiedError(ActorError):
    """The actor this call was made on died or was stopped before the call finished.

    ``actor`` names the actor; ``exitcode`` and ``pid`` describe its process when
    it had one and it died (``exitcode`` negative: killed by that signal).  When
    the constructor raised, the exception is this error's ``__cause__``.
    """

    def __init__(self, message: str, *, actor: str = "", exitcode: int | None = None,
                 pid: int | None = None) -> None:
        super().__init__(message)
        self.actor = actor
        self.exitcode = exitcode
        self.pid = pid

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_actor_died, (str(self), self.actor, self.exitcode, self.pid))


def _rebuild_actor_died(message: str, actor: str, exitcode: int | None, pid: int | None) -> ActorDiedError:
    return ActorDiedError(message, actor=actor, exitcode=exitcode, pid=pid)


class ObjectLostError(PoolxError, ValueError):
    """A ref's value is no longer held by the driver (Ray's ``ObjectLostError``).

    A ref sent back to the driver inside a result after every other holder of
    it let it go.  Also a ``ValueError``, what poolx raised for it before.
    """


class CollectiveError(PoolxError):
    """A collective operation (``poolx.collective``) failed in this rank.

    Another rank raised, died, or called a different operation (or the same
    one with other shapes); the message says which.  After a death or a
    timeout the group is broken: destroy it and create a new one.
    """


class CollectiveTimeoutError(CollectiveError, *_TIMEOUTS):  # type: ignore[misc]
    """A rank of a collective group waited longer than the group's ``timeout`` for the others."""


class RemoteError(PoolxError):
    """A task raised an exception that could not be sent back as itself.

    ``type_name`` is the exception's ``module.qualname``, ``message`` its
    ``str()`` and ``tb`` the worker's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.tb = tb

    def __reduce__(self) -> tuple[object, ...]:
        return (RemoteError, (self.type_name, self.message, self.tb))


def describe_exit(exitcode: int | None, killed_for: str | None = None) -> str:
    """Explain a worker's exit code, naming the signal and the likely cause.

    ``killed_for``: why poolx itself killed the process, if it did ("it sent
    ..."): then that is the cause, not a guess from the signal.
    """
    if killed_for is not None:
        if exitcode == -signal.SIGKILL:
            return f"poolx killed it with SIGKILL ({exitcode}): {killed_for}"
        return f"{describe_exit(exitcode)}, as poolx was killing it: {killed_for}"
    if exitcode is None:
        # (See backends/processes/_lifetime.exit_code: multiprocessing says 255 then.)
        return ("its exit code is unknown: under forkserver, the forkserver that started it died "
                "before it could report it (a task that kills its parent process kills the "
                "forkserver); otherwise the process could not be reaped")
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = _SIGNAL_CAUSES.get(name, "it was killed by a signal")
        return f"it was killed by {name} ({exitcode}); {cause}"
    if exitcode == 0:
        return "it exited with code 0 while running the task (sys.exit(0) in a thread, or os._exit(0))"
    return (
        f"it exited with code {exitcode} (os._exit() or a fatal error in an extension module); "
        "run the task in the serial backend to see it happen in-process"
    )


_SIGNAL_CAUSES = {
    "SIGSEGV": "likely a crash in C code (an extension module, ctypes) or a stack overflow",
    "SIGBUS": "likely a bad memory access in C code or a truncated memory-mapped file",
    "SIGABRT": "likely an assertion or abort() in C code",
    "SIGKILL": "likely the kernel's out-of-memory killer (check `dmesg`), or an external kill -9",
    "SIGTERM": "something sent it SIGTERM",
    "SIGFPE": "likely an arithmetic fault in C code",
}


class RayTaskError(PoolxError):
    """A task's exception as ``poolx.get`` raises it: Ray's ``RayTaskError``.

    As in Ray, what ``get`` raises is an instance of both this class and the
    task's own exception class (its type is named ``RayTaskError(ValueError)``),
    so ``except ValueError`` and ``except RayTaskError`` both catch it.
    ``cause`` is the task's exception itself; ``traceback_str`` the worker's
    formatted traceback.  Unlike Ray's, ``str()`` and ``args`` are the task
    exception's own, other attributes read through to it, and ``__cause__``
    stays the worker's traceback (a ``RemoteTraceback``).  The
    ``concurrent.futures`` front end (``Future.result()``) raises the
    exception as itself.
    """

    def __init__(self, function_name: str | None, traceback_str: str, cause: BaseException) -> None:
        super().__init__(function_name, traceback_str, cause)
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause

    def as_instanceof_cause(self) -> BaseException:
        """An exception of both this class and the cause's class (the cause itself if it cannot be)."""
        dual = _dual_class(type(self.cause))
        if dual is None:
            return self.cause
        try:
            error = dual(self.cause)
        except Exception:  # an exception class whose __new__ wants other arguments
            return self.cause
        error.traceback_str = self.traceback_str
        error.function_name = self.function_name
        error.__cause__ = self.cause.__cause__
        return error.with_traceback(self.cause.__traceback__)

    @staticmethod
    def wrap(exc: BaseException) -> BaseException:
        """What ``poolx.get`` raises for a task that raised ``exc``.

        A user's ``Exception`` becomes a ``RayTaskError`` of its class; poolx's
        own errors (a dead worker or actor, a cancelled task...) and
        ``BaseException`` s such as ``KeyboardInterrupt`` stay as they are,
        as in Ray.
        """
        if isinstance(exc, PoolxError) or not isinstance(exc, Exception):
            return exc
        tb = getattr(exc.__cause__, "tb", None)
        return RayTaskError(None, tb if isinstance(tb, str) else "", exc).as_instanceof_cause()


# The dual classes made so far, by the task exception's class (classes are few).
_DUALS: dict[type, type | None] = {}


def _dual_class(cause_type: type) -> type | None:
    """``RayTaskError(cause_type)``: a subclass of both, or None where Python refuses one."""
    if cause_type in _DUALS:
        return _DUALS[cause_type]
    name = f"RayTaskError({cause_type.__name__})"
    try:
        dual: type | None = type(name, (RayTaskError, cause_type), dict(_DUAL_METHODS, __qualname__=name))
    except TypeError:  # (a final class, or one whose memory layout conflicts)
        dual = None
    if dual is not None:
        dual.__module__ = "poolx.exceptions"
    _DUALS[cause_type] = dual
    return dual


def _dual_init(self: RayTaskError, cause: BaseException) -> None:
    # The cause's __init__ is not run again (it may want other arguments);
    # what it set is copied: its __dict__, and the fields built-in exceptions
    # keep in slots (OSError's errno, ImportError's name...), which
    # __getattr__ would not reach.
    self.__dict__.update(vars(cause))
    for klass in type(cause).__mro__:
        for name, field in vars(klass).items():
            if isinstance(field, types.MemberDescriptorType):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(self, name, getattr(cause, name))
    self.cause = cause
    self.args = cause.args


def _dual_getattr(self: RayTaskError, name: str) -> Any:
    if name == "cause":  # (not set yet: while being built)
        raise AttributeError(name)
    return getattr(self.cause, name)


def _dual_str(self: RayTaskError) -> str:
    return str(self.cause)


def _dual_reduce(self: RayTaskError) -> tuple[Any, ...]:
    # A dual class exists only in this process: pickle the task's exception
    # itself (a task that re-raises what get() raised sends back the original).
    return (_as_itself, (self.cause,))


def _as_itself(exc: BaseException) -> BaseException:
    return exc


_DUAL_METHODS = {"__init__": _dual_init, "__getattr__": _dual_getattr, "__str__": _dual_str,
                 "__reduce__": _dual_reduce}
