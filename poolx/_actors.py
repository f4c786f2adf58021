"""Transitional: the names of the old ``poolx._actors``, now in ``poolx.actors``.

Delete once no module imports it (issue 20's layout step: its importers move to
``poolx.actors.handle``, ``.options`` and ``.directory``).
"""

from typing import Any

from ._errors import ActorDiedError, PoolxError
from .actors import directory as _directory
from .actors.directory import ALIVE, DEAD, Actor, ActorCall, ActorDirectory
from .actors.handle import ActorHandle, ActorMethod, get_actor, handle_of
from .actors.options import ActorOptions

__all__ = ["ALIVE", "DEAD", "Actor", "ActorCall", "ActorDiedError", "ActorDirectory", "ActorHandle",
           "ActorMethod", "ActorOptions", "PoolxError", "get_actor", "handle_of"]


def __getattr__(name: str) -> Any:
    if name == "_local":  # replaced in a forked child: read it where it lives
        return _directory._local
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
