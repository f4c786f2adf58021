"""Ray's ``ray.util`` names, mapped onto poolx's own (``import poolx as ray; ray.util.ActorPool``).

=====================================  ==========================================
``ray.util.ActorPool``                 ``poolx.ActorPool``
``ray.util.multiprocessing.Pool``      ``poolx.util.multiprocessing.Pool``: ``poolx.Pool``
                                       that waits for its workers' initializers
``ray.util.collective``                ``poolx.collective`` (numpy arrays, one machine)
``ray.util.iter``                      ``poolx.iter``
``ray.util.joblib.register_ray``       registers poolx's joblib backend as ``"ray"``
=====================================  ==========================================

Everything else in ``ray.util`` (placement groups, queues, the Ray client,
debugging tools ...) does not exist in poolx: reading it raises an
``AttributeError`` that says so and what to use instead.  The submodules load
on first use, so ``import poolx.util`` costs little.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..actors.pool import ActorPool
    from . import collective, iter, joblib, multiprocessing

__all__ = ["ActorPool", "collective", "iter", "joblib", "multiprocessing"]

_SUBMODULES = ("collective", "iter", "joblib", "multiprocessing")

# Ray's names that poolx does not have -> what to use instead.
_ABSENT = {
    "placement_group": "poolx runs on one machine: leave placement groups out (resources declared "
                       "in poolx.init(num_gpus=..., resources=...) limit what runs at once)",
    "remove_placement_group": "poolx has no placement groups",
    "get_placement_group": "poolx has no placement groups",
    "get_current_placement_group": "poolx has no placement groups",
    "placement_group_table": "poolx has no placement groups",
    "scheduling_strategies": "poolx schedules on one machine: leave scheduling_strategy out",
    "queue": "use an actor that holds a collections.deque, or multiprocessing.Manager().Queue()",
    "as_completed": "use concurrent.futures.as_completed(refs): poolx refs are futures",
    "map_unordered": "use poolx.Pool().imap_unordered(fn, items)",
    "get_node_ip_address": "poolx runs on this machine: socket.gethostbyname(socket.gethostname())",
    "list_named_actors": "use poolx.get_actor(name) for the names you gave",
    "inspect_serializability": "call cloudpickle.dumps(obj) to see what cannot be pickled",
    "pdb": "run with poolx.init(local_mode=True) (the serial backend) and use pdb directly",
    "rpdb": "run with poolx.init(local_mode=True) (the serial backend) and use pdb directly",
    "client": "poolx has no Ray client: poolx.init(address=..., backend='ray') runs on a Ray cluster",
    "connect": "poolx has no Ray client: poolx.init(address=..., backend='ray') runs on a Ray cluster",
    "dask": "use poolx.init(backend='dask') or dask's own scheduler",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name == "ActorPool":
        value = importlib.import_module("poolx.actors.pool").ActorPool
    elif name.startswith("__"):
        raise AttributeError(name)
    else:
        hint = _ABSENT.get(name, "poolx.util has: " + ", ".join(__all__))
        raise AttributeError(f"poolx.util has no {name!r}: ray.util.{name} does not exist in poolx ({hint})")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
