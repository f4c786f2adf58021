"""An actor class for tests/frontends/test_collective.py (a module, so that worker processes import it)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import poolx.collective as col


class Rank:
    """Runs one collective operation per call on arrays it builds from its rank."""

    def __init__(self, group: str = "default") -> None:
        self.group = group

    def info(self) -> tuple[int, int, bool]:
        return (col.get_rank(self.group), col.get_collective_group_size(self.group),
                col.is_group_initialized(self.group))

    def allreduce(self, n: int, op: str = "sum", dtype: str = "float64") -> np.ndarray:
        a = np.arange(n, dtype=dtype) + col.get_rank(self.group)
        col.allreduce(a, group_name=self.group, op=op)
        return a

    def reduce(self, n: int, dst: int) -> np.ndarray:
        a = np.full(n, col.get_rank(self.group) + 1.0)
        col.reduce(a, dst_rank=dst, group_name=self.group)
        return a

    def broadcast(self, n: int, src: int) -> np.ndarray:
        a = np.full(n, col.get_rank(self.group), dtype=np.int32)
        col.broadcast(a, src_rank=src, group_name=self.group)
        return a

    def allgather(self, shape: tuple[int, ...]) -> list[np.ndarray]:
        size = col.get_collective_group_size(self.group)
        mine = np.full(shape, col.get_rank(self.group), dtype=np.int64)
        out = [np.zeros(shape, dtype=np.int64) for _ in range(size)]
        col.allgather(out, mine, group_name=self.group)
        return out

    def reduce_scatter(self, n: int, op: str = "sum") -> np.ndarray:
        size, rank = col.get_collective_group_size(self.group), col.get_rank(self.group)
        parts = [np.full(n, 10.0 * rank + j) for j in range(size)]
        out = np.empty(n)
        col.reduce_scatter(out, parts, group_name=self.group, op=op)
        return out

    def barrier_then_time(self, delay: float) -> float:
        time.sleep(delay)
        col.barrier(self.group)
        return time.monotonic()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` here: a test's own operation (e.g. a wrong call on one rank)."""
        return fn(*args)

    def leave(self) -> int:
        col.destroy_collective_group(self.group)
        return col.get_rank(self.group)


class Trainer:
    """Ray's first way: each actor joins the group itself (init_collective_group in a method)."""

    def __init__(self) -> None:
        self.buffer = np.ones(10, dtype=np.float32)

    def setup(self, world_size: int, rank: int, group: str = "default", timeout_ms: int = 20_000) -> int:
        col.init_collective_group(world_size, rank, "gloo", group, gloo_timeout=timeout_ms)
        return col.get_rank(group)

    def compute(self, group: str = "default") -> np.ndarray:
        col.allreduce(self.buffer, group)
        return self.buffer

    def leave(self, group: str = "default") -> None:
        col.destroy_collective_group(group)
