"""The functions and the actor class that ``cluster.py``'s cases run on Dask and Ray workers.

They live in a module of their own (not in ``cluster.py``, which is
``__main__``) so that poolx, Dask and Ray all pickle them by reference, and
every side of a comparison ships the same few bytes for the function.  The
workers import this module from their ``PYTHONPATH`` (``cluster.py`` puts this
folder there before it starts the Dask cluster and Ray).  Nothing heavy is
imported at the top: numpy is imported inside the functions that need it.

The work is a pure-Python loop, not a sleep: it keeps a worker's core busy,
as real tasks do.  Its length (loop turns) is an argument; ``cluster.py``
fixes the counts (about 1 ms, 0.1 ms and 50 ms) and reports what they take on
the machine it runs on.
"""

import os
import sys


def spin(loops, x):
    """``loops`` turns of a pure-Python loop; returns ``x`` (so results can be checked)."""
    total = 0
    for k in range(loops):
        total += k ^ x
    return x if total >= 0 else -1


def map_item(x, loops):
    """The map case's item (~0.1 ms of CPU): returns ``2 * x``."""
    spin(loops, x)
    return 2 * x


def map_chunk(xs, loops):
    """The native side of the map case: ``map_item`` over one chunk of items, a list back."""
    return [map_item(x, loops) for x in xs]


def link(x, loops):
    """One link of the chain (~1 ms of CPU): returns ``x + 1``."""
    spin(loops, 1)
    return x + 1


def total(a):
    """The large-argument case's task: the array's sum, as a Python float."""
    return float(a.sum())


def large_array(nbytes):
    """A float64 ``np.arange`` of ``nbytes`` bytes (every page written); its sum is exact."""
    import numpy as np

    return np.arange(nbytes // 8, dtype=np.float64)


def warm(seconds):
    """Warm a worker up: numpy and this module imported, then a sleep so the engine spreads them.

    Returns where the worker imports poolx and this module from (None where
    poolx cannot be imported), and its pid.
    """
    import time

    import numpy  # noqa: F401

    time.sleep(seconds)
    try:
        import poolx

        where = os.path.dirname(os.path.dirname(os.path.abspath(poolx.__file__)))
    except Exception as exc:
        where = f"poolx cannot be imported: {type(exc).__name__}: {exc}"
    return {"pid": os.getpid(), "poolx_from": where, "work_from": os.path.dirname(os.path.abspath(__file__)),
            "python": sys.executable}


class Counter:
    """The actor of the actor case: ``increment()`` returns the new count."""

    def __init__(self):
        self.count = 0

    def increment(self):
        self.count += 1
        return self.count
