"""Checks of the front ends' constructor arguments, with the stdlib's exception types.

Also the parsing of poolx's own options (``max_memory_per_child="2GiB"``,
``retry_exceptions=True``) and the refusal of an option the chosen backend
cannot honour.  What this module does not do: apply them (the Executor).

A bad argument must fail in the constructor, never later in the scheduler
thread (issue 19: ``Executor(2.5)`` was accepted, and the scheduler died on
``range(2.5)``).  The worker count is taken exactly as the stdlib takes it
(CPython 3.10 to 3.13):

- ``ProcessPoolExecutor(max_workers)`` compares ``max_workers <= 0`` first
  (ValueError; a TypeError when it cannot be compared, as for "2"), then
  needs an integer for its call queue (TypeError for 2.5 or 0.5).  True
  counts as 1, a numpy integer works: anything ``operator.index`` accepts.
- ``multiprocessing.Pool(processes)`` compares ``processes < 1`` first
  (ValueError, so 0.5 is a ValueError there), then counts with ``range``.

poolx's own arguments follow the same rule: a wrong type is a TypeError, a
wrong value a ValueError; bools are refused where a count or a duration is
meant (``task_timeout=True`` is a mistake, not one second).
"""

from __future__ import annotations

import math
import multiprocessing
import numbers
import operator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends import Backend


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def worker_count(value: Any, name: str = "max_workers", *, pool: bool = False) -> int:
    """``value`` as a number of workers (not None), checked in the stdlib's order.

    ``pool``: multiprocessing.Pool's rule and message (``< 1``) instead of
    ProcessPoolExecutor's (``<= 0``).
    """
    try:
        too_few = value < 1 if pool else value <= 0
    except TypeError:
        too_few = None
    if too_few is None:
        raise TypeError(f"{name} must be an integer (the number of workers) or None, got {_shown(value)}")
    if too_few:
        first = "Number of processes must be at least 1" if pool else f"{name} must be greater than 0"
        raise ValueError(f"{first}, got {value!r} ({name}): pass None for one worker per CPU")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer (the number of workers), got {_shown(value)}: "
                        f"round it with int(), or pass None for one worker per CPU") from None


def tasks_per_child(value: Any, name: str = "max_tasks_per_child") -> int | None:
    """ProcessPoolExecutor's check of ``max_tasks_per_child``: an int (TypeError), >= 1 (ValueError)."""
    if value is None:
        return None
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an integer (tasks a worker runs before it is replaced) "
                        f"or None, got {_shown(value)}")
    if value <= 0:
        raise ValueError(f"{name} must be >= 1, got {value!r}: pass None to keep each worker for the "
                         "executor's life")
    return value


def retries(value: Any, name: str = "max_retries") -> int:
    """A number of reruns: an integer (TypeError), >= 0 (ValueError)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer (the times a task may run again), "
                        f"got {_shown(value)}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0 (the times a task may run again; 0: never), got {count}")
    return count


def seconds(value: Any, name: str) -> float | None:
    """A time limit: None, or a real number (TypeError) that is positive and finite (ValueError)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds or None, got {_shown(value)}")
    limit = float(value)
    if not 0 < limit < math.inf:  # (nan too)
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}: "
                         "pass None for no limit")
    return limit


def context(value: Any, name: str = "mp_context") -> None:
    """A multiprocessing context, a start method's name, or None.

    The stdlib fails on a wrong object with an AttributeError from deep
    inside (``'int' object has no attribute 'get_start_method'``), poolx
    used to fail only when the first worker started: a TypeError here.
    """
    if value is None:
        return
    methods = multiprocessing.get_all_start_methods()
    if isinstance(value, str):
        if value not in methods:
            raise ValueError(f"{name}={value!r} is not a start method on this platform: use one of "
                             f"{', '.join(map(repr, methods))}")
        return
    if not (callable(getattr(value, "get_start_method", None)) and hasattr(value, "Process")):
        raise TypeError(f"{name} must be a multiprocessing context (multiprocessing.get_context("
                        f"{methods[-1]!r})), a start method's name or None, got {_shown(value)}")


