"""The functions the benchmark workers run.

They live in their own small module (not in ``_case.py``, which is ``__main__``)
so that every start method -- fork, forkserver, spawn, loky -- can pickle them
by reference.  The module imports nothing heavy at the top: under forkserver
the server process imports the main script, and a numpy import there would be
charged to poolx's startup.  numpy is imported inside the function that needs it.
"""

import time

DATABASE = ["learning", "Ray", "for", "distributed", "data", "processing"]

# Samples drawn per numpy call inside one pi chunk.  The chunk fills the same
# two preallocated arrays (1 MB in all) again and again, so the work is
# CPU-bound and does not depend on the process's malloc state: allocating
# 512 KB arrays per batch costs tens of thousands of page faults per chunk in
# a process whose glibc mmap threshold is still at its default, and far fewer
# in one where earlier large allocations raised it.
PI_BATCH = 65_536


def noop():
    """The trivial task: measures pure per-task overhead."""
    return None


def inc(x):
    """The tiny map item."""
    return x + 1


def square(i):
    """The tiny item of joblib_tiny."""
    return i * i


# Loop turns of one pool_small_tasks task: about 1 ms of pure Python on the
# 2-core machine this was written on (0.96 ms measured), the "small task" of
# ray-project/ray#21343's complaint about Ray's Pool clone.
SMALL_TASK_LOOPS = 30_000


def small_task(i):
    """A small CPU-bound task (~1 ms): a fixed amount of work, not a sleep."""
    total = 0
    for k in range(SMALL_TASK_LOOPS):
        total += k ^ i
    return total


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
    x = np.empty(PI_BATCH)
    y = np.empty(PI_BATCH)
    inside = 0
    left = samples
    while left > 0:
        n = min(left, PI_BATCH)
        xs, ys = x[:n], y[:n]
        rng.random(out=xs)
        rng.random(out=ys)
        np.multiply(xs, xs, out=xs)
        np.multiply(ys, ys, out=ys)
        np.add(xs, ys, out=xs)
        inside += int(np.count_nonzero(xs <= 1.0))
        left -= n
    return inside


def retrieve(i):
    """The retrieve example: item i sleeps i/10 s and returns (i, DATABASE[i])."""
    time.sleep(i / 10.0)
    return i, DATABASE[i]


# -- actors (the actor_* cases) ------------------------------------------------
# Plain classes: poolx takes them as they are (``executor.actor(Counter)``),
# Ray wraps them in the driver (``ray.remote(Counter)``) and Dask creates them
# with ``client.submit(Counter, actor=True)``, so this module never imports
# either library.


class Counter:
    """The actor of actor_awaited and actor_pipelined."""

    def __init__(self):
        self.count = 0

    def increment(self):
        self.count += 1
        return self.count


class DataTracker:
    """The tracker actor of the lecture's retrieve example."""

    def __init__(self):
        self._counts = 0

    def increment(self):
        self._counts += 1

    def counts(self):
        return self._counts


def retrieve_tracked(i, tracker):
    """The retrieve example with a tracker, for poolx and Ray actor handles.

    Sleeps i/10 s, tells the tracker (``tracker.increment.remote()``) without
    waiting for the answer, and returns ``(i, DATABASE[i])``.
    """
    time.sleep(i / 10.0)
    tracker.increment.remote()
    return i, DATABASE[i]


def retrieve_tracked_dask(i, tracker):
    """``retrieve_tracked`` for a Dask actor proxy: ``tracker.increment()``, not waited for."""
    time.sleep(i / 10.0)
    tracker.increment()
    return i, DATABASE[i]


# -- large data (the transfer_* cases) -------------------------------------------
# The same functions for every implementation (poolx, Ray, joblib, multiprocessing.Pool).
# numpy is imported inside them, for the reason given at the top of this module.

# transfer_returns' array in this process, by length: built on the first call
# of cached_array() here, returned as is afterwards, so the task itself does
# no work and the timed calls measure the way back alone.
_TRANSFER_CACHE = {}


def transfer_array(n):
    """``np.arange(n)`` in float64 (8 bytes an element), every page written: what the cases move.

    Its sum, ``n * (n - 1) / 2``, is exact in float64 for the sizes used
    (every partial sum is an integer below 2**53), so every call's result is checked exactly.
    """
    import numpy as np

    return np.arange(n, dtype=np.float64)


def total(a):
    """The task of transfer_args and transfer_put: the array's sum, as a Python float."""
    return float(a.sum())


def cached_array(n):
    """The task of transfer_returns: this process's ``transfer_array(n)``, built on its first call here."""
    a = _TRANSFER_CACHE.get(n)
    if a is None:
        a = _TRANSFER_CACHE[n] = transfer_array(n)
    return a


def fresh_array(n):
    """The task of transfer_returns_fresh: a new ``transfer_array(n)``, built in this call."""
    return transfer_array(n)


def warm_transfer(seconds, n):
    """Ready a worker for the transfer cases: numpy imported, and with ``n`` the cached array built.

    Sleeps like ``warm`` so the pool hands one to each worker; returns the
    worker's pid, so the caller can count how many workers it reached.
    """
    import os

    import numpy  # noqa: F401

    if n:
        cached_array(n)
    time.sleep(seconds)
    return os.getpid()


# -- the scaling sweep (scaling.py) --------------------------------------------------


def spin(loops):
    """A CPU-bound task of ``loops`` turns of pure Python (30,000 take about 1 ms here)."""
    total = 0
    for k in range(loops):
        total += k ^ loops
    return total


def wait_for_file(path, limit_s):
    """Block a worker until ``path`` exists (at most ``limit_s`` s): tasks behind it stay pending."""
    import os

    deadline = time.monotonic() + limit_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


def size_of(a):
    """The task of the argument-size sweep: the argument's size and its last byte (it arrived whole)."""
    return len(a), int(a[-1])
