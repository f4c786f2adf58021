"""Remote functions and actor classes for test_ray_api (importable by workers)."""

from __future__ import annotations

import os
import time

import poolx


@poolx.remote
def add(a, b):
    return a + b


@poolx.remote
def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


@poolx.remote
def fail(message):
    raise ValueError(message)


@poolx.remote
def depth(n):
    """A chain of n nested tasks, each waiting for the next."""
    if n == 0:
        return 0
    return 1 + poolx.get(depth.remote(n - 1))


@poolx.remote
def fib(n):
    if n < 2:
        return n
    return sum(poolx.get([fib.remote(n - 1), fib.remote(n - 2)]))


@poolx.remote
def qsort(xs):
    if len(xs) <= 1:
        return xs
    pivot, rest = xs[0], xs[1:]
    lo = qsort.remote([x for x in rest if x < pivot])
    hi = qsort.remote([x for x in rest if x >= pivot])
    return [*poolx.get(lo), pivot, *poolx.get(hi)]


@poolx.remote
def wait_for_siblings(n):
    """Submit n tasks and wait() for all of them: the worker must lend its slot here too."""
    refs = [add.remote(i, 1) for i in range(n)]
    ready, _ = poolx.wait(refs, num_returns=n, timeout=60)
    return sorted(poolx.get(ready))


@poolx.remote
def get_all(refs):
    """Refs inside a container stay refs: get() them here."""
    assert all(isinstance(r, poolx.ObjectRef) for r in refs)
    return poolx.get(refs)


@poolx.remote
def get_error(refs):
    try:
        poolx.get(refs[0])
    except ValueError as exc:
        return str(exc)
    return "no error"


@poolx.remote
def identity(x):
    return x


@poolx.remote(num_returns=2)
def divmod_remote(a, b):
    return divmod(a, b)


@poolx.remote(num_returns=2)
def wrong_count():
    return (1, 2, 3)


def _count_run(path):
    """How many times this was called before with ``path`` (counted in that file, across processes)."""
    with open(path, "a+") as f:
        f.seek(0)
        runs = len(f.read())
        f.write("x")
    return runs


@poolx.remote(max_retries=2)
def crash_first_times(path, times):
    """Dies (os._exit) the first `times` runs; then returns the count."""
    runs = _count_run(path)
    if runs < times:
        os._exit(3)
    return runs


@poolx.remote(retry_exceptions=[KeyError], max_retries=3)
def flaky(path, times):
    """Raises KeyError the first `times` runs; then returns the count."""
    runs = _count_run(path)
    if runs < times:
        raise KeyError(f"run {runs}")
    return runs


@poolx.remote
def is_writable(array):
    return array.flags.writeable


@poolx.remote
def total(array):
    return float(array.sum())


@poolx.remote
def call_counter(counter, n):
    for _ in range(n):
        counter.increment.remote()
    return poolx.get(counter.value.remote())


@poolx.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def increment(self, by=1):
        self.n += by
        return self.n

    def value(self):
        return self.n


@poolx.remote
class Log:
    def __init__(self):
        self.items = []

    def append(self, item):
        self.items.append(item)
        return len(self.items)

    def read(self):
        return list(self.items)
