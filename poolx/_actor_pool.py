"""Transitional: the names of the old ``poolx._actor_pool``, now ``poolx.actors.pool``.

Delete once no module imports it (issue 20's layout step).
"""

from .actors.pool import ActorPool, map_actors

__all__ = ["ActorPool", "map_actors"]
