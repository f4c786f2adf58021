"""How many CPUs this process may use: the default worker count."""

from __future__ import annotations

import os
import sys


def default_max_workers() -> int:
    """The CPUs this process may use (affinity and cgroup quotas included): ``loky.cpu_count()``.

    Importing loky costs about 25 ms, most of a fresh executor's start-up, so
    where the answer is plain (Linux, no cgroup CPU quota, no
    ``LOKY_MAX_CPU_COUNT``) it is read without it: the smaller of the CPU
    count and the affinity mask, as loky would compute it.
    """
    if sys.platform.startswith("linux") and "LOKY_MAX_CPU_COUNT" not in os.environ and _no_cpu_quota():
        return max(1, min(os.cpu_count() or 1, len(os.sched_getaffinity(0))))
    from loky import cpu_count

    return max(1, cpu_count())


def _no_cpu_quota() -> bool:
    """Whether this process's cgroup sets no CPU bandwidth limit (the files loky reads)."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "max 100000" when unlimited
            return f.read().split()[0] == "max"
    except (OSError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:  # cgroup v1: -1 when unlimited
            return int(f.read()) < 0
    except FileNotFoundError:
        return True  # no cgroup CPU controller: no limit
    except (OSError, ValueError):
        return False
