"""retrieve: six slow lookups, the classic latency-bound workload.

Item ``i`` takes ``i / 10`` seconds to fetch and returns ``(i, DATABASE[i])``.
Serially that is 1.5 s; with one worker per item the ideal is 0.5 s (the
slowest item), so anything above 0.5 s is the engine's overhead.

Forms: ``serial()`` and ``tasks(executor)``.
"""

from __future__ import annotations

import time
from typing import Any

DATABASE = ["learning", "Ray", "for", "distributed", "data", "processing"]


def retrieve(item: int) -> tuple[int, str]:
    time.sleep(item / 10.0)
    return item, DATABASE[item]


def serial() -> list[tuple[int, str]]:
    return [retrieve(i) for i in range(len(DATABASE))]


def tasks(executor: Any) -> list[tuple[int, str]]:
    return list(executor.map(retrieve, range(len(DATABASE)), chunksize=1))
