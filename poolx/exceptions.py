"""Ray's exception names (``ray.exceptions``), mapped onto poolx's own errors.

``import poolx as ray`` then ``except ray.exceptions.GetTimeoutError`` works.
Each name is poolx's class for the same failure (the same object: catching
either catches both), in Ray's hierarchy: ``RayError`` is the base of them
all, ``ActorDiedError`` is a ``RayActorError``, ``ObjectLostError`` stands
for a value no longer held.  ``RayTaskError`` is what ``poolx.get`` raises
for a task's own exception: an instance of both it and the exception's class,
as in Ray (see ``poolx.RayTaskError``).

Ray's exceptions for failures poolx cannot have (a raylet, a node or an
object store that dies, placement groups, runtime environments) are absent:
reading one raises an ``AttributeError`` that says so.
"""

from __future__ import annotations

from typing import Any

from ._errors import ActorDiedError, GetTimeoutError, ObjectLostError, RayTaskError, TaskCancelledError
from ._errors import ActorError as RayActorError
from ._errors import PoolxError as RayError
from ._errors import WorkerDiedError as WorkerCrashedError

__all__ = [
    "ActorDiedError",
    "GetTimeoutError",
    "ObjectLostError",
    "RayActorError",
    "RayError",
    "RayTaskError",
    "TaskCancelledError",
    "WorkerCrashedError",
]

# Ray's names that poolx does not have -> what to use instead.
_ABSENT = {
    "ActorUnavailableError": "poolx actors are local processes, never temporarily unreachable: "
                             "catch RayActorError",
    "ActorUnschedulableError": "poolx starts every actor on this machine",
    "TaskUnschedulableError": "a task asking for more resources than init() declared is refused "
                              "at .remote() with a ValueError",
    "OutOfMemoryError": "a worker over max_memory_per_child fails its task with WorkerCrashedError",
    "ObjectStoreFullError": "poolx has no object store: put() values live in shared memory",
    "OwnerDiedError": "the driver owns every ref; catch ObjectLostError",
    "ObjectFetchTimedOutError": "catch ObjectLostError",
    "ObjectFreedError": "catch ObjectLostError",
    "ObjectReconstructionFailedError": "catch ObjectLostError",
    "NodeDiedError": "poolx runs on one machine",
    "LocalRayletDiedError": "poolx has no raylet",
    "RaySystemError": "catch RayError",
    "RuntimeEnvSetupError": "poolx has no runtime environments",
    "CrossLanguageError": "poolx runs Python only",
}


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    hint = _ABSENT.get(name, "see poolx.exceptions.__all__ for the names poolx has")
    raise AttributeError(f"poolx.exceptions has no {name!r}: Ray's exception {name} does not exist in "
                         f"poolx ({hint})")
