"""Task functions for test_shm (importable by workers)."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

import poolx

_kept: list = []


def memfd_maps() -> int:
    """How many mappings of poolx segments this process has."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:poolx" in line)


def inspect(a):
    """(writable, sum, mapped from a poolx segment while the argument is alive)."""
    return bool(a.flags.writeable), float(a.sum()), memfd_maps() > 0


def total(a):
    return float(a.sum())


def mutate(a):
    a += 1
    return float(a.sum())


def filled(n, value):
    return np.full(n, value, dtype=np.float64)


def keep(a):
    """Keep a view of the argument in this worker, beyond the task."""
    _kept.append(a)
    return os.getpid()


def kept_sum():
    return float(sum(float(a.sum()) for a in _kept))


def hold_and_sleep(a, seconds):
    _kept.append(a)
    time.sleep(seconds)
    return os.getpid()


def shm_stats():
    from poolx import _shm

    return _shm.statistics()


def nested_total(a):
    """Send the (large) argument on to a nested task and return its result, through the driver."""
    inner = poolx.remote(total)
    return poolx.get(inner.remote(a))


def nested_make(n):
    inner = poolx.remote(filled)
    return float(poolx.get(inner.remote(n, 2.0)).sum())


def call_actor_with(handle, a):
    return poolx.get(handle.total.remote(a))


class Summer:
    def total(self, a):
        return float(a.sum())

    def make(self, n):
        return np.full(n, 3.0)


def close_stdio():
    """What daemonizing code does: close fds 0, 1 and 2 (and restore nothing)."""
    for fd in (0, 1, 2):
        os.close(fd)
    return os.getpid()


def sum_then_print(a, expected):
    """Print in a worker whose stdio an earlier task closed: the print must fail (EBADF, as
    with the stdlib) and ``a`` must stay exactly as sent, before and after the print."""
    seen = float(a.sum())
    try:
        # (sys.__stdout__: under fork, pytest's capture left sys.stdout elsewhere than fd 1)
        print("poolx " * 1000, file=sys.__stdout__, flush=True)
    finally:
        after = float(a.sum())
        if seen != expected or after != expected:
            raise AssertionError(f"the argument changed under the task: it summed to {seen}, then "
                                 f"{after} after a print, and was sent summing to {expected}")
    return os.getpid()


def low_fds():
    """What fds 0, 1 and 2 of this process are (those that are open)."""
    found = {}
    for fd in (0, 1, 2):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return found


def fd_limit():
    """This process's RLIMIT_NOFILE soft limit."""
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
