"""What the machine and the installation are: ``poolx info`` and every report's header."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from ..backends.processes._backend import default_start_method

#: Optional packages poolx uses somewhere (distribution names).
OPTIONAL = ("numpy", "joblib", "scikit-learn", "pyinstrument", "memray", "psutil", "matplotlib",
            "tqdm", "dask", "distributed", "ray")
REQUIRED = ("cloudpickle", "loky")
#: Variables that cap the thread pools of numeric libraries (joblib's list).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def usable_cpus() -> int:
    """CPUs this process may use (affinity and cgroup quota, as loky counts them)."""
    from loky import cpu_count

    return int(cpu_count())


def collect() -> dict[str, Any]:
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus_total": os.cpu_count(),
        "cpus_affinity": affinity,
        "cpus_usable": usable_cpus(),
        "start_method": default_start_method(),
        "poolx": version("poolx") or "not installed (source checkout)",
        "required": {d: version(d) for d in REQUIRED},
        "optional": {d: version(d) for d in OPTIONAL},
        "thread_vars": {v: os.environ.get(v) for v in THREAD_VARS},
    }


def header(env: dict[str, Any]) -> str:
    """One line for a report header."""
    threads = ", ".join(f"{k}={v}" for k, v in env["thread_vars"].items() if v) or "no thread caps set"
    return (f"{env['python']} on {env['platform']}; {env['cpus_usable']} usable CPUs "
            f"({env['cpus_total']} in all); start method {env['start_method']}; poolx {env['poolx']}; "
            f"{threads}")


def render_info(env: dict[str, Any]) -> str:
    lines = [
        f"python        {env['python']} ({env['executable']})",
        f"platform      {env['platform']} ({env['machine']})",
        f"CPUs          {env['cpus_usable']} usable (affinity: {env['cpus_affinity']}, "
        f"total: {env['cpus_total']})",
        f"start method  {env['start_method']} (poolx's default for processes)",
        f"poolx         {env['poolx']}",
        "required      " + ", ".join(f"{d} {v or 'MISSING'}" for d, v in env["required"].items()),
        "optional",
    ]
    for dist, ver in env["optional"].items():
        lines.append(f"  {dist:<14}{ver or '-'}")
    lines.append("thread limits")
    for var, value in env["thread_vars"].items():
        lines.append(f"  {var:<24}{value if value is not None else 'unset'}")
    return "\n".join(lines)