def initializer(value: Any, initargs: Any) -> tuple[Any, ...]:
    """The stdlib's check of ``initializer`` (TypeError), and ``initargs`` as a tuple."""
    if value is not None and not callable(value):
        raise TypeError(f"initializer must be a callable, got {_shown(value)}: pass the function "
                        "itself, not its result")
    try:
        return tuple(initargs)
    except TypeError:
        raise TypeError(f"initargs must be a tuple of the initializer's arguments, got "
                        f"{_shown(initargs)}: write (x,) for one argument") from None


def retry_exceptions(value: Any) -> tuple[type[BaseException], ...]:
    """``retry_exceptions`` as a tuple of classes: False/None none, True any ``Exception``."""
    if value is False or value is None:
        return ()
    if value is True:
        return (Exception,)
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(t, type) and issubclass(t, BaseException)
                                               for t in value):
        return tuple(value)
    raise TypeError(f"retry_exceptions must be True, False or a list of exception classes, got {value!r}")


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def byte_size(value: int | str | None, name: str) -> int | None:
    """Bytes from an int or a string such as "500MB" or "2GiB"."""
    if value is None:
        return None
    if not isinstance(value, str):
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)  # (a numpy integer too)
        except TypeError:
            raise TypeError(f"{name} must be a number of bytes (an int) or a size such as '500MB' or "
                            f"'2GiB', got {type(value).__name__} {value!r}") from None
        if value > 0:
            return value
    else:
        text = value.strip().upper().replace(" ", "")
        number = text.rstrip("KMGTIB")
        unit = text[len(number):]
        if unit in _UNITS:
            try:
                amount = float(number)
            except ValueError:
                amount = -1.0
            if amount > 0:
                return int(amount * _UNITS[unit])
    raise ValueError(f"{name} must be a positive number of bytes or a size such as '500MB' or '2GiB', "
                     f"got {value!r}")


def context_for_tasks_per_child(mp_context: Any, any_start_method: bool) -> Any:
    """The context to run with ``max_tasks_per_child``: ProcessPoolExecutor's rule on fork.

    It refuses fork (a ValueError), and takes spawn instead when no context
    was given; ``any_start_method`` (poolx.Pool, whose workers retire
    themselves, which fork allows, as the stdlib's Pool) keeps the context.
    """
    method = _start_method(mp_context)
    if any_start_method:
        pass
    elif method == "fork" and mp_context is None:
        mp_context = "spawn"  # as ProcessPoolExecutor does when no context was given
    elif method == "fork":
        raise ValueError(
            "max_tasks_per_child is incompatible with the 'fork' multiprocessing "
            "start method; supply a different mp_context."
        )
    return mp_context


def _start_method(mp_context: Any) -> str:
    if mp_context is None:
        # (imported here: the processes engine loads only when an executor needs it)
        from .backends.processes._backend import default_start_method

        return default_start_method()
    if isinstance(mp_context, str):
        return mp_context
    return str(mp_context.get_start_method())


def backend_supports(backend_cls: type[Backend], backend: str, *, address: str | None,
                     max_tasks_per_child: int | None, task_timeout: float | None,
                     init_timeout: float | None, max_retries: int, max_memory: int | None) -> None:
    """Refuse (a ValueError naming the backend) an option that ``backend_cls`` cannot honour."""
    if address is not None and backend not in ("dask", "ray"):
        raise ValueError(f"address= is the cluster to run on, for backend='dask' or 'ray'; the "
                         f"{backend!r} backend runs on this machine")
    if max_tasks_per_child is not None and not backend_cls.supports_max_tasks_per_child:
        raise ValueError(
            f"the {backend!r} backend does not support max_tasks_per_child; "
            "use backend='processes'"
        )
    if task_timeout is not None and not backend_cls.supports_timeouts:
        raise ValueError(f"the {backend!r} backend cannot stop a running task: task_timeout needs "
                         "backend='processes'")
    if init_timeout is not None and not backend_cls.supports_timeouts:
        raise ValueError(f"the {backend!r} backend cannot stop an initializer: init_timeout needs "
                         "backend='processes'")
    if max_retries and not backend_cls.supports_retries:
        raise ValueError(f"the {backend!r} backend does not take max_retries: its engine reruns a task "
                         "whose worker died by its own rule (Dask: the scheduler's allowed-failures "
                         "setting)")
    if max_memory is not None and not backend_cls.supports_worker_restart:
        raise ValueError(f"the {backend!r} backend cannot replace its workers: max_memory_per_child "
                         "needs backend='processes'")
