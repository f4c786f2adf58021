"""The driver side of the processes engine: the scheduler thread and what it watches.

``Scheduler`` (``_loop``) is the one thread that owns every channel and
every child process; its parts by job, and the data flow through them, are
described in ``_loop``.  This package imports ``protocol``, ``_cell``,
``_channel`` and ``_lifetime``, never ``child/``: the children's entry points
come in as ``ChildEntries`` (from ``_backend``).
"""

from ._loop import Scheduler
from ._spawn import ChildEntries

__all__ = ["ChildEntries", "Scheduler"]
