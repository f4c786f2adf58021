"""The functions the benchmark workers run.

They live in their own small module (not in ``_case.py``, which is ``__main__``)
so that every start method -- fork, forkserver, spawn, loky -- can pickle them
by reference.  The module imports nothing heavy at the top: under forkserver
the server process imports the main script, and a numpy import there would be
charged to poolx's startup.  numpy is imported inside the function that needs it.
"""

import time

DATABASE = ["learning", "Ray", "for", "distributed", "data", "processing"]

# Samples drawn per numpy call inside one pi chunk: bounds the memory a chunk
# needs (two float64 arrays of this length, 16 MB) whatever the chunk size.
PI_BATCH = 1_000_000


def noop():
    """The trivial task: measures pure per-task overhead."""
    return None


def inc(x):
    """The tiny map item."""
    return x + 1


def warm(seconds, import_numpy=False):
    """A warm-up task: sleeping makes the pool hand one to each worker."""
    if import_numpy:
        import numpy  # noqa: F401
    time.sleep(seconds)
    return None


def pi_chunk(samples, seed):
    """Count the random points of the unit square that fall in the quarter disc."""
    import numpy as np

    rng = np.random.default_rng(seed)
    inside = 0
    left = samples
    while left > 0:
        n = min(left, PI_BATCH)
        x = rng.random(n)
        y = rng.random(n)
        inside += int(np.count_nonzero(x * x + y * y <= 1.0))
        left -= n
    return inside


def retrieve(i):
    """The retrieve example: item i sleeps i/10 s and returns (i, DATABASE[i])."""
    time.sleep(i / 10.0)
    return i, DATABASE[i]
