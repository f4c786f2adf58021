"""``ray.util.collective``: poolx's collectives (``poolx.collective``) under Ray's path."""

from ..collective import *  # noqa: F403
from ..collective import __all__ as __all__
