"""Transitional: the names of the old ``poolx.backends._local_actors``, now ``poolx.actors.local``.

Delete once no module imports it (issue 20's layout step).
"""

from ..actors.local import LocalActor, LocalActorBackend, LocalActors

__all__ = ["LocalActor", "LocalActorBackend", "LocalActors"]
