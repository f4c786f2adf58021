"""``ray.util.multiprocessing``: Ray's ``multiprocessing.Pool`` replacement, as ``poolx.Pool``.

``Pool`` is ``poolx.Pool`` with Ray's constructor: like Ray's, it returns once
every worker has run its initializer (``poolx.Pool`` returns at once, as the
stdlib's does).  ``ray_address`` and ``ray_remote_args`` are accepted and
ignored, with a warning when given: the pool runs in worker processes on this
machine (``poolx.Pool(backend="ray", address=...)`` runs on a Ray cluster).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from multiprocessing import JoinableQueue, TimeoutError
from typing import Any

from .._pool import Pool as _PoolxPool

__all__ = ["JoinableQueue", "Pool", "TimeoutError"]


class Pool(_PoolxPool):
    """``ray.util.multiprocessing.Pool``: ``poolx.Pool`` that waits for its workers' initializers."""

    def __init__(self, processes: int | None = None, initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] | None = None, maxtasksperchild: int | None = None,
                 context: Any = None, ray_address: str | None = None,
                 ray_remote_args: dict[str, Any] | None = None, **options: Any) -> None:
        given = (("ray_address", ray_address), ("ray_remote_args", ray_remote_args))
        ignored = [name for name, value in given if value]
        if ignored:
            warnings.warn(f"Pool({', '.join(f'{n}=...' for n in ignored)}): ignored; poolx's Pool runs "
                          "its workers on this machine, one CPU each (poolx.Pool(backend='ray', "
                          "address=...) runs on a Ray cluster)", stacklevel=2)
        options.setdefault("wait_for_workers", True)
        super().__init__(processes, initializer, () if initargs is None else initargs, maxtasksperchild,
                         context, **options)
