"""``ray.util.iter``: poolx's parallel iterators (``poolx.iter``) under Ray's path."""

from ..iter import *  # noqa: F403
from ..iter import __all__ as __all__
