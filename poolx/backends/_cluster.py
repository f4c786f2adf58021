"""What the cluster backends (dask, ray) share: how a call travels to a remote worker."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from .._errors import SerializationError
from .._futures import Task
from .._serialization import describe, unpicklable_argument


def pickle_call(task: Task) -> tuple[bytes, list[bytes]]:
    """``(fn, args, kwargs)`` as a pickle and its out-of-band buffers (bytes).

    Plain cloudpickle, not poolx's pickler: a cluster's workers have not
    imported the main script, so functions of ``__main__`` travel by value,
    and a future inside an argument cannot be fetched from there (a top-level
    one is resolved in the driver before the call is sent).
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = cloudpickle.dumps((task.fn, task.args, task.kwargs), protocol=5,
                                 buffer_callback=buffers.append)
    except (Exception, SystemExit) as exc:
        culprit = unpicklable_argument(task.args, task.kwargs) or f"the callable {describe(task.fn)}"
        raise SerializationError(
            f"cannot pickle {culprit} of a task calling {describe(task.fn)}: {type(exc).__name__}: "
            f"{exc}. Tasks run on the cluster's workers, so callables and arguments must be picklable "
            "(futures only as top-level arguments)") from exc
    return data, [bytes(b.raw()) for b in buffers]


def unpickle_call(data: bytes, buffers: list[bytes]) -> Any:
    return pickle.loads(data, buffers=buffers)
